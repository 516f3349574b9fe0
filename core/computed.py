"""Computed traits (docs/CONFIG.md, docs/SEMANTICS.md "Computed traits"): a value per user computed
from the user's events, usable in conditions (``{computed: NAME, op: OP, value: V}``), copied into
Event Hub messages (``computed_fields``) and exported as Blob columns (``computed``).

A definition in the config's ``computed_traits`` section::

    computed_traits:
      spend_30d: {op: sum, event: purchase, property: price, within: 30d}
      orders:    {op: count, event: purchase, where: {property: price, op: gt, value: 0}}

``op`` is one of :data:`OPS`; ``event`` an event name or ``"*"``; ``property`` the event property
the value is read from (a dotted name also reads nested objects; not for ``count``); ``where`` the
filter language of conditions; ``within`` a duration (absent: all time). At a time T the trait
covers the user's matching events with ``ts <= T < ts + within`` (all time: ``ts <= T``):

* ``count``: how many (0 when none);
* ``sum``: the sum of the property's numeric values (0 when none). An integer when every value is
  an integer, else a float: the exact sum rounded once (so the order of the events never changes
  it);
* ``avg``: ``sum / n`` over the ``n`` numeric values (absent when none);
* ``min`` / ``max``: the smallest / largest numeric value (absent when none; of equal values, the
  earliest event's);
* ``first`` / ``last``: the value of the earliest / latest event in (``ts``, ``event_id``) order
  that has one (absent when none); any JSON value but null.

A numeric value is an int or a float that is finite, never a boolean. An event whose value does not
qualify (absent, null, a string for ``sum``) is ignored by that trait: it is a valid event, and
counts for every other trait and condition; ``count`` needs no value.

Pure (no Beam). :class:`ComputedSet` is the compiled section; :class:`ComputedRuntime` is what the
engine (``core.engine``) keeps per configuration and calls at each point: it keeps each user's
entries (a windowed trait: every matching event still in its window, as ``[ts, event_id,
value]``; an all-time trait: an aggregate), tells when the next entry leaves its window (the
engine's wake-up for a windowed trait that a condition reads), and gives the values.
"""
from __future__ import annotations

import bisect
import json
import math
import re
from fractions import Fraction
from typing import Any, Callable, NamedTuple, Optional

from cdp_activation.core.conditions import (ANY_EVENT, ConditionError, compile_where, lookup,
                                            parse_within)
from cdp_activation.core.keys import did_you_mean, unknown_key
from cdp_activation.core.state import spec_id

OPS = ("count", "sum", "min", "max", "avg", "first", "last")
#: The keys of one definition.
COMPUTED_KEYS = ("op", "event", "property", "where", "within")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMERIC_OPS = frozenset(("sum", "min", "max", "avg"))
#: Integers up to this size convert to a float exactly, so ``math.fsum`` sums them exactly.
_EXACT_INT = 1 << 53
#: A time after every time.
NEVER = float("inf")


class ComputedTrait(NamedTuple):
    index: int
    name: str
    op: str
    event: str
    property: Optional[str]
    where: Optional[Callable[[dict], bool]]
    where_key: str
    within: Optional[int]   # microseconds; None: all time
    definition: dict        # as configured
    id: str                 # stable id of what is kept (op, event, property, where, within)


def computed_id(op: str, event: str, prop: Optional[str], where_key: str,
                within: Optional[int]) -> str:
    """The id under which a saved state keeps a trait's entries: the same definition gives the
    same id whatever its name or position (``core.state.spec_id`` of its parts)."""
    return spec_id("computed:%s:%s" % (op, event), "%s|%s" % (prop, where_key), within)


def is_number(value: Any) -> bool:
    """An int or a finite float, not a boolean: what ``sum``, ``avg``, ``min`` and ``max`` take."""
    kind = type(value)
    if kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def exact_sum(values: list) -> Any:
    """The sum of numbers: an int when all are ints, else the exact sum rounded once to a float
    (``math.fsum`` when every value converts to a float exactly, else through fractions)."""
    if all(type(v) is int for v in values):
        return sum(values)
    if all(type(v) is float or -_EXACT_INT <= v <= _EXACT_INT for v in values):
        return math.fsum(values)
    return float(sum(Fraction(v) for v in values))


