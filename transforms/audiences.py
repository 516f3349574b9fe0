"""Audience evaluation: the pure engine (``core.engine``) inside Beam.

Two composites, one engine, the same transitions:

``EvaluateAudiencesStateful`` (``pipelines.stream``)
    A stateful DoFn keyed by user. Incoming events wait in the user's state until the watermark
    passes them, so a user's events are applied in event-time order whatever the arrival order; an
    event-time timer wakes the user for the delayed trigger (the next moment a window expiry can
    change a membership) even if the user never sends another event. An event that arrives after
    the user's evaluation has passed its time is *late*: it is applied at once, counted, and its
    transitions are stamped with the user's current evaluation time. Nothing is dropped.

    Cost model: each element is a *group* of one user's events (per read chunk, or per bundle via
    ``GroupUserEventsPerBundle``), so state is read once per user and group, not per event; the
    group is appended to a bag of pending events without reading it, and the small engine state
    is rewritten and the timer reset only when they change. In batch execution (no timer fires
    before all input is read) a group is only appended and the timer set, without any state
    read, and each user is evaluated once, at its one wake-up: in a worker process, in batches of
    users, when there are any (``worker_processes``), else here, keeping the user's state in the
    bag it reads anyway.
    Timers fire once per user and flush (the latest event time of the group) and once per expiry
    that actually crosses a threshold; they are set with ``transforms.live.timer_at`` (rounded up
    to the millisecond, the runners' unit).

``EvaluateAudiencesBatch`` (``pipelines.replay``)
    ``GroupByKey`` by user, then the engine over each user's whole history in one call
    (``core.history``), in batches of users in worker processes when there are any.

Both emit ``((key_field, key), [UserChange, ...])`` on the main output and ``[ExportRow, ...]`` on
``export``: one element per user and evaluation, not per change, because per-element overhead is
what a Python pipeline pays most for.
Metrics: ``audiences:events_applied``, ``audiences:duplicates``, ``audiences:late``, and
``audience:<slug>`` ``enters`` / ``exits``.
"""
import logging
import pickle
import typing

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                               on_timer)
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.blocks import pack_rows, unpack_rows
from core.engine import ExportRow, Stats, UserChange
from core.history import (BatchTotals, EngineSpec,  # noqa: F401 (EngineSpec: the shells' API)
                          count_transitions, evaluate_histories, unpack_changes)
from core.records import ProfileEvent
from core.timeutil import MAX_TIME
from transforms._beam_workarounds import cheaper_state_cache_sizing
from transforms._worker_processes import OrderedBatches, acquire_workers, release_workers
from transforms.live import timer_at
from transforms.read import TS_INDEX, events_from_wire, to_wire

_LOGGER = logging.getLogger(__name__)

CHANGES, EXPORT = "changes", "export"


class _EngineMetrics:
    """Turns engine stats and changes into Beam counters."""

    def __init__(self, engine):
        self._applied = Metrics.counter("audiences", "events_applied")
        self._duplicates = Metrics.counter("audiences", "duplicates")
        self._late = Metrics.counter("audiences", "late")
        self._enters, self._exits = [], []
        for a in engine.audiences.audiences:
            self._enters.append(Metrics.counter("audience:" + a.slug, "enters"))
            self._exits.append(Metrics.counter("audience:" + a.slug, "exits"))

    def record_totals(self, totals):
        """A ``core.history.BatchTotals``."""
        for counter, count in ((self._applied, totals.events), (self._duplicates, totals.duplicates),
                               (self._late, totals.late)):
            if count:
                counter.inc(count)
        for counters, counts in ((self._enters, totals.enters), (self._exits, totals.exits)):
            for counter, count in zip(counters, counts):
                if count:
                    counter.inc(count)

    def record(self, stats, changes):
        enters, exits = [0] * len(self._enters), [0] * len(self._exits)
        count_transitions(changes, enters, exits)
        self.record_totals(BatchTotals(stats.events, stats.duplicates, stats.late, enters, exits))


