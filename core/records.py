"""Input records: parsing, validation and dedupe keys (CONTRACT section 2).

``parse_record`` turns one JSON Lines line (or an already decoded object, e.g. a Parquet row) into a
:class:`ProfileEvent` or a :class:`SystemEvent`, or raises :class:`InputError` whose message is the
dead-letter reason.
"""
import hashlib
import json
import re
from typing import Any, NamedTuple, Optional

from core.timeutil import TimeFormatError, parse_time

try:  # orjson parses several times faster; the standard library is the fallback
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = json.loads
_LONG_DIGITS = re.compile(r"\d{19,}")

SUBJECT_TYPES = frozenset((
    "account", "auth", "user", "campaign", "data", "entity", "experience", "journey", "program",
    "provider", "query", "report", "rollup", "schema", "schematable", "scoring", "segment",
    "segmentcollection", "segmentml", "stream", "subscription", "topic-document", "variation", "work",
    "workflow"))
VERBS = frozenset(("created", "updated", "deleted", "started", "syncing", "synced", "synccomplete",
                   "completed", "failed"))
#: Copies of a record (same dedupe key) within this long of the first copy's received_at count once.
DEDUPE_HORIZON_US = 24 * 3600 * 1_000_000


class InputError(ValueError):
    """A record that cannot be processed; the message is the dead-letter reason."""


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
    def key_field(self):
        return "user_id" if self.user_id else "anonymous_id"


class SystemEvent(NamedTuple):
    id: str
    ts: int
    received_at: int
    data: dict
    record: dict             # the object as received: the default webhook body

    @property
    def subject_type(self):
        return self.data.get("subject_type")

    @property
    def subject_id(self):
        return self.data.get("subject_id")

    @property
    def verb(self):
        return self.data.get("verb")


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj):
    """Dedupe key of a record without ``event_id``: its canonical JSON minus ``received_at``."""
    body = {k: v for k, v in obj.items() if k != "received_at"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def decode_line(line):
    """JSON text (str or bytes) to a dict, or InputError."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("not UTF-8: %s" % exc) from None
    try:
        if _LONG_DIGITS.search(line):
            raise ValueError("integers beyond 64 bits: orjson would turn them into floats")
        obj = _fast_loads(line)
    except (ValueError, RecursionError):
        # The standard library is the reference for what JSON is accepted (orjson is stricter on
        # NaN and huge integers); it also gives the clearer error message.
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
    if not isinstance(obj, dict):
        raise InputError("not a JSON object")
    return obj


def parse_record(line, default_received_at=None):
    """Parses and validates one record.

    ``default_received_at`` is the arrival time of live sources; ``None`` (file input) uses ``ts``.
    """
    obj = line if isinstance(line, dict) else decode_line(line)
    try:
        if obj.get("kind") == "system":
            return _system_event(obj, default_received_at)
        return _profile_event(obj, default_received_at)
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


def _profile_event(obj, default_received_at):
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


def dead_letter(raw, error, source):
    """The dead-letter record of CONTRACT section 2."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return {"raw": raw, "error": str(error), "source": source}


def dedupe_first_copies(received_ats):
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


def dedupe_batch(records, key, received_at=lambda r: r.received_at):
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
