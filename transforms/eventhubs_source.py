"""Live input from Azure Event Hubs: ``ReadFromEventHubs`` (a splittable DoFn) and ``--input`` URIs.

Beam has no Python Event Hubs connector (Beam issues #31775, #20410); this module is one, built on
the azure-eventhub SDK's consumer. It also turns the pipelines' ``--input`` URIs into sources:
``eventhubs://`` (this connector), ``kafka://`` (Beam's cross-language ``ReadFromKafka``, e.g. on
the Event Hubs Kafka endpoint) and ``pubsub://`` (Beam's ``ReadFromPubSub``).

Reading an event hub
====================

::

    source = ReadFromEventHubs(os.environ["EVENTHUB_INPUT_CONNECTION_STRING"],
                               consumer_group="$Default", checkpoint_dir="state/eventhubs",
                               bounded=True)
    records = p | "ReadFromEventHubs" >> source          # PCollection[EventHubRecord]
    ...                                                   # parse, evaluate, deliver
    source.commit_checkpoints(records, after=[every terminal PCollection of the pipeline])

Every element is an :class:`EventHubRecord` ``(body, enqueued_time_us, partition, sequence_number,
offset)``, timestamped with the event's enqueued time (the service's arrival time, so it is also the
``received_at`` of a record that has none).

Two modes:

``bounded=True`` (catch-up, ``mode=catchup`` in a URI)
    Reads, in each partition, every event after the last durable checkpoint (or from the beginning
    of the retained events) up to the partition's end *as read when the run starts*, then stops.
    Events published during the run are left for the next run. This is the batch path: runs on the
    DirectRunner, Flink and Dataflow in batch mode, and with checkpoints consecutive runs read
    each event once.

``bounded=False`` (live, ``mode=live``)
    Reads without end. When no event arrives within ``max_wait_seconds`` the partition's read is
    deferred (``defer_remainder``) and resumed by the runner shortly after, reusing the open
    link; the watermark follows the events' enqueued times and, while a partition is idle, the
    wall clock minus ``idle_watermark_lag_seconds`` (future events of an idle partition are
    enqueued after "now", so the watermark may move on and windows downstream can close), both
    held back by ``watermark_delay_seconds``: a pipeline that re-timestamps records with their own
    event time (``ts``, which precedes the enqueued time) sets it to the ingestion delay it
    tolerates, or most records would be behind the watermark (late). Needs a streaming runner
    (``--streaming``). Checkpoint files are read (where to start) but not written:
    a streaming job's position lives in the runner's own state (Flink checkpoints and savepoints,
    Dataflow's update and drain), which also holds the pipeline's per-user state that a restart
    from files would lose anyway.

Design
------

``Impulse -> PlanPartitions -> Reshuffle -> ReadPartitions (splittable DoFn)``.

* ``PlanPartitions`` reads the hub's partition ids and each partition's properties (one
  management call each, in parallel) and the checkpoints, and emits one plan per partition:
  ``[start, stop)`` in sequence numbers, where ``start`` is the checkpoint's sequence number + 1
  (or the partition's first retained event) and ``stop`` is ``last_enqueued_sequence_number + 1``
  (catch-up) or "infinity" (live). Doing this at run time, not at pipeline construction, means
  nothing touches the network while the graph is built and a template or a re-run sees the hub as
  it is when it runs. The Reshuffle spreads partitions over workers.
* ``ReadPartitions`` is a splittable DoFn whose restriction is that sequence-number range
  (``OffsetRange`` with an ``OffsetRestrictionTracker``): an event is emitted only after
  ``try_claim(sequence_number)`` succeeds, so a runner can split a partition's range while it is
  being read (dynamic rebalancing) or checkpoint it (split at 0) and resume from the residual,
  and no event is lost or emitted twice across the parts. A live (infinite) range only splits at
  0: splitting ``[n, infinity)`` at a fraction would park half the work at sequence numbers the hub
  will not reach for years. The consumer link stays open between calls: when the next
  restriction of a partition starts where the previous call stopped, the same link goes on, so a
  deferred live read does not reconnect (a new link costs a TCP connection, SASL and CBS).
* The SDK's ``EventHubConsumerClient`` is created in ``setup()`` and closed in ``teardown()``, with
  explicit retry (``retry_total``, exponential backoff) and timeout settings. Reading uses the SDK's
  per-partition consumer (the pull loop that the SDK's own ``EventProcessor`` uses) with an
  inclusive sequence-number position; the SDK reconnects on transient errors and, after its
  retries, the error fails the bundle so the runner retries it from the restriction's start.
  Duplicates that a reconnect can deliver (the SDK resumes at the last event's offset) are
  dropped by sequence number.

Checkpoints: at least once, never a skip
----------------------------------------

A checkpoint holds the *last processed* event of a partition; the next run starts after it. Two
stores (``clients/checkpoints.py``), chosen by the read's options:

* ``checkpoint_container`` (URI ``checkpoint_container=NAME&checkpoint_connection_string_env=VAR``):
  an Azure Blob container in the layout of Azure's ``azure-eventhub-checkpointstoreblob``, one
  blob per partition, ``{namespace}/{eventhub}/{consumer group}/checkpoint/{partition}`` (lower
  case) with metadata ``offset`` and ``sequencenumber``. The SDK's ``EventHubConsumerClient``
  with Azure's ``BlobCheckpointStore`` on that container continues where this job stopped, and
  this job continues where such a processor checkpointed. A partition that such a processor
  owns (a claim under ``.../ownership/`` younger than 180 s) is refused at planning: two
  readers of one consumer group would both deliver its events.
* ``checkpoint_dir`` (URI ``checkpoint_dir=D``): one JSON file per partition on a local disk,
  ``<dir>/<namespace>/<eventhub>/<consumer group>/<partition>.json``, replaced atomically
  (write, fsync, rename). For one machine: a cluster's workers share no disk.

Both are never moved backwards. Names are lower-cased, since Event Hubs names are
case-insensitive, as the SDK's blob checkpoint store does.

They are written only once the run's output is committed: :meth:`ReadFromEventHubs.
commit_checkpoints` (the :class:`CommitCheckpoints` transform) takes the records PCollection and the
pipeline's terminal PCollections (``after``), and its final step, a GroupByKey over the last
position of each partition together with one completion signal per ``after`` PCollection, can
only run after every one of those PCollections is complete, i.e. after the sinks have delivered
(in a bounded run a GroupByKey fires only when all of its input is done). Hence:

* a crash or failure anywhere before that step leaves the old checkpoints: the next run re-reads
  those events (at-least-once; the pipeline's 24-hour dedupe by ``event_id`` absorbs the copies);
* nothing is ever skipped, because a checkpoint only moves past events whose effects are already
  delivered;
* a run that delivered everything but crashed while writing the files re-reads only the partitions
  whose file was not yet replaced.

This was chosen over committing from the reader (at bundle finalization, as KafkaIO's
``commitOffsetsInFinalize`` does): finalization means the runner has durably taken the records, not
that the sinks delivered them, which is not enough for a batch run that may fail later and is
simply run again. The cost is one extra pass over the records (a Map and a per-partition max,
combined before the shuffle).

Concurrent runs with the same checkpoint store and consumer group are not supported (each would
re-read what the other is reading). Without a checkpoint store every run starts at the
beginning.

Choosing an input (``--input``)
===============================

* ``eventhubs://HUB?connection_string_env=VAR&consumer_group=G&checkpoint_dir=D&mode=catchup|live``
  (or ``checkpoint_container=C&checkpoint_connection_string_env=VAR2`` for Blob checkpoints):
  :class:`ReadFromEventHubs` (this module);
* ``kafka://NAMESPACE.servicebus.windows.net:9093/HUB?connection_string_env=VAR``: Beam's
  ``apache_beam.io.kafka.ReadFromKafka`` on the Event Hubs Kafka endpoint (or any Kafka broker:
  ``kafka://BROKER:9092/TOPIC[?username=U&password_env=VAR]``);
* ``pubsub://projects/P/subscriptions/S`` (or ``.../topics/T``): Beam's
  ``apache_beam.io.gcp.pubsub.ReadFromPubSub``;
* anything else: files (a JSON Lines / Parquet path or glob), as before.

Which to use when:

* ``eventhubs://`` is pure Python, with no expansion service: it runs wherever the Python SDK
  harness runs. Tested here on the DirectRunner and on the PortableRunner (``--job_endpoint=embed``,
  the Runner API / Fn API path that Flink and Dataflow Runner v2 take); Flink and Dataflow
  themselves cannot run here. Use it for catch-up runs with durable checkpoints (batch), for local
  runs against the bundled endpoint (``python -m emulators.eventhubs``), and for live streams of
  moderate rate (``mode=live`` with ``--streaming`` on Flink or Dataflow). Its throughput per
  worker is bounded by the SDK's pure-Python AMQP stack (about 70 us of CPU per event): a
  catch-up run of 100k events from the local endpoint read 6,500-6,900 events/s on a 2-core
  machine, start-up included (4,000-5,100 while other jobs shared its cores;
  ``python -m bench.eventhubs_catchup``).
* ``kafka://`` uses Java's KafkaIO through a cross-language expansion service: on Flink (the job
  server's expansion service, ``expansion_service=localhost:8097``) and on Dataflow it is the
  mature high-throughput choice for a live stream from an Event Hubs namespace of the Standard tier
  or above (its offsets are committed to the Kafka consumer group at bundle finalization). It needs
  Java and Beam's expansion-service jar from Maven.
* ``pubsub://`` is for events mirrored to Google Pub/Sub, read by Dataflow's native Pub/Sub source
  (streaming only; ``timestamp_attribute`` takes event times from a message attribute).

What cannot run on this machine: ``kafka://`` (Beam's Java expansion-service jar comes from Maven,
which is out of reach here, and there is no Kafka broker) and ``pubsub://`` (no GCP project);
:func:`build_live_source` still builds their transforms, without expanding or running them, so
tests check their configuration.

Secrets never appear on the command line: an ``eventhubs://`` or ``kafka://`` URI names the
environment variable that holds the connection string or password (``connection_string_env=``,
``password_env=``); a URI with a literal ``connection_string=``, ``password=``, key or signature is
refused, and so is one with user info. Nothing here logs the connection string or key. An
``eventhubs://`` read from the process's environment carries only the variables' names
(:class:`core.config.EnvRef`): its DoFns resolve them in ``setup()`` from the worker's
environment, so the staged pipeline holds no Event Hubs or storage key (docs/DEPLOY.md, "Secrets
on workers", says how to set them there). ReadFromKafka's ``sasl.jaas.config`` is Java's and
does carry the password.
"""
import collections
import concurrent.futures
import dataclasses
import datetime
import logging
import os
import re
import threading
import time
import typing
import urllib.parse

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from clients.checkpoints import (BlobStorageCheckpointStore, Checkpoint,
                                 CheckpointError, LocalCheckpointStore)
