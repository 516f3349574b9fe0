"""Flink, live: a streaming job killed mid-run and restored from its last checkpoint loses nothing.

A counted random set of events (profiles, purchases, page views, system events, a few malformed
lines) is made, and its first half is published to the input hub of the project's local Event
Hubs endpoint. Then:

1. the live job: ``pipelines.stream --streaming --runner=FlinkRunner`` reads the hub live
   (``mode=live``) on embedded Flink with a checkpoint every second, retained in a temporary
   directory (``--state_backend=filesystem``), and delivers to an output hub, an Azurite
   container and a loopback webhook;
2. once the first half's alerts and dead letters and some audience messages have arrived and a
   checkpoint triggered after that is complete (all counted, never timed), the Flink job server
   (the ``java`` process that runs the embedded Flink) and the Python SDK workers are killed with
   SIGKILL: no cleanup, no last checkpoint, no cancel;
3. the second half is published, and the reference is made: ``pipelines.stream`` reads the whole
   hub once (``mode=catchup``) on the DirectRunner and delivers to another output hub, container
   and webhook path;
4. a new job starts from the newest retained checkpoint (``--savepoint_path`` = its ``chk-N``
   directory) and runs until every reference message, file, alert and dead letter has arrived
   (waiting on the destinations, bounded by the test's timeout), then is stopped with Ctrl-C.

Then: every reference message arrived, no other; a message that arrived twice is the same message
(id and bytes); the container holds exactly the reference's export files, byte for byte; every
reference alert arrived, a repeated one with the same X-Event-Id and body; every malformed line
is dead-lettered. The restored job started each partition's read where the checkpoint left it
(the endpoint records where each reader starts), not from the beginning: what was read before the
checkpoint came back from Flink's state, not from the hub. Ctrl-C ends the restored command as an
interrupt, with its job server.

A second test restores a checkpoint under an edited config (issue 20 point 1 on Flink): the
first half read under one config, the job stopped once its messages arrived and a checkpoint
followed, the second half read by a job restored under the config with audiences reordered, one
removed and one added; its messages equal, id and bytes, those of two DirectRunner runs with
``--state`` under the same configs.

The Blob export's one window must close in the restored job only, after the second half is in the
hub: its end is ``WINDOW_MARGIN_SECONDS`` after the first half is published. The live watermark
follows the wall clock while the hub is idle, so a first job that ran past that end would close
the window with the first half alone; the test then fails saying so (it checks that the second
half was enqueued before the window's end) rather than comparing different windows.
"""
import datetime
import glob
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from emulators.eventhubs import LocalEventHubs
from pipelines import runners
from tests.commands import require_flink_job_server
from tests.test_faults import azure_blob_files, split_markers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
PY = VENV_PY if os.path.exists(VENV_PY) else sys.executable

pytestmark = [pytest.mark.flink, pytest.mark.slow]

SEED = 20261202
USERS = 40
PARTITIONS = 2
#: Alerts on input system events only: the pipeline's own work events carry run times and ids.
INPUT_SOURCES = {"segment": [], "user": [], "stream": []}
SYSTEM_EVENTS = 6
MALFORMED_LINES = 4
#: How long a stopped or killed launcher may take to exit (it stops its job server and workers).
EXIT_WAIT_SECONDS = 60
#: From the first half's publication to the end of the export window: an upper bound on the first
#: job's start, its run to a checkpoint, and the kill (the second half must be enqueued before
#: the window ends; the test checks it).
WINDOW_MARGIN_SECONDS = 120

CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: a-buyers, slug: buyers, condition: {event: purchase}}
  - {id: a-frequent, slug: frequent_buyers, condition: {event: purchase, min_count: 3}}
  - {id: a-us, slug: us_users, condition: {trait: country, op: eq, value: US}}
  - {id: a-us-buyers, slug: us_buyers, condition: {and: [{audience: buyers}, {audience: us_users}]}}
  - {id: a-viewers, slug: viewers, condition: {event: page_view, min_count: 2}}
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${OUT_CS}"}
  - id: w-blob
    workflow: azure_blob_event_export
    config:
      connection_string: "${AZ_CS}"
      container: %(container)s
      prefix: ev/
      export_type: events
      period_hours: 1
      anchor: "%(anchor)s"
      format: csv
  - id: w-hook
    workflow: webhook_system_events
    config:
      system_event_sources: %(sources)s
      webhook_url: "%(hook)s"
      allow_private_network: true
