"""When each process of a run is busy: CPU share per process over time (Linux ``/proc``).

    python -m bench.timeline [--step 0.5] [--json FILE] -- COMMAND [ARGS...]

Runs the command, samples the CPU time (user + system) of it and of all its descendants (Beam's
SDK workers are children of its worker pool) every 0.1 s, and prints one row per ``--step``
seconds: the share of one core each process used in that step (100% is a core kept busy), the
command's own process first, then each process's role (``bench._tree.role``). A run on embedded
Flink shows its phases this way: which of the job server and the SDK worker processes are busy,
and when. Example::

    python -m bench.timeline -- .venv/bin/python -m pipelines.stream --config bench/config.yaml \\
        --input bench/data/4n.jsonl --output_dir /tmp/out --progress_seconds 0 --runner=FlinkRunner

The command's output goes to ``/dev/null`` except its last 2,000 characters of stderr on failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench._tree import classify, tree_stats

SAMPLE_SECONDS = 0.1


def sample(command, roles=None):
    """Runs ``command``; returns ``(its pid, exit code, wall seconds, [(seconds, {pid: cpu seconds})],
    stderr)``. ``roles``, a dict, gets each process's role (``bench._tree.role``)."""
    roles = {} if roles is None else roles
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        samples = []
        while proc.poll() is None:
            snapshot = {}
            for pid, (seconds, _) in tree_stats(proc.pid).items():
                snapshot[pid] = seconds
                classify(roles, pid, proc.pid)
            samples.append((time.monotonic() - started, snapshot))
            time.sleep(SAMPLE_SECONDS)
        wall = time.monotonic() - started
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return proc.pid, proc.returncode, wall, samples, stderr


def timeline(samples, main_pid, step):
    """``(pids, rows)``: the processes (``main_pid`` first) and, per step, ``(end seconds, [share of a
    core per process])``."""
    pids = sorted({pid for _, snapshot in samples for pid in snapshot}, key=lambda p: (p != main_pid, p))
    last = {pid: 0.0 for pid in pids}
    rows, previous, next_row = [], 0.0, step
    for seconds, snapshot in samples:
        if seconds < next_row:
            continue
        shares = []
        for pid in pids:
            cpu = snapshot.get(pid, last[pid])
            shares.append(max(cpu - last[pid], 0.0) / (seconds - previous))
            last[pid] = cpu
        rows.append((seconds, shares))
        previous, next_row = seconds, seconds + step
    return pids, rows


def parse_with_command(parser, argv):
    """``(args, command)``: the options of ``parser`` and the command given after ``--`` (an
    error when there is none)."""
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    return args, command


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", type=float, default=0.5, help="seconds per row")
    parser.add_argument("--json", help="also write the rows and totals to this file")
    args, command = parse_with_command(parser, argv)
    if not os.path.isdir("/proc/self"):
        parser.error("needs Linux /proc")
    roles = {}
    main_pid, status, wall, samples, stderr = sample(command, roles)
    pids, rows = timeline(samples, main_pid, args.step)
    totals = {pid: max((s.get(pid, 0.0) for _, s in samples), default=0.0) for pid in pids}
    print("wall %.2f s, exit %d; share of a core per %.1f s, the command's process first:" % (wall, status, args.step))
    print("    s  " + "  ".join("%7d" % pid for pid in pids))
    for seconds, shares in rows:
        print("%5.1f  " % seconds + "  ".join("%6.0f%%" % (100 * share) for share in shares))
    print("CPU seconds: " + ", ".join("%d: %.2f" % (pid, totals[pid]) for pid in pids))
    print("processes: " + ", ".join("%d: %s" % (pid, roles.get(pid, "?")) for pid in pids))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"wall_seconds": wall, "exit": status, "pids": pids,
                       "rows": [[seconds] + shares for seconds, shares in rows],
                       "cpu_seconds": [totals[pid] for pid in pids],
                       "roles": [roles.get(pid) for pid in pids]}, fh)
    if status:
        sys.stderr.write(stderr[-2000:])
    return status


if __name__ == "__main__":
    sys.exit(main())
