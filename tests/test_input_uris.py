"""The ``--input`` URIs: ``eventhubs://`` (the connection string from the environment, never
shown), ``kafka://`` (the Event Hubs Kafka endpoint), ``pubsub://`` and files, parsed and built
into live sources without a network; an unreachable endpoint said in one line.

Reading from the local Event Hubs endpoint: ``test_eventhubs_source.py``.
"""
import datetime
import os

import apache_beam as beam
import pytest
from apache_beam.coders import RowCoder
from apache_beam.portability.api import external_transforms_pb2
from apache_beam.utils.timestamp import Duration

from cdp_activation.clients.eventhubs_consumer import (DEFAULT_MAX_READ_SECONDS, LIVE_WATERMARK_DELAY_SECONDS,
                                        EventHubRecord, EventHubsSourceError)
from cdp_activation.clients.input_uri import EventHubsInput, FileInput, KafkaInput, PubSubInput, parse_input_uri
from cdp_activation.transforms.eventhubs_source import ReadFromEventHubs
from cdp_activation.transforms.live_sources import InputRecord, build_live_source, parse_eventhubs_uri

pytestmark = pytest.mark.timeout(180)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def micros(value):
    return (value - EPOCH) // datetime.timedelta(microseconds=1)


SECRET = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldA=="
EH_CS = ("Endpoint=sb://acme-ns.servicebus.windows.net/;SharedAccessKeyName=listen;"
         "SharedAccessKey=%s;EntityPath=events" % SECRET)


def test_eventhubs_uri_reads_the_connection_string_from_the_environment(tmp_path):
    uri = ("eventhubs://events?connection_string_env=EH_IN&consumer_group=cdp&checkpoint_dir=%s"
           "&mode=catchup&max_batch_size=200&max_wait_seconds=0.5&watermark_delay_seconds=0"
           % tmp_path)
    spec = parse_input_uri(uri)
    assert spec == EventHubsInput("events", "EH_IN", "cdp", str(tmp_path), "catchup", 200, 0.5,
                                  0.0)
    assert spec.bounded and spec.live
    source = parse_eventhubs_uri(uri, {"EH_IN": EH_CS})
    assert SECRET not in repr(source)
    read = source.transform()
    assert read.bounded and read.consumer_group == "cdp" and read.eventhub_name == "events"
    assert read.checkpoint_store.directory == os.path.join(
        str(tmp_path), "acme-ns.servicebus.windows.net", "events", "cdp")
    live = parse_eventhubs_uri("eventhubs:///?connection_string_env=EH_IN&mode=live"
                               "&watermark_delay_seconds=60", {"EH_IN": EH_CS}).transform()
    assert not live.bounded and live.eventhub_name == "events"
    assert live.read_fn()._watermark_delay == Duration(seconds=60)
    assert live.read_fn()._max_read_seconds == DEFAULT_MAX_READ_SECONDS
    shorter = parse_eventhubs_uri("eventhubs:///?connection_string_env=EH_IN&mode=live"
                                  "&max_read_seconds=0.5", {"EH_IN": EH_CS}).transform()
    assert shorter.read_fn()._max_read_seconds == 0.5
    with pytest.raises(EventHubsSourceError, match="max_read_seconds must be a positive number"):
        parse_input_uri("eventhubs://h?connection_string_env=X&mode=live&max_read_seconds=0")
    assert parse_input_uri("eventhubs://h?connection_string_env=X&mode=live") \
        .watermark_delay_seconds == LIVE_WATERMARK_DELAY_SECONDS
    assert parse_input_uri("eventhubs://h?connection_string_env=X").watermark_delay_seconds == 0
    assert live.consumer_group == "$Default" and live.checkpoint_store is None
    built = build_live_source("eventhubs://events?connection_string_env=EH_IN", {"EH_IN": EH_CS})
    assert built.kind == "eventhubs" and built.bounded and built.eventhubs is built.transform
    assert SECRET in built.secrets and SECRET not in built.description
    record = EventHubRecord(b"{}", 1_700_000_000_000_000, "2", 17, "900")
    assert built.to_input_record(record) == InputRecord(b"{}", 1_700_000_000_000_000,
                                                         "eventhubs:2:17")


