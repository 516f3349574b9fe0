"""The Beam side of each workflow: the check before a run and the transforms that run a work.

:data:`BEAM_WORKFLOWS` holds, under each name of ``core.workflows.WORKFLOWS``, a
:class:`BeamWorkflow`: its stage (a delivery reads the audience changes, export rows or system
events and reports its own work events; an alert reads every system event, the works' own
included), whether a paused work is wired at all, the preflight that checks its credentials
before any data moves, and the function that wires a work into the graph
(``pipelines.wiring.build_graph`` calls it with the run's :class:`WorkInputs`).
"""
import dataclasses
from typing import Callable, Dict, NamedTuple, Optional

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.core.config import JobConfig, Work
from cdp_activation.core.history import unpack_changes
from cdp_activation.core.messages import (MessageBuilder, audience_names, merge_message_line_runs,
                           message_line_runs, message_sort_key, user_messages)
from cdp_activation.core.system_events import work_event
from cdp_activation.core.workflows import (AZURE_BLOB_EVENT_EXPORT, EMAIL_SYSTEM_EVENTS, EVENTHUB_AUDIENCE_EXPORT,
                            WEBHOOK_SYSTEM_EVENTS)
from cdp_activation.transforms import outputs
from cdp_activation.transforms.audiences import export_rows_from_wire
from cdp_activation.transforms.live import Values, is_unbounded
from cdp_activation.transforms.localsink import WriteJsonLinesFile

#: A delivery's stage: it reads what the evaluation or the input gives, and its own work events
#: (``synced``, ``failed``, ...) go to the system-event log and to the alerts.
DELIVERY = "delivery"
#: An alert's stage: it reads every system event, the input's and the works' own.
ALERTS = "alerts"


@dataclasses.dataclass
class WorkInputs:
    """What the graph hands a work's wiring: the run's settings and the collections it reads.

    ``changes``: ``(user, changes)`` of the evaluation; ``export_rows``: its export rows;
    ``system_events``: the input's system events, deduplicated; ``alert_input``: every system
    event, the input's and the works' own (set for the alert stage only). ``disabled``:
    ``{work id: reason}`` of the works their preflight disabled.
    """
    pipeline: beam.Pipeline
    job: JobConfig
    output_dir: str
    disabled: Dict[str, str]
    streaming: bool
    flush_seconds: float
    grace_seconds: float
    changes: beam.PCollection
    export_rows: beam.PCollection
    system_events: beam.PCollection
    alert_input: Optional[beam.PCollection] = None


class BeamWorkflow(NamedTuple):
    """How one workflow runs in Beam (see the module docstring).

    ``wire(inputs, work)``: a delivery returns the work's own system events (a PCollection); an
    alert returns its composite's output (a PCollection of its own events, or a dict of
    PCollections). ``preflight(work, output_dir)``: the reason the work cannot deliver, or None.
    """
    stage: str
    wire: Callable[[WorkInputs, Work], object]
    wires_paused: bool = True
    preflight: Optional[Callable[[Work, str], Optional[str]]] = None


# -- preflight: credentials checked before any data moves ---------------------------------------

def _eventhub_preflight(work, output_dir):
    settings = work.settings
    if not settings.connection_string:
        return None
    from cdp_activation.clients.eventhubs import EventHubsDeliveryError, verify_connection
    try:
        verify_connection(settings.connection_string, settings.eventhub_name)
    except EventHubsDeliveryError as exc:
        return str(exc)
    return None


def _blob_preflight(work, output_dir):
    """Checks the destination's credentials and reads the work's state marker (``marker_end``)."""
    from cdp_activation.transforms import blob
    destination = None
    try:
        destination = blob.destination_for(work, output_dir)
        if work.settings.connection_string:
            blob.verify_credentials(destination, work.id, work.settings.prefix)
        work.marker_end = blob.read_marker_end(destination, work)
    except blob.BlobExportError as exc:
        work.marker_end = None
        return str(exc)
    finally:
        if destination is not None:
            destination.close()
    return None


# -- Event Hubs ----------------------------------------------------------------------------------

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


def _eventhub_work(inputs, work):
    """Messages of the audience changes, to Event Hubs or the local sink; the work's events."""
    p, job, changes, output_dir = inputs.pipeline, inputs.job, inputs.changes, inputs.output_dir
    disabled, flush_seconds = inputs.disabled, inputs.flush_seconds
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
    from cdp_activation.transforms.eventhubs import WriteToEventHubs
    if not inputs.streaming and not is_unbounded(messages):
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



# -- Blob and alerts -----------------------------------------------------------------------------

def _blob_work(inputs, work):
    """The export rows (``events``) or the input's system events, to Blob files; the work's
    events."""
    from cdp_activation.transforms.blob import WriteToBlobExport
    job = inputs.job
    batched = work.settings.export_type == "events"
    if batched:
        # One element per user's batch of rows, as the evaluation emits them.
        source = inputs.export_rows | "Work[%s]Rows" % work.id >> beam.Map(export_rows_from_wire)
    else:
        source = inputs.system_events
    return source | "Work[%s]WriteToBlob" % work.id >> WriteToBlobExport(
        work, job.account_name, job.aid, inputs.output_dir,
        marker_end=getattr(work, "marker_end", None), disabled_reason=inputs.disabled.get(work.id),
        grace_seconds=inputs.grace_seconds, flush_seconds=inputs.flush_seconds, batched=batched)


def _webhook_work(inputs, work):
    from cdp_activation.transforms.alerts import SendWebhookAlerts
    return inputs.alert_input | "Work[%s]Alerts" % work.id >> SendWebhookAlerts(
        work, inputs.output_dir, flush_seconds=inputs.flush_seconds)


def _email_work(inputs, work):
    from cdp_activation.transforms.alerts import SendEmailAlerts
    return inputs.alert_input | "Work[%s]Alerts" % work.id >> SendEmailAlerts(
        work, inputs.output_dir, account_name=inputs.job.account_name,
        flush_seconds=inputs.flush_seconds)


#: Every workflow's Beam side, under the names and in the order of ``core.workflows.WORKFLOWS``.
BEAM_WORKFLOWS: Dict[str, BeamWorkflow] = {
    EVENTHUB_AUDIENCE_EXPORT: BeamWorkflow(DELIVERY, _eventhub_work, wires_paused=False,
                                           preflight=_eventhub_preflight),
    WEBHOOK_SYSTEM_EVENTS: BeamWorkflow(ALERTS, _webhook_work),
    EMAIL_SYSTEM_EVENTS: BeamWorkflow(ALERTS, _email_work),
    # A paused export is wired: it writes nothing and keeps its marker (transforms/blob.py).
    AZURE_BLOB_EVENT_EXPORT: BeamWorkflow(DELIVERY, _blob_work, preflight=_blob_preflight),
}


def preflight(job: JobConfig, output_dir: str) -> Dict[str, str]:
    """Checks each delivering work's credentials before any data moves.

    Returns ``{work id: reason}`` for works that cannot deliver; they are disabled for this run
    (they deliver nothing, keep their state marker, and report ``failed``), the others run.
    """
    disabled = {}
    for work in job.works:
        check = BEAM_WORKFLOWS[work.workflow].preflight
        if work.paused or check is None:
            continue
        reason = check(work, output_dir)
        if reason is not None:
            disabled[work.id] = reason
    return disabled