class ComputedSet:
    """The ``computed_traits`` section compiled: a :class:`ComputedTrait` per name, in config
    order. Raises :class:`core.conditions.ConditionError` naming the path of a bad definition."""

    def __init__(self, definitions: Any, path: str = "computed_traits") -> None:
        self.traits: list[ComputedTrait] = []
        self.by_name: dict[str, ComputedTrait] = {}
        if definitions is None:
            definitions = {}
        if not isinstance(definitions, dict):
            raise ConditionError(path, "must be a mapping of names to definitions, e.g. "
                                       "{spend_30d: {op: sum, event: purchase, property: price, "
                                       "within: 30d}}")
        for name, definition in definitions.items():
            trait = self._compile(len(self.traits), name, definition, "%s.%s" % (path, name))
            self.traits.append(trait)
            self.by_name[name] = trait
        self.names = [t.name for t in self.traits]

    def __len__(self) -> int:
        return len(self.traits)

    def get(self, name: str, path: str) -> ComputedTrait:
        """The trait called ``name``; an unknown name is an error at ``path``."""
        trait = self.by_name.get(name) if isinstance(name, str) else None
        if trait is None:
            known = ", ".join(self.names) or "none is defined (computed_traits)"
            raise ConditionError(path, "unknown computed trait %r%s; known: %s"
                                 % (name, did_you_mean(name, self.names), known))
        return trait

    @staticmethod
    def _compile(index, name, definition, path):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConditionError(path, "a computed trait's name is letters, digits and '_', not "
                                       "starting with a digit")
        if not isinstance(definition, dict):
            raise ConditionError(path, "must be a mapping, e.g. {op: count, event: purchase}")
        unknown = unknown_key(definition, COMPUTED_KEYS, path)
        if unknown is not None:
            raise ConditionError(*unknown)
        op = definition.get("op")
        if op not in OPS:
            raise ConditionError(path + ".op", "unknown operation %r%s; one of %s"
                                 % (op, did_you_mean(op, OPS), ", ".join(OPS)))
        event = definition.get("event")
        if not isinstance(event, str) or not event:
            raise ConditionError(path + ".event", 'needs an event name, or "*" for any event')
        prop = definition.get("property")
        if op == "count":
            if prop is not None:
                raise ConditionError(path + ".property", "count counts events and reads no "
                                                         "property; remove it")
        elif not isinstance(prop, str) or not prop:
            raise ConditionError(path + ".property", "%s needs the name of an event property"
                                 % op)
        within = parse_within(definition, path)
        where_node = definition.get("where")
        where = compile_where(where_node, path + ".where") if where_node is not None else None
        where_key = json.dumps(where_node, sort_keys=True, default=str)
        return ComputedTrait(index, name, op, event, prop, where, where_key, within,
                             dict(definition), computed_id(op, event, prop, where_key, within))


# -- values ---------------------------------------------------------------------------------------

def _new_kept(trait: ComputedTrait) -> Any:
    """What a user keeps for a trait before any event: the entries of a windowed trait; an
    all-time trait's aggregate (see :func:`_aggregate`)."""
    if trait.within is not None:
        return []
    if trait.op == "count":
        return 0
    if trait.op in ("sum", "avg"):
        return [0, 0, 1, False]   # n, exact sum as numerator and denominator, a float seen
    return None                   # min/max: [value, ts, event_id]; first/last: [ts, event_id, value]


