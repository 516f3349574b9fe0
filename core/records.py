"""Input records: parsing, validation and dedupe keys (CONTRACT section 2).

``parse_record`` turns one JSON Lines line (or an already decoded object, e.g. a Parquet row) into a
:class:`ProfileEvent` or a :class:`SystemEvent`, or raises :class:`InputError` whose message is the
dead-letter reason.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional, Protocol, TypeVar

from cdp_activation.core.timeutil import (EPOCH_SECONDS_LIMIT, MICROS, TimeFormatError, format_duration, format_time,
                           parse_time)

try:  # orjson is several times faster; the standard library is the reference and the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None
_LONG_DIGITS = re.compile(r"\d{19,}")
#: For ASCII text, the same question without the regex (several times faster): every digit
#: becomes "0", so a run of digits becomes a run of zeros.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_ZEROS = b"0" * 19
#: Deeper values take the standard library's path: its recursion limit, not orjson's, decides.
_MAX_AGREED_DEPTH = 64
_new_tuple = tuple.__new__
_MIN_SECONDS = -EPOCH_SECONDS_LIMIT
_PROFILE_FIELDS = frozenset(("user_id", "anonymous_id", "event", "ts", "received_at", "event_id",
                             "properties", "traits"))

SUBJECT_TYPES = frozenset((
    "account", "auth", "user", "campaign", "data", "entity", "experience", "journey", "program",
    "provider", "query", "report", "rollup", "schema", "schematable", "scoring", "segment",
    "segmentcollection", "segmentml", "stream", "subscription", "topic-document", "variation", "work",
    "workflow"))
VERBS = frozenset(("created", "updated", "deleted", "started", "syncing", "synced", "synccomplete",
                   "completed", "failed"))
#: Copies of a record (same dedupe key) within this long of the first copy's received_at count once.
DEDUPE_HORIZON_US = 24 * 3600 * 1_000_000
#: Records whose ``ts`` is before this (2000-01-01T00:00:00Z) are dead-lettered: no event of this
#: job is that old, while a zero, a seconds/milliseconds mix-up or a default date in a client is.
MIN_TS = 946684800 * MICROS
#: How far (microseconds) ``ts`` may lie after ``received_at`` (config ``input.max_ts_skew``): a
#: client clock runs ahead by minutes, not days; further is a broken clock or a made-up date, which
#: would otherwise hold timers and export windows open far in the future.
DEFAULT_MAX_TS_SKEW_US = 7 * 24 * 3600 * MICROS


class InputError(ValueError):
    """A record that cannot be processed; the message is the dead-letter reason."""


class Timed(Protocol):
    """A record with event and arrival times (microseconds): what :func:`dedupe_batch` orders."""

    @property
    def ts(self) -> int: ...

    @property
    def received_at(self) -> int: ...


_Timed = TypeVar("_Timed", bound=Timed)


class ProfileEvent(NamedTuple):
    key: str                 # the user key: user_id, else anonymous_id
    event_id: str            # given, else a hash of the canonical JSON without received_at
    event: str
    ts: int                  # microseconds
    received_at: int         # microseconds
    user_id: Optional[str]
    anonymous_id: Optional[str]
    properties: dict
    traits: Optional[dict]

    @property
    def key_field(self) -> str:
        return "user_id" if self.user_id else "anonymous_id"


class SystemEvent(NamedTuple):
    id: str
    ts: int
    received_at: int
    data: dict
    record: dict             # the object as received: the default webhook body

    @property
    def subject_type(self) -> str | None:
        return self.data.get("subject_type")

    @property
    def subject_id(self) -> str | int | None:
        return self.data.get("subject_id")

    @property
    def verb(self) -> str | None:
        return self.data.get("verb")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json_bytes(obj: Any, agrees: bool | None = None) -> bytes:
    """``canonical_json(obj).encode("utf-8")``, through orjson where the two cannot differ.

    They differ on floats (``1e-07`` against ``1e-7``), NaN, integers beyond 64 bits, non-string
    keys, lone surrogates and types orjson knows and json does not; ``json_agrees`` admits none of
    those, and whatever orjson still refuses takes the standard library's path, errors included.
    (Sorted keys agree: UTF-8 byte order is code point order.) ``agrees``: the caller's own
    verdict of ``json_agrees(obj)``, when it knows which parts need looking at.
    """
    if agrees is None:
        agrees = json_agrees((obj,))
    if agrees and _orjson is not None:
        try:
            return _orjson.dumps(obj, option=_orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
            pass
    return canonical_json(obj).encode("utf-8")


def json_agrees(value: dict[Any, Any] | list[Any] | tuple[Any, ...], depth: int = 0) -> bool:
    """True when ``value`` (a dict or list) holds only what orjson and the json module read and
    write alike: plain strings, integers, booleans, None, dicts and lists, not nested too deeply.

    Floats are left out: orjson writes them differently, and reads an integer beyond 64 bits as a
    float.
    """
    if depth > _MAX_AGREED_DEPTH:
        return False
    for item in (value.values() if type(value) is dict else value):
        kind = type(item)
        if kind is str or kind is int:  # by far the most common: tested first
            continue
        if kind is dict or kind is list:
            if json_agrees(item, depth + 1):
                continue
            return False
        if kind is bool or item is None:
            continue
        return False
    return True


def content_hash(obj: Mapping[str, Any]) -> str:
    """Dedupe key of a record without ``event_id``: its canonical JSON minus ``received_at``."""
    body = {k: v for k, v in obj.items() if k != "received_at"}
    return hashlib.sha256(canonical_json_bytes(body)).hexdigest()


def decode_line(line: str | bytes) -> dict[str, Any]:
    """JSON text (str or bytes) to a dict, or InputError.

    The standard library defines what is accepted (orjson is stricter on NaN, huge integers and
    nesting) and gives the clearer error messages; orjson's result is taken when it is the same.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("not UTF-8: %s" % exc) from None
    if _orjson is None:  # pragma: no cover
        obj = _stdlib_loads(line)
    else:
        try:
            obj = _orjson.loads(line)
        except (ValueError, RecursionError):
            obj = _stdlib_loads(line)
        else:
            # orjson reads an integer beyond 64 bits as a float, silently. Only a value with a
            # float (or very deep) can be affected, and only when a long digit run is present;
            # the common record is neither, and skips the costly search.
            if not (type(obj) is dict and json_agrees(obj)) and _has_long_digit_run(line):
                obj = _stdlib_loads(line)
    if not isinstance(obj, dict):
        raise InputError("not a JSON object")
    return obj


