"""The fast paths of parsing and message building give exactly what the straightforward
definitions give (byte for byte, error for error).

Each reference below is the plain definition the fast code replaces: canonical JSON is the
standard library's ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, a
line is read by the standard library whenever it holds a run of 19 or more digits (orjson would
read such an integer as a float) and by orjson otherwise, records are validated field by field
(``_checked_profile_event``), times go through ``datetime``. Values are drawn where the two
differ most easily: floats (orjson writes ``1e-7`` where json writes ``1e-07``), NaN, integers
beyond 64 bits, long digit runs in numbers and strings, non-ASCII digits and text, lone
surrogates, nesting, duplicate keys. Each test also checks that the fast path was really taken.
"""
import datetime as dt
import hashlib
import io
import json
import re
import types

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import cdp_activation.core.records as records
from cdp_activation.core.conditions import Audience
from cdp_activation.core.workflows import EventHubSettings
from cdp_activation.core.engine import UserChange
from cdp_activation.core.messages import build_message, message_id
from cdp_activation.core.records import (InputError, canonical_json_bytes, json_agrees,
                          parse_record)
from cdp_activation.core.timeutil import OPEN_EXIT, format_time, parse_time

SETTINGS = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------------------------------------
# the straightforward definitions
# ------------------------------------------------------------------------------------------------


