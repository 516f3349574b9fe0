"""The local Event Hubs endpoint against the real azure-eventhub SDK (pure-Python AMQP).

Everything here goes over real AMQP on loopback: SASL, CBS with a real SAS check, management
READs, producer batches and consumer links.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.exceptions import AuthenticationError, EventDataSendError
from azure.eventhub._pyamqp.utils import generate_sas_token

from emulators.eventhubs import LocalEventHubs, check_sas_token, partition_for_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)


def _producer(connection_string, **kwargs):
    kwargs.setdefault("retry_total", 0)
    return EventHubProducerClient.from_connection_string(connection_string, **kwargs)


def _event(body, message_id):
    event = EventData(body)
    event.message_id = message_id
    event.content_type = "application/json"
    return event


def _send(producer, partition_key=None, bodies=(), ids=None, partition_id=None):
    batch = producer.create_batch(partition_key=partition_key, partition_id=partition_id)
    for index, body in enumerate(bodies):
        batch.add(_event(body, ids[index] if ids else "id-%d" % index))
    producer.send_batch(batch)


def _read_all(connection_string, expected, timeout=30):
    """Reads every partition from the start with the SDK's consumer until ``expected`` events."""
    client = EventHubConsumerClient.from_connection_string(connection_string,
                                                           consumer_group="$Default")
    received, done = [], threading.Event()

    def on_batch(context, events):
        for event in events:
            received.append((context.partition_id, event))
        if len(received) >= expected:
            done.set()

    thread = threading.Thread(target=client.receive_batch, daemon=True, kwargs={
        "on_event_batch": on_batch, "starting_position": "-1", "max_wait_time": 0.5})
    thread.start()
    try:
        done.wait(timeout)
    finally:
        client.close()
        thread.join(10)
    return received


def test_batches_are_stored_routed_by_partition_key_and_read_back(local_eventhubs):
    hubs = local_eventhubs
    producer = _producer(hubs.connection_string)
    sent = {}
    try:
        for user in range(12):
            key = "user-%d" % user
            bodies = [json.dumps({"user": key, "n": n}).encode() for n in range(5)]
            ids = ["%s-m%d" % (key, n) for n in range(5)]
            _send(producer, key, bodies, ids)
            sent[key] = list(zip(ids, bodies))
    finally:
        producer.close()

    stored = hubs.events()
    assert len(stored) == 60
    for key, messages in sent.items():
        mine = [e for e in stored if e.partition_key == key]
        # One key, one partition, in the order sent, every event complete.
        assert {e.partition for e in mine} == {str(partition_for_key(key, 4))}
        assert [(e.message_id, e.body) for e in mine] == messages
        assert all(e.content_type == "application/json" for e in mine)
    for partition in hubs.partition_ids:
        in_partition = hubs.events(partition)
        assert [e.sequence_number for e in in_partition] == list(range(len(in_partition)))
    assert len({e.partition for e in stored}) > 1   # 12 keys do not all hash to one partition

    received = _read_all(hubs.connection_string, expected=60)
    assert len(received) == 60
    by_id = {e.message_id: e for e in stored}
    for partition_id, event in received:
        original = by_id[event.message_id]
        assert event.body_as_str() == original.body.decode()
        assert partition_id == original.partition
        assert event.sequence_number == original.sequence_number
        assert str(event.offset) == original.offset
        assert event.enqueued_time == original.enqueued_time
        assert event.partition_key.decode() == original.partition_key
        assert event.content_type == "application/json"


def test_management_reads_hub_and_partition_properties(local_eventhubs):
    hubs = local_eventhubs
    producer = _producer(hubs.connection_string)
    try:
        _send(producer, partition_id="2", bodies=[b"a", b"b", b"c"])
        hub = producer.get_eventhub_properties()
        assert hub["eventhub_name"] == "hub"
        assert hub["partition_ids"] == ["0", "1", "2", "3"]
        assert producer.get_partition_ids() == ["0", "1", "2", "3"]
        busy = producer.get_partition_properties("2")
        empty = producer.get_partition_properties("1")
    finally:
        producer.close()
    assert busy["last_enqueued_sequence_number"] == 2
    assert busy["is_empty"] is False
    assert busy["last_enqueued_offset"] == hubs.events("2")[-1].offset
    assert empty["is_empty"] is True
    assert empty["last_enqueued_sequence_number"] == -1
    assert [e.body for e in hubs.events("2")] == [b"a", b"b", b"c"]


