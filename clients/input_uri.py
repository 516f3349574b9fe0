"""What ``--input`` names: files, or a live source's URI, parsed without the environment or network.

:func:`parse_input_uri` gives a :class:`FileInput` (paths, globs, filesystem URLs such as
``azfs://``/``gs://``), an :class:`EventHubsInput` (``eventhubs://``), a :class:`KafkaInput`
(``kafka://``) or a :class:`PubSubInput` (``pubsub://``); ``transforms/live_sources.py`` builds
their transforms, and docs/INPUTS.md lists every parameter.

Secrets never appear on the command line: a URI names the environment variable that holds a
connection string or password (``connection_string_env=``, ``password_env=``); a URI with a
literal ``connection_string=``, ``password=``, key or signature is refused, and so is one with
user info. :func:`from_environment` reads such a variable. Errors are
:class:`clients.eventhubs_consumer.EventHubsSourceError`: one line, never the query string.
"""
import dataclasses
import os
import re
import typing
import urllib.parse

from cdp_activation.clients.checkpoints import NAME
from cdp_activation.clients.eventhubs_consumer import (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_READ_SECONDS,
                                        DEFAULT_MAX_WAIT_SECONDS, LIVE_WATERMARK_DELAY_SECONDS,
                                        EventHubsSourceError)

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
    def bounded(self) -> bool:
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


#: What :func:`parse_input_uri` returns.
InputSpec = typing.Union[FileInput, EventHubsInput, KafkaInput, PubSubInput]


