"""The webhook client of ``webhook_system_events`` alerts: requests, headers, signatures, the
guarded connection and the retries; no Beam (``transforms/alerts.py`` wraps it).

- One ``POST`` per alert with ``Content-Type: application/json``, the configured headers,
  ``User-Agent`` (unless configured) and ``X-Event-Id`` (the same on every retry; characters
  outside printable ASCII percent-encoded). Configured ``Content-Type``, ``Content-Length``,
  ``Host``, ``X-Event-Id`` and ``X-Signature`` are replaced by the client's.
- With a signing secret, ``X-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 over
  ``<X-Event-Id>.<t>.<raw body>`` (:func:`sign_webhook`, :func:`verify_webhook_signature`).
- Retries (:mod:`clients.retry`): connection errors, timeouts, 408, 425, 429 and every 5xx, with
  the server's ``Retry-After`` or exponential backoff with full jitter; not retried: other 4xx,
  every 3xx (redirects are never followed), a refused address, a certificate that does not verify.
- The host must resolve to public addresses unless ``allow_private_network``
  (:func:`clients.alerting.open_guarded_socket`); HTTP proxies are not used.
- Logs and reasons name the host and header *names*, never header values, the signing secret or
  the URL's path and query; response texts quoted in reasons have those values masked.
"""
import hashlib
import hmac
import http.client
import json
import logging
import re
import socket
import ssl
import time
import urllib.parse
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from cdp_activation.clients.alerting import (AlertError, alert_policy, describe_error, header_safe,
                              open_guarded_socket, snippet)
from cdp_activation.clients.retry import Failure, Result, parse_retry_after, retryable_status
from cdp_activation.core import netguard
from cdp_activation.core.records import SystemEvent
from cdp_activation.core.redact import Redactor, redact_url, reveal_settings, settings_secrets
from cdp_activation.core.templates import TemplateError, TemplateRenderer
from cdp_activation.core.workflows import AlertSettings

log = logging.getLogger(__name__)

SIGNATURE_TOLERANCE_SECONDS = 300
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "audience-activation-alerts/1.0"
_RESERVED_HEADERS = frozenset(("content-type", "content-length", "host", "x-event-id",
                               "x-signature"))
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def sign_webhook(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``<event_id>.<timestamp>.<body>`` keyed with ``secret``."""
    message = ("%s.%d." % (event_id, timestamp)).encode("utf-8") + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_webhook_signature(secret: str, event_id: str, body: bytes, header: str,
                             now: Optional[float] = None,
                             tolerance: float = SIGNATURE_TOLERANCE_SECONDS) -> bool:
    """Whether an ``X-Signature`` header is valid for this event id and raw body (receiver side)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError, AttributeError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign_webhook(secret, event_id, timestamp, body), given)


def check_headers(headers: Optional[Mapping[str, Any]]) -> None:
    """Raises ValueError (naming the header, never its value) for a header HTTP cannot carry."""
    for name, value in (headers or {}).items():
        if not _TOKEN.match(str(name)):
            raise ValueError("headers: %r is not a valid header name" % (name,))
        text = str(value)
        if any(ch in text for ch in "\r\n\0") or not all(ord(ch) < 256 for ch in text):
            raise ValueError("headers.%s: value contains a line break or a non-Latin-1 character"
                             % name)


