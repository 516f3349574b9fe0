"""Hand-computed cases proving the brute-force reference (tests/reference.py) right: time handling,
audiences, dedupe and dead letters. Its outputs (messages, Blob files, the generator and the dense
grid cross-check) are in tests/test_reference_outputs_selfcheck.py.

Every expected value below was worked out by hand from CONTRACT.md and docs/SEMANTICS.md; none is
produced by the reference itself.
"""

import hashlib
import json

import pytest

from tests import reference as R
from tests.reference_cases import FREQ, cfg, ev, line, spans

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
