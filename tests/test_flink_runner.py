"""Both pipeline commands on embedded Flink give the DirectRunner's bytes, on every branch.

    python -m pipelines.replay|stream --config C --input I --output_dir D --runner=FlinkRunner

with no other option: the job server installed by scripts/install_runners.sh (found by
pipelines/runners.py), parallelism = cores, Python work in Beam's worker pool. The same command
with ``--runner=DirectRunner`` is the expectation. One random data set (tests/datagen.py) and a
config whose works cover every destination: Event Hub messages into the project's local Event
Hubs endpoint (one endpoint per run) and into a local sink, Blob files into Azurite (one container
per run) and into a local directory, webhook alerts to a loopback server and to a local sink, and
dead letters (bad input lines; alerts that a webhook refuses).
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from emulators.eventhubs import LocalEventHubs
from tests.commands import require_flink_job_server
from tests.datagen import generate
from tests.fixtures_alerts import Reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.flink, pytest.mark.timeout(3600)]

#: Alerts on input system events only: the pipeline's own work events carry run times and ids.
INPUT_SOURCES = {"segment": [], "user": [], "stream": [], "auth": [], "topic-document": []}
#: Replies of the webhook that refuses every alert (each one is dead-lettered, not retried).
REFUSALS = 1000


def _config(base, azurite_cs, eventhub_cs, webhook_url, refusing_url, container):
    config = json.loads(json.dumps(base))
    for work in config["works"]:
        if work["id"] == "w-eh-all":
            work["config"]["connection_string"] = eventhub_cs
        if work["id"] == "w-blob-events":
            work["config"].update(connection_string=azurite_cs, container=container)
    config["works"] += [
        {"id": "w-hook", "workflow": "webhook_system_events",
         "config": {"system_event_sources": INPUT_SOURCES, "webhook_url": webhook_url,
                    "allow_private_network": True}},
        {"id": "w-hook-local", "workflow": "webhook_system_events",
         "config": {"system_event_multiple_types": ["failed", "updated", "deleted"],
                    "system_event_sources": INPUT_SOURCES}},
        {"id": "w-hook-refused", "workflow": "webhook_system_events",
         "config": {"system_event_type": "failed", "system_event_sources": INPUT_SOURCES,
                    "webhook_url": refusing_url, "allow_private_network": True}},
    ]
    return config


def _local_files(out_dir):
    """{path under out_dir: bytes} of the local sinks and dead letters (not the run's own
    system events, summary, report or Blob state markers, which carry the run's times)."""
    files = {}
    for folder in ("eventhub", "blob", "alerts", "deadletter"):
        top = os.path.join(out_dir, folder)
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
                if "/_state/" in rel:
                    continue
                with open(path, "rb") as fh:
                    files[rel] = fh.read()
    return files


def _blobs(azurite_cs, container):
    from azure.storage.blob import BlobServiceClient
    service = BlobServiceClient.from_connection_string(azurite_cs)
    client = service.get_container_client(container)
    found = {}
    for blob in client.list_blobs():
        if "/_state/" in "/" + blob.name or "_verify/" in blob.name:
            continue
        found[blob.name] = client.download_blob(blob.name).readall()
    service.close()
    return found


def _run(command, runner, workdir, name, config, lines):
    os.makedirs(os.path.join(workdir, name))
    cfg = os.path.join(workdir, name, "config.yaml")
    events = os.path.join(workdir, "events.jsonl")
    with open(cfg, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False, allow_unicode=True)
    if not os.path.exists(events):
        with open(events, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    out = os.path.join(workdir, name, "out")
    env = {k: v for k, v in os.environ.items()
           if k not in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING")}
    argv = [sys.executable, "-m", "pipelines." + command, "--config", cfg, "--input", events,
            "--output_dir", out, "--runner=" + runner]
    # java: the job server(s) the run started; Beam must stop them when it ends.
    code, stdout, stderr, java = run_watching_java(argv, os.path.join(workdir, name, "log"), env)
    proc = subprocess.CompletedProcess(argv, code, stdout, stderr)
    assert proc.returncode == 0, "%s exited %d\n%s\n%s" % (
        " ".join(argv), proc.returncode, proc.stdout[-2000:], proc.stderr[-6000:])
    if runner == "FlinkRunner":
        assert java, "no job server seen"
    left = [pid for pid in java if not _ended(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the job server outlived the run: %s" % proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def dataset():
    config, lines = generate(31, n_users=40, days=20)
    return config, lines


@pytest.mark.parametrize("command", ["replay", "stream"])
def test_flink_gives_the_direct_runners_bytes(command, dataset, azurite, webhook_server, tmp_path):
    require_flink_job_server()
    base, lines = dataset
    results = {}
    for runner in ("DirectRunner", "FlinkRunner"):
        name = "%s-%s" % (command, runner.lower())
        container = name.replace("runner", "")
        with LocalEventHubs(host="127.0.0.1", port=0, hub="hub", partitions=4) as hub:
            webhook_server.script("/refuse-" + name,
                                  *[Reply(status=400, body=b"no such channel")] * REFUSALS)
            config = _config(base, azurite.connection_string, hub.connection_string,
                             webhook_server.url("/" + name), webhook_server.url("/refuse-" + name),
                             container)
            out, proc = _run(command, runner, str(tmp_path), name, config, lines)
            hub_events = sorted((e.partition_key, e.body) for e in hub.events())
        hooks = sorted((r.headers.get("x-event-id"), r.body)
                       for r in webhook_server.requests("/" + name))
        results[runner] = {
            "local": _local_files(out), "blob": _blobs(azurite.connection_string, container),
            "hub": hub_events, "hooks": hooks,
            "summary": json.load(open(os.path.join(out, "summary.json"), encoding="utf-8")),
            "stdout": proc.stdout}

    direct, flink = results["DirectRunner"], results["FlinkRunner"]
    # Every branch delivered something, so equal outputs are not equally empty ones.
    local = direct["local"]
    assert local["eventhub/w-eh-sub.jsonl"].count(b"\n") > 20
    assert sum(1 for k in local if k.startswith("blob/exports/acme/system/")) > 5
    assert local["alerts/w-hook-local.jsonl"].count(b"\n") > 0
    assert b"400" in local["deadletter/w-hook-refused.jsonl"]
    assert local["deadletter/input.jsonl"].count(b"\n") > 0
    assert len(direct["hub"]) > 100 and len(direct["blob"]) > 5 and len(direct["hooks"]) > 3

    for part in ("local", "blob"):
        assert sorted(flink[part]) == sorted(direct[part]), part      # the same files
        differing = [name for name in direct[part] if flink[part][name] != direct[part][name]]
        assert not differing, "%s: other bytes in %s" % (part, differing[:5])
    assert flink["hub"] == direct["hub"]          # (partition key, body) of every message
    assert flink["hooks"] == direct["hooks"]      # (X-Event-Id, body) of every alert
    for figure in ("records_read", "deadlettered", "duplicates", "late", "events_applied",
                   "audiences", "works"):
        assert flink["summary"][figure] == direct["summary"][figure], figure


def run_watching_java(argv, log, env):
    """Runs a pipeline command to its end (stdout and stderr in ``log``.out and .err); returns
    (exit code, stdout, stderr, the java processes it started), the latter seen while it ran."""
    with open(log + ".out", "w+") as stdout, open(log + ".err", "w+") as stderr:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True)
        java = set()
        try:
            while proc.poll() is None:
                java.update(pid for pid, args in _children(proc.pid) if args.startswith("java "))
                try:
                    proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if proc.poll() is None:
                proc.kill()
        stdout.seek(0)
        stderr.seek(0)
        return proc.returncode, stdout.read(), stderr.read(), java


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [(int(line.split(None, 1)[0]), line.split(None, 1)[1]) for line in out.splitlines()]


def _ended(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sigterm_ends_the_job_server_and_the_worker_pool(dataset, tmp_path):
    # Beam stops its job server (a java child) at interpreter exit, which SIGTERM's default skips.
    config, lines = dataset
    cfg, events = tmp_path / "config.yaml", tmp_path / "events.jsonl"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    events.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.replay", "--config", str(cfg), "--input", str(events),
         "--output_dir", str(tmp_path / "out"), "--runner=FlinkRunner"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        helpers = []
        for _ in range(300):   # until both the job server and the pool have started
            helpers = _children(proc.pid)
            if (any(args.startswith("java ") for _, args in helpers)
                    and any("pipelines.runners" in args for _, args in helpers)):
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            subprocess.run(["sleep", "0.5"])
        assert len(helpers) >= 2, helpers
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in stderr
    for _ in range(60):
        if all(_ended(pid) for pid, _ in helpers):
            break
        subprocess.run(["sleep", "0.5"])
    assert [args for pid, args in helpers if not _ended(pid)] == []
