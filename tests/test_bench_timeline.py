"""bench.timeline: CPU share per process over time, from /proc (Linux)."""
import json
import sys

import pytest

from bench.timeline import main, timeline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

# A parent that waits while its child spins for one second of CPU, then sleeps: the pause lets a
# sample see the child's total before it ends (samples come every 0.1 s).
BUSY_CHILD = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
              "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.0: pass\\n"
              "time.sleep(1.0)'])")


def test_the_busy_child_shows_and_the_waiting_parent_does_not(tmp_path, capsys):
    out = tmp_path / "timeline.json"
    assert main(["--step", "0.2", "--json", str(out), "--", sys.executable, "-c", BUSY_CHILD]) == 0
    figures = json.loads(out.read_text())
    assert len(figures["pids"]) == 2  # the command's process first, then its child
    parent_cpu, child_cpu = figures["cpu_seconds"]
    # CPU time, counted by the kernel: a busy machine stretches the child's second of CPU over more
    # wall time, it does not change these figures.
    assert child_cpu >= 0.9 and parent_cpu < child_cpu
    # The rows account for the child's CPU: shares times their steps add up to its CPU seconds.
    ends = [row[0] for row in figures["rows"]]
    steps = [end - start for start, end in zip([0.0] + ends, ends)]
    assert sum(row[2] * step for row, step in zip(figures["rows"], steps)) == pytest.approx(
        child_cpu, abs=0.02)
    assert "CPU seconds" in capsys.readouterr().out


def test_rows_are_shares_of_a_core_between_samples():
    samples = [(0.1, {1: 0.0}), (0.6, {1: 0.25, 2: 0.5}), (1.1, {1: 0.25, 2: 1.0}), (1.2, {1: 0.3})]
    pids, rows = timeline(samples, main_pid=1, step=0.5)
    assert pids == [1, 2]
    assert [round(t, 1) for t, _ in rows] == [0.6, 1.1]
    assert [[round(x, 2) for x in shares] for _, shares in rows] == [[0.42, 0.83], [0.0, 1.0]]


def test_a_failing_command_gives_its_exit_code():
    assert main(["--", sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
