"""The consumer side of Azure Event Hubs (azure-eventhub SDK), for ``ReadFromEventHubs``; no Beam.

* :class:`ClientSettings`: how to reach a hub as a consumer group; makes the consumer client.
* :class:`PartitionReader`: pulls one partition from a sequence number on, drops the copies a
  reconnect delivers again, and can put back what was read but not used.
* :func:`plan_partition`: where a partition's read starts and stops (its :class:`PartitionPlan`),
  from the partition's properties and its checkpoint.
* :func:`event_record`: an SDK event as an :class:`EventHubRecord`.
* :func:`verify_consumer`: the launcher's pre-flight check of an input hub.
* :func:`make_checkpoint_store`: which store of ``clients/checkpoints.py`` a read uses.

``transforms/eventhubs_source.py`` plans and reads with these; connection strings and failure
descriptions are ``clients/eventhubs.py``'s. Nothing here logs or raises a key or a signature.
"""
import collections
import datetime
import logging
import time
import typing

from cdp_activation.clients.checkpoints import NAME, BlobStorageCheckpointStore, Checkpoint, CheckpointError, \
    LocalCheckpointStore, fully_qualified_namespace
from cdp_activation.clients.eventhubs import EventHubsDeliveryError, Secret, bounded_wait, close_quietly, \
    describe_failure, is_auth_error, is_not_found, is_unreachable, one_line, \
    parse_connection_string
from cdp_activation.core.config import EnvRef
from cdp_activation.core.redact import reveal

_LOGGER = logging.getLogger(__name__)

#: Events handed to the pipeline per consumer pull.
DEFAULT_MAX_BATCH_SIZE = 500
#: How long one pull waits for the first event before the read counts as idle.
DEFAULT_MAX_WAIT_SECONDS = 1.0
#: Live mode: how long a busy partition's read call runs before it ends and is resumed. A runner
#: may pass on what a call emitted only when the call ends (Prism does), so this bounds how long
#: an event waits in the reader.
DEFAULT_MAX_READ_SECONDS = 10.0
#: ``eventhubs://...&mode=live`` default ``watermark_delay_seconds``: how long after its enqueued
#: time an event's own ``ts`` may lie before the pipelines (which re-timestamp records with ``ts``)
#: count it as late. Events are usually enqueued within seconds of their ``ts``.
LIVE_WATERMARK_DELAY_SECONDS = 60.0
#: The stop of a live restriction: "no end" (the largest int64, so any runner can encode it).
UNBOUNDED_STOP = 2 ** 63 - 1

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_ONE_MICROSECOND = datetime.timedelta(microseconds=1)


class EventHubsSourceError(CheckpointError):
    """A one-line, secret-free description of a source that cannot be used (bad URI, config,
    unreadable checkpoint, hub that cannot be read)."""


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------


class EventHubRecord(typing.NamedTuple):
    """One event read from an event hub partition.

    :ivar body: the event's body (its Data sections joined), bytes.
    :ivar enqueued_time_us: when the service enqueued the event, microseconds since the Unix epoch
        (the element's timestamp, and the ``received_at`` default of a record without one).
    :ivar partition: the partition id, e.g. ``"0"``.
    :ivar sequence_number: the event's sequence number in its partition (what checkpoints store).
    :ivar offset: the service's offset of the event (opaque string).
    """
    body: bytes
    enqueued_time_us: int
    partition: str
    sequence_number: int
    offset: str


