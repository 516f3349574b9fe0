"""What ``pipelines.stream`` and ``pipelines.replay`` share: set-up, the output graph, the summary.

The two commands differ in one step only, how audiences are evaluated (a stateful DoFn with
event-time timers, or a GroupByKey and one engine call per user); everything before and after it is
built here, so both produce the same messages, files and alerts.

On an unbounded input (``--input eventhubs://...&mode=live --streaming``, or a TestStream) the
output graph has no GroupByKey: local sinks write parts, the system-event dedupe, the daily
activity and the Blob export keep state and write as the watermark moves, and there is no
``completed`` event (README "Live (unbounded) runs", docs/SEMANTICS.md, ``transforms/live.py``).
"""
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import AzureOptions, PipelineOptions, StandardOptions
from apache_beam.utils.windowed_value import WindowedValue

from core.config import ConfigError, check_destinations, load_config
from core.history import unpack_changes
from core.messages import (MessageBuilder, audience_names, merge_message_line_runs,
                           message_line_runs, message_sort_key, user_messages)
from core.records import SystemEvent, dedupe_batch, dedupe_first_copies
from core.report import build_report, count_rows, export_files, export_windows
from core.redact import Redactor, collect_secrets, install_log_redaction
from core.system_events import work_event
from core.workflows import WORKFLOWS
from core.snapshot import SnapshotError
from core.timeutil import TimeFormatError, format_time
from pipelines.cli import UsageError, check_pipeline_arguments, pipeline_help, wants_help
from pipelines.options import COMMAND_OPTIONS, REQUIRED_OPTIONS, ActivationOptions, flag_value
from pipelines.runners import (DIRECT_RUNNERS, RunnerMissingError, choose_runner, runner_environment,
                               runner_name)
from transforms.audiences import EngineSpec, GroupUserEventsPerBundle
from transforms.live import DedupeSystemEventsLive, Values, is_unbounded
from transforms import outputs
from core.interrupt import deferred, exit_process
from transforms.localsink import DEFAULT_FLUSH_SECONDS, WriteJsonLinesFile
from transforms.audiences import export_rows_from_wire
from transforms.read import (DEADLETTER, LATEST, PROFILE, SYSTEM, InputMissingError, ParseLines,
                             ReadRecords, check_input_exists)
from transforms.state import (SYSTEM_MEMORY, USERS as STATE_USERS, ReadStateSnapshot,
                              WriteStateSnapshot, commit_snapshot, load_snapshot, temporary_uri)

_LOGGER = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """A problem the user must fix; printed as one line."""


# -- set-up ------------------------------------------------------------------------------------