from clients.checkpoints import NAME as _NAME
from clients.checkpoints import OWNERSHIP_EXPIRY_SECONDS
from clients.checkpoints import fully_qualified_namespace as _fully_qualified_namespace
from core.config import EnvRef
from core.redact import reveal, secret_parts
# The sink's connection-string parsing, secret holder and error descriptions, so both directions
# report credentials and endpoints in the same words and redact the same way.
from transforms.eventhubs import (EventHubsDeliveryError, _describe, _is_auth_error,
                                  _is_not_found, _is_unreachable, _one_line, _Secret,
                                  parse_connection_string)

_LOGGER = logging.getLogger(__name__)

#: Events handed to the pipeline per consumer pull.
DEFAULT_MAX_BATCH_SIZE = 500
#: How long one pull waits for the first event before the read counts as idle.
DEFAULT_MAX_WAIT_SECONDS = 1.0
#: Live mode: how long a busy partition's read call runs before it ends and is resumed. A runner
#: may pass on what a call emitted only when the call ends (Prism does), so this bounds how long
#: an event waits in the reader.
DEFAULT_MAX_READ_SECONDS = 10.0
#: The stop of a live restriction: "no end" (the largest int64, so any runner can encode it).
UNBOUNDED_STOP = 2 ** 63 - 1
#: ``eventhubs://...&mode=live`` default ``watermark_delay_seconds``: how long after its enqueued
#: time an event's own ``ts`` may lie before the pipelines (which re-timestamp records with ``ts``)
#: count it as late. Events are usually enqueued within seconds of their ``ts``.
LIVE_WATERMARK_DELAY_SECONDS = 60.0

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


class EventHubRecordCoder(coders.Coder):
    """Encodes :class:`EventHubRecord` as a plain tuple: about 2.5x faster than the pickling that
    Beam's fallback coder applies to named tuples (measured: 3.4 vs 8.7 us per round trip)."""

    _TUPLE = coders.TupleCoder([coders.BytesCoder(), coders.VarIntCoder(), coders.StrUtf8Coder(),
                                coders.VarIntCoder(), coders.StrUtf8Coder()])

    def encode(self, value):
        return self._TUPLE.encode(tuple(value))

    def decode(self, encoded):
        return EventHubRecord._make(self._TUPLE.decode(encoded))

    def is_deterministic(self):
        return True

    def to_type_hint(self):
        return EventHubRecord

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


coders.registry.register_coder(EventHubRecord, EventHubRecordCoder)


def _datetime_us(value):
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


def _record(event, partition):
    enqueued = event.enqueued_time      # set by the service on every event it delivers
    return EventHubRecord(_event_body(event), _datetime_us(enqueued) if enqueued else 0,
                          partition, event.sequence_number, event.offset or "")


# ------------------------------------------------------------------------------------------------
# Checkpoints (the stores are Beam-free: clients/checkpoints.py)
# ------------------------------------------------------------------------------------------------

#: The local-directory store under its earlier name, for code that imports it from here.
CheckpointStore = LocalCheckpointStore


def _checked(call, *args):
    """``call(*args)``, with a checkpoint store's error raised as :class:`EventHubsSourceError`."""
    try:
        return call(*args)
    except EventHubsSourceError:
        raise
    except CheckpointError as exc:
        raise EventHubsSourceError(str(exc)) from None


def make_checkpoint_store(settings, checkpoint_dir=None, checkpoint_container=None,
                          checkpoint_connection_string=None):
    """The checkpoint store of a read: local files, a Blob container in Azure's layout, or None.

    ``settings``: the read's :class:`_ClientSettings` (namespace, hub, consumer group).
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
        return _checked(BlobStorageCheckpointStore, checkpoint_connection_string,
                        checkpoint_container, settings.fully_qualified_namespace,
                        settings.eventhub_name, settings.consumer_group)
    if checkpoint_dir:
        return _checked(LocalCheckpointStore, checkpoint_dir, settings.host,
                        settings.eventhub_name, settings.consumer_group)
    return None


# ------------------------------------------------------------------------------------------------
# Client settings
# ------------------------------------------------------------------------------------------------


class _ClientSettings:
    """How to reach the hub; picklable; ``repr`` shows no secret."""

    def __init__(self, connection_string, eventhub_name, consumer_group, retry_total,
                 retry_backoff_factor, retry_backoff_max, timeout_seconds):
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
        if not isinstance(consumer_group, str) or not _NAME.match(consumer_group):
            raise EventHubsSourceError("consumer group %r is not a valid name" % (consumer_group,))
        if retry_total < 0 or retry_backoff_factor < 0 or retry_backoff_max < 0:
            raise EventHubsSourceError("retry settings must not be negative")
        if timeout_seconds <= 0:
            raise EventHubsSourceError("timeout_seconds must be positive")
        self.connection_string = (connection_string if isinstance(connection_string, EnvRef)
                                  else _Secret(connection_string))
        # Passed to the SDK only when the connection string has no EntityPath (the SDK refuses
        # two names for one hub).
        self.explicit_hub = None if entity else hub
        self.eventhub_name = hub
        self.host = info["host"]
        self.namespace = info["namespace"]
        # The event processor's name of the namespace (host[:port]), used by Blob checkpoints.
        self.fully_qualified_namespace = _fully_qualified_namespace(info["endpoint"])
        self.consumer_group = consumer_group
        self.retry_total = int(retry_total)
        self.retry_backoff_factor = float(retry_backoff_factor)
        self.retry_backoff_max = float(retry_backoff_max)
        self.timeout_seconds = float(timeout_seconds)

    @property
    def target(self):
        """``namespace/hub (consumer group X)``: safe to show."""
        return "%s/%s (consumer group %s)" % (self.namespace, self.eventhub_name,
                                              self.consumer_group)

    def consumer_client(self):
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

    def describe_error(self, exc, doing):
        """One secret-free line for an SDK failure while ``doing`` something."""
        info = parse_connection_string(reveal(self.connection_string))
        if _is_not_found(exc):
            # On the consumer side a missing consumer group is "not found" too.
            return ("Event Hubs %s was not found (check the event hub name and the consumer "
                    "group)" % self.target)
        if _is_auth_error(exc) or _is_unreachable(exc):
            return _describe(exc, info, self.eventhub_name)
        return "Event Hubs %s: %s failed: %s" % (self.target, doing, _one_line(exc, info))

    def __repr__(self):
        return "_ClientSettings(%s)" % self.target


def _close_quietly(closable, what):
    if closable is None:
        return
    try:
        closable.close()
    except Exception as exc:  # pylint: disable=broad-except
        _LOGGER.debug("closing the Event Hubs %s failed: %s", what, type(exc).__name__)


# ------------------------------------------------------------------------------------------------
# Planning: one element per partition
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


def plan_partition(partition, properties, checkpoint, bounded, watermark_delay_us=0):
    """The :class:`PartitionPlan` of one partition from its properties and checkpoint.

    ``properties`` is the SDK's ``get_partition_properties`` dict. Pure (no I/O), so it is tested
    on its own.
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
        Metrics.counter("eventhubs", "events_expired_unread").inc(begin - start)
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


