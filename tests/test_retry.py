"""clients.retry: the one retry policy. Attempts and waits are counted (an injected ``sleep``
records instead of waiting); no test waits on wall time."""
import dataclasses
import datetime as _dt
import logging
import random

import pytest

from cdp_activation.clients.alerting import BASE_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, alert_policy
from cdp_activation.clients.retry import Failure, RetryPolicy, parse_retry_after, retryable_status


class Flaky:
    """An operation that raises the given exceptions in turn, then returns ``value``."""

    def __init__(self, *errors, value="done"):
        self.errors, self.value, self.calls = list(errors), value, 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def transient(exc):
    return Failure("transient %s" % exc, True)


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = dataclasses.replace(alert_policy(5, sleep=None), rng=random.Random(7))
    for attempt in range(1, 12):
        ceiling = min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2 ** (attempt - 1))
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling        # the whole range is used (full jitter)
    assert policy.backoff(1, retry_after=2.5) == 2.5
    assert policy.backoff(1, retry_after=1e6) == MAX_BACKOFF_SECONDS
    assert policy.backoff(10 ** 6) <= MAX_BACKOFF_SECONDS   # huge attempt counts stay finite


def test_parse_retry_after():
    now = _dt.datetime(2026, 11, 20, 10, 0, 0, tzinfo=_dt.timezone.utc)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Fri, 20 Nov 2026 10:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Fri, 20 Nov 2026 09:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_retryable_statuses():
    assert [s for s in (200, 301, 400, 404, 408, 425, 429, 500, 503, 599) if retryable_status(s)] \
        == [408, 425, 429, 500, 503, 599]


def test_transient_failures_are_retried_until_success_with_one_wait_each():
    waits = []
    operation = Flaky(OSError("reset"), OSError("reset"))
    result = RetryPolicy(5, 0.5, 30.0, sleep=waits.append).run(operation, transient)
    assert result.ok and result.value == "done"
    assert (result.attempts, result.failures, operation.calls, len(waits)) == (3, 2, 3, 2)
    assert 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0


def test_exhausted_attempts_give_up_with_the_last_reason():
    waits = []
    result = RetryPolicy(3, sleep=waits.append).run(
        Flaky(*[OSError(n) for n in range(5)]), transient)
    assert not result.ok and result.attempts == result.failures == 3 and len(waits) == 2
    assert result.reason == "gave up after 3 attempts: transient 2"
    assert isinstance(result.error, OSError)
    one = RetryPolicy(1, sleep=waits.append).run(Flaky(OSError("x")), transient)
    assert one.reason == "gave up after 1 attempt: transient x" and len(waits) == 2


def test_a_failure_that_is_not_retryable_stops_at_once():
    waits = []
    policy = RetryPolicy(5, sleep=waits.append)
    first = policy.run(Flaky(Failure("HTTP 400 Bad Request")), transient)
    assert not first.ok and first.attempts == 1 and waits == []
    assert first.reason == "HTTP 400 Bad Request (not retried)"
    later = policy.run(Flaky(OSError("x"), Failure("HTTP 404 Not Found")), transient)
    assert later.attempts == 2 and later.failures == 2 and len(waits) == 1
    assert later.reason == "HTTP 404 Not Found (attempt 2, not retried)"


def test_retry_after_is_waited_and_capped():
    waits = []
    policy = RetryPolicy(3, 0.5, 30.0, sleep=waits.append)
    result = policy.run(Flaky(Failure("HTTP 429", True, 7.0), Failure("HTTP 503", True, 1e6)),
                        transient)
    assert result.ok and waits == [7.0, 30.0]


def test_an_error_classify_does_not_know_is_raised():
    def classify(exc):
        raise exc

    calls = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        RetryPolicy(5, sleep=lambda s: None).run(calls, classify)
    assert calls.calls == 1


def test_each_retry_is_logged_at_the_policy_level(caplog):
    with caplog.at_level(logging.INFO, logger="cdp_activation.clients.retry"):
        RetryPolicy(2, sleep=lambda s: None, log_level=logging.WARNING).run(
            Flaky(OSError("reset")), transient, "work w-1 alert a-1")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("work w-1 alert a-1: attempt 1 of 2 failed "
                                          "(transient reset); retrying in ")
