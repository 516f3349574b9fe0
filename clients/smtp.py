"""The SMTP client of ``email_system_events`` alerts: messages, the guarded and encrypted session,
and the retries; no Beam (``transforms/alerts.py`` wraps it).

- One message per alert to every recipient: subject ``[<account>] <subject type> <subject id>
  <verb>`` (:func:`email_subject`), a plain-text body (:func:`email_text`), and a ``Message-ID``
  and ``X-Event-Id`` that are the same on every retry.
- STARTTLS whenever the server offers it (port 465: implicit TLS), certificates verified. With a
  username the password is only ever sent over TLS: a server without STARTTLS gets no login and
  the alert fails. The SMTP host passes the address check of webhooks
  (:func:`clients.alerting.open_guarded_socket`).
- Retries (:mod:`clients.retry`): connection errors, timeouts, disconnects and 4xx replies; not
  retried: 5xx replies (bad credentials, unknown mailbox...), a refused address, a certificate
  that does not verify, a server without TLS when logging in.
"""
import email.utils
import hashlib
import json
import logging
import smtplib
import ssl
import time
from email.message import EmailMessage
from typing import Any, Callable, Dict, Optional

from cdp_activation.clients.alerting import (AlertError, alert_policy, clean_line, describe_error,
                              header_safe, open_guarded_socket)
from cdp_activation.clients.retry import Failure, Result
from cdp_activation.core import netguard
from cdp_activation.core.records import SystemEvent
from cdp_activation.core.redact import Redactor, reveal_settings, settings_secrets
from cdp_activation.core.workflows import AlertSettings

log = logging.getLogger(__name__)


def email_subject(event: SystemEvent, account_name: Optional[str] = None) -> str:
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
    return clean_line(prefix + subject)


def email_text(event: SystemEvent) -> str:
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


class EmailSender:
    """Delivers the alerts of one ``email_system_events`` work over SMTP.

    One SMTP session is opened on first use and reused (checked with NOOP) until an error or
    :meth:`close`. Retried as the module docstring says (``max_attempts``, default 3). ``${VAR}``
    references in ``settings`` are resolved here (on a worker: in the DoFn's ``setup()``).
    """

    def __init__(self, work_id: str, settings: AlertSettings, account_name: Optional[str] = None,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        settings = reveal_settings(settings)
        self.work_id, self.settings, self.account_name = work_id, settings, account_name
        self._policy = alert_policy(settings.max_attempts, sleep)
        self._redact = Redactor(settings_secrets(settings))
        self._smtp = None

    def describe(self) -> str:
        """A loggable summary: host, port, number of recipients, login; no values."""
        return "SMTP %s:%s to %d recipient(s), login: %s" % (
            self.settings.smtp_host, self.settings.smtp_port, len(self.settings.recipients),
            "yes" if self.settings.username else "no")

    def preview(self, event: SystemEvent) -> Dict[str, Any]:
        """The message as the local sink records it: ``{"to", "subject", "body"}``."""
        return {"to": list(self.settings.recipients),
                "subject": email_subject(event, self.account_name), "body": email_text(event)}

    def message(self, event: SystemEvent) -> EmailMessage:
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
            raise AlertError("cannot build the message: %s" % clean_line(exc)) from None
        msg.set_content(preview["body"])
        return msg

    def send(self, event: SystemEvent) -> Result:
        """Delivers one alert (a :class:`core.records.SystemEvent`), retrying as documented."""
        try:
            message = self.message(event)
        except AlertError as exc:
            return Result(False, 0, str(exc))
        return self._policy.run(lambda: self._attempt(message), self._classify,
                                "work %s alert %s" % (self.work_id, event.id))

    def close(self) -> None:
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
        except Exception:
            self._drop_session()
            raise
        if refused:
            log.warning("work %s: %d recipient(s) refused the alert: %s", self.work_id,
                        len(refused), ", ".join(sorted(refused)))

    def _classify(self, exc):
        """The :class:`clients.retry.Failure` of an SMTP error; anything else is raised."""
        if isinstance(exc, netguard.AddressRefused):
            return Failure(str(exc))
        if isinstance(exc, _CleartextLoginRefused):
            return Failure("SMTP server %s does not offer STARTTLS; refusing to send "
                           "credentials without TLS" % self.settings.smtp_host)
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in exc.recipients.values()]
            return Failure("SMTP: all recipients refused (%s)" % ", ".join(str(c) for c in codes),
                           all(400 <= c < 500 for c in codes))
        if isinstance(exc, smtplib.SMTPResponseException):
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            reason = self._redact("SMTP %d %s" % (exc.smtp_code, clean_line(text)))
            return Failure(reason, 400 <= exc.smtp_code < 500)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Failure("TLS certificate verification failed: %s"
                           % (exc.verify_message or exc.reason))
        if isinstance(exc, TimeoutError):
            return Failure("timed out after %gs" % self.settings.timeout_seconds, True)
        if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
            return Failure(self._redact("connection error: " + describe_error(exc)), True)
        if isinstance(exc, smtplib.SMTPException):
            return Failure("SMTP: %s" % self._redact(clean_line(exc)))
        if isinstance(exc, (ValueError, UnicodeError)):  # e.g. a non-ASCII address, no SMTPUTF8
            return Failure("cannot send the message (%s)" % type(exc).__name__)
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