def _has_long_digit_run(text):
    """Whether ``text`` holds 19 or more digits in a row (an integer orjson may turn into a float)."""
    if text.isascii():
        return _NINETEEN_ZEROS in text.encode("ascii").translate(_DIGITS_TO_ZERO)
    return _LONG_DIGITS.search(text) is not None


def _stdlib_loads(line):
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise InputError("not JSON: %s" % exc) from None
    except RecursionError:
        raise InputError("not JSON: nested too deeply") from None
    try:  # the stdlib admits "\ud800" escapes that no UTF-8 output can carry
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("a string holds an unpaired surrogate escape (not valid Unicode)") from None
    return obj


def parse_record(line: str | bytes | dict[str, Any], default_received_at: int | None = None
                 ) -> ProfileEvent | SystemEvent:
    """Parses and validates one record.

    ``default_received_at`` is the arrival time of live sources; ``None`` (file input) uses ``ts``.
    """
    if type(line) is str and _orjson is not None:
        # The common line, read once by orjson and checked in one pass; anything else (None) takes
        # the general path below, which meets whatever it was again and handles it as it always did.
        try:
            obj = _orjson.loads(line)
            record = (_common_profile_event(obj, default_received_at, line)
                      if type(obj) is dict else None)
        except Exception:
            record = None
        if record is not None:
            return record
    obj = line if isinstance(line, dict) else decode_line(line)
    try:
        if obj.get("kind") == "system":
            return _system_event(obj, default_received_at)
        return (_common_profile_event(obj, default_received_at)
                or _checked_profile_event(obj, default_received_at))
    except UnicodeEncodeError:
        raise InputError("a string holds an unpaired surrogate escape (not valid Unicode)") from None
    except RecursionError:
        raise InputError("nested too deeply") from None


