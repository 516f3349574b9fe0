"""Azure Event Hubs connection strings, failures and the producer (azure-eventhub SDK); no Beam.

Shared by the sink (``transforms/eventhubs.py``, ``WriteToEventHubs``) and the source
(``clients/eventhubs_consumer.py``, ``transforms/eventhubs_source.py``), so both directions
report credentials and endpoints in the same words and redact the same way:

* :func:`parse_connection_string` (a :class:`ConnectionInfo`, whose ``repr`` hides the key) and
  :class:`Secret`, a holder whose ``repr`` shows nothing;
* failures in one secret-free line: :func:`is_auth_error`, :func:`is_not_found`,
  :func:`is_transient`, :func:`is_unreachable`, :func:`one_line`, :func:`describe_failure`;
* :func:`producer_client` and :func:`verify_connection`, the launcher's pre-flight check of an
  output hub.

Nothing here logs or raises a key or a signature: messages name the namespace and the hub.
"""
import logging
import re
import threading
import typing
import urllib.parse

from cdp_activation.core.redact import scrub

_LOGGER = logging.getLogger(__name__)


class EventHubsDeliveryError(Exception):
    """A one-line, secret-free description of why Event Hubs cannot be used."""


# ------------------------------------------------------------------------------------------------
# Connection strings
# ------------------------------------------------------------------------------------------------


class ConnectionInfo(dict):
    """The parts of a connection string; ``repr`` and ``str`` never show the key."""

    _SECRET_FIELDS = ("shared_access_key", "shared_access_signature")

    def __repr__(self):
        shown = {k: ("***" if k in self._SECRET_FIELDS and v else v) for k, v in self.items()}
        return "ConnectionInfo(%r)" % (shown,)

    __str__ = __repr__


def parse_connection_string(connection_string: str) -> ConnectionInfo:
    """Splits an Event Hubs connection string; raises :class:`EventHubsDeliveryError` if unusable.

    Returns a :class:`ConnectionInfo` with ``endpoint``, ``host``, ``port`` (None: the default),
    ``namespace`` (``host[:port]``, safe to show), ``shared_access_key_name``,
    ``shared_access_key``, ``shared_access_signature``, ``eventhub_name`` (``EntityPath``) and
    ``use_development_emulator``. Error messages name the missing part, never a value.
    """
    if not isinstance(connection_string, str) or not connection_string.strip():
        raise EventHubsDeliveryError("Event Hubs connection string is empty")
    fields = {}
    for part in connection_string.strip().split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise EventHubsDeliveryError(
                "Event Hubs connection string is malformed: a part has no '=' (expected "
                "Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...)")
        fields[name.strip().lower()] = value.strip()
    endpoint = fields.get("endpoint")
    if not endpoint:
        raise EventHubsDeliveryError("Event Hubs connection string has no Endpoint")
    parsed = urllib.parse.urlparse(endpoint if "//" in endpoint else "sb://" + endpoint)
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        raise EventHubsDeliveryError("Event Hubs connection string has an invalid Endpoint port") \
            from None
    if not host:
        raise EventHubsDeliveryError("Event Hubs connection string has an Endpoint without a host")
    key_name, key = fields.get("sharedaccesskeyname"), fields.get("sharedaccesskey")
    signature = fields.get("sharedaccesssignature")
    if not signature and not (key_name and key):
        raise EventHubsDeliveryError(
            "Event Hubs connection string needs SharedAccessKeyName and SharedAccessKey "
            "(or SharedAccessSignature)")
    display_host = "[%s]" % host if ":" in host else host
    return ConnectionInfo(
        endpoint=endpoint, host=host, port=port,
        namespace=display_host if port is None else "%s:%d" % (display_host, port),
        shared_access_key_name=key_name, shared_access_key=key,
        shared_access_signature=signature, eventhub_name=fields.get("entitypath") or None,
        use_development_emulator=fields.get("usedevelopmentemulator", "").lower() == "true")


class Secret:
    """Holds a secret so that repr(), logging and display data cannot show it by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self):
        return "<secret>"

    __str__ = __repr__

    def __getstate__(self):
        return self._value

    def __setstate__(self, state):
        self._value = state


def _redact(text, info=None):
    """``text`` without the key, signatures or ``SharedAccessKey=`` values (``core.redact``)."""
    secrets = [info[field] for field in ConnectionInfo._SECRET_FIELDS
               if info is not None and info.get(field)]
    return scrub(text, secrets)


def hub_name(info: ConnectionInfo, eventhub_name: typing.Optional[str]) -> str:
    """The event hub: ``eventhub_name``, else the connection string's ``EntityPath``."""
    hub = eventhub_name or info["eventhub_name"]
    if not hub:
        raise EventHubsDeliveryError(
            "Event Hubs event hub name is missing: add EntityPath to the connection string or "
            "set eventhub_name")
    return hub


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def _status_code(exc):
    match = re.search(r"Status code: (\d{3})", str(exc))
    return int(match.group(1)) if match else None


def is_not_found(exc: BaseException) -> bool:
    """A missing event hub (or, for a consumer, consumer group)."""
    # The service answers a token for a missing event hub with CBS status 404, which the SDK
    # raises as an AuthenticationError too.
    return _status_code(exc) == 404 or "amqp:not-found" in str(exc)