def windowed_value(trait: ComputedTrait, entries: list) -> Any:
    """The value of a windowed trait from its entries ``[ts, event_id, value]`` in (ts, event_id)
    order (those in the window at the time asked)."""
    op = trait.op
    if op == "count":
        return len(entries)
    if not entries:
        return 0 if op == "sum" else None
    if op == "first":
        return entries[0][2]
    if op == "last":
        return entries[-1][2]
    values = [e[2] for e in entries]
    if op == "sum":
        return exact_sum(values)
    if op == "avg":
        return exact_sum(values) / len(values)
    # min() and max() keep the first of equal values: the earliest event's.
    return min(values) if op == "min" else max(values)


def all_time_value(trait: ComputedTrait, kept: Any) -> Any:
    """The value of an all-time trait from its aggregate."""
    op = trait.op
    if op == "count":
        return kept
    if op in ("sum", "avg"):
        n, numerator, denominator, floats = kept
        if not n:
            return 0 if op == "sum" else None
        total = float(Fraction(numerator, denominator)) if floats else numerator
        return total if op == "sum" else total / n
    if kept is None:
        return None
    return kept[0] if op in ("min", "max") else kept[2]


def _aggregate(trait: ComputedTrait, kept: Any, ts: int, event_id: str, value: Any) -> Any:
    """An all-time aggregate with one more event."""
    op = trait.op
    if op == "count":
        return kept + 1
    if op in ("sum", "avg"):
        n, numerator, denominator, floats = kept
        if type(value) is int and not floats:
            return [n + 1, numerator + value, 1, False]
        total = Fraction(numerator, denominator) + Fraction(value)
        return [n + 1, total.numerator, total.denominator, True]
    if op in ("min", "max"):
        if kept is None:
            return [value, ts, event_id]
        better = value < kept[0] if op == "min" else value > kept[0]
        # Equal values: the earliest event's (a late event may come before the one kept).
        if better or (value == kept[0] and (ts, event_id) < (kept[1], kept[2])):
            return [value, ts, event_id]
        return kept
    if kept is None:
        return [ts, event_id, value]
    if op == "first":
        return [ts, event_id, value] if (ts, event_id) < (kept[0], kept[1]) else kept
    return [ts, event_id, value] if (ts, event_id) >= (kept[0], kept[1]) else kept


def _entry_key(entry):
    return entry[0], entry[1]