class _PlanPartitions(beam.DoFn):
    """Impulse -> one :class:`PartitionPlan` per partition of the hub."""

    def __init__(self, settings, store, bounded, watermark_delay_seconds=0.0):
        self._settings = settings
        self._store = store
        self._bounded = bounded
        self._watermark_delay_us = int(watermark_delay_seconds * 1_000_000)
        self._client = None

    def setup(self):
        self._client = self._settings.consumer_client()

    def teardown(self):
        _close_quietly(self._client, "consumer client")
        self._client = None
        if self._store is not None:
            self._store.close()

    def _checkpoints(self):
        """The store's checkpoints by partition; refuses partitions an event processor reads."""
        if self._store is None:
            return {}
        owners = _checked(self._store.live_owners)
        if owners:
            partition, owner = sorted(owners.items())[0]
            raise EventHubsSourceError(
                "Event Hubs %s: partition %s is being read by event processor %s (its ownership "
                "in %s is less than %d s old); two readers of one consumer group would each "
                "deliver the events and move the checkpoints: stop the processor or use another "
                "consumer group" % (self._settings.target, partition, owner,
                                    self._store.description, OWNERSHIP_EXPIRY_SECONDS))
        return _checked(self._store.read_all)

    def process(self, unused_impulse):
        try:
            partition_ids = self._client.get_partition_ids()
            # One management call per partition (a connection and a CBS handshake each): in
            # parallel, so planning a 32-partition hub takes about as long as a 1-partition one.
            with concurrent.futures.ThreadPoolExecutor(min(8, len(partition_ids) or 1)) as pool:
                properties = list(pool.map(self._client.get_partition_properties, partition_ids))
        except EventHubsSourceError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise EventHubsSourceError(
                self._settings.describe_error(exc, "reading the partitions")) from None
        checkpoints = self._checkpoints()
        for partition, props in zip(partition_ids, properties):
            checkpoint = checkpoints.get(partition)
            plan = plan_partition(partition, props, checkpoint, self._bounded,
                                  self._watermark_delay_us)
            if self._bounded:
                _LOGGER.info("Event Hubs %s partition %s: reading sequence numbers [%d, %d), "
                             "%d events", self._settings.target, partition, plan.start,
                             plan.stop, plan.stop - plan.start)
            else:
                _LOGGER.info("Event Hubs %s partition %s: reading live from sequence number %d",
                             self._settings.target, partition, plan.start)
            yield plan


# ------------------------------------------------------------------------------------------------
# The splittable DoFn
# ------------------------------------------------------------------------------------------------


class SequenceRangeTracker(OffsetRestrictionTracker):
    """An ``OffsetRestrictionTracker`` over sequence numbers that knows live ranges have no end.

    A live range (``stop == UNBOUNDED_STOP``) is unbounded (so a drain stops it), splits only at 0
    (a checkpoint; see the module docstring) and reports progress as work done and "some" left.
    """

    def is_bounded(self):
        return self._range.stop != UNBOUNDED_STOP

    def try_split(self, fraction_of_remainder):
        if not self.is_bounded() and fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)

    def current_progress(self):
        if self.is_bounded():
            return super().current_progress()
        done = 0 if self._current_position is None else \
            self._current_position - self._range.start + 1
        # The fraction too: Beam's SDF operation replaces ``completed`` with its estimate of the
        # bytes output so far, which was NaN when Prism asked to split a live read (Beam 2.77),
        # and a split computed from a NaN fraction fails the bundle; a given fraction is kept.
        return RestrictionProgress(fraction=done / (done + 1.0), completed=done, remaining=1)


class _SequenceRangeProvider(RestrictionProvider):
    """Restrictions of a partition plan: ``OffsetRange(start, stop)`` of sequence numbers."""

    def initial_restriction(self, plan):
        return OffsetRange(plan.start, plan.stop)

    def create_tracker(self, restriction):
        return SequenceRangeTracker(restriction)

    def restriction_size(self, plan, restriction):
        if restriction.stop == UNBOUNDED_STOP:
            return 1              # unknown: the runner only needs a positive number
        return max(0, restriction.stop - restriction.start)


class _EnqueuedTimeWatermarks(WatermarkEstimatorProvider):
    """A manual watermark that the reader moves to the enqueued time of what it emitted."""

    def initial_estimator_state(self, plan, restriction):
        if plan.watermark_us is None:
            return None
        return Timestamp(micros=plan.watermark_us)

    def create_watermark_estimator(self, estimator_state):
        return ManualWatermarkEstimator(estimator_state)


_RESTRICTIONS = _SequenceRangeProvider()
_WATERMARKS = _EnqueuedTimeWatermarks()


class _PartitionReader:
    """A pull reader of one partition: the SDK's per-partition consumer and what it prefetched.

    ``position`` is the sequence number the reader continues from: the next :meth:`read` returns
    events with sequence numbers >= position, in order (gaps possible where events expired).
    """

    def __init__(self, client, consumer_group, partition, position, prefetch):
        self.partition = partition
        self.position = position
        self.redelivered = 0               # copies the SDK delivered again after a reconnect
        self._redelivered = Metrics.counter("eventhubs", "redelivered_dropped")
        self._buffer = collections.deque()
        # event_position_inclusive: the event *at* ``position`` is the first one wanted.
        self._consumer = client._create_consumer(  # pylint: disable=protected-access
            consumer_group, partition, position, self._buffer.extend,
            event_position_inclusive=True, prefetch=prefetch)

    def read(self, max_batch_size, max_wait_seconds):
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
                self._redelivered.inc()
                continue
            events.append(event)
            self.position = sequence_number + 1
        return events

    def unread(self, events):
        """Puts back events that were read but not used; the next read returns them first."""
        if events:
            self._buffer.extendleft(reversed(events))
            self.position = events[0].sequence_number

    def close(self):
        _close_quietly(self._consumer, "partition consumer")
        self._consumer = None


def _observe(watermark_estimator, timestamp, delay):
    """Moves the watermark to ``timestamp`` (the last emitted event's) minus ``delay``, never back.

    Called once per pull, not per event: a partition's enqueued times never decrease, so the last
    one emitted bounds every later event's (and a lower watermark in between is always safe).
    """
    if timestamp is None:
        return
    timestamp = timestamp - delay
    current = watermark_estimator.current_watermark()
    if current is None or timestamp > current:
        watermark_estimator.set_watermark(timestamp)


class _ReadPartitionFn(beam.DoFn):
    """The splittable DoFn of a catch-up read: a partition plan's bounded sequence-number range.

    See the module docstring for the design; :class:`_ReadPartitionLiveFn` is the live variant.
    """

    #: Open partition links kept between calls (each holds a TCP connection).
    MAX_OPEN_READERS = 16

    def __init__(self, settings, max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 max_wait_seconds=DEFAULT_MAX_WAIT_SECONDS, prefetch=None,
                 idle_watermark_lag_seconds=5.0, watermark_delay_seconds=0.0,
                 max_read_seconds=DEFAULT_MAX_READ_SECONDS, stall_seconds=None):
        self._settings = settings
        self._max_batch_size = int(max_batch_size)
        self._max_wait_seconds = float(max_wait_seconds)
        # Link credit: enough for two pulls in flight, so the service streams while we emit.
        self._prefetch = int(prefetch or max(300, 2 * self._max_batch_size))
        self._idle_lag = Duration(seconds=idle_watermark_lag_seconds)
        self._watermark_delay = Duration(seconds=watermark_delay_seconds)
        self._max_read_seconds = float(max_read_seconds)
        self._stall_seconds = float(stall_seconds if stall_seconds is not None
                                    else max(60.0, 2 * settings.timeout_seconds))
        self._client = None
        self._readers = collections.OrderedDict()
        self._records_read = Metrics.counter("eventhubs", "records_read")
        self._bytes_read = Metrics.counter("eventhubs", "bytes_read")
        self._gaps = Metrics.counter("eventhubs", "sequence_gaps")

    # -- lifecycle ---------------------------------------------------------------------------

    def setup(self):
        self._client = self._settings.consumer_client()

    def teardown(self):
        readers = list(self._readers.values())
        self._readers.clear()
        if len(readers) > 1:
            # Closing a link waits for the SDK's keep-alive thread (up to a second): in parallel.
            with concurrent.futures.ThreadPoolExecutor(min(8, len(readers))) as pool:
                list(pool.map(_PartitionReader.close, readers))
        elif readers:
            readers[0].close()
        _close_quietly(self._client, "consumer client")
        self._client = None

    # -- reading -----------------------------------------------------------------------------

    def process(self, plan, tracker=beam.DoFn.RestrictionParam(_RESTRICTIONS),
                watermark_estimator=beam.DoFn.WatermarkEstimatorParam(_WATERMARKS)):
        yield from self._read(plan, tracker, watermark_estimator, bounded=True)

    def _reader(self, partition, position):
        """The open reader of ``partition`` if it continues at ``position``, else a new one."""
        reader = self._readers.pop(partition, None)
        if reader is not None and reader.position != position:
            reader.close()
            reader = None
        if reader is None:
            if self._client is None:        # process() called without setup() (direct tests)
                self.setup()
            reader = _PartitionReader(self._client, self._settings.consumer_group, partition,
                                      position, self._prefetch)
        self._readers[partition] = reader   # most recently used last
        while len(self._readers) > self.MAX_OPEN_READERS:
            _, oldest = self._readers.popitem(last=False)
            oldest.close()
        return reader

    def _drop_reader(self, partition):
        reader = self._readers.pop(partition, None)
        if reader is not None:
            reader.close()

    def _read(self, plan, tracker, watermark_estimator, bounded):
        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            return                          # an empty range: nothing to claim
        partition = plan.partition
        expected = restriction.start
        started = last_progress = time.monotonic()
        try:
            reader = self._reader(partition, restriction.start)
            while True:
                if expected >= tracker.current_restriction().stop:
                    # The range is done; also when a split moved its end while we waited.
                    return
                events = reader.read(self._max_batch_size, self._max_wait_seconds)
                now = time.monotonic()
                if not events:
                    if not bounded:
                        # Idle: let the runner checkpoint here and call again shortly; the link
                        # stays open in the meantime.
                        self._advance_idle_watermark(watermark_estimator)
                        tracker.defer_remainder(Duration(seconds=self._max_wait_seconds))
                        return
                    if now - last_progress >= self._stall_seconds:
                        if self._finish_if_expired(plan, tracker, expected):
                            return
                        raise EventHubsSourceError(
                            "Event Hubs %s partition %s: no event for %.0f s at sequence number "
                            "%d, before the end of the range (%d)" % (
                                self._settings.target, partition, now - last_progress, expected,
                                tracker.current_restriction().stop))
                    continue
                last_progress = now
                timestamp = None
                for index, event in enumerate(events):
                    sequence_number = event.sequence_number
                    if not tracker.try_claim(sequence_number):
                        # Past the (possibly split) range: keep the rest for the next caller.
                        reader.unread(events[index:])
                        _observe(watermark_estimator, timestamp, self._watermark_delay)
                        return
                    if sequence_number != expected:
                        self._gaps.inc(sequence_number - expected)
                    expected = sequence_number + 1
                    record = _record(event, partition)
                    self._records_read.inc()
                    self._bytes_read.inc(len(record.body))
                    timestamp = Timestamp(micros=record.enqueued_time_us)
                    yield TimestampedValue(record, timestamp)
                _observe(watermark_estimator, timestamp, self._watermark_delay)
                if not bounded and time.monotonic() - started >= self._max_read_seconds:
                    # A busy live partition still ends its call now and then, so the runner can
                    # commit what was emitted and checkpoint the read.
                    tracker.defer_remainder()
                    return
        except GeneratorExit:
            # The runner abandoned this call midway (its bundle failed): the retry starts from
            # the restriction's start on a fresh link rather than trusting this one's state.
            self._drop_reader(partition)
            raise
        except EventHubsSourceError:
            self._drop_reader(partition)
            raise
        except Exception as exc:  # pylint: disable=broad-except
            self._drop_reader(partition)
            raise EventHubsSourceError(self._settings.describe_error(
                exc, "reading partition %s" % partition)) from None

    def _advance_idle_watermark(self, watermark_estimator):
        # An idle partition's next event is enqueued after "now" (service clock); the lag covers
        # events still in flight and clock skew between the service and this worker.
        candidate = Timestamp.now() - self._idle_lag - self._watermark_delay
        current = watermark_estimator.current_watermark()
        if current is None or candidate > current:
            watermark_estimator.set_watermark(candidate)

    def _finish_if_expired(self, plan, tracker, expected):
        """Ends the restriction if the events still to read have all expired; True if it did."""
        props = self._client.get_partition_properties(plan.partition)
        begin = int(props.get("beginning_sequence_number") or 0)
        stop = tracker.current_restriction().stop
        if begin < stop:
            return False
        _LOGGER.warning("Event Hubs %s partition %s: events %d to %d expired before they were "
                        "read (retention)", self._settings.target, plan.partition, expected,
                        stop - 1)
        Metrics.counter("eventhubs", "events_expired_unread").inc(stop - expected)
        tracker.try_claim(stop)             # claims nothing; marks the range as done
        return True


