"""Per-user audience evaluation: incremental, bounded state, exact delayed triggers.

The engine is pure: the streaming pipeline keeps a :class:`UserState` in Beam state and calls
:meth:`Engine.advance` from event-time timers; the batch replay calls it once per user with the
user's whole history. Both therefore produce the same transitions.

Semantics (CONTRACT section 4), for one user:

* Evaluation points are the user's event times and the times at which an event leaves a window
  (``ts + within``). Membership is evaluated after applying every event with ``ts <= T`` and every
  expiry ``<= T``; a user enters at the first point where the condition holds and exits at the first
  later point where it does not.
* Only what the windows need is kept: per counter spec at most ``cap`` timestamps (windowed) or a
  saturating counter (all time). An expiry that cannot cross a threshold of any node changes no
  membership, so :meth:`Engine.next_wake` only reports expiries that cross one: "3 purchases in
  7 days" wakes exactly when the third most recent purchase leaves the window.
* A point only re-evaluates audiences whose inputs changed (a referenced trait, a capped count, or
  an audience they reference); a count change only counts if it crosses a threshold of some node.
* An ``{event: "*"}`` spec counts every applied event, whatever its name.
* Computed traits (``core.computed``) keep every matching event still in their windows; one that a
  condition reads makes each entry's expiry an evaluation point (a wake-up), and a point brings
  every computed trait up to date before the events at it are applied.
* Copies of a record (same dedupe key) within 24 h of the first copy's ``received_at`` are applied
  once; copies of one point are taken in (``ts``, ``event_id``, ``received_at``) order.
* The user's clock is the time up to which the caller said all events had arrived (``until`` of
  the last :meth:`Engine.advance`; in the stream, a timer's firing time, which the watermark has
  passed). An event whose ``ts`` is not after the clock is late: it is applied at the clock and its
  transitions are stamped with the clock.

An engine made with an ``observer`` reports every evaluation of an audience (:class:`Evaluation`:
the time, the audience, the condition node by node with the counts and traits behind it, and the
transition it makes) and keeps exact counts (no cap) so that the counts it reports are the true
ones; transitions are the same either way. Without an observer nothing of this runs: the traced
evaluation order is chosen once per :meth:`Engine.advance` call, never per point.

The module is longer than 600 lines on purpose: the per-configuration tables built in
:class:`Engine` and the loop in :meth:`Engine._run` that reads them are one design (the loop reads
the tables as locals, for speed), and apart they would reach into each other's private names.
"""
import bisect
import hashlib
import operator
from typing import Callable, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from cdp_activation.core.computed import ComputedRuntime, attribute_key
from cdp_activation.core.conditions import ANY_EVENT, AudienceSet, NodeTrace
from cdp_activation.core.records import DEDUPE_HORIZON_US, ProfileEvent
from cdp_activation.core.state import (STATE_VERSION, StateDocument, StateFormatError, check_document,
                        decode_document,
                        encode_document, spec_id)
from cdp_activation.core.timeutil import MIN_TIME


class UserChange(NamedTuple):
    """The transitions of one user at one time T (or a backfill snapshot at a work's start)."""
    time: int
    changes: Tuple[Tuple[int, str, int], ...]   # (audience index, "enter"/"exit", enter time)
    traits: dict                                # traits as of T
    first_ts: int
    last_ts: int
    backfill: bool = False
    #: the computed traits' values at T (``{name: value}``, an absent value left out) when an
    #: Event Hub export copies them (``computed_fields``) or the engine is traced; else None
    computed: Optional[dict] = None


class Evaluation(NamedTuple):
    """One evaluation of one audience at one point, as a traced engine reports it."""
    time: int
    audience: int                 # the audience index
    audience_id: str
    value: bool                   # what the condition gave
    transition: Optional[str]     # "enter", "exit", or None when the membership stays
    tree: NodeTrace               # the condition node by node (core.conditions.NodeTrace)


class ExportRow(NamedTuple):
    """A deduplicated event and the exported attributes of its user as of the event."""
    event: ProfileEvent
    attributes: dict


