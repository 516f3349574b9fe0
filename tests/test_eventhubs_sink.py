"""WriteToEventHubs in a real Beam pipeline (DirectRunner) against the local endpoint.

The SDK is not mocked: the DoFn's EventHubProducerClient talks AMQP to ``emulators.eventhubs``.
"""
import hashlib
import json
import logging
import os
import secrets
import socket
import threading

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that
from apache_beam.transforms.display import DisplayData

from emulators.eventhubs import LocalEventHubs
from cdp_activation.clients.eventhubs import EventHubsDeliveryError, parse_connection_string, verify_connection
from cdp_activation.transforms.eventhubs import WriteToEventHubs

pytestmark = pytest.mark.timeout(120)
WORK = "w-eh"
AID = 1234


def _message(user, n, padding=0):
    """A CONTRACT 5.1 audience message (the fields that matter here)."""
    body = {
        "data": {"_created": "2026-11-01T00:00:00Z", "_modified": "2026-11-01T00:%02d:00Z" % n,
                 "user_id": user, "email": "%s@example.com" % user,
                 "segment_events": [{"id": "abc678asdf", "slug": "frequent_buyers",
                                     "event": "enter" if n % 2 == 0 else "exit",
                                     "enter": "2026-11-01T00:00:00Z",
                                     "exit": "2099-12-31T23:59:59Z"}]},
        "subscription_id": "7e2b8804bbe162cd3f9c0c5991bf3078",
        "timestamp": "2026-11-01T00:%02d:00Z" % n,
    }
    if padding:
        body["data"]["padding"] = "x" * padding
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    body["message_id"] = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return body


