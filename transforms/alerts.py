"""System-event alerts: webhooks and email (CONTRACT 5.3, Lytics ``webhook_system_events``).

User guide
==========

Two composites take a PCollection of :class:`core.records.SystemEvent` (input system events and the
pipeline's own work events, CONTRACT 5.4) and deliver those that match the work's filter
(``system_event_type`` / ``system_event_multiple_types`` / ``system_event_sources``; see
:func:`core.system_events.matches`). A work with ``paused: true`` delivers nothing.

``SendWebhookAlerts(work, output_dir)`` -- workflow ``webhook_system_events``::

    - id: w-slack
      workflow: webhook_system_events
      config:
        system_event_type: failed
        webhook_url: ${SLACK_WEBHOOK_URL}
        json_template: >-
          local note = if std.objectHas(event.data, "notes") then event.data.notes else "A work failed";
          {"text": "Alert notification: " + note + ". For more info go to: https://activate.getlytics.com/data/integrations/work/%s?aid=%s" % [event.data.subject_id, event.data.aid] }
        headers: {Authorization: "Bearer ${HOOK_TOKEN}"}   # optional
        signing_secret: ${HOOK_SECRET}                     # optional, adds X-Signature
        timeout_seconds: 10                                # per attempt (connect, send, each read)
        max_attempts: 5                                    # attempts in total, first one included

- Each matching event is one ``POST webhook_url`` with ``Content-Type: application/json``, the
  configured ``headers``, ``User-Agent`` (unless configured) and ``X-Event-Id: <system event id>``,
  the same on every retry so receivers can drop duplicates (delivery is at least once). Configured
  headers named ``Content-Type``, ``Content-Length``, ``Host``, ``X-Event-Id`` or ``X-Signature``
  are replaced by the pipeline's. An event id with characters outside printable ASCII is
  percent-encoded in the header.
- Body: the system event object as received, or with ``json_template`` the value of that Jsonnet
  program with the event bound to ``event`` (the Lytics Slack example works as written; see
  :mod:`core.templates` for the sandbox: no imports, bounded time, stack, memory and output).
- Signature (with ``signing_secret``): ``X-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
  HMAC-SHA256 keyed with the secret over ``<X-Event-Id>.<t>.<raw body bytes>``. ``t`` is the time of
  the attempt. To verify, a receiver:

  1. splits the header on ``,`` and ``=`` to get ``t`` and ``v1``;
  2. rejects the request when ``|now - t|`` exceeds its tolerance (300 s is usual), which stops
     replays;
  3. computes ``hmac.new(secret, f"{x_event_id}.{t}.".encode() + raw_body, hashlib.sha256)
     .hexdigest()`` over the body bytes exactly as received (before any JSON parsing), and
  4. compares it with ``v1`` using ``hmac.compare_digest``.

  :func:`verify_webhook_signature` does exactly this.
- Retries: connection errors, timeouts, 408, 425, 429 and 5xx, with exponential backoff and full
  jitter (base 0.5 s, cap 30 s) or ``Retry-After``, up to ``max_attempts``; see
  :class:`_WebhookDeliveryFn`. What cannot be delivered goes to the dead-letter file.
- Destinations are checked at connect time: a host that resolves to a loopback, private,
  link-local (cloud metadata), CGNAT, unique-local, multicast or reserved address is refused, in any
  spelling (``0x7f000001``, ``[::ffff:127.0.0.1]``...; see :mod:`core.netguard`), unless the work
  sets ``allow_private_network: true`` (local runs and tests). The checked address is the one
  connected to, so DNS rebinding cannot swap it. Redirects are never followed: a 3xx is a failure.
  HTTP proxies are not used.
- No ``webhook_url``: nothing is sent; ``<output_dir>/alerts/<work id>.jsonl`` receives the bodies
  that would have been sent, one per line.

``SendEmailAlerts(work, output_dir, account_name=None)`` -- workflow ``email_system_events``::

    - id: w-mail
      workflow: email_system_events
      config: {system_event_type: failed, smtp_host: smtp.example.com, smtp_port: 587,
               from: alerts@example.com, to: [ops@example.com], username: alerts,
               password: ${SMTP_PASSWORD}}

- One message per matching event to all of ``to``, subject ``[<account>] <subject type>
  <subject id> <verb>`` (e.g. ``[acme] work w-1 failed``; without an account name, ``[aid 1234]``
  from the event), a plain-text body with the notes and the event JSON, a ``Message-ID`` and an
  ``X-Event-Id`` that are the same on every retry.
- SMTP with STARTTLS whenever the server offers it (port 465: implicit TLS), certificates verified.
  With ``username`` the password is only ever sent over TLS: a server that offers no STARTTLS gets
  no login, and the alert is dead-lettered. The SMTP host passes the same address check as webhooks.
- Transient failures (connection errors, timeouts, 4xx replies) are retried like webhooks; 5xx
  replies (e.g. authentication failed, mailbox unknown) are dead-lettered at once.
- No ``smtp_host``: ``<output_dir>/alerts/<work id>.jsonl`` receives ``{"to", "subject", "body"}``.

Outputs of both composites
--------------------------
- ``<output_dir>/deadletter/<work id>.jsonl``: ``{"raw": <event record>, "error": <reason>,
  "source": <work id>}`` per alert given up on (template error, refused address, non-retryable
  status, exhausted retries). A template error dead-letters that alert only.
- On an unbounded input both files are written in parts, ``<output_dir>/alerts/<work id>/`` and
  ``<output_dir>/deadletter/<work id>/``, every ``flush_seconds`` (see :mod:`transforms.localsink`).
- The composite returns ``{"delivered": <PCollection of event ids>, "deadletter": <PCollection of
  dead-letter records>}``.
- Beam counters in namespace ``work:<work id>``: ``alerts_delivered`` (sent, or written to the
  local sink), ``deadlettered`` (alerts given up on) and ``failures`` (failed attempts, retried or
  not).
- Logs name the destination host and header *names*; never header values, the signing secret, the
  SMTP password or the webhook URL's path and query (a Slack webhook URL is itself a credential).
  Response texts quoted in dead-letter reasons have those values masked.
"""
import dataclasses
import datetime as _dt
import email.utils
import functools
import hashlib
import hmac
import http.client
import json
import logging
import random
import re
import smtplib
import socket
import ssl
import time
import urllib.parse
from email.message import EmailMessage
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from core import netguard
from core.records import SystemEvent, dead_letter
from core.redact import Redactor, reveal_settings
from core.system_events import matches
from core.templates import TemplateError, TemplateRenderer
from transforms import outputs
from transforms.localsink import DEFAULT_FLUSH_SECONDS, WriteJsonLinesFile

