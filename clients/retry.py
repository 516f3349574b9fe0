"""The one retry policy of every delivery: webhooks, SMTP, the Event Hubs sink and Blob writes.

A :class:`RetryPolicy` runs one operation until it succeeds, fails for good, or ``max_attempts``
are used. The caller says what a failure means with a ``classify`` function (an exception in, a
:class:`Failure` out: its one-line reason, whether it is retryable and, for HTTP, the server's
``Retry-After``). Between attempts the policy waits ``Retry-After`` (capped), else exponential
backoff with full jitter: uniform in ``[0, min(cap, base * 2 ** (n - 1))]`` after failed attempt
``n``. ``sleep`` and ``rng`` are injectable, so tests count attempts and waits and never wait on
wall time.

Own code rather than urllib3's ``Retry`` or tenacity: the classification is per protocol (HTTP
statuses, SMTP reply codes, Azure SDK errors), which those would take as much code to express.
"""
import dataclasses
import datetime as _dt
import email.utils
import logging
import random
import time
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

#: HTTP statuses that ask the client to come back later; every 5xx is retried as well.
RETRYABLE_4XX = frozenset((408, 425, 429))


def retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth another attempt: 408, 425, 429 and every 5xx."""
    return status in RETRYABLE_4XX or status >= 500


def parse_retry_after(value: Optional[str], now: Optional[_dt.datetime] = None
                      ) -> Optional[float]:
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


class Failure(Exception):
    """One failed attempt: a secret-free one-line ``reason``, whether another attempt may help,
    and how long the server asked to wait (seconds, or None)."""

    def __init__(self, reason: str, retryable: bool = False,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after


@dataclasses.dataclass(frozen=True)
class Result:
    """What became of one operation: ``ok`` (with ``value``) or not (``reason``, and the last
    ``error`` raised), after ``attempts`` attempts of which ``failures`` failed."""
    ok: bool
    attempts: int
    reason: str = ""
    failures: int = 0
    value: Any = None
    error: Optional[BaseException] = None


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Attempts, backoff and waiting of one kind of delivery (see the module docstring)."""
    max_attempts: int = 5
    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    sleep: Callable[[float], Any] = time.sleep
    rng: Optional[random.Random] = None
    #: The level of the line logged before each wait (a sink whose retries the user should see
    #: logs them as warnings).
    log_level: int = logging.INFO

    def backoff(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_seconds)
        exponent = min(attempt - 1, 32)  # past the cap anyway; keeps huge attempt counts finite
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** exponent)
        return (self.rng or random).uniform(0.0, ceiling)

    def run(self, operation: Callable[[], Any], classify: Callable[[Exception], Failure],
            what: str = "delivery") -> Result:
        """Calls ``operation()`` until it returns, or raises a failure that is not retryable, or
        ``max_attempts`` are used. ``classify`` turns what it raises into a :class:`Failure` (a
        :class:`Failure` raised by the operation is taken as it is); it may re-raise what it
        does not know. The reason of a result given up on ends with ``(not retried)`` or starts
        with ``gave up after <n> attempts``."""
        attempts = max(1, int(self.max_attempts))
        failure = error = None
        for attempt in range(1, attempts + 1):
            try:
                return Result(True, attempt, "", attempt - 1, operation())
            except Exception as exc:  # noqa: BLE001 - classify decides, or re-raises
                error = exc
                failure = exc if isinstance(exc, Failure) else classify(exc)
            if not failure.retryable:
                suffix = " (attempt %d, not retried)" % attempt if attempt > 1 else " (not retried)"
                return Result(False, attempt, failure.reason + suffix, attempt, error=error)
            if attempt < attempts:
                delay = self.backoff(attempt, failure.retry_after)
                log.log(self.log_level, "%s: attempt %d of %d failed (%s); retrying in %.2fs",
                        what, attempt, attempts, failure.reason, delay)
                self.sleep(delay)
        return Result(False, attempts, "gave up after %d attempt%s: %s" % (
            attempts, "s" if attempts > 1 else "", failure.reason), attempts, error=error)
