"""ReadFromEventHubs against the local Event Hubs endpoint, through the real azure-eventhub SDK.

Catch-up runs (TestPipeline, DirectRunner) with durable checkpoints, a run that dies before the
commit, the splittable DoFn driven by hand with real restriction trackers (splits, checkpoints,
resumption), live mode. The ``--input`` URIs that build it: ``test_input_uris.py``.
"""
import collections
import datetime
import json
import logging
import os
import subprocess
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.coders import registry
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from azure.eventhub import EventData, EventHubProducerClient

from emulators.eventhubs import LocalEventHubs
from cdp_activation.clients.checkpoints import Checkpoint, CheckpointError, LocalCheckpointStore
from cdp_activation.clients.eventhubs_consumer import (UNBOUNDED_STOP, EventHubRecord, EventHubsSourceError,
                                        PartitionPlan, plan_partition)
from cdp_activation.transforms.eventhubs_checkpoints import CommitCheckpoints
from cdp_activation.transforms.eventhubs_read import (EventHubRecordCoder, SequenceRangeProvider,
                                       SequenceRangeTracker)
from cdp_activation.transforms.eventhubs_source import ReadFromEventHubs

pytestmark = pytest.mark.timeout(180)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def publish(connection_string, count, first=0, users=40, partition_id=None):
    """Publishes ``count`` JSON events with the real producer; returns their bodies.

    Partition key = the user key (one batch per user), unless ``partition_id`` is given.
    """
    by_user = collections.defaultdict(list)
    for i in range(first, first + count):
        user = "user-%03d" % (i % users)
        by_user[user].append(json.dumps(
            {"event_id": "e-%06d" % i, "user_id": user, "event": "purchase",
             "ts": 1790000000 + i, "properties": {"n": i}},
            separators=(",", ":")).encode())
    producer = EventHubProducerClient.from_connection_string(connection_string, retry_total=0)
    try:
        for user, bodies in by_user.items():
            if partition_id is None:
                batch = producer.create_batch(partition_key=user)
            else:
                batch = producer.create_batch(partition_id=partition_id)
            for body in bodies:
                batch.add(EventData(body))
            producer.send_batch(batch)
    finally:
        producer.close()
    return [b for bodies in by_user.values() for b in bodies]


def micros(value):
    return (value - EPOCH) // datetime.timedelta(microseconds=1)


def stored(hubs):
    """What the endpoint holds, as the tuples the pipelines below produce."""
    return [(e.body, e.partition, e.sequence_number, e.offset, micros(e.enqueued_time),
             micros(e.enqueued_time)) for e in hubs.events()]


def with_timestamp(record, timestamp=beam.DoFn.TimestampParam):
    return (record.body, record.partition, record.sequence_number, record.offset,
            record.enqueued_time_us, timestamp.micros)


class _Sink(beam.DoFn):
    """A stand-in for the pipeline's sinks: appends each body to a file; fails on ``fail_on``."""

    def __init__(self, path, fail_on):
        self._path, self._fail_on = path, fail_on

    def process(self, record):
        if record.body == self._fail_on:
            raise RuntimeError("the sink failed")
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        with open(self._path, "ab") as handle:
            handle.write(record.body + b"\n")
        yield len(record.body)


def catch_up(connection_string, checkpoint_dir, expected=None, commit=True, fail_on=None,
             options=None, **kwargs):
    """One catch-up run: read, check the output against ``expected``, deliver to a sink file
    (``<checkpoint_dir>/delivered.txt``) behind a shuffle, as the real sinks are, and commit."""
    kwargs.setdefault("retry_total", 1)
    source = ReadFromEventHubs(connection_string, checkpoint_dir=checkpoint_dir, **kwargs)
    pipeline = TestPipeline(options=options) if options is not None else TestPipeline()
    records = pipeline | "Read" >> source
    if expected is not None:
        assert_that(records | "WithTimestamps" >> beam.Map(with_timestamp), equal_to(expected))
    delivered = (records
                 | "ToSink" >> beam.Reshuffle()
                 | "Sink" >> beam.ParDo(_Sink(os.path.join(checkpoint_dir, "delivered.txt"),
                                              fail_on)))
    if commit:
        source.commit_checkpoints(records, after=[delivered])
    pipeline.run().wait_until_finish()
    return source


def checkpoints(source):
    return {p: c.sequence_number for p, c in source.checkpoint_store.read_all().items()}