class _ReadPartitionLiveFn(_ReadPartitionFn):
    """The live variant: unbounded output, deferred while idle, watermark by enqueued time."""

    @beam.DoFn.unbounded_per_element()
    def process(self, plan, tracker=beam.DoFn.RestrictionParam(_RESTRICTIONS),
                watermark_estimator=beam.DoFn.WatermarkEstimatorParam(_WATERMARKS)):
        yield from self._read(plan, tracker, watermark_estimator, bounded=False)


# ------------------------------------------------------------------------------------------------
# Committing checkpoints
# ------------------------------------------------------------------------------------------------


def _position(record):
    return record.partition, (record.sequence_number, record.offset, record.enqueued_time_us)


def _last_position(positions):
    # Tuples compare by sequence number first: the max is the partition's last event.
    return max(positions, default=None)


class _WriteCheckpoints(beam.DoFn):
    def __init__(self, store):
        self._store = store
        self._committed = Metrics.counter("eventhubs", "checkpoints_committed")

    def teardown(self):
        self._store.close()

    def process(self, element):
        _, items = element
        positions = sorted(value for tag, value in items if tag == "position")
        for partition, (sequence_number, offset, enqueued_us) in positions:
            stored = _checked(self._store.write,
                              Checkpoint(partition, sequence_number, offset, enqueued_us))
            self._committed.inc()
            _LOGGER.info("Event Hubs checkpoint committed: %s partition %s at sequence number %d",
                         self._store.description, partition, stored.sequence_number)
            yield stored


class CommitCheckpoints(beam.PTransform):
    """Writes each partition's last read event to the checkpoint store, after ``after`` is done.

    Input: the :class:`EventHubRecord` PCollection of a *bounded* :class:`ReadFromEventHubs`.
    ``after``: the PCollections that must be complete before the checkpoints move (pass every
    terminal PCollection of the pipeline: sink results, dead-letter writes, logs). Output: the
    :class:`Checkpoint` s written (one per partition that had records).

    Usually applied through :meth:`ReadFromEventHubs.commit_checkpoints`.
    """

    def __init__(self, store, after=(), label=None):
        super().__init__(label)
        if store is None:
            raise EventHubsSourceError("CommitCheckpoints needs a checkpoint store "
                                       "(ReadFromEventHubs(checkpoint_dir=...) or "
                                       "checkpoint_container=...)")
        self._store = store
        self._after = list(after)
        if not self._after:
            _LOGGER.warning("CommitCheckpoints without after=: checkpoints move once the read is "
                            "done, not once the sinks have delivered")

    def expand(self, records):
        if not records.is_bounded:
            raise EventHubsSourceError(
                "CommitCheckpoints is for catch-up (bounded) reads: a live read's position is kept "
                "by the runner's own checkpoints")
        for index, pcoll in enumerate(self._after):
            if not isinstance(pcoll, beam.PCollection):
                raise TypeError("after[%d] is not a PCollection" % index)
        positions = (records
                     | "Positions" >> beam.Map(_position)
                     | "LastPerPartition" >> beam.CombinePerKey(_last_position)
                     | "TagPositions" >> beam.Map(lambda kv: (0, ("position", kv))))
        signals = []
        for index, pcoll in enumerate(self._after):
            # One element per input once it is complete (also when it is empty); global window,
            # so differently windowed inputs meet in the GroupByKey below.
            signals.append(
                pcoll
                | "GlobalWindow%d" % index >> beam.WindowInto(beam.window.GlobalWindows())
                | "Complete%d" % index >> beam.combiners.Count.Globally()
                | "TagComplete%d" % index >> beam.Map(lambda n: (0, ("done", n))))
        # The GroupByKey fires once all of its input is complete: the positions and every
        # completion signal. That is what orders the commit after the sinks (a side input would
        # do too, but the FnApiRunner re-runs side-input consumers in pipelines with timers).
        return ((positions, *signals)
                | "Merge" >> beam.Flatten()
                | "AwaitOutput" >> beam.GroupByKey()
                | "WriteCheckpoints" >> beam.ParDo(_WriteCheckpoints(self._store)))


# ------------------------------------------------------------------------------------------------
# The public source
# ------------------------------------------------------------------------------------------------


