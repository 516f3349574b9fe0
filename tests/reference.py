"""Independent brute-force reference for the acceptance tests.

Derived only from docs/CONTRACT.md (sections 2, 3, 4, 5.1, 5.2) and docs/SEMANTICS.md.
It shares no code with the engine on purpose: it is slow and simple so that it is obviously right.
It is longer than 600 lines because it is meant to be read in one place, from the contract's
rules to the outputs it predicts, independently of the engine.

    reference_outputs(config, lines, environ={}) -> {
        "eventhub":   {work_id: [message dict, ...]},           # per user in time order
        "blob":       {work_id: {relative_name: [[header...], [row...], ...]}},
        "deadletter": [raw line, ...],
    }

`relative_name` is the path under `DIR/blob/<container>/`, i.e. `<prefix><account>_<type>_<id>_<s>_<e>.csv`.

How audiences are evaluated (contract 4): for every user we collect every candidate evaluation
time (each event's ts, and ts + within for every event and every `within` used anywhere in the
config, plus the backfill starts). A condition can only change value at one of these times, so at
each of them, in order, we re-evaluate every audience from scratch: event counts by scanning all of
the user's events, traits by replaying all events with ts <= T in (ts, event_id) order, audience
references by evaluating the referenced audience's condition at the same T, computed traits
(`computed_traits`, docs/SEMANTICS.md "Computed traits") by scanning all of the user's events in
(ts, event_id) order with exact fractions for sums. The candidate times include ts + within of
every computed trait's `within`. Membership at T is the
condition at T (T >= the user's first event); a transition is a change between consecutive times.
A bounded run evaluates up to its as-of time (contract 1: `--as_of`, else `--end`, else the latest
`received_at` read): times after it are not evaluated, events dated after it are not applied.

Times are integers: microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
from fractions import Fraction

US = 1_000_000
HOUR = 3600 * US
DAY = 24 * HOUR
FAR_FUTURE = "2099-12-31T23:59:59Z"

SUBJECT_TYPES = {
    "account", "auth", "user", "campaign", "data", "entity", "experience", "journey", "program",
    "provider", "query", "report", "rollup", "schema", "schematable", "scoring", "segment",
    "segmentcollection", "segmentml", "stream", "subscription", "topic-document", "variation",
    "work", "workflow",
}
VERBS = {"created", "updated", "deleted", "started", "syncing", "synced", "synccomplete",
         "completed", "failed"}
PERIODS = {1, 2, 4, 6, 12, 24}

BLOB_EVENT_COLUMNS = ["event_id", "user_id", "anonymous_id", "event", "timestamp", "received_at"]
BLOB_SYSTEM_COLUMNS = ["id", "timestamp", "received_at", "aid", "subject_type", "subject_id",
                       "verb", "notes", "data"]


class BadRecord(Exception):
    """A line that goes to the dead-letter output."""


# --------------------------------------------------------------------------------------------
# time
# --------------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def parse_time(value) -> int:
    """RFC 3339 string, or epoch number (seconds; milliseconds if > 1e11) -> epoch microseconds."""
    if isinstance(value, bool):
        raise BadRecord("boolean is not a time")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRecord("not a finite number")
        exact = Fraction(value) if isinstance(value, int) else Fraction(repr(value))
        if value > 1e11:
            exact = exact / 1000
        return round(exact * US)
    if isinstance(value, str):
        m = _RFC3339.match(value)
        if not m:
            raise BadRecord("not an RFC 3339 time: %r" % value)
        y, mo, d, h, mi, s, frac, off = m.groups()
        try:
            base = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s),
                                tzinfo=_dt.timezone.utc)
        except ValueError as exc:
            raise BadRecord("bad time %r: %s" % (value, exc))
        micros = 0
        if frac:
            micros = int((frac + "000000")[:6])  # sub-microsecond digits are never generated
        offset = 0
        if off not in ("Z", "z"):
            sign = 1 if off[0] == "+" else -1
            offset = sign * (int(off[1:3]) * 3600 + int(off[4:6]) * 60)
        secs = int((base - _EPOCH).total_seconds()) - offset
        return secs * US + micros
    raise BadRecord("time of type %s" % type(value).__name__)


def fmt_time(us: int) -> str:
    """YYYY-MM-DDTHH:MM:SSZ with .mmm or .uuuuuu only when the time has them (SEMANTICS)."""
    secs, micros = divmod(us, US)
    t = _EPOCH + _dt.timedelta(seconds=secs)
    out = t.strftime("%Y-%m-%dT%H:%M:%S")
    if micros:
        if micros % 1000 == 0:
            out += ".%03d" % (micros // 1000)
        else:
            out += ".%06d" % micros
    return out + "Z"


def fmt_time_sort_key(s: str) -> int:
    return parse_time(s)


_DUR = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": US, "m": 60 * US, "h": HOUR, "d": DAY, "w": 7 * DAY}


def parse_duration(text) -> int:
    m = _DUR.match(str(text).strip())
    if not m:
        raise ValueError("bad duration %r" % (text,))
    return int(m.group(1)) * _UNIT[m.group(2)]


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# records (contract 2)
# --------------------------------------------------------------------------------------------

class Event:
    __slots__ = ("key", "event_id", "name", "ts", "received_at", "properties", "traits",
                 "user_id", "anonymous_id", "line_no")

    def __repr__(self):
        return "Event(%s %s %s %s)" % (self.key, self.name, fmt_time(self.ts), self.event_id)


class SystemEvent:
    __slots__ = ("id", "ts", "received_at", "data", "line_no")


def _opt_str(obj, field):
    if field not in obj:
        return ""
    v = obj[field]
    if not isinstance(v, str):
        raise BadRecord("field %r must be a string" % field)
    return v


MIN_TS = parse_time("2000-01-01T00:00:00Z")
DEFAULT_MAX_TS_SKEW = 7 * DAY


def parse_record(line: str, line_no: int = 0, max_ts_skew: int = DEFAULT_MAX_TS_SKEW):
    """-> Event | SystemEvent; raises BadRecord for a dead-letter line (CONTRACT 2: also a ts
    before 2000-01-01, or more than ``max_ts_skew`` after received_at)."""
    rec = _parse_record(line, line_no)
    if rec.ts < MIN_TS:
        raise BadRecord("ts before 2000-01-01")
    if rec.ts > rec.received_at + max_ts_skew:
        raise BadRecord("ts more than %d us after received_at" % max_ts_skew)
    return rec


def _parse_record(line: str, line_no: int = 0):
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise BadRecord("not JSON: %s" % exc)
    if not isinstance(obj, dict):
        raise BadRecord("record is not a JSON object")
    if obj.get("kind") == "system":
        return _parse_system(obj, line_no)
    ev = Event()
    ev.line_no = line_no
    if "event" not in obj:
        raise BadRecord("missing required field 'event'")
    if not isinstance(obj["event"], str) or not obj["event"]:
        raise BadRecord("field 'event' must be a string")
    ev.name = obj["event"]
    if "ts" not in obj:
        raise BadRecord("missing required field 'ts'")
    ev.ts = parse_time(obj["ts"])
    ev.user_id = _opt_str(obj, "user_id")
    ev.anonymous_id = _opt_str(obj, "anonymous_id")
    if ev.user_id:
        ev.key = ("user_id", ev.user_id)
    elif ev.anonymous_id:
        ev.key = ("anonymous_id", ev.anonymous_id)
    else:
        raise BadRecord("missing required field 'user_id' or 'anonymous_id'")
    if "event_id" in obj:
        if not isinstance(obj["event_id"], str) or not obj["event_id"]:
            raise BadRecord("field 'event_id' must be a string")
        ev.event_id = obj["event_id"]
    else:
        ev.event_id = sha256_hex(canonical({k: v for k, v in obj.items() if k != "received_at"}))
    ev.received_at = parse_time(obj["received_at"]) if "received_at" in obj else ev.ts
    for field in ("properties", "traits"):
        v = obj.get(field, {})
        if not isinstance(v, dict):
            raise BadRecord("field %r must be an object" % field)
    ev.properties = obj.get("properties", {})
    ev.traits = obj.get("traits", {})
    return ev


def _parse_system(obj, line_no):
    se = SystemEvent()
    se.line_no = line_no
    if "id" not in obj:
        raise BadRecord("missing required field 'id'")
    sid = obj["id"]
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or sid == "":
        raise BadRecord("field 'id' must be a string or an integer")
    se.id = str(sid)
    if "ts" not in obj:
        raise BadRecord("missing required field 'ts'")
    se.ts = parse_time(obj["ts"])
    se.received_at = parse_time(obj["received_at"]) if "received_at" in obj else se.ts
    data = obj.get("data")
    if not isinstance(data, dict):
        raise BadRecord("missing required field 'data'")
    if data.get("subject_type") not in SUBJECT_TYPES:
        raise BadRecord("field 'data.subject_type' missing or not a known subject type")
    if data.get("verb") not in VERBS:
        raise BadRecord("field 'data.verb' missing or not a known verb")
    se.data = data
    return se


def dedupe(items, key_fn):
    """SEMANTICS: copies in received_at order; a copy < first-of-run + 24h is a duplicate; one at or
    after starts a new run and is applied again. Returns the applied copies."""
    groups = {}
    for it in items:
        groups.setdefault(key_fn(it), []).append(it)
    kept = []
    for copies in groups.values():
        copies.sort(key=lambda c: (c.received_at, c.line_no))
        run_start = None
        for c in copies:
            if run_start is None or c.received_at >= run_start + DAY:
                run_start = c.received_at
                kept.append(c)
    kept.sort(key=lambda c: c.line_no)
    return kept


def parse_lines(lines, max_ts_skew=DEFAULT_MAX_TS_SKEW, with_as_of=False):
    """-> (events, system_events, deadletter_lines), after dedupe; with ``with_as_of``, also the
    latest received_at of the records read (copies included; None if there is none), the default
    as-of time of a bounded run (CONTRACT section 1)."""
    events, systems, dead = [], [], []
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        try:
            rec = parse_record(line, i, max_ts_skew)
        except BadRecord:
            dead.append(line)
            continue
        (systems if isinstance(rec, SystemEvent) else events).append(rec)
    latest = max((r.received_at for r in events + systems), default=None)
    events = dedupe(events, lambda e: (e.key, e.event_id))
    systems = dedupe(systems, lambda s: s.id)
    if with_as_of:
        return events, systems, dead, latest
    return events, systems, dead


# --------------------------------------------------------------------------------------------
# config (contract 3)
# --------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute_env(obj, environ):
    if isinstance(obj, str):
        def repl(m):
            if m.group(1) not in environ:
                raise ValueError("environment variable %s is not set" % m.group(1))
            return environ[m.group(1)]
        return _VAR.sub(repl, obj)
    if isinstance(obj, list):
        return [substitute_env(v, environ) for v in obj]
    if isinstance(obj, dict):
        return {k: substitute_env(v, environ) for k, v in obj.items()}
    return obj


def normalise_config(config, environ=None):
    config = substitute_env(copy.deepcopy(config), environ or {})
    works = []
    for n, w in enumerate(config.get("works") or [], start=1):
        w = dict(w)
        w.setdefault("id", "%s-%d" % (w["workflow"], n))
        w["config"] = dict(w.get("config") or {})
        works.append(w)
    config["works"] = works
    config["audiences"] = list(config.get("audiences") or [])
    config["computed_traits"] = dict(config.get("computed_traits") or {})
    return config


def collect_withins(node, out):
    if isinstance(node, dict):
        if "event" in node and node.get("within") is not None:
            out.add(parse_duration(node["within"]))
        for k in ("and", "or"):
            if k in node:
                for c in node[k]:
                    collect_withins(c, out)
        if "not" in node:
            collect_withins(node["not"], out)
    return out


# --------------------------------------------------------------------------------------------
# condition language (contract 4 + SEMANTICS)
# --------------------------------------------------------------------------------------------

_MISSING = object()


def _kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "num"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "obj"
    return "other"


def _same(a, b):
    return _kind(a) == _kind(b) and a == b


def lookup(obj, name):
    """Key first, then a dotted path into nested objects. Null counts as absent."""
    if not isinstance(obj, dict):
        return _MISSING
    if name in obj:
        v = obj[name]
        return _MISSING if v is None else v
    if "." in name:
        cur = obj
        for part in name.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                return _MISSING
        return _MISSING if cur is None else cur
    return _MISSING


def apply_op(op, actual, expected):
    if op == "exists":
        return actual is not _MISSING
    if op == "missing":
        return actual is _MISSING
    if actual is _MISSING:
        return False
    ka, ke = _kind(actual), _kind(expected)
    if op == "eq":
        return ka == ke and actual == expected
    if op == "ne":
        return ka == ke and actual != expected
    if op in ("gt", "gte", "lt", "lte"):
        if not (ka == ke and ka in ("num", "str")):
            return False
        return {"gt": actual > expected, "gte": actual >= expected,
                "lt": actual < expected, "lte": actual <= expected}[op]
    if op == "in":
        return isinstance(expected, list) and any(_same(actual, e) for e in expected)
    if op == "not_in":
        # type mismatch is false: the value must have the type of the list's elements
        if not isinstance(expected, list):
            return False
        if expected and not any(_kind(e) == ka for e in expected):
            return False
        return not any(_same(actual, e) for e in expected)
    if op == "contains":
        if ka == "str" and ke == "str":
            return expected in actual
        if ka == "list":
            return any(_same(e, expected) for e in actual)
        return False
    if op == "starts_with":
        return ka == "str" and ke == "str" and actual.startswith(expected)
    if op == "ends_with":
        return ka == "str" and ke == "str" and actual.endswith(expected)
    if op == "matches":
        return ka == "str" and ke == "str" and re.search(expected, actual) is not None
    raise ValueError("unknown op %r" % op)


def eval_where(node, props):
    if "and" in node:
        return all(eval_where(c, props) for c in node["and"])
    if "or" in node:
        return any(eval_where(c, props) for c in node["or"])
    if "not" in node:
        return not eval_where(node["not"], props)
    return apply_op(node["op"], lookup(props, node["property"]), node.get("value"))


def _qualifies(op, value):
    """SEMANTICS, computed traits: sum/avg/min/max take finite numbers (not booleans); first and
    last any value but null or absent."""
    if value is _MISSING:
        return False
    if op in ("sum", "avg", "min", "max"):
        return _kind(value) == "num" and math.isfinite(value)
    return True


def computed_value(definition, events, T):
    """A computed trait's value at T over a user's events (in (ts, event_id) order); None: absent."""
    op = definition["op"]
    within = parse_duration(definition["within"]) if definition.get("within") is not None else None
    picked = []
    for e in events:
        if definition["event"] != "*" and e.name != definition["event"]:
            continue
        if not (e.ts <= T and (within is None or T < e.ts + within)):
            continue
        if definition.get("where") is not None and not eval_where(definition["where"], e.properties):
            continue
        if op == "count":
            picked.append(None)
            continue
        value = lookup(e.properties, definition["property"])
        if _qualifies(op, value):
            picked.append(value)
    if op == "count":
        return len(picked)
    if op == "sum" and not picked:
        return 0
    if not picked:
        return None
    if op in ("sum", "avg"):
        if all(isinstance(v, int) for v in picked):
            total = sum(picked)
        else:
            total = float(sum(Fraction(v) for v in picked))
        return total if op == "sum" else total / len(picked)
    if op == "first":
        return picked[0]
    if op == "last":
        return picked[-1]
    best = picked[0]
    for v in picked[1:]:                     # equal values: the earliest event's
        if (v < best) if op == "min" else (v > best):
            best = v
    return best


class UserModel:
    """All of one user's (deduped) events and brute-force evaluation at any time T."""

    def __init__(self, key, events, audiences, computed=None):
        self.key = key
        self.events = sorted(events, key=lambda e: (e.ts, e.event_id))
        self.first_ts = self.events[0].ts
        self.audiences = audiences           # slug-or-id -> audience dict
        self.computed = computed or {}       # name -> computed trait definition
        self._traits_cache = {}
        self._cond_cache = {}

    def computed_at(self, name, T):
        return computed_value(self.computed[name], self.events, T)

    def traits_at(self, T):
        if T not in self._traits_cache:
            traits = {}
            for e in self.events:            # already in (ts, event_id) order
                if e.ts > T:
                    break
                for k, v in e.traits.items():
                    if v is None:
                        traits.pop(k, None)
                    else:
                        traits[k] = v
            self._traits_cache[T] = traits
        return self._traits_cache[T]

    def modified_at(self, T):
        return max(e.ts for e in self.events if e.ts <= T)

    def count(self, node, T):
        within = parse_duration(node["within"]) if node.get("within") is not None else None
        n = 0
        for e in self.events:
            if node["event"] != "*" and e.name != node["event"]:  # "*": any event name
                continue
            if not (e.ts <= T and (within is None or T < e.ts + within)):
                continue
            if node.get("where") is not None and not eval_where(node["where"], e.properties):
                continue
            n += 1
        return n

    def cond(self, node, T):
        if "and" in node:
            return all(self.cond(c, T) for c in node["and"])
        if "or" in node:
            return any(self.cond(c, T) for c in node["or"])
        if "not" in node:
            return not self.cond(node["not"], T)
        if "trait" in node:
            return apply_op(node["op"], lookup(self.traits_at(T), node["trait"]), node.get("value"))
        if "event" in node:
            n = self.count(node, T)
            lo = node.get("min_count", 1)
            hi = node.get("max_count")
            return n >= lo and (hi is None or n <= hi)
        if "audience" in node:
            return self.member(node["audience"], T)
        if "computed" in node:
            value = self.computed_at(node["computed"], T)
            return apply_op(node["op"], _MISSING if value is None else value, node.get("value"))
        raise ValueError("unknown condition node %r" % (node,))

    def member(self, ref, T):
        """Membership at an evaluation time T == the audience's condition at T."""
        if T < self.first_ts:
            return False
        aud = self.audiences[ref]
        ck = (aud["slug"], T)
        if ck not in self._cond_cache:
            self._cond_cache[ck] = self.cond(aud["condition"], T)
        return self._cond_cache[ck]


