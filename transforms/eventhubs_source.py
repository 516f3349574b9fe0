"""Live input from Azure Event Hubs: ``ReadFromEventHubs``, a splittable DoFn over partitions.

Beam has no Python Event Hubs connector (Beam issues #31775, #20410); this module is one, built on
the azure-eventhub SDK's consumer (``clients/eventhubs_consumer.py``). Its checkpoints are committed
by ``transforms/eventhubs_checkpoints.py`` once the run's output is delivered; the pipelines'
``--input`` URIs (``eventhubs://``, ``kafka://``, ``pubsub://``) become sources in
``transforms/live_sources.py``.

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
  management call each, in parallel) and the checkpoints, and emits one plan per partition
  (:func:`clients.eventhubs_consumer.plan_partition`): ``[start, stop)`` in sequence numbers,
  where ``start`` is the checkpoint's sequence number + 1 (or the partition's first retained
  event) and ``stop`` is ``last_enqueued_sequence_number + 1`` (catch-up) or "infinity" (live).
  Doing this at run time, not at pipeline construction, means nothing touches the network while
  the graph is built and a template or a re-run sees the hub as it is when it runs. The
  Reshuffle spreads partitions over workers.
* ``ReadPartitions`` is the splittable DoFn of ``transforms/eventhubs_read.py``: its restriction
  is a plan's sequence-number range, so a runner can split or checkpoint a partition's read and
  no event is lost or emitted twice across the parts.
* :meth:`ReadFromEventHubs.commit_checkpoints` moves the checkpoints once every sink has
  delivered (``transforms/eventhubs_checkpoints.py``: at least once, never a skip).
"""
import concurrent.futures
import logging
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.typehints.decorators import no_annotations

from cdp_activation.clients.checkpoints import OWNERSHIP_EXPIRY_SECONDS
from cdp_activation.clients.eventhubs import close_quietly
from cdp_activation.clients.eventhubs_consumer import (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_READ_SECONDS,
                                        DEFAULT_MAX_WAIT_SECONDS, ClientSettings, EventHubRecord,
                                        EventHubsSourceError, checked_call, make_checkpoint_store,
                                        plan_partition, verify_consumer)
from cdp_activation.core.config import EnvRef
from cdp_activation.transforms.eventhubs_checkpoints import CommitCheckpoints
from cdp_activation.transforms.eventhubs_read import ReadPartitionFn, ReadPartitionLiveFn

_LOGGER = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Planning: one element per partition
# ------------------------------------------------------------------------------------------------


