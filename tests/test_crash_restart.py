"""Crash and restart: a run killed with SIGKILL at a random point, then run again to completion
over the same input, ends exactly where an uninterrupted run ends (issue 9, part 2).

The job exports events and system events to Azurite (Blob, with its state marker) and sends
audience messages to the local Event Hubs endpoint (the real SDKs). For each trial (fixed seed):
a fresh container and a fresh hub; ``pipelines.stream`` is started and killed (the whole process
group, SIGKILL: no cleanup runs) at a point placed by counted deliveries (once the first, or a
random number of, export files or audience messages were delivered); then the same command runs to
completion. No kill is placed by elapsed time: a slow or busy machine moves a timed kill to another
phase of the run, a counted one stays where it was meant to land.
Afterwards:

- the container holds exactly the uninterrupted run's export files: the same names and the same
  bytes, no extra name (no half-written file, no stray temporary or verification blob), and the
  state marker records the same last window;
- the set of ``message_id`` received by the hub equals the uninterrupted run's; a message received
  twice (sent before the kill and again by the rerun) is the same message;
- the rerun exits 0 and its local outputs (input dead letters) equal the uninterrupted run's.
"""
import json
import os
import random
import signal
import subprocess
import time

import pytest

from emulators.eventhubs import LocalEventHubs
from tests.faultproxy import FaultProxy
from tests.test_faults import (ROOT, azure_blob_files, check_files_parse, hub_messages,
                               make_job, pipeline_command, pipeline_env, read_jsonl,
                               run_pipeline, split_markers, unique_container)

SEED = 20260917
TRIALS = 4
N_USERS = 25
DAYS = 12
#: Where each trial's kill lands, counted in deliveries: right after the first export file or the
#: first audience message arrived (early in each branch's writes), and once a random number of them
#: arrived (in the middle of the Blob writes and of the Event Hub sends).
KILL_POINTS = ("files-first", "messages-first", "files", "messages")
#: Bound on waiting for a kill point; a run that ends first simply is not killed.
KILL_POINT_WAIT_SECONDS = 240


def _hub_ids(hubs):
    by_id = {}
    for amqp_id, body in hub_messages(hubs):
        assert amqp_id == body["message_id"]
        if body["message_id"] in by_id:
            assert by_id[body["message_id"]] == body, "two different messages share an id"
        by_id[body["message_id"]] = body
    return by_id


