"""SendEmailAlerts / EmailSender against real aiosmtpd servers on loopback."""
import json
import logging
import os

from tests.fixtures_alerts import (SMTP_PASSWORD, SMTP_USER, SmtpServer, counters, make_work,
                                   read_jsonl, run_alerts, system_event)
from cdp_activation.clients.smtp import EmailSender
from cdp_activation.transforms.alerts import SendEmailAlerts

WORK_ID = "w-mail"
RECIPIENTS = ["ops@acme.test", "oncall@acme.test"]


def email_work(host=None, port=25, **config):
    config = {"system_event_type": "failed", "from": "alerts@acme.test", "to": RECIPIENTS,
              "allow_private_network": True, **config}
    if host:
        config.update(smtp_host=host, smtp_port=port)
    return make_work("email_system_events", config, WORK_ID)


def deadletters(output_dir):
    path = os.path.join(output_dir, "deadletter", WORK_ID + ".jsonl")
    return read_jsonl(path) if os.path.exists(path) else []  # no dead letters: no file


def test_one_message_per_matching_event_over_smtp(smtp_server, tmp_path):
    work = email_work(smtp_server.host, smtp_server.port)
    result = run_alerts(SendEmailAlerts(work, str(tmp_path), account_name="acme"),
                        [system_event("se-1", notes="credentials rejected"),
                         system_event("se-2", verb="completed")])

    [mail] = smtp_server.mails
    assert mail.mail_from == "alerts@acme.test" and mail.rcpt_tos == RECIPIENTS
    assert mail.message["Subject"] == "[acme] work w-1 failed"
    assert mail.message["To"] == ", ".join(RECIPIENTS)
    assert mail.message["X-Event-Id"] == "se-1"
    body = mail.message.get_content()
    assert "Notes: credentials rejected" in body
    assert json.loads(body[body.index("{"):])["id"] == "se-1"
    assert not mail.tls
    assert deadletters(tmp_path) == []
    assert counters(result, WORK_ID) == {"alerts_delivered": 1, "deadlettered": 0, "failures": 0}


def test_starttls_and_login(smtp_tls_server, trust_test_cert, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    work = email_work("localhost", smtp_tls_server.port, username=SMTP_USER,
                      password=SMTP_PASSWORD)
    run_alerts(SendEmailAlerts(work, str(tmp_path)),
               [system_event("se-1"), system_event("se-2", subject_id="w-2")])

    subjects = sorted(m.message["Subject"] for m in smtp_tls_server.mails)
    assert subjects == ["[aid 1234] work w-1 failed", "[aid 1234] work w-2 failed"]
    assert all(m.tls and m.login == SMTP_USER for m in smtp_tls_server.mails)
    captured = capfd.readouterr()
    assert SMTP_PASSWORD not in caplog.text + captured.out + captured.err


def test_wrong_password_is_dead_lettered_without_retry(smtp_tls_server, trust_test_cert,
                                                       tmp_path):
    work = email_work("127.0.0.1", smtp_tls_server.port, username=SMTP_USER,
                      password="not-the-password")
    run_alerts(SendEmailAlerts(work, str(tmp_path)), [system_event("se-1")])

    assert smtp_tls_server.mails == []
    [record] = deadletters(tmp_path)
    assert record["error"].startswith("SMTP 535") and "not retried" in record["error"]
    assert "not-the-password" not in json.dumps(record)


def test_credentials_are_never_sent_without_tls(smtp_server):
    work = email_work(smtp_server.host, smtp_server.port, username="u", password="p4ssw0rd")
    sender = EmailSender(work.id, work.settings, sleep=lambda seconds: None)
    delivery = sender.send(system_event("se-1"))
    sender.close()
    assert not delivery.ok and delivery.attempts == 1
    assert "does not offer STARTTLS" in delivery.reason
    assert smtp_server.mails == []


def test_temporary_smtp_failure_is_retried():
    server = SmtpServer(temporary_failures=1)
    try:
        work = email_work(server.host, server.port)
        sender = EmailSender(work.id, work.settings, sleep=lambda seconds: None)
        delivery = sender.send(system_event("se-1"))
        sender.close()
    finally:
        server.close()
    assert delivery.ok and delivery.attempts == 2 and delivery.failures == 1
    assert server.recorder.data_attempts == 2
    [mail] = server.mails
    assert mail.message["X-Event-Id"] == "se-1"


def test_without_smtp_host_messages_go_to_the_local_sink(tmp_path):
    run_alerts(SendEmailAlerts(email_work(), str(tmp_path), account_name="acme"),
               [system_event("se-1", notes="n"), system_event("se-2", verb="synced")])

    [entry] = read_jsonl(os.path.join(tmp_path, "alerts", WORK_ID + ".jsonl"))
    assert entry["to"] == RECIPIENTS
    assert entry["subject"] == "[acme] work w-1 failed"
    assert entry["body"].startswith("System event se-1 at 2026-11-20T10:00:00Z: work w-1 failed.")
    assert "Notes: n" in entry["body"]