def changes_from_wire(rows):
    return [UserChange._make(r) for r in unpack_changes(rows)]


def export_rows_from_wire(rows):
    """Export rows from their wire form: a list of ``(event tuple, attributes)``, or that list
    packed (``core.blocks.pack_rows``, as the batch evaluation emits it)."""
    return [ExportRow(ProfileEvent._make(event), attributes) for event, attributes in unpack_rows(rows)]


def _emit(key, changes, rows):
    if changes:
        yield key, to_wire(changes)
    if rows:
        yield beam.pvalue.TaggedOutput(EXPORT, [(tuple(r.event), r.attributes) for r in rows])


def _emit_histories(metrics, reply, places):
    """Emits a ``core.history.evaluate_histories`` reply: each user's changes and export rows with
    its place's ``(key, timestamp, window)``; counts the batch's totals."""
    results, totals = reply
    metrics.record_totals(totals)
    for (changes, rows), (key, timestamp, window) in zip(results, places):
        if changes:
            yield WindowedValue((key, changes), timestamp, [window])
        if rows is not None:
            yield beam.pvalue.TaggedOutput(EXPORT, WindowedValue(rows, timestamp, [window]))


class _EvaluatesHistories(beam.DoFn):
    """What the two evaluating DoFns share: the engine and its metrics, and, with
    ``_worker_processes``, batches of ``BATCH`` users' whole histories sent to the workers
    (``core.history.evaluate_histories``) during a bundle, all of them emitted by its end."""

    BATCH = 64

    def setup(self):
        self._engine = self._spec.build()
        self._metrics = _EngineMetrics(self._engine)
        self._workers = acquire_workers(self._worker_processes) if self._worker_processes else None

    def teardown(self):
        if getattr(self, "_workers", None) is not None:
            release_workers(self._workers)
            self._workers = None

    def start_bundle(self):
        self._batches = None if self._workers is None else OrderedBatches(
            self._workers, "evaluate_histories", self.BATCH, self._spec)

    def finish_bundle(self):
        if self._batches is not None:
            for batch in self._batches.finish():
                yield from _emit_histories(self._metrics, *batch)


class _GroupPerBundle(beam.DoFn):
    """Buffers single ``(key, event tuple)`` elements per bundle; emits ``(key, [tuples])`` groups."""

    def start_bundle(self):
        self._groups = {}

    def process(self, element, window=beam.DoFn.WindowParam):
        key, event = element
        self._groups.setdefault((key, window), []).append(event)

    def finish_bundle(self):
        for (key, window), events in self._groups.items():
            ts = Timestamp(micros=min(e[TS_INDEX] for e in events))
            yield WindowedValue((key, events), ts, [window])
        self._groups = {}


class GroupUserEventsPerBundle(beam.PTransform):
    """``(key, event)`` elements to ``(key, [events])`` per bundle (for unbounded sources)."""

    def expand(self, pcoll):
        return pcoll | "GroupPerBundle" >> beam.ParDo(_GroupPerBundle())