"""


def _rfc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def _events(now):
    """The counted input: ``[(partition key or None, JSON line)]``, dated from ``now`` on.

    Each user's events keep their order (one partition key); the users, the system events and the
    malformed lines are interleaved at random.
    """
    rng = random.Random(SEED)
    per_user = []
    for u in range(USERS):
        user = "u%03d" % u
        events = [{"event": "profile", "traits": {"country": rng.choice(["US", "DE", "FR"])}}]
        for _ in range(rng.randrange(0, 5)):
            events.append({"event": "purchase", "properties": {"price": rng.choice([9.5, 120])}})
        for _ in range(rng.randrange(0, 4)):
            events.append({"event": "page_view", "properties": {"url": "/p/%d" % rng.randrange(9)}})
        if rng.random() < 0.4:        # a move: us_users and us_buyers change on an event
            events.append({"event": "profile", "traits": {"country": rng.choice(["US", "DE"])}})
        rng.shuffle(events[1:])
        per_user.append([user, events])
    others = [("system", k) for k in range(SYSTEM_EVENTS)] + [
        (None, k) for k in range(MALFORMED_LINES)]
    lines, n = [], 0
    while any(events for _, events in per_user) or others:
        pending = [p for p in per_user if p[1]]
        if others and (not pending or rng.random() < 0.05):
            key, k = others.pop(rng.randrange(len(others)))
            if key is None:
                lines.append((None, "not json %d" % k))
                continue
            system = {"kind": "system", "id": "se-%d" % k, "ts": _rfc(now + n / 1000.0),
                      "data": {"aid": 1234, "subject_type": ["segment", "user", "stream"][k % 3],
                               "subject_id": "s-%d" % k, "verb": ["failed", "updated"][k % 2],
                               "notes": "note %d" % k}}
            lines.append((key, json.dumps(system, sort_keys=True)))
        else:
            user, events = rng.choice(pending)
            event = dict(events.pop(0), event_id="e-%04d" % n, user_id=user)
            event["ts"] = _rfc(now + n / 1000.0)
            lines.append((user, json.dumps(event, sort_keys=True)))
        n += 1
    return lines


def _publish(connection_string, lines):
    from azure.eventhub import EventData, EventHubProducerClient
    producer = EventHubProducerClient.from_connection_string(connection_string, retry_total=2)
    with producer:
        for key, line in lines:
            batch = producer.create_batch(partition_key=key) if key else producer.create_batch()
            batch.add(EventData(line))
            producer.send_batch(batch)


def _children(pid):
    """``[(pid, command line)]`` of the processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="utf-8", errors="replace") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                command = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append((int(entry), command))
    return found


def _job_server(launcher):
    """The pid of the Flink job server (``java -jar ...job-server...``) the launcher started."""
    for pid, command in _children(launcher.pid):
        if command.startswith("java ") and "job-server" in command:
            return pid
    return None


