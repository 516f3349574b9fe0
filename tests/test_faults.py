"""Fault injection: nothing is lost when the network between the pipeline and its destinations
misbehaves (issue 9, part 1).

The real pipeline (``python -m pipelines.stream`` in a subprocess) sends its audience messages to
the local Event Hubs endpoint (the real azure-eventhub SDK), its export files to Azurite (the real
azure-storage-blob SDK) and its alerts to a loopback webhook server, each through a
:class:`tests.faultproxy.FaultProxy` that adds latency, cuts connections in the middle of a
transfer (TCP RST after N bytes), stalls, or drops every connection. The same job is first run once
with local sinks (no destination at all): that run's files are what every faulty run must deliver.

What each scenario asserts, against the clean run:

- every Event Hub message arrives at least once; copies carry the same ``message_id`` and the same
  body (a copy is a resend, never a different message under the same id); nothing else arrives;
- every Blob file is in Azurite under the same name with the same bytes (so none is half-written:
  every file also parses as CSV with the expected header), no other name exists, and the state
  marker records the same last window;
- every alert reaches the webhook at least once, copies with the same ``X-Event-Id`` and body;
- the run ends within its timeout with exit status 0 and its summary counts every message, file
  and alert; the proxies' counters show that the faults were really injected.

The proxy itself is tested in ``test_faultproxy.py``.
"""
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml

from tests.datagen import generate
from tests.faultproxy import FaultProxy
from tests.fixtures_alerts import WebhookServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
PY = VENV_PY if os.path.exists(VENV_PY) else sys.executable
RUN_TIMEOUT = 240
SEED, N_USERS = 5, 60
HOOK_ID = "w-hook"
#: The alert work listens to the input's system events only (the pipeline's own events carry a
#: per-run id, so they could not be compared between two runs).
INPUT_SOURCES = {"work": ["w-1", "w-2", "w-3", "w-4"], "segment": [], "user": [], "stream": [],
                 "auth": [], "topic-document": []}


# ------------------------------------------------------------------------------------------------
# Helpers shared with test_crash_restart.py and test_security.py
# ------------------------------------------------------------------------------------------------


def make_job(directory, seed=SEED, n_users=N_USERS, hook=True, days=30):
    """Writes a datagen data set and a config whose destinations come from the environment.

    ``EH_CS`` (Event Hub connection string), ``BLOB_CS`` and ``BLOB_CONTAINER`` (Blob export),
    ``HOOK_URL`` (webhook); an empty variable means the work's local sink.
    Returns ``(config path, input path, config dict, lines)``.
    """
    config, lines = generate(seed, n_users=n_users, days=days)
    for work in config["works"]:
        if work["workflow"] == "eventhub_audience_export":
            work["config"]["connection_string"] = "${EH_CS}"
        elif work["workflow"] == "azure_blob_event_export":
            work["config"]["connection_string"] = "${BLOB_CS}"
            work["config"]["container"] = "${BLOB_CONTAINER}"
    if hook:
        config["works"].append({
            "id": HOOK_ID, "workflow": "webhook_system_events",
            "config": {"system_event_sources": INPUT_SOURCES, "webhook_url": "${HOOK_URL}",
                       "allow_private_network": True, "timeout_seconds": 2, "max_attempts": 8,
                       "headers": {"custom-header": "header-value"}}})
    os.makedirs(directory, exist_ok=True)
    cfg_path = os.path.join(directory, "config.yaml")
    in_path = os.path.join(directory, "events.jsonl")
    with open(cfg_path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False, allow_unicode=True)
    with open(in_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return cfg_path, in_path, config, lines


def pipeline_env(eh_cs="", blob_cs="", container="exports", hook_url="", extra=None):
    env = dict(os.environ, EH_CS=eh_cs, BLOB_CS=blob_cs, BLOB_CONTAINER=container,
               HOOK_URL=hook_url, PYTHONUNBUFFERED="1")
    for name in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def pipeline_command(command, cfg_path, in_path, out_dir, *extra):
    return [PY, "-m", "pipelines." + command, "--config", cfg_path, "--input", in_path,
            "--output_dir", out_dir, "--progress_seconds", "0"] + list(extra)


def run_pipeline(command, cfg_path, in_path, out_dir, env, timeout=RUN_TIMEOUT, extra=()):
    """Runs a pipeline command to its end; ``(CompletedProcess, seconds)``."""
    started = time.monotonic()
    result = subprocess.run(pipeline_command(command, cfg_path, in_path, out_dir, *extra),
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def local_blob_files(out_dir, container="exports"):
    """``{blob name: bytes}`` of a local Blob sink."""
    root = os.path.join(out_dir, "blob", container)
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, root).replace(os.sep, "/")] = fh.read()
    return files


