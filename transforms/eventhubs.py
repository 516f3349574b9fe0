"""Delivery of audience messages to Azure Event Hubs (CONTRACT 5.1): ``WriteToEventHubs``.

The Event Hubs client side (connection strings, failure descriptions, the producer client and
the launcher's pre-flight check :func:`clients.eventhubs.verify_connection`) is
``clients/eventhubs.py``.
"""
import collections
import hashlib
import json
import logging
import time
from typing import Any, Dict, Optional, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.clients.eventhubs import (Secret, describe_failure, hub_name, is_auth_error, is_not_found,
                              is_transient, one_line, parse_connection_string,
                              producer_client)
from cdp_activation.clients.retry import Failure, RetryPolicy
from cdp_activation.core.config import EnvRef
from cdp_activation.core.records import SystemEvent, dead_letter
from cdp_activation.core.redact import reveal
from cdp_activation.core.system_events import work_event
from cdp_activation.transforms.localsink import DEFAULT_FLUSH_SECONDS, WriteJsonLinesFile

_LOGGER = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
#: Messages buffered in a bundle before they are sent without waiting for the bundle's end.
MAX_BUFFERED_MESSAGES = 10000
#: Attempts of this module's own retry (each re-creates the client) around the SDK's retries.
MAX_ATTEMPTS = 3


# ------------------------------------------------------------------------------------------------
# Dead letters
# ------------------------------------------------------------------------------------------------

#: The tag of the send step's dead-letter output.
DEADLETTER = "deadletter"


# ------------------------------------------------------------------------------------------------
# The DoFn
# ------------------------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("key", "message", "body", "timestamp", "window")

    def __init__(self, key, message, body, timestamp, window):
        self.key, self.message, self.body = key, message, body
        self.timestamp, self.window = timestamp, window


class _DeliveryStopped(Exception):
    """Delivery cannot go on; ``reason`` is secret-free, ``unsent`` the messages not delivered."""

    def __init__(self, reason, unsent):
        super().__init__(reason)
        self.reason = reason
        self.unsent = list(unsent)


class _CredentialsRejected(_DeliveryStopped):
    """Rejected credentials or a missing event hub: no retry can help, the work stops."""


class _DeliveryFailed(_DeliveryStopped):
    pass


def _batch_unit(message_ids, prefix="eventhubs-batch-"):
    """A stable id of a batch: the same messages give the same synced event id on a retry."""
    return prefix + hashlib.sha256("\n".join(message_ids).encode("utf-8")).hexdigest()[:32]


