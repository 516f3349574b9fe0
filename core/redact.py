"""The one secret scrubber: keeps secrets out of everything the pipeline prints or logs.

``Redactor`` knows the secret values of a job (connection strings, keys, passwords, header values,
signing secrets) and also masks secret-looking fragments it was not told about (``AccountKey=``,
``SharedAccessKey=``, ``sig=``, ``password=``, ``Authorization:``, ``Bearer <token>``, the password
of ``scheme://user:password@host``). :func:`scrub` is a one-off ``Redactor``.
``install_log_redaction`` puts it on every log record. Logs, error texts, dead-letter reasons,
work-event notes and the run summary all go through it; :func:`redact_url` shows a URL without its
path and query, :func:`mask_secrets` a config with its secret keys masked.

On workers, credentials arrive as ``${VAR}`` references (:class:`core.config.EnvRef`) and are
resolved in the DoFns' ``setup()`` with :func:`reveal` / :func:`reveal_settings`, which also add
the values to this process's log redaction.
"""
from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Protocol, TypeVar, overload

from cdp_activation.core.config import SECRET_KEYS, EnvRef, resolve_settings

if TYPE_CHECKING:
    from cdp_activation.core.workflows import AlertSettings

MASK = "****"


def _name_equals_mask(match):
    return "%s=%s" % (match.group(1), MASK)


#: Secret-looking fragments and what replaces them, in this order.
_PATTERNS = [
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^/\s@]+@"), r"\1:" + MASK + "@"),
    (re.compile(r"(?i)(AccountKey|SharedAccessKey|SharedAccessSignature|SharedAccessKeyName)=([^;&\s\"']+)"),
     _name_equals_mask),
    (re.compile(r"(?i)\b(sig|se|skn|password|passwd|pwd|token|secret)=([^;&\s\"']+)"),
     _name_equals_mask),
    (re.compile(r"(?i)(Authorization)\s*[:=]\s*((?:Bearer|Basic|SharedAccessSignature)\s+)?([^\s,\"']+)"),
     _name_equals_mask),
    (re.compile(r"(?i)(X-Signature)\s*[:=]\s*([^\s\"']+)"), _name_equals_mask),
]
_AUTH_SCHEMES = {"bearer", "basic", "token", "digest", "sharedaccesssignature"}
_Settings = TypeVar("_Settings")


class Revealable(Protocol):
    """A credential held so that ``repr`` never shows it; ``reveal()`` gives its text."""

    def reveal(self) -> str: ...


def collect_secrets(raw_config: Any) -> set[str]:
    """Every secret value in a (substituted) raw config: secret keys and header values."""
    found = set()

    def walk(value, key=None):
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "headers" and isinstance(v, dict):
                    for x in v.values():
                        if x not in (None, ""):
                            found.add(str(x))
                            # "Bearer <token>": the token alone is a secret too
                            found.update(part for part in str(x).split()
                                         if len(part) >= 6 and part.lower() not in _AUTH_SCHEMES)
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif key in SECRET_KEYS and isinstance(value, str) and value:
            found.add(value)
            # Parts of a connection string are secrets on their own too.
            for part in value.split(";"):
                if "=" in part:
                    name, _, secret = part.partition("=")
                    if name.lower() in ("accountkey", "sharedaccesskey", "sharedaccesssignature"):
                        found.add(secret)
    walk(raw_config)
    return {s for s in found if len(s) >= 4}


class Redactor:
    """Masks known secret values (longest first) and secret-looking fragments in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted(set(self._secrets) | set(secrets), key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        if not isinstance(text, str):
            text = str(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def scrub(text: Any, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets`` and every secret-looking fragment masked."""
    return Redactor(secrets)(text)


