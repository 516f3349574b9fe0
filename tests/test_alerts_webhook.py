"""SendWebhookAlerts end to end: a Beam TestPipeline posting to a real HTTP server on loopback."""
import json
import logging
import os

import pytest

from tests.fixtures_alerts import (Reply, counters, make_work, read_jsonl, run_alerts,
                                   system_event)
from cdp_activation.transforms.alerts import SendWebhookAlerts

WORK_ID = "w-hook"

# The "Slack Integration" job config of
# https://www.contentstack.com/docs/lytics/monitoring-job-status, pasted as published (the test
# replaces only the URL placeholder).
LYTICS_SLACK_EXAMPLE = r'''
{
    "config": {
        "system_event_type": "failed",
        "webhook_url": "YOUR_SLACK_WEBHOOK_URL",
        "json_template": "local note = if std.objectHas(event.data, \"notes\") then event.data.notes else \"A work failed\"; {\"text\": \"Alert notification: \" + note + \". For more info go to: https://activate.getlytics.com/data/integrations/work/%s?aid=%s\" % [event.data.subject_id, event.data.aid] }"
    },
    "workflow": "webhook_system_events"
}
'''


def webhook_work(url, paused=False, **config):
    config = {"system_event_type": "failed", "webhook_url": url,
              "allow_private_network": True, **config}
    return make_work("webhook_system_events", config, WORK_ID, paused)


def deadletters(output_dir):
    path = os.path.join(output_dir, "deadletter", WORK_ID + ".jsonl")
    return read_jsonl(path) if os.path.exists(path) else []  # no dead letters: no file


def test_every_matching_event_is_delivered_exactly_once(webhook_server, tmp_path):
    work = webhook_work(webhook_server.url(), system_event_multiple_types=["failed", "synced"],
                        system_event_sources={"work": []}, headers={"custom-header": "v1"})
    events = [system_event("se-1"), system_event("se-2", verb="synced"),
              system_event("se-3", subject_id="w-9"),
              system_event("se-4", verb="created"),                       # verb not selected
              system_event("se-5", subject_type="segment", subject_id="s")]  # source not selected
    result = run_alerts(SendWebhookAlerts(work, str(tmp_path)), events)

    requests = webhook_server.requests("/hook")
    assert sorted(webhook_server.event_ids()) == ["se-1", "se-2", "se-3"]
    by_id = {e.id: e for e in events}
    for request in requests:
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["custom-header"] == "v1"
        assert "x-signature" not in request.headers
        assert json.loads(request.body) == by_id[request.headers["x-event-id"]].record
    assert deadletters(tmp_path) == []
    assert counters(result, WORK_ID) == {"alerts_delivered": 3, "deadlettered": 0, "failures": 0}


def test_503_then_200_is_delivered_on_retry_with_the_same_event_id(webhook_server, tmp_path):
    webhook_server.script("/hook", Reply(503), Reply(200))
    result = run_alerts(SendWebhookAlerts(webhook_work(webhook_server.url()), str(tmp_path)),
                        [system_event("se-1")])

    first, second = webhook_server.requests()
    assert first.headers["x-event-id"] == second.headers["x-event-id"] == "se-1"
    assert first.body == second.body
    assert deadletters(tmp_path) == []
    assert counters(result, WORK_ID) == {"alerts_delivered": 1, "deadlettered": 0, "failures": 1}


def test_400_is_dead_lettered_at_once(webhook_server, tmp_path):
    webhook_server.script("/hook", Reply(400, body=b'{"error": "unknown channel"}'))
    event = system_event("se-1")
    result = run_alerts(SendWebhookAlerts(webhook_work(webhook_server.url()), str(tmp_path)),
                        [event])

    assert len(webhook_server.requests()) == 1
    [record] = deadletters(tmp_path)
    assert record["raw"] == event.record and record["source"] == WORK_ID
    assert record["error"].startswith("HTTP 400 Bad Request")
    assert "unknown channel" in record["error"] and "not retried" in record["error"]
    assert counters(result, WORK_ID) == {"alerts_delivered": 0, "deadlettered": 1, "failures": 1}


def test_hanging_endpoint_times_out_and_is_dead_lettered_after_bounded_attempts(
        webhook_server, tmp_path):
    webhook_server.script("/hook", Reply(hang=True), Reply(hang=True), Reply(200))
    work = webhook_work(webhook_server.url(), timeout_seconds=0.3, max_attempts=2)
    run_alerts(SendWebhookAlerts(work, str(tmp_path)), [system_event("se-1")])

    assert len(webhook_server.requests()) == 2
    [record] = deadletters(tmp_path)
    assert record["error"] == "gave up after 2 attempts: timed out after 0.3s"


@pytest.mark.parametrize("location", ["http://169.254.169.254/latest/meta-data/", "internal"])
def test_redirects_are_not_followed(webhook_server, tmp_path, location):
    if location == "internal":
        location = webhook_server.url("/internal")
    webhook_server.script("/hook", Reply(302, headers={"Location": location}))
    run_alerts(SendWebhookAlerts(webhook_work(webhook_server.url()), str(tmp_path)),
               [system_event("se-1")])

    assert [r.path for r in webhook_server.requests()] == ["/hook"]
    [record] = deadletters(tmp_path)
    assert record["error"].startswith("HTTP 302 Found: redirect to ")
    assert "not followed (not retried)" in record["error"]