@pytest.mark.parametrize("change", ["key", "key_name"])
def test_wrong_credentials_raise_authentication_error_quickly(local_eventhubs, change):
    hubs = local_eventhubs
    wrong = hubs.connection_string_with(**{change: "not-the-right-one"})
    producer = _producer(wrong, retry_total=0)
    try:
        with pytest.raises(AuthenticationError) as raised:
            _send(producer, "user-1", [b"x"])
    finally:
        producer.close()
    assert "401" in str(raised.value)
    assert hubs.auth_failures >= 1
    assert hubs.events() == []


def test_sas_check_rejects_expired_foreign_and_tampered_tokens():
    audience = "sb://127.0.0.1:5672/hub"
    good = generate_sas_token(audience, "Root", "secret-key", int(time.time()) + 60)
    assert check_sas_token(good, audience, "Root", "secret-key") == (True, "OK")
    assert check_sas_token(good, audience, "Root", "other-key")[0] is False
    assert check_sas_token(good, audience, "Other", "secret-key")[0] is False
    expired = generate_sas_token(audience, "Root", "secret-key", int(time.time()) - 1)
    assert check_sas_token(expired, audience, "Root", "secret-key") == \
        (False, "the signature has expired")
    other_hub = generate_sas_token("sb://127.0.0.1:5672/other", "Root", "secret-key",
                                   int(time.time()) + 60)
    assert check_sas_token(other_hub, audience, "Root", "secret-key")[0] is False
    fields = dict(urllib.parse.parse_qsl(good[len("SharedAccessSignature "):]))
    fields["se"] = str(int(fields["se"]) + 3600)   # extend the expiry without re-signing
    tampered = "SharedAccessSignature " + urllib.parse.urlencode(fields)
    assert check_sas_token(tampered, audience, "Root", "secret-key") == \
        (False, "invalid signature")


def test_links_without_a_token_are_refused(local_eventhubs):
    """A client that skips CBS cannot publish (the public SDK API always authenticates, so this
    uses the SDK's own AMQP client directly)."""
    from azure.eventhub._pyamqp import SendClient
    from azure.eventhub._pyamqp.error import AMQPLinkError
    from azure.eventhub._pyamqp.message import Message
    from azure.eventhub._pyamqp.sasl import SASLAnonymousCredential

    class AnonymousOnly:
        auth_type = "sasl-only"         # anything but CBS: no put-token
        sasl = SASLAnonymousCredential()

    port = local_eventhubs.port
    client = SendClient("127.0.0.1:%d" % port, "amqp://127.0.0.1:%d/hub" % port,
                        use_tls=False, auth=AnonymousOnly())
    try:
        with pytest.raises(AMQPLinkError) as raised:
            client.open()
            deadline = time.monotonic() + 10
            while not client.client_ready() and time.monotonic() < deadline:
                time.sleep(0.05)
            client.send_message(Message(data=[b"x"]))
    finally:
        client.close()
    assert "unauthorized-access" in str(raised.value)
    assert local_eventhubs.events() == []


def test_unknown_hub_is_refused(local_eventhubs):
    producer = _producer(local_eventhubs.connection_string_with(hub="nohub"))
    try:
        with pytest.raises(Exception) as raised:
            _send(producer, "user-1", [b"x"])
    finally:
        producer.close()
    assert "404" in str(raised.value)
    assert local_eventhubs.events() == []