def user_points(model, withins, extra=(), as_of=None):
    """Every evaluation time of the user, up to ``as_of`` (a bounded run's as-of; None: all)."""
    pts = set()
    for e in model.events:
        pts.add(e.ts)
        for w in withins:
            pts.add(e.ts + w)
    for x in extra:
        if x >= model.first_ts:
            pts.add(x)
    return sorted(p for p in pts if as_of is None or p <= as_of)


def user_timeline(model, audiences, withins, extra=(), as_of=None):
    """-> (points, {slug: [bool per point]}, {slug: [(enter, exit|None), ...]})"""
    points = user_points(model, withins, extra, as_of)
    states, spans = {}, {}
    for aud in audiences:
        slug = aud["slug"]
        vals = [model.member(slug, T) for T in points]
        states[slug] = vals
        sp, prev = [], False
        for T, v in zip(points, vals):
            if v and not prev:
                sp.append([T, None])
            elif prev and not v:
                sp[-1][1] = T
            prev = v
        spans[slug] = [tuple(s) for s in sp]
    return points, states, spans


def state_before(points, vals, T):
    """Membership just before T: the value at the last evaluation time < T (False if none)."""
    out = False
    for p, v in zip(points, vals):
        if p < T:
            out = v
        else:
            break
    return out


def enter_time_before(spans, T):
    """Enter time of the span containing T - epsilon."""
    for enter, exit_ in spans:
        if enter < T and (exit_ is None or exit_ >= T):
            return enter
    return None


