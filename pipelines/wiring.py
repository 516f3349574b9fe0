"""The graph ``pipelines.stream`` and ``pipelines.replay`` share: read, evaluate, deliver.

The two commands differ in one step only, how audiences are evaluated (a stateful DoFn with
event-time timers, or a GroupByKey and one engine call per user); everything before and after it is
built here by :func:`build_graph`, so both produce the same messages, files and alerts. Each work is
wired by its workflow's Beam side (``pipelines/workflows.py``); the launch (options, preflight,
runner, exit status) is ``pipelines/launch.py``, the summary ``pipelines/summary.py``.

On an unbounded input (``--input eventhubs://...&mode=live --streaming``, or a TestStream) the
output graph has no GroupByKey: local sinks write parts, the system-event dedupe, the daily
activity and the Blob export keep state and write as the watermark moves, and there is no
``completed`` event (docs/LIVE.md, docs/SEMANTICS.md, ``transforms/live.py``).
"""
import logging
from typing import Any, Dict, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import DoOutputsTuple
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.core.config import JobConfig
from cdp_activation.core.history import unpack_changes
from cdp_activation.core.records import SystemEvent, dedupe_batch, dedupe_first_copies
from cdp_activation.core.system_events import work_event
from cdp_activation.core.timeutil import format_time
from pipelines.workflows import ALERTS, BEAM_WORKFLOWS, DELIVERY, WorkInputs
from cdp_activation.transforms import outputs
from cdp_activation.transforms.audiences import GroupUserEventsPerBundle
from cdp_activation.transforms.identity import DEADLETTER_PATH, StitchAndEvaluate
from cdp_activation.transforms.live import DedupeSystemEventsLive, Values, is_unbounded
from cdp_activation.transforms.live_sources import LiveSource
from cdp_activation.transforms.localsink import DEFAULT_FLUSH_SECONDS, WriteJsonLinesFile
from cdp_activation.transforms.read import DEADLETTER, LATEST, PROFILE, SYSTEM, ParseLines, ReadRecords
from cdp_activation.transforms.state import (SYSTEM_MEMORY, USERS as STATE_USERS, ReadStateSnapshot,
                              WriteStateSnapshot)

_LOGGER = logging.getLogger(__name__)


# -- system events -------------------------------------------------------------------------------

def _keep_first_copies(element):
    return dedupe_batch(element[1], key=lambda e: e.id)


class _Remembered(tuple):
    """A system-event id's dedupe memory from a ``--state`` snapshot: ``(received_at,)``, the
    first received_at of its last run of copies."""


def _keep_first_copies_remembering(element):
    """The applied copies of one id given what a snapshot remembers of it (a remembered run is
    an earlier copy that is not emitted again); the id's latest run start goes to ``memory``."""
    event_id, values = element
    remembered = [v[0] for v in values if isinstance(v, _Remembered)]
    copies = sorted((v for v in values if not isinstance(v, _Remembered)),
                    key=lambda e: (e.received_at, e.ts))
    items = [(r, None) for r in sorted(remembered)] + [(c.received_at, c) for c in copies]
    kept = [items[i] for i in dedupe_first_copies([received for received, _ in items])]
    for _, copy in kept:
        if copy is not None:
            yield copy
    yield beam.pvalue.TaggedOutput(MEMORY, (event_id, max(received for received, _ in kept)))


MEMORY = "memory"
#: ``(system event id, event or remembered run)``: ids are strings or integers.
_BY_ID = Tuple[Any, Any]


def _by_id(event):
    return event.id, event