def _split_query(uri, query, allowed):
    """The URI's query parameters as a dict; refuses secrets, duplicates and unknown names."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise EventHubsSourceError("input %s: malformed query string" % display_uri(uri)) from None
    params = {}
    for name, value in pairs:
        if _SECRET_PARAMETER.match(name):
            raise EventHubsSourceError(
                "input URI parameter %r is refused: a secret must not be on the command line; put "
                "it in an environment variable and name that variable (%s)" % (
                    name, "password_env=VAR" if "pass" in name.lower() or "jaas" in name.lower()
                    else "connection_string_env=VAR"))
        if name in params:
            raise EventHubsSourceError("input %s: parameter %r given twice" % (display_uri(uri), name))
        if name not in allowed:
            raise EventHubsSourceError("input %s: unknown parameter %r (allowed: %s)" % (
                display_uri(uri), name, ", ".join(sorted(allowed))))
        params[name] = value
    return params


def display_uri(uri: str) -> str:
    """The URI without its query string (which might hold something secret-looking)."""
    return uri.split("?", 1)[0]


def _refuse_userinfo(uri, netloc):
    if "@" in netloc:
        raise EventHubsSourceError(
            "input %s: user info (user:password@) is refused in input URIs; name an environment "
            "variable instead" % display_uri(uri).split("@")[-1])


def _int_param(uri, params, name, default, minimum=1):
    if name not in params:
        return default
    try:
        value = int(params[name])
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise EventHubsSourceError("input %s: %s must be an integer >= %d" % (
            display_uri(uri), name, minimum))
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
            display_uri(uri), name, "non-negative" if zero_ok else "positive"))
    return value


def _bool_param(uri, params, name, default):
    if name not in params:
        return default
    value = params[name].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EventHubsSourceError("input %s: %s must be true or false" % (display_uri(uri), name))


def _env_param(uri, params, name, required):
    value = params.get(name)
    if value is None:
        if required:
            raise EventHubsSourceError(
                "input %s: %s=VAR is required (the environment variable holding the secret)"
                % (display_uri(uri), name))
        return None
    if not _ENV_NAME.match(value):
        raise EventHubsSourceError(
            "input %s: %s must name an environment variable (letters, digits, '_'), not hold a "
            "value" % (display_uri(uri), name))
    return value


def parse_input_uri(uri: str) -> InputSpec:
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
                                       % display_uri(uri))
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
                                   % display_uri(uri))
    hub = urllib.parse.unquote(parsed.netloc) or None
    if hub is not None and not NAME.match(hub):
        raise EventHubsSourceError("input %s: %r is not an event hub name" % (display_uri(uri), hub))
    mode = params.get("mode", "catchup").lower()
    if mode not in ("catchup", "live"):
        raise EventHubsSourceError("input %s: mode must be catchup or live" % display_uri(uri))
    consumer_group = params.get("consumer_group", "$Default")
    if not NAME.match(consumer_group):
        raise EventHubsSourceError("input %s: consumer_group %r is not a valid name"
                                   % (display_uri(uri), consumer_group))
    checkpoint_dir = params.get("checkpoint_dir") or None
    container = params.get("checkpoint_container") or None
    container_env = _env_param(uri, params, "checkpoint_connection_string_env", required=False)
    if container is not None and not re.match(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$",
                                              container):
        raise EventHubsSourceError("input %s: checkpoint_container %r is not a Blob container "
                                   "name" % (display_uri(uri), container))
    if bool(container) != bool(container_env):
        raise EventHubsSourceError(
            "input %s: checkpoint_container and checkpoint_connection_string_env go together (the "
            "container, and the variable holding its storage account's connection string)"
            % display_uri(uri))
    if container and checkpoint_dir:
        raise EventHubsSourceError("input %s: checkpoint_dir and checkpoint_container exclude "
                                   "each other" % display_uri(uri))
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
#: The Event Hubs Kafka endpoint's port.
EVENTHUBS_KAFKA_PORT = 9093


def is_eventhubs_host(host: str) -> bool:
    """Whether ``host`` is an Event Hubs namespace (Azure public, China or US Government cloud)."""
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
            host, port = part, str(EVENTHUBS_KAFKA_PORT if is_eventhubs_host(part) else 9092)
        if not host or not re.match(r"^[A-Za-z0-9.\[\]:-]+$", host) or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise EventHubsSourceError("input %s: %r is not a broker host:port"
                                       % (display_uri(uri), part))
        servers.append("%s:%s" % (host, port))
    topics = tuple(t for t in parsed.path.strip("/").split(",") if t)
    if not topics or not all(_KAFKA_TOPIC.match(t) for t in topics) or parsed.fragment:
        raise EventHubsSourceError("input %s: expected kafka://BROKER:PORT/TOPIC[,TOPIC...]"
                                   % display_uri(uri))
    connection_string_env = _env_param(uri, params, "connection_string_env", required=False)
    password_env = _env_param(uri, params, "password_env", required=False)
    username = params.get("username") or None
    if connection_string_env and (password_env or username):
        raise EventHubsSourceError(
            "input %s: connection_string_env (Event Hubs) excludes username/password_env"
            % display_uri(uri))
    if bool(username) != bool(password_env):
        raise EventHubsSourceError("input %s: username and password_env go together"
                                   % display_uri(uri))
    if not servers and not connection_string_env:
        raise EventHubsSourceError("input %s: no broker (kafka://BROKER:PORT/TOPIC)"
                                   % display_uri(uri))
    protocol = params.get("security_protocol")
    if protocol is not None:
        protocol = protocol.upper()
        if protocol not in _KAFKA_PROTOCOLS:
            raise EventHubsSourceError("input %s: security_protocol must be one of %s"
                                       % (display_uri(uri), ", ".join(_KAFKA_PROTOCOLS)))
        if connection_string_env and protocol != "SASL_SSL":
            raise EventHubsSourceError("input %s: the Event Hubs Kafka endpoint needs SASL_SSL"
                                       % display_uri(uri))
    mechanism = params.get("sasl_mechanism", "PLAIN").upper()
    if mechanism not in _KAFKA_MECHANISMS or (connection_string_env and mechanism != "PLAIN"):
        raise EventHubsSourceError("input %s: sasl_mechanism must be one of %s (PLAIN for Event "
                                   "Hubs)" % (display_uri(uri), ", ".join(_KAFKA_MECHANISMS)))
    offset_reset = params.get("offset_reset", "earliest").lower()
    if offset_reset not in ("earliest", "latest"):
        raise EventHubsSourceError("input %s: offset_reset must be earliest or latest"
                                   % display_uri(uri))
    policy = params.get("timestamp_policy")
    if policy is not None:
        matches = [p for p in _KAFKA_TIMESTAMP_POLICIES if p.lower() == policy.lower()]
        if not matches:
            raise EventHubsSourceError("input %s: timestamp_policy must be one of %s"
                                       % (display_uri(uri), ", ".join(_KAFKA_TIMESTAMP_POLICIES)))
        policy = matches[0]
    consumer_group = params.get("consumer_group", "cdp-activation")
    if not re.match(r"^[A-Za-z0-9._$-]+$", consumer_group):
        raise EventHubsSourceError("input %s: consumer_group %r is not a valid name"
                                   % (display_uri(uri), consumer_group))
    expansion_service = params.get("expansion_service") or None
    if expansion_service is not None and not re.match(r"^[A-Za-z0-9.\[\]:-]+:\d+$",
                                                      expansion_service):
        raise EventHubsSourceError("input %s: expansion_service must be host:port" % display_uri(uri))
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
            "pubsub://projects/PROJECT/topics/NAME" % display_uri(uri))
    for name in ("timestamp_attribute", "id_attribute"):
        if name in params and not re.match(r"^[A-Za-z0-9_.-]{1,256}$", params[name]):
            raise EventHubsSourceError("input %s: %s is not an attribute name"
                                       % (display_uri(uri), name))
    is_subscription = match.group(2) == "subscriptions"
    return PubSubInput(subscription=path if is_subscription else None,
                       topic=None if is_subscription else path,
                       timestamp_attribute=params.get("timestamp_attribute") or None,
                       id_attribute=params.get("id_attribute") or None)


def from_environment(environ: typing.Optional[typing.Mapping[str, str]], name: str,
                     what: str) -> str:
    """The value of the variable ``name`` in ``environ`` (default ``os.environ``), stripped.

    Raises :class:`EventHubsSourceError` naming the variable and ``what`` it holds (never a
    value) when it is missing or empty.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(name)
    if value is None or not value.strip():
        raise EventHubsSourceError("environment variable %s (the %s) is %s" % (
            name, what, "not set" if value is None else "empty"))
    return value.strip()