class ReadFromEventHubs(beam.PTransform):
    """Reads an Azure event hub's partitions as a PCollection of :class:`EventHubRecord`.

    Elements are timestamped with their enqueued time. With ``bounded=True`` (catch-up) the read
    stops at each partition's end as of the start of the run; with ``bounded=False`` (live) it
    never stops and needs a streaming runner. See the module docstring for the design and for
    what checkpoints guarantee.

    :param connection_string: ``Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...``,
        with ``EntityPath`` or ``eventhub_name``; or a :class:`core.config.EnvRef` to one (then
        only the variable's name travels with the pipeline, and workers resolve it in
        ``setup()``). Checked at construction (one line naming the missing part, never a
        value); never logged nor shown in display data.
    :param eventhub_name: the event hub, when the connection string has no ``EntityPath``.
    :param consumer_group: the consumer group to read as (``$Default``).
    :param checkpoint_dir: local directory of the checkpoint files.
    :param checkpoint_container: an Azure Blob container for the checkpoints, in the layout of
        Azure's ``azure-eventhub-checkpointstoreblob`` (``clients/checkpoints.py``), so the
        SDK's event processors and this read continue from each other's positions. Excludes
        ``checkpoint_dir``. Neither: always read from the beginning, and
        :meth:`commit_checkpoints` is unavailable.
    :param checkpoint_connection_string: the storage account's connection string for
        ``checkpoint_container`` (a string or a :class:`core.config.EnvRef`).
    :param bounded: True for a catch-up run, False for a live stream.
    :param max_batch_size: events taken per pull from the consumer.
    :param max_wait_seconds: how long a pull waits for the first event; in live mode, the idle
        time after which a partition's read is deferred (and resumed after as long again).
    :param prefetch: the consumer link's credit (events the service may send ahead);
        default ``max(300, 2 * max_batch_size)``.
    :param retry_total: the SDK's retries per operation (reconnects included).
    :param retry_backoff_factor: the SDK's exponential backoff base, seconds.
    :param retry_backoff_max: the longest backoff, seconds.
    :param timeout_seconds: the CBS authentication timeout; a catch-up read that gets no event
        for ``max(60, 2 * timeout_seconds)`` seconds before the end of its range fails the bundle
        (the runner retries it).
    :param idle_watermark_lag_seconds: live mode: while a partition is idle its watermark is
        "now" minus this (and minus ``watermark_delay_seconds``).
    :param watermark_delay_seconds: how far the watermark is held behind the enqueued times: the
        delay between an event's own time and its arrival that downstream steps which
        re-timestamp records (the pipeline's parser uses ``ts``) tolerate before calling it late.
        0 (the default) fits consumers of the records' own timestamps.
    :param max_read_seconds: live mode: a busy partition's call ends (and is resumed at once)
        after this long, so the runner can commit output and checkpoint.
    """

    def __init__(self, connection_string, eventhub_name=None, consumer_group="$Default",
                 checkpoint_dir=None, bounded=True, max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 max_wait_seconds=DEFAULT_MAX_WAIT_SECONDS, *, prefetch=None, retry_total=3,
                 retry_backoff_factor=0.8, retry_backoff_max=30.0, timeout_seconds=60.0,
                 idle_watermark_lag_seconds=5.0, watermark_delay_seconds=0.0,
                 max_read_seconds=DEFAULT_MAX_READ_SECONDS, checkpoint_container=None,
                 checkpoint_connection_string=None, label=None):
        super().__init__(label)
        if int(max_batch_size) < 1:
            raise EventHubsSourceError("max_batch_size must be at least 1")
        if not float(max_wait_seconds) > 0:
            raise EventHubsSourceError("max_wait_seconds must be positive")
        if not float(watermark_delay_seconds) >= 0 or not float(idle_watermark_lag_seconds) >= 0:
            raise EventHubsSourceError("watermark delays must not be negative")
        if prefetch is not None and int(prefetch) < 1:
            raise EventHubsSourceError("prefetch must be at least 1")
        self._settings = _ClientSettings(connection_string, eventhub_name, consumer_group,
                                         retry_total, retry_backoff_factor, retry_backoff_max,
                                         timeout_seconds)
        self.checkpoint_store = make_checkpoint_store(
            self._settings, checkpoint_dir, checkpoint_container, checkpoint_connection_string)
        self.bounded = bool(bounded)
        self._read_options = {"max_batch_size": int(max_batch_size),
                              "max_wait_seconds": float(max_wait_seconds), "prefetch": prefetch,
                              "idle_watermark_lag_seconds": float(idle_watermark_lag_seconds),
                              "watermark_delay_seconds": float(watermark_delay_seconds),
                              "max_read_seconds": float(max_read_seconds)}

    @property
    def eventhub_name(self):
        return self._settings.eventhub_name

    @property
    def consumer_group(self):
        return self._settings.consumer_group

    @property
    def target(self):
        """``namespace/hub (consumer group X)``, for messages (no secret)."""
        return self._settings.target

    def read_fn(self):
        """The splittable DoFn this transform applies (for tests and custom wiring)."""
        fn_class = _ReadPartitionFn if self.bounded else _ReadPartitionLiveFn
        return fn_class(self._settings, **self._read_options)

    def plan_fn(self):
        """The planning DoFn this transform applies (for tests and custom wiring)."""
        return _PlanPartitions(self._settings, self.checkpoint_store, self.bounded,
                               self._read_options["watermark_delay_seconds"])

    def expand(self, pbegin):
        return (pbegin
                | "Impulse" >> beam.Impulse()
                | "PlanPartitions" >> beam.ParDo(self.plan_fn())
                | "DistributePartitions" >> beam.Reshuffle()
                | "ReadPartitions" >> beam.ParDo(self.read_fn()).with_output_types(EventHubRecord))

    def verify(self, timeout_seconds=10.0):
        """Checks, before any data moves, that the hub can be read with these credentials.

        One management call (the partition ids) without the SDK's retries, so a rejected key fails
        in about a second instead of after every retry. Returns the partition ids. Raises
        :class:`EventHubsSourceError` with one secret-free line: ``Event Hubs rejected the
        credentials for <namespace>/<hub>``, ``... is unreachable``, ``... was not found``. An
        endpoint that does not answer within ``timeout_seconds`` counts as unreachable.
        """
        settings = _ClientSettings(reveal(self._settings.connection_string),
                                   self._settings.explicit_hub, self._settings.consumer_group,
                                   0, 0.1, 1, max(1.0, float(timeout_seconds)))
        outcome = {}

        def check():
            client = None
            try:
                client = settings.consumer_client()
                outcome["ids"] = client.get_partition_ids()
            except Exception as exc:  # pylint: disable=broad-except
                outcome["error"] = exc
            finally:
                _close_quietly(client, "consumer client")

        # The SDK can block without a deadline on an endpoint that accepts TCP and stays silent.
        thread = threading.Thread(target=check, name="eventhubs-source-verify", daemon=True)
        thread.start()
        thread.join(timeout_seconds)
        if thread.is_alive():
            raise EventHubsSourceError("Event Hubs endpoint %s is unreachable (no answer within "
                                       "%s s)" % (settings.namespace, timeout_seconds))
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, EventHubsSourceError):
                raise error
            raise EventHubsSourceError(settings.describe_error(error, "listing the partitions")) \
                from None
        if self.checkpoint_store is not None:
            # The checkpoints can be read (a wrong storage key fails here, in one line).
            try:
                _checked(self.checkpoint_store.read_all)
            finally:
                self.checkpoint_store.close()
        return outcome["ids"]

    def commit_checkpoints(self, records, after=(), label="CommitEventHubsCheckpoints"):
        """Applies :class:`CommitCheckpoints` to ``records`` (this transform's output).

        ``after``: every terminal PCollection of the pipeline (what the sinks output), so the
        checkpoints move only once everything read has been delivered. Returns the PCollection of
        :class:`Checkpoint` s written, or None when there is nothing to commit: without a
        ``checkpoint_dir`` (logged as a warning: every run reads from the beginning) and in live
        mode (a live read's position is kept by the runner's own checkpoints). So a pipeline can
        call it for any ``eventhubs://`` input.
        """
        if not self.bounded:
            _LOGGER.info("Event Hubs %s: live read, no checkpoint files are written (the "
                         "runner's own checkpoints keep the position)", self.target)
            return None
        if self.checkpoint_store is None:
            _LOGGER.warning("Event Hubs %s: no checkpoint store, so no checkpoints: the next run "
                            "reads every partition from the beginning again", self.target)
            return None
        return records | label >> CommitCheckpoints(self.checkpoint_store, after=after)

    def display_data(self):
        data = {"eventhub": DisplayDataItem("%s/%s" % (self._settings.namespace,
                                                       self._settings.eventhub_name),
                                            label="Event Hub"),
                "consumer_group": DisplayDataItem(self._settings.consumer_group,
                                                  label="Consumer group"),
                "mode": DisplayDataItem("catchup" if self.bounded else "live", label="Mode")}
        if self.checkpoint_store is not None:
            data["checkpoints"] = DisplayDataItem(self.checkpoint_store.description,
                                                  label="Checkpoints")
        return data