def is_auth_error(exc: BaseException) -> bool:
    """Rejected credentials (not a missing hub, which the service also reports through CBS)."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.eventhub.exceptions import AuthenticationError
    if is_not_found(exc):
        return False
    return isinstance(exc, (AuthenticationError, ClientAuthenticationError)) or \
        _status_code(exc) in (401, 403)


def is_transient(exc: BaseException) -> bool:
    """Errors worth another attempt with a fresh client (credentials and bad data are not)."""
    from azure.eventhub.exceptions import EventDataError, EventHubError
    if is_auth_error(exc) or is_not_found(exc) or isinstance(exc, EventDataError):
        return False
    if re.search(r"message-size-exceeded|MessageSizeExceeded", str(exc)):
        return False                    # the service refused the size: resending cannot help
    return isinstance(exc, (EventHubError, OSError, TimeoutError))


def is_unreachable(exc: BaseException) -> bool:
    """A connection that could not be made (refused, unknown host, timed out)."""
    text = str(exc)
    return isinstance(exc, OSError) or any(marker in text for marker in (
        "SocketError", "Connection refused", "Failed to initiate the connection",
        "Name or service not known", "nodename nor servname", "timed out"))


def one_line(exc: BaseException, info: typing.Optional[ConnectionInfo] = None) -> str:
    """``ExceptionClass: first line of the message``, redacted and shortened."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = "%s: %s" % (type(exc).__name__, first) if first else type(exc).__name__
    text = _redact(text, info)
    return text if len(text) <= 300 else text[:297] + "..."


def describe_failure(exc: BaseException, info: ConnectionInfo, hub: str) -> str:
    """The one-line explanation of a failure to use ``hub`` (for users; no secret)."""
    where = "%s/%s" % (info["namespace"], hub)
    if is_auth_error(exc):
        return "Event Hubs rejected the credentials for %s" % where
    if is_not_found(exc):
        return "Event Hubs has no event hub %s (check EntityPath / eventhub_name)" % where
    if is_unreachable(exc):
        return "Event Hubs endpoint %s is unreachable" % info["namespace"]
    return "Event Hubs check of %s failed: %s" % (where, one_line(exc, info))


def close_quietly(closable: typing.Any, what: str) -> None:
    """Closes an SDK client or consumer; a failure to close is only logged (debug)."""
    if closable is None:
        return
    try:
        closable.close()
    except Exception as exc:  # pylint: disable=broad-except
        _LOGGER.debug("closing the Event Hubs %s failed: %s", what, type(exc).__name__)


def bounded_wait(check: typing.Callable[[], None], timeout_seconds: float, name: str) -> bool:
    """Runs ``check()`` in a daemon thread named ``name``; False when it did not end in time.

    The SDK blocks without a deadline while an endpoint accepts TCP but stays silent.
    """
    thread = threading.Thread(target=check, name=name, daemon=True)
    thread.start()
    thread.join(timeout_seconds)
    return not thread.is_alive()


# ------------------------------------------------------------------------------------------------
# The producer
# ------------------------------------------------------------------------------------------------


def producer_client(connection_string: str, eventhub_name: typing.Optional[str],
                    retry_total: int, retry_backoff_factor: float, retry_backoff_max: float,
                    timeout_seconds: float) -> typing.Any:
    """An ``EventHubProducerClient`` with exponential retries and a bounded CBS handshake."""
    from azure.eventhub import EventHubProducerClient
    kwargs = {"retry_total": retry_total, "retry_backoff_factor": retry_backoff_factor,
              "retry_backoff_max": retry_backoff_max, "retry_mode": "exponential",
              # Bounds the CBS handshake too: a silent endpoint must not hang a worker.
              "auth_timeout": max(1, int(timeout_seconds))}
    if eventhub_name:
        kwargs["eventhub_name"] = eventhub_name
    return EventHubProducerClient.from_connection_string(connection_string, **kwargs)


def verify_connection(connection_string: str, eventhub_name: typing.Optional[str] = None,
                      timeout_seconds: float = 10) -> typing.Dict[str, typing.Any]:
    """Checks that the connection string reaches the event hub and is accepted by it.

    Opens a producer and reads the hub's properties (one management call: TCP, SASL, CBS
    put-token, READ), without the SDK's retries so that a rejected key fails in about a second.
    Returns the hub's properties (``eventhub_name``, ``created_at``, ``partition_ids``).

    Raises :class:`EventHubsDeliveryError` whose message is one line naming the problem, e.g.
    ``Event Hubs rejected the credentials for <namespace>/<hub>`` or ``Event Hubs endpoint
    <host:port> is unreachable``. The message never contains the key or a signature. An endpoint
    that does not answer within ``timeout_seconds`` is reported as unreachable.
    """
    info = parse_connection_string(connection_string)
    hub = hub_name(info, eventhub_name)
    outcome = {}

    def check():
        client = None
        try:
            client = producer_client(connection_string, eventhub_name, 0, 0.1, 1, timeout_seconds)
            outcome["properties"] = client.get_eventhub_properties()
        except Exception as exc:  # pylint: disable=broad-except
            outcome["error"] = exc
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # pylint: disable=broad-except
                    pass

    if not bounded_wait(check, timeout_seconds, "eventhubs-verify"):
        raise EventHubsDeliveryError("Event Hubs endpoint %s is unreachable (no answer within %s s)"
                                     % (info["namespace"], timeout_seconds))
    if "error" in outcome:
        raise EventHubsDeliveryError(describe_failure(outcome["error"], info, hub)) from None
    return outcome["properties"]