def _time_field(obj, name, required):
    value = obj.get(name)
    if value is None:
        if required:
            raise InputError("missing required field %r" % name)
        return None
    try:
        return parse_time(value)
    except TimeFormatError as exc:
        raise InputError("field %r: %s" % (name, exc)) from None


def _optional_string(obj, name):
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError("field %r must be a string, got %s" % (name, type(value).__name__))
    return value or None


def _optional_object(obj, name):
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError("field %r must be an object, got %s" % (name, type(value).__name__))
    return value


def _common_profile_event(obj, default_received_at, line=None):
    """The profile event of a common, valid record in one pass, or None: then the general path
    (``decode_line``, ``_checked_profile_event``) decides, and gives the dead-letter reason.

    ``line``: the text ``obj`` was read from by orjson. That reading is taken when it is the
    standard library's too (see ``decode_line``): when no value is a float, or no long digit run
    is there to have become one.
    """
    get = obj.get
    user_id, anonymous_id, name = get("user_id"), get("anonymous_id"), get("event")
    ts, received_at, event_id = get("ts"), get("received_at"), get("event_id")
    properties, traits = get("properties"), get("traits")
    if not ((type(user_id) is str or user_id is None)
            and (type(anonymous_id) is str or anonymous_id is None)
            and (user_id or anonymous_id) and type(name) is str and name
            and (type(event_id) is str and event_id or event_id is None)
            and (type(properties) is dict or properties is None)
            and (type(traits) is dict or traits is None)):
        return None
    if line is not None:
        if _PROFILE_FIELDS.issuperset(obj):  # not looked at yet: times, properties, traits
            agrees = (type(ts) is not float and type(received_at) is not float
                      and (properties is None or json_agrees(properties))
                      and (traits is None or json_agrees(traits)))
        elif get("kind") == "system":
            return None
        else:
            agrees = json_agrees(obj)
        if not agrees and _has_long_digit_run(line):
            return None
    try:
        # parse_time's own first case inline: most records carry whole epoch seconds
        if type(ts) is int and _MIN_SECONDS <= ts <= EPOCH_SECONDS_LIMIT:
            ts *= MICROS
        else:
            ts = parse_time(ts)
        if received_at is None:
            received_at = ts if default_received_at is None else default_received_at
        elif type(received_at) is int and _MIN_SECONDS <= received_at <= EPOCH_SECONDS_LIMIT:
            received_at *= MICROS
        else:
            received_at = parse_time(received_at)
    except TimeFormatError:
        return None
    user_id, anonymous_id = user_id or None, anonymous_id or None
    # tuple.__new__ skips the named tuple's Python-level __new__ (same object, half the cost)
    return _new_tuple(ProfileEvent, (
        user_id or anonymous_id, event_id or content_hash(obj), name, ts, received_at, user_id,
        anonymous_id, properties or {}, traits))


def _checked_profile_event(obj, default_received_at):
    user_id = _optional_string(obj, "user_id")
    anonymous_id = _optional_string(obj, "anonymous_id")
    if not user_id and not anonymous_id:
        raise InputError("missing required field 'user_id' or 'anonymous_id'")
    name = obj.get("event")
    if name is None:
        raise InputError("missing required field 'event'")
    if not isinstance(name, str) or not name:
        raise InputError("field 'event' must be a non-empty string")
    ts = _time_field(obj, "ts", required=True)
    received_at = _time_field(obj, "received_at", required=False)
    if received_at is None:
        received_at = ts if default_received_at is None else default_received_at
    event_id = _optional_string(obj, "event_id")
    if event_id is None:
        if obj.get("event_id") is not None:
            raise InputError("field 'event_id' must be a non-empty string")
        event_id = content_hash(obj)
    properties = _optional_object(obj, "properties") or {}
    traits = _optional_object(obj, "traits")
    return ProfileEvent(user_id or anonymous_id, event_id, name, ts, received_at, user_id,
                        anonymous_id, properties, traits)