def _stop(proc, sig=signal.SIGINT):
    """Stops a launcher (its own session) and waits; SIGKILL to its group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
    return proc.returncode


def _messages(hub):
    """``{message_id: [body bytes, ...]}`` of what an output hub received."""
    found = {}
    for event in hub.events():
        body = json.loads(event.body)
        assert event.message_id == body["message_id"]
        found.setdefault(body["message_id"], []).append(event.body)
    return found


def _alerts(webhook_server, path):
    found = {}
    for request in webhook_server.requests(path):
        found.setdefault(request.headers.get("x-event-id"), []).append(request.body)
    return found


def _dead_letters(out, source="input"):
    """The raw lines of the ``source`` dead letters (``input``, ``identity``...) under ``out``:
    a bounded run's file or a live run's parts."""
    lines = []
    for path in glob.glob(os.path.join(out, "deadletter", source + ".jsonl")) + glob.glob(
            os.path.join(out, "deadletter", source, "part-*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            lines += [json.loads(line)["raw"] for line in fh if line.strip()]
    return lines


def _wait(what, done, proc, log):
    """Polls ``done()`` until true; fails at once if the launcher exits (the test's timeout bounds
    the wait)."""
    while not done():
        if proc.poll() is not None:
            with open(log, encoding="utf-8", errors="replace") as fh:
                pytest.fail("the pipeline exited (%s) before %s:\n%s" % (
                    proc.returncode, what, fh.read()[-4000:]))
        time.sleep(0.2)




def _worker_pool(launcher):
    """The pid of Beam's Python worker pool (``pipelines.runners --service_port``) the launcher
    started: the leader of a process group that holds the SDK workers."""
    for pid, command in _children(launcher.pid):
        if "pipelines.runners" in command and "--service_port" in command:
            return pid
    return None


def _checkpoint_number(path):
    return int(os.path.basename(path)[len("chk-"):]) if path else 0


def _live_command(config, out, checkpoints, *extra):
    return [PY, "-m", "pipelines.stream", "--config", config, "--streaming",
            "--runner=FlinkRunner", "--output_dir", out, "--flush_seconds", "1",
            "--blob_grace_seconds", "2",
            "--checkpointing_interval=1000", "--state_backend=filesystem",
            "--state_backend_storage_path=file://%s" % checkpoints,
            "--externalized_checkpoints_enabled",
            "--retain_externalized_checkpoints_on_cancellation",
            "--input", "eventhubs://in?connection_string_env=IN_CS&mode=live"
                       "&watermark_delay_seconds=2&max_read_seconds=1"] + list(extra)


def _job_env(source, hub, **more):
    """The environment of a job that reads the hub ``source`` (``IN_CS``) and sends to the hub
    ``hub`` (``OUT_CS``), plus ``more``: this process's, without its own Event Hubs and Storage
    connection strings."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING")}
    environ.update(PYTHONPATH=ROOT, IN_CS=source.connection_string, OUT_CS=hub.connection_string,
                   **more)
    return environ