def _json_bytes(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, timeout, allow_private):
        super().__init__(host, port, timeout=timeout)
        self._allow_private = allow_private

    def connect(self):
        self.sock = open_guarded_socket(self.host, self.port, self.timeout, self._allow_private)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, timeout, allow_private):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._allow_private = allow_private

    def connect(self):
        sock = open_guarded_socket(self.host, self.port, self.timeout, self._allow_private)
        # SNI and certificate check use the host name; the socket goes to the checked address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class HttpClient:
    """One keep-alive connection to the webhook's origin, reopened after any error.

    Constructing it parses the URL: a URL that is not http(s) with a host raises ValueError.
    """

    def __init__(self, url: str, timeout: float, allow_private: bool) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook_url must be an http:// or https:// URL")
        self._scheme, self._host = parts.scheme, parts.hostname
        # Always explicit: http.client would read the last group of a bare IPv6 host as a port.
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self._timeout, self._allow_private = timeout, allow_private
        self._conn = None

    def post(self, body: bytes, headers: Dict[str, str]) -> Tuple[int, str, Any, bytes]:
        """``(status, reason, headers, first bytes of the body)``; raises on transport errors.

        A kept-alive connection the server has closed meanwhile is replaced at once (once), as
        urllib3 does, rather than costing an attempt and a backoff.
        """
        if self._conn is not None and self._conn.sock is not None:
            try:
                return self._post_once(body, headers)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                log.debug("kept-alive connection to %s was closed; reconnecting", self._host)
        return self._post_once(body, headers)

    def _post_once(self, body, headers):
        if self._conn is None:
            cls = _GuardedHTTPSConnection if self._scheme == "https" else _GuardedHTTPConnection
            self._conn = cls(self._host, self._port, self._timeout, self._allow_private)
        try:
            self._conn.request("POST", self._target, body=body, headers=headers)
            response = self._conn.getresponse()
            data = response.read(MAX_RESPONSE_BYTES)
        except BaseException:
            self.close()
            raise
        if response.will_close or not response.isclosed():
            self.close()  # server closes, or a body too long to drain: start afresh next time
        return response.status, response.reason, response.headers, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class WebhookSender:
    """Delivers the alerts of one ``webhook_system_events`` work with the retry policy of the
    module docstring (``max_attempts`` in all). Usable without Beam; close it when done.

    ``settings``: the work's :class:`core.workflows.AlertSettings`; ``${VAR}`` references are
    resolved here (on a worker: in the DoFn's ``setup()``). ``sleep``: the wait between attempts
    (tests pass a recorder).
    """

    def __init__(self, work_id: str, settings: AlertSettings,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        settings = reveal_settings(settings)
        check_headers(settings.headers)
        self.work_id, self.settings = work_id, settings
        self._policy = alert_policy(settings.max_attempts, sleep)
        self._redact = Redactor(settings_secrets(settings))
        self._renderer = TemplateRenderer() if settings.json_template else None
        self._client = HttpClient(settings.webhook_url, settings.timeout_seconds,
                                  settings.allow_private_network) if settings.webhook_url else None

    def describe(self) -> str:
        """A loggable summary: host, header names, signing; no values."""
        names = sorted((self.settings.headers or {}).keys())
        return "POST %s (headers: %s; signed: %s)" % (
            redact_url(self.settings.webhook_url), ", ".join(names) or "none",
            "yes" if self.settings.signing_secret else "no")

    def preview(self, event: SystemEvent) -> Any:
        """The body value that would be sent for ``event``; AlertError on a template error."""
        if self._renderer is None:
            return event.record
        try:
            return self._renderer.render(self.settings.json_template, event.record)
        except TemplateError as exc:
            raise AlertError("template error: %s" % exc) from None

    def send(self, event: SystemEvent) -> Result:
        """Delivers one alert (a :class:`core.records.SystemEvent`), retrying as documented."""
        try:
            body = _json_bytes(self.preview(event))
        except AlertError as exc:
            return Result(False, 0, str(exc))
        if self._client is None:
            raise ValueError("work %s has no webhook_url to send to" % self.work_id)
        event_id = header_safe(event.id)
        return self._policy.run(lambda: self._attempt(event_id, body), self._classify_error,
                                "work %s alert %s" % (self.work_id, event_id))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._renderer is not None:
            self._renderer.close()

    def _headers(self, event_id, body):
        headers = {k: str(v) for k, v in (self.settings.headers or {}).items()
                   if k.lower() not in _RESERVED_HEADERS}
        if not any(k.lower() == "user-agent" for k in headers):
            headers["User-Agent"] = USER_AGENT
        headers["Content-Type"] = "application/json"
        headers["X-Event-Id"] = event_id
        if self.settings.signing_secret:
            timestamp = int(time.time())
            headers["X-Signature"] = "t=%d,v1=%s" % (
                timestamp, sign_webhook(self.settings.signing_secret, event_id, timestamp, body))
        return headers

    def _attempt(self, event_id, body):
        """One POST; returns on a 2xx, raises :class:`clients.retry.Failure` on any other."""
        status, reason, headers, data = self._client.post(body, self._headers(event_id, body))
        if 200 <= status < 300:
            return status
        text = ("HTTP %d %s" % (status, reason or "")).strip()
        if 300 <= status < 400:
            location = headers.get("Location")
            where = " to %s" % redact_url(location) if location else ""
            raise Failure("%s: redirect%s not followed" % (text, where))
        if retryable_status(status):
            raise Failure(text, True, parse_retry_after(headers.get("Retry-After")))
        quoted = snippet(data, self._redact)
        raise Failure(text + (": " + quoted if quoted else ""))

    def _classify_error(self, exc):
        """The :class:`clients.retry.Failure` of a transport error; anything else is raised."""
        if isinstance(exc, netguard.AddressRefused):
            return Failure(str(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Failure("TLS certificate verification failed: %s"
                           % (exc.verify_message or exc.reason))
        if isinstance(exc, TimeoutError):
            return Failure("timed out after %gs" % self.settings.timeout_seconds, True)
        if isinstance(exc, (OSError, http.client.HTTPException)):
            return Failure(self._redact("connection error: " + describe_error(exc)), True)
        if isinstance(exc, ValueError):  # http.client refusing a request; its text may quote values
            return Failure("invalid request (%s)" % type(exc).__name__)
        raise exc