class DedupeSystemEvents(beam.PTransform):
    """The 24-hour dedupe of system events by id (the earliest received copy of a run wins).

    ``memory``: with ``--state``, the ``(id, received_at)`` a snapshot remembers: copies within
    24 hours of a remembered run are duplicates too, and the ids' latest run starts come out on
    :data:`MEMORY` (the output is then a tuple with ``main`` and ``memory``).
    On an unbounded input the first copy to arrive wins (:class:`DedupeSystemEventsLive`).
    """

    def __init__(self, memory: Optional[beam.PCollection[Tuple[Any, int]]] = None,
                 label: Optional[str] = None) -> None:
        super().__init__(label)
        self._memory = memory

    @no_annotations
    def expand(self, system_events: beam.PCollection[SystemEvent]
               ) -> Union[beam.PCollection[SystemEvent], DoOutputsTuple]:
        if is_unbounded(system_events):
            return system_events | "FirstCopies" >> DedupeSystemEventsLive()
        keyed = system_events | "KeyById" >> beam.Map(_by_id).with_output_types(_BY_ID)
        if self._memory is None:
            return (keyed
                    | "GroupById" >> beam.GroupByKey()
                    | "KeepFirstCopies" >> beam.FlatMap(_keep_first_copies))
        # Typed as KeyById: a Flatten's inputs share its output's coder (see transforms.live.Values).
        remembered = self._memory | "Remembered" >> beam.MapTuple(
            lambda event_id, received: (event_id, _Remembered((received,)))).with_output_types(
            _BY_ID)
        return ((keyed, remembered)
                | "WithMemory" >> beam.Flatten()
                | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "GroupById" >> beam.GroupByKey()
                | "KeepFirstCopies" >> beam.FlatMap(_keep_first_copies_remembering).with_outputs(
                    MEMORY, main="main"))



# -- the daily activity (the report's chart) -----------------------------------------------------

class _DailyActivity(beam.DoFn):
    """Enters and exits per audience and UTC day (for the report), from every user's changes.

    Counted per bundle and emitted in ``finish_bundle``: one element per (day, audience, kind)
    and bundle instead of one per user and key (about 70k elements for 150k events, each costing
    more in the SDK than the counting). The bundle's elements share one window; the emitted
    timestamp is the earliest of theirs, so a live run's part timers see nothing late.
    """

    def __init__(self, slugs):
        self._slugs = slugs

    def start_bundle(self):
        self._per_window = {}  # window: [earliest timestamp, {(day number, audience, kind): count}]

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        entry = self._per_window.get(window)
        if entry is None:
            entry = self._per_window[window] = [timestamp, {}]
        elif timestamp < entry[0]:
            entry[0] = timestamp
        counts = entry[1]
        # The wire tuples as they come (UserChange field order; a MergeExit ends with its
        # merged_into): this runs once per change, and day numbers become dates once per bundle,
        # in finish_bundle.
        for at, changes, _, _, _, backfill, *_ in unpack_changes(element[1]):
            if backfill:
                continue
            day = at // _DAY_MICROS
            for audience_index, kind, _ in changes:
                key = (day, audience_index, kind)
                counts[key] = counts.get(key, 0) + 1

    def finish_bundle(self):
        slugs = self._slugs
        for window, (earliest, counts) in self._per_window.items():
            for (day, audience_index, kind), count in counts.items():
                # The date part of the time: years past 9999 have more than four digits.
                key = (format_time(day * _DAY_MICROS).split("T", 1)[0], slugs[audience_index], kind)
                yield WindowedValue((key, count), earliest, [window])
        self._per_window = {}


_DAY_MICROS = 86_400_000_000


def _daily_record(kv):
    (day, audience, kind), count = kv
    return {"day": day, "audience": audience, "event": kind, "count": count}


def _daily_sort_key(record):
    return record["day"], record["audience"], record["event"]


def _sum_daily_records(records):
    """One part of the live daily activity: counts summed per (day, audience, event)."""
    totals = {}
    for r in records:
        key = _daily_sort_key(r)
        totals[key] = totals.get(key, 0) + r["count"]
    return [_daily_record(item) for item in totals.items()]


# -- the graph -----------------------------------------------------------------------------------

def option_value(options: PipelineOptions, name: str, default: Any) -> Any:
    """An optional tuning flag: its value when the options define it and it is set, else
    ``default`` (the flags of the unbounded path are not declared by every options class)."""
    value = getattr(options, name, None)
    return default if value is None else value


class RunState:
    """What a bounded run's launcher decided about its as-of time and ``--state`` snapshot.

    ``as_of``: the as-of time when the options give it (``--as_of``, ``--end``), else None (the
    latest ``received_at`` read, computed by the pipeline). ``uri``: the ``--state`` snapshot
    (None: no state is kept); ``temporary``: where this run writes the next one;
    ``snapshot_as_of``: the loaded snapshot's as-of (the run's as-of if it reads no record).
    """

    def __init__(self, as_of: Optional[int] = None, uri: Optional[str] = None,
                 temporary: Optional[str] = None, snapshot_as_of: Optional[int] = None) -> None:
        self.as_of, self.uri, self.temporary = as_of, uri, temporary
        self.snapshot_as_of = snapshot_as_of