def reference_canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def reference_decode(line):
    """Reading a line as it was defined before the fast path (stdlib on a long digit run)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("not UTF-8: %s" % exc) from None
    try:
        if re.search(r"\d{19,}", line):
            raise ValueError("integers beyond 64 bits")
        obj = orjson.loads(line)
    except (ValueError, RecursionError):
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InputError("not JSON: %s" % exc) from None
        except RecursionError:
            raise InputError("not JSON: nested too deeply") from None
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("a string holds an unpaired surrogate escape (not valid Unicode)") from None
    if not isinstance(obj, dict):
        raise InputError("not a JSON object")
    return obj


def reference_parse(line):
    obj = line if isinstance(line, dict) else reference_decode(line)
    try:
        if obj.get("kind") == "system":
            return records._system_event(obj, None)
        record = records._checked_profile_event(obj, None)
        if obj.get("event_id") is None:  # and the dedupe key from the stdlib's canonical JSON
            body = {k: v for k, v in obj.items() if k != "received_at"}
            assert record.event_id == hashlib.sha256(reference_canonical(body)).hexdigest()
        return record
    except UnicodeEncodeError:
        raise InputError("a string holds an unpaired surrogate escape (not valid Unicode)") from None
    except RecursionError:
        raise InputError("nested too deeply") from None


def outcome(fn, *args):
    """What a call gives: its value (with types: 1, 1.0 and True differ) or its error."""
    try:
        return "ok", repr(fn(*args))
    except Exception as exc:  # the error is part of the result: same type, same message
        return type(exc).__name__, str(exc)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def reference_format_time(micros):
    m = _EPOCH + dt.timedelta(microseconds=micros)
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % (m.year, m.month, m.day, m.hour, m.minute, m.second)
    if micros % 1_000_000:
        digits = "%06d" % (micros % 1_000_000)
        text += "." + (digits[:3] if digits.endswith("000") else digits)
    return text + "Z"


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------

_tricky_text = st.sampled_from([
    "", "é", "日本", "\U0001F600", "\u2028", "\x00\x1f\x7f", '"\\/', "1234567890123456789",
    "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩", "\ud800", "x\udfffy"])
scalars = (st.none() | st.booleans() | st.integers(-2 ** 64 - 5, 2 ** 64 + 5)
           | st.integers(-10 ** 30, 10 ** 30) | st.floats() | st.sampled_from([1e16, 1e-7, 1e-05, -0.0])
           | st.text(max_size=8) | _tricky_text)
json_like = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | _tricky_text, inner, max_size=3), max_leaves=12)
#: Values orjson and json write alike (what takes the fast path).
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=5), inner,
                      max_size=3), max_leaves=12)


def deep(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# ------------------------------------------------------------------------------------------------
# canonical JSON and message ids
# ------------------------------------------------------------------------------------------------

@SETTINGS
@given(json_like)
@example({"a": 1e16, "b": 1e-7, "c": 1e-05, "d": float("nan"), "e": float("inf")})
@example({"big": 2 ** 64, "small": -2 ** 63 - 1, "edge": 2 ** 64 - 1})
@example({"é": "日本", "a": "\u2028", "\U0001F600": 1, "Z": 2})
@example({"s": "\ud800"})
@example({1: "non-string key"})
@example(deep(70))
@example(deep(300))
def test_canonical_json_is_the_stdlib_one(value):
    assert outcome(canonical_json_bytes, value) == outcome(reference_canonical, value)


@SETTINGS
@given(plain)
def test_canonical_json_of_plain_values_takes_orjson(value):
    expected = reference_canonical(value)
    assert json_agrees([value])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "canonical_json", None)  # the stdlib path would now fail
        assert canonical_json_bytes(value) == expected


@SETTINGS
@given(json_like)
def test_message_id_is_the_hash_of_the_stdlib_canonical_json(value):
    message = {"data": value, "subscription_id": "s", "timestamp": "2026-11-20T10:00:00Z",
               "message_id": "ignored"}
    body = {k: v for k, v in message.items() if k != "message_id"}
    expected = outcome(lambda: hashlib.sha256(reference_canonical(body)).hexdigest()[:32])
    assert outcome(message_id, message) == expected


def reference_build_message(change, key_field, key, settings_, audience_list):
    """build_message as first written: the plain definition of CONTRACT 5.1."""
    if settings_.start is not None:
        if change.backfill:
            if change.time != settings_.start or not settings_.existing_users:
                return None
        elif change.time < settings_.start:
            return None
    elif change.backfill:
        return None
    position = {a: i for i, a in enumerate(settings_.audiences)}
    segment_events = []
    for audience_index, kind, entered in sorted(
            (c for c in change.changes if c[0] in position), key=lambda c: c[0]):
        audience = audience_list[audience_index]
        segment_events.append({
            "id": audience.id, "slug": audience.slug, "event": kind,
            "enter": reference_format_time(entered),
            "exit": OPEN_EXIT if kind == "enter" else reference_format_time(change.time)})
    if not segment_events:
        return None
    data = {"_created": reference_format_time(change.first_ts),
            "_modified": reference_format_time(change.last_ts)}
    traits = change.traits
    fields = settings_.user_fields if settings_.user_fields is not None else sorted(traits)
    for name in fields:
        if name in traits:
            data[name] = traits[name]
    data[key_field] = key
    data["segment_events"] = segment_events
    message = {"data": data, "subscription_id": settings_.subscription_id,
               "timestamp": reference_format_time(change.time)}
    if change.backfill:
        message["backfill"] = True
    message["message_id"] = hashlib.sha256(reference_canonical(message)).hexdigest()[:32]
    return message


_times = (st.integers(1_780_000_000, 1_800_000_000).map(lambda s: s * 1_000_000)
          | st.integers(0, 4_000_000_000_000_000) | st.integers(-10 ** 15, 0))
_trait_names = st.sampled_from(["email", "country", "ltv", "user_id", "é", "a b", "Z", "_created",
                                "\ud800"])
_names = st.sampled_from(["fb", "high_value", "é", "x\"y", "\ud800", 5, None, 1e-05])


@st.composite
def message_inputs(draw, traits=json_like, names=_names):
    n = draw(st.integers(1, 5))
    audiences = [Audience(i, draw(names), draw(names), "name", None, ()) for i in range(n)]
    time = draw(_times)
    settings_ = EventHubSettings(
        connection_string=None, subscription_id=draw(st.sampled_from(["w-eh", "é", "\ud800", 7])),
        audiences=draw(st.lists(st.integers(0, n - 1), max_size=5)),
        existing_users=draw(st.booleans()), start=draw(st.none() | st.just(time) | _times),
        user_fields=draw(st.none() | st.lists(_trait_names, max_size=4)))
    changes = tuple((draw(st.integers(0, n - 1)), draw(st.sampled_from(["enter", "exit"])),
                     draw(_times)) for _ in range(draw(st.integers(0, 4))))
    change = UserChange(time, changes, draw(st.dictionaries(_trait_names, traits, max_size=4)),
                        draw(_times), draw(_times), draw(st.booleans()))
    key_field = draw(st.sampled_from(["user_id", "anonymous_id"]))
    return change, key_field, draw(st.sampled_from(["u1", "é", "\ud800"])), settings_, audiences


def _message_outcome(fn, args):
    # json.dumps as the local sink writes it: key order and values, not only equality
    return outcome(lambda: json.dumps(fn(*args), ensure_ascii=False))


@settings(SETTINGS, max_examples=1500)
@given(message_inputs())
def test_build_message_is_the_plain_definition(args):
    assert _message_outcome(build_message, args) == _message_outcome(reference_build_message, args)


@pytest.mark.parametrize("traits", [{"ltv": 5}, {"ltv": 1e-05}, {"ltv": 2 ** 70},
                                    {"ltv": {"f": [0.5, 1e-7]}}, {"ltv": float("nan")},
                                    {"ltv": "\ud800"}, {"ltv": (1, 2)}])
@pytest.mark.parametrize("odd", [None, "slug", "id", "key", "subscription_id", "kind"])
def test_messages_with_values_orjson_writes_differently(traits, odd):
    """Values from outside that orjson writes differently: in traits, or (``odd``) elsewhere."""
    float_ = 1e-05  # orjson: 0.00001, json: 1e-05
    change = UserChange(1795168800_000_000,
                        ((0, float_ if odd == "kind" else "enter", 1795168800_000_000),), traits,
                        1795168700_000_000, 1795168800_000_000)
    settings_ = EventHubSettings(None, float_ if odd == "subscription_id" else "w-eh", [0], False,
                                 None, None)
    audience = Audience(0, float_ if odd == "id" else "fb", float_ if odd == "slug" else "fb",
                        "name", None, ())
    args = change, "user_id", float_ if odd == "key" else "u1", settings_, [audience]
    assert _message_outcome(build_message, args) == _message_outcome(reference_build_message, args)


@SETTINGS
@given(message_inputs(traits=plain, names=st.sampled_from(["fb", "é", "x\"y"])))
def test_plain_messages_take_orjson(args):
    change, key_field, key, settings_, audiences = args
    if key == "\ud800" or settings_.subscription_id in ("\ud800", 7) or "\ud800" in change.traits:
        return  # not plain: these must take the stdlib path (checked above)
    expected = _message_outcome(reference_build_message, args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "canonical_json", None)  # the stdlib path would now fail
        assert _message_outcome(build_message, args) == expected


# ------------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------------

_time_values = st.sampled_from([
    1795168800, 1795168800.5, 1795168800123, -1, 100_000_000_000, 100_000_000_001, 1e30, 1e300,
    10 ** 40, 12345678901234567890123, True, None, [], "2026-11-20T10:00:00Z",
    "2026-11-20T11:00:00+01:00", "2026-11-20T10:00:00.123456789Z", " 2026-11-20t10:00:00z ",
    "2026-02-30T00:00:00Z", "2026-11-20T24:00:00Z", "2026-11-20T23:59:60Z", "2026-11-20T23:59:61Z",
    "0000-01-01T00:00:00Z", "٢٠٢٦-١١-٢٠T10:00:00Z", "2026-11-20", "yesterday"])
_fields = ["user_id", "anonymous_id", "event", "ts", "received_at", "event_id", "properties",
           "traits", "kind", "id", "data", "extra"]
_BASES = [
    {"event_id": "e1", "user_id": "u1", "event": "purchase", "ts": 1795168800,
     "received_at": 1795168900, "properties": {"price": 5, "sku": "s"}},
    {"anonymous_id": "a1", "event": "view", "ts": "2026-11-20T10:00:00.123Z",
     "traits": {"email": "x@y", "ltv": 10}},
    {"kind": "system", "id": "se-1", "ts": "2026-11-20T10:00:00Z",
     "data": {"aid": 1, "subject_type": "work", "subject_id": "w-1", "verb": "failed"}},
]


@st.composite
def lines(draw):
    obj = dict(draw(st.sampled_from(_BASES)))
    for _ in range(draw(st.integers(0, 4))):
        field = draw(st.sampled_from(_fields))
        change = draw(st.sampled_from(["drop", "value", "time", "text"]))
        if change == "drop":
            obj.pop(field, None)
        elif change == "value":
            obj[field] = draw(json_like)
        elif change == "time":
            obj[draw(st.sampled_from(["ts", "received_at"]))] = draw(_time_values)
        else:
            obj[field] = draw(_tricky_text)
    if draw(st.booleans()):
        obj = dict(draw(st.permutations(list(obj.items()))))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    form = draw(st.sampled_from(["text", "text", "bytes", "newline", "duplicate", "bom", "object"]))
    if form == "bytes":
        return text.encode("utf-8", "surrogatepass")
    if form == "newline":
        return " " + text + "\r\n"
    if form == "duplicate":
        return text[:-1] + ', "user_id": "again"}' if text != "{}" else text
    if form == "bom":
        return "\ufeff" + text
    if form == "object":
        return json.loads(text)
    return text


@settings(SETTINGS, max_examples=3000)
@given(lines())
@example('{"user_id":"u","event":"e","ts":1,"properties":{"n":12345678901234567890123}}')
@example('{"user_id":"u","event":"e","ts":1,"properties":{"n":-9223372036854775809}}')
@example('{"user_id":"u","event":"e","ts":1,"traits":{"n":[12345678901234567890123]}}')
@example('{"user_id":"u","event":"e","ts":1,"properties":{"n":18446744073709551615}}')
@example('{"user_id":"u","event":"e","ts":1,"properties":{"f":0.12345678901234567890123}}')
@example('{"user_id":"u","event":"e","ts":1,"n":1e400}')
@example('{"user_id":"u","event":"e","ts":1,"n":NaN,"m":12345678901234567890}')
@example('{"user_id":"u","event":"e","ts":1,"s":"\\ud800"}')
@example('{"user_id":"u","event":"e","ts":12345678901234567890123}')
@example('{"user_id":"u","event":"e","ts":1,"event_id":"1234567890123456789012"}')
@example('{"user_id":"u","event":"e","ts":1,"x":"١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩"}')
@example(b'{"user_id":"u","event":"e","ts":1,"x":"\xff"}')
@example('{"user_id":"u","event":"e","ts":1,"kind":"profile","x":1.5}')
@example('{"kind":"system","user_id":"u","event":"e","ts":1,"id":"s","data":{}}')
def test_parse_record_is_the_checked_reading(line):
    assert outcome(parse_record, line) == outcome(reference_parse, line)


@pytest.mark.parametrize("depth", [60, 64, 65, 66, 70, 500, 990, 1000, 1023, 1024, 1025, 2000])
@pytest.mark.parametrize("tail", ["", ',"n":12345678901234567890123', ',"f":1.5'])
@pytest.mark.parametrize("where", ["properties", "extra"])
@pytest.mark.parametrize("event_id", ['"event_id":"e",', ""])
def test_deep_records_are_read_as_before(depth, tail, where, event_id):
    nested = "[" * depth + "]" * depth
    line = '{%s"user_id":"u","event":"e","ts":1,"%s":{"x":%s}%s}' % (event_id, where, nested, tail)
    assert outcome(lambda: parse_record(line)[:7]) == outcome(lambda: reference_parse(line)[:7])


_GENERAL_PATH = ("TypeError", "'NoneType' object is not callable")


@SETTINGS
@given(lines())
def test_what_the_fast_path_reads_is_the_reference_reading(line):
    """parse_record without its general path (decode_line): what it still reads is read right."""
    if not isinstance(line, str):
        return
    expected = outcome(reference_parse, line)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "decode_line", None)
        got = outcome(parse_record, line)
    assert got == expected or got == _GENERAL_PATH


def test_the_bench_shapes_take_the_fast_path(monkeypatch):
    monkeypatch.setattr(records, "decode_line", None)
    for line in ('{"event_id":"b-0","event":"add_to_cart","ts":1793276666,"user_id":"u",'
                 '"properties":{"price":60,"sku":"s"},"received_at":1793276966}\n',
                 '{"anonymous_id":"a","event":"view","ts":"2026-11-20T10:00:00.5Z","x":[1,{}]}',
                 '{"user_id":"u","event":"buy","ts":1,"properties":{"price":19.99}}'):
        assert parse_record(line) == reference_parse(line)


@SETTINGS
@given(st.text(st.sampled_from("0123456789x٣é"), max_size=60))
def test_long_digit_runs_are_found_as_by_the_regex(text):
    assert records._has_long_digit_run(text) == bool(re.search(r"\d{19,}", text))


# ------------------------------------------------------------------------------------------------
# times
# ------------------------------------------------------------------------------------------------

def reference_parse_time(value):
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                 r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))$", value.strip())
    if not m:
        return "error"
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        moment = dt.datetime(year, month, day, hour, minute, 59 if second == 60 else second,
                             tzinfo=dt.timezone.utc)
    except ValueError as exc:
        return "error: %s" % exc
    delta = moment - _EPOCH
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000
    micros += int(((m.group(7) or "") + "000000")[:6])
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * 1_000_000
        micros -= offset if m.group(9) == "+" else -offset
    return micros


@settings(SETTINGS, max_examples=3000)
@given(st.builds("{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}{}{}".format,
                 st.integers(0, 10000), st.integers(0, 13), st.integers(0, 32),
                 st.sampled_from("Tt "), st.integers(0, 25), st.integers(0, 61), st.integers(0, 61),
                 st.sampled_from(["", ".1", ".123", ".1234567", ".123456789"]),
                 st.sampled_from(["Z", "z", "+00:00", "-05:30", "+1200", "+24:00", ""]))
       | st.text(st.sampled_from("0123456789-:TZ.+ ١"), max_size=30))
@example("2026-11-20T23:59:60Z")
@example("2024-02-29T00:00:00Z")
@example("2023-02-29T00:00:00Z")
@example("٢٠٢٦-١١-٢٠T10:00:00Z")
def test_parse_time_of_text_is_the_datetime_reading(text):
    expected = reference_parse_time(text)
    try:
        got = parse_time(text)
    except ValueError as exc:
        assert isinstance(expected, str), (text, str(exc), expected)
        if expected.startswith("error: "):
            assert str(exc).endswith(expected[len("error: "):])
    else:
        assert got == expected


@settings(SETTINGS, max_examples=3000)
@given(st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999)
       | st.integers(1_780_000_000, 1_800_000_000).map(lambda s: s * 1_000_000)
       | st.integers(1_780_000_000_000, 1_800_000_000_000).map(lambda ms: ms * 1000))
def test_format_time_is_the_datetime_rendering(micros):
    assert format_time(micros) == reference_format_time(micros)


# ------------------------------------------------------------------------------------------------
# _ParseFile: counters added per chunk, totals exact
# ------------------------------------------------------------------------------------------------

class _Counter:
    def __init__(self):
        self.total, self.calls = 0, 0

    def inc(self, n=1):
        self.total += n
        self.calls += 1


def _read_file(text, time_range=None, chunk_lines=None, monkeypatch=None, progress_seconds=0.0):
    from cdp_activation.transforms import read
    if chunk_lines is not None:
        # Blocks of about chunk_lines lines, each flushed at once (any packed group is > 1 byte).
        monkeypatch.setattr(read, "block_bytes", lambda size: 40 * chunk_lines)
        monkeypatch.setattr(read, "CHUNK_BYTES", 1)
    fn = read._ParseFile(time_range, progress_seconds)
    counters = _Counter(), _Counter(), _Counter()
    fn._records_read, fn._deadlettered, fn._out_of_range = counters
    data = text.encode("utf-8")
    readable = types.SimpleNamespace(metadata=types.SimpleNamespace(path="/in/f.jsonl", size_in_bytes=len(data)),
                                     open=lambda: io.BytesIO(data))
    outputs = list(_process(fn, readable))
    return outputs, counters


def _process(fn, readable):
    """The DoFn over the whole file, one range."""
    from apache_beam.io.restriction_trackers import OffsetRestrictionTracker
    return fn.process(readable, OffsetRestrictionTracker(fn.initial_restriction(readable)))


@pytest.mark.parametrize("chunk_lines", [None, 1, 2, 3])
def test_parse_file_counts_every_line_once(chunk_lines, monkeypatch):
    base = 1_700_000_000  # 2023: records before 2000 are dead letters
    good = '{"user_id":"u%d","event":"e","ts":%d}'
    system = ('{"kind":"system","id":"s","ts":%d,"data":{"subject_type":"work","verb":"failed"}}'
              % (base + 150))
    text = "\n".join([good % (1, base + 100), "not json", good % (2, base + 200), "",
                      good % (1, base + 300), system, good % (3, base + 10 ** 9), "[1]",
                      good % (2, base + 50)]) + "\n"
    outputs, (read_, dead, outside) = _read_file(text, time_range=(base * 10 ** 6, (base + 10 ** 6) * 10 ** 6),
                                                 chunk_lines=chunk_lines, monkeypatch=monkeypatch)
    assert (read_.total, dead.total, outside.total) == (8, 2, 1)
    from cdp_activation.core.blocks import unpack_rows
    events = sum(len(unpack_rows(o.value[1])) for o in outputs if not hasattr(o, "tag"))
    assert events == 4
    if chunk_lines is None:
        assert (read_.calls, dead.calls, outside.calls) == (1, 1, 1)  # once per range, not per line


def test_parse_file_of_no_lines_counts_nothing():
    outputs, counters = _read_file("\n  \n")
    assert outputs == [] and [c.calls for c in counters] == [0, 0, 0]


def test_parse_file_counts_the_blocks_it_read_before_a_failure(monkeypatch):
    from cdp_activation.core import blocks
    from cdp_activation.transforms import read

    def failing(raw, default_received_at=None):
        if "boom" in raw:
            raise RuntimeError("boom")
        return parse_record(raw)
    monkeypatch.setattr(blocks, "parse_record", failing)
    monkeypatch.setattr(read, "block_bytes", lambda size: 1)  # a block per line
    fn = read._ParseFile()
    fn._records_read, fn._deadlettered, fn._out_of_range = _Counter(), _Counter(), _Counter()
    readable = types.SimpleNamespace(
        metadata=types.SimpleNamespace(path="/in/f.jsonl", size_in_bytes=67),
        open=lambda: io.BytesIO(b'{"user_id":"u","event":"e","ts":1795000001}\nnot json\nboom\nnever\n'))
    with pytest.raises(RuntimeError):
        list(_process(fn, readable))
    assert (fn._records_read.total, fn._deadlettered.total) == (2, 1)


def test_parse_file_still_reports_progress(capsys):
    text = '{"user_id":"u","event":"e","ts":1}\n' * 2048
    _, (read_, _, _) = _read_file(text, progress_seconds=1e-9)
    assert read_.total == 2048
    err = capsys.readouterr().err
    assert "progress: /in/f.jsonl: 2048 records read," in err
    assert "progress: /in/f.jsonl: 2048 records read in" in err


def test_packed_groups_round_trip_plain_values_and_fall_back_for_others():
    import datetime
    from cdp_activation.core.blocks import pack_rows, unpack_rows
    plain = [("u1", "e1", "purchase", 10, 11, "u1", None, {"price": 2 ** 70, "s": "\ud800"}, [1.5])]
    packed = pack_rows(plain)
    assert packed[:1] == b"m" and unpack_rows(packed) == plain
    dated = [("u1", "e1", "purchase", 10, 11, "u1", None, {"at": datetime.date(2026, 11, 23)}, None)]
    packed = pack_rows(dated)
    assert packed[:1] == b"p" and unpack_rows(packed) == dated
    assert unpack_rows(plain) is plain  # a plain list of tuples (live sources) passes through