class UserState:
    """One user's engine state, positional (counts by spec index, memberships by audience index)
    under the engine that made it. It is saved in its keyed form only
    (:meth:`Engine.state_document`, :meth:`Engine.dump_state`; ``core.state``)."""
    __slots__ = ("clock", "first_ts", "last_ts", "traits", "counts", "members", "seen",
                 "max_received", "seen_pruned_at", "reevaluate", "computed")

    def __init__(self, windowed_flags: Iterable[bool], n_audiences: int) -> None:
        self.clock = MIN_TIME          # every event up to here has been applied
        self.first_ts = None
        self.last_ts = None
        self.traits = {}
        # per spec: a saturating int (all time) or the sorted ts list of its window (windowed)
        self.counts = [[] if windowed else 0 for windowed in windowed_flags]
        self.members = [None] * n_audiences  # enter time, or None when not a member
        self.seen = {}                 # dedupe hash -> first received_at of its run
        self.max_received = MIN_TIME
        self.seen_pruned_at = 0        # size of ``seen`` after the last prune (amortises pruning)
        # Audiences (a mask) to evaluate at the next point whatever changed: those a restored
        # state had not evaluated under their current condition (added or edited audiences).
        self.reevaluate = 0
        # The computed traits' entries (``core.computed.ComputedRuntime``), one item per trait.
        self.computed = []

    def prune_seen(self) -> None:
        """Forgets dedupe keys whose 24-hour horizon has passed (no copy can still match them)."""
        horizon = self.max_received - DEDUPE_HORIZON_US
        if any(v <= horizon for v in self.seen.values()):
            self.seen = {k: v for k, v in self.seen.items() if v > horizon}
        self.seen_pruned_at = len(self.seen)


class _Due:
    """When each windowed spec next matters, kept current as its entries change during one
    :meth:`Engine.advance` (``_NEVER``: not by itself). Slot ``p`` is the p-th windowed spec.

    ``wakes[p]``: when the spec's count next falls to a threshold target; the last slot is the
    next backfill start. ``expiries[p]``: when its oldest entry leaves the window (the last slot
    stays ``_NEVER``, so that neither list is ever empty). ``wake`` and ``expiry`` are lower
    bounds of their minimums: a change only lowers them, and the loop takes the exact minimum when
    a bound says it may matter, because ``min()`` at every point would cost more than all the rest
    of a point.
    """
    __slots__ = ("wakes", "expiries", "wake", "expiry")

    def __init__(self, counts, expiring, caps):
        self.wakes = wakes = [_NEVER] * (len(expiring) + 1)
        self.expiries = expiries = [_NEVER] * (len(expiring) + 1)
        for p, (i, within, _, wake_pos, _) in enumerate(expiring):
            entries = counts[i]
            if len(entries) > caps[i]:
                # Saved under a configuration with a higher cap: the newest ``cap`` entries give
                # every node the same answer and the same wake-ups, and fit the tables.
                del entries[:len(entries) - caps[i]]
            if entries:
                expiries[p] = entries[0] + within
                k = wake_pos[len(entries)]
                if k >= 0:
                    wakes[p] = entries[k] + within
        self.wake = min(wakes)
        self.expiry = min(expiries)

    def set_backfill(self, start):
        start = _NEVER if start is None else start
        self.wakes[-1] = start
        if start < self.wake:
            self.wake = start


class _Visits(dict):
    """Per dirty mask, the part of the evaluation order (``Engine._order``) that an evaluation
    needs to look at: the dirty audiences and, transitively, those reading them (which only become
    dirty if one changes). Most points dirty one or two audiences of many."""

    def __init__(self, order):
        super().__init__()
        self.order = order

    def __missing__(self, dirty):
        reach = dirty
        for _, bit, _, readers in self.order:  # dependencies come before their readers
            if reach & bit:
                reach |= readers
        visit = tuple(entry for entry in self.order if reach & entry[1])
        if len(self) < _MAX_VISITS:  # the masks that occur are few; a bound all the same
            self[dirty] = visit
        return visit


def _count_table(fn, cap):
    """``fn`` of every count 0..cap, to look up by count: a tuple, or for a cap too large to
    tabulate ahead, a dict filled on first use (only counts that occur)."""
    if cap <= _TABULATED_CAP:
        return tuple(fn(c) for c in range(cap + 1))
    return _CountTable(fn)


class _CountTable(dict):
    __slots__ = ("fn",)

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __missing__(self, count):
        value = self[count] = self.fn(count)
        return value


def dedupe_hash(event: ProfileEvent) -> Union[str, bytes]:
    """The key the dedupe map stores: short ids as they are, long ones as an 8-byte hash."""
    event_id = event.event_id
    if len(event_id) <= 16:
        return event_id
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()