log = logging.getLogger(__name__)

DELIVERED = "delivered"
DEADLETTER = "deadletter"
_LOCAL_SINK = "local_sink"

BASE_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "audience-activation-alerts/1.0"
_RESERVED_HEADERS = frozenset(("content-type", "content-length", "host", "x-event-id",
                               "x-signature"))
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: 4xx statuses that ask the client to come back later; every 5xx is retried as well.
_RETRYABLE_4XX = frozenset((408, 425, 429))


# --------------------------------------------------------------------------------------------
# Delivery outcomes and the retry policy.


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What became of one alert: delivered or not, after how many attempts, and why not."""
    ok: bool
    attempts: int
    reason: str = ""
    failures: int = 0


@dataclasses.dataclass(frozen=True)
class _Outcome:
    ok: bool
    reason: str = ""
    retryable: bool = False
    retry_after: Optional[float] = None


_OK = _Outcome(True)


class AlertError(Exception):
    """An alert that cannot be built (template error, unencodable header); the message says why."""


def backoff_delay(attempt, rng, retry_after=None):
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    ``Retry-After`` (seconds) wins, capped at :data:`MAX_BACKOFF_SECONDS`; otherwise exponential
    backoff with full jitter: uniform in [0, min(cap, base * 2 ** (attempt - 1))].
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_BACKOFF_SECONDS)
    exponent = min(attempt - 1, 32)  # past the cap anyway; keeps huge attempt counts finite
    return rng.uniform(0.0, min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2 ** exponent))


def parse_retry_after(value, now=None):
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _with_retries(attempt_once, max_attempts, sleep, rng, what):
    """Runs ``attempt_once`` until it succeeds, fails for good, or ``max_attempts`` are used."""
    failures = 0
    for attempt in range(1, max_attempts + 1):
        outcome = attempt_once()
        if outcome.ok:
            return Delivery(True, attempt, "", failures)
        failures += 1
        if not outcome.retryable:
            suffix = " (attempt %d, not retried)" % attempt if attempt > 1 else " (not retried)"
            return Delivery(False, attempt, outcome.reason + suffix, failures)
        if attempt < max_attempts:
            delay = backoff_delay(attempt, rng, outcome.retry_after)
            log.info("%s: attempt %d of %d failed (%s); retrying in %.2fs",
                     what, attempt, max_attempts, outcome.reason, delay)
            sleep(delay)
    return Delivery(False, max_attempts, "gave up after %d attempt%s: %s"
                    % (max_attempts, "s" if max_attempts > 1 else "", outcome.reason), failures)


# --------------------------------------------------------------------------------------------
# Redaction helpers.


def _secret_values(settings):
    """Texts to mask in anything quoted from a server: secrets, header values and their tokens
    (``Bearer <token>``), the webhook URL's path, query and long path segments."""
    values = [settings.signing_secret, settings.password, settings.webhook_url]
    for value in (settings.headers or {}).values():
        values.append(str(value))
        values += [part for part in str(value).split() if len(part) >= 8]
    if settings.webhook_url:
        parts = urllib.parse.urlsplit(settings.webhook_url)
        values += [parts.path if parts.path.strip("/") else None, parts.query]
        values += [segment for segment in parts.path.split("/") if len(segment) >= 12]
    return sorted({str(v) for v in values if v and len(str(v)) >= 4}, key=len, reverse=True)