def _body(message):
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _WriteToEventHubsFn(beam.DoFn):
    """Sends ``(partition_key, message)`` elements in batches; outputs work system events, and
    the messages it could not deliver, with the reason, on the ``DEADLETTER`` output."""

    def __init__(self, connection_string, work_id, deadletter_path, eventhub_name, aid,
                 retry_total, retry_backoff_factor, retry_backoff_max, timeout_seconds,
                 max_attempts=MAX_ATTEMPTS, max_buffered=MAX_BUFFERED_MESSAGES):
        info = parse_connection_string(reveal(connection_string))
        self._hub = hub_name(info, eventhub_name)
        self._namespace = info["namespace"]
        # A ${VAR} reference travels as it is and is resolved in setup(), on the worker.
        self._connection_string = (connection_string if isinstance(connection_string, EnvRef)
                                   else Secret(connection_string))
        self._resolved = None
        self._eventhub_name = eventhub_name
        self._work_id = work_id
        self._deadletter_path = deadletter_path
        self._aid = aid
        self._retry = (retry_total, retry_backoff_factor, retry_backoff_max)
        self._timeout = timeout_seconds
        self._max_attempts = max(1, max_attempts)
        self._sleep = time.sleep   # the wait between attempts; tests count instead of waiting
        self._max_buffered = max(1, max_buffered)
        namespace = "work:" + work_id
        self._delivered = Metrics.counter(namespace, "messages_delivered")
        self._batches = Metrics.counter(namespace, "batches_delivered")
        self._deadlettered = Metrics.counter(namespace, "deadlettered")
        self._failures = Metrics.counter(namespace, "failures")
        self._client = None
        self._stopped = None
        self._buffer = None
        self._buffered = 0

    def display_data(self):
        return {"work_id": self._work_id,
                "eventhub": DisplayDataItem("%s/%s" % (self._namespace, self._hub),
                                            label="Event Hub"),
                "deadletter_path": DisplayDataItem(self._deadletter_path,
                                                   label="Dead-letter file")}

    # -- lifecycle ---------------------------------------------------------------------------

    def _secret(self):
        if self._resolved is None:
            self._resolved = Secret(reveal(self._connection_string))
        return self._resolved.reveal()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_resolved"] = None       # the resolved value never leaves this process
        state["_client"] = None
        return state

    def setup(self):
        self._stopped = None        # reason delivery stopped for good (credentials rejected)
        self._secret()
        # Creating the client does not connect: the first create_batch does (see _call).
        self._get_client()

    def start_bundle(self):
        self._buffer = collections.OrderedDict()
        self._buffered = 0

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        try:
            key, message = element
        except (TypeError, ValueError):
            key, message = None, element
        problem = None
        if not isinstance(key, str) or not key:
            problem = "invalid element: the partition key must be a non-empty string"
        elif not isinstance(message, dict) or not isinstance(message.get("message_id"), str) \
                or not message["message_id"]:
            problem = "invalid element: the message must be an object with a string message_id"
        if problem is not None:
            yield from self._dead_letter([(message, problem, timestamp, window)])
            return
        self._buffer.setdefault(key, []).append(
            _Pending(key, message, _body(message), timestamp, window))
        self._buffered += 1
        if self._buffered >= self._max_buffered:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def teardown(self):
        self._close_client()

    # -- delivery ----------------------------------------------------------------------------

    def _flush(self):
        """Sends everything buffered; returns the work events as WindowedValues."""
        pending, self._buffer, self._buffered = self._buffer, collections.OrderedDict(), 0
        if not pending:
            return []
        if self._stopped is not None:
            return self._dead_letter([(p.message, "not delivered: " + self._stopped, p.timestamp,
                                       p.window) for items in pending.values() for p in items])
        outputs = []
        keys = list(pending)
        for index, key in enumerate(keys):
            try:
                self._deliver_key(pending[key], outputs)
            except _DeliveryStopped as failure:
                # Stop the bundle: later messages of this key must not overtake the undelivered
                # ones, and other keys would most likely fail the same way.
                reason = failure.reason
                undelivered = failure.unsent + [
                    p for later in keys[index + 1:] for p in pending[later]]
                outputs.extend(self._dead_letter([(p.message, "not delivered: " + reason,
                                                   p.timestamp, p.window) for p in undelivered]))
                self._failures.inc()
                if isinstance(failure, _CredentialsRejected):
                    self._stopped = reason
                _LOGGER.error("Work %s: %s; %d messages written to the dead-letter file %s",
                              self._work_id, reason, len(undelivered), self._deadletter_path)
                notes = "%s; %d messages not delivered, written to %s" % (
                    reason, len(undelivered), self._deadletter_path)
                unit = _batch_unit([p.message["message_id"] for p in undelivered],
                                   prefix="eventhubs-failed-")
                outputs.append(self._windowed(work_event(self._aid, self._work_id, "failed",
                                                         notes=notes, unit=unit),
                                              undelivered[0]))
                break
        return outputs

    def _deliver_key(self, items, outputs):
        """Sends one partition key's messages in order, in as few batches as fit."""
        key = items[0].key
        batch, members = None, []
        for position, item in enumerate(items):
            if batch is None:
                batch = self._new_batch(key, items[position:])
            if self._add(batch, item):
                members.append(item)
                continue
            if members:                 # the batch is full: send it and start a new one
                outputs.append(self._send(batch, members, items[position:]))
                batch, members = self._new_batch(key, items[position:]), []
                if self._add(batch, item):
                    members.append(item)
                    continue
            # Alone in an empty batch and still too large: no retry can deliver it.
            outputs.extend(self._dead_letter([(
                item.message, "message of %d bytes is larger than the event hub accepts (%d bytes "
                "per batch)" % (len(item.body), batch.max_size_in_bytes), item.timestamp,
                item.window)]))
        if members:
            outputs.append(self._send(batch, members, []))

    def _new_batch(self, key, unsent):
        # create_batch opens the connection on first use (to read the link's max message size),
        # so it fails like a send does and is retried like one.
        return self._call(lambda client: client.create_batch(partition_key=key), unsent)

    @staticmethod
    def _add(batch, item):
        from azure.eventhub import EventData
        event = EventData(item.body)
        event.message_id = item.message["message_id"]
        event.content_type = CONTENT_TYPE
        try:
            batch.add(event)
        except ValueError:              # the SDK's "batch has reached its size limit"
            return False
        return True

    def _send(self, batch, members, later):
        unsent = members + list(later)
        self._call(lambda client: client.send_batch(batch, timeout=self._timeout), unsent)
        ids = [p.message["message_id"] for p in members]
        self._delivered.inc(len(members))
        self._batches.inc()
        event = work_event(self._aid, self._work_id, "synced",
                           notes="%d messages delivered to %s/%s"
                           % (len(members), self._namespace, self._hub),
                           unit=_batch_unit(ids))
        return self._windowed(event, members[-1])

    def _call(self, operation, unsent):
        """Runs ``operation(client)``: the SDK retries inside, this retries around it.

        A transient failure after the SDK's own retries closes the client and tries again with
        a new one (a new connection), up to ``max_attempts`` in all, with the backoff of
        :mod:`clients.retry` (from ``retry_backoff_factor`` up to ``retry_backoff_max``).
        Rejected credentials or a missing hub raise ``_CredentialsRejected``, anything else that
        persists ``_DeliveryFailed``; both carry the messages not delivered (``unsent``).
        """
        where = "%s/%s" % (self._namespace, self._hub)

        def classify(exc):
            self._close_client()
            return Failure(one_line(exc, parse_connection_string(self._secret())),
                           is_transient(exc))

        _, factor, backoff_max = self._retry
        policy = RetryPolicy(self._max_attempts, factor, backoff_max, sleep=self._sleep,
                             log_level=logging.WARNING)
        result = policy.run(lambda: operation(self._get_client()), classify,
                            "Work %s: Event Hubs delivery to %s" % (self._work_id, where))
        if result.ok:
            return result.value
        exc, info = result.error, parse_connection_string(self._secret())
        if is_auth_error(exc) or is_not_found(exc):
            raise _CredentialsRejected(describe_failure(exc, info, self._hub), unsent) from None
        raise _DeliveryFailed("Event Hubs delivery to %s failed after %d attempt%s: %s"
                              % (where, result.attempts, "" if result.attempts == 1 else "s",
                                 one_line(exc, info)), unsent) from None

    def _get_client(self):
        if self._client is None:
            retry_total, factor, backoff_max = self._retry
            self._client = producer_client(self._secret(), self._eventhub_name,
                                           retry_total, factor, backoff_max, self._timeout)
        return self._client

    def _close_client(self):
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # pylint: disable=broad-except
                _LOGGER.debug("Work %s: closing the Event Hubs client failed: %s",
                              self._work_id, type(exc).__name__)

    # -- outputs -----------------------------------------------------------------------------

    def _dead_letter(self, entries):
        """``(message, reason, timestamp, window)`` entries as ``DEADLETTER`` outputs, each with
        the window and timestamp of its message (so they work from finish_bundle too)."""
        self._deadlettered.inc(len(entries))
        dead = []
        for message, error, timestamp, window in entries:
            if not error.startswith("not delivered"):
                _LOGGER.warning("Work %s: message %s dead-lettered: %s", self._work_id,
                                message.get("message_id") if isinstance(message, dict) else None,
                                error)
            dead.append(beam.pvalue.TaggedOutput(DEADLETTER, WindowedValue(
                dead_letter(message, error, self._work_id), timestamp, (window,))))
        return dead

    @staticmethod
    def _windowed(event, item):
        # Outputs leave with the window and timestamp of the element they report on, so they
        # work from finish_bundle and under any windowing.
        return WindowedValue(event, item.timestamp, (item.window,))