class _EvaluateStatefulFn(_EvaluatesHistories):
    """Keeps one user's engine state and pending events; see the module docstring.

    State: ``USER`` holds the engine state and the pending flush time; ``PENDING`` is a bag of the
    groups of events waiting for the watermark. A bag is appended to without being read, so an
    element costs the same however many events already wait (a value holding the list would be
    read and rewritten whole by every group: quadratic in the groups per user).
    """

    USER_STATE = ReadModifyWriteStateSpec("user", BytesCoder())
    PENDING = BagStateSpec("pending", BytesCoder())
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)

    def __init__(self, spec, complete_when_timers_fire=False, worker_processes=0):
        self._spec = spec
        self._complete_when_timers_fire = complete_when_timers_fire
        self._worker_processes = worker_processes if complete_when_timers_fire else 0

    def setup(self):
        cheaper_state_cache_sizing()
        super().setup()

    # USER layout: (engine state bytes, flush time or None).
    def _load(self, state):
        raw = state.read()
        if raw is None:
            return self._engine.new_state(), None
        user_bytes, flush_at = pickle.loads(raw)
        return self._engine.load_state(user_bytes), flush_at

    def _save(self, state, wake, user, flush_at):
        state.write(pickle.dumps((self._engine.dump_state(user), flush_at), protocol=5))
        next_wake = self._engine.next_wake(user)
        candidates = [t for t in (flush_at, next_wake) if t is not None]
        if candidates:
            wake.set(timer_at(min(candidates)))
        else:
            wake.clear()

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(USER_STATE), pending=beam.DoFn.StateParam(PENDING),
                wake=beam.DoFn.TimerParam(WAKE)):
        key, group = element
        if self._complete_when_timers_fire:
            # Batch execution: no timer fires before all input is read, so no event can be late
            # yet and the user's state holds nothing to look at: the group only waits for the
            # user's one wake-up (any time will do; it runs as if at the end of time). Reading
            # the state and the rows here cost 10% of a batch run. Should a group come after the
            # wake-up after all, that wake-up set the clock to the end of time and the next one
            # applies the group as late: counted, nothing lost.
            pending.add(group if isinstance(group, bytes) else pack_rows(group))
            wake.set(timer_at(timestamp.micros))
            return
        rows = unpack_rows(group)
        user, flush_at = self._load(state)
        clock = user.clock
        changed = False
        late = [r for r in rows if r[TS_INDEX] <= clock]
        if late:
            stats = Stats()
            changes, export = self._engine.advance(user, events_from_wire(late), clock, stats)
            self._metrics.record(stats, changes)
            yield from _emit(key, changes, export)
            changed = True
            rows = [r for r in rows if r[TS_INDEX] > clock]
        if rows:
            # Fresh events wait as rows: nothing is built from them until their wake-up.
            pending.add(group if not late and isinstance(group, bytes) else pack_rows(rows))
            if flush_at is None:
                # Wake when the watermark passes the newest event of this group: everything up to
                # then is complete, and one wake-up covers the whole group.
                flush_at = max(r[TS_INDEX] for r in rows)
                changed = True
        if changed:  # otherwise the stored state and the timer already say the same
            self._save(state, wake, user, flush_at)

    @on_timer(WAKE)
    def wake_up(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(USER_STATE), pending=beam.DoFn.StateParam(PENDING),
                wake=beam.DoFn.TimerParam(WAKE), window=beam.DoFn.WindowParam):
        if self._complete_when_timers_fire:
            yield from self._wake_up_at_the_end(key, pending, fired, window)
            return
        now = fired.micros
        user, _ = self._load(state)
        waiting = [r for packed in pending.read() for r in unpack_rows(packed)]
        due = [r for r in waiting if r[TS_INDEX] <= now]
        rest = [r for r in waiting if r[TS_INDEX] > now]
        if waiting:
            pending.clear()
        if rest:
            pending.add(pack_rows(rest))
        stats = Stats()
        changes, export = self._engine.advance(user, events_from_wire(due), now, stats)
        self._metrics.record(stats, changes)
        yield from _emit(key, changes, export)
        self._save(state, wake, user, max(r[TS_INDEX] for r in rest) if rest else None)

    def _wake_up_at_the_end(self, key, pending, fired, window):
        """Batch execution: the watermark jumps from -inf to +inf once all input is read, so the
        first timer of a user proves that all its events are here, and one wake-up does it all.

        With worker processes, the user's groups go to a worker in a batch of users
        (``core.history.evaluate_histories``, as in the replay) and its results are emitted when
        the batch is back, by the end of the bundle at the latest, stamped as this callback's
        output would be. The bag keeps the groups, marked as evaluated (``_EVALUATED``): the
        state they lead to can be rebuilt from them, should a group still come.

        Without, the user is evaluated here and its state then lives in the bag (one
        ``_STATE_ENTRY``), not in ``USER``: the bag is read anyway, and a ``USER`` read that
        misses the cache was a twentieth of a batch run.

        Either way, a group that still came after this wake-up is late at the next one (the clock
        is at the end of time): counted and applied, nothing lost. No timer is set: nothing falls
        due after the end of time.
        """
        entries = list(pending.read())
        if self._batches is not None and not any(e[:1] in _EVALUATION_MARKS for e in entries):
            pending.add(_EVALUATED)
            for batch in self._batches.add((key, entries), (key, fired, window)):
                yield from _emit_histories(self._metrics, *batch)
            return
        user, rows = None, []
        for packed in entries:
            if packed[:1] == _STATE_ENTRY:
                user = self._engine.load_state(packed[1:])
            elif packed == _EVALUATED:
                # What a worker evaluated: the same engine call again, its changes already out.
                user = self._engine.new_state()
                self._engine.advance(user, events_from_wire(rows), MAX_TIME, Stats())
                rows = []
            else:
                rows.extend(unpack_rows(packed))
        if user is None:
            user = self._engine.new_state()
        pending.clear()
        stats = Stats()
        changes, export = self._engine.advance(user, events_from_wire(rows), MAX_TIME, stats)
        self._metrics.record(stats, changes)
        yield from _emit(key, changes, export)
        pending.add(_STATE_ENTRY + self._engine.dump_state(user))