def redact_url(url):
    """``scheme://host[:port]`` of a URL, plus ``/…`` when it has a path or query (not shown)."""
    try:
        parts = urllib.parse.urlsplit(url or "")
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = "[%s]" % host
    shown = "%s://%s%s" % (parts.scheme or "?", host, ":%d" % port if port else "")
    return shown + ("/…" if parts.path.strip("/") or parts.query else "")


def _snippet(data, redact, limit=200):
    text = " ".join(data[:limit * 4].decode("utf-8", errors="replace").split())
    return redact(text)[:limit]


def _describe_error(exc):
    detail = getattr(exc, "strerror", None) or str(exc)
    return "%s: %s" % (type(exc).__name__, detail) if detail else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Guarded connections: resolve once, check every address, connect to a checked address.


def open_guarded_socket(host, port, timeout, allow_private):
    """A TCP connection to ``host:port`` after checking the resolved addresses (core.netguard)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not allow_private:
        netguard.check_addrinfo(host, infos)
    error = OSError("no address to connect to for %s" % host)
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


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


class _GuardedSMTP(smtplib.SMTP):
    def __init__(self, host, port, timeout, allow_private):
        self._allow_private = allow_private
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        return open_guarded_socket(host, port, timeout, self._allow_private)


class _GuardedSMTPSSL(smtplib.SMTP_SSL):
    def __init__(self, host, port, timeout, allow_private):
        self._allow_private = allow_private
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())

    def _get_socket(self, host, port, timeout):
        sock = open_guarded_socket(host, port, timeout, self._allow_private)
        return self.context.wrap_socket(sock, server_hostname=self._host)


# --------------------------------------------------------------------------------------------
# Webhooks.


def sign_webhook(secret, event_id, timestamp, body):
    """Hex HMAC-SHA256 of ``<event_id>.<timestamp>.<body>`` keyed with ``secret``."""
    message = ("%s.%d." % (event_id, timestamp)).encode("utf-8") + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_webhook_signature(secret, event_id, body, header, now=None,
                             tolerance=SIGNATURE_TOLERANCE_SECONDS):
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


def header_safe(value):
    """``value`` as an HTTP header value: printable ASCII kept, anything else percent-encoded."""
    if all(" " <= ch <= "~" for ch in value):
        return value
    return urllib.parse.quote(value, safe="".join(chr(c) for c in range(0x21, 0x7F) if c != 0x25))


def check_headers(headers):
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


class _HttpClient:
    """One keep-alive connection to the webhook's origin, reopened after any error."""

    def __init__(self, url, timeout, allow_private):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook_url must be an http:// or https:// URL")
        self._scheme, self._host = parts.scheme, parts.hostname
        # Always explicit: http.client would read the last group of a bare IPv6 host as a port.
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self._timeout, self._allow_private = timeout, allow_private
        self._conn = None

    def post(self, body, headers):
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

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class WebhookSender:
    """Delivers the alerts of one ``webhook_system_events`` work, with the retry policy of
    :class:`_WebhookDeliveryFn`. Usable without Beam; close it when done.
    """

    def __init__(self, work_id, settings, sleep=time.sleep):
        # ${VAR} references (Work.worker_settings) are resolved here: on the worker, in setup().
        settings = reveal_settings(settings)
        check_headers(settings.headers)
        self.work_id, self.settings = work_id, settings
        self._sleep, self._rng = sleep, random.Random()
        self._redact = Redactor(_secret_values(settings))
        self._renderer = TemplateRenderer() if settings.json_template else None
        self._client = _HttpClient(settings.webhook_url, settings.timeout_seconds,
                                   settings.allow_private_network) if settings.webhook_url else None

    def describe(self):
        """A loggable summary: host, header names, signing; no values."""
        names = sorted((self.settings.headers or {}).keys())
        return "POST %s (headers: %s; signed: %s)" % (
            redact_url(self.settings.webhook_url), ", ".join(names) or "none",
            "yes" if self.settings.signing_secret else "no")

    def preview(self, event):
        """The body value that would be sent for ``event``; AlertError on a template error."""
        if self._renderer is None:
            return event.record
        try:
            return self._renderer.render(self.settings.json_template, event.record)
        except TemplateError as exc:
            raise AlertError("template error: %s" % exc) from None

    def send(self, event):
        try:
            body = _json_bytes(self.preview(event))
        except AlertError as exc:
            return Delivery(False, 0, str(exc))
        if self._client is None:
            raise ValueError("work %s has no webhook_url to send to" % self.work_id)
        event_id = header_safe(event.id)
        return _with_retries(lambda: self._attempt(event_id, body), self.settings.max_attempts,
                             self._sleep, self._rng, "work %s alert %s" % (self.work_id, event_id))

    def close(self):
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
        try:
            status, reason, headers, data = self._client.post(body, self._headers(event_id, body))
        except netguard.AddressRefused as exc:
            return _Outcome(False, str(exc))
        except ssl.SSLCertVerificationError as exc:
            return _Outcome(False, "TLS certificate verification failed: %s"
                            % (exc.verify_message or exc.reason))
        except TimeoutError:
            return _Outcome(False, "timed out after %gs" % self.settings.timeout_seconds, True)
        except (OSError, http.client.HTTPException) as exc:
            return _Outcome(False, self._redact("connection error: " + _describe_error(exc)), True)
        except ValueError as exc:  # http.client refusing a request; its text may quote values
            return _Outcome(False, "invalid request (%s)" % type(exc).__name__)
        return self._classify(status, reason, headers, data)

    def _classify(self, status, reason, headers, data):
        if 200 <= status < 300:
            return _OK
        text = "HTTP %d %s" % (status, reason or "")
        if 300 <= status < 400:
            location = headers.get("Location")
            where = " to %s" % redact_url(location) if location else ""
            return _Outcome(False, "%s: redirect%s not followed" % (text.strip(), where))
        if status in _RETRYABLE_4XX or status >= 500:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            return _Outcome(False, text.strip(), True, retry_after)
        snippet = _snippet(data, self._redact)
        return _Outcome(False, text.strip() + (": " + snippet if snippet else ""))


