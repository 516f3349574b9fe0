"""What the alert clients (:mod:`clients.webhook`, :mod:`clients.smtp`) share: a connection to a
checked address, the error of an alert that cannot be built, and secret-free one-line texts.

Destinations are user input. :func:`open_guarded_socket` resolves the host once, checks every
address (:mod:`core.netguard`: loopback, private, link-local/metadata, CGNAT, unique-local,
multicast and reserved addresses are refused, in any spelling) unless private networks are
allowed, and connects to a checked address, so DNS rebinding cannot swap it.
"""
import socket
import urllib.parse
from typing import Any, Callable

from cdp_activation.clients.retry import RetryPolicy
from cdp_activation.core import netguard


class AlertError(Exception):
    """An alert that cannot be built (template error, unencodable header); the message says why."""


def open_guarded_socket(host: str, port: int, timeout: float, allow_private: bool) -> socket.socket:
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


def header_safe(value: str) -> str:
    """``value`` as a header value: printable ASCII kept, anything else percent-encoded."""
    if all(" " <= ch <= "~" for ch in value):
        return value
    return urllib.parse.quote(value, safe="".join(chr(c) for c in range(0x21, 0x7F) if c != 0x25))


def describe_error(exc: BaseException) -> str:
    """``ExceptionClass: detail`` of a transport error (its ``strerror`` when it has one)."""
    detail = getattr(exc, "strerror", None) or str(exc)
    return "%s: %s" % (type(exc).__name__, detail) if detail else type(exc).__name__


def clean_line(text: Any, limit: int = 200) -> str:
    """``text`` on one line, whitespace collapsed, cut at ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def snippet(data: bytes, redact: Callable[[str], str], limit: int = 200) -> str:
    """The first ``limit`` characters of a response body, on one line, secrets masked."""
    text = " ".join(data[:limit * 4].decode("utf-8", errors="replace").split())
    return redact(text)[:limit]


#: Backoff of alert deliveries (webhook and SMTP): full jitter from 0.5 s, at most 30 s a wait.
BASE_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


def alert_policy(max_attempts: int, sleep: Callable[[float], Any]) -> RetryPolicy:
    """The retry policy of one alert work: ``max_attempts`` in all, the alert backoff."""
    return RetryPolicy(max_attempts=max_attempts, base_seconds=BASE_BACKOFF_SECONDS,
                       cap_seconds=MAX_BACKOFF_SECONDS, sleep=sleep)