class WriteToEventHubs(beam.PTransform):
    """Delivers audience messages to an Azure Event Hub with the azure-eventhub SDK.

    Input: a PCollection of ``(partition_key, message)`` pairs, where ``message`` is a CONTRACT
    5.1 audience message (a JSON-serialisable dict with a string ``message_id``) and
    ``partition_key`` the user key. Output: a PCollection of ``core.records.SystemEvent`` work
    events (``subject_type: work``, ``subject_id: work_id``, ``aid``) for the alert branch:

    * ``synced`` for every batch the hub accepted (the event id is stable per batch content, so
      a retried bundle reports the same id);
    * ``failed`` when delivery stops, with the reason in ``notes`` (never a secret).

    What is sent: each message is one event whose body is the message's compact JSON (UTF-8),
    with AMQP ``message_id`` = the message's ``message_id`` and content type
    ``application/json``. Messages are grouped per partition key; one key's messages keep their
    input order and go to one partition, so one user's messages stay in order. Batches are
    filled up to the hub's maximum message size (1 MB on the Standard tier, read from the link)
    and sent when full or at the end of the bundle (or once ``max_buffered_messages`` wait).

    Failure policy:

    * transient errors (lost connection, timeouts, service busy) are retried by the SDK
      (``retry_total`` times, exponential backoff from ``retry_backoff_factor`` seconds up to
      ``retry_backoff_max``), then by this transform, which closes the client and tries again
      with a new one, up to 3 attempts in all. If that fails too, the bundle stops: the batch and
      every message after it in the bundle are written to the dead-letter file with the error
      ``not delivered: <reason>`` and one ``failed`` event is output. The next bundle tries again.
    * a single message larger than the hub accepts is written to the dead-letter file with the
      reason; the other messages are delivered.
    * rejected credentials (AuthenticationError, ClientAuthenticationError, status 401/403) stop the
      work until the pipeline is restarted: one ``failed`` event ("Event Hubs rejected the
      credentials for <namespace>/<hub>"), and the undelivered messages (this bundle's and every
      later one's, without further attempts) go to the dead-letter file as
      ``not delivered: ...``. Nothing is lost and nothing is raised: the pipeline
      launcher turns the ``failed`` event into a non-zero exit status. An event hub that does
      not exist (status 404) stops the work the same way, with "Event Hubs has no event hub ...".
      The SDK retries a rejected token too, so with the default ``retry_total=3`` this takes
      about 14 s; :func:`verify_connection` (run by the launcher before any data moves) reports
      it in about a second.

    The dead-letter file (``deadletter_path``, a local path or a Beam file system URI) is JSON
    Lines, one ``{"raw": message, "error": reason, "source": work_id}`` per message. The send step
    emits them on a tagged output and one sink step of this composite writes them
    (:class:`transforms.localsink.WriteJsonLinesFile`: a bounded run writes the file once, sorted
    and present even when empty; a live run writes parts every ``flush_seconds``).

    Delivery is at least once: a batch whose acknowledgement is lost is sent again, and the
    copies carry the same ``message_id`` (the Python SDK has no idempotent producer), so
    consumers dedupe on ``message_id``. For the same reason "not delivered" means "not
    acknowledged": a dead-lettered batch may have reached the hub before its connection failed,
    so replaying the dead-letter file can also produce duplicates (same ``message_id``).

    Metrics (namespace ``work:<work_id>``): ``messages_delivered``, ``batches_delivered``,
    ``deadlettered``, ``failures``.

    The connection string is never logged and is not part of the display data. Given as a
    :class:`core.config.EnvRef` (a config's ``${VAR}``), only the variable's name travels with
    the pipeline and the worker resolves it in ``setup()``; a plain string travels inside the
    pickled DoFn.

    :param connection_string: ``Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...``,
        with ``EntityPath`` or ``eventhub_name``; or an :class:`core.config.EnvRef` to one.
    :param work_id: the work's id (system events, metrics, dead-letter ``source``).
    :param deadletter_path: JSON Lines file for messages that were not delivered.
    :param eventhub_name: the event hub, when the connection string has no ``EntityPath``.
    :param aid: the account id put in the system events.
    :param retry_total: the SDK's retries per operation.
    :param retry_backoff_factor: the SDK's (and this transform's) backoff base, seconds.
    :param retry_backoff_max: the longest backoff, seconds.
    :param timeout_seconds: the longest wait for one send (and for CBS authentication).
    :param max_buffered_messages: messages held per bundle before sending without waiting for
        the bundle's end (bounds memory on large bundles; order per key is kept either way).
    :param flush_seconds: live (unbounded) input only: the flush period of the dead-letter parts.
    """

    def __init__(self, connection_string: Union[str, EnvRef], work_id: str, deadletter_path: str,
                 eventhub_name: Optional[str] = None, aid: Optional[int] = None,
                 retry_total: int = 3, retry_backoff_factor: float = 0.8,
                 retry_backoff_max: float = 10, timeout_seconds: float = 10,
                 max_buffered_messages: int = MAX_BUFFERED_MESSAGES,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
        super().__init__()
        self._flush_seconds = flush_seconds
        # Fails at construction, before any data moves, on an unusable connection string.
        info = parse_connection_string(reveal(connection_string))
        self._target = "%s/%s" % (info["namespace"], hub_name(info, eventhub_name))
        self._fn = _WriteToEventHubsFn(
            connection_string, work_id, deadletter_path, eventhub_name, aid, retry_total,
            retry_backoff_factor, retry_backoff_max, timeout_seconds,
            max_buffered=max_buffered_messages)
        self._work_id = work_id
        self._deadletter_path = deadletter_path

    @no_annotations
    def expand(self, messages: beam.PCollection[Any]) -> beam.PCollection[SystemEvent]:
        sent = messages | "SendBatches" >> beam.ParDo(self._fn).with_outputs(DEADLETTER,
                                                                             main="events")
        _ = sent[DEADLETTER] | "WriteDeadLetters" >> WriteJsonLinesFile(
            self._deadletter_path, flush_seconds=self._flush_seconds)
        return sent.events

    def display_data(self) -> Dict[str, Any]:
        return {"work_id": self._work_id,
                "eventhub": DisplayDataItem(self._target, label="Event Hub"),
                "deadletter_path": DisplayDataItem(self._deadletter_path,
                                                   label="Dead-letter file")}
