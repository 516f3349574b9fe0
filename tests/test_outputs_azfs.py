"""``--output_dir`` on Beam's Azure Blob file system (``azfs://``), on Azurite.

The commands run as a user runs them, once with a local ``--output_dir`` and once with
``azfs://devstoreaccount1/<container>/<path>`` and ``--azure_connection_string``: every output
(local sinks, dead letters, local Blob export files and marker, the system-event log, the daily
activity, the summary and the report) lands in the container, with the names and bytes of the
local run, and nothing is written to the local disk instead; once on the PortableRunner too.
"""
import hashlib
import json
import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from emulators.eventhubs import LocalEventHubs
from tests.commands import (EVENTHUB_WORK, FREQUENT_BUYERS, GOLD, ROOT, job_config, run_module,
                            write_job)
from cdp_activation.transforms.eventhubs import WriteToEventHubs

pytestmark = pytest.mark.timeout(600)
ACCOUNT = "devstoreaccount1"
CONFIG = job_config([FREQUENT_BUYERS, GOLD], [EVENTHUB_WORK, """\
  - id: w-blob
    workflow: azure_blob_event_export
    config: {container: exports, prefix: ev/, period_hours: 24, format: csv.gz,
             event_parameters: [price], attributes: [email]}
  - {id: w-alerts, workflow: webhook_system_events, config: {system_event_type: failed}}
"""])
EVENTS = [
    {"user_id": "u1", "event": "visit", "ts": "2026-11-01T00:00:00Z",
     "traits": {"tier": "gold", "email": "a@x"}},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-02T00:00:00Z", "properties": {"price": 3}},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-03T00:00:00Z", "properties": {"price": 4}},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-04T00:00:00Z", "event_id": "p3"},
    {"anonymous_id": "a1", "event": "purchase", "ts": "2026-11-02T00:00:00Z"},
    {"kind": "system", "id": "se-1", "ts": "2026-11-02T10:00:00Z",
     "data": {"aid": 1234, "subject_type": "work", "subject_id": "w-x", "verb": "failed",
              "notes": "upstream failed"}},
]
#: Files whose content depends on the run (its id, its duration, where it wrote).
RUN_DEPENDENT = {"summary.json", "report.html", "system_events.jsonl"}


@pytest.fixture(scope="module")
def container(azurite):
    from azure.storage.blob import BlobServiceClient
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    client = service.get_container_client("runs")
    client.create_container()
    yield client
    client.delete_container()
    service.close()


@pytest.fixture
def job(tmp_path):
    write_job(str(tmp_path), CONFIG, EVENTS + ["not json", '{"user_id": "u2"}'])
    return tmp_path


def _run(command, cwd, *args):
    return run_module("pipelines." + command, *args, cwd=cwd, env={"PYTHONPATH": ROOT})


def _local_files(root):
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root).replace(os.sep, "/")] = open(path, "rb").read()
    return found


def _blobs(container, prefix):
    return {b.name[len(prefix):]: container.download_blob(b.name).readall()
            for b in container.list_blobs(name_starts_with=prefix)}


PORTABLE = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]


@pytest.mark.parametrize("command,runner", [("stream", []), ("replay", []),
                                            ("replay", PORTABLE)],
                         ids=["stream", "replay", "replay-portable"])
