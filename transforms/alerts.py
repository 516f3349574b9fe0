"""System-event alerts: webhooks and email (CONTRACT 5.3, Lytics ``webhook_system_events``).

The Beam side: the composites, their DoFns (a client made in ``setup()``, counters, tagged dead
letters) and the local sink. The clients are Beam-free: :mod:`clients.webhook` (requests,
signatures, the guarded connection) and :mod:`clients.smtp`, both retried by :mod:`clients.retry`.

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

  :func:`clients.webhook.verify_webhook_signature` does exactly this.
- Retries: connection errors, timeouts, 408, 425, 429 and 5xx, with exponential backoff and full
  jitter (base 0.5 s, cap 30 s) or ``Retry-After``, up to ``max_attempts`` (:mod:`clients.retry`;
  see :class:`_WebhookDeliveryFn`). What cannot be delivered goes to the dead-letter file.
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
import functools
import logging
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from cdp_activation.clients.alerting import AlertError
from cdp_activation.clients.smtp import EmailSender
from cdp_activation.clients.webhook import HttpClient, WebhookSender, check_headers
from cdp_activation.core.config import Work
from cdp_activation.core.records import SystemEvent, dead_letter
from cdp_activation.core.system_events import matches
from cdp_activation.transforms import outputs
from cdp_activation.transforms.localsink import DEFAULT_FLUSH_SECONDS, WriteJsonLinesFile

log = logging.getLogger(__name__)

DELIVERED = "delivered"
DEADLETTER = "deadletter"
_LOCAL_SINK = "local_sink"


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
    """POSTs each alert to the work's webhook (:class:`clients.webhook.WebhookSender`, made in
    ``setup()``).

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
    """Emails each alert (:class:`clients.smtp.EmailSender`, made in ``setup()``); retries as it
    documents."""


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

    def __init__(self, work: Work, output_dir: str, label: Optional[str] = None,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
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

    def __init__(self, work: Work, output_dir: str, label: Optional[str] = None,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
        super().__init__(work, output_dir, label, flush_seconds)
        check_headers(self._settings.headers)
        if self._settings.webhook_url:  # parses the URL now: a bad one fails at construction
            HttpClient(self._settings.webhook_url, 1.0, False)

    def _remote(self):
        return bool(self._settings.webhook_url)

    def _make_sender(self):
        return functools.partial(WebhookSender, self._work_id, self._worker_settings)


class SendEmailAlerts(_SendAlerts):
    """Emails matching system events over SMTP (see the module guide)."""
    _default_label = "EmailAlerts"
    _delivery_fn_class = _EmailDeliveryFn

    def __init__(self, work: Work, output_dir: str, label: Optional[str] = None,
                 account_name: Optional[str] = None,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
        super().__init__(work, output_dir, label, flush_seconds)
        self._account_name = account_name

    def _remote(self):
        return bool(self._settings.smtp_host)

    def _make_sender(self):
        return functools.partial(EmailSender, self._work_id, self._worker_settings,
                                 self._account_name)