# --------------------------------------------------------------------------------------------
# Email.


def _clean_line(text, limit=200):
    return " ".join(str(text).split())[:limit]


def email_subject(event, account_name=None):
    """``[acme] work w-1 failed``: account, subject type and id, verb."""
    data = event.data or {}
    if account_name:
        prefix = "[%s] " % account_name
    elif data.get("aid") is not None:
        prefix = "[aid %s] " % data["aid"]
    else:
        prefix = ""
    subject = " ".join(str(part) for part in (data.get("subject_type"), data.get("subject_id"),
                                               data.get("verb")) if part not in (None, ""))
    return _clean_line(prefix + subject)


def email_text(event):
    """The plain-text body: a summary line, the notes, and the event as JSON."""
    data = event.data or {}
    lines = ["System event %s at %s: %s %s %s." % (
        event.id, event.record.get("ts", ""), data.get("subject_type", ""),
        data.get("subject_id", ""), data.get("verb", ""))]
    if data.get("notes"):
        lines += ["", "Notes: %s" % data["notes"]]
    lines += ["", "Event:", json.dumps(event.record, indent=2, sort_keys=True, ensure_ascii=False),
              ""]
    return "\n".join(lines)


class _CleartextLoginRefused(Exception):
    pass


class EmailSender:
    """Delivers the alerts of one ``email_system_events`` work over SMTP.

    One SMTP session is opened on first use and reused (checked with NOOP) until an error or
    :meth:`close`. STARTTLS is used whenever offered (port 465: implicit TLS); credentials are never
    sent without TLS. Retried like webhooks (:func:`backoff_delay`, ``max_attempts``, default 3):
    connection errors, timeouts, disconnects and 4xx replies. Not retried: 5xx replies (bad
    credentials, unknown mailbox...), a refused address, a server without TLS when logging in.
    """

    def __init__(self, work_id, settings, account_name=None, sleep=time.sleep):
        settings = reveal_settings(settings)    # on the worker, in setup()
        self.work_id, self.settings, self.account_name = work_id, settings, account_name
        self._sleep, self._rng = sleep, random.Random()
        self._redact = Redactor(_secret_values(settings))
        self._smtp = None

    def describe(self):
        return "SMTP %s:%s to %d recipient(s), login: %s" % (
            self.settings.smtp_host, self.settings.smtp_port, len(self.settings.recipients),
            "yes" if self.settings.username else "no")

    def preview(self, event):
        """The message as the local sink records it: ``{"to", "subject", "body"}``."""
        return {"to": list(self.settings.recipients),
                "subject": email_subject(event, self.account_name), "body": email_text(event)}

    def message(self, event):
        """The ``EmailMessage`` for ``event``; AlertError when a header cannot be encoded."""
        preview = self.preview(event)
        sender = self.settings.sender or ""
        domain = sender.rpartition("@")[2] or "localhost"
        digest = hashlib.sha256(("%s|%s" % (self.work_id, event.id)).encode("utf-8")).hexdigest()
        msg = EmailMessage()
        try:
            msg["Subject"] = preview["subject"]
            msg["From"] = sender
            msg["To"] = ", ".join(preview["to"])
            msg["Date"] = email.utils.formatdate(usegmt=True)
            msg["Message-ID"] = "<%s@%s>" % (digest[:32], domain)
            msg["X-Event-Id"] = header_safe(event.id)
        except (ValueError, TypeError) as exc:
            raise AlertError("cannot build the message: %s" % _clean_line(exc)) from None
        msg.set_content(preview["body"])
        return msg

    def send(self, event):
        try:
            message = self.message(event)
        except AlertError as exc:
            return Delivery(False, 0, str(exc))
        return _with_retries(lambda: self._attempt(message), self.settings.max_attempts,
                             self._sleep, self._rng, "work %s alert %s" % (self.work_id, event.id))

    def close(self):
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None

    def _attempt(self, message):
        try:
            refused = self._session().send_message(message, self.settings.sender,
                                                   list(self.settings.recipients))
        except Exception as exc:  # noqa: BLE001 - every failure is classified below
            self._drop_session()
            return self._classify(exc)
        if refused:
            log.warning("work %s: %d recipient(s) refused the alert: %s", self.work_id,
                        len(refused), ", ".join(sorted(refused)))
        return _OK

    def _classify(self, exc):
        if isinstance(exc, netguard.AddressRefused):
            return _Outcome(False, str(exc))
        if isinstance(exc, _CleartextLoginRefused):
            return _Outcome(False, "SMTP server %s does not offer STARTTLS; refusing to send "
                                   "credentials without TLS" % self.settings.smtp_host)
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in exc.recipients.values()]
            return _Outcome(False, "SMTP: all recipients refused (%s)"
                            % ", ".join(str(c) for c in codes), all(400 <= c < 500 for c in codes))
        if isinstance(exc, smtplib.SMTPResponseException):
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            reason = self._redact("SMTP %d %s" % (exc.smtp_code, _clean_line(text)))
            return _Outcome(False, reason, 400 <= exc.smtp_code < 500)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return _Outcome(False, "TLS certificate verification failed: %s"
                            % (exc.verify_message or exc.reason))
        if isinstance(exc, TimeoutError):
            return _Outcome(False, "timed out after %gs" % self.settings.timeout_seconds, True)
        if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
            return _Outcome(False, self._redact("connection error: " + _describe_error(exc)), True)
        if isinstance(exc, smtplib.SMTPException):
            return _Outcome(False, "SMTP: %s" % self._redact(_clean_line(exc)))
        if isinstance(exc, (ValueError, UnicodeError)):  # e.g. a non-ASCII address, no SMTPUTF8
            return _Outcome(False, "cannot send the message (%s)" % type(exc).__name__)
        raise exc

    def _session(self):
        if self._smtp is not None:
            try:
                if self._smtp.noop()[0] == 250:
                    return self._smtp
            except (smtplib.SMTPException, OSError):
                pass
            self._drop_session()
        settings = self.settings
        implicit_tls = settings.smtp_port == 465
        cls = _GuardedSMTPSSL if implicit_tls else _GuardedSMTP
        smtp = cls(settings.smtp_host, settings.smtp_port, settings.timeout_seconds,
                   settings.allow_private_network)
        try:
            self._secure_and_login(smtp, implicit_tls)
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _secure_and_login(self, smtp, implicit_tls):
        smtp.ehlo()
        secure = implicit_tls
        if not implicit_tls and smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
            secure = True
        if self.settings.username:
            if not secure:
                raise _CleartextLoginRefused()
            smtp.login(self.settings.username, self.settings.password or "")

    def _drop_session(self):
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None


