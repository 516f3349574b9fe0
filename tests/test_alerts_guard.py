"""The connect-time address guard, end to end through WebhookSender and EmailSender.

Every refused URL either points at the loopback test server itself (so a connection would
succeed and be recorded if the guard let it through) or at an internal range that is never
connected to (the refusal comes before any packet, hence in milliseconds). No internet needed.
"""

import pytest

from tests.fixtures_alerts import make_work, system_event
from cdp_activation.clients.smtp import EmailSender
from cdp_activation.clients.webhook import WebhookSender

LOOPBACK_SPELLINGS = ["127.0.0.1", "0x7f000001", "2130706433", "127.1", "localhost"]


def send_webhook(url, allow_private_network=False):
    work = make_work("webhook_system_events",
                     {"webhook_url": url, "allow_private_network": allow_private_network,
                      "max_attempts": 3})
    sender = WebhookSender(work.id, work.settings, sleep=lambda seconds: None)
    try:
        return sender.send(system_event("se-1"))
    finally:
        sender.close()


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_spellings_of_the_test_server_are_refused(webhook_server, host):
    url = "http://%s:%d/hook" % (host, webhook_server.port)
    refused = send_webhook(url)
    assert not refused.ok and refused.attempts == 1
    assert "loopback address" in refused.reason and "not retried" in refused.reason
    assert webhook_server.requests() == []
    # The same spelling does reach the server once private networks are allowed.
    assert send_webhook(url, allow_private_network=True).ok
    assert len(webhook_server.requests()) == 1


@pytest.mark.parametrize("url, reason", [
    ("http://169.254.169.254/latest/meta-data/", "link-local address (the cloud metadata range)"),
    ("http://[::1]:9/hook", "loopback address"),
    ("http://[::ffff:127.0.0.1]:9/hook", "loopback address (127.0.0.1 embedded in IPv6)"),
    ("http://10.0.0.1/hook", "private address"),
    ("http://100.64.0.1/hook", "carrier-grade NAT address"),
    ("http://[fc00::1]/hook", "unique-local address"),
    ("https://192.168.1.20/hook", "private address"),
])
def test_internal_destinations_are_refused_before_connecting(url, reason, socket_connects):
    refused = send_webhook(url)
    assert socket_connects == []            # refused before any socket connected
    assert not refused.ok and refused.attempts == 1
    assert reason in refused.reason


def test_smtp_host_is_checked_the_same_way(smtp_server):
    work = make_work("email_system_events",
                     {"smtp_host": "0x7f000001", "smtp_port": smtp_server.port,
                      "from": "alerts@acme.test", "to": ["ops@acme.test"]})
    sender = EmailSender(work.id, work.settings, sleep=lambda seconds: None)
    delivery = sender.send(system_event("se-1"))
    sender.close()
    assert not delivery.ok and delivery.attempts == 1
    assert "loopback address" in delivery.reason
    assert smtp_server.mails == []