def datetime_us(value: datetime.datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime (no float rounding)."""
    return (value - _EPOCH) // _ONE_MICROSECOND


def _event_body(event):
    body = event.body
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    try:                               # a Data body: a generator of the sections' bytes
        return b"".join(body)
    except TypeError:                  # an AMQP value or sequence body (not what the SDK sends)
        return event.body_as_str(encoding="UTF-8").encode("utf-8")


def event_record(event: typing.Any, partition: str) -> EventHubRecord:
    """The :class:`EventHubRecord` of an SDK ``EventData`` received from ``partition``."""
    enqueued = event.enqueued_time      # set by the service on every event it delivers
    return EventHubRecord(_event_body(event), datetime_us(enqueued) if enqueued else 0,
                          partition, event.sequence_number, event.offset or "")


# ------------------------------------------------------------------------------------------------
# Settings and client
# ------------------------------------------------------------------------------------------------


class ClientSettings:
    """How to reach a hub as a consumer group; picklable; ``repr`` shows no secret.

    :param connection_string: the namespace's or hub's connection string, or a
        :class:`core.config.EnvRef` to one (resolved here to check it; only the reference is
        kept, and workers resolve it again).
    """

    def __init__(self, connection_string: typing.Union[str, EnvRef],
                 eventhub_name: typing.Optional[str], consumer_group: str, retry_total: int,
                 retry_backoff_factor: float, retry_backoff_max: float,
                 timeout_seconds: float) -> None:
        try:
            # An EnvRef (a ${VAR} reference) is resolved here, where the graph is built, to
            # check it; only the reference is kept and pickled, and workers resolve it again.
            info = parse_connection_string(reveal(connection_string))
        except EventHubsDeliveryError as exc:
            raise EventHubsSourceError(str(exc)) from None
        entity = info["eventhub_name"]
        if eventhub_name and entity and eventhub_name.lower() != entity.lower():
            raise EventHubsSourceError(
                "event hub %r differs from the connection string's EntityPath %r"
                % (eventhub_name, entity))
        hub = eventhub_name or entity
        if not hub:
            raise EventHubsSourceError(
                "Event Hubs event hub name is missing: add EntityPath to the connection string or "
                "name the hub")
        if not isinstance(consumer_group, str) or not NAME.match(consumer_group):
            raise EventHubsSourceError("consumer group %r is not a valid name" % (consumer_group,))
        if retry_total < 0 or retry_backoff_factor < 0 or retry_backoff_max < 0:
            raise EventHubsSourceError("retry settings must not be negative")
        if timeout_seconds <= 0:
            raise EventHubsSourceError("timeout_seconds must be positive")
        self.connection_string = (connection_string if isinstance(connection_string, EnvRef)
                                  else Secret(connection_string))
        # Passed to the SDK only when the connection string has no EntityPath (the SDK refuses
        # two names for one hub).
        self.explicit_hub = None if entity else hub
        self.eventhub_name = hub
        self.host = info["host"]
        self.namespace = info["namespace"]
        # The event processor's name of the namespace (host[:port]), used by Blob checkpoints.
        self.fully_qualified_namespace = fully_qualified_namespace(info["endpoint"])
        self.consumer_group = consumer_group
        self.retry_total = int(retry_total)
        self.retry_backoff_factor = float(retry_backoff_factor)
        self.retry_backoff_max = float(retry_backoff_max)
        self.timeout_seconds = float(timeout_seconds)

    @property
    def target(self) -> str:
        """``namespace/hub (consumer group X)``: safe to show."""
        return "%s/%s (consumer group %s)" % (self.namespace, self.eventhub_name,
                                              self.consumer_group)

    def consumer_client(self) -> typing.Any:
        """A new ``EventHubConsumerClient`` with these settings (the caller closes it)."""
        from azure.eventhub import EventHubConsumerClient
        kwargs = {"consumer_group": self.consumer_group, "retry_total": self.retry_total,
                  "retry_backoff_factor": self.retry_backoff_factor,
                  "retry_backoff_max": self.retry_backoff_max, "retry_mode": "exponential",
                  # Bounds the CBS handshake: a silent endpoint must not hang a worker.
                  "auth_timeout": self.timeout_seconds}
        if self.explicit_hub:
            kwargs["eventhub_name"] = self.explicit_hub
        client = EventHubConsumerClient.from_connection_string(
            reveal(self.connection_string), **kwargs)
        if not hasattr(client, "_create_consumer"):
            client.close()
            raise EventHubsSourceError(
                "this azure-eventhub version has no per-partition consumer "
                "(EventHubConsumerClient._create_consumer); ReadFromEventHubs is tested with 5.15")
        return client

    def describe_error(self, exc: BaseException, doing: str) -> str:
        """One secret-free line for an SDK failure while ``doing`` something."""
        info = parse_connection_string(reveal(self.connection_string))
        if is_not_found(exc):
            # On the consumer side a missing consumer group is "not found" too.
            return ("Event Hubs %s was not found (check the event hub name and the consumer "
                    "group)" % self.target)
        if is_auth_error(exc) or is_unreachable(exc):
            return describe_failure(exc, info, self.eventhub_name)
        return "Event Hubs %s: %s failed: %s" % (self.target, doing, one_line(exc, info))

    def __repr__(self):
        return "ClientSettings(%s)" % self.target


def verify_consumer(settings: ClientSettings, timeout_seconds: float = 10.0) -> typing.List[str]:
    """Checks that ``settings`` can read the hub: lists its partitions without the SDK's retries.

    Returns the partition ids. Raises :class:`EventHubsSourceError` with one secret-free line:
    ``Event Hubs rejected the credentials for <namespace>/<hub>``, ``... is unreachable``,
    ``... was not found``. An endpoint that does not answer within ``timeout_seconds`` counts as
    unreachable.
    """
    settings = ClientSettings(reveal(settings.connection_string), settings.explicit_hub,
                              settings.consumer_group, 0, 0.1, 1, max(1.0, float(timeout_seconds)))
    outcome = {}

    def check():
        client = None
        try:
            client = settings.consumer_client()
            outcome["ids"] = client.get_partition_ids()
        except Exception as exc:  # pylint: disable=broad-except
            outcome["error"] = exc
        finally:
            close_quietly(client, "consumer client")

    if not bounded_wait(check, timeout_seconds, "eventhubs-source-verify"):
        raise EventHubsSourceError("Event Hubs endpoint %s is unreachable (no answer within "
                                   "%s s)" % (settings.namespace, timeout_seconds))
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, EventHubsSourceError):
            raise error
        raise EventHubsSourceError(settings.describe_error(error, "listing the partitions")) \
            from None
    return outcome["ids"]


# ------------------------------------------------------------------------------------------------
# Positions: what to read from a partition
# ------------------------------------------------------------------------------------------------


class PartitionPlan(typing.NamedTuple):
    """What to read from one partition: sequence numbers ``[start, stop)``.

    ``stop`` is :data:`UNBOUNDED_STOP` in live mode. ``watermark_us`` is the enqueued time of the
    checkpointed event (a lower bound of every later event's) minus the watermark delay, or
    None.
    """
    partition: str
    start: int
    stop: int
    watermark_us: typing.Optional[int] = None


def plan_partition(partition: str, properties: typing.Mapping[str, typing.Any],
                   checkpoint: typing.Optional[Checkpoint], bounded: bool,
                   watermark_delay_us: int = 0,
                   expired_counter: typing.Any = None) -> PartitionPlan:
    """The :class:`PartitionPlan` of one partition from its properties and checkpoint.

    ``properties`` is the SDK's ``get_partition_properties`` dict. No I/O, so it is tested on its
    own. ``expired_counter``: anything with ``inc(n)`` (a Beam counter), told how many events
    expired (retention) before they were read.
    """
    watermark_us = None
    if checkpoint is not None and checkpoint.enqueued_time_us is not None:
        watermark_us = checkpoint.enqueued_time_us - watermark_delay_us
    begin = int(properties.get("beginning_sequence_number") or 0)
    last = properties.get("last_enqueued_sequence_number")
    last = -1 if last is None else int(last)
    start = begin if checkpoint is None else checkpoint.sequence_number + 1
    if start < begin:
        # The retention period removed events that were never processed: nothing can bring them
        # back; say so loudly and go on from the first retained one.
        _LOGGER.warning(
            "Event Hubs partition %s: events %d to %d expired before they were read (retention); "
            "reading from %d", partition, start, begin - 1, begin)
        if expired_counter is not None:
            expired_counter.inc(begin - start)
        start = begin
    if not bounded:
        return PartitionPlan(partition, start, UNBOUNDED_STOP, watermark_us)
    stop = last + 1
    if start > stop:
        _LOGGER.warning(
            "Event Hubs partition %s: the checkpoint (sequence number %d) is beyond the "
            "partition's last event (%d); was the event hub re-created? Nothing is read from this "
            "partition; delete its checkpoint file to read it from the beginning",
            partition, start - 1, last)
        stop = start
    return PartitionPlan(partition, start, stop, watermark_us)


# ------------------------------------------------------------------------------------------------
# Checkpoint stores (clients/checkpoints.py)
# ------------------------------------------------------------------------------------------------


def checked_call(call: typing.Callable, *args: typing.Any) -> typing.Any:
    """``call(*args)``, with a checkpoint store's error raised as :class:`EventHubsSourceError`."""
    try:
        return call(*args)
    except EventHubsSourceError:
        raise
    except CheckpointError as exc:
        raise EventHubsSourceError(str(exc)) from None


def make_checkpoint_store(
        settings: ClientSettings, checkpoint_dir: typing.Optional[str] = None,
        checkpoint_container: typing.Optional[str] = None,
        checkpoint_connection_string: typing.Union[str, EnvRef, None] = None,
) -> typing.Union[LocalCheckpointStore, BlobStorageCheckpointStore, None]:
    """The checkpoint store of a read: local files, a Blob container in Azure's layout, or None.

    ``settings``: the read's :class:`ClientSettings` (namespace, hub, consumer group).
    ``checkpoint_connection_string``: the storage account's, a string or a
    :class:`core.config.EnvRef` (required with ``checkpoint_container``).
    """
    if checkpoint_dir and checkpoint_container:
        raise EventHubsSourceError("checkpoint_dir and checkpoint_container exclude each other: "
                                   "checkpoints are kept in one place")
    if checkpoint_container:
        if not checkpoint_connection_string:
            raise EventHubsSourceError(
                "checkpoint_container %r needs the storage account's connection string "
                "(checkpoint_connection_string_env=VAR)" % (checkpoint_container,))
        return checked_call(BlobStorageCheckpointStore, checkpoint_connection_string,
                            checkpoint_container, settings.fully_qualified_namespace,
                            settings.eventhub_name, settings.consumer_group)
    if checkpoint_dir:
        return checked_call(LocalCheckpointStore, checkpoint_dir, settings.host,
                            settings.eventhub_name, settings.consumer_group)
    return None


# ------------------------------------------------------------------------------------------------
# One partition's reader
# ------------------------------------------------------------------------------------------------


class PartitionReader:
    """A pull reader of one partition: the SDK's per-partition consumer and what it prefetched.

    ``position`` is the sequence number the reader continues from: the next :meth:`read` returns
    events with sequence numbers >= position, in order (gaps possible where events expired).
    ``redelivered_counter``: anything with ``inc()`` (a Beam counter), told of each copy dropped.
    """

    def __init__(self, client: typing.Any, consumer_group: str, partition: str, position: int,
                 prefetch: int, redelivered_counter: typing.Any = None) -> None:
        self.partition = partition
        self.position = position
        self.redelivered = 0               # copies the SDK delivered again after a reconnect
        self._redelivered = redelivered_counter
        self._buffer = collections.deque()
        # event_position_inclusive: the event *at* ``position`` is the first one wanted.
        self._consumer = client._create_consumer(  # pylint: disable=protected-access
            consumer_group, partition, position, self._buffer.extend,
            event_position_inclusive=True, prefetch=prefetch)

    def read(self, max_batch_size: int, max_wait_seconds: float) -> typing.List[typing.Any]:
        """Up to ``max_batch_size`` events; an empty list once ``max_wait_seconds`` passed idle."""
        if not self._buffer:
            deadline = time.monotonic() + max_wait_seconds
            while True:
                # max_wait_time=None: hand over whatever arrived at once (no batching delay);
                # each call waits at most the transport's socket timeout (0.2 s) for data.
                self._consumer.receive(batch=True, max_batch_size=max_batch_size,
                                       max_wait_time=None)
                if self._buffer or time.monotonic() >= deadline:
                    break
        events = []
        while self._buffer and len(events) < max_batch_size:
            event = self._buffer.popleft()
            sequence_number = event.sequence_number
            # After a reconnect the SDK resumes at the last event's offset *inclusive*: drop the
            # copies it delivers again.
            if sequence_number is None or sequence_number < self.position:
                self.redelivered += 1
                if self._redelivered is not None:
                    self._redelivered.inc()
                continue
            events.append(event)
            self.position = sequence_number + 1
        return events

    def unread(self, events: typing.List[typing.Any]) -> None:
        """Puts back events that were read but not used; the next read returns them first."""
        if events:
            self._buffer.extendleft(reversed(events))
            self.position = events[0].sequence_number

    def close(self) -> None:
        close_quietly(self._consumer, "partition consumer")
        self._consumer = None