@pytest.mark.parametrize("uri,message", [
    ("eventhubs://events?connection_string=" + EH_CS.replace(";", "%3B"), "refused"),
    ("eventhubs://events?SharedAccessKey=" + SECRET, "refused"),
    ("eventhubs://events?connection_string_env=EH_IN&key=" + SECRET, "refused"),
    ("eventhubs://listen:" + SECRET + "@events?connection_string_env=EH_IN", "user info"),
    ("eventhubs://events?connection_string_env=" + SECRET, "name an environment variable"),
    ("eventhubs://events", "connection_string_env=VAR is required"),
    ("eventhubs://events?connection_string_env=EH_IN&mode=fast", "catchup or live"),
    ("eventhubs://events?connection_string_env=EH_IN&colour=red", "unknown parameter"),
    ("eventhubs://events?connection_string_env=A&connection_string_env=B", "twice"),
    ("eventhubs://events/x?connection_string_env=EH_IN", "no path"),
    ("eventhubs://events?connection_string_env=EH_IN&max_batch_size=0", "max_batch_size"),
    ("eventhubs://events?connection_string_env=EH_IN&watermark_delay_seconds=-1", "non-negative"),
    ("eventhubs://events?connection_string_env=MISSING", "MISSING .* is not set"),
    ("eventhubs://other?connection_string_env=EH_IN", "differs"),
    ("eventhubs://events?connection_string_env=BAD", "SharedAccessKeyName"),
])
def test_eventhubs_uri_refusals_say_what_is_wrong_and_never_show_the_secret(uri, message):
    with pytest.raises(EventHubsSourceError, match=message) as failure:
        parse_eventhubs_uri(uri, {"EH_IN": EH_CS, "BAD": "Endpoint=sb://x/;EntityPath=events"})
    assert SECRET not in str(failure.value) and "SharedAccessKey=" not in str(failure.value)


def _kafka_payload(transform):
    payload = external_transforms_pb2.ExternalConfigurationPayload()
    payload.ParseFromString(transform._payload)
    return RowCoder(payload.schema).decode(payload.payload)


def test_kafka_uri_builds_read_from_kafka_for_the_event_hubs_kafka_endpoint():
    spec = parse_input_uri("kafka:///events?connection_string_env=EH_IN&consumer_group=cdp")
    assert isinstance(spec, KafkaInput) and spec.bootstrap_servers == ()
    live = build_live_source("kafka:///events?connection_string_env=EH_IN&consumer_group=cdp",
                             {"EH_IN": EH_CS})
    from apache_beam.io.kafka import ReadFromKafka
    assert live.kind == "kafka" and isinstance(live.transform, ReadFromKafka)
    assert not live.bounded and live.transform._urn == ReadFromKafka.URN_WITH_METADATA
    config = _kafka_payload(live.transform)
    assert config.topics == ["events"]
    assert config.timestamp_policy == "LogAppendTime" and config.commit_offset_in_finalize
    consumer = dict(config.consumer_config)
    jaas = consumer.pop("sasl.jaas.config")
    assert consumer == {
        "bootstrap.servers": "acme-ns.servicebus.windows.net:9093", "group.id": "cdp",
        "auto.offset.reset": "earliest", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN", "request.timeout.ms": "60000", "session.timeout.ms": "30000",
        "metadata.max.age.ms": "180000", "connections.max.idle.ms": "180000"}
    assert jaas == ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                    'username="$ConnectionString" password="%s";' % EH_CS)
    assert SECRET in live.secrets and SECRET not in live.description
    # The namespace named explicitly (port defaults to 9093), several topics, a bounded test read.
    live = build_live_source(
        "kafka://acme-ns.servicebus.windows.net/a,b?connection_string_env=EH_IN"
        "&offset_reset=latest&timestamp_policy=createtime&commit_offsets=false"
        "&max_num_records=10&expansion_service=localhost:8097", {"EH_IN": EH_CS})
    config = _kafka_payload(live.transform)
    assert config.topics == ["a", "b"] and config.max_num_records == 10 and live.bounded
    assert config.consumer_config["bootstrap.servers"] == "acme-ns.servicebus.windows.net:9093"
    assert config.consumer_config["auto.offset.reset"] == "latest"
    assert config.timestamp_policy == "CreateTime" and not config.commit_offset_in_finalize


def test_kafka_uri_with_sasl_credentials_or_none():
    live = build_live_source("kafka://b1:9092,b2:9093/t?username=svc&password_env=KPW"
                             "&sasl_mechanism=SCRAM-SHA-512", {"KPW": "pa\"ss\\word"})
    consumer = _kafka_payload(live.transform).consumer_config
    assert consumer["bootstrap.servers"] == "b1:9092,b2:9093"
    assert consumer["security.protocol"] == "SASL_SSL"
    assert consumer["sasl.mechanism"] == "SCRAM-SHA-512"
    assert consumer["sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="svc" '
        'password="pa\\"ss\\\\word";')
    plain = build_live_source("kafka://localhost:9092/t", {})
    config = _kafka_payload(plain.transform)
    assert dict(config.consumer_config) == {"bootstrap.servers": "localhost:9092",
                                            "group.id": "cdp-activation",
                                            "auto.offset.reset": "earliest"}
    assert config.timestamp_policy == "CreateTime"
    row = beam.Row(topic="t", partition=1, offset=5, timestamp=1_700_000_000_000,
                   timestampTypeName="LogAppendTime", key=None, value=b"{}", headers=[])
    assert plain.to_input_record(row) == InputRecord(b"{}", 1_700_000_000_000_000,
                                                      "kafka:t:1:5")
    created = beam.Row(topic="t", partition=1, offset=6, timestamp=1_700_000_000_000,
                       timestampTypeName="CreateTime", key=None, value=b"{}", headers=[])
    assert plain.to_input_record(created).received_at_us is None


