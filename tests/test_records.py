import json

import pytest
from hypothesis import given, settings, strategies as st

from cdp_activation.core.records import InputError, ProfileEvent, SystemEvent, content_hash, parse_record
from cdp_activation.core.timeutil import format_time, parse_duration, parse_time

T0 = parse_time("2026-11-20T10:00:00Z")


@pytest.mark.parametrize("value", [
    "2026-11-20T10:00:00Z", "2026-11-20T11:00:00+01:00", "2026-11-20T05:00:00-0500",
    "2026-11-20t10:00:00z", 1795168800, 1795168800.0, 1795168800000, "2026-11-20 10:00:00Z"])
def test_every_timestamp_form(value):
    assert parse_time(value) == T0


def test_fractions_and_milliseconds_are_exact():
    assert parse_time("2026-11-20T10:00:00.123456Z") == T0 + 123456
    assert parse_time(1795168800123) == T0 + 123000
    assert parse_time(1795168800.5) == T0 + 500000
    assert format_time(T0 + 123000) == "2026-11-20T10:00:00.123Z"
    assert format_time(T0 + 1) == "2026-11-20T10:00:00.000001Z"
    assert format_time(T0) == "2026-11-20T10:00:00Z"


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", True, None, [], "2026-11-20"])
def test_bad_timestamps_are_errors(bad):
    with pytest.raises(ValueError):
        parse_time(bad)


def test_durations():
    assert parse_duration("30m") == 30 * 60 * 10**6
    assert parse_duration("7d") == 7 * 86400 * 10**6
    assert parse_duration("2w") == 14 * 86400 * 10**6
    for bad in ("7", "0d", "1y", "-1d", 7):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_profile_event_fields_and_defaults():
    e = parse_record(json.dumps({"anonymous_id": "a1", "event": "view", "ts": "2026-11-20T10:00:00Z",
                                 "properties": {"p": 1}, "traits": {"email": None}}))
    assert isinstance(e, ProfileEvent)
    assert (e.key, e.key_field, e.received_at, e.ts) == ("a1", "anonymous_id", T0, T0)
    assert e.event_id == content_hash({"anonymous_id": "a1", "event": "view", "ts": "2026-11-20T10:00:00Z",
                                       "properties": {"p": 1}, "traits": {"email": None}})
    identified = parse_record({"user_id": "u", "anonymous_id": "a", "event": "x", "ts": 1, "event_id": "e"})
    assert (identified.key, identified.key_field, identified.event_id) == ("u", "user_id", "e")


def test_content_hash_ignores_received_at_and_key_order():
    a = {"user_id": "u", "event": "x", "ts": 1, "received_at": 5}
    b = {"received_at": 9, "ts": 1, "event": "x", "user_id": "u"}
    assert content_hash(a) == content_hash(b)


@pytest.mark.parametrize("line,reason", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"event": "x", "ts": 1}', "user_id"),
    ('{"user_id": "u", "ts": 1}', "'event'"),
    ('{"user_id": "u", "event": "x"}', "'ts'"),
    ('{"user_id": 5, "event": "x", "ts": 1}', "'user_id' must be a string"),
    ('{"user_id": "u", "event": "x", "ts": "soon"}', "'ts'"),
    ('{"user_id": "u", "event": "x", "ts": 1, "properties": []}', "'properties' must be an object"),
    ('{"user_id": "u", "event": "x", "ts": 1, "traits": "x"}', "'traits' must be an object"),
    ('{"kind": "system", "ts": 1, "data": {"subject_type": "work", "verb": "failed"}}', "'id'"),
    ('{"kind": "system", "id": "s", "ts": 1, "data": {"verb": "failed"}}', "subject_type"),
    ('{"kind": "system", "id": "s", "ts": 1, "data": {"subject_type": "nope", "verb": "failed"}}', "subject_type"),
    ('{"kind": "system", "id": "s", "ts": 1, "data": {"subject_type": "work", "verb": "exploded"}}', "verb"),
])
def test_bad_records_name_the_reason(line, reason):
    with pytest.raises(InputError) as info:
        parse_record(line)
    assert reason in str(info.value)


def test_system_event():
    e = parse_record('{"kind": "system", "id": "se-1", "ts": "2026-11-20T10:00:00Z", '
                     '"data": {"aid": 1, "subject_type": "work", "subject_id": "w-1", "verb": "failed"}}')
    assert isinstance(e, SystemEvent)
    assert (e.id, e.subject_type, e.subject_id, e.verb, e.ts) == ("se-1", "work", "w-1", "failed", T0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_rejected_with_a_reason(raw):
    try:
        record = parse_record(raw)
    except InputError as exc:
        assert str(exc)
    else:
        assert isinstance(record, (ProfileEvent, SystemEvent))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=5), lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["user_id", "anonymous_id", "event", "ts", "received_at",
                                        "event_id", "properties", "traits", "kind", "id", "data"]),
                       json_values, max_size=8))