class ComputedRuntime:
    """A configuration's computed traits as the engine runs them, for one user at a time.

    ``readers[i]``: the audiences (a bit mask) whose conditions read trait ``i``. A user's state
    is a list (one item per trait, see :func:`_new_kept`). The engine calls, at each point ``t``:
    :meth:`expire` (entries that left their window by ``t``), :meth:`apply` for each applied
    event, then :meth:`values` when it evaluates an audience reading a computed trait.
    """

    def __init__(self, computed: ComputedSet, readers: list[int]) -> None:
        self.traits = computed.traits
        self.names = computed.names
        self.readers = readers
        self._windowed = [t.index for t in self.traits if t.within is not None]
        #: Windowed traits a condition reads: each entry's expiry is a wake-up.
        self._woken = [i for i in self._windowed if readers[i]]
        self.by_event: dict[str, list[ComputedTrait]] = {}
        self.any_event = [t for t in self.traits if t.event == ANY_EVENT]
        for t in self.traits:
            if t.event != ANY_EVENT:
                self.by_event.setdefault(t.event, []).append(t)
        for name in self.by_event:
            self.by_event[name] = self.by_event[name] + self.any_event
        #: trait index by name
        self.index = {t.name: t.index for t in self.traits}
        self.read_by_conditions = 0
        for mask in readers:
            self.read_by_conditions |= mask

    def new_state(self) -> list:
        return [_new_kept(t) for t in self.traits]

    def apply(self, kept: list, event: Any, t: int) -> int:
        """Adds ``event`` (applied at point ``t``; ``t`` is after its ts when it is late) to every
        trait it matches. Returns the audiences to re-evaluate."""
        traits = self.by_event.get(event.event, self.any_event)
        dirty = 0
        for trait in traits:
            if trait.where is not None and not trait.where(event.properties):
                continue
            value = None
            if trait.property is not None:
                props = event.properties
                name = trait.property
                value = props.get(name) if "." not in name else lookup(props, name)
                if value is None or (trait.op in _NUMERIC_OPS and not is_number(value)):
                    continue  # a value that does not qualify: this trait ignores the event
            i = trait.index
            if trait.within is None:
                kept[i] = _aggregate(trait, kept[i], event.ts, event.event_id, value)
            elif event.ts + trait.within > t:  # a late event may already have left its window
                entries = kept[i]
                entry = [event.ts, event.event_id, value]
                if not entries or _entry_key(entries[-1]) <= (event.ts, event.event_id):
                    entries.append(entry)
                else:
                    entries.insert(bisect.bisect_right(entries, (event.ts, event.event_id),
                                                       key=_entry_key), entry)
            else:
                continue
            dirty |= self.readers[i]
        return dirty

    def expire(self, kept: list, t: int) -> int:
        """Drops the entries that left their window by ``t`` (``ts + within <= t``). Returns the
        audiences to re-evaluate."""
        dirty = 0
        for i in self._windowed:
            entries = kept[i]
            if entries and entries[0][0] + self.traits[i].within <= t:
                limit = t - self.traits[i].within
                n = 0
                while n < len(entries) and entries[n][0] <= limit:
                    n += 1
                del entries[:n]
                dirty |= self.readers[i]
        return dirty

    def next_expiry(self, kept: list) -> float:
        """When the next entry of any windowed trait leaves its window (:data:`NEVER`: none)."""
        return min((kept[i][0][0] + self.traits[i].within for i in self._windowed if kept[i]),
                   default=NEVER)

    def next_wake(self, kept: list) -> float:
        """When the next entry of a windowed trait that a condition reads leaves its window: the
        value changes then, and with it maybe a membership (:data:`NEVER`: none)."""
        return min((kept[i][0][0] + self.traits[i].within for i in self._woken if kept[i]),
                   default=NEVER)

    def view(self, kept: list) -> ValuesView:
        """The values of ``kept`` by trait index, computed when read (:class:`ValuesView`)."""
        return ValuesView(self.traits, kept)

    def values(self, kept: list) -> list:
        """Every trait's value as the entries stand (in trait order)."""
        out = []
        for trait, item in zip(self.traits, kept):
            out.append(windowed_value(trait, item) if trait.within is not None
                       else all_time_value(trait, item))
        return out

    def as_dict(self, kept: list, at: Optional[int] = None) -> dict:
        """``{name: value}`` of every trait, an absent value left out; with ``at``, as of that
        time (entries that left their window by then left out, without dropping them)."""
        if at is not None:
            kept = [[e for e in item if e[0] + trait.within > at] if trait.within is not None
                    else item for trait, item in zip(self.traits, kept)]
        return {name: value for name, value in zip(self.names, self.values(kept))
                if value is not None}

    def merge(self, kept: list, other: list, clock: int) -> None:
        """Adds ``other``'s entries (an anonymous profile merged into this user, ``core.identity``)
        to ``kept`` as of ``clock``: windowed entries united in (ts, event_id) order without those
        whose window closed by ``clock``; all-time aggregates combined as if every event of both
        had been applied to one."""
        for trait in self.traits:
            i = trait.index
            theirs = other[i] if i < len(other) else _new_kept(trait)
            if trait.within is not None:
                united = sorted((e for e in kept[i] + theirs if e[0] + trait.within > clock),
                                key=_entry_key)
                kept[i] = united
            elif trait.op == "count":
                kept[i] = kept[i] + theirs
            elif trait.op in ("sum", "avg"):
                n, num, den, floats = kept[i]
                n2, num2, den2, floats2 = theirs
                total = Fraction(num, den) + Fraction(num2, den2)
                kept[i] = [n + n2, total.numerator, total.denominator, floats or floats2]
            elif theirs is not None:
                if trait.op in ("min", "max"):
                    kept[i] = _aggregate(trait, kept[i], theirs[1], theirs[2], theirs[0])
                else:
                    kept[i] = _aggregate(trait, kept[i], theirs[0], theirs[1], theirs[2])

    # -- saving and restoring (core.state) ------------------------------------------------------

    def document(self, kept: list) -> dict:
        """The traits' entries by :attr:`ComputedTrait.id` (empty ones left out)."""
        out = {}
        for trait, item in zip(self.traits, kept):
            if item in (None, 0, [], [0, 0, 1, False]):
                continue
            out[trait.id] = item if not isinstance(item, list) else [
                list(e) if isinstance(e, (list, tuple)) else e for e in item]
        return out

    def from_document(self, saved: dict) -> list:
        """A user's state from :meth:`document`'s form: a trait the saved state does not have
        (new, or its definition changed) starts from no events."""
        kept = self.new_state()
        for trait in self.traits:
            item = saved.get(trait.id)
            if item is None:
                continue
            if trait.within is not None:
                kept[trait.index] = sorted((list(e) for e in item), key=_entry_key)
            elif isinstance(item, list):
                kept[trait.index] = list(item)
            else:
                kept[trait.index] = item
        return kept


