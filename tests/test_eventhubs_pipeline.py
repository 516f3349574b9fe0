"""The whole pipeline into the project's local Event Hubs endpoint, through the real SDK."""
import json

import pytest

from bench.make_data import write
from tests.commands import run_pipeline

CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: fb, slug: frequent_buyers, condition: {event: purchase, within: 7d, min_count: 3}}
  - id: ca
    slug: cart_abandoners
    condition: {and: [{event: add_to_cart, within: 1d}, {not: {event: purchase, within: 1d}}]}
  - {id: hv, slug: high_value, condition: {trait: ltv, op: gte, value: 500}}
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config:
      connection_string: ${EH_CS}
      existing_users: true
      start: "2026-10-10T00:00:00Z"
      user_fields: [email]
"""


def run_stream(tmp_path, name, cs, command="stream"):
    return run_pipeline(command, tmp_path, name, env={"EH_CS": cs})


@pytest.fixture
def job(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    write(str(tmp_path / "events.jsonl"), 6000, 300, 40)
    return tmp_path


@pytest.mark.slow
def test_every_message_arrives_once_like_the_local_sink(job, local_eventhubs):
    local = run_stream(job, "local", "")
    assert local.returncode == 0, local.stderr
    expected = [json.loads(l) for l in (job / "local" / "eventhub" / "w-eh.jsonl").read_text().splitlines()]
    assert any(m.get("backfill") for m in expected) and len(expected) > 300

    sent = run_stream(job, "hub", local_eventhubs.connection_string)
    assert sent.returncode == 0, sent.stderr
    received = local_eventhubs.events()
    bodies = [json.loads(e.body) for e in received]
    assert sorted(map(json.dumps, bodies)) == sorted(map(json.dumps, expected))
    assert len({b["message_id"] for b in bodies}) == len(bodies)
    summary = json.loads((job / "hub" / "summary.json").read_text())
    assert summary["works"]["w-eh"]["messages"] == len(expected)

    by_key = {}
    for event, body in zip(received, bodies):
        data = body["data"]
        user = data.get("user_id", data.get("anonymous_id"))
        assert event.partition_key == user
        assert event.message_id == body["message_id"]
        by_key.setdefault(user, []).append((event.partition, event.sequence_number, body))
    for user, items in by_key.items():
        assert len({p for p, _, _ in items}) == 1          # one user, one partition
        in_arrival = [b for _, _, b in sorted(items, key=lambda x: x[1])]
        times = [(b["timestamp"], not b.get("backfill")) for b in in_arrival]
        assert times == sorted(times)                     # time order; backfill first at start


def test_wrong_key_fails_fast_with_one_line_and_no_secret(job, local_eventhubs):
    good_key = local_eventhubs.connection_string.split("SharedAccessKey=")[1].split(";")[0]
    wrong = local_eventhubs.connection_string_with(key="d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZw==")
    result = run_stream(job, "wrong", wrong)
    assert result.returncode != 0
    assert local_eventhubs.auth_failures == 1   # checked once before the run, not retried
    output = result.stdout + result.stderr
    assert "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZw==" not in output and good_key not in output
    errors = [l for l in result.stderr.splitlines() if "w-eh" in l]
    assert errors and "rejected the credentials" in errors[0]
    assert local_eventhubs.events() == []
    failed = [json.loads(l) for l in (job / "wrong" / "system_events.jsonl").read_text().splitlines()
              if '"failed"' in l]
    assert failed and failed[0]["data"]["subject_id"] == "w-eh"
    kept = (job / "wrong" / "deadletter" / "w-eh.jsonl").read_text().splitlines()
    assert kept and all(json.loads(l)["error"].startswith("not delivered: ") for l in kept)