class Stats:
    """Counters the shells turn into Beam metrics and the run summary."""
    __slots__ = ("events", "duplicates", "late", "points")

    def __init__(self) -> None:
        self.events = self.duplicates = self.late = self.points = 0


class Engine:
    """Evaluates one job's audiences for one user at a time.

    ``backfill_starts``: the distinct ``start`` times of works with ``existing_users: true``; at
    each, a member gets a backfill snapshot of its memberships as of just before that time.
    ``export_attributes``: trait names to capture per event for exports; ``None`` means no export
    rows are produced.

    Sets of audiences are bit masks (bit ``a`` = audience index ``a``): the hot loop updates and
    tests them for every event, and integer operations are several times cheaper than sets.

    Cost model: :meth:`advance` runs once per event and per point, so everything that depends only
    on the configuration (what an event name counts for, which audiences read what, where a spec's
    next threshold crossing lies for each count) is computed here, once.
    """

    def __init__(self, audience_set: AudienceSet, backfill_starts: Sequence[int] = (),
                 export_attributes: Optional[Iterable[str]] = None,
                 observer: Optional[Callable[[Evaluation], None]] = None,
                 export_computed: Optional[Iterable[str]] = None, change_computed: bool = False) -> None:
        self.audiences = audience_set
        self.specs = audience_set.specs
        self._observer = observer
        # A traced engine counts every event (see the module docstring); a cap changes no answer.
        self.caps = (audience_set.caps if observer is None
                     else [_UNCAPPED] * len(audience_set.caps))
        self.specs_by_event = audience_set.specs_by_event
        self.backfill_starts = sorted(set(backfill_starts))
        self.export_attributes = None if export_attributes is None else list(export_attributes)
        n_aud = len(audience_set.audiences)
        # Computed traits (core.computed): the audiences reading each, their runtime, and what
        # the changes (``change_computed``, or traced) and the export rows (``export_computed``
        # names) carry of their values.
        computed_set = audience_set.computed
        self._computed = None
        self.export_computed = None
        self._change_computed = False
        if computed_set is not None and len(computed_set):
            readers = [0] * len(computed_set)
            for a in audience_set.audiences:
                for k in audience_set.computed_inputs_of(a.index):
                    readers[k] |= 1 << a.index
            self._computed = ComputedRuntime(computed_set, readers)
            self.export_computed = list(export_computed) if export_computed else None
            self._change_computed = bool(change_computed) or observer is not None
            if self.export_computed is not None and self.export_attributes is None:
                self.export_attributes = []
        # Which audiences to re-evaluate when a spec count, a trait or an audience changes. The
        # compiled closures hide their inputs, so the set records them per audience; an
        # over-approximation would still be correct (it would only cost time).
        self._spec_readers = [0] * len(self.specs)
        self._trait_readers = {}
        self._audience_readers = [0] * n_aud
        for a in audience_set.audiences:
            bit = 1 << a.index
            for d in a.depends_on:
                self._audience_readers[d] |= bit
            specs, traits = audience_set.inputs_of(a.index)
            for i in specs:
                self._spec_readers[i] |= bit
            for name in traits:
                self._trait_readers[name] = self._trait_readers.get(name, 0) | bit
        self._all_audiences = (1 << n_aud) - 1
        self._audience_ids = [a.id for a in audience_set.audiences]
        self._spec_ids = [spec_id(spec.event, spec.where_key, spec.within) for spec in self.specs]
        # ``state_holds`` reads the state's own counts and members, so evaluating builds nothing.
        self._order = tuple((a, 1 << a, audience_set.state_holds[a], self._audience_readers[a])
                            for a in audience_set.order)
        self._visits = _Visits(self._order)
        self._windowed = [i for i, s in enumerate(self.specs) if s.within is not None]
        self._windowed_flags = [s.within is not None for s in self.specs]
        self._within = [s.within for s in self.specs]
        # Per spec, the counts at which some node changes its answer as the count falls:
        # ``count >= lo`` flips on reaching lo - 1, ``count <= hi`` on reaching hi.
        self._targets = []
        for pairs in audience_set.thresholds:
            targets = {lo - 1 for lo, _ in pairs if lo >= 1} | {hi for _, hi in pairs if hi is not None}
            self._targets.append(sorted(targets))
        # Per spec and count c (a windowed spec never holds more than ``cap`` entries, an all-time
        # counter saturates at ``cap``, so the tables cover every count a spec can have):
        # * ``wake_pos[c]``: the index of the entry whose expiry brings the count down to the
        #   largest target below c (-1: none);
        # * ``bump[c]``: the audiences to re-evaluate when the count rises from c to c + 1, which
        #   flips some node only if c is a target;
        # * ``below[c]``: how many targets lie below c. A fall from c to c' flips some node only if
        #   a target lies in [c', c), that is if ``below[c'] != below[c]``.
        # Re-evaluating an audience none of whose nodes flipped could not change its membership,
        # so skipping it changes nothing but the time taken.
        self._wake_pos, bumps, belows = [], [], []
        for i, targets in enumerate(self._targets):
            def below(c, targets=targets):
                return bisect.bisect_left(targets, c)

            def wake_pos(c, targets=targets):
                k = bisect.bisect_left(targets, c)
                return c - targets[k - 1] - 1 if k else -1

            def bump(c, targets=frozenset(targets), readers=self._spec_readers[i]):
                return readers if c in targets else 0

            self._wake_pos.append(_count_table(wake_pos, self.caps[i]))
            bumps.append(_count_table(bump, self.caps[i]))
            belows.append(_count_table(below, self.caps[i]))
        # Per windowed spec (slot p of :class:`_Due`), what an expiry needs: (spec index, within,
        # readers, wake positions, below).
        self._expiring = tuple((i, self._within[i], self._spec_readers[i], self._wake_pos[i],
                                belows[i])
                               for i in self._windowed)
        slot = {i: p for p, i in enumerate(self._windowed)}
        # Per event name, the specs it may count for: (spec index, where predicate, within, cap,
        # bump, wake positions, slot); specs with cap 0 never need a count.
        counting = {name: tuple((i, self.specs[i].where, self.specs[i].within, self.caps[i],
                                 bumps[i], self._wake_pos[i], slot.get(i))
                                for i in indices if self.caps[i] > 0)
                    for name, indices in self.specs_by_event.items()}
        # ``{event: "*"}`` specs count every event: they are added to each name's specs, and are
        # all an event of a name no node asks for counts for.
        self._counting_any = counting.pop(ANY_EVENT, ())
        self._counting = {name: specs + self._counting_any for name, specs in counting.items()
                          if specs + self._counting_any}

    def new_state(self) -> UserState:
        state = UserState(self._windowed_flags, len(self.audiences.audiences))
        if self._computed is not None:
            state.computed = self._computed.new_state()
        return state

    def computed_values(self, state: UserState) -> Optional[dict]:
        """``{name: value}`` of the computed traits as ``state`` stands (None: none defined)."""
        return None if self._computed is None else self._computed.as_dict(state.computed)

    def merge_computed(self, state: UserState, other: UserState) -> None:
        """Adds ``other``'s computed-trait entries to ``state``'s as of its clock (identity
        stitching, ``core.identity.merge_state``)."""
        if self._computed is not None:
            self._computed.merge(state.computed, other.computed, state.clock)

    def _computed_view(self, state):
        return None if self._computed is None else self._computed.view(state.computed)

    def trace(self, state: UserState, index: int) -> NodeTrace:
        """Audience ``index``'s condition node by node over ``state`` as it stands (for a fresh
        state: before the user's first event)."""
        return self.audiences.trace(index, state.traits, state.counts, state.members,
                                    self._computed_view(state))

    def _traced_visits(self, state):
        """:class:`_Visits` over the evaluation order with each condition wrapped to report its
        evaluation to the observer. The loop sets ``state.clock`` to a point's time before it
        evaluates, and a membership is updated after its condition returns."""
        observer, ids, audiences = self._observer, self._audience_ids, self.audiences
        order = []
        for a, bit, holds, readers in self._order:
            def traced(traits, counts, members, computed=None, a=a, holds=holds):
                value = holds(traits, counts, members, computed)
                member = members[a] is not None
                transition = ("enter" if value and not member
                              else "exit" if member and not value else None)
                observer(Evaluation(state.clock, a, ids[a], value, transition,
                                    audiences.trace(a, traits, counts, members, computed)))
                return value
            order.append((a, bit, traced, readers))
        return _Visits(tuple(order))

    # -- saving and restoring (core.state, docs/STATE.md) ---------------------------------------

    def state_document(self, state: UserState) -> StateDocument:
        """``state`` in its keyed, versioned form (``core.state``): memberships and conditions by
        audience id, counts by spec id. Prunes the dedupe map first (only live keys are kept)."""
        state.prune_seen()
        ids = self._audience_ids
        keys = self.audiences.condition_keys
        pending = state.reevaluate
        return {
            "version": STATE_VERSION,
            "clock": state.clock,
            "first_ts": state.first_ts,
            "last_ts": state.last_ts,
            "max_received": state.max_received,
            "traits": dict(state.traits),
            "members": {ids[a]: t for a, t in enumerate(state.members) if t is not None},
            # An audience still to be re-evaluated is saved as not evaluated, so that the next
            # restore evaluates it too.
            "audiences": {ids[a]: keys[a] for a in range(len(ids)) if not pending >> a & 1},
            "counts": {self._spec_ids[i]: (list(c) if isinstance(c, list) else c)
                       for i, c in enumerate(state.counts) if c},
            "seen": dict(state.seen),
            "computed": ({} if self._computed is None
                         else self._computed.document(state.computed)),
        }

    def state_from_document(self, document: StateDocument) -> UserState:
        """A :class:`UserState` for this engine's configuration from a saved document.

        Audiences are matched by id and counts by spec id, never by position: a kept audience
        continues exactly wherever it now stands; a removed one, or a spec no condition counts any
        more, is dropped; a spec new to the state starts empty (all-time counts saturate at their
        cap, so a count saved under a lower cap stays at it). An audience the state had not
        evaluated under its current condition (added, or its condition edited) is evaluated at
        the user's next point, from what the state holds; until then it has no membership (or
        keeps the one it had), so its first transition is an enter (or an exit).
        """
        check_document(document)
        state = self.new_state()
        state.clock = document["clock"]
        state.first_ts = document["first_ts"]
        state.last_ts = document["last_ts"]
        state.max_received = document["max_received"]
        state.traits = dict(document["traits"])
        members = document["members"]
        state.members = [members.get(aid) for aid in self._audience_ids]
        evaluated = document["audiences"]
        keys = self.audiences.condition_keys
        for a, aid in enumerate(self._audience_ids):
            if evaluated.get(aid) != keys[a]:
                state.reevaluate |= 1 << a
        counts = document["counts"]
        for i, sid in enumerate(self._spec_ids):
            value = counts.get(sid)
            if value is None:
                continue
            if self._windowed_flags[i]:
                if not isinstance(value, list):
                    raise StateFormatError("count %s: a windowed count must be a list" % sid)
                state.counts[i] = sorted(value)
            else:
                if not isinstance(value, int):
                    raise StateFormatError("count %s: an all-time count must be an integer" % sid)
                state.counts[i] = min(value, self.caps[i])
        state.seen = dict(document["seen"])
        state.seen_pruned_at = len(state.seen)
        if self._computed is not None:
            # A version-1 document has no computed entries: every trait starts from no events.
            state.computed = self._computed.from_document(document.get("computed") or {})
        return state

    def dump_state(self, state: UserState) -> bytes:
        """``state`` as bytes of its keyed document (what Beam state holds)."""
        return encode_document(self.state_document(state))

    def load_state(self, data: bytes) -> UserState:
        """The state of :meth:`dump_state` bytes, under this engine's configuration."""
        return self.state_from_document(decode_document(data))

    # -- reading state -------------------------------------------------------------------------

    def is_member_anywhere(self, state: UserState) -> bool:
        return any(m is not None for m in state.members)

    def next_wake(self, state: UserState) -> Optional[int]:
        """The next time after the clock at which membership can change with no new event.

        That is the earliest expiry that crosses a threshold of some node, an entry of a computed
        trait that a condition reads leaving its window, or a backfill start while the user is a
        member of something. ``None`` if there is none.
        """
        wake = _min_or_none((self._spec_wake(state.counts[i], i) for i in self._windowed),
                            self._backfill_wake(state))
        if self._computed is not None:
            computed_wake = self._computed.next_wake(state.computed)
            if computed_wake != _NEVER and (wake is None or computed_wake < wake):
                wake = computed_wake
        return wake

    def _spec_wake(self, entries, i):
        """When spec i's count next falls to a threshold target (None: never by itself)."""
        c = len(entries)
        if not c:
            return None
        targets = self._targets[i]
        k = bisect.bisect_left(targets, c) - 1  # the largest target below the count
        if k < 0:
            return None
        # Live entries all expire after the clock, so this is in the future.
        return entries[c - targets[k] - 1] + self._within[i]

    def _backfill_wake(self, state):
        if self.backfill_starts and self.is_member_anywhere(state):
            for s in self.backfill_starts:
                if s > state.clock:
                    return s
        return None

    # -- advancing -----------------------------------------------------------------------------

    def advance(self, state: UserState, events: Iterable[ProfileEvent], until: int,
                stats: Optional[Stats] = None) -> Tuple[List[UserChange], List[ExportRow]]:
        """Applies ``events`` (this user's, every ``ts <= until``) and every point up to ``until``.

        Events with ``ts`` not after the clock are applied late, at the clock. Returns
        ``(changes, export_rows)``: the :class:`UserChange` list in time order and the
        :class:`ExportRow` list (empty unless export attributes were configured).
        """
        stats = stats or Stats()
        changes, rows = [], []
        if not isinstance(events, (list, tuple)):
            events = list(events)  # read twice below
        due = _Due(state.counts, self._expiring, self.caps)
        # Sorting by ts alone is twice as fast as by the full key (no key tuples), and gives the
        # same order unless two events share a ts.
        on_time = sorted(events, key=_TS)
        clock = state.clock
        if on_time and on_time[0].ts <= clock:
            for e in events:
                if e.ts <= clock:
                    # A late event is a point of its own at the clock, in arrival order. Nothing
                    # is due by then (the clock's own point dealt with it), and the dedupe map is
                    # not pruned: only points after the clock prune it.
                    stats.late += 1
                    self._run(state, [e], [clock, _NEVER], clock, due, stats, changes, rows,
                              prune=False)
            on_time = [e for e in on_time if e.ts > clock]
        times = list(map(_TS, on_time))
        if len(set(times)) < len(times):
            on_time.sort(key=_EVENT_ORDER)
        times.append(_NEVER)  # ends the scans in _run without a bounds check
        if self.backfill_starts:
            due.set_backfill(self._backfill_wake(state))
        stats.points += self._run(state, on_time, times, until, due, stats, changes, rows)
        if until > state.clock:
            # No point lies between the last one and ``until``, so memberships hold; entries that
            # expired without crossing a threshold are released to keep state small. The clock
            # moves to ``until``: the caller knows every event up to then has arrived, so one
            # arriving later is late.
            counts = state.counts
            for i, within, _, _, _ in self._expiring:
                entries = counts[i]
                if entries and entries[0] + within <= until:
                    del entries[:bisect.bisect_right(entries, until - within)]
            if self._computed is not None:
                # Only traits no condition reads have entries left by then (the others woke).
                self._computed.expire(state.computed, until)
            state.clock = until
        return changes, rows

    def _run(self, state, on_time, times, until, due, stats, changes, rows, prune=True):
        """Takes the points up to ``until``: each next event time (``times[i]`` is
        ``on_time[i].ts``, sorted, then ``_NEVER``) or wake-up, whichever comes first. Returns how
        many points it took.

        This loop runs once per event and point, so it applies events, expiries and evaluations
        itself rather than through methods (the calls alone cost several percent of the engine)
        and keeps what it reads per event in local variables. Late events come through here too
        (one point each, at the clock, ``prune=False``), so there is one implementation of
        applying an event.
        """
        backfill_starts = self.backfill_starts
        counting_of = self._counting
        counting_any = self._counting_any
        trait_readers = self._trait_readers
        export_attributes = self.export_attributes
        visits = self._visits if self._observer is None else self._traced_visits(state)
        expiring = self._expiring
        seen, traits, counts, members = state.seen, state.traits, state.counts, state.members
        wakes, expiries = due.wakes, due.expiries
        prune_size = max(32, 2 * state.seen_pruned_at) if prune else _NEVER
        # Until the user's first event, no audience has been evaluated: the first point that
        # applies one evaluates them all (a "not" condition may hold from the start).
        fresh = state.first_ts is None
        reevaluate = state.reevaluate
        duplicates = stats.duplicates
        # Computed traits (core.computed): their entries, when the next one leaves its window
        # (``c_expiry``) and when one that a condition reads does (``c_wake``, a wake-up).
        runtime = self._computed
        c_expiry = c_wake = _NEVER
        c_view = c_kept = c_events = c_any = c_extra = None
        if runtime is not None:
            c_kept = state.computed
            c_view = runtime.view(c_kept)
            c_events, c_any = runtime.by_event, runtime.any_event
            c_expiry, c_wake = runtime.next_expiry(c_kept), runtime.next_wake(c_kept)
            export_computed = self.export_computed
            change_computed = self._change_computed
        i = points = 0
        while True:
            t = times[i]
            if due.wake < t:
                # The bound says a wake-up may come first: only now is the exact minimum needed.
                due.wake = wake = min(wakes)
                if wake < t:
                    t = wake
            if c_wake < t:
                t = c_wake
            if t > until:
                break
            points += 1
            if backfill_starts:
                self._emit_backfills(state, t, changes, before=True)
            dirty = 0
            if due.expiry <= t:
                # Drops the window entries that left their window by t (``ts + within <= t``),
                # keeping ``due`` current; the exact minimum expiry comes with the scan.
                lowest = _NEVER
                for p, expiry in enumerate(expiries):
                    if expiry <= t:
                        s, within, readers, wake_pos, below = expiring[p]
                        entries = counts[s]
                        before = len(entries)
                        if entries[-1] + within <= t:
                            entries.clear()  # the usual case with small caps: all have left
                            if below[before]:
                                dirty |= readers
                            expiries[p] = wakes[p] = _NEVER
                            continue
                        del entries[:bisect.bisect_right(entries, t - within)]
                        after = len(entries)
                        if below[after] != below[before]:
                            dirty |= readers
                        expiry = expiries[p] = entries[0] + within
                        k = wake_pos[after]
                        if k >= 0:
                            wake = wakes[p] = entries[k] + within
                            if wake < due.wake:
                                due.wake = wake
                        else:
                            wakes[p] = _NEVER
                    if expiry < lowest:
                        lowest = expiry
                due.expiry = lowest
            c_changed = False
            if c_expiry <= t:
                dirty |= runtime.expire(c_kept, t)
                c_changed = True
            exported = []
            while times[i] == t:
                e = on_time[i]
                i += 1
                # Dedupe: copies within 24 hours of the first copy's received_at count once.
                h = e.event_id
                if len(h) > 16:
                    h = dedupe_hash(e)
                received = e.received_at
                if h in seen:
                    first = seen[h]
                    if first <= received < first + DEDUPE_HORIZON_US:
                        stats.duplicates += 1
                        continue
                seen[h] = received
                if received > state.max_received:
                    state.max_received = received
                ts = e.ts
                last = state.last_ts
                if last is None or ts > last:
                    state.last_ts = ts
                    if last is None:
                        state.first_ts = ts
                elif ts < state.first_ts:  # only a late event comes before the others
                    state.first_ts = ts
                new_traits = e.traits
                if new_traits:
                    for name, value in new_traits.items():
                        if value is None:
                            if traits.pop(name, None) is not None:
                                dirty |= trait_readers.get(name, 0)
                        else:
                            old = traits.get(name, _ABSENT)
                            if old is _ABSENT or old != value or type(old) is not type(value):
                                traits[name] = value
                                dirty |= trait_readers.get(name, 0)
                counting = counting_of.get(e.event, counting_any)
                if counting:
                    for s, where, within, cap, bump, wake_pos, p in counting:
                        if where is not None and not where(e.properties):
                            continue
                        if within is None:
                            c = counts[s]
                            if c < cap:
                                counts[s] = c + 1
                                dirty |= bump[c]
                        elif ts + within > t:  # a late event may already have left its window
                            entries = counts[s]
                            before = len(entries)
                            if not entries or ts >= entries[-1]:
                                entries.append(ts)
                            else:
                                bisect.insort(entries, ts)
                            if before == cap:
                                # Full: the oldest entry goes and the count stays. Every entry
                                # is now at least as late as the one before at its index, so
                                # the spec's wake and expiry only move later and the bounds in
                                # ``due`` stay bounds.
                                del entries[0]
                                expiries[p] = entries[0] + within
                                k = wake_pos[cap]
                                if k >= 0:
                                    wakes[p] = entries[k] + within
                                continue
                            dirty |= bump[before]
                            expiry = expiries[p] = entries[0] + within
                            if expiry < due.expiry:
                                due.expiry = expiry
                            k = wake_pos[len(entries)]
                            if k >= 0:
                                wake = wakes[p] = entries[k] + within
                                if wake < due.wake:
                                    due.wake = wake
                            else:
                                wakes[p] = _NEVER
                if runtime is not None and (e.event in c_events or c_any):
                    dirty |= runtime.apply(c_kept, e, t)
                    c_changed = True
                if export_attributes is not None:
                    exported.append(e)
            if c_changed:
                c_expiry, c_wake = runtime.next_expiry(c_kept), runtime.next_wake(c_kept)
                c_view.clear()
                c_extra = None
            if exported:
                # The user's values as of the point: every event at t has set its traits first,
                # so events that share a ts export the same values (traits at T, CONTRACT 5.2).
                extra = None
                if runtime is not None and export_computed:
                    if c_extra is None:  # the values change only with the entries
                        index = runtime.index
                        c_extra = {attribute_key(name): c_view[index[name]]
                                   for name in export_computed}
                    extra = c_extra
                for e in exported:
                    attributes = {name: traits.get(name) for name in export_attributes}
                    if extra:
                        attributes.update(extra)
                    rows.append(ExportRow(e, attributes))
            if fresh and state.first_ts is not None:
                fresh = False
                dirty = self._all_audiences
            if reevaluate and state.first_ts is not None:
                # A restored state's added or edited audiences, once, at its first point.
                dirty |= reevaluate
                reevaluate = state.reevaluate = 0
            if len(seen) >= prune_size:
                # After the point, never between two copies of one record (copies share a ts):
                # pruning between them would forget the first before the second is checked.
                state.prune_seen()
                seen = state.seen
                prune_size = max(32, 2 * state.seen_pruned_at)
            if backfill_starts:
                self._emit_backfills(state, t, changes, before=False)
            state.clock = t
            if not dirty:
                if backfill_starts and wakes[-1] <= t:
                    due.set_backfill(self._backfill_wake(state))
                continue
            # Re-evaluates the dirty audiences, and those reading an audience that changes.
            changed = ()
            for a, bit, holds, readers in visits[dirty]:
                if not dirty & bit:
                    continue
                if holds(traits, counts, members, c_view):
                    if members[a] is not None:
                        continue
                    members[a] = t
                    changed += ((a, "enter", t),)
                else:
                    if members[a] is None:
                        continue
                    changed += ((a, "exit", members[a]),)
                    members[a] = None
                dirty |= readers
            if changed:
                if len(changed) > 1:
                    changed = tuple(sorted(changed))  # by audience index
                # tuple.__new__ is what UserChange() does, minus a Python-level __new__.
                changes.append(_new_tuple(UserChange, (
                    t, changed, dict(traits), state.first_ts, state.last_ts, False,
                    c_view.as_dict() if runtime is not None and change_computed else None)))
            if backfill_starts and (changed or wakes[-1] <= t):
                due.set_backfill(self._backfill_wake(state))
        stats.events += i - (stats.duplicates - duplicates)  # every event taken is applied
        return points

    def _emit_backfills(self, state, t, changes, before):
        """Backfill snapshots for starts in (clock, t]: memberships as of just before the start;
        data (traits, ``_modified``) as of the start itself. A start before t is emitted before
        t's events are applied, a start at t after they are applied but before evaluation."""
        for s in self.backfill_starts:
            if state.clock < s <= t and (s < t) == before:
                members = tuple((a, "enter", state.members[a])
                                for a in range(len(state.members)) if state.members[a] is not None)
                if members:
                    computed = (self._computed.as_dict(state.computed, s)
                                if self._computed is not None and self._change_computed else None)
                    changes.append(UserChange(s, members, dict(state.traits), state.first_ts,
                                              state.last_ts, True, computed))


_ABSENT = object()
_MAX_VISITS = 4096  # dirty masks remembered per engine
_TABULATED_CAP = 4096  # per-count tables of larger caps are filled on first use
#: The cap of every spec of a traced engine: more than any count a user reaches.
_UNCAPPED = 1 << 62
#: A time after every time (wakes and expiries that never come); comparisons with ints are exact.
_NEVER = float("inf")
#: The order of the events of one point (see the module docstring), as a C-level key.
_EVENT_ORDER = operator.attrgetter("ts", "event_id", "received_at")
_TS = operator.attrgetter("ts")
_new_tuple = tuple.__new__


def _min_or_none(values, extra=None):
    best = extra
    for v in values:
        if v is not None and (best is None or v < best):
            best = v
    return best