def azure_blob_files(connection_string, container):
    """``{blob name: bytes}`` of an Azurite container (no retries needed: no proxy in between)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient
    service = BlobServiceClient.from_connection_string(connection_string)
    try:
        client = service.get_container_client(container)
        try:
            return {b.name: client.download_blob(b.name).readall() for b in client.list_blobs()}
        except ResourceNotFoundError:
            return {}
    finally:
        service.close()


def split_markers(files):
    """``(export files, {marker name: last_window_end})``: a marker's ``updated_at`` is the time it
    was written, so markers are compared by the window they record."""
    exports, markers = {}, {}
    for name, data in files.items():
        if "/_state/" in "/" + name:
            markers[name] = json.loads(data)["last_window_end"]
        else:
            exports[name] = data
    return exports, markers


def check_files_parse(files):
    """Every CSV file parses completely, with the header of its export type and a full row width."""
    for name, data in files.items():
        assert name.endswith(".csv"), name
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        assert rows, "%s is empty (not even a header)" % name
        header = rows[0]
        assert header[0] in ("event_id", "id"), "%s: bad header %r" % (name, header[:3])
        assert all(len(r) == len(header) for r in rows[1:]), "%s: a row is cut short" % name
        assert data.endswith(b"\n"), "%s does not end with a complete line" % name


def hub_messages(hubs):
    """``[(amqp message_id, body dict)]`` of everything the local Event Hub stored."""
    return [(e.message_id, json.loads(e.body)) for e in hubs.events()]


def expected_messages(out_dir, config):
    """``{message_id: message}`` of the clean run's Event Hub local sinks."""
    expected = {}
    for work in config["works"]:
        if work["workflow"] == "eventhub_audience_export":
            for message in read_jsonl(os.path.join(out_dir, "eventhub", work["id"] + ".jsonl")):
                expected[message["message_id"]] = message
    return expected


def check_messages(received, expected):
    """At least once, copies identical, nothing unexpected; returns the number of duplicates."""
    by_id = {}
    for amqp_id, body in received:
        assert amqp_id == body["message_id"], "AMQP message_id differs from the body's"
        if body["message_id"] in by_id:
            assert by_id[body["message_id"]] == body, "two different messages share an id"
        by_id[body["message_id"]] = body
    missing = sorted(set(expected) - set(by_id))
    unexpected = sorted(set(by_id) - set(expected))
    assert not missing, "%d of %d messages never arrived, e.g. %s" % (
        len(missing), len(expected), missing[:3])
    assert not unexpected, "%d unexpected messages, e.g. %s" % (len(unexpected), unexpected[:3])
    for message_id, body in by_id.items():
        assert body == expected[message_id]
    return len(received) - len(by_id)


def _canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def expected_alerts(out_dir, work_id=HOOK_ID):
    """``{(event id, canonical body)}`` of the clean run's alert local sink.

    A system event sent again more than 24 h after its first copy is applied again (SEMANTICS): it
    is a second alert with the same id and its own ``received_at``, hence the pairs.
    """
    return {(str(body["id"]), _canonical(body))
            for body in read_jsonl(os.path.join(out_dir, "alerts", work_id + ".jsonl"))}


def check_alerts(requests, expected):
    """Every expected alert arrived at least once, nothing else did; returns the duplicates."""
    seen = []
    for request in requests:
        body = json.loads(request.body)
        event_id = request.headers.get("x-event-id")
        assert event_id == str(body["id"]), "X-Event-Id %s on the alert of %s" % (event_id,
                                                                                  body["id"])
        assert request.headers.get("custom-header") == "header-value"
        seen.append((event_id, _canonical(body)))
    missing = expected - set(seen)
    unexpected = set(seen) - expected
    assert not missing, "%d alerts never arrived: %s" % (len(missing),
                                                         sorted(i for i, _ in missing)[:5])
    assert not unexpected, "unexpected alerts: %s" % sorted(i for i, _ in unexpected)[:5]
    return len(seen) - len(set(seen))