class _Latest:
    """The latest of the values, else ``fallback`` (a picklable CombineGlobally function)."""

    def __init__(self, fallback):
        self._fallback = fallback

    def __call__(self, values):
        return max(values, default=self._fallback)


def build_graph(p: beam.Pipeline, job: JobConfig, evaluate: beam.PTransform, options: PipelineOptions,
                run_id: str, disabled: Dict[str, str], time_range: Optional[Tuple] = None,
                live_source: Optional[LiveSource] = None,
                run_state: Optional[RunState] = None) -> None:
    """Reads, evaluates with ``evaluate`` (a PTransform), and wires every work's output: each
    work by its workflow's Beam side (``pipelines.workflows.BEAM_WORKFLOWS``), the deliveries
    first, then the alerts, which read the deliveries' own events too.

    ``options``: the :class:`pipelines.options.ActivationOptions` view; ``disabled``: ``{work id:
    reason}`` of the works their preflight disabled (``pipelines.workflows.preflight``).

    ``run_state``: a :class:`RunState` (bounded runs): the as-of time and the ``--state``
    snapshot to read and write. A bounded run without one evaluates up to the latest
    ``received_at`` it reads.

    The output graph takes the unbounded form (see the module docstring) when the parsed input
    is unbounded; a bounded input, from files or an Event Hubs catch-up, builds what it always did.
    """
    output_dir = options.output_dir
    streaming = p.options.view_as(StandardOptions).streaming
    flush_seconds = float(option_value(options, "flush_seconds", DEFAULT_FLUSH_SECONDS))
    from cdp_activation.transforms.blob import DEFAULT_GRACE_SECONDS
    grace_seconds = float(option_value(options, "blob_grace_seconds", DEFAULT_GRACE_SECONDS))
    if live_source is None:
        records = p | "ReadRecords" >> ReadRecords(
            options.input, time_range, options.progress_seconds, max_ts_skew=job.max_ts_skew)
        profile = records[PROFILE]
    else:
        elements = p | "ReadLive" >> live_source.transform
        records = (elements
                   | "AsInputRecords" >> beam.Map(live_source.to_input_record)
                   | "ParseRecords" >> ParseLines(live_source.kind,
                                                  track_latest=live_source.bounded,
                                                  max_ts_skew=job.max_ts_skew))
        profile = records[PROFILE] | "GroupPerBundle" >> GroupUserEventsPerBundle()
    unbounded = is_unbounded(records[PROFILE])
    if unbounded:
        _LOGGER.info("unbounded input: local sinks write parts every %.3g s of event time, Blob "
                     "windows close %.3g s after their end", flush_seconds, grace_seconds)
    terminals = []
    terminals.append(records[DEADLETTER]
         | "WriteInputDeadLetters" >> WriteJsonLinesFile(
             outputs.join(output_dir, "deadletter", "input.jsonl"),
             sort_key=lambda r: (r["source"].rsplit(":", 1)[0],
                                 int(r["source"].rsplit(":", 1)[1]) if ":" in r["source"] else 0),
             flush_seconds=flush_seconds, write_empty=False))
    run_state = run_state or RunState()
    snapshot, as_of = None, run_state.as_of
    if not unbounded:
        if as_of is None:
            # The latest received_at read (the snapshot's as-of if no record is read).
            fallback = run_state.snapshot_as_of
            as_of = (records[LATEST]
                     | "LatestReceived" >> beam.CombineGlobally(_Latest(fallback)))
            evaluate.as_of = as_of
            as_of | "RecordAsOf" >> beam.Map(_record_as_of)
        if run_state.uri is not None:
            snapshot = p | "ReadState" >> ReadStateSnapshot(run_state.uri)
            profile = (profile, snapshot[STATE_USERS]) | "WithSavedStates" >> beam.Flatten()
    if snapshot is None:
        system_events = records[SYSTEM] | "DedupeSystemEvents" >> DedupeSystemEvents()
    else:
        deduped = records[SYSTEM] | "DedupeSystemEvents" >> DedupeSystemEvents(
            snapshot[SYSTEM_MEMORY])
        system_events = deduped.main
    evaluated = profile | "EvaluateAudiences" >> evaluate
    if snapshot is not None:
        terminals.append((evaluated.state, deduped[MEMORY])
                         | "WriteState" >> WriteStateSnapshot(run_state.temporary, job.account_name,
                                                              as_of))
    changes, export_rows = evaluated.changes, evaluated.export
    if isinstance(evaluate, StitchAndEvaluate):  # its conflicting claims
        terminals.append(evaluated.deadletter
             | "WriteIdentityDeadLetters" >> WriteJsonLinesFile(
                 outputs.join(output_dir, *DEADLETTER_PATH), sort_key=lambda r: r["raw"],
                 flush_seconds=flush_seconds, write_empty=False))
    daily = (changes
             | "DailyActivity" >> beam.ParDo(_DailyActivity(
                 [a.slug for a in job.audiences.audiences])))
    daily_path = outputs.join(output_dir, "audiences_daily.jsonl")
    if not unbounded:
        terminals.append(daily
             | "SumPerDay" >> beam.CombinePerKey(sum)
             | "DailyRecords" >> beam.Map(_daily_record)
             | "WriteDailyActivity" >> WriteJsonLinesFile(daily_path, sort_key=_daily_sort_key))
    else:
        # Per-part deltas: each part sums what arrived since the previous one; the totals are
        # the sums over all parts (a running total would need a state read per key and change).
        terminals.append(daily
             | "DailyRecords" >> beam.Map(_daily_record)
             | "WriteDailyActivity" >> WriteJsonLinesFile(
                 daily_path, sort_key=_daily_sort_key, flush_seconds=flush_seconds,
                 merge=_sum_daily_records))

    own_events = [p | "WorksStarted" >> Values(
        [work_event(job.aid, w.id, "started", unit=run_id + "#started")
         for w in job.works if not w.paused])]
    inputs = WorkInputs(p, job, output_dir, disabled, streaming, flush_seconds, grace_seconds,
                        changes, export_rows, system_events)
    for work in job.works:
        workflow = BEAM_WORKFLOWS[work.workflow]
        if workflow.stage != DELIVERY or (work.paused and not workflow.wires_paused):
            continue
        events = workflow.wire(inputs, work)
        own_events.append(events)
        if unbounded:
            continue  # `completed` is the end of a bounded run (CONTRACT 5.4); a live run has none
        own_events.append(
            events
            | "Work[%s]CountUnits" % work.id >> beam.combiners.Count.Globally()
            | "Work[%s]Completed" % work.id >> beam.Map(
                # aid and the work id are bound here: a closure over ``job`` would pickle the
                # whole config, credentials included, into the staged pipeline.
                lambda n, wid=work.id, aid=job.aid: work_event(
                    aid, wid, "completed", "%d events reported" % n, unit=run_id + "#completed")))
    own = own_events | "AllWorkEvents" >> beam.Flatten()
    inputs.alert_input = (system_events, own) | "AlertInput" >> beam.Flatten()
    alert_outputs = []
    for work in job.works:
        workflow = BEAM_WORKFLOWS[work.workflow]
        if workflow.stage != ALERTS or (work.paused and not workflow.wires_paused):
            continue
        result = workflow.wire(inputs, work)
        if isinstance(result, beam.PCollection):
            alert_outputs.append(result)
        elif isinstance(result, dict):
            terminals.extend(v for v in result.values() if isinstance(v, beam.PCollection))
    log = [own] + [r for r in alert_outputs]
    terminals.append((log | "AllOwnEvents" >> beam.Flatten())
         | "OwnEventRecords" >> beam.Map(lambda e: e.record if isinstance(e, SystemEvent) else e)
         | "WriteSystemEventLog" >> WriteJsonLinesFile(
             outputs.join(output_dir, "system_events.jsonl"),
             sort_key=lambda r: (r.get("ts", ""), r.get("id", "")), flush_seconds=flush_seconds))
    if live_source is not None and live_source.eventhubs is not None:
        # Checkpoints move only once everything downstream is complete: at least once, never a skip.
        live_source.eventhubs.commit_checkpoints(elements, after=terminals + own_events)


def _record_as_of(as_of):
    if as_of is not None:
        Metrics.distribution("run", "as_of").update(as_of)
