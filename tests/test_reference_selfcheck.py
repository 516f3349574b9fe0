"""Hand-computed cases proving the brute-force reference (tests/reference.py) right.

Every expected value below was worked out by hand from CONTRACT.md and docs/SEMANTICS.md; none is
produced by the reference itself (message ids are recomputed here from the documented formula).
"""

import hashlib
import json

import pytest

from tests import reference as R
from tests.datagen import generate


def line(**obj):
    return json.dumps(obj)


def ev(uid, name, ts, **kw):
    obj = {"user_id": uid, "event": name, "ts": ts}
    obj.update(kw)
    return json.dumps(obj)


def cfg(audiences, works=()):
    return {"account": {"name": "acme", "aid": 1234},
            "audiences": [dict(id="id-" + slug, slug=slug, name=slug, condition=c)
                          for slug, c in audiences],
            "works": list(works)}


def spans(config, lines, user="u1", key="user_id"):
    return R.reference_transitions(config, lines).get((key, user), {})


def mid(msg):
    body = {k: v for k, v in msg.items() if k != "message_id"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


FREQ = ("frequent_buyers", {"event": "purchase", "within": "7d", "min_count": 3})


# ------------------------------------------------------------------ time handling

@pytest.mark.parametrize("value, expected", [
    ("2026-11-01T10:00:00Z", "2026-11-01T10:00:00Z"),
    ("2026-11-01T12:00:00+02:00", "2026-11-01T10:00:00Z"),
    ("2026-11-01T04:30:00-05:30", "2026-11-01T10:00:00Z"),
    ("2026-11-01T10:00:00.5Z", "2026-11-01T10:00:00.500Z"),
    ("2026-11-01T10:00:00.123456Z", "2026-11-01T10:00:00.123456Z"),
    ("2026-11-01T10:00:00.120000Z", "2026-11-01T10:00:00.120Z"),
    ("2026-11-01T10:00:00.000Z", "2026-11-01T10:00:00Z"),
    (1793527200, "2026-11-01T10:00:00Z"),
    (1793527200.25, "2026-11-01T10:00:00.250Z"),
    (1793527200000, "2026-11-01T10:00:00Z"),           # > 1e11: milliseconds
    (1793527200007, "2026-11-01T10:00:00.007Z"),
])
def test_time_forms(value, expected):
    assert R.fmt_time(R.parse_time(value)) == expected


def test_epoch_seconds_vs_milliseconds_threshold():
    assert R.parse_time(99999999999) == 99999999999 * R.US           # <= 1e11: seconds
    assert R.parse_time(100000000001) == 100000000001 * 1000         # > 1e11: milliseconds
    assert R.parse_time(1793527200.125) == 1793527200 * R.US + 125000


def test_durations():
    assert R.parse_duration("30m") == 30 * 60 * R.US
    assert R.parse_duration("7d") == 7 * R.DAY
    assert R.parse_duration("1w") == 7 * R.DAY
    assert R.parse_duration("90s") == 90 * R.US
    assert R.parse_duration("12h") == 12 * R.HOUR


# ------------------------------------------------------------------ audiences

def test_three_purchases_in_7_days_exit_exactly_when_oldest_leaves():
    c = cfg([FREQ])
    lines = [ev("u1", "purchase", "2026-11-01T10:00:00.250Z", event_id="p1"),
             ev("u1", "purchase", "2026-11-02T09:00:00Z", event_id="p2"),
             ev("u1", "purchase", "2026-11-03T08:00:00Z", event_id="p3"),
             ev("u2", "login", "2026-11-20T00:00:00Z")]
    assert spans(c, lines) == {"frequent_buyers": [("2026-11-03T08:00:00Z",
                                                    "2026-11-08T10:00:00.250Z")]}
    assert spans(c, lines, "u2") == {}


def test_a_later_purchase_extends_or_renews_membership():
    # p1 counts until 11-08T10:00, p2 until 11-09T09:00, p3 until 11-10T08:00.
    c = cfg([FREQ])
    first3 = [ev("u1", "purchase", "2026-11-01T10:00:00Z", event_id="p1"),
              ev("u1", "purchase", "2026-11-02T09:00:00Z", event_id="p2"),
              ev("u1", "purchase", "2026-11-03T08:00:00Z", event_id="p3")]
    # p4 at 11-08T09:30, before p1 leaves: 4 then 3 in the window -> one span until p2 leaves
    lines = first3 + [ev("u1", "purchase", "2026-11-08T09:30:00Z", event_id="p4")]
    assert spans(c, lines)["frequent_buyers"] == [("2026-11-03T08:00:00Z", "2026-11-09T09:00:00Z")]
    # p4 at 11-08T10:30, after p1 left at 10:00: exit at 10:00, re-enter at 10:30, exit when p2 leaves
    lines = first3 + [ev("u1", "purchase", "2026-11-08T10:30:00Z", event_id="p4")]
    assert spans(c, lines)["frequent_buyers"] == [("2026-11-03T08:00:00Z", "2026-11-08T10:00:00Z"),
                                                  ("2026-11-08T10:30:00Z", "2026-11-09T09:00:00Z")]


def test_window_boundary_is_half_open():
    # p1 leaves at exactly 11-08T10:00, when p4 arrives: at that T p1 no longer counts
    # (T < ts + within is false) and p4 does -> p2 p3 p4 = 3, no exit; p2 leaves at 11-09T10:00.
    c = cfg([FREQ])
    lines = [ev("u1", "purchase", "2026-11-01T10:00:00Z", event_id="p1"),
             ev("u1", "purchase", "2026-11-02T10:00:00Z", event_id="p2"),
             ev("u1", "purchase", "2026-11-03T10:00:00Z", event_id="p3"),
             ev("u1", "purchase", "2026-11-08T10:00:00Z", event_id="p4")]
    assert spans(c, lines)["frequent_buyers"] == [("2026-11-03T10:00:00Z", "2026-11-09T10:00:00Z")]


def test_max_count():
    c = cfg([("light", {"event": "page_view", "within": "12h", "max_count": 2})])
    lines = [ev("u1", "page_view", "2026-11-01T00:00:00Z", event_id="v1"),
             ev("u1", "page_view", "2026-11-01T01:00:00Z", event_id="v2"),
             ev("u1", "page_view", "2026-11-01T02:00:00Z", event_id="v3")]
    # 1 view: in; 3 views: out; v1 leaves at 12:00 -> 2 views: in; v2 leaves at 13:00 -> 1: in;
    # v3 leaves at 14:00 -> 0 (min_count defaults to 1): out.
    assert spans(c, lines)["light"] == [("2026-11-01T00:00:00Z", "2026-11-01T02:00:00Z"),
                                        ("2026-11-01T12:00:00Z", "2026-11-01T14:00:00Z")]


def test_at_most_with_min_count_zero_and_not():
    c = cfg([("no_login_a", {"event": "login", "within": "1d", "min_count": 0, "max_count": 0}),
             ("no_login_b", {"not": {"event": "login", "within": "1d"}})])
    lines = [ev("u1", "profile", "2026-11-01T00:00:00Z", traits={"x": 1}),
             ev("u1", "login", "2026-11-01T05:00:00Z")]
    exp = [("2026-11-01T00:00:00Z", "2026-11-01T05:00:00Z"), ("2026-11-02T05:00:00Z", None)]
    s = spans(c, lines)
    assert s["no_login_a"] == exp
    assert s["no_login_b"] == exp


def test_no_membership_before_first_event():
    c = cfg([("never_bought", {"not": {"event": "purchase"}})])
    lines = [ev("u1", "login", "2026-11-05T00:00:00Z"),
             ev("u1", "purchase", "2026-11-06T00:00:00Z")]
    assert spans(c, lines)["never_bought"] == [("2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z")]


def test_nested_audience_references():
    c = cfg([("rich", {"trait": "ltv", "op": "gte", "value": 100}),
             ("active_rich", {"and": [{"audience": "rich"},
                                      {"event": "purchase", "within": "2d"}]}),
             ("top", {"or": [{"audience": "active_rich"},
                             {"trait": "plan", "op": "eq", "value": "enterprise"}]})])
    lines = [ev("u1", "purchase", "2026-11-01T00:00:00Z", traits={"ltv": 50}),
             ev("u1", "purchase", "2026-11-02T00:00:00Z", traits={"ltv": 150}),
             ev("u1", "profile", "2026-11-05T00:00:00Z", traits={"plan": "enterprise"}),
             ev("u1", "purchase", "2026-11-06T00:00:00Z"),
             ev("u1", "profile", "2026-11-07T00:00:00Z", traits={"plan": "free"})]
    s = spans(c, lines)
    assert s["rich"] == [("2026-11-02T00:00:00Z", None)]
    # purchases at 11-02 (until 11-04) and 11-06 (until 11-08)
    assert s["active_rich"] == [("2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z"),
                                ("2026-11-06T00:00:00Z", "2026-11-08T00:00:00Z")]
    # enterprise from 11-05 to 11-07 bridges the gap between the two active_rich spans
    assert s["top"] == [("2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z"),
                        ("2026-11-05T00:00:00Z", "2026-11-08T00:00:00Z")]


def test_trait_null_removal_and_tie_order():
    c = cfg([("has_email", {"trait": "email", "op": "exists"}),
             ("no_email", {"trait": "email", "op": "missing"})])
    lines = [ev("u1", "profile", "2026-11-01T00:00:00Z", event_id="e1", traits={"email": "a@x.com"}),
             ev("u1", "profile", "2026-11-02T00:00:00Z", event_id="e2", traits={"email": None}),
             # same ts: ordered by event_id, "e3a" (null) before "e3b" (set) -> set wins
             ev("u1", "profile", "2026-11-03T00:00:00Z", event_id="e3b", traits={"email": "b@x.com"}),
             ev("u1", "profile", "2026-11-03T00:00:00Z", event_id="e3a", traits={"email": None})]
    s = spans(c, lines)
    assert s["has_email"] == [("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"),
                              ("2026-11-03T00:00:00Z", None)]
    assert s["no_email"] == [("2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z")]


def test_operators_and_type_mismatch():
    op = R.apply_op
    M = R._MISSING
    assert op("eq", 5, 5.0) and not op("eq", "5", 5) and not op("eq", True, 1)
    assert op("eq", True, True) and not op("eq", 1, True)
    assert op("ne", "a", "b") and not op("ne", M, "b") and not op("ne", 5, "b")
    assert op("gt", 10, 9.5) and not op("gt", "10", 9) and op("gt", "b", "a")
    assert op("gt", "2026-11-02", "2026-10-20") and not op("gt", True, 0)
    assert op("gte", 5, 5) and not op("gte", M, 0) and op("lt", 1, 2) and op("lte", 2, 2)
    assert op("in", "US", ["US", "DE"]) and not op("in", "FR", ["US"]) and not op("in", M, ["US"])
    assert not op("in", 1, [True]) and op("in", 1, [1.0])
    assert op("not_in", "FR", ["US", "CA"]) and not op("not_in", "US", ["US", "CA"])
    assert not op("not_in", M, ["US"])
    assert op("contains", "hello", "ell") and op("contains", ["a", "b"], "b")
    assert not op("contains", ["a", 1], True) and not op("contains", 5, "5")
    assert op("starts_with", "Sale: x", "Sale") and not op("starts_with", 5, "5")
    assert op("ends_with", "/a/checkout", "/checkout") and not op("ends_with", M, "x")
    assert op("exists", 0, None) and op("exists", False, None) and not op("exists", M, None)
    assert op("missing", M, None) and not op("missing", "", None)
    assert op("matches", "Running Shoes", "(?i)shoe") and not op("matches", "hat", "shoe")
    assert not op("matches", 5, "5")


def test_dotted_lookup_key_first_then_path():
    assert R.lookup({"a.b": 1, "a": {"b": 2}}, "a.b") == 1
    assert R.lookup({"a": {"b": 2}}, "a.b") == 2
    assert R.lookup({"a": {"c": 2}}, "a.b") is R._MISSING


def test_where_clause():
    c = cfg([("eur_big", {"event": "purchase", "where": {
        "and": [{"property": "price", "op": "gt", "value": 100},
                {"not": {"property": "currency", "op": "ne", "value": "EUR"}},
                {"property": "product.category", "op": "eq", "value": "shoes"}]}})])
    lines = [ev("u1", "purchase", "2026-11-01T00:00:00Z",
                properties={"price": "150", "currency": "EUR", "product": {"category": "shoes"}}),
             ev("u1", "purchase", "2026-11-02T00:00:00Z",
                properties={"price": 150, "currency": "USD", "product": {"category": "shoes"}}),
             ev("u1", "purchase", "2026-11-03T00:00:00Z",
                properties={"price": 150, "currency": "EUR", "product": {"category": "shoes"}})]
    assert spans(c, lines)["eur_big"] == [("2026-11-03T00:00:00Z", None)]


def test_anonymous_and_user_id_namespaces_are_distinct():
    c = cfg([("any", {"event": "login"})])
    lines = [ev("x", "login", "2026-11-01T00:00:00Z"),
             line(anonymous_id="x", event="login", ts="2026-11-02T00:00:00Z"),
             line(user_id="", anonymous_id="y", event="login", ts="2026-11-03T00:00:00Z"),
             line(user_id="z", anonymous_id="x", event="login", ts="2026-11-04T00:00:00Z")]
    t = R.reference_transitions(c, lines)
    assert t[("user_id", "x")]["any"] == [("2026-11-01T00:00:00Z", None)]
    assert t[("anonymous_id", "x")]["any"] == [("2026-11-02T00:00:00Z", None)]
    assert t[("anonymous_id", "y")]["any"] == [("2026-11-03T00:00:00Z", None)]
    assert t[("user_id", "z")]["any"] == [("2026-11-04T00:00:00Z", None)]
    assert len(t) == 4


# ------------------------------------------------------------------ dedupe

def test_dedupe_within_and_after_24h():
    c = cfg([("two_buys", {"event": "purchase", "min_count": 2})])
    base = {"user_id": "u1", "event": "purchase", "ts": "2026-11-01T00:00:00Z"}
    # with event_id: copies at +0, +23h59m (duplicate) -> 1 purchase
    a = [line(event_id="p1", received_at="2026-11-01T00:00:00Z", **base),
         line(event_id="p1", received_at="2026-11-01T23:59:00Z", **base)]
    assert spans(c, a) == {}
    # a copy at exactly +24h starts a new run: applied again -> 2 purchases
    b = a + [line(event_id="p1", received_at="2026-11-02T00:00:00Z", **base)]
    assert spans(c, b)["two_buys"] == [("2026-11-01T00:00:00Z", None)]
    # without event_id: the hash ignores received_at (and an absent received_at is ts)
    d = [line(**base), line(received_at="2026-11-01T20:00:00Z", **base)]
    assert spans(c, d) == {}
    e = d + [line(received_at="2026-11-02T01:00:00Z", **base)]
    assert spans(c, e)["two_buys"] == [("2026-11-01T00:00:00Z", None)]
    # run of three: +0, +20h (dup of the first), +40h (>= first + 24h: new run) -> 2 applied
    f = [line(event_id="p9", received_at="2026-11-01T00:00:00Z", **base),
         line(event_id="p9", received_at="2026-11-02T16:00:00Z", **base),
         line(event_id="p9", received_at="2026-11-01T20:00:00Z", **base)]
    assert spans(c, f)["two_buys"] == [("2026-11-01T00:00:00Z", None)]
    # same event_id for two different users: not duplicates
    g = [line(event_id="p1", **base), line(event_id="p1", **dict(base, user_id="u2"))]
    t = R.reference_transitions(cfg([("one", {"event": "purchase"})]), g)
    assert set(t) == {("user_id", "u1"), ("user_id", "u2")}


def test_hash_event_id():
    obj = {"user_id": "u1", "event": "login", "ts": "2026-11-01T00:00:00Z", "traits": {"n": "é"}}
    text = '{"event":"login","traits":{"n":"é"},"ts":"2026-11-01T00:00:00Z","user_id":"u1"}'
    e = R.parse_record(json.dumps(dict(obj, received_at=1793491205)))
    assert e.event_id == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert e.received_at == 1793491205 * R.US


# ------------------------------------------------------------------ dead letters

@pytest.mark.parametrize("raw", [
    "not json",
    '{"user_id": "u1", "event": "x"',
    "[1]",
    '{"user_id": "u1", "event": "x"}',
    '{"user_id": "u1", "ts": 1793527200}',
    '{"event": "x", "ts": 1793527200}',
    '{"user_id": "", "anonymous_id": "", "event": "x", "ts": 1793527200}',
    '{"user_id": 5, "event": "x", "ts": 1793527200}',
    '{"user_id": "u1", "event": "x", "ts": "tomorrow"}',
    '{"user_id": "u1", "event": "x", "ts": 1793527200, "properties": []}',
    '{"user_id": "u1", "event": "x", "ts": 1793527200, "received_at": "soon"}',
    '{"kind": "system", "ts": 1793527200, "data": {"subject_type": "work", "verb": "failed"}}',
    '{"kind": "system", "id": "s", "ts": 1793527200, "data": {"subject_type": "work"}}',
    '{"kind": "system", "id": "s", "ts": 1793527200, "data": {"subject_type": "w", "verb": "failed"}}',
    '{"kind": "system", "id": "s", "ts": 1793527200, "data": {"subject_type": "work", "verb": "x"}}',
])
def test_dead_letters(raw):
    out = R.reference_outputs(cfg([]), [raw])
    assert out["deadletter"] == [raw]


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

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

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
