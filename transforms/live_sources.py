"""Live ``--input`` sources for the pipelines: the URI's transform, built but not run.

:func:`build_live_source` turns a live ``--input`` URI (parsed by ``clients/input_uri.py``) into a
:class:`LiveSource`: the source PTransform and a function mapping its elements to
:class:`InputRecord`, what the pipelines' parser reads.

* ``eventhubs://HUB?connection_string_env=VAR&consumer_group=G&checkpoint_dir=D&mode=catchup|live``
  (or ``checkpoint_container=C&checkpoint_connection_string_env=VAR2`` for Blob checkpoints):
  :class:`transforms.eventhubs_source.ReadFromEventHubs` (:func:`parse_eventhubs_uri`);
* ``kafka://NAMESPACE.servicebus.windows.net:9093/HUB?connection_string_env=VAR``: Beam's
  ``apache_beam.io.kafka.ReadFromKafka`` on the Event Hubs Kafka endpoint (or any Kafka broker:
  ``kafka://BROKER:9092/TOPIC[?username=U&password_env=VAR]``), configured by
  :func:`kafka_consumer_config`;
* ``pubsub://projects/P/subscriptions/S`` (or ``.../topics/T``): Beam's
  ``apache_beam.io.gcp.pubsub.ReadFromPubSub``;
* anything else: files (a JSON Lines / Parquet path or glob), read by ``transforms/read.py``.

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
* ``kafka://`` uses Java's KafkaIO through a cross-language expansion service: on Flink and on
  Dataflow it is the mature high-throughput choice for a live stream from an Event Hubs namespace
  of the Standard tier or above (its offsets are committed to the Kafka consumer group at bundle
  finalization). On the embedded Flink the commands expand it with the Java expansion service that
  ``scripts/install_runners.sh flink`` installs beside the job server, and the job server runs it
  in its own JVM (``pipelines.runners.kafka_expansion_service``; tested against a local broker in
  ``tests/test_kafka_flink.py``); elsewhere Beam's default expansion service (its jar from Maven)
  or ``expansion_service=HOST:PORT`` (e.g. a Flink job server's, port 8097) expands it.
* ``pubsub://`` is for events mirrored to Google Pub/Sub, read by Dataflow's native Pub/Sub source
  (streaming only; ``timestamp_attribute`` takes event times from a message attribute).

``pubsub://`` cannot run on the project's machines (no GCP project): :func:`build_live_source`
still builds its transform, without expanding or running it, so tests check its configuration.

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
import dataclasses
import datetime
import os
import re
import typing

import apache_beam as beam

from cdp_activation.clients.eventhubs import EventHubsDeliveryError, Secret, parse_connection_string
from cdp_activation.clients.eventhubs_consumer import (ClientSettings, EventHubRecord, EventHubsSourceError,
                                        datetime_us, make_checkpoint_store)
from cdp_activation.clients.input_uri import (EVENTHUBS_KAFKA_PORT, EventHubsInput, KafkaInput, PubSubInput,
                               display_uri, from_environment, is_eventhubs_host, parse_input_uri)
from cdp_activation.core.config import EnvRef
from cdp_activation.core.redact import secret_parts
from cdp_activation.transforms.eventhubs_source import ReadFromEventHubs


# ------------------------------------------------------------------------------------------------
# eventhubs://
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EventHubsSource:
    """An ``eventhubs://`` input with its connection strings resolved (held as secrets).

    ``from_process_environment``: the values came from this process's environment, so the
    transform gets ``${VAR}`` references (:class:`core.config.EnvRef`) that workers resolve
    from theirs, and no secret travels with the pipeline; otherwise (an explicit ``environ``)
    it gets the values.
    """
    spec: EventHubsInput
    connection_string: Secret = dataclasses.field(repr=False)
    checkpoint_connection_string: typing.Optional[Secret] = dataclasses.field(default=None,
                                                                              repr=False)
    from_process_environment: bool = False

    def _credential(self, secret, variable, what):
        if secret is None:
            return None
        if self.from_process_environment:
            return EnvRef("${%s}" % variable, "--input %s" % what)
        return secret.reveal()

    def transform(self, **overrides: typing.Any) -> ReadFromEventHubs:
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
    def secrets(self) -> typing.FrozenSet[str]:
        """The secret values of this input, for the launcher's redactor."""
        found = _connection_string_secrets(self.connection_string.reveal())
        if self.checkpoint_connection_string is not None:
            found |= secret_parts(self.checkpoint_connection_string.reveal())
        return found


def parse_eventhubs_uri(uri: str, environ: typing.Optional[typing.Mapping[str, str]] = None
                        ) -> EventHubsSource:
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
        raise EventHubsSourceError("input %s is not an eventhubs:// URI" % display_uri(uri))
    connection_string = from_environment(environ, spec.connection_string_env,
                                         "Event Hubs connection string")
    checkpoint_connection_string = None
    if spec.checkpoint_connection_string_env:
        checkpoint_connection_string = from_environment(
            environ, spec.checkpoint_connection_string_env,
            "Azure Storage connection string of the checkpoint container")
    # Validates the connection strings, the hub and the consumer group now, before data moves.
    settings = ClientSettings(connection_string, spec.eventhub_name, spec.consumer_group,
                              0, 0, 0, 1)
    make_checkpoint_store(settings, spec.checkpoint_dir, spec.checkpoint_container,
                          checkpoint_connection_string)
    return EventHubsSource(
        spec, Secret(connection_string),
        Secret(checkpoint_connection_string) if checkpoint_connection_string else None,
        from_process_environment=environ is None or environ is os.environ)


