"""Ctrl-C at any moment: ``interrupted``, exit status 130, no traceback, no partial file under a
final name, no process left.

Each case runs a real command in its own session (its own process group, as a terminal's
foreground job) and sends SIGINT to the group, as Ctrl-C does, at a point placed by what the
command shows: Beam's import under way, the first progress line, the first export file written,
the summary printed. Nothing waits for a fixed time.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bench.make_data import write
from tests.commands import (EVENTHUB_WORK, FREQUENT_BUYERS, HIGH_VALUE, ROOT, job_config,
                            run_pipeline)

CONFIG = job_config([FREQUENT_BUYERS, HIGH_VALUE], [
    EVENTHUB_WORK,
    "  - {id: w-blob, workflow: azure_blob_event_export, config: {container: exports, period_hours: 1}}\n"])
#: Seconds a case may take at most; a bound on a hang, never a point in the run.
LIMIT = 240


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupt")
    (path / "config.yaml").write_text(CONFIG)
    write(str(path / "events.jsonl"), 30000, 1500, 20)
    return path


@pytest.fixture(scope="module")
def complete(job):
    """The files of an uninterrupted run, to compare what an interrupted one left."""
    out = job / "complete"
    result = run_pipeline("replay", job, "complete", timeout=LIMIT)
    assert result.returncode == 0, result.stderr
    return out


def descendants(pid):
    """Every live process below ``pid``, from ``/proc`` (the test's own look, not the code's)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


class Command:
    """A command in its own process group, its output collected as it comes."""

    def __init__(self, argv):
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.stdout, self.stderr = [], []
        self.seen = set()  # every process the command started, as seen while it ran
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.process.stdout, self.stdout),
                                          (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    def wait_for(self, condition):
        """Polls ``condition`` until it holds; False if the command ended first."""
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            self.seen.update(descendants(self.process.pid))
            if condition(self):
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.005)
        raise AssertionError("the command never reached the point")

    def interrupt(self, group=True):
        if group:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            os.kill(self.process.pid, signal.SIGINT)
        status = self.process.wait(timeout=LIMIT)
        for reader in self._readers:
            reader.join(LIMIT)
        return status


def beam_importing(command):
    try:
        with open("/proc/%d/maps" % command.process.pid) as fh:
            return "apache_beam" in fh.read()
    except OSError:
        return False


def progress_printed(command):
    return any("records read" in line for line in command.stderr)


def export_file_written(out):
    def written(unused_command):
        root = out / "blob" / "exports"
        return root.is_dir() and any(p.suffix == ".csv" for p in root.rglob("*"))
    return written


def summary_printed(command):
    return any(line.startswith("Summary (") for line in command.stdout)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check_files(out, complete):
    """Every file under a final name is whole: the same bytes as the uninterrupted run's, or,
    for what differs from run to run (times, run ids), complete lines of JSON."""
    for path in (out.rglob("*") if out.exists() else ()):
        if not path.is_file():
            continue
        name = path.relative_to(out)
        assert not path.name.startswith(".tmp-") and not path.name.endswith(".tmp"), \
            "temporary file left: %s" % name
        data = path.read_bytes()
        if path.suffix == ".csv" or path.parent.name in ("eventhub", "deadletter") \
                or path.name == "audiences_daily.jsonl":
            assert data == (complete / name).read_bytes(), "partial or different: %s" % name
        elif path.suffix == ".jsonl":
            assert data == b"" or data.endswith(b"\n"), name
            for line in data.decode("utf-8").splitlines():
                json.loads(line)
        elif path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".html":
            assert data.rstrip().endswith(b"</html>"), name


POINTS = {
    "importing Beam": lambda out: beam_importing,
    "first progress line": lambda out: progress_printed,
    "first export file": export_file_written,
    "summary printed": lambda out: summary_printed,
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("command", ["stream", "replay"])
def test_ctrl_c_at_any_point(job, complete, command, point):
    out = job / ("%s-%s" % (command, point.replace(" ", "-")))
    run = Command([sys.executable, "-m", "pipelines." + command, "--config",
                   str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
                   "--output_dir", str(out), "--progress_seconds", "0.05"])
    reached = run.wait_for(POINTS[point](out))
    assert reached, "the command ended before %s: %s" % (point, "".join(run.stderr)[-2000:])
    status = run.interrupt()
    stderr = "".join(run.stderr)
    if point == "summary printed" and status == 0:
        # The signal came after the last line: the run had finished, whole.
        assert "report:" in "".join(run.stdout) and "interrupted" not in stderr
    else:
        assert status == 130, stderr[-3000:]
        assert stderr.splitlines()[-1] == "interrupted", stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    left = [pid for pid in run.seen if alive(pid)]
    assert not left, "processes left: %s" % left
    with pytest.raises(ProcessLookupError):
        os.killpg(run.process.pid, 0)  # nothing of the command's process group is left
    check_files(out, complete)


@pytest.mark.slow
def test_sigint_to_the_command_alone_interrupts_it(job, complete):
    # `kill -INT <pid>` reaches the command only, not its process group.
    out = job / "pid-only"
    run = Command([sys.executable, "-m", "pipelines.replay", "--config", str(job / "config.yaml"),
                   "--input", str(job / "events.jsonl"), "--output_dir", str(out),
                   "--progress_seconds", "0.05"])
    assert run.wait_for(progress_printed)
    status = run.interrupt(group=False)
    assert status == 130 and "".join(run.stderr).splitlines()[-1] == "interrupted"
    assert not [pid for pid in run.seen if alive(pid)]
    check_files(out, complete)


def test_ctrl_c_in_the_local_event_hubs_run_removes_its_config_copy(job, tmp_path):
    # emulators.run_with_local_eventhubs writes a copy of the config to the temp directory and
    # starts an endpoint in-process: Ctrl-C once the endpoint is up leaves neither behind.
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.run_with_local_eventhubs", "--config",
         str(job / "config.yaml"), "--input", str(job / "events.jsonl"), "--output_dir", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)
    first = process.stderr.readline()
    assert first.startswith("local Event Hubs endpoint on 127.0.0.1:"), first
    os.killpg(process.pid, signal.SIGINT)
    _, rest = process.communicate(timeout=LIMIT)
    assert process.returncode == 130 and rest.splitlines()[-1] == "interrupted", rest[-2000:]
    assert "Traceback" not in rest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("config-local-eventhub-")] == []
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