# --------------------------------------------------------------------------------------------
# Beam.


class _Counters:
    def __init__(self, work_id):
        namespace = "work:" + work_id
        self.delivered = Metrics.counter(namespace, "alerts_delivered")
        self.deadlettered = Metrics.counter(namespace, "deadlettered")
        self.failures = Metrics.counter(namespace, "failures")


def _is_alert(event, settings, paused):
    return not paused and isinstance(event, SystemEvent) and matches(settings, event)


class _SenderFn(beam.DoFn):
    """A DoFn holding one work's sender: made in ``setup()``, closed in ``teardown()``."""

    def __init__(self, work_id, make_sender):
        self._work_id, self._make_sender = work_id, make_sender
        self._sender = self._counters = None

    def setup(self):
        self._sender = self._make_sender()
        self._counters = _Counters(self._work_id)

    def teardown(self):
        if self._sender is not None:
            self._sender.close()
            self._sender = None


class _DeliverFn(_SenderFn):
    """Sends each alert and dead-letters what it cannot deliver."""

    def setup(self):
        super().setup()
        log.info("work %s: alerts via %s", self._work_id, self._sender.describe())

    def process(self, event):
        delivery = self._sender.send(event)
        self._counters.failures.inc(delivery.failures)
        if delivery.ok:
            self._counters.delivered.inc()
            yield event.id
            return
        self._counters.deadlettered.inc()
        log.warning("work %s: alert %s dead-lettered: %s", self._work_id, event.id,
                    delivery.reason)
        yield beam.pvalue.TaggedOutput(DEADLETTER,
                                       dead_letter(event.record, delivery.reason, self._work_id))


