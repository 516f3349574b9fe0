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
    read, and each user is evaluated once, at its one wake-up, keeping the user's state in the bag
    it reads anyway.
    Timers fire once per user and flush (the latest event time of the group) and once per expiry
    that actually crosses a threshold; they are set with ``transforms.live.timer_at`` (rounded up
    to the millisecond, the runners' unit).

``EvaluateAudiencesBatch`` (``pipelines.replay``)
    ``GroupByKey`` by user, then the engine over each user's whole history in one call
    (``core.history``).

Both emit ``((key_field, key), [UserChange, ...])`` on the main output and ``[ExportRow, ...]`` on
``export``: one element per user and evaluation, not per change, because per-element overhead is
what a Python pipeline pays most for. A bounded run evaluates up to its as-of time (docs/STATE.md);
with ``--state`` a user's saved state comes in as one of its groups (``core.history.RESTORED``) and
its final state goes out on ``state`` as ``(user, (state bytes, packed waiting events or None))``.
Metrics: ``audiences:events_applied``, ``audiences:duplicates``, ``audiences:late``,
``audiences:pending_wakeups``, ``audiences:pending_events``, and
``audience:<slug>`` ``enters`` / ``exits``.
"""
import logging
import marshal
import pickle
import typing

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.metrics import Metrics
from apache_beam.pvalue import DoOutputsTuple
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.typehints.decorators import no_annotations
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                               on_timer)
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.core.blocks import pack_rows, unpack_rows
from cdp_activation.core.engine import ExportRow, Stats, UserChange
from cdp_activation.core.history import (RESTORED, BatchTotals,  # noqa: F401 (EngineSpec: the shells' API)
                          EngineSpec, advance_user, count_transitions, evaluate_histories,
                          unpack_changes)
from cdp_activation.core.records import ProfileEvent
from cdp_activation.transforms.live import timer_at
from cdp_activation.transforms.read import TS_INDEX, events_from_wire, to_wire

_LOGGER = logging.getLogger(__name__)

CHANGES, EXPORT, STATE = "changes", "export", "state"
#: Marks, in the PENDING bag, the as-of time of a bounded run whose as-of comes from the data
#: (batch execution): the tag, then the time marshalled.
_AS_OF = b"a"


class _EngineMetrics:
    """Turns engine stats and changes into Beam counters."""

    def __init__(self, engine):
        self._applied = Metrics.counter("audiences", "events_applied")
        self._duplicates = Metrics.counter("audiences", "duplicates")
        self._late = Metrics.counter("audiences", "late")
        self._pending_wakeups = Metrics.counter("audiences", "pending_wakeups")
        self._pending_events = Metrics.counter("audiences", "pending_events")
        self._enters, self._exits = [], []
        for a in engine.audiences.audiences:
            self._enters.append(Metrics.counter("audience:" + a.slug, "enters"))
            self._exits.append(Metrics.counter("audience:" + a.slug, "exits"))

    def record_totals(self, totals):
        """A ``core.history.BatchTotals``."""
        for counter, count in ((self._applied, totals.events), (self._duplicates, totals.duplicates),
                               (self._late, totals.late),
                               (self._pending_wakeups, totals.pending_wakeups),
                               (self._pending_events, totals.pending_events)):
            if count:
                counter.inc(count)
        for counters, counts in ((self._enters, totals.enters), (self._exits, totals.exits)):
            for counter, count in zip(counters, counts):
                if count:
                    counter.inc(count)

    def record_pending(self, wakeups, events):
        if wakeups:
            self._pending_wakeups.inc(wakeups)
        if events:
            self._pending_events.inc(events)

    def record(self, stats, changes):
        enters, exits = [0] * len(self._enters), [0] * len(self._exits)
        count_transitions(changes, enters, exits)
        self.record_totals(BatchTotals(stats.events, stats.duplicates, stats.late, enters, exits))


#: The engine's Beam counters, for other evaluating transforms (``transforms.identity``).
EngineMetrics = _EngineMetrics


def changes_from_wire(rows: typing.Union[bytes, typing.Sequence[tuple]]) -> typing.List[UserChange]:
    return [UserChange._make(r) for r in unpack_changes(rows)]


def export_rows_from_wire(rows: typing.Union[bytes, typing.List[typing.Any]]) -> typing.List[ExportRow]:
    """Export rows from their wire form: a list of ``(event tuple, attributes)``, or that list
    packed (``core.blocks.pack_rows``, as the batch evaluation emits it)."""
    return [ExportRow(ProfileEvent._make(event), attributes) for event, attributes in unpack_rows(rows)]


def _emit(key, changes, rows):
    if changes:
        yield key, to_wire(changes)
    if rows:
        yield beam.pvalue.TaggedOutput(EXPORT, [(tuple(r.event), r.attributes) for r in rows])


#: Emits one evaluation's changes and export rows (for ``transforms.identity_stream``).
emit_evaluation = _emit


def _emit_histories(metrics, reply, places):
    """Emits a ``core.history.evaluate_histories`` reply: each user's changes and export rows with
    its place's ``(key, timestamp, window)``; counts the batch's totals."""
    results, totals = reply
    metrics.record_totals(totals)
    for (changes, rows, saved), (key, timestamp, window) in zip(results, places):
        if changes:
            yield WindowedValue((key, changes), timestamp, [window])
        if rows is not None:
            yield beam.pvalue.TaggedOutput(EXPORT, WindowedValue(rows, timestamp, [window]))
        if saved is not None:
            yield beam.pvalue.TaggedOutput(STATE, WindowedValue((key, saved), timestamp, [window]))


class _EvaluatesHistories(beam.DoFn):
    """What the two evaluating DoFns share: the engine and its metrics.

    ``spec.as_of`` bounds the evaluation when the run's as-of is known when the pipeline is built
    (``--as_of``, ``--end``); otherwise a bounded run passes it as a side input (the latest
    ``received_at`` read) and :meth:`_spec_for` gives the spec bounded by it.
    """

    def setup(self):
        self._engine = self._spec.build()
        self._metrics = _EngineMetrics(self._engine)

    def start_bundle(self):
        self._run_spec = self._spec

    def _spec_for(self, as_of):
        """The spec bounded by ``as_of`` (a side input's value; None: ``spec.as_of``)."""
        if as_of is not None and as_of != self._run_spec.as_of:
            self._run_spec = self._spec.for_run(as_of)
        return self._run_spec


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

    @no_annotations
    def expand(self, pcoll: beam.PCollection[typing.Tuple[typing.Any, tuple]]
               ) -> beam.PCollection[typing.Tuple[typing.Any, typing.List[tuple]]]:
        return pcoll | "GroupPerBundle" >> beam.ParDo(_GroupPerBundle())


class _EvaluateStatefulFn(_EvaluatesHistories):
    """Keeps one user's engine state and pending events; see the module docstring.

    State: ``USER`` holds the engine state, the pending flush time, the run's as-of time and
    whether the user's evaluation reached it; ``PENDING`` is a bag of the groups of events waiting
    for the watermark. A bag is appended to without being read, so an element costs the same
    however many events already wait (a value holding the list would be read and rewritten whole
    by every group: quadratic in the groups per user).

    A bounded run evaluates up to its as-of time (docs/STATE.md): a wake-up after it is not taken.
    In batch execution the user's one wake-up evaluates up to it; events dated after it wait (in
    the saved state with ``spec.keep_state``). With timers firing as the watermark moves
    (``--streaming`` on a bounded input) the timer that would fire after the as-of time fires just
    after it instead, once: the user is evaluated up to it, what remains is counted as pending,
    and no timer is set again.
    """

    USER_STATE = ReadModifyWriteStateSpec("user", BytesCoder())
    PENDING = BagStateSpec("pending", BytesCoder())
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)

    def __init__(self, spec, complete_when_timers_fire=False):
        self._spec = spec
        self._complete_when_timers_fire = complete_when_timers_fire

    def start_bundle(self):
        super().start_bundle()
        self._marked = set()  # users whose bag got the as-of mark in this bundle

    # USER layout: (engine state bytes, flush time or None, as-of or None, reached the as-of).
    def _load(self, state):
        raw = state.read()
        if raw is None:
            return self._engine.new_state(), None, self._spec.as_of, False
        user_bytes, flush_at, as_of, done = pickle.loads(raw)
        return self._engine.load_state(user_bytes), flush_at, as_of, done

    def _save(self, state, wake, user, flush_at, as_of, done=False):
        state.write(pickle.dumps((self._engine.dump_state(user), flush_at, as_of, done),
                                 protocol=5))
        if done:
            wake.clear()
            return
        next_wake = self._engine.next_wake(user)
        candidates = [t for t in (flush_at, next_wake) if t is not None]
        if not candidates:
            wake.clear()
        elif as_of is not None and min(candidates) > as_of:
            wake.set(timer_at(as_of + 1))  # the last wake-up: just after the as-of time
        else:
            wake.set(timer_at(min(candidates)))

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(USER_STATE), pending=beam.DoFn.StateParam(PENDING),
                wake=beam.DoFn.TimerParam(WAKE)):
        return self._process(element, None, timestamp, state, pending, wake)

    def _process(self, element, as_of, timestamp, state, pending, wake):
        key, group = element
        if self._complete_when_timers_fire:
            # Batch execution: no timer fires before all input is read, so no event can be late
            # yet and the user's state holds nothing to look at: the group only waits for the
            # user's one wake-up (any time will do; it evaluates up to the as-of). Reading
            # the state and the rows here cost 10% of a batch run. Should a group come after the
            # wake-up after all, that wake-up set the clock to the as-of time and the next one
            # applies the group as late: counted, nothing lost. An as-of from the data (a side
            # input, not readable in the timer callback) goes into the bag once per user and
            # bundle.
            pending.add(group if isinstance(group, bytes) else pack_rows(group))
            if as_of is not None and key not in self._marked:
                self._marked.add(key)
                pending.add(_AS_OF + marshal.dumps(as_of))
            wake.set(timer_at(timestamp.micros))
            return
        if isinstance(group, bytes) and group[:1] == RESTORED:
            raise ValueError("a saved state reached a run whose timers fire as the watermark "
                             "moves; --state needs batch execution")
        rows = unpack_rows(group)
        user, flush_at, stored_as_of, done = self._load(state)
        as_of = as_of if as_of is not None else stored_as_of
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
            if done:
                # After the user's last wake-up: they wait for the next run.
                self._metrics.record_pending(0, len(rows))
            elif flush_at is None:
                # Wake when the watermark passes the newest event of this group: everything up to
                # then is complete, and one wake-up covers the whole group.
                flush_at = max(r[TS_INDEX] for r in rows)
                changed = True
        if changed or as_of != stored_as_of:
            self._save(state, wake, user, flush_at, as_of, done)

    @on_timer(WAKE)
    def wake_up(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(USER_STATE), pending=beam.DoFn.StateParam(PENDING),
                wake=beam.DoFn.TimerParam(WAKE)):
        if self._complete_when_timers_fire:
            yield from self._wake_up_at_the_end(key, pending)
            return
        now = fired.micros
        user, _, as_of, _ = self._load(state)
        last = as_of is not None and now > as_of
        if last:
            now = as_of
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
        if last:
            self._metrics.record_pending(int(self._engine.next_wake(user) is not None), len(rest))
        self._save(state, wake, user, max(r[TS_INDEX] for r in rest) if rest else None, as_of,
                   done=last)

    def _wake_up_at_the_end(self, key, pending):
        """Batch execution: the watermark jumps from -inf to +inf once all input is read, so the
        first timer of a user proves that all its events are here, and one wake-up does it all:
        from the user's saved state if a ``--state`` snapshot had one, up to the as-of time.

        The user's state then lives in the bag (one ``_STATE_ENTRY``, and the events dated after
        the as-of time), not in ``USER``: the bag is read anyway, and a ``USER`` read that misses
        the cache was a twentieth of a batch run.

        A group that still came after this wake-up is late at the next one (the clock is at the
        as-of time): counted and applied, nothing lost. No timer is set: the run's evaluation
        ends at its as-of time.
        """
        entries, as_of = [], None
        for entry in pending.read():
            if entry[:1] == _AS_OF:
                as_of = marshal.loads(entry[1:])
            else:
                entries.append(entry)
        spec = self._spec_for(as_of)
        user, groups = None, []
        for packed in entries:
            if packed[:1] == _STATE_ENTRY:
                user, groups = self._engine.load_state(packed[1:]), []
            else:
                groups.append(packed)
        pending.clear()
        stats, totals = Stats(), [0, 0]
        user, changes, export, waiting = advance_user(self._engine, groups, spec.as_of, stats,
                                                      totals, user)
        self._metrics.record(stats, changes)
        self._metrics.record_pending(*totals)
        yield from _emit(key, changes, export)
        user_bytes = self._engine.dump_state(user)
        pending.add(_STATE_ENTRY + user_bytes)
        if waiting:
            pending.add(pack_rows(waiting))
        if spec.keep_state:
            yield beam.pvalue.TaggedOutput(
                STATE, (key, (user_bytes, pack_rows(waiting) if waiting else None)))