def last_per_partition(hubs):
    return {p: len(hubs.events(p)) - 1 for p in hubs.partition_ids if hubs.events(p)}


# ------------------------------------------------------------------------------------------------
# Catch-up runs against the endpoint
# ------------------------------------------------------------------------------------------------


def test_catch_up_runs_read_every_event_once_then_only_the_new_ones(local_eventhubs, tmp_path):
    hubs, cs = local_eventhubs, local_eventhubs.connection_string
    ckpt = str(tmp_path / "ckpt")
    first = publish(cs, 2000)
    assert len(hubs.events()) == 2000 and all(hubs.events(p) for p in hubs.partition_ids)
    everything = stored(hubs)
    # Exactly the published bodies (a multiset), each with its partition, sequence number,
    # offset, enqueued time, and the enqueued time as the element's timestamp.
    assert collections.Counter(e[0] for e in everything) == collections.Counter(first)
    source = catch_up(cs, ckpt, expected=everything)
    assert checkpoints(source) == last_per_partition(hubs)
    files = sorted(os.listdir(os.path.join(ckpt, "127.0.0.1", "hub", "$default")))
    assert files == ["%s.json" % p for p in hubs.partition_ids]
    # The checkpoints moved after the sink had written everything.
    sink = os.path.join(ckpt, "delivered.txt")
    assert collections.Counter(open(sink, "rb").read().splitlines()) == collections.Counter(first)
    assert min(os.stat(source.checkpoint_store.path(p)).st_mtime_ns
               for p in hubs.partition_ids) >= os.stat(sink).st_mtime_ns

    second = publish(cs, 500, first=2000)
    new = [e for e in stored(hubs) if e not in set(everything)]
    assert collections.Counter(e[0] for e in new) == collections.Counter(second)
    source = catch_up(cs, ckpt, expected=new)
    assert checkpoints(source) == last_per_partition(hubs)

    # Nothing new: nothing read, checkpoints stay where they are.
    before = {p: open(source.checkpoint_store.path(p)).read() for p in hubs.partition_ids}
    source = catch_up(cs, ckpt, expected=[])
    assert {p: open(source.checkpoint_store.path(p)).read()
            for p in hubs.partition_ids} == before


