"""validate, explain, and replay over Parquet, as a user runs them."""
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: fb1, slug: frequent_buyers, condition: {event: purchase, within: 7d, min_count: 3}}
  - slug: vip
    condition: {and: [{audience: frequent_buyers}, {trait: tier, op: eq, value: gold}]}
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${EH_CS}", user_fields: [email]}
  - id: w-hook
    workflow: webhook_system_events
    config: {system_event_type: failed, headers: {Authorization: "Bearer ${TOKEN}"}}
"""
EVENTS = [
    {"user_id": "u1", "event": "visit", "ts": "2026-11-01T00:00:00Z", "traits": {"tier": "gold", "email": "a@x"}},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-02T00:00:00Z", "event_id": "p1"},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-03T00:00:00Z", "event_id": "p2"},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-04T00:00:00Z", "event_id": "p3"},
    {"user_id": "u2", "event": "purchase", "ts": "2026-11-04T00:00:00Z", "event_id": "p4"},
]
ENV = {"EH_CS": "Endpoint=sb://x.example/;SharedAccessKeyName=k;SharedAccessKey=S3cr3tKeyValue==",
       "TOKEN": "tok-abcdef-123456"}


def run(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", module] + list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **(env or {})))


@pytest.fixture
def job(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in EVENTS) + "\n")
    return tmp_path


def test_validate_prints_the_plan_with_secrets_masked(job):
    result = run("pipelines.validate", "--config", str(job / "config.yaml"), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "frequent_buyers" in result.stdout and "windows 7d" in result.stdout
    assert "uses frequent_buyers" in result.stdout and "config is valid" in result.stdout
    plan = run("pipelines.validate", "--config", str(job / "config.yaml"), "--json", env=ENV)
    data = json.loads(plan.stdout)
    assert data["works"][0]["destination"] == "Event Hubs"
    assert data["works"][0]["config"]["connection_string"] == "****"
    for secret in ("S3cr3tKeyValue", "tok-abcdef-123456"):
        assert secret not in result.stdout + plan.stdout


def test_validate_rejects_a_bad_config_with_the_path(job):
    (job / "bad.yaml").write_text(CONFIG.replace("within: 7d", "within: 7 days"))
    result = run("pipelines.validate", "--config", str(job / "bad.yaml"), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: audiences[0].condition.within: a duration is a positive integer "
                                     "and a unit s, m, h, d or w, e.g. 7d; got '7 days'")


def test_explain_shows_why_the_user_exited(job):
    result = run("pipelines.explain", "--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
                 "--user", "u1", env=ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    exit_at = lines.index("2026-11-09T00:00:00Z  EXIT  frequent_buyers")
    assert lines[exit_at + 1].strip() == "* false purchase in the last 7d: 2, needs >= 3"
    assert "2026-11-04T00:00:00Z  ENTER vip" in lines
    assert run("pipelines.explain", "--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
               "--user", "nobody", env=ENV).returncode == 2


def test_replay_reads_parquet_like_json_lines(job):
    records = [dict(e) for e in EVENTS]
    for r in records:  # Parquet needs one type per column: keep traits as a JSON-compatible struct
        r.setdefault("event_id", None)
        r.setdefault("traits", None)
    table = pa.Table.from_pylist(records)
    pq.write_table(table, str(job / "events.parquet"))
    local = dict(ENV, EH_CS="")
    outputs = []
    for name, source in (("jsonl", "events.jsonl"), ("parquet", "events.parquet")):
        result = run("pipelines.replay", "--config", str(job / "config.yaml"), "--input", str(job / source),
                     "--output_dir", str(job / name), env=local)
        assert result.returncode == 0, result.stderr
        outputs.append((job / name / "eventhub" / "w-eh.jsonl").read_text())
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 2  # enter and exit (day 4, day 9)
