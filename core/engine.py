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
                 "max_received")

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

    def prune_seen(self):
        """Forgets dedupe keys whose 24-hour horizon has passed (no copy can still match them)."""
        horizon = self.max_received - DEDUPE_HORIZON_US
        if any(v <= horizon for v in self.seen.values()):
            self.seen = {k: v for k, v in self.seen.items() if v > horizon}

    def to_bytes(self):
        self.prune_seen()
        return pickle.dumps((self.clock, self.first_ts, self.last_ts, self.traits, self.counts,
                             self.members, self.seen, self.max_received), protocol=5)

    @classmethod
    def from_bytes(cls, data):
        state = cls.__new__(cls)
        (state.clock, state.first_ts, state.last_ts, state.traits, state.counts, state.members,
         state.seen, state.max_received) = pickle.loads(data)
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
    """

    def __init__(self, audience_set, backfill_starts=(), export_attributes=None):
        self.audiences = audience_set
        self.specs = audience_set.specs
        self.caps = audience_set.caps
        self.specs_by_event = audience_set.specs_by_event
        self.backfill_starts = sorted(set(backfill_starts))
        self.export_attributes = None if export_attributes is None else list(export_attributes)
        n_aud = len(audience_set.audiences)
        # Which audiences to re-evaluate when a spec count, a trait or an audience changes.
        self._spec_readers = [set() for _ in self.specs]
        self._trait_readers = {}
        self._audience_readers = [set() for _ in range(n_aud)]
        self._all_audiences = frozenset(range(n_aud))
        for a in audience_set.audiences:
            for d in a.depends_on:
                self._audience_readers[d].add(a.index)
        self._collect_inputs(audience_set)
        self._windowed = [i for i, s in enumerate(self.specs) if s.within is not None]
        self._windowed_flags = [s.within is not None for s in self.specs]
        # Per spec, the counts at which some node changes its answer as the count falls:
        # ``count >= lo`` flips on reaching lo - 1, ``count <= hi`` on reaching hi.
        self._targets = []
        for pairs in audience_set.thresholds:
            targets = {lo - 1 for lo, _ in pairs if lo >= 1} | {hi for _, hi in pairs if hi is not None}
            self._targets.append(sorted(targets))
        self._touched = False  # windowed entries or memberships changed since next_wake

    def _collect_inputs(self, audience_set):
        # The compiled closures hide their inputs, so read them off the raw trees via the set's
        # recorded definitions: every audience reads every spec it registered and every trait named
        # in its tree. A conservative over-approximation is still correct (it only costs time).
        for a in audience_set.audiences:
            specs, traits = audience_set.inputs_of(a.index)
            for s in specs:
                self._spec_readers[s].add(a.index)
            for t in traits:
                self._trait_readers.setdefault(t, set()).add(a.index)

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
        return self._horizons(state)[0]

    def _horizons(self, state):
        """(next wake, earliest expiry of any window entry); either may be None."""
        best = expiry = None
        specs, targets_of = self.specs, self._targets
        for i in self._windowed:
            entries = state.counts[i]
            if not entries:
                continue
            within = specs[i].within
            first = entries[0] + within
            if expiry is None or first < expiry:
                expiry = first
            c = len(entries)
            targets = targets_of[i]
            k = bisect.bisect_left(targets, c) - 1  # the largest target below the count
            if k < 0:
                continue
            # Live entries all expire after the clock, so this is in the future.
            t = entries[c - targets[k] - 1] + within
            if best is None or t < best:
                best = t
        if self.backfill_starts and self.is_member_anywhere(state):
            for s in self.backfill_starts:
                if s > state.clock:
                    if best is None or s < best:
                        best = s
                    break
        return best, expiry

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
        i, n = 0, len(on_time)
        wake, expiry = self._horizons(state)
        while True:
            t = on_time[i].ts if i < n else None
            if wake is not None and (t is None or wake < t):
                t = wake
            if t is None or t > until:
                break
            j = i
            while j < n and on_time[j].ts == t:
                j += 1
            self._touched = False
            self._point(state, t, on_time[i:j], stats, changes, rows,
                        expiry is not None and expiry <= t)
            i = j
            if self._touched or (wake is not None and wake <= t):
                wake, expiry = self._horizons(state)
        if until > state.clock:
            # No point lies between the last one and ``until``, so memberships hold; entries that
            # expired without crossing a threshold are released to keep state small. The clock
            # moves to ``until``: the caller knows every event up to then has arrived, so one
            # arriving later is late.
            self._expire(state, until, set())
            state.clock = until
        return changes, rows

    def _point(self, state, t, batch, stats, changes, rows, may_expire=True):
        stats.points += 1
        if self.backfill_starts:
            self._emit_backfills(state, t, changes)
        dirty = set()
        if may_expire:
            self._expire(state, t, dirty)
        first = state.first_ts is None
        applied = False
        for e in batch:
            if self._apply(state, e, dirty, stats, rows):
                applied = True
        if first and applied:
            dirty = set(self._all_audiences)
        state.clock = t
        self._evaluate(state, t, dirty, changes)

    def _emit_backfills(self, state, t, changes):
        for s in self.backfill_starts:
            if state.clock < s <= t:
                members = tuple((a, "enter", state.members[a])
                                for a in range(len(state.members)) if state.members[a] is not None)
                if members:
                    changes.append(UserChange(s, members, dict(state.traits), state.first_ts,
                                              state.last_ts, backfill=True))

    def _expire(self, state, t, dirty):
        for i in self._windowed:
            entries = state.counts[i]
            if entries and entries[0] + self.specs[i].within <= t:
                within = self.specs[i].within
                k = 0
                while k < len(entries) and entries[k] + within <= t:
                    k += 1
                del entries[:k]
                dirty.update(self._spec_readers[i])
                self._touched = True

    def _is_duplicate(self, state, e, stats):
        h = dedupe_hash(e)
        first = state.seen.get(h)
        if first is not None and first <= e.received_at < first + DEDUPE_HORIZON_US:
            stats.duplicates += 1
            return True
        state.seen[h] = e.received_at
        if e.received_at > state.max_received:
            state.max_received = e.received_at
        size = len(state.seen)
        if size >= 32 and not size & (size - 1):  # at powers of two: amortised O(1) per event
            state.prune_seen()
        return False

    def _apply(self, state, e, dirty, stats, rows, at=None):
        """Applies one event at its own time (or ``at`` for a late one). False for a duplicate."""
        if self._is_duplicate(state, e, stats):
            return False
        stats.events += 1
        if state.first_ts is None or e.ts < state.first_ts:
            state.first_ts = e.ts
        if state.last_ts is None or e.ts > state.last_ts:
            state.last_ts = e.ts
        if e.traits:
            traits = state.traits
            for name, value in e.traits.items():
                if value is None:
                    if traits.pop(name, None) is not None:
                        dirty.update(self._trait_readers.get(name, ()))
                elif traits.get(name, _ABSENT) != value or type(traits.get(name)) is not type(value):
                    traits[name] = value
                    dirty.update(self._trait_readers.get(name, ()))
        now = e.ts if at is None else at
        for i in self.specs_by_event.get(e.event, ()):
            spec = self.specs[i]
            if spec.where is not None and not spec.where(e.properties):
                continue
            cap = self.caps[i]
            if spec.within is None:
                c = state.counts[i]
                if c < cap:
                    state.counts[i] = c + 1
                    dirty.update(self._spec_readers[i])
            elif e.ts + spec.within > now and cap > 0:
                entries = state.counts[i]
                before = len(entries)
                self._touched = True
                bisect.insort(entries, e.ts)
                if len(entries) > cap:
                    del entries[0]
                if len(entries) != before:
                    dirty.update(self._spec_readers[i])
        if self.export_attributes is not None:
            attrs = {name: state.traits.get(name) for name in self.export_attributes}
            rows.append(ExportRow(e, attrs))
        return True

    def _apply_late(self, state, e, stats, changes, rows):
        stats.late += 1
        dirty = set()
        first = state.first_ts is None
        if self._apply(state, e, dirty, stats, rows, at=state.clock):
            if first:
                dirty = set(self._all_audiences)
            self._evaluate(state, state.clock, dirty, changes)

    def _evaluate(self, state, t, dirty, changes):
        if not dirty:
            return
        counts = [len(c) if c.__class__ is list else c for c in state.counts]
        present = [m is not None for m in state.members]
        changed = []
        for a_index in self.audiences.order:
            if a_index not in dirty:
                continue
            audience = self.audiences.audiences[a_index]
            now = bool(audience.holds(state.traits, counts, present))
            if now != present[a_index]:
                present[a_index] = now
                if now:
                    state.members[a_index] = t
                    changed.append((a_index, "enter", t))
                else:
                    changed.append((a_index, "exit", state.members[a_index]))
                    state.members[a_index] = None
                dirty.update(self._audience_readers[a_index])
        if changed:
            self._touched = True
            changed.sort()
            changes.append(UserChange(t, tuple(changed), dict(state.traits), state.first_ts,
                                      state.last_ts))


_ABSENT = object()