def settings_secrets(settings: AlertSettings) -> List[str]:
    """Texts of an alert work's settings to mask in anything quoted from its server: the signing
    secret, the password, header values and their tokens (``Bearer <token>``), the webhook URL,
    its path, query and long path segments. Longest first."""
    values = [getattr(settings, "signing_secret", None), getattr(settings, "password", None),
              getattr(settings, "webhook_url", None)]
    for value in (getattr(settings, "headers", None) or {}).values():
        values.append(str(value))
        values += [part for part in str(value).split() if len(part) >= 8]
    url = getattr(settings, "webhook_url", None)
    if url:
        parts = urllib.parse.urlsplit(url)
        values += [parts.path if parts.path.strip("/") else None, parts.query]
        values += [segment for segment in parts.path.split("/") if len(segment) >= 12]
    return sorted({str(v) for v in values if v and len(str(v)) >= 4}, key=len, reverse=True)


def redact_url(url: Optional[str]) -> str:
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


def mask_secrets(value: Any, key: Optional[str] = None) -> Any:
    """A copy of a config value with every secret replaced, for plans and display data."""
    if key in SECRET_KEYS and value:
        return MASK
    if isinstance(value, dict):
        if key == "headers":  # header values are often tokens
            return {k: MASK for k in value}
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor):
        super().__init__()
        self._redactor = redactor

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not stop logging
            message = str(record.msg)
        record.msg = self._redactor(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(redactor: Redactor) -> logging.Filter:
    """Redacts every record reaching the root logger's handlers (and any added later to root)."""
    root = logging.getLogger()
    flt = _RedactingFilter(redactor)
    for handler in root.handlers:
        handler.addFilter(flt)
    root.addFilter(flt)
    # Records from child loggers skip root's own filters, so also patch the record factory.
    old_factory = logging.getLogRecordFactory()
    if getattr(old_factory, "_redacting", False):
        return flt

    def factory(*args, **kwargs):
        record = old_factory(*args, **kwargs)
        flt.filter(record)
        return record
    factory._redacting = True
    logging.setLogRecordFactory(factory)
    return flt


_PROCESS_REDACTOR = Redactor()
_PROCESS_LOCK = threading.Lock()
_process_installed = False


def secret_parts(value: object) -> set[str]:
    """A secret and the parts of it that are secrets on their own (a connection string's key,
    a header's token), as :func:`collect_secrets` counts them."""
    if not isinstance(value, str) or not value:
        return set()
    return collect_secrets({"connection_string": value, "headers": {"v": value}})


def protect(secrets: Iterable[object]) -> None:
    """Masks ``secrets`` (and their parts) in every later log record of this process.

    Installs the process-wide redaction once (a worker has no launcher to do it)."""
    global _process_installed
    found = set()
    for secret in secrets:
        found |= secret_parts(secret)
    if not found:
        return
    with _PROCESS_LOCK:
        _PROCESS_REDACTOR.add(found)
        if not _process_installed:
            install_log_redaction(_PROCESS_REDACTOR)
            _process_installed = True


@overload
def reveal(value: None, environ: Mapping[str, str] | None = None) -> None: ...


@overload
def reveal(value: str | EnvRef | Revealable, environ: Mapping[str, str] | None = None) -> str: ...


def reveal(value: str | EnvRef | Revealable | None, environ: Mapping[str, str] | None = None
           ) -> str | None:
    """The plain text of a credential: an :class:`EnvRef` resolved from ``environ`` (default
    this process's environment), an object with ``reveal()``, or a string (None stays None).

    The value is added to this process's log redaction (:func:`protect`). Raises
    ``core.config.ConfigError`` naming the variable when an :class:`EnvRef`'s is unset.
    """
    if value is None:
        return None
    if isinstance(value, EnvRef):
        text = value.resolve(environ)
    elif hasattr(value, "reveal"):
        text = value.reveal()
    else:
        text = value
    protect([text])
    return text


def reveal_settings(settings: _Settings, environ: Mapping[str, str] | None = None) -> _Settings:
    """A work's settings with every :class:`EnvRef` resolved (``core.config.resolve_settings``),
    the resolved credentials added to this process's log redaction."""
    resolved = resolve_settings(settings, environ)
    if resolved is not settings:
        values = []
        for name in ("connection_string", "password", "signing_secret", "webhook_url"):
            values.append(getattr(resolved, name, None))
        values.extend((getattr(resolved, "headers", None) or {}).values())
        protect([v for v in values if isinstance(v, str)])
    return resolved
