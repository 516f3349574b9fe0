"""Soak: the streaming pipeline over millions of events while its destinations keep failing.

    python -m bench.soak [--events 2000000] [--users 200000] [--days 40] [--reset-every 15]
                         [--rss-every 3] [--workdir bench/data/soak] [--no-catch-up]

Not part of the test suite (it takes minutes). Steps:

1. makes the data set with ``bench.make_data`` (cached in the work dir by size);
2. computes what must be delivered with ``pipelines.replay`` and local sinks (the contract makes
   ``stream`` and ``replay`` deliver the same messages and files);
3. starts Azurite and the local Event Hubs endpoint, each behind a ``tests.faultproxy.FaultProxy``
   that cuts every open connection every ``--reset-every`` seconds, and runs
   ``python -m pipelines.stream`` (``--progress_seconds 10``) with an Event Hub work and a Blob
   export work (csv.gz, 6 h windows) sending through them, sampling the pipeline's RSS (its whole
   process tree, from /proc) every ``--rss-every`` seconds;
4. compares: Event Hub message ids received vs expected (duplicates must be identical copies;
   messages the work gave up on are in its dead-letter file, to resend; "lost" are those neither
   received nor dead-lettered), Blob files written vs expected (names and bytes);
5. when files are missing (a window that failed through every retry), runs the Blob work once more
   without faults (catch-up from its state marker, as a restarted job would) and compares again.

Prints a summary and writes everything as JSON to ``<workdir>/soak.json``. Loopback only.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench._tree import tree_stats  # noqa: E402
from bench.make_data import write as write_data  # noqa: E402


# -- process tree RSS --------------------------------------------------------------------------

def tree_rss_mb(pid):
    """Resident memory of ``pid`` and all its descendants, in MB (0 when it is gone)."""
    return sum(rss for _, rss in tree_stats(pid).values()) / (1024 * 1024)


class RssSampler:
    def __init__(self, pid, every):
        self.pid, self.every = pid, every
        self.samples = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while True:
            rss = tree_rss_mb(self.pid)
            if rss:
                self.samples.append((round(time.monotonic() - self._started, 1), round(rss, 1)))
            if self._stop.wait(self.every):
                return

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def summary(self):
        if not self.samples:
            return {}
        values = [mb for _, mb in self.samples]
        return {"start_mb": values[0], "mid_mb": values[len(values) // 2], "end_mb": values[-1],
                "max_mb": max(values), "samples": len(values), "every_s": self.every,
                "series": self.samples}


# -- helpers -------------------------------------------------------------------------------------

def _config(container, with_eventhub=True):
    with open(os.path.join(HERE, "config.yaml"), encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    works = []
    if with_eventhub:
        works.append({"id": "w-eh", "workflow": "eventhub_audience_export",
                      "config": {"connection_string": "${SOAK_EH_CS}",
                                 "user_fields": ["email", "country"]}})
    works.append({"id": "w-blob", "workflow": "azure_blob_event_export",
                  "config": {"connection_string": "${SOAK_BLOB_CS}", "container": container,
                             "prefix": "soak/", "export_type": "events", "period_hours": 6,
                             "event_parameters": ["price", "sku"],
                             "attributes": ["email", "country"], "format": "csv.gz"}})
    config["works"] = works
    return config


def _write_config(path, config):
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)


def _run(command_module, config, data, out, env, progress=0, log=None):
    command = [sys.executable, "-m", command_module, "--config", config, "--input", data,
               "--output_dir", out, "--progress_seconds", str(progress)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=log or subprocess.PIPE, text=True)


def _env(eh_cs="", blob_cs=""):
    env = dict(os.environ, SOAK_EH_CS=eh_cs, SOAK_BLOB_CS=blob_cs, PYTHONUNBUFFERED="1")
    for name in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"):
        env.pop(name, None)
    return env


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _local_files(root):
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if "/_state/" in "/" + rel:
                continue
            with open(path, "rb") as fh:
                files[rel] = _sha(fh.read())
    return files


def _azure_files(connection_string, container):
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient
    with BlobServiceClient.from_connection_string(connection_string) as service:
        client = service.get_container_client(container)
        try:
            return {b.name: _sha(client.download_blob(b.name).readall())
                    for b in client.list_blobs() if "/_state/" not in "/" + b.name}
        except ResourceNotFoundError:
            return {}


def _compare_files(expected, written):
    missing = sorted(set(expected) - set(written))
    extra = sorted(set(written) - set(expected))
    differing = sorted(n for n in set(expected) & set(written) if expected[n] != written[n])
    return {"expected": len(expected), "written": len(written), "missing": len(missing),
            "extra": len(extra), "differing": len(differing),
            "identical": not (missing or extra or differing), "examples": (missing + extra
                                                                          + differing)[:5]}


def _read_ids(path):
    ids = set()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    ids.add((record.get("raw") or record)["message_id"])
    return ids


def _tail(text, n=1500):
    return (text or "")[-n:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--reset-every", type=float, default=15.0,
                        help="seconds between two rounds of connection resets (both proxies)")
    parser.add_argument("--rss-every", type=float, default=3.0)
    parser.add_argument("--workdir", default=os.path.join(HERE, "data", "soak"))
    parser.add_argument("--no-catch-up", action="store_true")
    args = parser.parse_args(argv)

    from emulators.eventhubs import LocalEventHubs
    from tests.faultproxy import FaultProxy
    from tests.fixtures_azurite import _install, _start, _stop

    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, "events-%d-%d-%d.jsonl" % (args.events, args.users,
                                                                 args.days))
    if not os.path.exists(data):
        started = time.monotonic()
        write_data(data + ".tmp", args.events, args.users, args.days)
        os.replace(data + ".tmp", data)
        print("data: %d events, %d users in %.0f s" % (args.events, args.users,
                                                       time.monotonic() - started), flush=True)
    container = "soak-" + uuid.uuid4().hex[:10]
    config_path = os.path.join(args.workdir, "config.yaml")
    _write_config(config_path, _config(container))
    result = {"events": args.events, "users": args.users, "days": args.days,
              "reset_every_s": args.reset_every, "machine_cpus": os.cpu_count()}

    # 2. What must be delivered: replay with local sinks.
    expected_dir = os.path.join(args.workdir, "expected")
    shutil.rmtree(expected_dir, ignore_errors=True)
    started = time.monotonic()
    proc = _run("pipelines.replay", config_path, data, expected_dir, _env())
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit("replay failed:\n" + _tail(err, 4000))
    result["expected_run_s"] = round(time.monotonic() - started, 1)
    expected_ids = _read_ids(os.path.join(expected_dir, "eventhub", "w-eh.jsonl"))
    expected_files = _local_files(os.path.join(expected_dir, "blob", container))
    print("expected: %d messages, %d files (replay %.0f s)" % (
        len(expected_ids), len(expected_files), result["expected_run_s"]), flush=True)

    # 3. The stream through failing destinations.
    _install()
    azurite = _start()
    hubs = LocalEventHubs(partitions=4).start()
    eh_proxy = FaultProxy(("127.0.0.1", hubs.port), "eventhubs", lifetime=6 * 3600).start()
    blob_proxy = FaultProxy(("127.0.0.1", azurite.port), "azurite", lifetime=6 * 3600).start()
    stream_dir = os.path.join(args.workdir, "stream")
    shutil.rmtree(stream_dir, ignore_errors=True)
    try:
        eh_cs = hubs.connection_string.replace(":%d;" % hubs.port, ":%d;" % eh_proxy.port)
        blob_cs = azurite.connection_string.replace(":%d/" % azurite.port,
                                                    ":%d/" % blob_proxy.port)
        for proxy in (eh_proxy, blob_proxy):
            proxy.periodic_resets(args.reset_every)
        log_path = os.path.join(args.workdir, "stream.stderr")
        with open(log_path, "w", encoding="utf-8") as log:
            started = time.monotonic()
            proc = _run("pipelines.stream", config_path, data, stream_dir, _env(eh_cs, blob_cs),
                        progress=10, log=log)
            sampler = RssSampler(proc.pid, args.rss_every).start()
            stdout, _ = proc.communicate()
            seconds = time.monotonic() - started
            sampler.stop()
        for proxy in (eh_proxy, blob_proxy):
            proxy.clear_periodic()
        with open(log_path, encoding="utf-8") as fh:
            stderr = fh.read()
        result.update({"exit_status": proc.returncode, "seconds": round(seconds, 1),
                       "events_per_s": round(args.events / seconds),
                       "rss": sampler.summary(),
                       "stderr_errors": [l for l in stderr.splitlines()
                                         if l.startswith("error")][:10]})
        summary_path = os.path.join(stream_dir, "summary.json")
        if os.path.exists(summary_path):
            with open(summary_path, encoding="utf-8") as fh:
                summary = json.load(fh)
            result["pipeline_summary"] = {"records_read": summary["records_read"],
                                          "works": summary["works"]}
        result["faults"] = {name: {k: v for k, v in proxy.counters().items()
                                   if k in ("resets", "periodic_rounds", "connections")}
                            for name, proxy in (("eventhubs", eh_proxy), ("azurite", blob_proxy))}

        # 4. Compare.
        bodies, copies = {}, 0
        identical = True
        for event in hubs.events():
            digest = _sha(event.body)
            if event.message_id in bodies:
                copies += 1
                identical = identical and bodies[event.message_id] == digest
            else:
                bodies[event.message_id] = digest
        received = set(bodies)
        deadlettered = _read_ids(os.path.join(stream_dir, "deadletter", "w-eh.jsonl"))
        result["messages"] = {
            "expected": len(expected_ids), "received": len(received & expected_ids),
            "duplicate_copies": copies, "duplicates_identical": identical,
            "unexpected": len(received - expected_ids),
            "deadlettered_to_resend": len(deadlettered - received),
            "lost": len(expected_ids - received - deadlettered)}
        written = _azure_files(azurite.connection_string, container)
        result["files"] = _compare_files(expected_files, written)

        # 5. Catch-up of the Blob work, without faults, when a window could not be written.
        if result["files"]["missing"] and not args.no_catch_up:
            catch_config = os.path.join(args.workdir, "config-catch-up.yaml")
            _write_config(catch_config, _config(container, with_eventhub=False))
            started = time.monotonic()
            proc = _run("pipelines.stream", catch_config, data,
                        os.path.join(args.workdir, "catch-up"),
                        _env("", azurite.connection_string))
            _, err = proc.communicate()
            written = _azure_files(azurite.connection_string, container)
            result["files_after_catch_up"] = dict(_compare_files(expected_files, written),
                                                  exit_status=proc.returncode,
                                                  seconds=round(time.monotonic() - started, 1))
    finally:
        eh_proxy.stop()
        blob_proxy.stop()
        hubs.stop()
        _stop(azurite.process)
        shutil.rmtree(azurite.workdir, ignore_errors=True)

    path = os.path.join(args.workdir, "soak.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    shown = dict(result)
    if "rss" in shown:
        shown["rss"] = {k: v for k, v in shown["rss"].items() if k != "series"}
    print(json.dumps(shown, indent=2))
    print("written to %s" % path)
    ok = result["messages"]["lost"] == 0 and result["messages"]["duplicates_identical"] and \
        (result.get("files_after_catch_up") or result["files"])["identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