def test_any_json_object_is_parsed_or_rejected_with_a_reason(obj):
    try:
        parse_record(json.dumps(obj))
    except InputError as exc:
        assert str(exc)


@settings(max_examples=500, deadline=None)
@given(st.integers(-62135596800 * 10**6, 253402300799 * 10**6))
def test_format_time_round_trips_and_matches_datetime(us):
    import datetime as dt
    text = format_time(us)
    assert parse_time(text) == us
    d = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
    assert text[:19] == "%04d-%02d-%02dT%02d:%02d:%02d" % (d.year, d.month, d.day, d.hour, d.minute, d.second)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4102444800 * 10**6), min_size=2, max_size=8))
def test_time_sort_key_orders_formatted_times_like_the_times(values):
    from cdp_activation.core.messages import time_sort_key
    assert sorted(values, key=lambda v: time_sort_key(format_time(v))) == sorted(values)


@pytest.mark.parametrize("ts", ["1e306", "-1e306", "1e300", "123456789012345678901234567890"])
def test_a_huge_epoch_number_is_a_dead_letter_not_a_crash(ts):
    line = '{"user_id": "u1", "event": "purchase", "ts": %s}' % ts
    with pytest.raises(InputError, match="out of range"):
        parse_record(line)


# -- time bounds (CONTRACT 2) -------------------------------------------------------------------

def test_a_ts_before_2000_is_out_of_bounds():
    from cdp_activation.core.records import time_bounds_error
    old = parse_record({"user_id": "u", "event": "x", "ts": 5})
    assert time_bounds_error(old) == "field 'ts': 1970-01-01T00:00:05Z is before 2000-01-01T00:00:00Z"
    first = parse_record({"user_id": "u", "event": "x", "ts": "2000-01-01T00:00:00Z"})
    assert time_bounds_error(first) is None
    system = parse_record({"kind": "system", "id": "s", "ts": "1999-12-31T23:59:59Z",
                           "data": {"subject_type": "work", "verb": "failed"}})
    assert "before 2000-01-01" in time_bounds_error(system)


def test_a_ts_more_than_the_skew_after_received_at_is_out_of_bounds():
    from cdp_activation.core.records import time_bounds_error
    received = "2026-11-20T10:00:00Z"
    at_limit = parse_record({"user_id": "u", "event": "x", "ts": "2026-11-27T10:00:00Z",
                             "received_at": received})
    beyond = parse_record({"user_id": "u", "event": "x", "ts": "2026-11-27T10:00:00.001Z",
                           "received_at": received})
    assert time_bounds_error(at_limit) is None
    assert time_bounds_error(beyond) == (
        "field 'ts': 2026-11-27T10:00:00.001Z lies more than 7d after received_at "
        "2026-11-20T10:00:00Z (input.max_ts_skew)")
    assert time_bounds_error(beyond, max_ts_skew=8 * 86400 * 10**6) is None
    assert "more than 1h after" in time_bounds_error(at_limit, max_ts_skew=3600 * 10**6)
    # A live record without received_at is measured against its arrival time.
    live = parse_record({"user_id": "u", "event": "x", "ts": "9999-12-31T23:00:00Z"},
                        default_received_at=T0)
    assert "lies more than 7d after received_at 2026-11-20T10:00:00Z" in time_bounds_error(live)
    # A file record without received_at has received_at = ts: only the 2000 rule applies.
    assert time_bounds_error(parse_record({"user_id": "u", "event": "x",
                                           "ts": "9999-12-31T23:00:00Z"})) is None


def test_a_line_that_is_not_utf8_keeps_its_bytes_in_the_dead_letter():
    import base64
    from cdp_activation.core.records import dead_letter
    raw = b'{"user_id":"caf\xe9","event":"e","ts":1795000000}'
    with pytest.raises(InputError) as info:
        parse_record(raw)
    letter = dead_letter(raw, info.value, "f.jsonl:3")
    assert base64.b64decode(letter["raw_b64"]) == raw
    assert letter["raw"] == '{"user_id":"caf\\xe9","event":"e","ts":1795000000}'
    assert "\ufffd" not in letter["raw"]
    assert letter["error"].startswith("not UTF-8") and letter["source"] == "f.jsonl:3"
    # UTF-8 bytes and text need no copy: "raw" is the input itself.
    assert dead_letter("not json", "not JSON", "s") == {"raw": "not json", "error": "not JSON",
                                                        "source": "s"}
    assert "raw_b64" not in dead_letter("caf\u00e9".encode("utf-8"), "not JSON", "s")
