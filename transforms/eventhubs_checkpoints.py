"""Committing Event Hubs checkpoints once the run's output is delivered: ``CommitCheckpoints``.

At least once, never a skip
===========================

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

They are written only once the run's output is committed:
:meth:`transforms.eventhubs_source.ReadFromEventHubs.commit_checkpoints` (the
:class:`CommitCheckpoints` transform) takes the records PCollection and the pipeline's terminal
PCollections (``after``), and its final step, a GroupByKey over the last position of each
partition together with one completion signal per ``after`` PCollection, can only run after every
one of those PCollections is complete, i.e. after the sinks have delivered (in a bounded run a
GroupByKey fires only when all of its input is done). Hence:

* a crash or failure anywhere before that step leaves the old checkpoints: the next run re-reads
  those events (at-least-once; the pipeline's 24-hour dedupe by ``event_id`` absorbs the copies);
* nothing is ever skipped, because a checkpoint only moves past events whose effects are already
  delivered;
* a run that delivered everything but crashed while writing the files re-reads only the partitions
  whose file was not yet replaced.

Committing from the reader (at bundle finalization, as KafkaIO's ``commitOffsetsInFinalize``
does) would not do: finalization means the runner has durably taken the records, not that the
sinks delivered them, which is not enough for a batch run that may fail later and is simply run
again. The cost is one extra pass over the records (a Map and a per-partition max, combined
before the shuffle).

Concurrent runs with the same checkpoint store and consumer group are not supported (each would
re-read what the other is reading). Without a checkpoint store every run starts at the
beginning.
"""
import logging
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints.decorators import no_annotations

from cdp_activation.clients.checkpoints import BlobStorageCheckpointStore, Checkpoint, LocalCheckpointStore
from cdp_activation.clients.eventhubs_consumer import EventHubRecord, EventHubsSourceError, checked_call

_LOGGER = logging.getLogger(__name__)


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
            stored = checked_call(self._store.write,
                                  Checkpoint(partition, sequence_number, offset, enqueued_us))
            self._committed.inc()
            _LOGGER.info("Event Hubs checkpoint committed: %s partition %s at sequence number %d",
                         self._store.description, partition, stored.sequence_number)
            yield stored


class CommitCheckpoints(beam.PTransform):
    """Writes each partition's last read event to the checkpoint store, after ``after`` is done.

    Input: the :class:`clients.eventhubs_consumer.EventHubRecord` PCollection of a *bounded*
    :class:`transforms.eventhubs_source.ReadFromEventHubs`.
    ``after``: the PCollections that must be complete before the checkpoints move (pass every
    terminal PCollection of the pipeline: sink results, dead-letter writes, logs). Output: the
    :class:`clients.checkpoints.Checkpoint` s written (one per partition that had records).

    Usually applied through :meth:`ReadFromEventHubs.commit_checkpoints`.
    """

    def __init__(self, store: typing.Union[LocalCheckpointStore, BlobStorageCheckpointStore],
                 after: typing.Iterable[beam.PCollection] = (),
                 label: typing.Optional[str] = None) -> None:
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

    @no_annotations
    def expand(self, records: beam.PCollection[EventHubRecord]) -> beam.PCollection[Checkpoint]:
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
