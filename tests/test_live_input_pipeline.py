"""--input eventhubs://...: the whole pipeline reads the hub like a file, and catches up once."""
import json

from azure.eventhub import EventData, EventHubProducerClient

from bench.make_data import generate
from tests.commands import EVENTHUB_WORK, FREQUENT_BUYERS, HIGH_VALUE, job_config, run_pipeline

CONFIG = job_config([FREQUENT_BUYERS, HIGH_VALUE], [EVENTHUB_WORK])


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


def run(tmp_path, name, source, env, *extra):
    return run_pipeline("stream", tmp_path, name, *extra, source=source, env=env)


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
    assert json.loads((tmp_path / "hub1" / "summary.json").read_text())["records_read"] == len(first)

    publish(local_eventhubs, second)
    again = run(tmp_path, "hub2", uri, env)
    assert again.returncode == 0, again.stderr[-3000:]
    # The second run reads only what was published after the first: each event once.
    assert json.loads((tmp_path / "hub2" / "summary.json").read_text())["records_read"] == len(second)


def test_catch_up_runs_with_state_give_the_messages_of_one_run_over_everything(tmp_path,
                                                                               local_eventhubs):
    (tmp_path / "config.yaml").write_text(CONFIG)
    from cdp_activation.core.timeutil import parse_time

    def ts(r):
        return parse_time(r["ts"])

    def received(r):
        return parse_time(r.get("received_at", r["ts"]))

    records = sorted(generate(1500, 60, 20, seed=5), key=ts)
    split = ts(records[len(records) * 2 // 3])
    # Day 1: what was dated and received before the split; day 2: what is dated after the first
    # run's as-of (the latest received_at of day 1). Records in between are left out.
    first = [r for r in records if ts(r) < split and received(r) < split]
    as_of = max(received(r) for r in first)
    second = [r for r in records if ts(r) > as_of]
    uri = ("eventhubs://hub?connection_string_env=IN_CS&checkpoint_dir=%s&mode=catchup"
           % (tmp_path / "ckpt"))
    env = {"IN_CS": local_eventhubs.connection_string}
    state = str(tmp_path / "state" / "audiences.parquet")

    publish(local_eventhubs, first)
    day1 = run(tmp_path, "hub1", uri, env, "--state", state)
    assert day1.returncode == 0, day1.stderr[-3000:]
    publish(local_eventhubs, second)
    day2 = run(tmp_path, "hub2", uri, env, "--state", state)
    assert day2.returncode == 0, day2.stderr[-3000:]
    summaries = [json.loads((tmp_path / name / "summary.json").read_text())
                 for name in ("hub1", "hub2")]
    assert [s["records_read"] for s in summaries] == [len(first), len(second)]
    assert summaries[0]["as_of"] < summaries[1]["as_of"]
    import pyarrow.parquet as pq
    saved = {r["key"] for r in pq.read_table(state).to_pylist() if r["kind"] == "user"}
    assert saved == {r.get("user_id") or r.get("anonymous_id") for r in first + second
                     if r.get("kind") != "system"}

    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in first + second) + "\n")
    whole = run(tmp_path, "file", str(tmp_path / "all.jsonl"), {})
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert sorted(messages(tmp_path, "hub1") + messages(tmp_path, "hub2")) == \
        messages(tmp_path, "file") != []