def test_every_output_lands_in_azure_blob_with_the_local_names_and_bytes(
        azurite, container, job, command, runner):
    """On the PortableRunner the steps run in an SDK worker through the Fn API, as on Flink."""
    args = ["--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl")]
    local = _run(command, str(job), *args, "--output_dir", str(job / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    run_name = command + ("-portable" if runner else "")
    prefix = "%s/out/" % run_name
    workdir = job / "cwd"
    workdir.mkdir()
    remote = _run(command, str(workdir), *args, *runner,
                  "--output_dir", "azfs://%s/runs/%s/out" % (ACCOUNT, run_name),
                  "--azure_connection_string", azurite.connection_string)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert azurite.account_key not in remote.stdout + remote.stderr
    assert "azfs://%s/runs/%s/out/report.html" % (ACCOUNT, run_name) in remote.stdout

    expected, written = _local_files(str(job / "local")), _blobs(container, prefix)
    assert set(written) == set(expected)
    # A dead-letter file exists only when it has records: the alert work refused nothing.
    assert {"eventhub/w-eh.jsonl", "deadletter/input.jsonl", "alerts/w-alerts.jsonl",
            "audiences_daily.jsonl", "blob/exports/ev/_state/w-blob.json"} <= set(written)
    assert "deadletter/w-alerts.jsonl" not in written
    assert any(name.startswith("blob/exports/ev/acme_events_w-blob_") and name.endswith(".csv.gz")
               for name in written)
    for name in sorted(set(expected) - RUN_DEPENDENT):
        if name.endswith("_state/w-blob.json"):  # holds the time it was written
            assert json.loads(written[name])["last_window_end"] == \
                json.loads(expected[name])["last_window_end"]
            continue
        assert written[name] == expected[name], name
    dead = [json.loads(line) for line in written["deadletter/input.jsonl"].splitlines()]
    assert [d["raw"] for d in dead] == ["not json", '{"user_id": "u2"}']
    summary, local_summary = (json.loads(written["summary.json"]),
                              json.loads(expected["summary.json"]))
    assert summary["output_dir"] == "azfs://%s/runs/%s/out" % (ACCOUNT, run_name)
    for key in ("output_dir", "seconds"):
        summary.pop(key), local_summary.pop(key)
    assert summary == local_summary and summary["deadlettered"] == 2
    verbs = lambda data: sorted((json.loads(l)["data"]["subject_id"], json.loads(l)["data"]["verb"])
                                for l in data.splitlines())
    assert verbs(written["system_events.jsonl"]) == verbs(expected["system_events.jsonl"])
    assert b"Audience sizes over time" in written["report.html"]
    # Nothing went to the local disk instead (an "azfs:" directory in the working directory).
    assert os.listdir(workdir) == []


def test_a_missing_container_is_one_line_before_any_data_moves(azurite, job):
    result = _run("replay", str(job), "--config", str(job / "config.yaml"),
                  "--input", str(job / "events.jsonl"),
                  "--output_dir", "azfs://%s/no-such-container/out" % ACCOUNT,
                  "--azure_connection_string", azurite.connection_string)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --output_dir azfs://%s/no-such-container/out: cannot write there" % ACCOUNT)
    assert azurite.account_key not in result.stderr


def _oversized_message():
    body = {"data": {"user_id": "u1", "padding": "x" * 5000}, "timestamp": "2026-11-01T00:00:00Z"}
    body["message_id"] = hashlib.sha256(json.dumps(body).encode()).hexdigest()[:32]
    return body


def test_event_hub_dead_letters_are_written_by_the_pipeline_to_azure_blob(azurite, container,
                                                                           tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _oversized_message()
    path = "azfs://%s/runs/eventhubs/deadletter/w-eh.jsonl" % ACCOUNT
    options = PipelineOptions(["--azure_connection_string", azurite.connection_string])
    with LocalEventHubs(max_message_size=2048) as hubs:
        with TestPipeline(options=options) as p:
            _ = (p | beam.Create([("u1", message)])
                 | WriteToEventHubs(hubs.connection_string, "w-eh", path, aid=1234))
    [record] = [json.loads(line) for line in
                container.download_blob("eventhubs/deadletter/w-eh.jsonl").readall().splitlines()]
    assert record["raw"] == message and record["source"] == "w-eh"
    assert record["error"].startswith("message of ") and "larger than the event hub" in record["error"]
    assert os.listdir(tmp_path) == []


def test_a_live_sink_writes_its_parts_to_azure_blob(azurite, container, tmp_path, monkeypatch):
    """The unbounded form of a local sink (parts written from event-time timers, per shard)
    writes through the file system of its path too."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    from cdp_activation.transforms.localsink import WriteJsonLinesFile

    monkeypatch.chdir(tmp_path)
    records = [{"n": n, "user": "u%d" % (n % 7)} for n in range(40)]
    stream = (TestStream()
              .add_elements([TimestampedValue(r, 1000 + r["n"]) for r in records[:20]])
              .advance_watermark_to(1100)
              .add_elements([TimestampedValue(r, 1100 + r["n"]) for r in records[20:]])
              .advance_watermark_to(1300)
              .advance_watermark_to_infinity())
    options = PipelineOptions(["--azure_connection_string", azurite.connection_string])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        _ = (p | stream
             | WriteJsonLinesFile("azfs://%s/runs/live/out/eventhub/w-eh.jsonl" % ACCOUNT,
                                  flush_seconds=10))
    parts = _blobs(container, "live/out/eventhub/w-eh/")
    assert parts and all(name.startswith("part-") and name.endswith(".jsonl") for name in parts)
    assert len({name.split("-")[2] for name in parts}) > 1  # more than one shard wrote
    written = [json.loads(line) for data in parts.values() for line in data.splitlines()]
    assert sorted(written, key=lambda r: r["n"]) == records
    assert os.listdir(tmp_path) == []