# ------------------------------------------------------------------------------------------------
# Input URIs
# ------------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Query parameters that would carry a secret on the command line: refused everywhere.
_SECRET_PARAMETER = re.compile(
    r"(?i)^(connection_?string|connectionstring|shared_?access_?key(_?name)?|sharedaccesskey|"
    r"shared_?access_?signature|sas|sas_?token|key|account_?key|password|passwd|pwd|secret|"
    r"token|sasl\.jaas\.config|sasl_?jaas_?config)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class FileInput:
    """A file or glob of JSON Lines / Parquet files: the pipelines' bounded file input."""
    pattern: str
    kind: typing.ClassVar[str] = "file"
    live: typing.ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class EventHubsInput:
    """``eventhubs://HUB?connection_string_env=VAR&consumer_group=G&checkpoint_dir=D&mode=M``.

    Checkpoints in an Azure Blob container instead of ``checkpoint_dir``:
    ``checkpoint_container=NAME&checkpoint_connection_string_env=VAR`` (the layout of Azure's
    ``azure-eventhub-checkpointstoreblob``; see ``clients/checkpoints.py``). Also
    ``max_batch_size``, ``max_wait_seconds``, ``max_read_seconds`` (live mode: see
    :data:`DEFAULT_MAX_READ_SECONDS`) and ``watermark_delay_seconds`` (default
    :data:`LIVE_WATERMARK_DELAY_SECONDS` with ``mode=live``, since the pipelines re-timestamp
    records with their own ``ts``; 0 with ``mode=catchup``, where the watermark only ends the run).
    ``eventhub_name`` is None when the URI has no host (``eventhubs:///?...``): the connection
    string's ``EntityPath`` names the hub.
    """
    eventhub_name: typing.Optional[str]
    connection_string_env: str
    consumer_group: str = "$Default"
    checkpoint_dir: typing.Optional[str] = None
    mode: str = "catchup"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    watermark_delay_seconds: float = 0.0
    max_read_seconds: float = DEFAULT_MAX_READ_SECONDS
    checkpoint_container: typing.Optional[str] = None
    checkpoint_connection_string_env: typing.Optional[str] = None
    kind: typing.ClassVar[str] = "eventhubs"
    live: typing.ClassVar[bool] = True

    @property
    def bounded(self):
        return self.mode == "catchup"


@dataclasses.dataclass(frozen=True)
class KafkaInput:
    """``kafka://BROKER[:PORT][,BROKER...]/TOPIC[,TOPIC...]?...`` for Beam's ReadFromKafka.

    With ``connection_string_env`` it is the Event Hubs Kafka endpoint: SASL_SSL, PLAIN, user
    ``$ConnectionString``, the connection string as password (and the broker, when the URI has
    none, is ``<namespace>:9093`` from the connection string). Otherwise ``username`` and
    ``password_env`` give SASL credentials, or none for a plain broker.
    """
    bootstrap_servers: typing.Tuple[str, ...]
    topics: typing.Tuple[str, ...]
    consumer_group: str = "cdp-activation"
    connection_string_env: typing.Optional[str] = None
    username: typing.Optional[str] = None
    password_env: typing.Optional[str] = None
    security_protocol: typing.Optional[str] = None
    sasl_mechanism: str = "PLAIN"
    offset_reset: str = "earliest"
    timestamp_policy: typing.Optional[str] = None
    commit_offsets: bool = True
    max_num_records: typing.Optional[int] = None
    max_read_time: typing.Optional[int] = None
    expansion_service: typing.Optional[str] = None
    kind: typing.ClassVar[str] = "kafka"
    live: typing.ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class PubSubInput:
    """``pubsub://projects/P/subscriptions/S`` or ``pubsub://projects/P/topics/T``.

    Parameters: ``timestamp_attribute`` (element timestamps from that attribute: RFC 3339 or
    epoch milliseconds) and ``id_attribute`` (Dataflow dedupes on it).
    """
    subscription: typing.Optional[str]
    topic: typing.Optional[str]
    timestamp_attribute: typing.Optional[str] = None
    id_attribute: typing.Optional[str] = None
    kind: typing.ClassVar[str] = "pubsub"
    live: typing.ClassVar[bool] = True


def _split_query(uri, query, allowed):
    """The URI's query parameters as a dict; refuses secrets, duplicates and unknown names."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise EventHubsSourceError("input %s: malformed query string" % _shown(uri)) from None
    params = {}
    for name, value in pairs:
        if _SECRET_PARAMETER.match(name):
            raise EventHubsSourceError(
                "input URI parameter %r is refused: a secret must not be on the command line; put "
                "it in an environment variable and name that variable (%s)" % (
                    name, "password_env=VAR" if "pass" in name.lower() or "jaas" in name.lower()
                    else "connection_string_env=VAR"))
        if name in params:
            raise EventHubsSourceError("input %s: parameter %r given twice" % (_shown(uri), name))
        if name not in allowed:
            raise EventHubsSourceError("input %s: unknown parameter %r (allowed: %s)" % (
                _shown(uri), name, ", ".join(sorted(allowed))))
        params[name] = value
    return params


def _shown(uri):
    """The URI without its query string (which might hold something secret-looking)."""
    return uri.split("?", 1)[0]


def _refuse_userinfo(uri, netloc):
    if "@" in netloc:
        raise EventHubsSourceError(
            "input %s: user info (user:password@) is refused in input URIs; name an environment "
            "variable instead" % _shown(uri).split("@")[-1])


def _int_param(uri, params, name, default, minimum=1):
    if name not in params:
        return default
    try:
        value = int(params[name])
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise EventHubsSourceError("input %s: %s must be an integer >= %d" % (
            _shown(uri), name, minimum))
    return value


def _float_param(uri, params, name, default, zero_ok=False):
    if name not in params:
        return default
    try:
        value = float(params[name])
    except ValueError:
        value = None
    if value is None or not (value >= 0 if zero_ok else value > 0) or value == float("inf"):
        raise EventHubsSourceError("input %s: %s must be a %s number" % (
            _shown(uri), name, "non-negative" if zero_ok else "positive"))
    return value


def _bool_param(uri, params, name, default):
    if name not in params:
        return default
    value = params[name].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EventHubsSourceError("input %s: %s must be true or false" % (_shown(uri), name))


def _env_param(uri, params, name, required):
    value = params.get(name)
    if value is None:
        if required:
            raise EventHubsSourceError(
                "input %s: %s=VAR is required (the environment variable holding the secret)"
                % (_shown(uri), name))
        return None
    if not _ENV_NAME.match(value):
        raise EventHubsSourceError(
            "input %s: %s must name an environment variable (letters, digits, '_'), not hold a "
            "value" % (_shown(uri), name))
    return value


def parse_input_uri(uri):
    """What ``--input`` names, without reading the environment or the network.

    Returns a :class:`FileInput` (paths, globs and filesystem URLs such as ``azfs://``/``gs://``),
    :class:`EventHubsInput`, :class:`KafkaInput` or :class:`PubSubInput`. Raises
    :class:`EventHubsSourceError` (one line, secret-free) for a malformed live-source URI or one
    that carries a secret.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise EventHubsSourceError("input is empty")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else None
    if scheme in ("eventhubs", "eventhub", "sb", "amqps"):
        if scheme != "eventhubs":
            raise EventHubsSourceError("input %s: write Event Hubs inputs as eventhubs://HUB?..."
                                       % _shown(uri))
        return _parse_eventhubs(uri)
    if scheme == "kafka":
        return _parse_kafka(uri)
    if scheme == "pubsub":
        return _parse_pubsub(uri)
    return FileInput(uri)


def _parse_eventhubs(uri):
    parsed = urllib.parse.urlsplit(uri)
    _refuse_userinfo(uri, parsed.netloc)
    params = _split_query(uri, parsed.query, {
        "connection_string_env", "consumer_group", "checkpoint_dir", "mode", "max_batch_size",
        "max_wait_seconds", "watermark_delay_seconds", "max_read_seconds",
        "checkpoint_container", "checkpoint_connection_string_env"})
    if parsed.path not in ("", "/") or parsed.fragment:
        raise EventHubsSourceError("input %s: expected eventhubs://HUB?parameters (no path)"
                                   % _shown(uri))
    hub = urllib.parse.unquote(parsed.netloc) or None
    if hub is not None and not _NAME.match(hub):
        raise EventHubsSourceError("input %s: %r is not an event hub name" % (_shown(uri), hub))
    mode = params.get("mode", "catchup").lower()
    if mode not in ("catchup", "live"):
        raise EventHubsSourceError("input %s: mode must be catchup or live" % _shown(uri))
    consumer_group = params.get("consumer_group", "$Default")
    if not _NAME.match(consumer_group):
        raise EventHubsSourceError("input %s: consumer_group %r is not a valid name"
                                   % (_shown(uri), consumer_group))
    checkpoint_dir = params.get("checkpoint_dir") or None
    container = params.get("checkpoint_container") or None
    container_env = _env_param(uri, params, "checkpoint_connection_string_env", required=False)
    if container is not None and not re.match(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$",
                                              container):
        raise EventHubsSourceError("input %s: checkpoint_container %r is not a Blob container "
                                   "name" % (_shown(uri), container))
    if bool(container) != bool(container_env):
        raise EventHubsSourceError(
            "input %s: checkpoint_container and checkpoint_connection_string_env go together (the "
            "container, and the variable holding its storage account's connection string)"
            % _shown(uri))
    if container and checkpoint_dir:
        raise EventHubsSourceError("input %s: checkpoint_dir and checkpoint_container exclude "
                                   "each other" % _shown(uri))
    return EventHubsInput(
        eventhub_name=hub,
        connection_string_env=_env_param(uri, params, "connection_string_env", required=True),
        consumer_group=consumer_group, checkpoint_dir=checkpoint_dir, mode=mode,
        max_batch_size=_int_param(uri, params, "max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        max_wait_seconds=_float_param(uri, params, "max_wait_seconds", DEFAULT_MAX_WAIT_SECONDS),
        max_read_seconds=_float_param(uri, params, "max_read_seconds", DEFAULT_MAX_READ_SECONDS),
        watermark_delay_seconds=_float_param(
            uri, params, "watermark_delay_seconds",
            LIVE_WATERMARK_DELAY_SECONDS if mode == "live" else 0.0, zero_ok=True),
        checkpoint_container=container, checkpoint_connection_string_env=container_env)


_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._$-]+$")
_KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_KAFKA_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_KAFKA_TIMESTAMP_POLICIES = ("ProcessingTime", "CreateTime", "LogAppendTime")
_EVENTHUBS_KAFKA_PORT = 9093


def _is_eventhubs_host(host):
    return host.lower().endswith((".servicebus.windows.net", ".servicebus.chinacloudapi.cn",
                                  ".servicebus.usgovcloudapi.net"))


def _parse_kafka(uri):
    parsed = urllib.parse.urlsplit(uri)
    _refuse_userinfo(uri, parsed.netloc)
    params = _split_query(uri, parsed.query, {
        "connection_string_env", "username", "password_env", "security_protocol",
        "sasl_mechanism", "consumer_group", "offset_reset", "timestamp_policy", "commit_offsets",
        "max_num_records", "max_read_time", "expansion_service"})
    servers = []
    for part in filter(None, parsed.netloc.split(",")):
        host, sep, port = part.rpartition(":") if ":" in part else (part, "", "")
        if not sep:
            host, port = part, str(_EVENTHUBS_KAFKA_PORT if _is_eventhubs_host(part) else 9092)
        if not host or not re.match(r"^[A-Za-z0-9.\[\]:-]+$", host) or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise EventHubsSourceError("input %s: %r is not a broker host:port"
                                       % (_shown(uri), part))
        servers.append("%s:%s" % (host, port))
    topics = tuple(t for t in parsed.path.strip("/").split(",") if t)
    if not topics or not all(_KAFKA_TOPIC.match(t) for t in topics) or parsed.fragment:
        raise EventHubsSourceError("input %s: expected kafka://BROKER:PORT/TOPIC[,TOPIC...]"
                                   % _shown(uri))
    connection_string_env = _env_param(uri, params, "connection_string_env", required=False)
    password_env = _env_param(uri, params, "password_env", required=False)
    username = params.get("username") or None
    if connection_string_env and (password_env or username):
        raise EventHubsSourceError(
            "input %s: connection_string_env (Event Hubs) excludes username/password_env"
            % _shown(uri))
    if bool(username) != bool(password_env):
        raise EventHubsSourceError("input %s: username and password_env go together"
                                   % _shown(uri))
    if not servers and not connection_string_env:
        raise EventHubsSourceError("input %s: no broker (kafka://BROKER:PORT/TOPIC)"
                                   % _shown(uri))
    protocol = params.get("security_protocol")
    if protocol is not None:
        protocol = protocol.upper()
        if protocol not in _KAFKA_PROTOCOLS:
            raise EventHubsSourceError("input %s: security_protocol must be one of %s"
                                       % (_shown(uri), ", ".join(_KAFKA_PROTOCOLS)))
        if connection_string_env and protocol != "SASL_SSL":
            raise EventHubsSourceError("input %s: the Event Hubs Kafka endpoint needs SASL_SSL"
                                       % _shown(uri))
    mechanism = params.get("sasl_mechanism", "PLAIN").upper()
    if mechanism not in _KAFKA_MECHANISMS or (connection_string_env and mechanism != "PLAIN"):
        raise EventHubsSourceError("input %s: sasl_mechanism must be one of %s (PLAIN for Event "
                                   "Hubs)" % (_shown(uri), ", ".join(_KAFKA_MECHANISMS)))
    offset_reset = params.get("offset_reset", "earliest").lower()
    if offset_reset not in ("earliest", "latest"):
        raise EventHubsSourceError("input %s: offset_reset must be earliest or latest"
                                   % _shown(uri))
    policy = params.get("timestamp_policy")
    if policy is not None:
        matches = [p for p in _KAFKA_TIMESTAMP_POLICIES if p.lower() == policy.lower()]
        if not matches:
            raise EventHubsSourceError("input %s: timestamp_policy must be one of %s"
                                       % (_shown(uri), ", ".join(_KAFKA_TIMESTAMP_POLICIES)))
        policy = matches[0]
    consumer_group = params.get("consumer_group", "cdp-activation")
    if not re.match(r"^[A-Za-z0-9._$-]+$", consumer_group):
        raise EventHubsSourceError("input %s: consumer_group %r is not a valid name"
                                   % (_shown(uri), consumer_group))
    expansion_service = params.get("expansion_service") or None
    if expansion_service is not None and not re.match(r"^[A-Za-z0-9.\[\]:-]+:\d+$",
                                                      expansion_service):
        raise EventHubsSourceError("input %s: expansion_service must be host:port" % _shown(uri))
    return KafkaInput(
        bootstrap_servers=tuple(servers), topics=topics, consumer_group=consumer_group,
        connection_string_env=connection_string_env, username=username,
        password_env=password_env, security_protocol=protocol, sasl_mechanism=mechanism,
        offset_reset=offset_reset, timestamp_policy=policy,
        commit_offsets=_bool_param(uri, params, "commit_offsets", True),
        max_num_records=_int_param(uri, params, "max_num_records", None),
        max_read_time=_int_param(uri, params, "max_read_time", None),
        expansion_service=expansion_service)


_PUBSUB_PATH = re.compile(r"^projects/([a-z][a-z0-9-]{4,28}[a-z0-9])/(subscriptions|topics)/"
                          r"([A-Za-z][A-Za-z0-9._~+%-]{2,254})$")


def _parse_pubsub(uri):
    parsed = urllib.parse.urlsplit(uri)
    _refuse_userinfo(uri, parsed.netloc)
    params = _split_query(uri, parsed.query, {"timestamp_attribute", "id_attribute"})
    path = (parsed.netloc + parsed.path).rstrip("/")
    match = _PUBSUB_PATH.match(path)
    if not match or parsed.fragment:
        raise EventHubsSourceError(
            "input %s: expected pubsub://projects/PROJECT/subscriptions/NAME or "
            "pubsub://projects/PROJECT/topics/NAME" % _shown(uri))
    for name in ("timestamp_attribute", "id_attribute"):
        if name in params and not re.match(r"^[A-Za-z0-9_.-]{1,256}$", params[name]):
            raise EventHubsSourceError("input %s: %s is not an attribute name"
                                       % (_shown(uri), name))
    is_subscription = match.group(2) == "subscriptions"
    return PubSubInput(subscription=path if is_subscription else None,
                       topic=None if is_subscription else path,
                       timestamp_attribute=params.get("timestamp_attribute") or None,
                       id_attribute=params.get("id_attribute") or None)


def _from_environment(environ, name, what):
    environ = os.environ if environ is None else environ
    value = environ.get(name)
    if value is None or not value.strip():
        raise EventHubsSourceError("environment variable %s (the %s) is %s" % (
            name, what, "not set" if value is None else "empty"))
    return value.strip()


@dataclasses.dataclass(frozen=True)
class EventHubsSource:
    """An ``eventhubs://`` input with its connection strings resolved (held as secrets).

    ``from_process_environment``: the values came from this process's environment, so the
    transform gets ``${VAR}`` references (:class:`core.config.EnvRef`) that workers resolve
    from theirs, and no secret travels with the pipeline; otherwise (an explicit ``environ``)
    it gets the values.
    """
    spec: EventHubsInput
    connection_string: _Secret = dataclasses.field(repr=False)
    checkpoint_connection_string: typing.Optional[_Secret] = dataclasses.field(default=None,
                                                                               repr=False)
    from_process_environment: bool = False

    def _credential(self, secret, variable, what):
        if secret is None:
            return None
        if self.from_process_environment:
            return EnvRef("${%s}" % variable, "--input %s" % what)
        return secret.reveal()

    def transform(self, **overrides):
        """The :class:`ReadFromEventHubs` for this input (``overrides``: more of its keywords)."""
        kwargs = {"eventhub_name": self.spec.eventhub_name,
                  "consumer_group": self.spec.consumer_group,
                  "checkpoint_dir": self.spec.checkpoint_dir, "bounded": self.spec.bounded,
                  "max_batch_size": self.spec.max_batch_size,
                  "max_wait_seconds": self.spec.max_wait_seconds,
                  "max_read_seconds": self.spec.max_read_seconds,
                  "watermark_delay_seconds": self.spec.watermark_delay_seconds,
                  "checkpoint_container": self.spec.checkpoint_container,
                  "checkpoint_connection_string": self._credential(
                      self.checkpoint_connection_string,
                      self.spec.checkpoint_connection_string_env,
                      "checkpoint_connection_string_env")}
        kwargs.update(overrides)
        return ReadFromEventHubs(self._credential(self.connection_string,
                                                  self.spec.connection_string_env,
                                                  "connection_string_env"), **kwargs)

    @property
    def secrets(self):
        """The secret values of this input, for the launcher's redactor."""
        found = _connection_string_secrets(self.connection_string.reveal())
        if self.checkpoint_connection_string is not None:
            found |= secret_parts(self.checkpoint_connection_string.reveal())
        return found


def parse_eventhubs_uri(uri, environ=None):
    """Parses an ``eventhubs://`` URI and reads its connection string from ``environ``.

    ``eventhubs://<hub>?connection_string_env=VAR&consumer_group=G&checkpoint_dir=D&mode=catchup``
    (``mode``: ``catchup``, the default, or ``live``; also ``max_batch_size``,
    ``max_wait_seconds``, ``max_read_seconds``, ``watermark_delay_seconds``, and
    ``checkpoint_container`` with ``checkpoint_connection_string_env`` instead of
    ``checkpoint_dir``). ``environ`` defaults to ``os.environ``; then the transform carries only
    the variables' names.
    Returns an :class:`EventHubsSource`; ``.transform()`` gives the :class:`ReadFromEventHubs`.

    Raises :class:`EventHubsSourceError` with one line that names what is wrong and never holds
    the connection string: a literal ``connection_string=`` (or key, signature, password) in the
    URI, a missing or empty variable, an unusable connection string, a hub name that differs from
    the connection string's ``EntityPath``.
    """
    spec = parse_input_uri(uri)
    if not isinstance(spec, EventHubsInput):
        raise EventHubsSourceError("input %s is not an eventhubs:// URI" % _shown(uri))
    connection_string = _from_environment(environ, spec.connection_string_env,
                                          "Event Hubs connection string")
    checkpoint_connection_string = None
    if spec.checkpoint_connection_string_env:
        checkpoint_connection_string = _from_environment(
            environ, spec.checkpoint_connection_string_env,
            "Azure Storage connection string of the checkpoint container")
    # Validates the connection strings, the hub and the consumer group now, before data moves.
    settings = _ClientSettings(connection_string, spec.eventhub_name, spec.consumer_group,
                               0, 0, 0, 1)
    make_checkpoint_store(settings, spec.checkpoint_dir, spec.checkpoint_container,
                          checkpoint_connection_string)
    return EventHubsSource(
        spec, _Secret(connection_string),
        _Secret(checkpoint_connection_string) if checkpoint_connection_string else None,
        from_process_environment=environ is None or environ is os.environ)


# ------------------------------------------------------------------------------------------------
# Live sources for the pipelines
# ------------------------------------------------------------------------------------------------


class InputRecord(typing.NamedTuple):
    """What the pipelines' parser needs from any live source's element."""
    body: bytes
    received_at_us: typing.Optional[int]   # the source's arrival time; None when unknown
    source: str                            # where it came from, for dead letters


def eventhubs_input_record(record):
    """An :class:`EventHubRecord` as an :class:`InputRecord` (arrival time = enqueued time)."""
    return InputRecord(record.body, record.enqueued_time_us,
                       "eventhubs:%s:%d" % (record.partition, record.sequence_number))


def kafka_input_record(row):
    """A ``ReadFromKafka(with_metadata=True)`` row as an :class:`InputRecord`.

    The arrival time is the record's timestamp when it is the broker's (LogAppendTime, what the
    Event Hubs Kafka endpoint stamps), else None (the parser falls back to ``ts``).
    """
    value = getattr(row, "value", None)
    if isinstance(value, str):
        value = value.encode("utf-8")
    timestamp_ms = getattr(row, "timestamp", None)
    type_name = re.sub(r"[\s_]", "", str(getattr(row, "timestampTypeName", "") or "")).lower()
    received = int(timestamp_ms) * 1000 if (
        timestamp_ms is not None and type_name == "logappendtime") else None
    return InputRecord(value if value is not None else b"", received, "kafka:%s:%s:%s" % (
        getattr(row, "topic", "?"), getattr(row, "partition", "?"), getattr(row, "offset", "?")))


def pubsub_input_record(message):
    """A ``ReadFromPubSub(with_attributes=True)`` message as an :class:`InputRecord`
    (arrival time = the message's publish time)."""
    published = getattr(message, "publish_time", None)
    received = None
    if isinstance(published, datetime.datetime):
        if published.tzinfo is None:
            published = published.replace(tzinfo=datetime.timezone.utc)
        received = _datetime_us(published)
    return InputRecord(message.data or b"", received,
                       "pubsub:%s" % (getattr(message, "message_id", None) or "?"))


class LiveSource(typing.NamedTuple):
    """A live input, built but not run (see :func:`build_live_source`).

    :ivar kind: ``eventhubs``, ``kafka`` or ``pubsub``.
    :ivar transform: the source PTransform, applied to the pipeline (``p | transform``).
    :ivar bounded: True for an Event Hubs catch-up read (a batch run); False: needs
        ``--streaming``.
    :ivar to_input_record: maps the transform's elements to :class:`InputRecord`.
    :ivar description: what is read, for messages (no secret).
    :ivar secrets: secret values to add to the launcher's redactor.
    :ivar eventhubs: the :class:`ReadFromEventHubs` for ``eventhubs://`` (for
        ``commit_checkpoints``), else None.
    """
    kind: str
    transform: beam.PTransform
    bounded: bool
    to_input_record: typing.Callable
    description: str
    secrets: typing.FrozenSet[str]
    eventhubs: typing.Optional[ReadFromEventHubs] = None


def _connection_string_secrets(connection_string):
    found = {connection_string}
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("sharedaccesskey", "sharedaccesssignature") and value:
            found.add(value.strip())
    return frozenset(s for s in found if len(s) >= 4)


def _jaas_quote(value):
    # JAAS option values are double-quoted; a backslash escapes the next character.
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


def kafka_consumer_config(spec, environ=None):
    """The ``consumer_config`` dict for ``ReadFromKafka`` from a :class:`KafkaInput`.

    Returns ``(config, secrets)``. For the Event Hubs Kafka endpoint this is Microsoft's
    recommended client configuration: SASL_SSL, PLAIN, ``$ConnectionString`` as user name and the
    connection string as password, plus the recommended timeouts.
    """
    config = {"group.id": spec.consumer_group, "auto.offset.reset": spec.offset_reset}
    secrets = frozenset()
    servers = list(spec.bootstrap_servers)
    if spec.connection_string_env:
        connection_string = _from_environment(environ, spec.connection_string_env,
                                              "Event Hubs connection string")
        try:
            info = parse_connection_string(connection_string)
        except EventHubsDeliveryError as exc:
            raise EventHubsSourceError(str(exc)) from None
        namespace_server = "%s:%d" % (info["host"], _EVENTHUBS_KAFKA_PORT)
        if not servers:
            servers = [namespace_server]
        elif any(s.rsplit(":", 1)[0].lower() != info["host"].lower() for s in servers):
            # The connection string is a credential of one namespace: never send it elsewhere.
            raise EventHubsSourceError(
                "input kafka://%s: the broker is not the connection string's namespace (%s)"
                % (",".join(servers), info["host"]))
        config.update({
            "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
            "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule "
                                "required username=%s password=%s;" % (
                                    _jaas_quote("$ConnectionString"),
                                    _jaas_quote(connection_string)),
            # Microsoft's recommended Kafka client settings for Event Hubs.
            "request.timeout.ms": "60000", "session.timeout.ms": "30000",
            "metadata.max.age.ms": "180000", "connections.max.idle.ms": "180000"})
        secrets = _connection_string_secrets(connection_string)
    elif spec.password_env:
        password = _from_environment(environ, spec.password_env, "Kafka password")
        module = ("org.apache.kafka.common.security.plain.PlainLoginModule"
                  if spec.sasl_mechanism == "PLAIN"
                  else "org.apache.kafka.common.security.scram.ScramLoginModule")
        config.update({
            "security.protocol": spec.security_protocol or "SASL_SSL",
            "sasl.mechanism": spec.sasl_mechanism,
            "sasl.jaas.config": "%s required username=%s password=%s;" % (
                module, _jaas_quote(spec.username), _jaas_quote(password))})
        secrets = frozenset({password}) if len(password) >= 4 else frozenset()
    elif spec.security_protocol:
        config["security.protocol"] = spec.security_protocol
    config["bootstrap.servers"] = ",".join(servers)
    return config, secrets


def build_live_source(uri, environ=None):
    """Builds the source PTransform for a live ``--input`` URI without running it.

    ``eventhubs://`` gives :class:`ReadFromEventHubs`; ``kafka://`` gives
    ``apache_beam.io.kafka.ReadFromKafka`` (``with_metadata=True``, byte-array deserializers, the
    consumer config of :func:`kafka_consumer_config`, offsets committed at finalization unless
    ``commit_offsets=false``); ``pubsub://`` gives ``apache_beam.io.gcp.pubsub.ReadFromPubSub``
    (``with_attributes=True``, so the publish time is there for ``received_at``). Nothing is
    expanded or contacted: ReadFromKafka starts its Java expansion service only when applied.

    Returns a :class:`LiveSource`. Raises :class:`EventHubsSourceError` for a file input, a bad
    URI, a refused secret or a missing environment variable (one line, secret-free).
    """
    spec = parse_input_uri(uri)
    if isinstance(spec, EventHubsInput):
        source = parse_eventhubs_uri(uri, environ)
        transform = source.transform()
        return LiveSource("eventhubs", transform, transform.bounded, eventhubs_input_record,
                          "Event Hubs %s, %s" % (transform.target, spec.mode),
                          source.secrets,
                          eventhubs=transform)
    if isinstance(spec, KafkaInput):
        from apache_beam.io.kafka import ReadFromKafka
        config, secrets = kafka_consumer_config(spec, environ)
        eventhubs = spec.connection_string_env is not None or all(
            _is_eventhubs_host(s.rsplit(":", 1)[0]) for s in spec.bootstrap_servers)
        # Event Hubs stamps Kafka records with the broker's time (LogAppendTime).
        policy = spec.timestamp_policy or ("LogAppendTime" if eventhubs else "CreateTime")
        kwargs = {"consumer_config": config, "topics": list(spec.topics),
                  "with_metadata": True, "timestamp_policy": policy,
                  "commit_offset_in_finalize": spec.commit_offsets}
        if spec.max_num_records is not None:
            kwargs["max_num_records"] = spec.max_num_records
        if spec.max_read_time is not None:
            kwargs["max_read_time"] = spec.max_read_time
        if spec.expansion_service:
            kwargs["expansion_service"] = spec.expansion_service
        transform = ReadFromKafka(**kwargs)
        bounded = spec.max_num_records is not None or spec.max_read_time is not None
        return LiveSource("kafka", transform, bounded, kafka_input_record,
                          "Kafka %s topics %s (group %s)" % (
                              config["bootstrap.servers"], ",".join(spec.topics),
                              spec.consumer_group), secrets)
    if isinstance(spec, PubSubInput):
        from apache_beam.io.gcp.pubsub import ReadFromPubSub
        try:
            transform = ReadFromPubSub(topic=spec.topic, subscription=spec.subscription,
                                       id_label=spec.id_attribute, with_attributes=True,
                                       timestamp_attribute=spec.timestamp_attribute)
        except ValueError as exc:
            raise EventHubsSourceError("input %s: %s" % (_shown(uri), exc)) from None
        return LiveSource("pubsub", transform, False, pubsub_input_record,
                          "Pub/Sub %s" % (spec.subscription or spec.topic), frozenset())
    raise EventHubsSourceError("input %s is a file input, not a live source" % _shown(uri))