def test_a_run_that_dies_before_the_commit_is_read_again_and_nothing_is_skipped(
        local_eventhubs, tmp_path):
    hubs, cs = local_eventhubs, local_eventhubs.connection_string
    ckpt = str(tmp_path / "ckpt")
    publish(cs, 1200)
    committed = catch_up(cs, ckpt, expected=stored(hubs))
    positions = checkpoints(committed)
    old = set(stored(hubs))

    more = publish(cs, 800, first=1200)
    new = [e for e in stored(hubs) if e not in old]
    # Interrupted: the read ran, the commit step never did.
    catch_up(cs, ckpt, expected=new, commit=False)
    assert checkpoints(committed) == positions
    # A sink that fails on one record fails the run before the commit.
    with pytest.raises(Exception, match="the sink failed"):
        catch_up(cs, ckpt, fail_on=more[len(more) // 2])
    assert checkpoints(committed) == positions
    # The next full run reads them again (at least once), all of them (nothing skipped).
    catch_up(cs, ckpt, expected=new)
    assert checkpoints(committed) == last_per_partition(hubs)


@pytest.mark.portable
def test_catch_up_through_the_portable_runner(local_eventhubs, tmp_path):
    # The Runner API / Fn API path that Flink and Dataflow take (custom coder included).
    from apache_beam.options.pipeline_options import PipelineOptions
    publish(local_eventhubs.connection_string, 300)
    options = PipelineOptions(["--runner=PortableRunner", "--job_endpoint=embed",
                               "--environment_type=LOOPBACK"])
    source = catch_up(local_eventhubs.connection_string, str(tmp_path),
                      expected=stored(local_eventhubs), options=options)
    assert checkpoints(source) == last_per_partition(local_eventhubs)


def test_rejected_credentials_fail_the_run_with_one_line_and_no_secret(local_eventhubs,
                                                                       tmp_path, caplog):
    good_key = local_eventhubs.key
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    for logger in ("cdp_activation.transforms.eventhubs_source",
                   "cdp_activation.transforms.eventhubs_read",
                   "cdp_activation.transforms.eventhubs_checkpoints",
                   "cdp_activation.clients.eventhubs", "cdp_activation.clients.eventhubs_consumer"):
        caplog.set_level(logging.DEBUG, logger=logger)
    with pytest.raises(Exception) as failure:
        catch_up(local_eventhubs.connection_string_with(key=wrong), str(tmp_path), retry_total=0)
    text = str(failure.value)
    assert "Event Hubs rejected the credentials for 127.0.0.1:%d/hub" % local_eventhubs.port \
        in text
    assert wrong not in text and good_key not in text
    assert local_eventhubs.auth_failures >= 1
    # The launcher's pre-flight check says the same in about a second.
    with pytest.raises(EventHubsSourceError, match="rejected the credentials") as refused:
        ReadFromEventHubs(local_eventhubs.connection_string_with(key=wrong)).verify()
    assert wrong not in str(refused.value)
    assert ReadFromEventHubs(local_eventhubs.connection_string).verify() == ["0", "1", "2", "3"]
    # A good run logs its plan and commits, and never the key.
    publish(local_eventhubs.connection_string, 50)
    catch_up(local_eventhubs.connection_string, str(tmp_path))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "reading sequence numbers" in logged and "checkpoint committed" in logged
    assert good_key not in logged and "SharedAccessKey" not in logged


# ------------------------------------------------------------------------------------------------
# The splittable DoFn, driven by hand
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_hub():
    """An endpoint whose partition "0" holds 400 events (and partition "1" none)."""
    with LocalEventHubs(host="127.0.0.1", port=0, hub="hub", partitions=2) as hubs:
        publish(hubs.connection_string, 400, users=8, partition_id="0")
        assert len(hubs.events("0")) == 400
        yield hubs


def _drain(fn, plan, tracker, watermark, take=None, split=None):
    """Runs ``fn.process``; after ``take`` outputs calls ``split(tracker)``. Returns
    (sequence numbers emitted, split result)."""
    emitted, result = [], None
    for output in fn.process(plan, tracker=tracker, watermark_estimator=watermark):
        assert isinstance(output, TimestampedValue)
        assert output.timestamp == Timestamp(micros=output.value.enqueued_time_us)
        emitted.append(output.value.sequence_number)
        if take is not None and len(emitted) == take:
            result = split(tracker)
    return emitted, result


@pytest.mark.parametrize("take,fraction", [(0, 0.0), (120, 0.0), (399, 0.0), (0, 0.5),
                                           (100, 0.25), (100, 0.5), (250, 0.9), (300, 1e-9)])
def test_split_and_checkpoint_lose_and_repeat_nothing(split_hub, take, fraction):
    source = ReadFromEventHubs(split_hub.connection_string, max_batch_size=64)
    plan = PartitionPlan("0", 0, 400)
    fn = source.read_fn()
    fn.setup()
    try:
        tracker = OffsetRestrictionTracker(OffsetRange(0, 400))
        watermark = ManualWatermarkEstimator(None)
        if take == 0:                   # split before anything is claimed
            split = tracker.try_split(fraction)
            first, _ = _drain(fn, plan, tracker, watermark)
        else:
            first, split = _drain(fn, plan, tracker, watermark, take=take,
                                  split=lambda t: t.try_split(fraction))
        tracker.check_done()
        assert split is not None
        primary, residual = split
        assert primary.stop == residual.start and residual.stop == 400
        assert first == list(range(0, primary.stop))
        # Resume the residual: on the same instance (the open link goes on where it stopped)...
        resumed, _ = _drain(fn, plan, OffsetRestrictionTracker(residual),
                            ManualWatermarkEstimator(None))
        assert first + resumed == list(range(400))
        # ... and on a fresh instance (a new link at the residual's start): the same events.
        other = source.read_fn()
        try:
            again, _ = _drain(other, plan, OffsetRestrictionTracker(residual),
                              ManualWatermarkEstimator(None))
        finally:
            other.teardown()
        assert again == resumed
    finally:
        fn.teardown()


def test_nested_splits_and_an_empty_range(split_hub):
    source = ReadFromEventHubs(split_hub.connection_string, max_batch_size=50)
    fn = source.read_fn()
    fn.setup()
    try:
        plan = PartitionPlan("0", 100, 300)
        tracker = OffsetRestrictionTracker(OffsetRange(100, 300))
        got, split = _drain(fn, plan, tracker, ManualWatermarkEstimator(None), take=10,
                            split=lambda t: t.try_split(0.5))
        tracker.check_done()
        residual = split[1]
        tracker2 = OffsetRestrictionTracker(residual)
        got2, split2 = _drain(fn, plan, tracker2, ManualWatermarkEstimator(None), take=5,
                              split=lambda t: t.try_split(0.3))
        tracker2.check_done()
        got3, _ = _drain(fn, plan, OffsetRestrictionTracker(split2[1]),
                         ManualWatermarkEstimator(None))
        assert got + got2 + got3 == list(range(100, 300))
        empty = OffsetRestrictionTracker(OffsetRange(400, 400))
        assert _drain(fn, PartitionPlan("1", 400, 400), empty,
                      ManualWatermarkEstimator(None))[0] == []
        empty.check_done()
        # The watermark follows the enqueued times of what was emitted.
        watermark = ManualWatermarkEstimator(None)
        _drain(fn, plan, OffsetRestrictionTracker(OffsetRange(0, 10)), watermark)
        assert watermark.current_watermark() == Timestamp(
            micros=micros(split_hub.events("0")[9].enqueued_time))
    finally:
        fn.teardown()


def test_a_dropped_connection_mid_read_neither_loses_nor_repeats_events(local_eventhubs):
    hubs = local_eventhubs
    publish(hubs.connection_string, 600, users=6, partition_id="2")
    fn = ReadFromEventHubs(hubs.connection_string, max_batch_size=50, prefetch=100).read_fn()
    fn.setup()
    try:
        tracker = OffsetRestrictionTracker(OffsetRange(0, 600))
        got, dropped = _drain(fn, PartitionPlan("2", 0, 600), tracker,
                              ManualWatermarkEstimator(None), take=120,
                              split=lambda t: hubs.drop_connections())
        tracker.check_done()
        assert dropped >= 1                 # the consumer's connection was cut mid-read
        # The SDK reconnected and resumed at the last event's offset (inclusive): the copy it
        # delivered again was dropped by sequence number.
        assert got == list(range(600))
        assert fn._readers["2"].redelivered >= 1
    finally:
        fn.teardown()


def test_live_read_defers_while_idle_moves_the_watermark_and_resumes(local_eventhubs):
    hubs = local_eventhubs
    publish(hubs.connection_string, 30, users=3, partition_id="1")
    source = ReadFromEventHubs(hubs.connection_string, bounded=False, max_wait_seconds=0.3,
                               idle_watermark_lag_seconds=0.2, watermark_delay_seconds=30)
    fn = source.read_fn()
    fn.setup()
    try:
        plan = PartitionPlan("1", 0, UNBOUNDED_STOP)
        threadsafe = ThreadsafeRestrictionTracker(
            SequenceRangeTracker(OffsetRange(0, UNBOUNDED_STOP)))
        watermark = ManualWatermarkEstimator(None)
        got, _ = _drain(fn, plan, RestrictionTrackerView(threadsafe), watermark)
        assert got == list(range(30))
        residual, delay = threadsafe.deferred_status()
        assert residual == OffsetRange(30, UNBOUNDED_STOP)
        threadsafe.check_done()
        # Idle: past the last event's enqueued time, up to "now" minus the lag; both held back
        # by the watermark delay.
        last_enqueued = Timestamp(micros=micros(hubs.events("1")[-1].enqueued_time))
        assert last_enqueued - 30 < watermark.current_watermark() <= Timestamp.now() - 30.2
        reader = fn._readers["1"]
        # New events after the idle period: the residual read returns exactly those.
        publish(hubs.connection_string, 12, first=30, users=3, partition_id="1")
        threadsafe = ThreadsafeRestrictionTracker(SequenceRangeTracker(residual))
        got, _ = _drain(fn, plan, RestrictionTrackerView(threadsafe), watermark)
        assert got == list(range(30, 42))
        assert threadsafe.deferred_status()[0] == OffsetRange(42, UNBOUNDED_STOP)
        assert fn._readers["1"] is reader          # the open link went on, no reconnect
    finally:
        fn.teardown()


# A live pipeline never ends: it runs in a child process, which the test stops.
_LIVE_PIPELINE = """
import os, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from cdp_activation.transforms.eventhubs_source import ReadFromEventHubs

out = sys.argv[1]

def write(record, timestamp=beam.DoFn.TimestampParam):
    with open(out, "a") as handle:
        handle.write("%s %d %d\\n" % (record.partition, record.sequence_number, timestamp.micros))

pipeline = beam.Pipeline(options=PipelineOptions(sys.argv[2:]))
_ = (pipeline
     | ReadFromEventHubs(os.environ["LIVE_TEST_CS"], bounded=False, max_wait_seconds=0.5)
     | beam.Map(write))
pipeline.run().wait_until_finish()
"""


def _lines_when(path, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = open(path).read().splitlines() if os.path.exists(path) else []
        if len(lines) >= count:
            time.sleep(1)               # anything beyond ``count`` would show up by now
            return open(path).read().splitlines()
        time.sleep(0.2)
    return open(path).read().splitlines() if os.path.exists(path) else []


@pytest.mark.slow
@pytest.mark.parametrize("runner", [[], ["--runner=PortableRunner", "--job_endpoint=embed",
                                         "--environment_type=LOOPBACK"]],
                         ids=["direct", "portable"])
def test_a_live_pipeline_streams_events_as_they_arrive(local_eventhubs, tmp_path, runner):
    hubs = local_eventhubs
    publish(hubs.connection_string, 100)
    out, log = str(tmp_path / "live.txt"), tmp_path / "child.log"
    with open(log, "wb") as stderr:     # a file, not a pipe: a chatty child must never block
        child = subprocess.Popen(
            [sys.executable, "-c", _LIVE_PIPELINE, out, "--streaming"] + runner, cwd=ROOT,
            env=dict(os.environ, LIVE_TEST_CS=hubs.connection_string),
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert len(_lines_when(out, 100)) == 100, log.read_text()[-3000:]
        publish(hubs.connection_string, 40, first=100)      # while the pipeline runs
        lines = _lines_when(out, 140)
        assert child.poll() is None                         # still streaming
    finally:
        child.terminate()
        child.wait(30)
    got = sorted(tuple(line.split()) for line in lines)
    expected = sorted((e.partition, str(e.sequence_number), str(micros(e.enqueued_time)))
                      for e in hubs.events())
    assert got == expected                  # each event once, timestamped with its enqueued time


def test_live_ranges_split_only_at_zero_and_stop_on_drain():
    tracker = SequenceRangeTracker(OffsetRange(5, UNBOUNDED_STOP))
    assert not tracker.is_bounded()
    assert tracker.try_split(0.5) is None
    assert tracker.try_claim(5) and tracker.try_claim(6)
    assert tracker.current_progress().completed_work == 2
    # A fraction that survives Beam replacing the completed work with a NaN byte estimate
    # (what it did when Prism asked to split a live read).
    progress = tracker.current_progress().with_completed(float("nan"))
    assert progress.fraction_completed == pytest.approx(2 / 3)
    primary, residual = tracker.try_split(0)
    assert primary == OffsetRange(5, 7) and residual == OffsetRange(7, UNBOUNDED_STOP)
    provider = SequenceRangeProvider()
    plan = PartitionPlan("0", 7, UNBOUNDED_STOP)
    assert provider.truncate(plan, residual) is None            # a drain stops a live read
    assert provider.truncate(plan, OffsetRange(1, 9)) == OffsetRange(1, 9)
    assert provider.restriction_size(plan, OffsetRange(1, 9)) == 8
    assert provider.restriction_size(plan, residual) == 1
    bounded = SequenceRangeTracker(OffsetRange(0, 100))
    assert bounded.is_bounded() and bounded.try_split(0.5) is not None


def test_live_output_is_unbounded_and_has_no_file_commit(local_eventhubs, tmp_path):
    cs = local_eventhubs.connection_string
    pipeline = beam.Pipeline()
    live = ReadFromEventHubs(cs, checkpoint_dir=str(tmp_path), bounded=False)
    records = pipeline | live
    assert not records.is_bounded
    assert live.commit_checkpoints(records) is None          # the runner keeps the position
    with pytest.raises(EventHubsSourceError, match="catch-up"):
        records | CommitCheckpoints(live.checkpoint_store, after=[records])
    batch = ReadFromEventHubs(cs, checkpoint_dir=str(tmp_path))
    assert (pipeline | "Batch" >> batch).is_bounded
    no_dir = ReadFromEventHubs(cs)
    assert no_dir.commit_checkpoints(pipeline | "NoDir" >> no_dir) is None
    assert registry.get_coder(EventHubRecord) == EventHubRecordCoder()


# ------------------------------------------------------------------------------------------------
# Plans, checkpoints, records
# ------------------------------------------------------------------------------------------------


def _props(begin, last):
    return {"beginning_sequence_number": begin, "last_enqueued_sequence_number": last}


def test_plans_start_after_the_checkpoint_and_stop_at_the_end_read_at_start(caplog):
    assert plan_partition("0", _props(0, 99), None, True) == PartitionPlan("0", 0, 100)
    assert plan_partition("0", _props(0, -1), None, True) == PartitionPlan("0", 0, 0)
    ck = Checkpoint("0", 41, "4100", 1_700_000_000_000_000)
    assert plan_partition("0", _props(0, 99), ck, True) == \
        PartitionPlan("0", 42, 100, 1_700_000_000_000_000)
    assert plan_partition("0", _props(0, 99), ck, False) == \
        PartitionPlan("0", 42, UNBOUNDED_STOP, 1_700_000_000_000_000)
    assert plan_partition("0", _props(0, 99), ck, False, watermark_delay_us=5_000_000) == \
        PartitionPlan("0", 42, UNBOUNDED_STOP, 1_699_999_995_000_000)
    # Retention removed unread events: go on from the first retained one, loudly.
    assert plan_partition("0", _props(60, 99), ck, True).start == 60
    # A checkpoint beyond the end (hub re-created): read nothing, loudly.
    assert plan_partition("0", _props(0, 10), ck, True) == PartitionPlan("0", 42, 42, ck[3])
    assert "expired before they were read" in caplog.text and "re-created" in caplog.text


def test_checkpoint_store_is_atomic_monotonic_and_refuses_bad_names(tmp_path):
    store = LocalCheckpointStore(str(tmp_path), "NS.servicebus.windows.net", "Hub", "$Default")
    assert store.path("3") == os.path.join(str(tmp_path), "ns.servicebus.windows.net", "hub",
                                           "$default", "3.json")
    assert store.read("3") is None and store.read_all() == {}
    store.write(Checkpoint("3", 10, "1000", 1_700_000_000_123_000))
    data = json.loads(open(store.path("3")).read())
    assert data["sequence_number"] == 10 and data["offset"] == "1000"
    assert data["enqueued_time"] == "2023-11-14T22:13:20.123Z"
    assert store.write(Checkpoint("3", 7, "700", None)).sequence_number == 10   # never back
    store.write(Checkpoint("3", 11, "1100", None))
    assert store.read_all() == {"3": Checkpoint("3", 11, "1100", None)}
    assert [n for n in os.listdir(store.directory) if n.endswith(".tmp")] == []
    with open(store.path("4"), "w") as handle:
        handle.write("{not json")
    with pytest.raises(CheckpointError, match="unreadable.*delete it"):
        store.read("4")
    with pytest.raises(CheckpointError):
        store.path("../x")
    with pytest.raises(CheckpointError):
        LocalCheckpointStore(str(tmp_path), "ns", "../hub", "$Default")
    with pytest.raises(CheckpointError, match="local directories.*checkpoint_container"):
        LocalCheckpointStore("azfs://acct/container/x", "ns", "hub", "$Default")


def test_record_coder_round_trips():
    coder = EventHubRecordCoder()
    record = EventHubRecord(b'{"a":1}', 1_700_000_000_123_000, "3", 2 ** 40, "123456789")
    assert coder.decode(coder.encode(record)) == record
    assert type(coder.decode(coder.encode(record))) is EventHubRecord
    assert coder.is_deterministic()


def test_construction_checks_the_connection_string_without_showing_it(tmp_path):
    secret = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldA=="
    cs = ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;"
          "SharedAccessKey=%s" % secret)
    with pytest.raises(EventHubsSourceError, match="event hub name is missing"):
        ReadFromEventHubs(cs)
    with pytest.raises(EventHubsSourceError, match="differs"):
        ReadFromEventHubs(cs + ";EntityPath=a", eventhub_name="b")
    with pytest.raises(EventHubsSourceError, match="SharedAccessKey"):
        ReadFromEventHubs("Endpoint=sb://ns.servicebus.windows.net/;EntityPath=a")
    source = ReadFromEventHubs(cs, eventhub_name="events", consumer_group="cdp",
                               checkpoint_dir=str(tmp_path))
    assert source.target == "ns.servicebus.windows.net/events (consumer group cdp)"
    shown = repr(source.read_fn().__dict__) + repr(source.display_data()) + \
        repr(source.plan_fn().__dict__)
    assert secret not in shown
