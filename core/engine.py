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
  an audience they reference).
* Copies of a record (same dedupe key) within 24 h of the first copy's ``received_at`` are applied
  once; copies of one point are taken in (``ts``, ``event_id``, ``received_at``) order.
* The user's clock is the time up to which the caller said all events had arrived (``until`` of
  the last :meth:`Engine.advance`; in the stream, a timer's firing time, which the watermark has
  passed). An event whose ``ts`` is not after the clock is late: it is applied at the clock and its
  transitions are stamped with the clock.
"""
import bisect
import hashlib
import pickle
from typing import List, NamedTuple, Optional, Tuple

from core.records import DEDUPE_HORIZON_US, ProfileEvent
from core.timeutil import MIN_TIME


class UserChange(NamedTuple):
    """The transitions of one user at one time T (or a backfill snapshot at a work's start)."""
    time: int
    changes: Tuple[Tuple[int, str, int], ...]   # (audience index, "enter"/"exit", enter time)
    traits: dict                                # traits as of T
    first_ts: int
    last_ts: int
    backfill: bool = False


class ExportRow(NamedTuple):
    """A deduplicated event and the exported attributes of its user as of the event."""
    event: ProfileEvent
    attributes: dict


class UserState:
    __slots__ = ("clock", "first_ts", "last_ts", "traits", "counts", "members", "seen",
                 "max_received", "seen_pruned_at")

    def __init__(self, windowed_flags, n_audiences):
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

    def prune_seen(self):
        """Forgets dedupe keys whose 24-hour horizon has passed (no copy can still match them)."""
        horizon = self.max_received - DEDUPE_HORIZON_US
        if any(v <= horizon for v in self.seen.values()):
            self.seen = {k: v for k, v in self.seen.items() if v > horizon}
        self.seen_pruned_at = len(self.seen)

    def to_bytes(self):
        self.prune_seen()
        return pickle.dumps((self.clock, self.first_ts, self.last_ts, self.traits, self.counts,
                             self.members, self.seen, self.max_received), protocol=5)

    @classmethod
    def from_bytes(cls, data):
        state = cls.__new__(cls)
        (state.clock, state.first_ts, state.last_ts, state.traits, state.counts, state.members,
         state.seen, state.max_received) = pickle.loads(data)
        state.seen_pruned_at = len(state.seen)
        return state


def dedupe_hash(event):
    """The key the dedupe map stores: short ids as they are, long ones as an 8-byte hash."""
    event_id = event.event_id
    if len(event_id) <= 16:
        return event_id
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()


def event_order(event):
    return (event.ts, event.event_id, event.received_at)


class Stats:
    """Counters the shells turn into Beam metrics and the run summary."""
    __slots__ = ("events", "duplicates", "late", "points")

    def __init__(self):
        self.events = self.duplicates = self.late = self.points = 0


class Engine:
    """Evaluates one job's audiences for one user at a time.

    ``backfill_starts``: the distinct ``start`` times of works with ``existing_users: true``; at
    each, a member gets a backfill snapshot of its memberships as of just before that time.
    ``export_attributes``: trait names to capture per event for exports; ``None`` means no export
    rows are produced.

    Sets of audiences are bit masks (bit ``a`` = audience index ``a``): the hot loop updates and
    tests them for every event, and integer operations are several times cheaper than sets.
    """

    def __init__(self, audience_set, backfill_starts=(), export_attributes=None):
        self.audiences = audience_set
        self.specs = audience_set.specs
        self.caps = audience_set.caps
        self.specs_by_event = audience_set.specs_by_event
        self.backfill_starts = sorted(set(backfill_starts))
        self.export_attributes = None if export_attributes is None else list(export_attributes)
        n_aud = len(audience_set.audiences)
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
        self._order = [(a, 1 << a, audience_set.audiences[a].holds) for a in audience_set.order]
        self._windowed = [i for i, s in enumerate(self.specs) if s.within is not None]
        self._windowed_flags = [s.within is not None for s in self.specs]
        self._within = [s.within for s in self.specs]
        # Per event name: (spec index, where predicate, within, cap) of the specs it may count for.
        self._counting = {name: [(i, self.specs[i].where, self.specs[i].within, self.caps[i])
                                 for i in indices if self.caps[i] > 0]
                          for name, indices in self.specs_by_event.items()}
        # Per spec, the counts at which some node changes its answer as the count falls:
        # ``count >= lo`` flips on reaching lo - 1, ``count <= hi`` on reaching hi.
        self._targets = []
        for pairs in audience_set.thresholds:
            targets = {lo - 1 for lo, _ in pairs if lo >= 1} | {hi for _, hi in pairs if hi is not None}
            self._targets.append(sorted(targets))

    def new_state(self):
        return UserState(self._windowed_flags, len(self.audiences.audiences))

    # -- reading state -------------------------------------------------------------------------

    def is_member_anywhere(self, state):
        return any(m is not None for m in state.members)

    def next_wake(self, state):
        """The next time after the clock at which membership can change with no new event.

        That is the earliest expiry that crosses a threshold of some node, or a backfill start
        while the user is a member of something. ``None`` if there is none.
        """
        return _min_or_none((self._spec_wake(state.counts[i], i) for i in self._windowed),
                            self._backfill_wake(state))

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

    def advance(self, state, events, until, stats=None):
        """Applies ``events`` (this user's, every ``ts <= until``) and every point up to ``until``.

        Events with ``ts`` not after the clock are applied late, at the clock. Returns
        ``(changes, export_rows)``: the :class:`UserChange` list in time order and the
        :class:`ExportRow` list (empty unless export attributes were configured).
        """
        stats = stats or Stats()
        changes, rows = [], []
        on_time = []
        for e in events:
            if e.ts <= state.clock:
                self._apply_late(state, e, stats, changes, rows)
            else:
                on_time.append(e)
        on_time.sort(key=event_order)
        counts = state.counts
        within_of = self._within
        windowed = self._windowed
        # Per windowed spec: when it next crosses a threshold, and when its oldest entry expires.
        wakes = {i: self._spec_wake(counts[i], i) for i in windowed}
        expiries = {i: counts[i][0] + within_of[i] for i in windowed if counts[i]}
        backfill = self._backfill_wake(state)
        i, n = 0, len(on_time)
        wake = _min_or_none(wakes.values(), backfill)
        next_expiry = min(expiries.values()) if expiries else None
        while True:
            t = on_time[i].ts if i < n else None
            if wake is not None and (t is None or wake < t):
                t = wake
            if t is None or t > until:
                break
            j = i
            while j < n and on_time[j].ts == t:
                j += 1
            stats.points += 1
            if self.backfill_starts:
                self._emit_backfills(state, t, changes, before=True)
            dirty = 0
            touched = ()
            if next_expiry is not None and next_expiry <= t:
                dirty, touched = self._expire(state, t, expiries)
            first = state.first_ts is None
            applied = False
            for k in range(i, j):
                mask, spec = self._apply(state, on_time[k], stats, rows, None)
                if mask is not None:
                    applied = True
                    dirty |= mask
                    if spec:
                        touched = touched + spec if touched else spec
            i = j
            size = len(state.seen)
            if size >= 32 and size >= 2 * state.seen_pruned_at:
                # After the point, never between two copies of one record (copies share a ts):
                # pruning between them would forget the first before the second is checked.
                state.prune_seen()
            if first and applied:
                dirty = self._all_audiences
            if self.backfill_starts:
                self._emit_backfills(state, t, changes, before=False)
            state.clock = t
            members_changed = dirty and self._evaluate(state, t, dirty, changes)
            recompute = bool(touched)
            for s in touched:
                wakes[s] = self._spec_wake(counts[s], s)
                if counts[s]:
                    expiries[s] = counts[s][0] + within_of[s]
                else:
                    expiries.pop(s, None)
            if members_changed or (backfill is not None and backfill <= t):
                backfill = self._backfill_wake(state)
                recompute = True
            if wake is not None and wake <= t:
                # A wake-up was consumed: the spec it came from has moved on (or will now).
                for s, w in wakes.items():
                    if w is not None and w <= t:
                        wakes[s] = self._spec_wake(counts[s], s)
                recompute = True
            if recompute:
                wake = _min_or_none(wakes.values(), backfill)
                next_expiry = min(expiries.values()) if expiries else None
        if until > state.clock:
            # No point lies between the last one and ``until``, so memberships hold; entries that
            # expired without crossing a threshold are released to keep state small. The clock
            # moves to ``until``: the caller knows every event up to then has arrived, so one
            # arriving later is late.
            self._expire(state, until, {s: 0 for s in windowed})
            state.clock = until
        return changes, rows

    def _emit_backfills(self, state, t, changes, before):
        """Backfill snapshots for starts in (clock, t]: memberships as of just before the start;
        data (traits, ``_modified``) as of the start itself. A start before t is emitted before
        t's events are applied, a start at t after they are applied but before evaluation."""
        for s in self.backfill_starts:
            if state.clock < s <= t and (s < t) == before:
                members = tuple((a, "enter", state.members[a])
                                for a in range(len(state.members)) if state.members[a] is not None)
                if members:
                    changes.append(UserChange(s, members, dict(state.traits), state.first_ts,
                                              state.last_ts, backfill=True))

    def _expire(self, state, t, candidates):
        """Drops window entries that left their window by t; returns (dirty mask, touched specs)."""
        dirty, touched = 0, []
        for i in candidates:
            entries = state.counts[i]
            if entries and entries[0] + self._within[i] <= t:
                within = self._within[i]
                k = 1
                while k < len(entries) and entries[k] + within <= t:
                    k += 1
                del entries[:k]
                dirty |= self._spec_readers[i]
                touched.append(i)
        return dirty, tuple(touched)

    def _apply(self, state, e, stats, rows, at):
        """Applies one event at its own time (or ``at`` for a late one).

        Returns ``(dirty mask, touched windowed specs)``, or ``(None, ())`` for a duplicate.
        """
        # Dedupe: copies within 24 hours of the first copy's received_at count once.
        h = dedupe_hash(e)
        seen = state.seen
        first = seen.get(h)
        received = e.received_at
        if first is not None and first <= received < first + DEDUPE_HORIZON_US:
            stats.duplicates += 1
            return None, ()
        seen[h] = received
        if received > state.max_received:
            state.max_received = received
        stats.events += 1
        ts = e.ts
        if state.first_ts is None or ts < state.first_ts:
            state.first_ts = ts
        if state.last_ts is None or ts > state.last_ts:
            state.last_ts = ts
        dirty = 0
        if e.traits:
            traits = state.traits
            readers = self._trait_readers
            for name, value in e.traits.items():
                if value is None:
                    if traits.pop(name, None) is not None:
                        dirty |= readers.get(name, 0)
                else:
                    old = traits.get(name, _ABSENT)
                    if old is _ABSENT or old != value or type(old) is not type(value):
                        traits[name] = value
                        dirty |= readers.get(name, 0)
        touched = ()
        counting = self._counting.get(e.event)
        if counting:
            now = ts if at is None else at
            counts = state.counts
            for i, where, within, cap in counting:
                if where is not None and not where(e.properties):
                    continue
                if within is None:
                    c = counts[i]
                    if c < cap:
                        counts[i] = c + 1
                        dirty |= self._spec_readers[i]
                elif ts + within > now:
                    entries = counts[i]
                    before = len(entries)
                    if not entries or ts >= entries[-1]:
                        entries.append(ts)
                    else:
                        bisect.insort(entries, ts)
                    if before == cap:
                        del entries[0]
                    else:
                        dirty |= self._spec_readers[i]
                    touched = touched + (i,)
        if self.export_attributes is not None:
            rows.append(ExportRow(e, {name: state.traits.get(name) for name in self.export_attributes}))
        return dirty, touched

    def _apply_late(self, state, e, stats, changes, rows):
        stats.late += 1
        first = state.first_ts is None
        dirty, _ = self._apply(state, e, stats, rows, state.clock)
        if dirty is not None:
            if first:
                dirty = self._all_audiences
            self._evaluate(state, state.clock, dirty, changes)

    def _evaluate(self, state, t, dirty, changes):
        """Re-evaluates the dirty audiences at t; returns whether a membership changed."""
        counts = [len(c) if c.__class__ is list else c for c in state.counts]
        members = state.members
        present = [m is not None for m in members]
        changed = None
        for a, bit, holds in self._order:
            if not dirty & bit:
                continue
            now = bool(holds(state.traits, counts, present))
            if now != present[a]:
                present[a] = now
                if changed is None:
                    changed = []
                if now:
                    members[a] = t
                    changed.append((a, "enter", t))
                else:
                    changed.append((a, "exit", members[a]))
                    members[a] = None
                dirty |= self._audience_readers[a]
        if changed:
            changed.sort()
            changes.append(UserChange(t, tuple(changed), dict(state.traits), state.first_ts,
                                      state.last_ts))
            return True
        return False


_ABSENT = object()


def _min_or_none(values, extra=None):
    best = extra
    for v in values:
        if v is not None and (best is None or v < best):
            best = v
    return best