def test_lost_acknowledgement_is_redelivered_with_the_same_message_id(local_eventhubs):
    hubs = local_eventhubs
    producer = _producer(hubs.connection_string, retry_total=2, retry_backoff_factor=0.05)
    try:
        _send(producer, "user-1", [b"first"], ["m-1"])
        hubs.fail_next_transfers(1, after_store=True)     # stored, then the connection drops
        _send(producer, "user-1", [b"second"], ["m-2"])
        hubs.fail_next_transfers(1, after_store=False)    # lost on the way in
        _send(producer, "user-1", [b"third"], ["m-3"])
    finally:
        producer.close()
    assert [(e.message_id, e.body) for e in hubs.events()] == [
        ("m-1", b"first"), ("m-2", b"second"), ("m-2", b"second"), ("m-3", b"third")]
    assert [e.sequence_number for e in hubs.events()] == [0, 1, 2, 3]


def test_dropped_connections_are_reopened_by_the_sdk(local_eventhubs):
    hubs = local_eventhubs
    producer = _producer(hubs.connection_string, retry_total=2, retry_backoff_factor=0.05)
    try:
        _send(producer, "user-1", [b"before"])
        assert hubs.drop_connections() >= 1
        _send(producer, "user-1", [b"after"])
    finally:
        producer.close()
    assert [e.body for e in hubs.events()] == [b"before", b"after"]
    assert hubs.connections_accepted >= 2


def test_batches_larger_than_a_frame_arrive_whole():
    # 64 KiB frames: a ~900 KB batch crosses many frames in both directions.
    with LocalEventHubs(max_frame_size=65536) as hubs:
        producer = _producer(hubs.connection_string)
        bodies = [bytes([65 + n]) * 150000 for n in range(6)]
        try:
            _send(producer, "big", bodies)
        finally:
            producer.close()
        assert [e.body for e in hubs.events()] == bodies
        received = _read_all(hubs.connection_string, expected=6)
        assert sorted(e.body_as_str() for _, e in received) == [b.decode() for b in bodies]


def test_deliveries_over_the_link_limit_are_rejected_like_the_service_does():
    # send_event does not size-check on the client, so the endpoint's own limit is what refuses.
    with LocalEventHubs(max_message_size=2048) as hubs:
        producer = _producer(hubs.connection_string)
        try:
            with pytest.raises(EventDataSendError) as raised:
                producer.send_event(EventData(b"x" * 5000), partition_key="k")
            producer.send_event(EventData(b"small"), partition_key="k")
        finally:
            producer.close()
        assert "exceeds the limit (2048 bytes)" in str(raised.value)
        assert [e.body for e in hubs.events()] == [b"small"]


def test_command_line_prints_a_working_connection_string():
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.eventhubs", "--port", "0", "--hub", "cli",
         "--partitions", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        connection_string = process.stdout.readline().strip()
        assert "127.0.0.1" in banner
        assert connection_string.startswith("Endpoint=sb://127.0.0.1:")
        assert "EntityPath=cli" in connection_string
        assert connection_string.endswith("UseDevelopmentEmulator=true")
        producer = _producer(connection_string)
        try:
            assert producer.get_partition_ids() == ["0", "1"]
            _send(producer, "user-1", [b"hello"])
        finally:
            producer.close()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "1 events received" in out


def test_reader_prints_bodies_as_json_lines_and_never_the_connection_string(local_eventhubs):
    hubs = local_eventhubs
    producer = _producer(hubs.connection_string)
    try:
        for user in range(3):
            _send(producer, "user-%d" % user,
                  [json.dumps({"user": user, "n": n}, indent=1).encode() for n in range(2)])
        _send(producer, "user-9", [b"plain text"])
    finally:
        producer.close()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.read_eventhub", "--connection_string",
         hubs.connection_string, "--from-start", "--timeout", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Multi-line JSON bodies come out compact, one per line; other bodies as JSON strings.
    assert sorted(lines) == sorted(['{"user":%d,"n":%d}' % (u, n) for u in range(3)
                                    for n in range(2)] + ['"plain text"'])
    assert hubs.key not in result.stdout + result.stderr

    wrong = hubs.connection_string_with(key="WrongKey-0123456789abcdef")
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.read_eventhub", "--timeout", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, EVENTHUB_CONNECTION_STRING=wrong))
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: Event Hubs rejected the credentials for %s/hub"
                                     % hubs.endpoint[len("sb://"):])
    assert "WrongKey" not in result.stdout + result.stderr