def _running(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False




@pytest.mark.timeout(600)
def test_flink_live_killed_then_restored_from_a_checkpoint_loses_nothing(
        tmp_path, azurite, webhook_server):
    require_flink_job_server()
    checkpoints, out = tmp_path / "checkpoints", str(tmp_path / "flink")
    lines = _events(time.time())
    half = len(lines) // 2
    first_half, second_half = lines[:half], lines[half:]
    first_alerts = sum(1 for key, _ in first_half if key == "system")
    first_dead = sum(1 for key, _ in first_half if key is None)
    assert 0 < first_alerts < SYSTEM_EVENTS and 0 < first_dead < MALFORMED_LINES
    with LocalEventHubs(hub="in", partitions=PARTITIONS) as source, \
            LocalEventHubs(hub="out", partitions=PARTITIONS) as reference_hub, \
            LocalEventHubs(hub="out", partitions=PARTITIONS) as live_hub:
        _publish(source.connection_string, first_half)
        # One hourly export window holds every event; it ends WINDOW_MARGIN_SECONDS from now.
        window_end = math.ceil(time.time()) + WINDOW_MARGIN_SECONDS

        def config(name):
            path = tmp_path / (name + ".yaml")
            path.write_text(CONFIG % {"container": "live-" + name, "anchor": _rfc(window_end),
                                      "sources": json.dumps(INPUT_SOURCES),
                                      "hook": webhook_server.url("/" + name)})
            return str(path)

        def env(hub):
            return _job_env(source, hub, AZ_CS=azurite.connection_string)

        # 1. The live job on embedded Flink, checkpointing every second into a directory.
        command = _live_command(config("flink"), out, checkpoints)
        first_log = tmp_path / "first.log"
        with open(first_log, "w", encoding="utf-8") as log:
            first = subprocess.Popen(command, cwd=ROOT, env=env(live_hub), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # 2. The first half's alerts and dead letters, some messages, then a checkpoint
            # triggered after them (checkpoint n + 2 starts after n + 1, in progress or not yet
            # started now, completes), then the kill.
            _wait("the first half's alerts, dead letters and a message",
                  lambda: (len(_alerts(webhook_server, "/flink")) >= first_alerts
                           and len(_dead_letters(out)) >= first_dead
                           and len(_messages(live_hub)) > 0), first, first_log)
            seen = _checkpoint_number(runners.latest_flink_checkpoint(str(checkpoints)))
            _wait("a checkpoint after them", lambda: _checkpoint_number(
                runners.latest_flink_checkpoint(str(checkpoints))) >= seen + 2, first, first_log)
            job_server, pool = _job_server(first), _worker_pool(first)
            assert job_server and pool, _children(first.pid)
            os.kill(job_server, signal.SIGKILL)
            os.killpg(pool, signal.SIGKILL)       # the pool and every SDK worker it started
            at_kill = {"messages": len(_messages(live_hub)),
                       "files": len(split_markers(azure_blob_files(
                           azurite.connection_string, "live-flink"))[0]),
                       "alerts": len(_alerts(webhook_server, "/flink"))}
            # 3. The rest of the input arrives while no job runs.
            _publish(source.connection_string, second_half)
            try:                      # the launcher notices that its job server is gone
                first_exit = first.wait(EXIT_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                first_exit = "still running %d s after the kill" % EXIT_WAIT_SECONDS
        finally:
            _stop(first)
        stored = source.events()
        assert len(stored) == len(lines)
        last_enqueued = max(e.enqueued_time.timestamp() for e in stored)
        if last_enqueued >= window_end:
            pytest.fail("the first job took longer than WINDOW_MARGIN_SECONDS (%d) from the first "
                        "half's publication to the kill: the export window could close before "
                        "the second half" % WINDOW_MARGIN_SECONDS)
        restore = runners.latest_flink_checkpoint(str(checkpoints))
        assert restore and os.path.basename(restore).startswith("chk-")

        # The reference: one bounded read of the whole hub on the DirectRunner.
        reference = subprocess.run(
            [PY, "-m", "pipelines.stream", "--config", config("ref"), "--runner=DirectRunner",
             "--output_dir", str(tmp_path / "ref"), "--progress_seconds", "0",
             "--input", "eventhubs://in?connection_string_env=IN_CS&mode=catchup"],
            cwd=ROOT, env=env(reference_hub), capture_output=True, text=True, timeout=300)
        assert reference.returncode == 0, reference.stderr[-4000:]
        expected = {k: v[0] for k, v in _messages(reference_hub).items()}
        expected_files = split_markers(azure_blob_files(azurite.connection_string, "live-ref"))[0]
        expected_alerts = {k: v[0] for k, v in _alerts(webhook_server, "/ref").items()}
        expected_dead = sorted(_dead_letters(str(tmp_path / "ref")))
        # Every branch delivered something, so equal outputs are not equally empty ones.
        assert len(expected) > 40 and len(expected_files) == 1
        assert len(expected_alerts) == SYSTEM_EVENTS and len(expected_dead) == MALFORMED_LINES
        reads_reference = len(source.consumer_starts())

        # 4. A new job from the retained checkpoint, until everything has arrived.
        second_log = tmp_path / "second.log"
        with open(second_log, "w", encoding="utf-8") as log:
            second = subprocess.Popen(command + ["--savepoint_path=" + restore], cwd=ROOT,
                                      env=env(live_hub), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        second_job_server = None
        try:
            def complete():
                return (set(expected) <= set(_messages(live_hub))
                        and set(expected_files) <= set(azure_blob_files(
                            azurite.connection_string, "live-flink"))
                        and set(expected_alerts) <= set(_alerts(webhook_server, "/flink"))
                        and len(_dead_letters(out)) >= len(expected_dead))
            _wait("every message, file, alert and dead letter", complete, second, second_log)
            second_job_server = _job_server(second)
        finally:
            second_exit = _stop(second)       # Ctrl-C, as a person stops a live run
        restarted_reads = source.consumer_starts()[reads_reference:]

    received = _messages(live_hub)
    files = split_markers(azure_blob_files(azurite.connection_string, "live-flink"))[0]
    alerts = _alerts(webhook_server, "/flink")
    report = {"events": len(lines), "messages": len(expected), "at_kill": at_kill,
              "first_exit": first_exit, "second_exit": second_exit,
              "restored_from": os.path.basename(restore),
              "received": sum(len(v) for v in received.values()),
              "duplicate_messages": sum(len(v) - 1 for v in received.values()),
              "duplicate_alerts": sum(len(v) - 1 for v in alerts.values()),
              "dead_letters": len(_dead_letters(out)),
              "window_end_after_last_event_s": round(window_end - last_enqueued, 1),
              "reads_after_restore": restarted_reads}
    print("\nFLINK_LIVE %s" % json.dumps(report))

    # The kill landed mid-run: some messages had arrived, not all; no file yet.
    assert 0 < at_kill["messages"] < len(expected) and at_kill["files"] == 0
    # Nothing lost, nothing else; a message delivered twice is the same message.
    assert set(received) == set(expected), "missing %d, extra %d" % (
        len(set(expected) - set(received)), len(set(received) - set(expected)))
    for message_id, copies in received.items():
        assert all(copy == expected[message_id] for copy in copies), message_id
    assert sorted(files) == sorted(expected_files)
    for name, data in files.items():
        assert data == expected_files[name], name
    assert set(alerts) == set(expected_alerts)
    for event_id, copies in alerts.items():
        assert all(copy == expected_alerts[event_id] for copy in copies), event_id
    assert sorted(set(_dead_letters(out))) == sorted(set(expected_dead))
    # The restored job read on from the checkpoint's positions: no partition from the beginning.
    assert restarted_reads and all(position > 0 for _, position in restarted_reads), \
        restarted_reads
    # Ctrl-C ends the restored command as an interrupt, and its job server (the embedded Flink,
    # the job) with it: nothing runs on after the command.
    log_text = second_log.read_text(encoding="utf-8", errors="replace")
    assert second_exit == 130 and "interrupted" in log_text, log_text[-3000:]
    assert second_job_server is not None
    for _ in range(100):
        if not _running(second_job_server):
            break
        time.sleep(0.1)
    assert not _running(second_job_server), "the job server runs on after the command"


#: Issue 20 point 1 on Flink: the audiences before and after a config edit between a checkpoint
#: and the restore (reordered, ``a-viewers`` removed, ``a-twice`` added). ``a-probe`` marks the
#: end of each user's first half: its enter shows that the user's events up to it were evaluated.
AUDIENCES_BEFORE = """
  - {id: a-buyers, slug: buyers, condition: {event: purchase}}
  - {id: a-frequent, slug: frequent_buyers, condition: {event: purchase, min_count: 3}}
  - {id: a-us, slug: us_users, condition: {trait: country, op: eq, value: US}}
  - {id: a-us-buyers, slug: us_buyers, condition: {and: [{audience: buyers}, {audience: us_users}]}}
  - {id: a-viewers, slug: viewers, condition: {event: page_view, min_count: 2}}
  - {id: a-probe, slug: probed, condition: {event: probe}}
"""
AUDIENCES_AFTER = """
  - {id: a-probe, slug: probed, condition: {event: probe}}
  - {id: a-us-buyers, slug: us_buyers, condition: {and: [{audience: buyers}, {audience: us_users}]}}
  - {id: a-us, slug: us_users, condition: {trait: country, op: eq, value: US}}
  - {id: a-twice, slug: twice_buyers, condition: {event: purchase, min_count: 2}}
  - {id: a-frequent, slug: frequent_buyers, condition: {event: purchase, min_count: 3}}
  - {id: a-buyers, slug: buyers, condition: {event: purchase}}
"""
EDIT_CONFIG = """
account: {name: acme, aid: 1234}
audiences: %s
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${OUT_CS}"}
"""


def _dated(lines, start):
    """``lines`` (key, JSON) with ``ts`` from ``start`` on, a millisecond apart, in order."""
    dated = []
    for n, (key, line) in enumerate(lines):
        event = json.loads(line)
        event["ts"] = _rfc(start + n / 1000.0)
        dated.append((key, json.dumps(event, sort_keys=True)))
    return dated


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for _, line in lines), encoding="utf-8")
    return str(path)


@pytest.mark.timeout(600)
def test_flink_restore_under_an_edited_config_equals_direct_runs_with_state(tmp_path):
    """A checkpoint taken under one config, restored under an edited one (audiences reordered,
    one removed, one added), sends what two DirectRunner runs with ``--state`` send: the first
    half under the first config, the second half under the edited one from the saved state."""
    require_flink_job_server()
    users = [(key, line) for key, line in _events(time.time()) if key not in (None, "system")]
    half = len(users) // 2
    first = users[:half] + [
        (user, json.dumps({"event": "probe", "event_id": "probe-" + user, "user_id": user}))
        for user in sorted({key for key, _ in users[:half]})]
    checkpoints, out = tmp_path / "checkpoints", str(tmp_path / "flink")
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(EDIT_CONFIG % AUDIENCES_BEFORE)
    after.write_text(EDIT_CONFIG % AUDIENCES_AFTER)
    with LocalEventHubs(hub="in", partitions=PARTITIONS) as source, \
            LocalEventHubs(hub="out", partitions=PARTITIONS) as reference_hub, \
            LocalEventHubs(hub="out", partitions=PARTITIONS) as live_hub:
        def env(hub):
            return _job_env(source, hub)

        def reference(config, lines, name):
            """A DirectRunner run over ``lines`` with the saved state; its new messages."""
            seen = set(_messages(reference_hub))
            run = subprocess.run(
                [PY, "-m", "pipelines.stream", "--config", str(config), "--runner=DirectRunner",
                 "--input", _write_lines(tmp_path / (name + ".jsonl"), lines),
                 "--state", str(tmp_path / "state.parquet"), "--output_dir",
                 str(tmp_path / "ref"), "--progress_seconds", "0"],
                cwd=ROOT, env=env(reference_hub), capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-4000:]
            return {k: v[0] for k, v in _messages(reference_hub).items() if k not in seen}

        first = _dated(first, time.time() - 1)
        _publish(source.connection_string, first)
        expected_first = reference(before, first, "first")
        command = _live_command(str(before), out, checkpoints)
        log_one = tmp_path / "first.log"
        with open(log_one, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(command, cwd=ROOT, env=env(live_hub), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait("the first half's messages", lambda: set(expected_first) <= set(
                _messages(live_hub)), proc, log_one)
            seen = _checkpoint_number(runners.latest_flink_checkpoint(str(checkpoints)))
            _wait("a checkpoint after them", lambda: _checkpoint_number(
                runners.latest_flink_checkpoint(str(checkpoints))) >= seen + 2, proc, log_one)
        finally:
            _stop(proc)
        restore = runners.latest_flink_checkpoint(str(checkpoints))
        at_stop = len(_messages(live_hub))

        second = _dated(users[half:], time.time() - 1)
        _publish(source.connection_string, second)
        expected_second = reference(after, second, "second")
        log_two = tmp_path / "second.log"
        with open(log_two, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(command[:command.index("--config") + 1] + [str(after)]
                                    + command[command.index("--config") + 2:]
                                    + ["--savepoint_path=" + restore], cwd=ROOT,
                                    env=env(live_hub), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            _wait("the second half's messages", lambda: set(expected_second) <= set(
                _messages(live_hub)), proc, log_two)
        finally:
            _stop(proc)
    received = _messages(live_hub)
    expected = dict(expected_first, **expected_second)
    edited = [json.loads(body)["data"]["segment_events"] for body in expected_second.values()]
    print("\nFLINK_EDIT %s" % json.dumps({
        "messages_first": len(expected_first), "messages_second": len(expected_second),
        "at_stop": at_stop, "restored_from": os.path.basename(restore),
        "received": sum(len(v) for v in received.values())}))
    # The edit shows in the second half: the added audience enters, the removed one is gone.
    assert any(s["id"] == "a-twice" for events in edited for s in events)
    assert not any(s["id"] == "a-viewers" for events in edited for s in events)
    assert any(s["id"] == "a-viewers" for body in expected_first.values()
               for s in json.loads(body)["data"]["segment_events"])
    assert at_stop == len(expected_first) and len(expected_second) > 10
    assert set(received) == set(expected), "missing %d, extra %d" % (
        len(set(expected) - set(received)), len(set(received) - set(expected)))
    for message_id, copies in received.items():
        assert all(copy == expected[message_id] for copy in copies), message_id