def unique_container(prefix="faults"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


# ------------------------------------------------------------------------------------------------
# The pipeline through faulty networks
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The data set, its config and the clean run's outputs (local sinks, no network)."""
    base = str(tmp_path_factory.mktemp("faults"))
    cfg_path, in_path, config, lines = make_job(os.path.join(base, "in"))
    clean_dir = os.path.join(base, "clean")
    result, _ = run_pipeline("stream", cfg_path, in_path, clean_dir, pipeline_env())
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {
        "messages": expected_messages(clean_dir, config),
        "files": local_blob_files(clean_dir),
        "alerts": expected_alerts(clean_dir),
    }
    assert len(expected["messages"]) > 200 and len(expected["files"]) > 50
    assert len(expected["alerts"]) >= 10
    return {"base": base, "cfg": cfg_path, "input": in_path, "config": config,
            "expected": expected}


class Destinations:
    """The three destinations of a run, each behind its own proxy."""

    def __init__(self, hubs, azurite, hook):
        self.hubs, self.azurite, self.hook = hubs, azurite, hook
        self.eh = FaultProxy(("127.0.0.1", hubs.port), "eventhubs").start()
        self.blob = FaultProxy(("127.0.0.1", azurite.port), "azurite").start()
        self.web = FaultProxy(("127.0.0.1", hook.port), "webhook").start()
        self.container = unique_container()

    @property
    def proxies(self):
        return {"eventhubs": self.eh, "azurite": self.blob, "webhook": self.web}

    def env(self):
        eh_cs = self.hubs.connection_string.replace(":%d;" % self.hubs.port, ":%d;" % self.eh.port)
        blob_cs = self.azurite.connection_string.replace(":%d/" % self.azurite.port,
                                                         ":%d/" % self.blob.port)
        return pipeline_env(eh_cs, blob_cs, self.container,
                            "http://127.0.0.1:%d/hook" % self.web.port)

    def close(self):
        for proxy in self.proxies.values():
            proxy.stop()


@pytest.fixture
def destinations(local_eventhubs, azurite):
    hook = WebhookServer()
    dest = Destinations(local_eventhubs, azurite, hook)
    yield dest
    dest.close()
    hook.close()


#: Observed sizes: an Event Hubs connection sends ~1.5 KB of handshake (SASL, open, CBS) before its
#: first batch and then ~1.7 MB of batches; a Blob upload of one export file is 1-10 KB (152 files,
#: ~300 KB on 8 connections); a webhook POST is ~0.4 KB (31 alerts). The cuts are placed inside the
#: transfers that matter and spaced out in time (``min_interval``) so that they hit different
#: requests rather than every retry of one: the bounded retries (Blob: 3 retries by clients.retry,
#: waits drawn up to 2, 4 and 8 s) are meant to absorb independent faults, which is what is tested
#: here. A fault that
#: outlasts every retry is the crash/restart and catch-up case (test_crash_restart.py,
#: test_blob_export.py).
EH_BATCH = b"\x70\x80\x01\x37\x00"      # TRANSFER with message-format 0x80013700 (a batch)


def _latency(d):
    for proxy in d.proxies.values():
        proxy.set_latency(0.005)


def _resets(d):
    d.eh.reset_after(6000, times=3, min_interval=2.0)           # mid-batch, three connections
    d.blob.reset_after(3000, times=2, direction="up", min_interval=4.0)   # mid-upload
    d.blob.reset_after(900, times=1, direction="down")          # a response lost after the write
    d.web.reset_after(300, times=3, direction="up", min_interval=0.5)     # mid-POST
    d.web.reset_after(40, times=1, direction="down")            # the reply lost after delivery


def _stalls(d):
    # Event Hubs: silence for longer than the 10 s send timeout, on the first batch.
    d.eh.on_pattern(EH_BATCH, "stall", seconds=12)
    # Blob: the first export file waits 4 s (below the 60 s read timeout: a slow write).
    d.blob.on_pattern(b"PUT /devstoreaccount1/%s/acme/events/" % d.container.encode(), "stall",
                      seconds=4)
    # Webhook: two stalls longer than its 2 s timeout: timed-out attempts, then retries.
    d.web.on_pattern(b"POST /hook", "stall", seconds=5, times=2)


SCENARIOS = {"latency": _latency, "resets": _resets, "stalls": _stalls}


def _if_match():
    from azure.core import MatchConditions
    return MatchConditions.IfNotModified


_IF_MATCH = _if_match()


class BlobWatcher:
    """Reads the container directly (not through the proxy) every ``interval`` seconds while a
    run is going on: every blob visible at any moment must already be complete, i.e. equal the
    clean run's file of that name (an export file is only ever written whole)."""

    def __init__(self, connection_string, container, expected, interval=0.25):
        from azure.storage.blob import BlobServiceClient
        self._service = BlobServiceClient.from_connection_string(connection_string)
        self._client = self._service.get_container_client(container)
        self._expected = expected
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.snapshots = 0
        self.seen = set()
        self.problems = []

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        from azure.core.exceptions import ResourceNotFoundError
        while not self._stop.wait(self._interval):
            try:
                listed = [(b.name, b.etag) for b in self._client.list_blobs()]
            except ResourceNotFoundError:
                continue
            for name, etag in listed:
                if "/_state/" in "/" + name or "/_verify/" in "/" + name:
                    continue
                if (name, etag) in self.seen:       # this version was checked already
                    continue
                try:
                    data = self._client.download_blob(name, etag=etag,
                                                      match_condition=_IF_MATCH).readall()
                except ResourceNotFoundError:
                    continue
                except Exception as exc:  # noqa: BLE001 - replaced meanwhile: next snapshot
                    if "ConditionNotMet" in str(exc):
                        continue
                    raise
                self.seen.add((name, etag))
                if data != self._expected.get(name):
                    self.problems.append("%s: %d bytes, not the expected %s" % (
                        name, len(data), len(self._expected.get(name) or b"")))
            self.snapshots += 1

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self._service.close()


FAULT_LOG = []


def _report(scenario, seconds, destinations, duplicates, extra=None):
    counters = {name: proxy.counters() for name, proxy in destinations.proxies.items()}
    injected = {name: c["resets"] + c["stalls"] + (1 if c["delayed_chunks"] else 0)
                for name, c in counters.items()}
    line = {"scenario": scenario, "seconds": round(seconds, 1), "faults_injected": injected,
            "resets": {n: c["resets"] for n, c in counters.items()},
            "stalls": {n: c["stalls"] for n, c in counters.items()},
            "delayed_chunks": {n: c["delayed_chunks"] for n, c in counters.items()},
            "duplicates": duplicates}
    line.update(extra or {})
    FAULT_LOG.append(line)
    print("\nFAULTS %s" % json.dumps(line, sort_keys=True))
    return counters


@pytest.mark.timeout(420)
@pytest.mark.parametrize("scenario", [
    "latency",
    "resets",
    pytest.param("stalls", marks=pytest.mark.slow),
])
def test_every_message_file_and_alert_arrives_through_faults(job, destinations, azurite, tmp_path,
                                                             scenario):
    d = destinations
    expected = job["expected"]
    SCENARIOS[scenario](d)
    emulator_faults = 0
    if scenario == "resets":
        # The endpoint's own hook: the acknowledgement of two batches is lost after they were
        # stored, so the SDK sends them again: duplicates, which must carry the same ids.
        d.hubs.fail_next_transfers(2, after_store=True)
        emulator_faults = 2
    watcher = BlobWatcher(azurite.connection_string, d.container, expected["files"]).start()
    try:
        result, seconds = run_pipeline("stream", job["cfg"], job["input"],
                                       str(tmp_path / "out"), d.env())
    finally:
        watcher.stop()
    assert result.returncode == 0, "exit %d\n%s" % (result.returncode, result.stderr[-4000:])

    # Event Hubs: at least once, duplicates only as identical copies under the same id.
    message_dups = check_messages(hub_messages(d.hubs), expected["messages"])
    # Blob: the same names and bytes, nothing half-written at any moment, no stray names.
    files = azure_blob_files(azurite.connection_string, d.container)
    got_exports, got_markers = split_markers(files)
    want_exports, want_markers = split_markers(expected["files"])
    assert sorted(got_exports) == sorted(want_exports)
    check_files_parse(got_exports)
    for name, data in want_exports.items():
        assert got_exports[name] == data, "%s differs from the clean run's" % name
    assert got_markers == want_markers
    assert watcher.problems == []
    assert watcher.snapshots >= 1
    # Webhook: every alert at least once, same id and body on every copy.
    alert_dups = check_alerts(d.hook.requests("/hook"), expected["alerts"])

    # The summary counts every unit once, and nothing was given up on.
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    works = summary["works"]
    for work in job["config"]["works"]:
        entry = works[work["id"]]
        assert entry["deadlettered"] == 0, (work["id"], entry)
    n_messages = sum(works[w]["messages"] for w in works
                     if works[w]["workflow"] == "eventhub_audience_export")
    assert n_messages == len(expected["messages"])
    assert sum(works[w].get("files", 0) for w in works) == len(want_exports)
    assert works[HOOK_ID]["alerts"] == len(expected["alerts"])
    assert not os.path.exists(tmp_path / "out" / "deadletter" / (HOOK_ID + ".jsonl")) or \
        read_jsonl(str(tmp_path / "out" / "deadletter" / (HOOK_ID + ".jsonl"))) == []

    counters = _report(scenario, seconds, d, {"eventhubs": message_dups, "webhook": alert_dups},
                       {"emulator_lost_acks": emulator_faults,
                        "blob_snapshots_checked": watcher.snapshots,
                        "messages": len(expected["messages"]), "files": len(want_exports),
                        "alerts": len(expected["alerts"])})
    # The faults really happened.
    if scenario == "latency":
        assert all(c["delayed_chunks"] > 0 for c in counters.values())
    elif scenario == "resets":
        assert counters["eventhubs"]["resets"] >= 2
        assert counters["azurite"]["resets"] >= 2
        assert counters["webhook"]["resets"] >= 3
    else:
        assert all(c["stalls"] >= 1 for c in counters.values())
        assert counters["eventhubs"]["stalled_seconds"] >= 10


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_destinations_dropped_every_few_seconds_then_catch_up(job, destinations, azurite,
                                                              tmp_path):
    """Every connection to every destination is cut every 1.5 s while the run goes on (what the
    soak does, small). Whatever the first run could not deliver within its retries, a second run
    over the same input (no faults) delivers: the Blob export catches up from its state marker,
    the Event Hub work sends again (same ids). Together: everything, at least once."""
    d = destinations
    expected = job["expected"]
    for proxy in d.proxies.values():
        proxy.periodic_resets(1.5, first_after=0.5)
    first, first_seconds = run_pipeline("stream", job["cfg"], job["input"],
                                        str(tmp_path / "out"), d.env())
    for proxy in d.proxies.values():
        proxy.clear_periodic()
    counters = {name: proxy.counters() for name, proxy in d.proxies.items()}
    assert sum(c["resets"] for c in counters.values()) >= 3
    exports, _ = split_markers(azure_blob_files(azurite.connection_string, d.container))
    want_exports, want_markers = split_markers(expected["files"])
    for name, data in exports.items():           # whatever is there is whole
        assert data == want_exports.get(name), name
    if first.returncode != 0:
        # Only delivery failures may end the first run, named on one line each.
        errors = [l for l in first.stderr.splitlines() if l.startswith("error:")]
        assert errors and all("failed" in l for l in errors), first.stderr[-3000:]
        second, _ = run_pipeline("stream", job["cfg"], job["input"], str(tmp_path / "out"),
                                 d.env())
        assert second.returncode == 0, second.stderr[-3000:]
    check_messages(hub_messages(d.hubs), expected["messages"])
    files = azure_blob_files(azurite.connection_string, d.container)
    got_exports, got_markers = split_markers(files)
    assert got_exports == want_exports
    assert got_markers == want_markers
    check_alerts(d.hook.requests("/hook"), expected["alerts"])
    _report("periodic-resets", first_seconds, d, None,
            {"first_run_exit": first.returncode})