class _PlanPartitions(beam.DoFn):
    """Impulse -> one :class:`clients.eventhubs_consumer.PartitionPlan` per partition of the hub."""

    def __init__(self, settings, store, bounded, watermark_delay_seconds=0.0):
        self._settings = settings
        self._store = store
        self._bounded = bounded
        self._watermark_delay_us = int(watermark_delay_seconds * 1_000_000)
        self._client = None
        self._expired = Metrics.counter("eventhubs", "events_expired_unread")

    def setup(self):
        self._client = self._settings.consumer_client()

    def teardown(self):
        close_quietly(self._client, "consumer client")
        self._client = None
        if self._store is not None:
            self._store.close()

    def _checkpoints(self):
        """The store's checkpoints by partition; refuses partitions an event processor reads."""
        if self._store is None:
            return {}
        owners = checked_call(self._store.live_owners)
        if owners:
            partition, owner = sorted(owners.items())[0]
            raise EventHubsSourceError(
                "Event Hubs %s: partition %s is being read by event processor %s (its ownership "
                "in %s is less than %d s old); two readers of one consumer group would each "
                "deliver the events and move the checkpoints: stop the processor or use another "
                "consumer group" % (self._settings.target, partition, owner,
                                    self._store.description, OWNERSHIP_EXPIRY_SECONDS))
        return checked_call(self._store.read_all)

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
                                  self._watermark_delay_us, expired_counter=self._expired)
            if self._bounded:
                _LOGGER.info("Event Hubs %s partition %s: reading sequence numbers [%d, %d), "
                             "%d events", self._settings.target, partition, plan.start,
                             plan.stop, plan.stop - plan.start)
            else:
                _LOGGER.info("Event Hubs %s partition %s: reading live from sequence number %d",
                             self._settings.target, partition, plan.start)
            yield plan


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

    def __init__(self, connection_string: typing.Union[str, EnvRef],
                 eventhub_name: typing.Optional[str] = None, consumer_group: str = "$Default",
                 checkpoint_dir: typing.Optional[str] = None, bounded: bool = True,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS, *,
                 prefetch: typing.Optional[int] = None, retry_total: int = 3,
                 retry_backoff_factor: float = 0.8, retry_backoff_max: float = 30.0,
                 timeout_seconds: float = 60.0, idle_watermark_lag_seconds: float = 5.0,
                 watermark_delay_seconds: float = 0.0,
                 max_read_seconds: float = DEFAULT_MAX_READ_SECONDS,
                 checkpoint_container: typing.Optional[str] = None,
                 checkpoint_connection_string: typing.Union[str, EnvRef, None] = None,
                 label: typing.Optional[str] = None) -> None:
        super().__init__(label)
        if int(max_batch_size) < 1:
            raise EventHubsSourceError("max_batch_size must be at least 1")
        if not float(max_wait_seconds) > 0:
            raise EventHubsSourceError("max_wait_seconds must be positive")
        if not float(watermark_delay_seconds) >= 0 or not float(idle_watermark_lag_seconds) >= 0:
            raise EventHubsSourceError("watermark delays must not be negative")
        if prefetch is not None and int(prefetch) < 1:
            raise EventHubsSourceError("prefetch must be at least 1")
        self._settings = ClientSettings(connection_string, eventhub_name, consumer_group,
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
    def eventhub_name(self) -> str:
        return self._settings.eventhub_name

    @property
    def consumer_group(self) -> str:
        return self._settings.consumer_group

    @property
    def target(self) -> str:
        """``namespace/hub (consumer group X)``, for messages (no secret)."""
        return self._settings.target

    def read_fn(self) -> beam.DoFn:
        """The splittable DoFn this transform applies (for tests and custom wiring)."""
        fn_class = ReadPartitionFn if self.bounded else ReadPartitionLiveFn
        return fn_class(self._settings, **self._read_options)

    def plan_fn(self) -> beam.DoFn:
        """The planning DoFn this transform applies (for tests and custom wiring)."""
        return _PlanPartitions(self._settings, self.checkpoint_store, self.bounded,
                               self._read_options["watermark_delay_seconds"])

    @no_annotations
    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[EventHubRecord]:
        return (pbegin
                | "Impulse" >> beam.Impulse()
                | "PlanPartitions" >> beam.ParDo(self.plan_fn())
                | "DistributePartitions" >> beam.Reshuffle()
                | "ReadPartitions" >> beam.ParDo(self.read_fn()).with_output_types(EventHubRecord))

    def verify(self, timeout_seconds: float = 10.0) -> typing.List[str]:
        """Checks, before any data moves, that the hub can be read with these credentials.

        One management call (the partition ids) without the SDK's retries, so a rejected key fails
        in about a second instead of after every retry. Returns the partition ids. Raises
        :class:`EventHubsSourceError` with one secret-free line: ``Event Hubs rejected the
        credentials for <namespace>/<hub>``, ``... is unreachable``, ``... was not found``. An
        endpoint that does not answer within ``timeout_seconds`` counts as unreachable.
        """
        ids = verify_consumer(self._settings, timeout_seconds)
        if self.checkpoint_store is not None:
            # The checkpoints can be read (a wrong storage key fails here, in one line).
            try:
                checked_call(self.checkpoint_store.read_all)
            finally:
                self.checkpoint_store.close()
        return ids

    def commit_checkpoints(self, records: beam.PCollection,
                           after: typing.Iterable[beam.PCollection] = (),
                           label: str = "CommitEventHubsCheckpoints"
                           ) -> typing.Optional[beam.PCollection]:
        """Applies :class:`CommitCheckpoints` to ``records`` (this transform's output).

        ``after``: every terminal PCollection of the pipeline (what the sinks output), so the
        checkpoints move only once everything read has been delivered. Returns the PCollection of
        :class:`clients.checkpoints.Checkpoint` s written, or None when there is nothing to commit: without a
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

    def display_data(self) -> typing.Dict[str, typing.Any]:
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