# ------------------------------------------------------------------------------------------------
# Elements as the pipelines' input records
# ------------------------------------------------------------------------------------------------


class InputRecord(typing.NamedTuple):
    """What the pipelines' parser needs from any live source's element."""
    body: bytes
    received_at_us: typing.Optional[int]   # the source's arrival time; None when unknown
    source: str                            # where it came from, for dead letters


def eventhubs_input_record(record: EventHubRecord) -> "InputRecord":
    """An :class:`EventHubRecord` as an :class:`InputRecord` (arrival time = enqueued time)."""
    return InputRecord(record.body, record.enqueued_time_us,
                       "eventhubs:%s:%d" % (record.partition, record.sequence_number))


def kafka_input_record(row: typing.Any) -> "InputRecord":
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


def pubsub_input_record(message: typing.Any) -> "InputRecord":
    """A ``ReadFromPubSub(with_attributes=True)`` message as an :class:`InputRecord`
    (arrival time = the message's publish time)."""
    published = getattr(message, "publish_time", None)
    received = None
    if isinstance(published, datetime.datetime):
        if published.tzinfo is None:
            published = published.replace(tzinfo=datetime.timezone.utc)
        received = datetime_us(published)
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


def kafka_consumer_config(spec: KafkaInput,
                          environ: typing.Optional[typing.Mapping[str, str]] = None
                          ) -> typing.Tuple[typing.Dict[str, str], typing.FrozenSet[str]]:
    """The ``consumer_config`` dict for ``ReadFromKafka`` from a :class:`KafkaInput`.

    Returns ``(config, secrets)``. For the Event Hubs Kafka endpoint this is Microsoft's
    recommended client configuration: SASL_SSL, PLAIN, ``$ConnectionString`` as user name and the
    connection string as password, plus the recommended timeouts.
    """
    config = {"group.id": spec.consumer_group, "auto.offset.reset": spec.offset_reset}
    secrets = frozenset()
    servers = list(spec.bootstrap_servers)
    if spec.connection_string_env:
        connection_string = from_environment(environ, spec.connection_string_env,
                                             "Event Hubs connection string")
        try:
            info = parse_connection_string(connection_string)
        except EventHubsDeliveryError as exc:
            raise EventHubsSourceError(str(exc)) from None
        namespace_server = "%s:%d" % (info["host"], EVENTHUBS_KAFKA_PORT)
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
        password = from_environment(environ, spec.password_env, "Kafka password")
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


def build_live_source(uri: str, environ: typing.Optional[typing.Mapping[str, str]] = None,
                      expansion_service: typing.Any = None) -> "LiveSource":
    """Builds the source PTransform for a live ``--input`` URI without running it.

    ``eventhubs://`` gives :class:`ReadFromEventHubs`; ``kafka://`` gives
    ``apache_beam.io.kafka.ReadFromKafka`` (``with_metadata=True``, byte-array deserializers, the
    consumer config of :func:`kafka_consumer_config`, offsets committed at finalization unless
    ``commit_offsets=false``); ``pubsub://`` gives ``apache_beam.io.gcp.pubsub.ReadFromPubSub``
    (``with_attributes=True``, so the publish time is there for ``received_at``). Nothing is
    expanded or contacted: ReadFromKafka starts its Java expansion service only when applied.
    ``expansion_service`` (an address or a Beam expansion service object) expands ReadFromKafka
    when the URI names none (``expansion_service=HOST:PORT`` wins); None leaves Beam's default
    (it fetches Beam's expansion-service jar from Maven when applied).

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
            is_eventhubs_host(s.rsplit(":", 1)[0]) for s in spec.bootstrap_servers)
        # Event Hubs stamps Kafka records with the broker's time (LogAppendTime).
        policy = spec.timestamp_policy or ("LogAppendTime" if eventhubs else "CreateTime")
        kwargs = {"consumer_config": config, "topics": list(spec.topics),
                  "with_metadata": True, "timestamp_policy": policy,
                  "commit_offset_in_finalize": spec.commit_offsets}
        if spec.max_num_records is not None:
            kwargs["max_num_records"] = spec.max_num_records
        if spec.max_read_time is not None:
            kwargs["max_read_time"] = spec.max_read_time
        if spec.expansion_service or expansion_service is not None:
            kwargs["expansion_service"] = spec.expansion_service or expansion_service
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
            raise EventHubsSourceError("input %s: %s" % (display_uri(uri), exc)) from None
        return LiveSource("pubsub", transform, False, pubsub_input_record,
                          "Pub/Sub %s" % (spec.subscription or spec.topic), frozenset())
    raise EventHubsSourceError("input %s is a file input, not a live source" % display_uri(uri))