def _system_event(obj, default_received_at):
    event_id = obj.get("id")
    if event_id is None:
        raise InputError("system event: missing required field 'id'")
    if not isinstance(event_id, (str, int)) or isinstance(event_id, bool):
        raise InputError("system event: field 'id' must be a string")
    ts = _time_field(obj, "ts", required=True)
    received_at = _time_field(obj, "received_at", required=False)
    if received_at is None:
        received_at = ts if default_received_at is None else default_received_at
    data = obj.get("data")
    if not isinstance(data, dict):
        raise InputError("system event: missing required object 'data'")
    subject_type, verb = data.get("subject_type"), data.get("verb")
    if subject_type is None or verb is None:
        raise InputError("system event: 'data' needs 'subject_type' and 'verb'")
    if subject_type not in SUBJECT_TYPES:
        raise InputError("system event: unknown data.subject_type %r" % (subject_type,))
    if verb not in VERBS:
        raise InputError("system event: unknown data.verb %r" % (verb,))
    if data.get("subject_id") is not None and not isinstance(data["subject_id"], (str, int)):
        raise InputError("system event: data.subject_id must be a string")
    return SystemEvent(str(event_id), ts, received_at, data, obj)


def time_bounds_error(record: ProfileEvent | SystemEvent, max_ts_skew: int = DEFAULT_MAX_TS_SKEW_US
                      ) -> str | None:
    """The dead-letter reason of a parsed record whose time is out of bounds, else None.

    Out of bounds: ``ts`` before 2000-01-01 (:data:`MIN_TS`), or more than ``max_ts_skew``
    microseconds after ``received_at`` (the arrival time for a live record without one; for a
    file record without one ``received_at`` is ``ts``, and only the first rule applies).
    """
    ts = record.ts
    if ts < MIN_TS:
        return "field 'ts': %s is before 2000-01-01T00:00:00Z" % format_time(ts)
    if ts - record.received_at > max_ts_skew:
        return ("field 'ts': %s lies more than %s after received_at %s (input.max_ts_skew)"
                % (format_time(ts), format_duration(max_ts_skew), format_time(record.received_at)))
    return None


def dead_letter(raw: Any, error: object, source: str) -> dict[str, Any]:
    """The dead-letter record of CONTRACT section 2: ``{"raw", "error", "source"}``.

    ``raw`` of bytes that are not UTF-8 is the text with each invalid byte written as ``\\xNN``
    (readable, but not the input), and ``raw_b64`` holds the original bytes exactly (base64).
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"raw": raw.decode("utf-8", errors="backslashreplace"),
                    "raw_b64": base64.b64encode(raw).decode("ascii"),
                    "error": str(error), "source": source}
        raw = text
    return {"raw": raw, "error": str(error), "source": source}


def dedupe_first_copies(received_ats: Sequence[int]) -> list[int]:
    """Indices of the copies that are applied, given the copies' received_at values.

    The copies are taken in received_at order; a copy within 24 hours of the first received_at of
    its run is a duplicate, one at or after that starts a new run (it is applied again).
    """
    order = sorted(range(len(received_ats)), key=lambda i: received_ats[i])
    kept, horizon = [], None
    for i in order:
        if horizon is None or received_ats[i] >= horizon:
            kept.append(i)
            horizon = received_ats[i] + DEDUPE_HORIZON_US
    return kept


def dedupe_batch(records: Iterable[_Timed], key: Callable[[_Timed], Hashable],
                 received_at: Callable[[_Timed], int] = lambda r: r.received_at) -> list[_Timed]:
    """The records that are applied, from a complete batch: per ``key(record)``, the copies in
    ``received_at`` order, keeping the first copy of each 24-hour run (``dedupe_first_copies``)."""
    groups = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    kept = []
    for copies in groups.values():
        copies.sort(key=lambda r: (received_at(r), r.ts))
        kept.extend(copies[i] for i in dedupe_first_copies([received_at(c) for c in copies]))
    return kept
