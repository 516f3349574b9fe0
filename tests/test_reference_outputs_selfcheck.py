"""Hand-computed cases proving the brute-force reference (tests/reference.py) right: its outputs
(the Event Hub messages, the Blob files), the random generator's coverage, and a dense-grid cross
check of its evaluation points. Time, audiences, dedupe and dead letters are in
tests/test_reference_selfcheck.py.

Every expected value below was worked out by hand from CONTRACT.md and docs/SEMANTICS.md; none is
produced by the reference itself (message ids are recomputed here from the documented formula).
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests import reference as R
from tests.datagen import generate
from tests.reference_cases import FREQ, cfg, ev, line, mid, spans


# ------------------------------------------------------------------ 5.1 messages

#: An as-of time after every wake-up of these tests (2027-01-01T00:00:00Z).
LATER = R.parse_time("2027-01-01T00:00:00Z")


def test_default_as_of_is_the_latest_received_at_and_nothing_after_it_is_sent():
    c = cfg([FREQ, ("late_buyers", {"event": "purchase", "within": "1d"})],
            [_eh_work(), {"id": "w-bf", "workflow": "eventhub_audience_export",
                          "config": {"start": "2026-11-04T00:00:00Z", "existing_users": True}}])
    lines = [ev("u1", "purchase", "2026-11-01T10:00:00Z", event_id="p1"),
             ev("u1", "purchase", "2026-11-02T09:00:00Z", event_id="p2"),
             ev("u1", "purchase", "2026-11-03T08:00:00Z", event_id="p3",
                received_at="2026-11-03T09:00:00Z"),
             # dated after every received_at: not applied yet
             ev("u2", "purchase", "2026-11-04T00:00:00Z", event_id="p4",
                received_at="2026-11-03T08:30:00Z")]
    default = R.reference_outputs(c, lines)["eventhub"]["w-eh"]
    assert [(x["timestamp"], [s["event"] for s in x["data"]["segment_events"]])
            for x in default] == [("2026-11-01T10:00:00Z", ["enter"]),
                                  ("2026-11-03T08:00:00Z", ["enter"])]
    # The backfill at a start after the as-of time does not happen in the run.
    assert R.reference_outputs(c, lines)["eventhub"]["w-bf"] == []
    later = R.reference_outputs(c, lines, as_of=LATER)["eventhub"]
    # With a later as-of: the exits, u2's purchase and the backfill at start all come out.
    assert len(later["w-eh"]) > len(default)
    assert {R.message_user(x)[1] for x in later["w-eh"]} == {"u1", "u2"}
    assert later["w-bf"][0].get("backfill") is True


def _eh_work(**conf):
    return {"id": "w-eh", "workflow": "eventhub_audience_export", "config": conf}


def test_messages_delayed_exit_fields_and_message_id():
    c = cfg([FREQ, ("emailable", {"trait": "email", "op": "exists"})],
            [_eh_work(subscription_id="sub-1", user_fields=["email", "user_id", "nope"])])
    lines = [ev("u1", "purchase", "2026-11-01T10:00:00.250Z", event_id="p1",
                traits={"email": "a@x.com", "user_id": "spoof", "country": "DE"}),
             ev("u1", "purchase", "2026-11-02T09:00:00Z", event_id="p2"),
             ev("u1", "purchase", "2026-11-03T08:00:00Z", event_id="p3"),
             ev("u1", "profile", "2026-11-04T00:00:00Z", event_id="p4", traits={"email": None})]
    # As of a time after every wake-up (--as_of): the delayed exits come out.
    msgs = R.reference_outputs(c, lines, as_of=LATER)["eventhub"]["w-eh"]

    def m(ts, modified, segs, email=True):
        data = {"_created": "2026-11-01T10:00:00.250Z", "_modified": modified, "user_id": "u1",
                "segment_events": segs}
        if email:
            data["email"] = "a@x.com"
        msg = {"data": data, "subscription_id": "sub-1", "timestamp": ts}
        msg["message_id"] = mid(msg)
        return msg

    fb, em = ("id-frequent_buyers", "frequent_buyers"), ("id-emailable", "emailable")
    expected = [
        m("2026-11-01T10:00:00.250Z", "2026-11-01T10:00:00.250Z",
          [{"id": em[0], "slug": em[1], "event": "enter", "enter": "2026-11-01T10:00:00.250Z",
            "exit": "2099-12-31T23:59:59Z"}]),
        m("2026-11-03T08:00:00Z", "2026-11-03T08:00:00Z",
          [{"id": fb[0], "slug": fb[1], "event": "enter", "enter": "2026-11-03T08:00:00Z",
            "exit": "2099-12-31T23:59:59Z"}]),
        m("2026-11-04T00:00:00Z", "2026-11-04T00:00:00Z",
          [{"id": em[0], "slug": em[1], "event": "exit", "enter": "2026-11-01T10:00:00.250Z",
            "exit": "2026-11-04T00:00:00Z"}], email=False),
        m("2026-11-08T10:00:00.250Z", "2026-11-04T00:00:00Z",
          [{"id": fb[0], "slug": fb[1], "event": "exit", "enter": "2026-11-03T08:00:00Z",
            "exit": "2026-11-08T10:00:00.250Z"}], email=False),
    ]
    assert msgs == expected
    assert len(msgs[0]["message_id"]) == 32


def test_segment_events_in_config_order_and_all_traits_by_default():
    c = cfg([("b_second", {"event": "login"}), ("a_first", {"trait": "k", "op": "eq", "value": 1})],
            [_eh_work()])
    lines = [ev("u1", "login", "2026-11-01T00:00:00Z", traits={"k": 1, "obj": {"z": [1]}})]
    (msg,) = R.reference_outputs(c, lines)["eventhub"]["w-eh"]
    assert [s["slug"] for s in msg["data"]["segment_events"]] == ["b_second", "a_first"]
    assert msg["subscription_id"] == "w-eh"
    assert msg["data"]["k"] == 1 and msg["data"]["obj"] == {"z": [1]}
    assert "backfill" not in msg


def test_backfill_and_start_filter():
    c = cfg([("bought", {"event": "purchase", "within": "3d"}),
             ("logged", {"event": "login", "within": "1d"}),
             ("other", {"event": "search"})],
            [_eh_work(audiences=["bought", "id-logged"], start="2026-11-10T00:00:00Z",
                      existing_users=True, user_fields=["email"])])
    lines = [
        # u1: bought 11-08T12:00 (member until 11-11T12:00), login 11-09T06:00 (until 11-10T06:00)
        ev("u1", "purchase", "2026-11-01T00:00:00Z", traits={"email": "one@x.com"}),
        ev("u1", "purchase", "2026-11-08T12:00:00Z"),
        ev("u1", "login", "2026-11-09T06:00:00Z"),
        ev("u1", "search", "2026-11-09T07:00:00Z"),
        # u2: in nothing before start; login exactly at start -> enter at start (after any backfill)
        ev("u2", "search", "2026-11-01T00:00:00Z"),
        ev("u2", "login", "2026-11-10T00:00:00Z"),
        # u3: login exactly 1 day before start -> exits at start: a backfill enter, then an exit
        ev("u3", "login", "2026-11-09T00:00:00Z"),
    ]
    msgs = R.reference_outputs(c, lines, as_of=LATER)["eventhub"]["w-eh"]
    got = [(R.message_user(x)[1], x["timestamp"], x.get("backfill", False),
            [(s["slug"], s["event"], s["enter"], s["exit"]) for s in x["data"]["segment_events"]])
           for x in msgs]
    F = "2099-12-31T23:59:59Z"
    # u1's transitions before start (bought 11-01..11-04, enters 11-08 / 11-09) are not sent.
    assert got == [
        ("u1", "2026-11-10T00:00:00Z", True,
         [("bought", "enter", "2026-11-08T12:00:00Z", F),
          ("logged", "enter", "2026-11-09T06:00:00Z", F)]),
        ("u1", "2026-11-10T06:00:00Z", False,
         [("logged", "exit", "2026-11-09T06:00:00Z", "2026-11-10T06:00:00Z")]),
        ("u1", "2026-11-11T12:00:00Z", False,
         [("bought", "exit", "2026-11-08T12:00:00Z", "2026-11-11T12:00:00Z")]),
        ("u2", "2026-11-10T00:00:00Z", False,
         [("logged", "enter", "2026-11-10T00:00:00Z", F)]),
        ("u2", "2026-11-11T00:00:00Z", False,
         [("logged", "exit", "2026-11-10T00:00:00Z", "2026-11-11T00:00:00Z")]),
        ("u3", "2026-11-10T00:00:00Z", True,
         [("logged", "enter", "2026-11-09T00:00:00Z", F)]),
        ("u3", "2026-11-10T00:00:00Z", False,
         [("logged", "exit", "2026-11-09T00:00:00Z", "2026-11-10T00:00:00Z")]),
    ]
    bf = msgs[0]
    assert bf["backfill"] is True and bf["data"]["email"] == "one@x.com"
    assert bf["data"]["_modified"] == "2026-11-09T07:00:00Z"
    assert bf["message_id"] == mid(bf)


def test_no_start_means_no_backfill_and_no_lower_bound():
    c = cfg([("logged", {"event": "login"})], [_eh_work(existing_users=True)])
    msgs = R.reference_outputs(c, [ev("u1", "login", "2020-01-01T00:00:00Z")])["eventhub"]["w-eh"]
    assert [(x["timestamp"], x.get("backfill")) for x in msgs] == [("2020-01-01T00:00:00Z", None)]


def test_env_substitution():
    c = cfg([], [_eh_work(subscription_id="${SUB}")])
    c["works"][0]["config"]["audiences"] = []
    assert R.normalise_config(c, {"SUB": "s1"})["works"][0]["config"]["subscription_id"] == "s1"
    with pytest.raises(ValueError):
        R.normalise_config(c, {})


# ------------------------------------------------------------------ 5.2 blob

def test_cells_and_formula_guard():
    assert R.cell("=1+1") == "'=1+1"
    assert R.cell("+49") == "'+49" and R.cell("-x") == "'-x" and R.cell("@a") == "'@a"
    assert R.cell("\tx") == "'\tx" and R.cell("\rx") == "'\rx"
    assert R.cell("a=b") == "a=b" and R.cell("") == ""
    assert R.cell(-5) == "-5" and R.cell(19.99) == "19.99" and R.cell(42) == "42"
    assert R.cell(True) == "true" and R.cell(False) == "false" and R.cell(None) == ""
    assert R.cell({"a": [1, "x"]}) == '{"a":[1,"x"]}' and R.cell(["-promo"]) == '["-promo"]'
    text = R.render_csv([["a", "b"], ["x,y", 'q"uote'], ["'=1", ""]])
    assert text == 'a,b\n"x,y","q""uote"\n\'=1,\n'
    assert R.parse_csv(text) == [["a", "b"], ["x,y", 'q"uote'], ["'=1", ""]]


def _blob_work(**conf):
    base = {"container": "c", "export_type": "events", "period_hours": 1, "format": "csv"}
    base.update(conf)
    return {"id": "w-b", "workflow": "azure_blob_event_export", "config": base}


def test_blob_windows_header_only_gap_and_rows():
    c = cfg([], [_blob_work(prefix="p/", anchor="2026-11-01T00:30:00Z",
                            event_parameters=["price", "note"], attributes=["email", "tags"])])
    t0 = 1793491200     # 2026-11-01T00:00:00Z
    lines = [
        ev("u1", "profile", "2026-11-01T00:00:00Z", event_id="e0",
           traits={"email": "=a@x.com", "tags": ["a"]}, received_at="2026-11-01T00:40:00Z"),
        ev("u1", "purchase", "2026-11-01T00:50:00Z", event_id="e2",
           properties={"price": 19.99, "note": "-x"}, received_at="2026-11-01T00:50:00Z"),
        # same received_at: ordered by event_id
        line(anonymous_id="a1", event="purchase", ts="2026-11-01T00:45:00Z", event_id="e1",
             properties={"price": 5}, received_at="2026-11-01T00:50:00Z"),
        # a duplicate 2 h later: not a second row
        ev("u1", "purchase", "2026-11-01T00:50:00Z", event_id="e2",
           properties={"price": 19.99, "note": "-x"}, received_at="2026-11-01T02:50:00Z"),
        ev("u1", "profile", "2026-11-01T03:00:00Z", event_id="e3", traits={"email": None},
           received_at="2026-11-01T03:10:00Z"),
        # received before the anchor: window [-00:30, 00:30) of 11-01
        ev("u1", "login", "2026-10-31T23:59:00Z", event_id="e-1"),
    ]
    files = R.reference_outputs(c, lines)["blob"]["w-b"]
    h = ["event_id", "user_id", "anonymous_id", "event", "timestamp", "received_at",
         "properties.price", "properties.note", "traits.email", "traits.tags"]
    names = ["p/acme_events_w-b_%d_%d.csv" % (t0 + s, t0 + s + 3600)
             for s in (-1800, 1800, 5400, 9000)]
    assert sorted(files) == sorted(names)
    assert files[names[0]] == [h, ["e-1", "u1", "", "login", "2026-10-31T23:59:00Z",
                                   "2026-10-31T23:59:00Z", "", "", "", ""]]
    assert files[names[1]] == [
        h,
        ["e0", "u1", "", "profile", "2026-11-01T00:00:00Z", "2026-11-01T00:40:00Z", "", "",
         "'=a@x.com", '["a"]'],
        ["e1", "", "a1", "purchase", "2026-11-01T00:45:00Z", "2026-11-01T00:50:00Z", "5", "", "",
         ""],
        ["e2", "u1", "", "purchase", "2026-11-01T00:50:00Z", "2026-11-01T00:50:00Z", "19.99",
         "'-x", "'=a@x.com", '["a"]'],
    ]
    assert files[names[2]] == [h]                    # [01:30, 02:30) empty: header only
    assert files[names[3]] == [h, ["e3", "u1", "", "profile", "2026-11-01T03:00:00Z",
                                   "2026-11-01T03:10:00Z", "", "", "", '["a"]']]


def test_blob_default_anchor_epoch_start_filter_and_event_filter():
    t0 = 1793491200
    lines = [ev("u1", "purchase", "2026-11-01T05:00:00Z", event_id="a"),
             ev("u1", "login", "2026-11-01T07:00:00Z", event_id="b"),
             ev("u1", "purchase", "2026-11-01T13:00:00Z", event_id="c")]
    c = cfg([], [_blob_work(period_hours=6, events=["purchase"])])
    files = R.reference_outputs(c, lines)["blob"]["w-b"]
    # epoch anchor: windows [00,06) [06,12) [12,18); the login is filtered out -> middle is empty
    assert sorted(files) == sorted("acme_events_w-b_%d_%d.csv" % (t0 + a * 3600, t0 + b * 3600)
                                   for a, b in ((0, 6), (6, 12), (12, 18)))
    assert len(files["acme_events_w-b_%d_%d.csv" % (t0 + 6 * 3600, t0 + 12 * 3600)]) == 1
    # start filters (a, received 05:00, is dropped) and anchors: windows [06,12) [12,18)
    c = cfg([], [_blob_work(period_hours=6, start="2026-11-01T06:00:00Z")])
    files = R.reference_outputs(c, lines)["blob"]["w-b"]
    assert sorted(files) == ["acme_events_w-b_%d_%d.csv" % (t0 + 6 * 3600, t0 + 12 * 3600),
                             "acme_events_w-b_%d_%d.csv" % (t0 + 12 * 3600, t0 + 18 * 3600)]
    assert [r[0] for r in files["acme_events_w-b_%d_%d.csv" % (t0 + 6 * 3600, t0 + 12 * 3600)]] \
        == ["event_id", "b"]


def test_blob_system_events():
    c = cfg([], [_blob_work(export_type="system_events", period_hours=24, prefix="s/")])
    t0 = 1793491200
    se = {"kind": "system", "id": 7, "ts": "2026-11-01T10:00:00Z",
          "data": {"aid": 1234, "notes": "=bad", "subject_id": "w-1", "subject_type": "work",
                   "verb": "failed"}}
    lines = [json.dumps(se),
             json.dumps(dict(se, received_at="2026-11-01T12:00:00Z")),      # duplicate
             json.dumps(dict(se, id="se-2", ts="2026-11-03T01:00:00Z",
                             data={"subject_type": "segment", "verb": "created"}))]
    files = R.reference_outputs(c, lines)["blob"]["w-b"]
    h = ["id", "timestamp", "received_at", "aid", "subject_type", "subject_id", "verb", "notes",
         "data"]
    day = 86400
    assert files == {
        "s/acme_system_events_w-b_%d_%d.csv" % (t0, t0 + day): [
            h, ["7", "2026-11-01T10:00:00Z", "2026-11-01T10:00:00Z", "1234", "work", "w-1",
                "failed", "'=bad",
                '{"aid":1234,"notes":"=bad","subject_id":"w-1","subject_type":"work","verb":"failed"}'
                ]],
        "s/acme_system_events_w-b_%d_%d.csv" % (t0 + day, t0 + 2 * day): [h],
        "s/acme_system_events_w-b_%d_%d.csv" % (t0 + 2 * day, t0 + 3 * day): [
            h, ["se-2", "2026-11-03T01:00:00Z", "2026-11-03T01:00:00Z", "", "segment", "",
                "created", "", '{"subject_type":"segment","verb":"created"}']],
    }


def test_blob_dedupe_after_24h_is_a_second_row_in_a_later_window():
    c = cfg([], [_blob_work(period_hours=24)])
    base = dict(user_id="u1", event="x", ts="2026-11-01T01:00:00Z", event_id="e")
    lines = [line(received_at="2026-11-01T01:00:00Z", **base),
             line(received_at="2026-11-01T20:00:00Z", **base),
             line(received_at="2026-11-02T02:00:00Z", **base)]
    files = R.reference_outputs(c, lines)["blob"]["w-b"]
    assert [len(r) - 1 for _n, r in sorted(files.items())] == [1, 1]


# ------------------------------------------------------------------ the generator

def test_generator_covers_every_node_and_operator():
    config, lines = generate(3, n_users=20, days=10)
    ops_t, ops_w, nodes = set(), set(), set()

    def walk(n, where=False):
        if "and" in n or "or" in n:
            nodes.add("and" if "and" in n else "or")
            for c in n.get("and", n.get("or")):
                walk(c, where)
        elif "not" in n:
            nodes.add("not")
            walk(n["not"], where)
        elif "property" in n:
            ops_w.add(n["op"])
        elif "trait" in n:
            nodes.add("trait")
            ops_t.add(n["op"])
        elif "event" in n:
            nodes.add("event")
            if n["event"] == "*":
                nodes.add("event.any")
            nodes.update("event." + k for k in ("within", "where", "min_count", "max_count")
                         if k in n)
            if "within" not in n:
                nodes.add("event.alltime")
            if "where" not in n:
                nodes.add("event.nowhere")
            if "where" in n:
                walk(n["where"], True)
        elif "audience" in n:
            nodes.add("audience")

    for a in config["audiences"]:
        walk(a["condition"])
    ops = set("eq ne gt gte lt lte in not_in contains starts_with ends_with exists missing "
              "matches".split())
    assert ops_t == ops and ops_w == ops
    assert nodes >= {"and", "or", "not", "trait", "event", "event.within", "event.where",
                     "event.min_count", "event.max_count", "event.alltime", "event.nowhere",
                     "event.any", "audience"}
    # nested: an audience referencing an audience that references audiences
    refs = {a["slug"]: json.dumps(a["condition"]) for a in config["audiences"]}
    assert '"audience": "vip"' in refs["vip_or_enterprise"]
    def load(x):
        try:
            return json.loads(x)
        except ValueError:
            return None
    parsed = [load(x) for x in lines]
    forms = {type(p.get("ts")).__name__ for p in parsed if isinstance(p, dict) and "ts" in p}
    assert {"str", "int", "float"} <= forms
    assert any(isinstance(p, dict) and "event_id" not in p and "kind" not in p for p in parsed)
    assert any(isinstance(p, dict) and p.get("kind") == "system" for p in parsed)
    out = R.reference_outputs(config, lines)
    assert len(out["deadletter"]) == 17
    assert generate(3, n_users=20, days=10) == (config, lines)        # deterministic


# ------------------------------------------------------------------ dense-grid cross-check
# The reference evaluates only at event times and at ts + within. On data whose times and windows
# are whole minutes, evaluating every minute must give exactly the same transitions.


_WITHINS = [None, "30m", "2h", "1d", "90m"]


@st.composite
def _conditions(draw, depth, refs):
    kinds = ["event", "trait"] + (["audience"] if refs else []) + \
        (["and", "or", "not"] if depth > 0 else [])
    k = draw(st.sampled_from(kinds))
    if k == "event":
        node = {"event": draw(st.sampled_from(["a", "b", "*"]))}
        w = draw(st.sampled_from(_WITHINS))
        if w:
            node["within"] = w
        if draw(st.booleans()):
            node["min_count"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            node["max_count"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            node["where"] = {"property": "x", "op": draw(st.sampled_from(["gt", "eq", "lte"])),
                             "value": draw(st.integers(0, 4))}
        return node
    if k == "trait":
        op = draw(st.sampled_from(["eq", "gte", "exists", "missing", "ne"]))
        return {"trait": "t", "op": op, "value": draw(st.integers(0, 3))}
    if k == "audience":
        return {"audience": draw(st.sampled_from(refs))}
    if k == "not":
        return {"not": draw(_conditions(depth - 1, refs))}
    return {k: draw(st.lists(_conditions(depth - 1, refs), min_size=1, max_size=3))}


@st.composite
def _cases(draw):
    auds = []
    for i in range(3):
        auds.append(("s%d" % i, draw(_conditions(2, ["s%d" % j for j in range(i)]))))
    n = draw(st.integers(1, 10))
    lines = []
    for k in range(n):
        minute = draw(st.integers(0, 3 * 24 * 60))
        obj = {"event_id": "e%02d" % k, "user_id": "u1", "event": draw(st.sampled_from("abp")),
               "ts": 1793491200 + 60 * minute, "properties": {"x": draw(st.integers(0, 4))}}
        if draw(st.booleans()):
            obj["traits"] = {"t": draw(st.one_of(st.none(), st.integers(0, 3)))}
        lines.append(json.dumps(obj))
    return cfg(auds), lines


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(_cases())
def test_points_equal_dense_minute_grid(case):
    config, lines = case
    got = spans(config, lines)
    c = R.normalise_config(config)
    events, _s, _d = R.parse_lines(lines)
    model = R.build_models(c, events)[("user_id", "u1")]
    first = model.first_ts
    last = max(e.ts for e in model.events) + R.DAY + 2 * 60 * R.US
    dense = {}
    for a in c["audiences"]:
        sp, prev = [], False
        for T in range(first, last, 60 * R.US):
            v = model.cond(a["condition"], T)          # membership == condition at T
            if v and not prev:
                sp.append([R.fmt_time(T), None])
            elif prev and not v:
                sp[-1][1] = R.fmt_time(T)
            prev = v
        if sp:
            dense[a["slug"]] = [tuple(x) for x in sp]
    assert got == dense