# --------------------------------------------------------------------------------------------
# 5.1 Event Hub messages
# --------------------------------------------------------------------------------------------

def _message(model, T, sub_id, user_fields, seg_events, backfill=False, computed_fields=()):
    traits = model.traits_at(T)
    data = {}
    fields = user_fields if user_fields is not None else list(traits.keys())
    for f in fields:
        if f in traits and traits[f] is not None:
            data[f] = traits[f]
    for name in computed_fields:             # the computed value at T wins over a trait
        value = model.computed_at(name, T)
        if value is not None:
            data[name] = value
    data[model.key[0]] = model.key[1]
    data["_created"] = fmt_time(model.first_ts)
    data["_modified"] = fmt_time(model.modified_at(T))
    data["segment_events"] = seg_events
    msg = {"data": data, "subscription_id": sub_id, "timestamp": fmt_time(T)}
    if backfill:
        msg["backfill"] = True
    msg["message_id"] = sha256_hex(canonical(msg))[:32]
    return msg


def transition_segments(auds, points, states):
    """The segments of the audiences that change at each evaluation time, ``[(T, segs)]``, and
    after the last point each audience's membership (``{slug: bool}``) and enter time."""
    prev = {a["slug"]: False for a in auds}
    entered = {}
    changes = []
    for i, T in enumerate(points):
        segs = []
        for a in auds:
            v = states[a["slug"]][i]
            if v and not prev[a["slug"]]:
                entered[a["slug"]] = T
                segs.append(_seg(a, "enter", T, None))
            elif prev[a["slug"]] and not v:
                segs.append(_seg(a, "exit", entered[a["slug"]], T))
            prev[a["slug"]] = v
        changes.append((T, segs))
    return changes, prev, entered


