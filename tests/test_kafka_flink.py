"""The ``kafka://`` input on embedded Flink, against a real Kafka broker, gives the DirectRunner's
outputs over the same events read from a file.

    python -m pipelines.stream --config C --output_dir D --runner=FlinkRunner \\
        --input "kafka://127.0.0.1:PORT/events?max_num_records=N"

A single-node Kafka broker (``emulators/kafka.py``, from the jars of ``scripts/install_runners.sh
kafka``) holds one random data set (``tests/datagen.py``: a few hundred events, duplicates,
malformed lines, system events) in a topic of two partitions. ReadFromKafka is Beam's Java
KafkaIO: the command expands it with the Java expansion service installed beside the Flink job
server (``scripts/install_runners.sh flink``), and the job server runs it in its own JVM (an
EMBEDDED Java environment) while the Python steps run in Beam's worker pool.
``max_num_records`` = the number of records published makes it a bounded read (a batch job on
Flink). The expectation is the same command with ``--runner=DirectRunner`` and the data set's
file as ``--input``: the same Event Hub messages and Blob files (local sinks), byte for byte, the
same dead letters apart from where each line came from, and the same figures in the summary.
"""
import json
import os
import signal
import sys

import pytest
import yaml

from emulators.kafka import LocalKafka, kafka_libs
from pipelines.runners import flink_expansion_service_jar, flink_job_server_jar
from tests.datagen import generate
from tests.test_flink_runner import _ended, run_watching_java

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
PY = VENV_PY if os.path.exists(VENV_PY) else sys.executable

pytestmark = [pytest.mark.flink, pytest.mark.slow, pytest.mark.timeout(600)]

TOPIC = "events"
PARTITIONS = 2


def _run(argv, log):
    """Runs a pipeline command to its end without the connection strings of the environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING")}
    return run_watching_java(argv, log, env)


def _outputs(out_dir):
    """{path under out_dir: bytes} of the Event Hub and Blob local sinks (not the Blob exports'
    state markers, which carry the run's times)."""
    files = {}
    for folder in ("eventhub", "blob"):
        for dirpath, _dirs, names in os.walk(os.path.join(out_dir, folder)):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
                if "/_state/" not in rel:
                    with open(path, "rb") as fh:
                        files[rel] = fh.read()
    return files


def _dead_letters(out_dir):
    """The input dead letters as (raw, error) pairs, sorted, and their sources."""
    path = os.path.join(out_dir, "deadletter", "input.jsonl")
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return sorted((r["raw"], r["error"]) for r in records), [r["source"] for r in records]


def test_kafka_input_on_flink_gives_the_direct_runners_outputs_from_a_file(tmp_path):
    for path, install in ((flink_job_server_jar(), "flink"),
                          (flink_expansion_service_jar(), "flink"),
                          (kafka_libs(), "kafka")):
        assert os.path.exists(path), (
            "%s is missing: bash scripts/install_runners.sh %s" % (path, install))
    config, lines = generate(19, n_users=10, days=10)
    cfg, events = tmp_path / "config.yaml", tmp_path / "events.jsonl"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with LocalKafka() as kafka:
        kafka.create_topic(TOPIC, PARTITIONS)
        kafka.produce(TOPIC, lines)
        held = kafka.end_offsets(TOPIC)
        assert sum(held.values()) == len(lines) and len(held) == PARTITIONS
        assert all(held.values()), held           # both partitions are read from
        uri = "kafka://%s/%s?max_num_records=%d" % (kafka.bootstrap, TOPIC, len(lines))
        code, out, err, java = _run(
            [PY, "-m", "pipelines.stream", "--config", str(cfg), "--input", uri,
             "--output_dir", str(tmp_path / "flink"), "--runner=FlinkRunner"],
            str(tmp_path / "flink"))
    assert code == 0, "FlinkRunner exited %d\n%s\n%s" % (code, out[-2000:], err[-6000:])
    assert java, "no job server seen"
    left = [pid for pid in java if not _ended(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a java process outlived the run: %s" % err[-3000:]

    code, out, err, _ = _run(
        [PY, "-m", "pipelines.stream", "--config", str(cfg), "--input", str(events),
         "--output_dir", str(tmp_path / "direct"), "--runner=DirectRunner"],
        str(tmp_path / "direct"))
    assert code == 0, "DirectRunner exited %d\n%s\n%s" % (code, out[-2000:], err[-6000:])

    direct, flink = _outputs(tmp_path / "direct"), _outputs(tmp_path / "flink")
    # Every destination got something, so equal outputs are not equally empty ones.
    assert direct["eventhub/w-eh-all.jsonl"].count(b"\n") > 50
    assert direct["eventhub/w-eh-sub.jsonl"].count(b"\n") > 10
    assert sum(1 for name in direct if name.startswith("blob/exports/acme/events/")) > 5
    assert sum(1 for name in direct if name.startswith("blob/exports/acme/system/")) > 1
    assert sorted(flink) == sorted(direct)
    differing = [name for name in direct if flink[name] != direct[name]]
    assert not differing, "other bytes on Flink in %s" % differing[:5]

    direct_dead, _ = _dead_letters(tmp_path / "direct")
    flink_dead, sources = _dead_letters(tmp_path / "flink")
    assert len(direct_dead) > 5 and flink_dead == direct_dead
    # Each dead letter names the record it came from: topic, partition and offset.
    assert all(s.split(":")[:2] == ["kafka", TOPIC] and int(s.split(":")[2]) < PARTITIONS
               for s in sources), sources[:5]

    summaries = [json.loads((tmp_path / name / "summary.json").read_text(encoding="utf-8"))
                 for name in ("direct", "flink")]
    assert summaries[1]["records_read"] == len(lines)
    for figure in ("records_read", "deadlettered", "duplicates", "late", "events_applied",
                   "audiences", "works", "as_of"):
        assert summaries[1][figure] == summaries[0][figure], figure