def test_refused_destination_is_dead_lettered_by_the_pipeline(webhook_server, tmp_path):
    work = webhook_work(webhook_server.url(), allow_private_network=False)
    result = run_alerts(SendWebhookAlerts(work, str(tmp_path)), [system_event("se-1")])

    assert webhook_server.requests() == []
    [record] = deadletters(tmp_path)
    assert "refused to connect to 127.0.0.1: loopback address" in record["error"]
    assert counters(result, WORK_ID)["deadlettered"] == 1


def test_lytics_slack_example_posts_the_documented_text(webhook_server, tmp_path):
    example = json.loads(LYTICS_SLACK_EXAMPLE)
    config = dict(example["config"], webhook_url=webhook_server.url("/slack"),
                  allow_private_network=True)
    work = make_work(example["workflow"], config, WORK_ID)
    run_alerts(SendWebhookAlerts(work, str(tmp_path)),
               [system_event("se-1", notes="the export lost its credentials"),
                system_event("se-2", subject_id="w-2"),
                system_event("se-3", verb="completed")])

    texts = {r.headers["x-event-id"]: json.loads(r.body) for r in webhook_server.requests()}
    link = "https://activate.getlytics.com/data/integrations/work/%s?aid=1234"
    assert texts == {
        "se-1": {"text": "Alert notification: the export lost its credentials. "
                         "For more info go to: " + link % "w-1"},
        "se-2": {"text": "Alert notification: A work failed. For more info go to: "
                         + link % "w-2"}}


def test_runaway_templates_dead_letter_their_alert_only(webhook_server, tmp_path):
    template = """
        if event.data.subject_id == "w-deep" then
          local f(n) = if n == 0 then 0 else 1 + f(n - 1); {depth: f(1000000)}
        else if event.data.subject_id == "w-huge" then
          {size: std.length(std.range(1, 1e9))}
        else {text: event.data.subject_id}"""
    events = [system_event("se-1", subject_id="w-1"), system_event("se-2", subject_id="w-deep"),
              system_event("se-3", subject_id="w-huge"), system_event("se-4", subject_id="w-4")]
    result = run_alerts(SendWebhookAlerts(webhook_work(webhook_server.url(),
                                                       json_template=template), str(tmp_path)),
                        events)

    assert sorted(json.loads(r.body)["text"] for r in webhook_server.requests()) == ["w-1", "w-4"]
    errors = {d["raw"]["id"]: d["error"] for d in deadletters(tmp_path)}
    assert errors.keys() == {"se-2", "se-3"}
    assert "max stack frames exceeded" in errors["se-2"]
    assert errors["se-3"].startswith("template error: evaluation ")
    assert counters(result, WORK_ID) == {"alerts_delivered": 2, "deadlettered": 2, "failures": 0}


def test_paused_work_delivers_nothing(webhook_server, tmp_path):
    work = webhook_work(webhook_server.url(), paused=True)
    result = run_alerts(SendWebhookAlerts(work, str(tmp_path)), [system_event("se-1")])

    assert webhook_server.requests() == []
    assert deadletters(tmp_path) == []
    assert counters(result, WORK_ID) == {"alerts_delivered": 0, "deadlettered": 0, "failures": 0}


def test_without_webhook_url_the_bodies_go_to_the_local_sink(tmp_path):
    template = "if event.data.subject_id == 'bad' then error 'no' else {text: event.id}"
    work = make_work("webhook_system_events",
                     {"system_event_type": "failed", "json_template": template}, WORK_ID)
    run_alerts(SendWebhookAlerts(work, str(tmp_path)),
               [system_event("se-1"), system_event("se-2", verb="created"),
                system_event("se-3", subject_id="bad")])

    assert read_jsonl(os.path.join(tmp_path, "alerts", WORK_ID + ".jsonl")) == [{"text": "se-1"}]
    [record] = deadletters(tmp_path)
    assert record["raw"]["id"] == "se-3" and record["error"].startswith("template error: error: no")


def test_no_secret_reaches_logs_or_outputs(webhook_server, tmp_path, caplog, capfd):
    token, secret = "tok-5f1e2d3c4b5a", "whsec-9a8b7c6d5e"
    path = "/services/T0001/B0002/pathsecret77"
    echo = ("invalid token %s for %s (signed with %s)" % (token, path, secret)).encode()
    webhook_server.script(path, Reply(401, body=echo))
    work = webhook_work(webhook_server.url(path), signing_secret=secret,
                        headers={"Authorization": "Bearer " + token})
    caplog.set_level(logging.DEBUG)
    run_alerts(SendWebhookAlerts(work, str(tmp_path)), [system_event("se-1")])

    [request] = webhook_server.requests()
    assert request.headers["authorization"] == "Bearer " + token   # the secrets were in play
    [record] = deadletters(tmp_path)
    assert record["error"].startswith("HTTP 401")
    captured = capfd.readouterr()
    outputs = {"logs": caplog.text, "stdout": captured.out, "stderr": captured.err,
               "deadletter": json.dumps(record)}
    for name, text in outputs.items():
        for value in (token, secret, "pathsecret77"):
            assert value not in text, "%s leaks %s" % (name, value)
    assert "Authorization" in caplog.text  # header names are logged
