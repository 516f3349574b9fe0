"""Event Hubs checkpoints in Azure Blob Storage, in the layout of Azure's own checkpoint store.

Real parts only: Azurite for Blob Storage, the project's local Event Hubs endpoint, the real
azure-eventhub SDK and Azure's ``azure-eventhub-checkpointstoreblob`` (``BlobCheckpointStore``,
which the SDK's event processor uses). The job and Azure's processor must continue from each
other's positions.
"""
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.storage.blob import ContainerClient

from cdp_activation.clients.checkpoints import (BlobStorageCheckpointStore, Checkpoint, CheckpointError,
                                 fully_qualified_namespace)
from cdp_activation.clients.eventhubs_consumer import EventHubsSourceError
from cdp_activation.transforms.eventhubs_source import ReadFromEventHubs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: fb, slug: frequent_buyers, condition: {event: purchase, within: 7d, min_count: 2}}
works:
  - {id: w-eh, workflow: eventhub_audience_export, config: {user_fields: [email]}}
"""


def _container(azurite):
    name = "ckpt-" + uuid.uuid4().hex[:12]
    ContainerClient.from_connection_string(azurite.connection_string, name).create_container()
    return name


def test_blob_store_and_azures_store_read_each_others_checkpoints(azurite):
    container = _container(azurite)
    ours = BlobStorageCheckpointStore(azurite.connection_string, container,
                                      "NS.servicebus.windows.net", "Hub", "$Default")
    azure = BlobCheckpointStore.from_connection_string(azurite.connection_string, container)
    assert ours.read("0") is None and ours.read_all() == {}

    ours.write(Checkpoint("0", 41, "4100", 1_700_000_000_123_000))
    ours.write(Checkpoint("1", 7, "700", None))
    listed = {c["partition_id"]: (c["sequence_number"], c["offset"])
              for c in azure.list_checkpoints("NS.servicebus.windows.net", "Hub", "$Default")}
    assert listed == {"0": (41, "4100"), "1": (7, "700")}
    names = sorted(b.name for b in ContainerClient.from_connection_string(
        azurite.connection_string, container).list_blobs())
    assert names == ["ns.servicebus.windows.net/hub/$default/checkpoint/0",
                     "ns.servicebus.windows.net/hub/$default/checkpoint/1"]

    azure.update_checkpoint({"fully_qualified_namespace": "NS.servicebus.windows.net",
                             "eventhub_name": "Hub", "consumer_group": "$Default",
                             "partition_id": "1", "sequence_number": 90, "offset": "9000"})
    azure.update_checkpoint({"fully_qualified_namespace": "NS.servicebus.windows.net",
                             "eventhub_name": "Hub", "consumer_group": "$Default",
                             "partition_id": "2", "sequence_number": 3, "offset": "300"})
    assert ours.read_all() == {"0": Checkpoint("0", 41, "4100", 1_700_000_000_123_000),
                               "1": Checkpoint("1", 90, "9000", None),
                               "2": Checkpoint("2", 3, "300", None)}
    # Never backwards: a stale commit keeps what is stored, also when Azure's store wrote it.
    assert ours.write(Checkpoint("1", 50, "5000", None)) == Checkpoint("1", 90, "9000", None)
    assert ours.read("1").sequence_number == 90
    # Another consumer group or hub is another place.
    other = BlobStorageCheckpointStore(azurite.connection_string, container,
                                       "ns.servicebus.windows.net", "hub", "other")
    assert other.read_all() == {}


def test_blob_store_refusals_are_one_line_and_secret_free(azurite):
    container = _container(azurite)
    blob = ContainerClient.from_connection_string(azurite.connection_string, container)
    blob.upload_blob("ns/hub/$default/checkpoint/0", b"", metadata={"offset": "1"})
    store = BlobStorageCheckpointStore(azurite.connection_string, container, "ns", "hub",
                                       "$Default")
    with pytest.raises(CheckpointError, match="no valid sequencenumber.*delete it"):
        store.read_all()
    wrong = BlobStorageCheckpointStore(azurite.wrong_key_connection_string, container, "ns",
                                       "hub", "$Default")
    with pytest.raises(CheckpointError, match="HTTP 403") as refused:
        wrong.read("0")
    assert azurite.wrong_key not in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(CheckpointError, match="container name"):
        BlobStorageCheckpointStore(azurite.connection_string, "No_Such", "ns", "hub", "$Default")


def test_a_live_event_processor_claim_is_seen_and_an_empty_one_is_not(azurite):
    container = _container(azurite)
    azure = BlobCheckpointStore.from_connection_string(azurite.connection_string, container)
    claimed = azure.claim_ownership([{
        "fully_qualified_namespace": "ns", "eventhub_name": "hub", "consumer_group": "$default",
        "partition_id": "2", "owner_id": "processor-a"}])
    store = BlobStorageCheckpointStore(azurite.connection_string, container, "ns", "hub",
                                       "$Default")
    assert store.live_owners() == {"2": "processor-a"}
    assert store.live_owners(now=time.time() + 3600) == {}       # expired claims do not count
    released = dict(claimed[0], owner_id="")
    azure.claim_ownership([released])                            # what a processor does on close
    assert store.live_owners() == {}


def publish(hub, records):
    producer = EventHubProducerClient.from_connection_string(hub.connection_string, retry_total=2)
    with producer:
        by_key = {}
        for r in records:
            by_key.setdefault(r["user_id"], []).append(r)
        for key, items in by_key.items():
            batch = producer.create_batch(partition_key=key)
            for r in items:
                batch.add(EventData(json.dumps(r)))
            producer.send_batch(batch)


def records(first, count):
    return [{"event_id": "e%d" % i, "user_id": "u%d" % (i % 37), "event": "purchase",
             "ts": "2026-11-20T10:%02d:%02dZ" % (i // 60 % 60, i % 60),
             "traits": {"email": "u%d@example.com" % (i % 37)}}
            for i in range(first, first + count)]


def run_job(tmp_path, name, uri, env):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.stream", "--config", str(tmp_path / "config.yaml"),
         "--input", uri, "--output_dir", str(tmp_path / name)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, **env))


def last_positions(hub):
    """``{partition: (sequence number, offset)}`` of each partition's last event."""
    found = {}
    for partition in hub.partition_ids:
        events = hub.events(partition)
        if events:
            found[partition] = (events[-1].sequence_number, events[-1].offset)
    return found