class _WebhookDeliveryFn(_DeliverFn):
    """POSTs each alert to the work's webhook (:class:`WebhookSender`, made in ``setup()``).

    Retry policy, as in GoogleCloudPlatform DataflowTemplates' bigquery-anomaly-detection webhook
    DoFn (2xx success; 5xx, 408, 425, 429 transient; other 4xx permanent), with one difference:
    retries happen here, bounded, instead of by failing the bundle. A failed bundle is retried
    forever by a streaming runner (one dead endpoint would stall the pipeline) and re-sends the
    bundle's other alerts.

    - retried: connection errors (refused, reset, DNS failure), timeouts (``timeout_seconds`` per
      socket operation), HTTP 408, 425, 429 and every 5xx;
    - wait before attempt n + 1: the response's ``Retry-After`` (seconds or HTTP date) capped at
      30 s when present, else exponential backoff with full jitter, uniform in
      ``[0, min(30 s, 0.5 s * 2 ** (n - 1))]``;
    - at most ``max_attempts`` attempts in total (default 5), all with the same ``X-Event-Id`` and
      each with a fresh signature timestamp;
    - not retried: other 4xx, every 3xx (redirects are never followed), a refused address, a TLS
      certificate that does not verify, a template error;
    - given up: the alert goes to ``<output_dir>/deadletter/<work id>.jsonl`` with the reason
      (``gave up after 5 attempts: HTTP 503 Service Unavailable``, ``HTTP 400 Bad Request: <first
      200 characters of the response, secrets masked> (not retried)``...).

    The wait blocks the bundle: alerts are few, and this bounds the work in flight. With the
    defaults an alert is given up on after at most 7.5 s of backoff plus five timeouts.
    """