class _EvaluateStatefulAsOfFn(_EvaluateStatefulFn):
    """:class:`_EvaluateStatefulFn` with the run's as-of time as a side input."""

    # ``as_of`` has a default only for Beam's type check, which binds the main input alone.
    def process(self, element, as_of=None, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(_EvaluateStatefulFn.USER_STATE),
                pending=beam.DoFn.StateParam(_EvaluateStatefulFn.PENDING),
                wake=beam.DoFn.TimerParam(_EvaluateStatefulFn.WAKE)):
        return self._process(element, as_of, timestamp, state, pending, wake)


#: The stream's per-user DoFn, which the stitching stages extend (``transforms.identity_stream``).
#: A public name beside the private one, not a rename: the class name is in the ParDo's step name
#: (``.../ParDo(_EvaluateStatefulFn)``), and a Dataflow ``--update`` matches saved state to steps
#: by name.
EvaluateStatefulFn = _EvaluateStatefulFn

#: Marks the user's engine state in the PENDING bag in batch execution (packed groups start with
#: another byte: see ``core.blocks.pack_rows``).
_STATE_ENTRY = b"s"


class EvaluatingTransform(beam.PTransform):
    """What every evaluating composite is built from: the engine's ``spec`` and ``as_of``, a
    singleton PCollection of the run's as-of time when it comes from the data (see
    ``pipelines.wiring.build_graph``), else None (``spec.as_of`` says it, or an unbounded run)."""

    def __init__(self, spec: EngineSpec, label: typing.Optional[str] = None,
                 as_of: typing.Optional[beam.PCollection[int]] = None) -> None:
        super().__init__(label)
        self._spec = spec
        self.as_of = as_of


