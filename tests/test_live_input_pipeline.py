"""--input eventhubs://...: the whole pipeline reads the hub like a file, and catches up once."""
import json
import os
import subprocess
import sys

from azure.eventhub import EventData, EventHubProducerClient

from bench.make_data import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: fb, slug: frequent_buyers, condition: {event: purchase, within: 7d, min_count: 3}}
  - {id: hv, slug: high_value, condition: {trait: ltv, op: gte, value: 500}}
works:
  - {id: w-eh, workflow: eventhub_audience_export, config: {user_fields: [email]}}
"""


def publish(hub, records):
    producer = EventHubProducerClient.from_connection_string(hub.connection_string, retry_total=2)
    with producer:
        by_key = {}
        for r in records:
            by_key.setdefault(r.get("user_id") or r.get("anonymous_id"), []).append(r)
        for key, items in by_key.items():
            batch = producer.create_batch(partition_key=key)
            for r in items:
                batch.add(EventData(json.dumps(r)))
            producer.send_batch(batch)


def run(tmp_path, name, source, env):
    return subprocess.run([sys.executable, "-m", "pipelines.stream", "--config", str(tmp_path / "config.yaml"),
                           "--input", source, "--output_dir", str(tmp_path / name)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, **env))


def messages(tmp_path, name):
    return sorted((tmp_path / name / "eventhub" / "w-eh.jsonl").read_text().splitlines())


def test_catch_up_from_event_hubs_equals_the_file_and_reads_each_event_once(tmp_path, local_eventhubs):
    (tmp_path / "config.yaml").write_text(CONFIG)
    records = list(generate(1500, 60, 20, seed=3))
    first, second = records[:1000], records[1000:]
    uri = "eventhubs://hub?connection_string_env=IN_CS&checkpoint_dir=%s&mode=catchup" % (tmp_path / "ckpt")
    env = {"IN_CS": local_eventhubs.connection_string}

    publish(local_eventhubs, first)
    (tmp_path / "first.jsonl").write_text("\n".join(json.dumps(r) for r in first) + "\n")
    from_hub = run(tmp_path, "hub1", uri, env)
    assert from_hub.returncode == 0, from_hub.stderr[-3000:]
    assert local_eventhubs.connection_string.split("SharedAccessKey=")[1].split(";")[0] not in from_hub.stdout + from_hub.stderr
    from_file = run(tmp_path, "file1", str(tmp_path / "first.jsonl"), {})
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    assert messages(tmp_path, "hub1") == messages(tmp_path, "file1") != []
    assert json.loads((tmp_path / "hub1" / "summary.json").read_text())["records_read"] == 1000

    publish(local_eventhubs, second)
    again = run(tmp_path, "hub2", uri, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "hub2" / "summary.json").read_text())["records_read"] == 500