def _start(cfg, inp, out, env):
    # A new session: the kill reaches every process the run started, and only those.
    return subprocess.Popen(pipeline_command("stream", cfg, inp, out), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


@pytest.fixture(scope="module")
def job(tmp_path_factory, azurite):
    """The data set and the uninterrupted run's Blob files and message ids."""
    base = str(tmp_path_factory.mktemp("crash"))
    cfg, inp, config, _ = make_job(os.path.join(base, "in"), seed=7, n_users=N_USERS, hook=False,
                                   days=DAYS)
    container = unique_container("crash-ref")
    with LocalEventHubs(partitions=4) as hubs:
        env = pipeline_env(hubs.connection_string, azurite.connection_string, container)
        result, _ = run_pipeline("stream", cfg, inp, os.path.join(base, "ref"), env)
        assert result.returncode == 0, result.stderr[-3000:]
        messages = _hub_ids(hubs)
    files = azure_blob_files(azurite.connection_string, container)
    exports, markers = split_markers(files)
    assert len(exports) > 30 and len(messages) > 200 and markers
    check_files_parse(exports)
    return {"base": base, "cfg": cfg, "input": inp, "files": files,
            "exports": exports, "markers": markers, "messages": messages,
            "deadletters": read_jsonl(os.path.join(base, "ref", "deadletter", "input.jsonl"))}


def _check_final(job, container, hubs, azurite, out):
    files = azure_blob_files(azurite.connection_string, container)
    assert sorted(files) == sorted(job["files"]), "names differ: extra %s, missing %s" % (
        sorted(set(files) - set(job["files"]))[:5], sorted(set(job["files"]) - set(files))[:5])
    exports, markers = split_markers(files)
    for name, data in job["exports"].items():
        assert exports[name] == data, "%s differs from the uninterrupted run's" % name
    assert markers == job["markers"]
    messages = _hub_ids(hubs)
    assert set(messages) == set(job["messages"]), "missing %d, extra %d" % (
        len(set(job["messages"]) - set(messages)), len(set(messages) - set(job["messages"])))
    for message_id, body in messages.items():
        assert body == job["messages"][message_id]
    assert read_jsonl(os.path.join(out, "deadletter", "input.jsonl")) == job["deadletters"]
    return len(hubs.events()) - len(messages)


def _export_count(connection_string, container):
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import ContainerClient
    with ContainerClient.from_connection_string(connection_string, container) as client:
        try:
            return sum(1 for b in client.list_blobs() if "/_" not in "/" + b.name)
        except ResourceNotFoundError:
            return 0


def _wait_for_kill_point(proc, kind, rng, job, hubs, azurite, container):
    """Waits (bounded) until the trial's kill point; returns a description of it."""
    what, _, where = kind.partition("-")
    total = len(job["exports"]) if what == "files" else len(job["messages"])
    target = 1 if where == "first" else rng.randint(1, total - 1)
    if what == "files":
        count = lambda: _export_count(azurite.connection_string, container)
    else:
        count = lambda: len(hubs.events())
    deadline = time.monotonic() + KILL_POINT_WAIT_SECONDS
    while proc.poll() is None and time.monotonic() < deadline and count() < target:
        time.sleep(0.03)
    return "once %d %s were delivered" % (target, what)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_at_random_points_then_rerun_equals_an_uninterrupted_run(job, azurite, tmp_path):
    rng = random.Random(SEED)
    outcomes = []
    for trial, kind in enumerate(KILL_POINTS):
        container = unique_container("crash-%d" % trial)
        out = str(tmp_path / ("trial%d" % trial))
        with LocalEventHubs(partitions=4) as hubs, \
                FaultProxy(("127.0.0.1", azurite.port), "azurite") as proxy:
            env = pipeline_env(hubs.connection_string, azurite.connection_string, container)
            first_env = env
            if kind.startswith("files"):
                # The files go out in a second or so: 20 ms per forwarded chunk spreads them out
                # enough for the kill to land between two of them.
                proxy.set_latency(0.02)
                first_env = pipeline_env(hubs.connection_string, azurite.connection_string.replace(
                    ":%d/" % azurite.port, ":%d/" % proxy.port), container)
            proc = _start(job["cfg"], job["input"], out, first_env)
            point = _wait_for_kill_point(proc, kind, rng, job, hubs, azurite, container)
            killed = proc.poll() is None
            _kill(proc)
            proxy.reset_all()
            at_kill = {"files": len(split_markers(
                azure_blob_files(azurite.connection_string, container))[0]),
                "messages": len(hubs.events())}
            result, _ = run_pipeline("stream", job["cfg"], job["input"], out, env)
            assert result.returncode == 0, result.stderr[-3000:]
            duplicates = _check_final(job, container, hubs, azurite, out)
        outcomes.append({"trial": trial, "kill": point, "killed": killed, "at_kill": at_kill,
                         "duplicate_messages_after_rerun": duplicates})
    print("\nCRASH %s" % json.dumps({"files": len(job["exports"]),
                                     "messages": len(job["messages"]), "trials": outcomes}))
    assert sum(o["killed"] for o in outcomes) >= len(KILL_POINTS) - 1
    # The kills landed in the middle of the deliveries, not only before or after them.
    assert any(0 < o["at_kill"]["files"] < len(job["exports"]) for o in outcomes)
    assert any(0 < o["at_kill"]["messages"] < len(job["messages"]) for o in outcomes)


@pytest.mark.timeout(300)
def test_kill_during_the_credential_check_leaves_no_stray_blob(job, azurite, tmp_path):
    container = unique_container("crash-verify")
    out = str(tmp_path / "out")
    with LocalEventHubs(partitions=4) as hubs, \
            FaultProxy(("127.0.0.1", azurite.port), "azurite") as proxy:
        # The check's DELETE is held back; the kill lands while it waits (a crash, a node
        # pre-empted, a deploy), after the verification blob was written.
        proxy.on_pattern(b"DELETE /devstoreaccount1/%s/acme/events/_verify/" % container.encode(),
                         "stall", seconds=60)
        blob_cs = azurite.connection_string.replace(":%d/" % azurite.port, ":%d/" % proxy.port)
        env = pipeline_env(hubs.connection_string, blob_cs, container)
        proc = _start(job["cfg"], job["input"], out, env)
        deadline = time.monotonic() + 60
        while proxy.counters()["stalls"] == 0 and proc.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.counters()["stalls"] == 1, "the check's DELETE never came"
        _kill(proc)
        proxy.clear()
        proxy.reset_all()
        result, _ = run_pipeline("stream", job["cfg"], job["input"], out,
                                 pipeline_env(hubs.connection_string, azurite.connection_string,
                                              container))
        assert result.returncode == 0, result.stderr[-3000:]
        names = sorted(azure_blob_files(azurite.connection_string, container))
        stray = [n for n in names if "/_verify/" in "/" + n]
        assert stray == [], "left behind: %s" % stray
        _check_final(job, container, hubs, azurite, out)