def receive_with_azures_processor(hub, azurite, container, expected):
    """Runs the SDK's event processor (EventHubConsumerClient + Azure's BlobCheckpointStore)
    until it has received ``expected`` events and then 2 s more; checkpoints every event.
    Returns the event ids it received."""
    store = BlobCheckpointStore.from_connection_string(azurite.connection_string, container)
    client = EventHubConsumerClient.from_connection_string(
        hub.connection_string, consumer_group="$Default", checkpoint_store=store,
        load_balancing_interval=1, retry_total=2)
    seen, enough = [], threading.Event()

    def on_event(context, event):
        if event is None:
            return
        seen.append(json.loads(event.body_as_str())["event_id"])
        context.update_checkpoint(event)
        if len(seen) >= expected:
            enough.set()

    thread = threading.Thread(target=client.receive, daemon=True,
                              kwargs={"on_event": on_event, "starting_position": "-1"})
    thread.start()
    try:
        assert enough.wait(60), "the processor received %d of %d events" % (len(seen), expected)
        time.sleep(2)                        # anything beyond the expected events shows up too
    finally:
        client.close()                       # gives the partitions' ownership up
        thread.join(30)
    # A load-balancing claim that races the close (the processor claims every second) can leave
    # a partition owned after it; give such a claim up as the SDK's own release does (owner ""),
    # so the job that follows sees a stopped processor, as it would a minute later in production.
    namespace = fully_qualified_namespace(hub.endpoint)
    left = [dict(o) for o in store.list_ownership(namespace, "hub", "$Default") if o.get("owner_id")]
    for ownership in left:
        ownership["owner_id"] = ""
    if left:
        store.claim_ownership(left)
    assert not [o for o in store.list_ownership(namespace, "hub", "$Default") if o.get("owner_id")]
    return seen


def test_the_job_and_azures_event_processor_continue_from_each_others_checkpoints(
        tmp_path, local_eventhubs, azurite):
    (tmp_path / "config.yaml").write_text(CONFIG)
    container = _container(azurite)
    uri = ("eventhubs://hub?connection_string_env=IN_CS&checkpoint_container=%s"
           "&checkpoint_connection_string_env=CKPT_CS&mode=catchup" % container)
    env = {"IN_CS": local_eventhubs.connection_string, "CKPT_CS": azurite.connection_string}
    namespace = fully_qualified_namespace(local_eventhubs.endpoint)
    azure = BlobCheckpointStore.from_connection_string(azurite.connection_string, container)

    # 1. The job catches up and commits its positions to the container.
    publish(local_eventhubs, records(0, 400))
    first = run_job(tmp_path, "run1", uri, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((tmp_path / "run1" / "summary.json").read_text())["records_read"] == 400
    listed = {c["partition_id"]: (c["sequence_number"], c["offset"])
              for c in azure.list_checkpoints(namespace, "hub", "$Default")}
    assert listed == last_positions(local_eventhubs) and len(listed) >= 2

    # 2. Azure's event processor, on the same container and consumer group, starts after them:
    #    it receives the new events only, and checkpoints them.
    publish(local_eventhubs, records(400, 150))
    seen = receive_with_azures_processor(local_eventhubs, azurite, container, 150)
    assert sorted(seen) == sorted("e%d" % i for i in range(400, 550))
    listed = {c["partition_id"]: (c["sequence_number"], c["offset"])
              for c in azure.list_checkpoints(namespace, "hub", "$Default")}
    assert listed == last_positions(local_eventhubs)

    # 3. The job resumes from the positions Azure's store wrote: only the newest events.
    publish(local_eventhubs, records(550, 60))
    third = run_job(tmp_path, "run3", uri, env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((tmp_path / "run3" / "summary.json").read_text())["records_read"] == 60
    listed = {c["partition_id"]: (c["sequence_number"], c["offset"])
              for c in azure.list_checkpoints(namespace, "hub", "$Default")}
    assert listed == last_positions(local_eventhubs)
    for secret in (local_eventhubs.key, azurite.account_key):
        assert secret not in first.stdout + first.stderr + third.stdout + third.stderr


def test_a_partition_an_event_processor_owns_is_refused(local_eventhubs, azurite):
    container = _container(azurite)
    namespace = fully_qualified_namespace(local_eventhubs.endpoint)
    BlobCheckpointStore.from_connection_string(azurite.connection_string, container) \
        .claim_ownership([{"fully_qualified_namespace": namespace, "eventhub_name": "hub",
                           "consumer_group": "$Default", "partition_id": "1",
                           "owner_id": "processor-b"}])
    read = ReadFromEventHubs(local_eventhubs.connection_string, checkpoint_container=container,
                             checkpoint_connection_string=azurite.connection_string)
    plan = read.plan_fn()
    plan.setup()
    try:
        with pytest.raises(EventHubsSourceError, match="partition 1 is being read by event "
                                                       "processor processor-b"):
            list(plan.process(None))
    finally:
        plan.teardown()
