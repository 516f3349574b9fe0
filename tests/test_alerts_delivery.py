"""WebhookSender without Beam: retry timing, signatures, TLS; header values; URL display."""
import hashlib
import hmac
import socket
import time

import pytest

from tests.fixtures_alerts import Reply, make_work, system_event
from cdp_activation.clients.alerting import BASE_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, header_safe
from cdp_activation.clients.webhook import WebhookSender, verify_webhook_signature
from cdp_activation.core.redact import redact_url


def sender_for(url, sleep=time.sleep, **config):
    work = make_work("webhook_system_events",
                     {"webhook_url": url, "allow_private_network": True, **config})
    return WebhookSender(work.id, work.settings, sleep=sleep)


def deliver(url, event=None, **config):
    sender = sender_for(url, **config)
    try:
        return sender.send(event or system_event("se-1"))
    finally:
        sender.close()


def test_429_waits_for_retry_after(webhook_server):
    waits = []
    webhook_server.script("/hook", Reply(429, headers={"Retry-After": "1"}), Reply(200))
    delivery = deliver(webhook_server.url(), sleep=waits.append)

    assert len(webhook_server.requests()) == 2
    assert delivery.ok and delivery.attempts == 2
    assert waits == [1]          # the server's Retry-After, through the injected sleep


def test_retry_after_is_capped(webhook_server):
    waits = []
    webhook_server.script("/hook", Reply(503, headers={"Retry-After": "86400"}), Reply(200))
    assert deliver(webhook_server.url(), sleep=waits.append).ok
    assert waits == [MAX_BACKOFF_SECONDS]


def test_persistent_5xx_is_given_up_after_max_attempts(webhook_server):
    waits = []
    webhook_server.script("/hook", Reply(500), Reply(502), Reply(503), Reply(200))
    delivery = deliver(webhook_server.url(), sleep=waits.append, max_attempts=3)

    assert len(webhook_server.requests()) == 3
    assert not delivery.ok and delivery.failures == 3
    assert delivery.reason == "gave up after 3 attempts: HTTP 503 Service Unavailable"
    assert len(waits) == 2
    assert 0 <= waits[0] <= BASE_BACKOFF_SECONDS and 0 <= waits[1] <= 2 * BASE_BACKOFF_SECONDS


def test_408_is_retried_and_other_4xx_are_not(webhook_server):
    webhook_server.script("/hook", Reply(408), Reply(404))
    delivery = deliver(webhook_server.url(), sleep=lambda s: None)
    assert not delivery.ok and delivery.attempts == 2
    assert delivery.reason.startswith("HTTP 404 Not Found")
    assert delivery.reason.endswith("(attempt 2, not retried)")


def test_connection_refused_is_retried_then_given_up():
    with socket.socket() as probe:   # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delivery = deliver("http://127.0.0.1:%d/hook" % port, sleep=lambda s: None, max_attempts=2)
    assert not delivery.ok and delivery.attempts == 2
    assert "ConnectionRefusedError" in delivery.reason


def test_keep_alive_connection_is_reused(webhook_server):
    sender = sender_for(webhook_server.url())
    try:
        assert sender.send(system_event("se-1")).ok and sender.send(system_event("se-2")).ok
    finally:
        sender.close()
    first, second = webhook_server.requests()
    assert [first.headers["x-event-id"], second.headers["x-event-id"]] == ["se-1", "se-2"]
    assert first.peer == second.peer


def test_signature_verifies(webhook_server):
    secret = "whsec-0123456789"
    before = int(time.time())
    assert deliver(webhook_server.url(), signing_secret=secret).ok
    after = int(time.time())

    [request] = webhook_server.requests()
    header = request.headers["x-signature"]
    t = header.split(",")[0].split("=")[1]
    expected = hmac.new(secret.encode(), b"se-1." + t.encode() + b"." + request.body,
                        hashlib.sha256).hexdigest()
    assert header == "t=%s,v1=%s" % (t, expected)
    assert before <= int(t) <= after          # signed with the time of sending, in seconds
    assert verify_webhook_signature(secret, "se-1", request.body, header)
    assert not verify_webhook_signature(secret, "se-1", request.body + b" ", header)
    assert not verify_webhook_signature(secret, "se-2", request.body, header)
    assert not verify_webhook_signature("other-secret", "se-1", request.body, header)
    assert not verify_webhook_signature(secret, "se-1", request.body, header, now=int(t) + 3600)


def test_configured_headers_cannot_override_the_pipelines(webhook_server):
    assert deliver(webhook_server.url(), headers={"content-type": "text/plain",
                                                  "X-Event-Id": "forged", "X-Team": "ops"}).ok
    [request] = webhook_server.requests()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-event-id"] == "se-1"
    assert request.headers["x-team"] == "ops"


def test_https_uses_the_host_name_for_tls_and_host(https_webhook_server, trust_test_cert):
    assert deliver(https_webhook_server.url()).ok
    [request] = https_webhook_server.requests()
    assert request.headers["host"] == "localhost:%d" % https_webhook_server.port


def test_https_with_an_untrusted_certificate_is_not_retried(https_webhook_server):
    delivery = deliver(https_webhook_server.url(), sleep=lambda s: None)
    assert https_webhook_server.requests() == []
    assert not delivery.ok and delivery.attempts == 1
    assert delivery.reason.startswith("TLS certificate verification failed")


@pytest.mark.parametrize("value, sent", [("se-1", "se-1"), ("a b", "a b"),
                                         ("x\r\nInjected: 1", "x%0D%0AInjected:%201"),
                                         ("événement", "%C3%A9v%C3%A9nement")])
def test_event_ids_are_safe_header_values(value, sent):
    assert header_safe(value) == sent


def test_redact_url_keeps_only_scheme_and_host():
    assert redact_url("https://hooks.slack.com/services/T0/B0/XYZ?x=1") == \
        "https://hooks.slack.com/…"
    assert redact_url("http://user:pw@[::1]:8080") == "http://[::1]:8080"


def test_a_kept_alive_connection_closed_by_the_server_is_replaced_without_a_retry(
        webhook_server):
    waits = []
    webhook_server.script("/hook", Reply(200, headers={"Connection": "keep-alive"}))
    sender = sender_for(webhook_server.url(), sleep=waits.append)
    try:
        assert sender.send(system_event("se-1")).ok
        webhook_server.drop_connections()
        second = sender.send(system_event("se-2"))
    finally:
        sender.close()
    assert second.ok and second.attempts == 1 and waits == []
    first, again = webhook_server.requests()
    assert first.peer != again.peer