class _EmailDeliveryFn(_DeliverFn):
    """Emails each alert (:class:`EmailSender`, made in ``setup()``); retries as it documents."""


class _LocalSinkFn(_SenderFn):
    """Writes what would be sent to the local sink (no destination configured)."""

    def process(self, event):
        try:
            value = self._sender.preview(event)
        except AlertError as exc:
            self._counters.deadlettered.inc()
            log.warning("work %s: alert %s dead-lettered: %s", self._work_id, event.id, exc)
            yield beam.pvalue.TaggedOutput(DEADLETTER,
                                           dead_letter(event.record, str(exc), self._work_id))
            return
        self._counters.delivered.inc()
        yield beam.pvalue.TaggedOutput(_LOCAL_SINK, value)
        yield event.id


class _SendAlerts(beam.PTransform):
    _default_label = "Alerts"
    _delivery_fn_class = _DeliverFn

    def __init__(self, work, output_dir, label=None, flush_seconds=DEFAULT_FLUSH_SECONDS):
        super().__init__(label or "%s[%s]" % (self._default_label, work.id))
        # Checked here, on the launcher, with the credentials resolved; the DoFns get
        # ``worker_settings``, whose ${VAR} references are resolved on the worker.
        self._work_id, self._settings = work.id, work.settings
        self._worker_settings = work.worker_settings or work.settings
        # What the match step needs, without any credential.
        self._filter_settings = dataclasses.replace(
            work.settings, webhook_url=None, headers={}, signing_secret=None, password=None,
            username=None)
        self._paused, self._output_dir = bool(work.paused), output_dir
        self._flush_seconds = flush_seconds

    def _remote(self):
        raise NotImplementedError

    def _make_sender(self):
        raise NotImplementedError

    def expand(self, events):
        matching = events | "Match" >> beam.Filter(_is_alert, self._filter_settings, self._paused)
        fn_class = self._delivery_fn_class if self._remote() else _LocalSinkFn
        results = matching | "Deliver" >> beam.ParDo(
            fn_class(self._work_id, self._make_sender())).with_outputs(
                DEADLETTER, _LOCAL_SINK, main=DELIVERED)
        if not self._remote():
            _ = results[_LOCAL_SINK] | "WriteLocalSink" >> WriteJsonLinesFile(
                outputs.join(self._output_dir, "alerts", self._work_id + ".jsonl"),
                flush_seconds=self._flush_seconds)
        _ = results[DEADLETTER] | "WriteDeadLetter" >> WriteJsonLinesFile(
            outputs.join(self._output_dir, "deadletter", self._work_id + ".jsonl"),
            flush_seconds=self._flush_seconds, write_empty=False)
        return {DELIVERED: results[DELIVERED], DEADLETTER: results[DEADLETTER]}


class SendWebhookAlerts(_SendAlerts):
    """POSTs matching system events to the work's ``webhook_url`` (see the module guide)."""
    _default_label = "WebhookAlerts"
    _delivery_fn_class = _WebhookDeliveryFn

    def __init__(self, work, output_dir, label=None, flush_seconds=DEFAULT_FLUSH_SECONDS):
        super().__init__(work, output_dir, label, flush_seconds)
        check_headers(self._settings.headers)
        if self._settings.webhook_url:  # parses the URL now: a bad one fails at construction
            _HttpClient(self._settings.webhook_url, 1.0, False)

    def _remote(self):
        return bool(self._settings.webhook_url)

    def _make_sender(self):
        return functools.partial(WebhookSender, self._work_id, self._worker_settings)


class SendEmailAlerts(_SendAlerts):
    """Emails matching system events over SMTP (see the module guide)."""
    _default_label = "EmailAlerts"
    _delivery_fn_class = _EmailDeliveryFn

    def __init__(self, work, output_dir, label=None, account_name=None,
                 flush_seconds=DEFAULT_FLUSH_SECONDS):
        super().__init__(work, output_dir, label, flush_seconds)
        self._account_name = account_name

    def _remote(self):
        return bool(self._settings.smtp_host)

    def _make_sender(self):
        return functools.partial(EmailSender, self._work_id, self._worker_settings,
                                 self._account_name)