def _pairs(messages=300, users=50):
    return [("user-%02d" % (i % users), _message("user-%02d" % (i % users), i // users))
            for i in range(messages)]


def _run(pairs, connection_string, deadletter_path, check_events, **options):
    """Runs Create -> WriteToEventHubs; ``check_events`` asserts on the output system events.

    The input is emitted by one FlatMap call so that it reaches the sink in list order: Beam does
    not order a PCollection, and per-key order is only meaningful for an ordered input.
    """
    pipeline = test_pipeline.TestPipeline()
    events = (pipeline
              | "Once" >> beam.Create([None])
              | "Messages" >> beam.FlatMap(lambda _, items: items, pairs)
              | "Deliver" >> WriteToEventHubs(connection_string, WORK, deadletter_path, aid=AID,
                                              **options))
    assert_that(events, check_events)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace("work:" + WORK))[
            "counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = value
    return counters


def _expect(condition, message):
    if not condition:
        raise BeamAssertException(message)


def _all_synced(events):
    _expect(events, "no system events")
    for event in events:
        _expect(event.verb == "synced", "unexpected event %r" % (event.record,))
        _expect(event.data["subject_type"] == "work" and event.subject_id == WORK
                and event.data["aid"] == AID, "bad subject %r" % (event.data,))
    _expect(len({e.id for e in events}) == len(events), "synced event ids are not unique")


def _read_dead_letters(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _first_copies_per_key(events):
    """message ids per partition key in stored order, later duplicates removed."""
    order, seen = {}, set()
    for event in events:
        if event.message_id not in seen:
            seen.add(event.message_id)
            order.setdefault(event.partition_key, []).append(event.message_id)
    return order


def _input_order(pairs):
    order = {}
    for key, message in pairs:
        order.setdefault(key, []).append(message["message_id"])
    return order


def test_every_message_arrives_once_in_order_per_key(tmp_path):
    pairs = _pairs()
    deadletter = str(tmp_path / "deadletter.jsonl")
    # A 2 KiB hub limit makes every key's six messages (~500 bytes each on the wire) span two
    # batches, so the full-batch-then-new-batch path is exercised.
    with LocalEventHubs(max_message_size=2048) as hubs:
        # 64 buffered messages: most batches leave from process(), the rest from finish_bundle.
        counters = _run(pairs, hubs.connection_string, deadletter, _all_synced,
                        retry_backoff_factor=0.05, max_buffered_messages=64)
        stored = hubs.events()

    expected = {m["message_id"]: (key, m) for key, m in pairs}
    assert len(stored) == 300
    assert sorted(e.message_id for e in stored) == sorted(expected)     # each exactly once
    for event in stored:
        key, message = expected[event.message_id]
        assert event.partition_key == key
        assert json.loads(event.body) == message
        assert event.body == json.dumps(message, separators=(",", ":")).encode()
        assert event.content_type == "application/json"
    assert _first_copies_per_key(stored) == _input_order(pairs)
    assert all(len({e.partition for e in stored if e.partition_key == key}) == 1
               for key in _input_order(pairs))
    assert counters["messages_delivered"] == 300
    assert counters["batches_delivered"] >= 100    # several batches per key
    assert counters.get("deadlettered", 0) == 0 and counters.get("failures", 0) == 0
    assert _read_dead_letters(deadletter) == []


def test_dropped_connections_mid_run_lose_nothing(tmp_path, local_eventhubs):
    hubs = local_eventhubs
    pairs = _pairs()
    deadletter = str(tmp_path / "deadletter.jsonl")
    # Three deliveries in a row fail before being settled: the first after the endpoint stored
    # it (its acknowledgement is lost), so that batch is stored twice. With retry_total=0 the
    # SDK's own producer rebuild absorbs one failure and the transform's retry with a new client
    # the rest.
    hubs.fail_next_transfers(1, after_store=True)
    hubs.fail_next_transfers(2, after_store=False)
    counters = _run(pairs, hubs.connection_string, deadletter, _all_synced, retry_total=0,
                    retry_backoff_factor=0.05)
    stored = hubs.events()

    expected = {m["message_id"]: m for _, m in pairs}
    ids = [e.message_id for e in stored]
    assert set(ids) == set(expected)                         # nothing lost
    assert len(ids) > len(expected)                          # the stored-then-dropped batch twice
    for event in stored:                                     # copies are identical
        assert json.loads(event.body) == expected[event.message_id]
    assert _first_copies_per_key(stored) == _input_order(pairs)
    assert hubs.connections_accepted >= 3
    assert counters["messages_delivered"] == 300
    assert _read_dead_letters(deadletter) == []


def test_oversized_and_invalid_messages_are_dead_lettered(tmp_path):
    pairs = _pairs(messages=60, users=10)
    huge = _message("user-03", 99, padding=6000)
    position = 25
    pairs.insert(position, ("user-03", huge))
    invalid = {"data": {"user_id": "user-04"}}               # no message_id
    pairs.append(("user-04", invalid))
    deadletter = str(tmp_path / "deadletter.jsonl")
    with LocalEventHubs(max_message_size=4096) as hubs:
        counters = _run(pairs, hubs.connection_string, deadletter, _all_synced)
        stored = hubs.events()

    dead = _read_dead_letters(deadletter)
    assert len(dead) == 2
    by_raw = {json.dumps(d["raw"], sort_keys=True): d for d in dead}
    oversize = by_raw[json.dumps(huge, sort_keys=True)]
    assert oversize["source"] == WORK
    assert "larger than the event hub accepts" in oversize["error"]
    assert "4096" in oversize["error"]
    assert "message_id" in by_raw[json.dumps(invalid, sort_keys=True)]["error"]
    delivered = [(k, m) for k, m in pairs if m is not huge and m is not invalid]
    assert sorted(e.message_id for e in stored) == sorted(m["message_id"] for _, m in delivered)
    assert _first_copies_per_key(stored) == _input_order(delivered)
    assert counters["deadlettered"] == 2
    assert counters["messages_delivered"] == 60


def test_rejected_credentials_fail_the_work_and_keep_every_message(tmp_path, local_eventhubs,
                                                                     caplog, capsys):
    hubs = local_eventhubs
    wrong_key = "WrongKey-" + secrets.token_hex(16)
    connection_string = hubs.connection_string_with(key=wrong_key)
    pairs = _pairs()
    deadletter = str(tmp_path / "deadletter.jsonl")

    reason = "Event Hubs rejected the credentials for %s/hub" % hubs.endpoint[len("sb://"):]

    def one_failed_event(events):       # captures only strings: it is pickled
        _expect(len(events) == 1, "expected one event, got %r" % ([e.record for e in events],))
        event = events[0]
        _expect(event.verb == "failed" and event.subject_id == WORK, "got %r" % (event.record,))
        _expect(reason in event.data["notes"], event.data["notes"])
        _expect(wrong_key not in json.dumps(event.record), "the key is in the event")

    caplog.set_level(logging.DEBUG)
    # retry_total=0 keeps the test fast; with the default 3 SDK retries it takes ~14 s. Sending
    # every 50 messages makes the later sends meet a work that has already stopped.
    counters = _run(pairs, connection_string, deadletter, one_failed_event, retry_total=0,
                    max_buffered_messages=50)
    assert hubs.events() == []
    assert 1 <= hubs.auth_failures <= 2     # the work stopped: no attempt per later send

    dead = _read_dead_letters(deadletter)
    assert sorted(d["raw"]["message_id"] for d in dead) == \
        sorted(m["message_id"] for _, m in pairs)
    assert all(d["error"].startswith("not delivered: Event Hubs rejected the credentials")
               and d["source"] == WORK for d in dead)
    assert counters["deadlettered"] == 300 and counters["failures"] == 1
    captured = capsys.readouterr()
    everything = caplog.text + captured.out + captured.err + open(deadletter).read()
    for secret in (wrong_key, hubs.key, connection_string):
        assert secret not in everything
    assert "rejected the credentials" in caplog.text    # the logs did record the failure


def test_display_data_and_repr_hold_no_secret(local_eventhubs):
    connection_string = local_eventhubs.connection_string
    transform = WriteToEventHubs(connection_string, WORK, "/tmp/unused.jsonl", aid=AID)
    items = DisplayData.create_from(transform).items
    shown = " ".join("%s=%s" % (item.key, item.value) for item in items)
    assert "hub" in shown and WORK in shown
    fn_items = DisplayData.create_from(transform._fn).items
    shown += " ".join("%s=%s" % (item.key, item.value) for item in fn_items)
    for text in (shown, repr(transform), repr(transform._fn),
                 repr(parse_connection_string(connection_string))):
        assert local_eventhubs.key not in text
        assert connection_string not in text


def test_bad_connection_strings_fail_at_construction_without_echoing_them():
    secret = "Sup3rSecretValue"
    for connection_string, problem in [
            ("", "empty"),
            ("SharedAccessKeyName=a;SharedAccessKey=%s" % secret, "no Endpoint"),
            ("Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=%s" % secret,
             "SharedAccessKeyName"),
            ("Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;"
             "SharedAccessKey=%s" % secret, "EntityPath")]:
        with pytest.raises(EventHubsDeliveryError) as raised:
            WriteToEventHubs(connection_string, WORK, "/tmp/unused.jsonl")
        assert problem in str(raised.value)
        assert secret not in str(raised.value)


def test_verify_connection_names_the_problem_quickly(local_eventhubs):
    hubs = local_eventhubs
    properties = verify_connection(hubs.connection_string)
    assert properties["partition_ids"] == ["0", "1", "2", "3"]
    namespace = hubs.endpoint[len("sb://"):]

    wrong_key = "WrongKey-" + secrets.token_hex(16)
    with pytest.raises(EventHubsDeliveryError) as raised:
        verify_connection(hubs.connection_string_with(key=wrong_key))
    assert hubs.auth_failures == 1          # one attempt: a rejected key is not retried
    assert str(raised.value) == "Event Hubs rejected the credentials for %s/hub" % namespace
    assert wrong_key not in str(raised.value) and "sig=" not in str(raised.value)

    with pytest.raises(EventHubsDeliveryError) as raised:
        verify_connection(hubs.connection_string_with(hub="other"))
    assert "no event hub %s/other" % namespace in str(raised.value)


def _loopback_connection_string(port):
    return ("Endpoint=sb://127.0.0.1:%d;SharedAccessKeyName=k;SharedAccessKey=v;"
            "EntityPath=hub;UseDevelopmentEmulator=true" % port)


def test_verify_connection_reports_unreachable_and_silent_endpoints():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(EventHubsDeliveryError) as raised:
        verify_connection(_loopback_connection_string(port))
    assert str(raised.value) == "Event Hubs endpoint 127.0.0.1:%d is unreachable" % port

    # A listener that accepts TCP and never answers: bounded by timeout_seconds.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    accepted = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = silent.getsockname()[1]
        with pytest.raises(EventHubsDeliveryError) as raised:
            verify_connection(_loopback_connection_string(port), timeout_seconds=1)
        assert "127.0.0.1:%d is unreachable" % port in str(raised.value)
    finally:
        stop.set()
        thread.join(2)
        for connection in accepted:
            connection.close()
        silent.close()


def test_an_unreachable_hub_is_retried_by_the_one_policy_counting_waits(tmp_path):
    """The sink's retry around the SDK is clients.retry: ``max_attempts`` attempts, a wait
    recorded (not slept) between each, then one secret-free reason naming the attempts."""
    from cdp_activation.transforms.eventhubs import _DeliveryFailed, _WriteToEventHubsFn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    connection_string = ("Endpoint=sb://127.0.0.1:%d;SharedAccessKeyName=k;SharedAccessKey=%s;"
                         "EntityPath=hub;UseDevelopmentEmulator=true" % (port, "c2VjcmV0a2V5"))
    fn = _WriteToEventHubsFn(connection_string, WORK, str(tmp_path / "dl.jsonl"), None, AID,
                             0, 0.5, 10, 2, max_attempts=3)
    waits = []
    fn._sleep = waits.append
    fn.setup()
    try:
        with pytest.raises(_DeliveryFailed) as info:
            fn._call(lambda client: client.get_eventhub_properties(), [])
    finally:
        fn.teardown()
    assert len(waits) == 2 and all(0 <= w <= 10 for w in waits)
    assert "failed after 3 attempts" in info.value.reason
    assert "c2VjcmV0a2V5" not in info.value.reason
