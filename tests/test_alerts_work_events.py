"""The pipeline's own work events (CONTRACT 5.4) as alert input: ids, notes, matching, delivery."""
import json

import pytest

from cdp_activation.core.system_events import MAX_NOTES_CHARS, matches, scrub_notes, work_event
from tests.fixtures_alerts import make_work, run_alerts
from tests.test_templates import SLACK_TEMPLATE
from cdp_activation.transforms.alerts import SendWebhookAlerts


@pytest.mark.parametrize("notes, leaked", [
    ("write failed: DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=Zm9vYmFy==;",
     "Zm9vYmFy"),
    ("PUT https://acme.blob.core.windows.net/c/f.csv?sv=2024&sig=AbC%2Fsig123&se=x failed",
     "AbC%2Fsig123"),
    ("Endpoint=sb://x/;SharedAccessKeyName=send;SharedAccessKey=k3y-v4lue", "k3y-v4lue"),
    ("401 for Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
    ("cannot reach https://bob:hunter22@example.com/x", "hunter22"),
    ("smtp login failed, password=pa55word!", "pa55word!"),
])
def test_failed_notes_never_carry_secrets(notes, leaked):
    event = work_event(1234, "w-blob", "failed", notes=notes, unit="u1")
    assert leaked not in event.data["notes"] and leaked not in json.dumps(event.record)
    assert "****" in event.data["notes"]


def test_plain_notes_are_kept_and_long_ones_cut():
    assert scrub_notes("3 files written; basic checks passed") == (
        "3 files written; basic checks passed")
    cut = scrub_notes("x" * (MAX_NOTES_CHARS * 2))
    assert len(cut) == MAX_NOTES_CHARS and cut.endswith("…")


def test_work_event_ids_are_stable_per_unit():
    first = work_event(1234, "w-1", "synced", unit="file-1.csv")
    again = work_event(1234, "w-1", "synced", unit="file-1.csv", ts=first.ts + 5_000_000)
    other = work_event(1234, "w-1", "synced", unit="file-2.csv", ts=first.ts)
    assert first.id == again.id != other.id
    assert first.record["data"] == {"aid": 1234, "subject_type": "work", "subject_id": "w-1",
                                    "verb": "synced"}


def test_own_work_events_match_like_input_events():
    work = make_work("webhook_system_events",
                     {"system_event_multiple_types": ["failed", "completed"],
                      "system_event_sources": {"work": ["w-blob"]}})
    assert matches(work.settings, work_event(1234, "w-blob", "failed", unit="a"))
    assert matches(work.settings, work_event(1234, "w-blob", "completed", unit="a"))
    assert not matches(work.settings, work_event(1234, "w-blob", "synced", unit="a"))
    assert not matches(work.settings, work_event(1234, "w-other", "failed", unit="a"))


def test_own_failed_event_reaches_slack_with_its_reason(webhook_server, tmp_path):
    work = make_work("webhook_system_events",
                     {"system_event_type": "failed", "webhook_url": webhook_server.url(),
                      "allow_private_network": True, "json_template": SLACK_TEMPLATE})
    failed = work_event(1234, "w-blob", "failed",
                        notes="export disabled: AccountKey=c2VjcmV0; rejected", unit="disabled")
    run_alerts(SendWebhookAlerts(work, str(tmp_path)),
               [failed, work_event(1234, "w-blob", "started", unit="run#started")])

    [request] = webhook_server.requests()
    assert request.headers["x-event-id"] == failed.id
    assert json.loads(request.body) == {
        "text": "Alert notification: export disabled: AccountKey=****; rejected. For more info "
                "go to: https://activate.getlytics.com/data/integrations/work/w-blob?aid=1234"}