def _seg(aud, kind, enter, exit_):
    return {"id": aud["id"], "slug": aud["slug"], "event": kind, "enter": fmt_time(enter),
            "exit": FAR_FUTURE if exit_ is None else fmt_time(exit_)}


def _work_audiences(config, wc):
    sel = wc.get("audiences")
    if sel is None:
        return list(config["audiences"])
    sel = set(sel)
    return [a for a in config["audiences"] if a["slug"] in sel or a.get("id") in sel]


def eventhub_messages(config, models, withins, work, as_of=None):
    wc = work["config"]
    auds = _work_audiences(config, wc)
    sub_id = wc.get("subscription_id") or work["id"]
    start = parse_time(wc["start"]) if wc.get("start") not in (None, "") else None
    backfill = bool(wc.get("existing_users")) and start is not None
    if as_of is not None and start is not None and start > as_of:
        backfill = False  # the run ends before the work's start
    user_fields = wc.get("user_fields")
    computed_fields = wc.get("computed_fields") or []
    out = []
    for key in sorted(models):
        model = models[key]
        extra = [start] if start is not None else []
        points, states, spans = user_timeline(model, config["audiences"], withins, extra, as_of)
        user_msgs = []
        if backfill:
            segs = []
            for a in auds:
                if state_before(points, states[a["slug"]], start):
                    segs.append(_seg(a, "enter", enter_time_before(spans[a["slug"]], start), None))
            if segs:
                user_msgs.append(_message(model, start, sub_id, user_fields, segs, backfill=True,
                                          computed_fields=computed_fields))
        for T, segs in transition_segments(auds, points, states)[0]:
            if segs and (start is None or T >= start):
                user_msgs.append(_message(model, T, sub_id, user_fields, segs,
                                          computed_fields=computed_fields))
        out.extend(user_msgs)
    return out