class EvaluateAudiencesStateful(EvaluatingTransform):
    """Streaming evaluation: ``(key, [events])`` groups in, changes and export rows out (and, with
    ``spec.keep_state``, each user's saved state on ``state``).

    ``as_of``: a singleton PCollection of the run's as-of time when it comes from the data (see
    ``pipelines.wiring.build_graph``); None when ``spec.as_of`` says it or there is none (an unbounded run).
    """

    @no_annotations
    def expand(self, groups: beam.PCollection[typing.Tuple[typing.Tuple[str, str], typing.Any]]
               ) -> DoOutputsTuple:
        options = groups.pipeline.options
        batch = options is not None and not options.view_as(StandardOptions).streaming \
            and groups.is_bounded
        side = () if self.as_of is None else (beam.pvalue.AsSingleton(self.as_of),)
        fn = _EvaluateStatefulFn if self.as_of is None else _EvaluateStatefulAsOfFn
        return (groups
                | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "EvaluatePerUser" >> beam.ParDo(fn(self._spec, batch), *side)
                .with_input_types(typing.Tuple[typing.Tuple[str, str], typing.Any])
                .with_outputs(EXPORT, STATE, main=CHANGES))


class _EvaluateHistoryFn(_EvaluatesHistories):
    """``(user, groups)`` after the GroupByKey to the user's changes and export rows
    (``core.history.evaluate_histories``), and its saved state with ``spec.keep_state``.
    """

    def __init__(self, spec):
        self._spec = spec

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        return self._process(element, None, timestamp, window)

    def _process(self, element, as_of, timestamp, window):
        key, groups = element
        spec = self._spec_for(as_of)
        yield from _emit_histories(
            self._metrics, evaluate_histories(spec, [(key, groups)], self._engine),
            [(key, timestamp, window)])


class _EvaluateHistoryAsOfFn(_EvaluateHistoryFn):
    """:class:`_EvaluateHistoryFn` with the run's as-of time as a side input."""

    def process(self, element, as_of, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        return self._process(element, as_of, timestamp, window)


class EvaluateAudiencesBatch(EvaluatingTransform):
    """Batch evaluation: all of a user's events at once, the same engine, no per-element state.

    ``as_of``: as for :class:`EvaluateAudiencesStateful`.
    """

    @no_annotations
    def expand(self, groups: beam.PCollection[typing.Tuple[typing.Tuple[str, str], typing.Any]]
               ) -> DoOutputsTuple:
        side = () if self.as_of is None else (beam.pvalue.AsSingleton(self.as_of),)
        return (groups
                | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "GroupByUser" >> beam.GroupByKey()
                | "EvaluateHistory" >> beam.ParDo(
                    (_EvaluateHistoryFn if self.as_of is None else _EvaluateHistoryAsOfFn)(
                        self._spec), *side).with_outputs(
                    EXPORT, STATE, main=CHANGES))
