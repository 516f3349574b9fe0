"""The pipeline's own system events (CONTRACT 5.4) reach the alert works: a failed export pages."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {slug: buyers, condition: {event: purchase}}
works:
  - id: w-blob
    workflow: azure_blob_event_export
    config: {connection_string: "${BLOB_CS}", container: exports, period_hours: 1}
  - id: w-alerts
    workflow: webhook_system_events
    config:
      system_event_type: failed
      system_event_sources: {work: [w-blob]}
      json_template: |
        {text: "Alert: work %s %s: %s" % [event.data.subject_id, event.data.verb, event.data.notes]}
  - id: w-all
    workflow: webhook_system_events
    config: {system_event_sources: {work: []}}
"""


def run(tmp_path, cs, name):
    env = dict(os.environ, BLOB_CS=cs)
    return subprocess.run([sys.executable, "-m", "pipelines.replay", "--config", str(tmp_path / "config.yaml"),
                           "--input", str(tmp_path / "events.jsonl"), "--output_dir", str(tmp_path / name)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_failed_blob_export_raises_an_alert_and_catches_up_next_run(tmp_path, azurite):
    (tmp_path / "config.yaml").write_text(CONFIG)
    events = [{"user_id": "u%d" % i, "event": "purchase", "ts": 1790000000 + 1800 * i} for i in range(6)]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")

    failed = run(tmp_path, azurite.wrong_key_connection_string, "bad")
    assert failed.returncode != 0
    assert azurite.wrong_key not in failed.stdout + failed.stderr
    alerts = [json.loads(l) for l in (tmp_path / "bad" / "alerts" / "w-alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == 1 and alerts[0]["text"].startswith("Alert: work w-blob failed: ")
    every = [json.loads(l) for l in (tmp_path / "bad" / "alerts" / "w-all.jsonl").read_text().splitlines()]
    verbs = sorted(a["data"]["verb"] for a in every if a["data"]["subject_id"] == "w-blob")
    assert "failed" in verbs and "started" in verbs and "completed" in verbs

    good = run(tmp_path, azurite.connection_string, "good")
    assert good.returncode == 0, good.stderr
    summary = json.loads((tmp_path / "good" / "summary.json").read_text())
    # 1790000000 s is 0.22 h past an hour: the 6 half-hourly events fall in 3 hourly windows
    assert summary["works"]["w-blob"]["files"] == 3 and summary["works"]["w-blob"]["rows"] == 6
    assert (tmp_path / "good" / "alerts" / "w-alerts.jsonl").read_text() == ""
    synced = [json.loads(l) for l in (tmp_path / "good" / "alerts" / "w-all.jsonl").read_text().splitlines()]
    assert sum(1 for a in synced if a["data"]["verb"] == "synced") == 3