# --------------------------------------------------------------------------------------------
# 5.2 Blob export files
# --------------------------------------------------------------------------------------------

def cell(v):
    if v is None or v is _MISSING:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    s = str(v)
    if s and s[0] in "=+-@\t\r":
        s = "'" + s
    return s


def _plain(obj, name):
    if isinstance(obj, dict) and name in obj:
        return obj[name]
    return None


def blob_files(config, events, systems, models, work):
    wc = work["config"]
    export_type = wc.get("export_type", "events")
    period = int(wc["period_hours"]) * HOUR
    fmt = wc.get("format", "csv")
    if wc.get("anchor") not in (None, ""):
        anchor = parse_time(wc["anchor"])
    elif wc.get("start") not in (None, ""):
        anchor = parse_time(wc["start"])
    else:
        anchor = 0
    start = parse_time(wc["start"]) if wc.get("start") not in (None, "") else None
    rows = []   # (received_at, id, row)
    if export_type == "events":
        names = wc.get("events") or None
        params = wc.get("event_parameters") or []
        attrs = wc.get("attributes") or []
        computed = wc.get("computed") or []
        header = BLOB_EVENT_COLUMNS + ["properties.%s" % p for p in params] + \
            ["traits.%s" % a for a in attrs] + ["computed.%s" % c for c in computed]
        for e in events:
            if names is not None and e.name not in names:
                continue
            if start is not None and e.received_at < start:
                continue
            traits = models[e.key].traits_at(e.ts)
            row = [cell(e.event_id), cell(e.user_id), cell(e.anonymous_id), cell(e.name),
                   fmt_time(e.ts), fmt_time(e.received_at)]
            row += [cell(_plain(e.properties, p)) for p in params]
            row += [cell(_plain(traits, a)) for a in attrs]
            row += [cell(models[e.key].computed_at(c, e.ts)) for c in computed]
            rows.append((e.received_at, e.event_id, row))
    else:
        header = list(BLOB_SYSTEM_COLUMNS)
        for s in systems:
            if start is not None and s.received_at < start:
                continue
            d = s.data
            row = [cell(s.id), fmt_time(s.ts), fmt_time(s.received_at), cell(d.get("aid")),
                   cell(d.get("subject_type")), cell(d.get("subject_id")), cell(d.get("verb")),
                   cell(d.get("notes")), cell(d)]
            rows.append((s.received_at, s.id, row))
    if not rows:
        return {}
    rows.sort(key=lambda r: (r[0], r[1]))
    by_window = {}
    for r, _id, row in rows:
        by_window.setdefault((r - anchor) // period, []).append(row)
    prefix = wc.get("prefix") or ""
    acct = config["account"]["name"]
    files = {}
    last = max(by_window)
    if not wc.get("allow_more_windows"):
        # CONTRACT 2: at most max_windows_per_run windows from the first; records in windows past
        # them are not written (the work dead-letters them), so the files end at the last window
        # with data before that limit.
        limit = min(by_window) + int(wc.get("max_windows_per_run", 10000))
        last = max(k for k in by_window if k < limit)
    for k in range(min(by_window), last + 1):
        ws = anchor + k * period
        we = ws + period
        name = "%s%s_%s_%s_%d_%d.%s" % (prefix, acct, export_type, work["id"], ws // US, we // US,
                                        fmt)
        files[name] = [list(header)] + by_window.get(k, [])
    return files


def render_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def parse_csv(text: str):
    return [row for row in csv.reader(io.StringIO(text, newline=""))]


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------

def build_models(config, events):
    by_ref = {}
    for a in config["audiences"]:
        by_ref[a["slug"]] = a
        if a.get("id"):
            by_ref[a["id"]] = a
    per_user = {}
    for e in events:
        per_user.setdefault(e.key, []).append(e)
    return {k: UserModel(k, evs, by_ref, config.get("computed_traits"))
            for k, evs in per_user.items()}


def config_withins(config):
    ws = set()
    for a in config["audiences"]:
        collect_withins(a["condition"], ws)
    for definition in (config.get("computed_traits") or {}).values():
        if definition.get("within") is not None:
            ws.add(parse_duration(definition["within"]))
    return sorted(ws)


def config_max_ts_skew(config):
    skew = (config.get("input") or {}).get("max_ts_skew")
    return DEFAULT_MAX_TS_SKEW if skew is None else parse_duration(skew)


def reference_outputs(config: dict, lines: list, environ=None, as_of=None) -> dict:
    """``as_of``: the run's as-of time (microseconds); None: the latest received_at read.

    A bounded run evaluates up to its as-of time (CONTRACT section 1): no transition dated after
    it; an event dated after it is not applied yet (no audience effect, no export row)."""
    if environ is None:
        environ = {}
    config = normalise_config(config, environ)
    events, systems, dead, latest = parse_lines(lines, with_as_of=True,
                                                  max_ts_skew=config_max_ts_skew(config))
    if as_of is None:
        as_of = latest
    if as_of is not None:
        events = [e for e in events if e.ts <= as_of]
    models = build_models(config, events)
    withins = config_withins(config)
    out = {"eventhub": {}, "blob": {}, "deadletter": dead}
    for work in config["works"]:
        if work.get("paused"):
            continue
        if work["workflow"] == "eventhub_audience_export":
            out["eventhub"][work["id"]] = eventhub_messages(config, models, withins, work, as_of)
        elif work["workflow"] == "azure_blob_event_export":
            out["blob"][work["id"]] = blob_files(config, events, systems, models, work)
    return out


def reference_transitions(config: dict, lines: list, environ=None) -> dict:
    """{user key: {slug: [(enter, exit|None), ...]}} with RFC 3339 strings; for the self-checks."""
    config = normalise_config(config, environ or {})
    events, _systems, _dead = parse_lines(lines, config_max_ts_skew(config))
    models = build_models(config, events)
    withins = config_withins(config)
    out = {}
    for key, model in models.items():
        _p, _s, spans = user_timeline(model, config["audiences"], withins)
        out[key] = {slug: [(fmt_time(a), None if b is None else fmt_time(b)) for a, b in sp]
                    for slug, sp in spans.items() if sp}
    return out


def message_user(msg):
    d = msg["data"]
    if "user_id" in d:
        return ("user_id", d["user_id"])
    return ("anonymous_id", d.get("anonymous_id"))


def message_order_key(msg):
    return (parse_time(msg["timestamp"]), 0 if msg.get("backfill") else 1)


if __name__ == "__main__":   # python tests/reference.py CONFIG INPUT  -> summary
    import sys
    import yaml
    with open(sys.argv[1]) as f:
        cfg = yaml.safe_load(f)
    with open(sys.argv[2], encoding="utf-8") as f:
        lns = f.read().splitlines()
    res = reference_outputs(cfg, lns, dict(os.environ))
    print(json.dumps({"eventhub": {k: len(v) for k, v in res["eventhub"].items()},
                      "blob": {k: {"files": len(v), "rows": sum(len(r) - 1 for r in v.values())}
                               for k, v in res["blob"].items()},
                      "deadletter": len(res["deadletter"])}, indent=2))