def _configure_logging(verbose, redactor):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    if not verbose:
        # Beam and the Azure SDKs are chatty at INFO; a local run prints its own summary.
        for noisy in ("apache_beam", "azure", "uamqp", "root"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # Beam sets the logger of Prism's output to INFO when it starts Prism, which would print
        # every line Prism logs; its warnings and errors still show.
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    install_log_redaction(redactor)


def _preflight(job, output_dir):
    """Checks each delivering work's credentials before any data moves.

    Returns ``{work id: reason}`` for works that cannot deliver; they are disabled for this run
    (they deliver nothing, keep their state marker, and report ``failed``), the others run.
    """
    disabled = {}
    for work in job.works:
        if work.paused:
            continue
        settings = work.settings
        if work.workflow == "eventhub_audience_export" and settings.connection_string:
            from clients.eventhubs import EventHubsDeliveryError, verify_connection
            try:
                verify_connection(settings.connection_string, settings.eventhub_name)
            except EventHubsDeliveryError as exc:
                disabled[work.id] = str(exc)
        elif work.workflow == "azure_blob_event_export":
            from transforms import blob
            destination = None
            try:
                destination = blob.destination_for(work, output_dir)
                if settings.connection_string:
                    blob.verify_credentials(destination, work.id, settings.prefix)
                work.marker_end = blob.read_marker_end(destination, work)
            except blob.BlobExportError as exc:
                disabled[work.id] = str(exc)
                work.marker_end = None
            finally:
                if destination is not None:
                    destination.close()
    return disabled


# -- the output graph --------------------------------------------------------------------------

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


class DedupeSystemEvents(beam.PTransform):
    """The 24-hour dedupe of system events by id (the earliest received copy of a run wins).

    ``memory``: with ``--state``, the ``(id, received_at)`` a snapshot remembers: copies within
    24 hours of a remembered run are duplicates too, and the ids' latest run starts come out on
    :data:`MEMORY` (the output is then a tuple with ``main`` and ``memory``).
    On an unbounded input the first copy to arrive wins (:class:`DedupeSystemEventsLive`).
    """

    def __init__(self, memory=None, label=None):
        super().__init__(label)
        self._memory = memory

    def expand(self, system_events):
        if is_unbounded(system_events):
            return system_events | "FirstCopies" >> DedupeSystemEventsLive()
        keyed = system_events | "KeyById" >> beam.Map(lambda e: (e.id, e))
        if self._memory is None:
            return (keyed
                    | "GroupById" >> beam.GroupByKey()
                    | "KeepFirstCopies" >> beam.FlatMap(_keep_first_copies))
        remembered = self._memory | "Remembered" >> beam.MapTuple(
            lambda event_id, received: (event_id, _Remembered((received,))))
        return ((keyed, remembered)
                | "WithMemory" >> beam.Flatten()
                | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "GroupById" >> beam.GroupByKey()
                | "KeepFirstCopies" >> beam.FlatMap(_keep_first_copies_remembering).with_outputs(
                    MEMORY, main="main"))


def _message_fn(settings, audiences):
    """(user, [changes]) to (partition key, [messages]) for one work."""
    build = MessageBuilder(settings, audiences).build

    def to_messages(element):
        (key_field, key), changes = element
        messages = user_messages(build, key_field, key, unpack_changes(changes))  # wire tuples
        if messages:
            yield key, messages
    return to_messages


class _BuildMessageLines(beam.DoFn):
    """A local Event Hub sink's lines of one work, for a bounded run: ``(user, changes)`` in, one
    sorted run of ``(sort key, line)`` pairs per batch of ``BATCH`` users out
    (``core.messages.message_line_runs``), which ``WriteJsonLinesFile`` merges
    (``core.messages.merge_message_line_runs``).

    The runs differ only in how users are batched, and the merged file is the same whatever the
    bundles. A run keeps the window of its users (a new window starts a new batch) and the
    earliest of their timestamps.
    """

    BATCH = 256

    def __init__(self, settings, audience_list):
        # Only what the messages need travels to the workers: no connection string, no conditions.
        self._settings = dataclasses.replace(settings, connection_string=None)
        self._audience_names = audience_names(audience_list)

    def start_bundle(self):
        self._users, self._earliest, self._window = [], None, None

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        (key_field, key), changes = element
        if self._users and window != self._window:
            yield from self._send()
        if not self._users:
            self._earliest, self._window = timestamp, window
        elif timestamp < self._earliest:
            self._earliest = timestamp
        self._users.append((key_field, key, changes))
        if len(self._users) >= self.BATCH:
            yield from self._send()

    def finish_bundle(self):
        if self._users:
            yield from self._send()

    def _send(self):
        users, timestamp, window = self._users, self._earliest, self._window
        self._users = []
        for run in message_line_runs(self._settings, self._audience_names, [users]):
            if run is not None:
                yield WindowedValue(run, timestamp, [window])


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
        # The wire tuples as they come (UserChange field order): this runs once per change, and
        # day numbers become dates once per bundle, in finish_bundle.
        for at, changes, _, _, _, backfill in unpack_changes(element[1]):
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


class _CountDelivered(beam.DoFn):
    """Local sinks: turns a written file into the work's ``synced`` and ``synccomplete`` events."""

    def __init__(self, aid, work_id, counter_name):
        self._aid = aid
        self._work_id = work_id
        self._counter = beam.metrics.Metrics.counter("work:" + work_id, counter_name)

    def process(self, written):
        path, count = written
        self._counter.inc(count)
        name = outputs.basename(path)
        yield work_event(self._aid, self._work_id, "synced", "%d messages to %s" % (count, name),
                         unit=name)
        yield work_event(self._aid, self._work_id, "synccomplete", None, unit=name + "#complete")


class _Undelivered(beam.DoFn):
    """A disabled Event Hub work's messages as dead letters, counted as ``deadlettered``."""

    def __init__(self, work_id, reason):
        self._work_id = work_id
        self._reason = reason
        self._counter = beam.metrics.Metrics.counter("work:" + work_id, "deadlettered")

    def process(self, element):
        _, messages = element
        self._counter.inc(len(messages))
        for message in messages:
            yield {"raw": message, "error": self._reason, "source": self._work_id}


class _PreflightFailed(beam.DoFn):
    """The ``failed`` event of a work its credentials check disabled, counted as a failure."""

    def __init__(self, aid, work_id):
        self._aid = aid
        self._work_id = work_id
        self._counter = beam.metrics.Metrics.counter("work:" + work_id, "failures")

    def process(self, reason):
        self._counter.inc()
        yield work_event(self._aid, self._work_id, "failed", reason, unit="preflight")


def _eventhub_work(p, job, work, changes, output_dir, disabled, streaming, flush_seconds):
    settings = work.settings
    label = "Work[%s]" % work.id
    local = work.id not in disabled and not settings.connection_string
    if local and not is_unbounded(changes):
        # Built and encoded in one step: the sink's single group holds a sorted run of lines per
        # batch of users (core.messages.pack_message_lines).
        return (changes
                | label + "BuildMessageLines" >> beam.ParDo(_BuildMessageLines(
                    settings, job.audiences.audiences))
                | label + "WriteLocalSink" >> WriteJsonLinesFile(
                    outputs.join(output_dir, "eventhub", work.id + ".jsonl"), sort_key=message_sort_key,
                    flush_seconds=flush_seconds, encoded=merge_message_line_runs)
                | label + "Report" >> beam.ParDo(_CountDelivered(job.aid, work.id, "messages_delivered")))
    # Only what the messages need travels to the workers: no connection string.
    messages = changes | label + "BuildMessages" >> beam.FlatMap(
        _message_fn(dataclasses.replace(settings, connection_string=None),
                    job.audiences.audiences))
    if work.id in disabled:
        # Nothing is lost: what the work could not send is kept, with the reason, for a resend,
        # and counted, so the summary's figures are what the dead-letter file holds.
        reason = "not delivered: " + disabled[work.id]
        _ = (messages
             | label + "Undelivered" >> beam.ParDo(_Undelivered(work.id, reason))
             | label + "WriteUndelivered" >> WriteJsonLinesFile(
                 outputs.join(output_dir, "deadletter", work.id + ".jsonl"),
                 sort_key=lambda d: message_sort_key(d["raw"]), flush_seconds=flush_seconds))
        return (p
                | label + "Disabled" >> Values([disabled[work.id]])
                | label + "Failed" >> beam.ParDo(_PreflightFailed(job.aid, work.id)))
    if local:
        return (messages
                | label + "DropKey" >> beam.Values()
                | label + "WriteLocalSink" >> WriteJsonLinesFile(
                    outputs.join(output_dir, "eventhub", work.id + ".jsonl"), sort_key=message_sort_key,
                    batched=True, flush_seconds=flush_seconds)
                | label + "Report" >> beam.ParDo(_CountDelivered(job.aid, work.id, "messages_delivered")))
    from transforms.eventhubs import WriteToEventHubs
    if not streaming and not is_unbounded(messages):
        # A bounded run sends each user's messages in time order, one user's in one bundle. (A
        # live run sends them as the engine emits them, which is already in time order per user.)
        messages = (messages
                    | label + "GroupByUser" >> beam.GroupByKey()
                    | label + "InTimeOrder" >> beam.FlatMap(
                        lambda kv: ((kv[0], m) for m in sorted((m for batch in kv[1] for m in batch),
                                                                key=message_sort_key))))
    else:
        messages = messages | label + "OnePerElement" >> beam.FlatMap(
            lambda kv: ((kv[0], m) for m in kv[1]))
    # The connection string as the workers get it: a ${VAR} reference resolved in setup().
    return messages | label + "WriteToEventHubs" >> WriteToEventHubs(
        (work.worker_settings or settings).connection_string, work.id,
        outputs.join(output_dir, "deadletter", work.id + ".jsonl"),
        eventhub_name=settings.eventhub_name, aid=job.aid, flush_seconds=flush_seconds)


def _blob_work(p, job, work, export_rows, system_events, output_dir, disabled, flush_seconds,
               grace_seconds):
    from transforms.blob import WriteToBlobExport
    batched = work.settings.export_type == "events"
    if batched:
        # One element per user's batch of rows, as the evaluation emits them.
        source = export_rows | "Work[%s]Rows" % work.id >> beam.Map(export_rows_from_wire)
    else:
        source = system_events
    return source | "Work[%s]WriteToBlob" % work.id >> WriteToBlobExport(
        work, job.account_name, job.aid, output_dir, marker_end=getattr(work, "marker_end", None),
        disabled_reason=disabled.get(work.id), grace_seconds=grace_seconds,
        flush_seconds=flush_seconds, batched=batched)


def _alert_work(job, work, alert_input, output_dir, flush_seconds):
    from transforms import alerts
    if work.workflow == "webhook_system_events":
        composite = alerts.SendWebhookAlerts(work, output_dir, flush_seconds=flush_seconds)
    else:
        composite = alerts.SendEmailAlerts(work, output_dir, account_name=job.account_name,
                                           flush_seconds=flush_seconds)
    return alert_input | "Work[%s]Alerts" % work.id >> composite


def _option(options, name, default):
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

    def __init__(self, as_of=None, uri=None, temporary=None, snapshot_as_of=None):
        self.as_of, self.uri, self.temporary = as_of, uri, temporary
        self.snapshot_as_of = snapshot_as_of


class _Latest:
    """The latest of the values, else ``fallback`` (a picklable CombineGlobally function)."""

    def __init__(self, fallback):
        self._fallback = fallback

    def __call__(self, values):
        return max(values, default=self._fallback)


def build_graph(p, job, evaluate, options, run_id, disabled, time_range=None, live_source=None,
                run_state=None):
    """Reads, evaluates with ``evaluate`` (a PTransform), and wires every work's output.

    ``run_state``: a :class:`RunState` (bounded runs): the as-of time and the ``--state``
    snapshot to read and write. A bounded run without one evaluates up to the latest
    ``received_at`` it reads.

    The output graph takes the unbounded form (see the module docstring) when the parsed input
    is unbounded; a bounded input, from files or an Event Hubs catch-up, builds what it always did.
    """
    output_dir = options.output_dir
    streaming = p.options.view_as(StandardOptions).streaming
    flush_seconds = float(_option(options, "flush_seconds", DEFAULT_FLUSH_SECONDS))
    from transforms.blob import DEFAULT_GRACE_SECONDS
    grace_seconds = float(_option(options, "blob_grace_seconds", DEFAULT_GRACE_SECONDS))
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
    for work in job.works:
        if work.workflow == "eventhub_audience_export":
            if work.paused:
                continue
            events = _eventhub_work(p, job, work, changes, output_dir, disabled, streaming,
                                    flush_seconds)
        elif work.workflow == "azure_blob_event_export":
            events = _blob_work(p, job, work, export_rows, system_events, output_dir, disabled,
                                flush_seconds, grace_seconds)
        else:
            continue
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
    alert_input = (system_events, own) | "AlertInput" >> beam.Flatten()
    alert_outputs = []
    for work in job.works:
        if work.workflow in ("webhook_system_events", "email_system_events"):
            result = _alert_work(job, work, alert_input, output_dir, flush_seconds)
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


# -- summary -----------------------------------------------------------------------------------

def _counter_totals(result):
    totals = {}
    try:
        counters = result.metrics().query(MetricsFilter())["counters"]
    except Exception as exc:  # some runners do not report metrics; the summary says so
        _LOGGER.warning("metrics unavailable from this runner: %s", exc)
        return None
    for c in counters:
        value = c.committed if c.committed is not None else c.attempted
        key = (c.key.metric.namespace, c.key.metric.name)
        totals[key] = totals.get(key, 0) + (value or 0)
    return totals


def build_summary(job, totals, output_dir, mode, seconds):
    totals = totals or {}

    def get(namespace, name):
        return totals.get((namespace, name), 0)

    summary = {
        "command": mode,
        "records_read": get("input", "records_read"),
        "deadlettered": get("input", "deadlettered"),
        "outside_time_range": get("input", "outside_time_range"),
        "late": get("audiences", "late"),
        "duplicates": get("audiences", "duplicates"),
        "events_applied": get("audiences", "events_applied"),
        "pending_wakeups": get("audiences", "pending_wakeups"),
        "pending_events": get("audiences", "pending_events"),
        "audiences": {a.slug: {"enters": get("audience:" + a.slug, "enters"),
                               "exits": get("audience:" + a.slug, "exits")}
                      for a in job.audiences.audiences},
        "works": {},
        "output_dir": output_dir,
        "seconds": round(seconds, 3),
    }
    for work in job.works:
        ns = "work:" + work.id
        entry = {"workflow": work.workflow}
        if work.label:
            entry["label"] = work.label
        if work.paused:
            entry["paused"] = True
        for name in WORKFLOWS[work.workflow].summary_counters + ("deadlettered", "failures"):
            entry[name.replace("_delivered", "")] = get(ns, name)
        summary["works"][work.id] = entry
    if totals is None:
        summary["metrics"] = "unavailable from this runner"
    return summary


def print_summary(summary, stream=sys.stdout):
    w = stream.write
    w("Summary (%s, %.1f s)\n" % (summary["command"], summary["seconds"]))
    w("  records read %d, dead-lettered %d, outside time range %d, late %d, duplicates %d\n"
      % (summary["records_read"], summary["deadlettered"], summary["outside_time_range"],
         summary["late"], summary["duplicates"]))
    if summary.get("as_of") is not None:
        w("  as of %s: pending wake-ups %d, pending events %d\n"
          % (summary["as_of"], summary["pending_wakeups"], summary["pending_events"]))
    w("  audiences:\n")
    for slug, figures in summary["audiences"].items():
        w("    %-28s enters %6d  exits %6d\n" % (slug, figures["enters"], figures["exits"]))
    w("  works:\n")
    for work_id, entry in summary["works"].items():
        figures = ", ".join("%s %s" % (k, v) for k, v in entry.items() if k not in ("workflow", "label"))
        w("    %-20s %-26s %s\n" % (work_id, entry["workflow"], figures))
    w("  output: %s\n" % summary["output_dir"])


def _failed_work_events(output_dir, job):
    own_ids = {w.id for w in job.works}
    failures = []
    data = outputs.read_file(outputs.join(output_dir, "system_events.jsonl"))
    for line in (data or b"").decode("utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        fields = record.get("data", {})
        if fields.get("verb") == "failed" and fields.get("subject_id") in own_ids:
            failures.append((fields["subject_id"], fields.get("notes", "failed")))
    return failures


def write_summary(output_dir, summary):
    """``DIR/summary.json`` (through Beam's file systems, like every output)."""
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    path = outputs.join(output_dir, "summary.json")
    outputs.write_file(path, (text.encode("utf-8"),), mime_type="application/json")
    return path


def write_report(output_dir, summary):
    """``DIR/report.html`` from the summary, ``DIR/audiences_daily.jsonl`` and the export files
    under ``DIR/blob`` (see :mod:`core.report`)."""
    data = outputs.read_file(outputs.join(output_dir, "audiences_daily.jsonl")) or b""
    daily = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    root = outputs.join(output_dir, "blob")
    listing = [(outputs.relative(path, root), outputs.file_size(path))
               for path in outputs.list_files(root)]
    files = [(rel, size, count_rows(rel, outputs.read_file(outputs.join(root, rel)) or b""))
             for rel, size in export_files(listing)]
    path = outputs.join(output_dir, "report.html")
    page = build_report(summary, daily, dead_letters=_dead_letter_files(output_dir),
                        windows=export_windows(files))
    outputs.write_file(path, (page.encode("utf-8"),), mime_type="text/html")
    return path


def _dead_letter_files(output_dir):
    """``[(name, [records])]`` under ``DIR/deadletter``: ``x.jsonl`` files, and the part
    directories of unbounded runs (``x/part-*.jsonl``, named ``x/``), by name."""
    root = outputs.join(output_dir, "deadletter")
    found = {}
    for path in outputs.list_files(root):
        rel = outputs.relative(path, root)
        if not rel.endswith(".jsonl"):
            continue
        name = rel if "/" not in rel else rel.split("/", 1)[0] + "/"
        data = outputs.read_file(path) or b""
        found.setdefault(name, []).extend(
            json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip())
    return sorted(found.items())


def _prepare_output_dir(output_dir):
    """Creates ``--output_dir`` (a local path or a Beam file system URI) and checks that it can
    be written, before any data moves; a problem is one line (:class:`LaunchError`)."""
    probe = outputs.join(output_dir, "%scheck-%s" % (outputs.TEMPORARY_PREFIX, uuid.uuid4().hex[:12]))
    try:
        outputs.make_directory(output_dir)
        outputs.write_file(probe, (b"",))
        outputs.delete_file(probe)
    except Exception as exc:  # pylint: disable=broad-except
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LaunchError("--output_dir %s: cannot write there: %s: %s"
                          % (output_dir, type(exc).__name__, first[:300])) from None


# -- entry point -------------------------------------------------------------------------------

LIVE_SCHEMES = ("eventhubs://", "kafka://", "pubsub://")


def _live_source(uri, options, redactor):
    """The source of a live ``--input`` URI (None for files); see transforms/live_sources.py."""
    if not uri.startswith(LIVE_SCHEMES):
        return None
    from clients.eventhubs_consumer import EventHubsSourceError
    from transforms.live_sources import build_live_source
    try:
        source = build_live_source(uri, os.environ)
    except EventHubsSourceError as exc:
        raise LaunchError(str(exc)) from None
    redactor.add(source.secrets)
    if source.eventhubs is not None:
        try:  # wrong credentials fail here, in a second, not after the SDK's retries inside Beam
            source.eventhubs.verify()
        except EventHubsSourceError as exc:
            raise LaunchError(str(exc)) from None
    if not source.bounded and not options.view_as(StandardOptions).streaming:
        raise LaunchError("input %s: a live read never ends: add --streaming (or mode=catchup "
                          "for a bounded catch-up run)" % uri.split("?", 1)[0])
    return source


def _choose_runner(options, live_source):
    """The run's runner: Prism for a live input unless ``--runner`` names another
    (pipelines/runners.py); a live read on a runner that cannot follow it is refused or warned of."""
    live = live_source is not None and not live_source.bounded
    named = options.view_as(StandardOptions).runner is not None
    try:
        runner = choose_runner(options, live)
    except RunnerMissingError as exc:
        raise LaunchError(str(exc)) from None
    if live and not named:
        sys.stderr.write("live input: running on %s (name another with --runner)\n" % runner)
    if live:
        _check_live_runner(options.view_as(StandardOptions).runner)


def _check_live_runner(runner):
    """Refuses or warns about local runners that cannot run a live read faithfully.

    Beam's BundleBasedDirectRunner (measured with 2.77; docs/RUNNERS.md) fails
    on any splittable DoFn under --streaming; the DirectRunner, offline, falls back to the
    FnApiRunner, which reads the hub but ignores the source's watermark.
    """
    name = runner_name(runner)
    if name == "bundlebaseddirect":
        raise LaunchError("the BundleBasedDirectRunner cannot run a live read: it fails on "
                          "any splittable DoFn with --streaming; use the DirectRunner to try "
                          "the wiring, Flink or Dataflow to run it")
    if name in DIRECT_RUNNERS:
        sys.stderr.write(
            "warning: a live read on the DirectRunner only tries the wiring: offline it runs on "
            "Beam's FnApiRunner, which does not follow the source's watermark (event-time timers "
            "fire at once, so delayed exits, Blob window closes and the 24 h dedupe are not "
            "honoured, and steps after a timer may get data only when the input ends). Leave "
            "--runner out to run on Prism, or run live jobs on Flink or Dataflow.\n")


def _verbose_requested(argv):
    for arg in argv:
        if arg == "--verbose":
            return True
        if arg.startswith("--verbose="):
            try:
                return flag_value(arg.split("=", 1)[1])
            except ValueError:
                return False
    return False


def main(argv, mode, make_evaluate, time_range_of=None, help_text=None):
    """Runs one pipeline command; returns the process exit status.

    ``make_evaluate(spec)`` gives the command's evaluate PTransform. ``help_text``:
    ``(usage, description, examples)`` for ``--help`` (pipelines/cli.py).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "pipelines." + mode
    if wants_help(argv):
        usage, description, examples = help_text or ("python -m %s [options]" % command, "", ())
        sys.stdout.write(pipeline_help(command, usage, description, COMMAND_OPTIONS, examples))
        return 0
    try:
        check_pipeline_arguments(argv, command, COMMAND_OPTIONS)
    except UsageError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    verbose = _verbose_requested(argv)
    redactor = Redactor()
    _configure_logging(verbose, redactor)
    try:
        with private_temp_directory():
            return _run(argv, mode, make_evaluate, redactor, time_range_of)
    except (ConfigError, InputMissingError, LaunchError, RunnerMissingError) as exc:
        sys.stderr.write("error: %s\n" % redactor(str(exc)))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:  # the last line of defence: one clear, redacted line
        if verbose:
            sys.stderr.write(redactor(traceback.format_exc()))
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        sys.stderr.write("error: %s: %s\n" % (type(exc).__name__, redactor(first)[:500]))
        return 1


@contextlib.contextmanager
def private_temp_directory():
    """Temporary files of the run in one folder of its own, removed when the run ends.

    Beam's local runners make temporary folders (staging, artifacts, a requirements cache) in
    the system's temporary directory and leave them there, empty, after every run; they are made
    here instead (``tempfile.tempdir``, and ``TMPDIR`` for processes the run starts), and go.

    The folder goes at the interpreter's exit, not when the block ends: Beam stops a job server
    it started (Flink's) from an exit handler, which first removes the server's folder inside
    this one and stops the server only if that worked; removed earlier, the server (a ``java``
    process with the embedded Flink and the job) would run on after the command. Registered
    before the run, this removal runs after Beam's handlers (exit handlers run last first).
    """
    previous_tempdir, previous_env = tempfile.tempdir, os.environ.get("TMPDIR")
    path = tempfile.mkdtemp(prefix="activation-run-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    try:
        yield path
    finally:
        tempfile.tempdir = previous_tempdir
        if previous_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_env


def exit_command(status):
    """Ends a pipeline command's process with ``status`` (``core.interrupt.exit_process``: a
    Ctrl-C until the very end still gets ``interrupted``)."""
    exit_process(status)


def _run_state(act, options, live_source, time_range, run_id, job):
    """The :class:`RunState` of a bounded run (None for an unbounded one), after checking
    ``--as_of`` and ``--state`` and loading the snapshot: all before any data moves."""
    as_of_text, uri = _option(act, "as_of", None), _option(act, "state", None)
    bounded = live_source is None or live_source.bounded
    if not bounded:
        for name, value in (("as_of", as_of_text), ("state", uri)):
            if value is not None:
                raise LaunchError("--%s applies to bounded runs (files, mode=catchup); a live run "
                                  "keeps its state in the runner" % name)
        return None
    as_of = None
    if as_of_text is not None:
        from pipelines.replay import parse_bound  # the same forms as --start/--end
        try:
            as_of = parse_bound(as_of_text)
        except TimeFormatError as exc:
            raise ConfigError("--as_of: %s" % exc) from None
    elif time_range is not None and time_range[1] is not None:
        # The run holds the records with ts < --end: its last instant is just before it, and a
        # point at --end itself belongs to the run that reads the events at --end.
        as_of = time_range[1] - 1
    if uri is None:
        return RunState(as_of)
    if options.view_as(StandardOptions).streaming:
        raise LaunchError("--state needs batch execution (the whole input read, then each user "
                          "evaluated once): drop --streaming")
    if options.view_as(StandardOptions).no_wait_until_finish:
        raise LaunchError("--state is written when the run has finished: drop "
                          "--no_wait_until_finish")
    try:
        snapshot = load_snapshot(uri)
    except SnapshotError as exc:
        raise LaunchError("--state %s: %s" % (uri, exc)) from None
    snapshot_as_of = None
    if snapshot is not None:
        if snapshot.account != job.account_name:
            raise LaunchError("--state %s: a snapshot of account %r, the config is account %r"
                              % (uri, snapshot.account, job.account_name))
        snapshot_as_of = snapshot.as_of
        if as_of is not None and snapshot_as_of is not None and as_of < snapshot_as_of:
            raise LaunchError("--state %s: the snapshot is as of %s, after this run's as-of %s"
                              % (uri, format_time(snapshot_as_of), format_time(as_of)))
    return RunState(as_of, uri, temporary_uri(uri, run_id), snapshot_as_of)


def _summary_as_of(result, run_state):
    """The run's as-of time for the summary (RFC 3339), None for an unbounded run."""
    if run_state is None:
        return None
    if run_state.as_of is not None:
        return format_time(run_state.as_of)
    try:
        distributions = result.metrics().query(MetricsFilter().with_name("as_of"))["distributions"]
    except Exception:
        return None
    values = [d.committed or d.attempted for d in distributions]
    values = [v.max for v in values if v is not None and v.count]
    return format_time(max(values)) if values else None


def _run(argv, mode, make_evaluate, redactor, time_range_of):
    options = PipelineOptions(argv)
    act = options.view_as(ActivationOptions)
    for name in REQUIRED_OPTIONS:
        if not getattr(act, name):
            raise LaunchError("--%s is required (see --help)" % name)
    job = load_config(act.config)
    redactor.add(collect_secrets(job.raw))
    for warning in check_destinations(job):
        sys.stderr.write("warning: %s\n" % redactor(warning))
    # Beam's Azure file system options (an azfs:// --output_dir) hold a key too.
    for azure_connection_string in (_option(options.view_as(AzureOptions),
                                            "azure_connection_string", ""),
                                    os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")):
        redactor.add(collect_secrets({"connection_string": azure_connection_string}))
    live_source = _live_source(act.input, options, redactor)
    if live_source is None:
        check_input_exists(act.input)
    _choose_runner(options, live_source)
    time_range = time_range_of(options) if time_range_of else None
    outputs.use_options(options)  # before the snapshot is read: --state may be on azfs://
    run_id = uuid.uuid4().hex[:12]
    run_state = _run_state(act, options, live_source, time_range, run_id, job)
    _prepare_output_dir(act.output_dir)
    disabled = _preflight(job, act.output_dir)
    for work_id, reason in disabled.items():
        sys.stderr.write("work %s: %s\n" % (work_id, redactor(reason)))
    spec = EngineSpec.from_job(job, job.raw.get("audiences") or [])
    if run_state is not None:
        spec = spec.for_run(run_state.as_of, keep_state=run_state.uri is not None)
    started = time.time()
    with runner_environment(options):
        pipeline = beam.Pipeline(options=options)
        build_graph(pipeline, job, make_evaluate(spec), act, run_id, disabled, time_range,
                    live_source, run_state)
        result = pipeline.run()
        if options.view_as(StandardOptions).no_wait_until_finish:
            # A launcher (e.g. a Dataflow Flex Template) submits and returns; the job reports
            # through its runner's counters and its works' system events.
            sys.stdout.write("submitted: %s\n" % getattr(result, "state", "running"))
            return 0
        state = result.wait_until_finish()
    seconds = time.time() - started
    if run_state is not None and run_state.uri is not None:
        if str(state).upper().endswith("DONE") or state is None:
            commit_snapshot(run_state.temporary, run_state.uri)
    summary = build_summary(job, _counter_totals(result), act.output_dir, mode, seconds)
    summary["as_of"] = _summary_as_of(result, run_state)
    if run_state is not None and run_state.uri is not None:
        summary["state"] = run_state.uri
    write_summary(act.output_dir, summary)
    with deferred():  # a Ctrl-C while the report is written ends the command after it
        report = write_report(act.output_dir, summary)
    print_summary(summary)
    sys.stdout.write("  report: %s\n" % report)
    failures = _failed_work_events(act.output_dir, job)
    if failures:
        seen = set()
        for work_id, notes in failures:
            if (work_id, notes) not in seen:
                seen.add((work_id, notes))
                sys.stderr.write("error: work %s failed: %s\n" % (work_id, redactor(notes)))
        return 1
    return 0