def attribute_key(name: str) -> tuple[str, str]:
    """The key of a computed value in an export row's attributes (``core.engine.ExportRow``):
    a tuple, so it never meets a trait name there (those are strings)."""
    return ("computed", name)


class ValuesView:
    """A user's computed values by trait index, each computed when first read from the entries
    and kept until :meth:`clear` (which the engine calls whenever an entry is added or dropped):
    what a condition's ``computed[k]``, a change's values and an export row read at a point."""
    __slots__ = ("_traits", "_kept", "_cache")

    def __init__(self, traits: list[ComputedTrait], kept: list) -> None:
        self._traits = traits
        self._kept = kept
        self._cache = {}

    def __getitem__(self, k: int) -> Any:
        cache = self._cache
        if k in cache:
            return cache[k]
        trait = self._traits[k]
        item = self._kept[k]
        value = cache[k] = (windowed_value(trait, item) if trait.within is not None
                            else all_time_value(trait, item))
        return value

    def clear(self) -> None:
        """Forgets the values read: the entries changed."""
        self._cache.clear()

    def as_dict(self) -> dict:
        """``{name: value}`` of every trait, an absent value left out."""
        out = {}
        for trait in self._traits:
            value = self[trait.index]
            if value is not None:
                out[trait.name] = value
        return out


def describe(trait: ComputedTrait) -> str:
    """One line saying what a trait computes, e.g. ``sum of purchase.price in the last 30d``."""
    from cdp_activation.core.timeutil import format_duration
    event = "any event" if trait.event == ANY_EVENT else trait.event
    what = ("count of %s" % event if trait.op == "count"
            else "%s of %s.%s" % (trait.op, event, trait.property))
    if trait.where is not None:
        what += " where %s" % trait.where_key
    return what + (" in the last %s" % format_duration(trait.within) if trait.within is not None
                   else " (all time)")


def usage(audiences: Any, works: list) -> list[dict]:
    """Per computed trait of a job (``audiences``: its ``AudienceSet``; ``works``: its
    ``core.config.Work`` list): its name, :func:`describe`, the audiences whose conditions read
    it and the works that send it (``computed_fields``, ``computed``). What ``validate`` prints
    and the run summary and report show."""
    computed = getattr(audiences, "computed", None)
    if computed is None or not len(computed):
        return []
    out = []
    for trait in computed.traits:
        read_by = [a.slug for a in audiences.audiences
                   if trait.index in audiences.computed_inputs_of(a.index)]
        sent_by = [w.id for w in works
                   if trait.name in (getattr(w.settings, "computed_fields", None) or ())
                   or trait.name in (getattr(w.settings, "computed", None) or ())]
        out.append({"name": trait.name, "computes": describe(trait), "read_by": read_by,
                    "sent_by": sent_by})
    return out
