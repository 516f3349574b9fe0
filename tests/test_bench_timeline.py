"""bench.timeline: CPU share per process over time, from /proc (Linux)."""
import json
import sys

import pytest

from bench.timeline import main, timeline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

# A parent that waits while its child spins for about a second.
BUSY_CHILD = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
              "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.0: pass'])")


def test_the_busy_child_shows_and_the_waiting_parent_does_not(tmp_path, capsys):
    out = tmp_path / "timeline.json"
    assert main(["--step", "0.2", "--json", str(out), "--", sys.executable, "-c", BUSY_CHILD]) == 0
    figures = json.loads(out.read_text())
    assert len(figures["pids"]) == 2  # the command's process first, then its child
    parent_cpu, child_cpu = figures["cpu_seconds"]
    assert child_cpu >= 0.9 and parent_cpu < child_cpu
    assert max(row[2] for row in figures["rows"]) > 0.3  # steps where the child is busy
    assert "CPU seconds" in capsys.readouterr().out


def test_rows_are_shares_of_a_core_between_samples():
    samples = [(0.1, {1: 0.0}), (0.6, {1: 0.25, 2: 0.5}), (1.1, {1: 0.25, 2: 1.0}), (1.2, {1: 0.3})]
    pids, rows = timeline(samples, main_pid=1, step=0.5)
    assert pids == [1, 2]
    assert [round(t, 1) for t, _ in rows] == [0.6, 1.1]
    assert [[round(x, 2) for x in shares] for _, shares in rows] == [[0.42, 0.83], [0.0, 1.0]]


def test_a_failing_command_gives_its_exit_code():
    assert main(["--", sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