def test_kafka_expansion_service_given_by_the_command_or_by_the_uri():
    # The commands pass one for the embedded Flink (pipelines.runners.kafka_expansion_service);
    # an expansion_service= in the URI wins over it.
    given = object()
    live = build_live_source("kafka://localhost:9092/t", {}, expansion_service=given)
    assert live.transform._expansion_service is given
    named = build_live_source("kafka://localhost:9092/t?expansion_service=localhost:8097", {},
                              expansion_service=given)
    assert named.transform._expansion_service == "localhost:8097"


@pytest.mark.parametrize("uri,message", [
    ("kafka://b:9092/t?password=" + SECRET, "refused"),
    ("kafka://b:9092/t?sasl.jaas.config=x", "refused"),
    ("kafka://user:" + SECRET + "@b:9092/t", "user info"),
    ("kafka://b:9092/?group=x", "unknown parameter"),
    ("kafka://b:9092/", "TOPIC"),
    ("kafka://b:notaport/t", "host:port"),
    ("kafka:///t", "no broker"),
    ("kafka://b:9092/t?username=u", "go together"),
    ("kafka://b:9092/t?connection_string_env=EH_IN&security_protocol=PLAINTEXT", "SASL_SSL"),
    ("kafka://evil.example.com:9093/t?connection_string_env=EH_IN", "not the connection"),
    ("kafka://b:9092/t?timestamp_policy=now", "timestamp_policy"),
])
def test_kafka_uri_refusals(uri, message):
    with pytest.raises(EventHubsSourceError, match=message) as failure:
        build_live_source(uri, {"EH_IN": EH_CS})
    assert SECRET not in str(failure.value)


def test_pubsub_uri_builds_read_from_pubsub():
    from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub
    live = build_live_source("pubsub://projects/acme-prod/subscriptions/events-sub"
                             "?timestamp_attribute=ts&id_attribute=event_id", {})
    assert live.kind == "pubsub" and isinstance(live.transform, ReadFromPubSub)
    assert not live.bounded and live.transform.with_attributes
    source = live.transform._source
    assert source.full_subscription == "projects/acme-prod/subscriptions/events-sub"
    assert source.full_topic is None
    assert source.timestamp_attribute == "ts" and source.id_label == "event_id"
    topic = build_live_source("pubsub://projects/acme-prod/topics/events", {})
    assert topic.transform._source.full_topic == "projects/acme-prod/topics/events"
    assert parse_input_uri("pubsub://projects/acme-prod/topics/events") == PubSubInput(
        None, "projects/acme-prod/topics/events")
    published = datetime.datetime(2026, 11, 20, 10, 0, 0, 250000, tzinfo=datetime.timezone.utc)
    message = PubsubMessage(b'{"a":1}', {"ts": "x"}, message_id="m1", publish_time=published)
    assert live.to_input_record(message) == InputRecord(b'{"a":1}', micros(published),
                                                         "pubsub:m1")
    for bad, message in (("pubsub://projects/acme-prod/queues/x", "expected"),
                         ("pubsub://projects/P/subscriptions/s", "expected"),
                         ("pubsub://projects/acme-prod/topics/events?token=abc", "refused"),
                         ("pubsub://projects/acme-prod/topics/events?ack=1", "unknown")):
        with pytest.raises(EventHubsSourceError, match=message):
            build_live_source(bad, {})


def test_file_inputs_are_not_live_sources():
    for uri in ("examples/events.jsonl", "data/*.jsonl", "azfs://acct/container/x/*.jsonl",
                "gs://bucket/x.parquet"):
        assert parse_input_uri(uri) == FileInput(uri) and not parse_input_uri(uri).live
    with pytest.raises(EventHubsSourceError, match="file input"):
        build_live_source("examples/events.jsonl", {})
    with pytest.raises(EventHubsSourceError, match="eventhubs://"):
        parse_input_uri("sb://ns.servicebus.windows.net/hub")


def test_verify_reports_an_unreachable_endpoint_in_one_line():
    import socket
    with socket.socket() as probe:          # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cs = ("Endpoint=sb://127.0.0.1:%d;SharedAccessKeyName=k;SharedAccessKey=%s;EntityPath=hub;"
          "UseDevelopmentEmulator=true" % (port, SECRET))
    with pytest.raises(EventHubsSourceError, match="unreachable") as failure:
        ReadFromEventHubs(cs).verify(timeout_seconds=10)
    assert SECRET not in str(failure.value)