#: Marks the user's engine state in the PENDING bag in batch execution (packed groups start with
#: another byte: see ``core.blocks.pack_rows``).
_STATE_ENTRY = b"s"
#: Marks, in the PENDING bag, that a worker evaluated the groups before it (batch execution).
_EVALUATED = b"e"
_EVALUATION_MARKS = (_STATE_ENTRY, _EVALUATED)


class EvaluateAudiencesStateful(beam.PTransform):
    """Streaming evaluation: ``(key, [events])`` groups in, changes and export rows out.

    ``worker_processes``: in batch execution, worker processes that evaluate users at their
    wake-up (0: in the DoFn); a streaming run evaluates in the DoFn.
    """

    def __init__(self, spec, worker_processes=0, label=None):
        super().__init__(label)
        self._spec = spec
        self._worker_processes = worker_processes

    def expand(self, groups):
        options = groups.pipeline.options
        batch = options is not None and not options.view_as(StandardOptions).streaming \
            and groups.is_bounded
        return (groups
                | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "EvaluatePerUser" >> beam.ParDo(_EvaluateStatefulFn(
                    self._spec, batch, self._worker_processes))
                .with_input_types(typing.Tuple[typing.Tuple[str, str], typing.Any])
                .with_outputs(EXPORT, main=CHANGES))


class _EvaluateHistoryFn(_EvaluatesHistories):
    """``(user, groups)`` after the GroupByKey to the user's changes and export rows
    (``core.history.evaluate_histories``).

    With worker processes, a bundle's users go to the workers in batches of ``BATCH`` while the
    pipeline goes on grouping; each batch's results are emitted in order, with their elements'
    timestamps and windows, once it is back, and all of them by the end of the bundle. Without,
    each user is evaluated here. Either way the results are the same.
    """

    def __init__(self, spec, worker_processes=0):
        self._spec = spec
        self._worker_processes = worker_processes

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        key, groups = element
        if self._batches is None:
            yield from _emit_histories(
                self._metrics, evaluate_histories(self._spec, [(key, groups)], self._engine),
                [(key, timestamp, window)])
            return
        for batch in self._batches.add((key, list(groups)), (key, timestamp, window)):
            yield from _emit_histories(self._metrics, *batch)


class EvaluateAudiencesBatch(beam.PTransform):
    """Batch evaluation: all of a user's events at once, the same engine, no per-element state.

    ``worker_processes``: worker processes that evaluate batches of users (0: in the DoFn).
    """

    def __init__(self, spec, worker_processes=0, label=None):
        super().__init__(label)
        self._spec = spec
        self._worker_processes = worker_processes

    def expand(self, groups):
        return (groups
                | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "GroupByUser" >> beam.GroupByKey()
                | "EvaluateHistory" >> beam.ParDo(
                    _EvaluateHistoryFn(self._spec, self._worker_processes)).with_outputs(
                    EXPORT, main=CHANGES))
