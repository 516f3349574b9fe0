"""How long each Flink task's subtasks ran: which stage of a job is one subtask's work alone.

    python -m bench.flink_tasks [--top 25] [--log FILE] -- COMMAND [ARGS...]

Runs a command on embedded Flink that logs at INFO (``pipelines.replay|stream ... --runner=FlinkRunner
--parallelism=2 --verbose``): Beam passes the job server's log to the Python log, where Flink says
when each subtask ``(i/n)`` of each task switched to RUNNING and to FINISHED. This stamps every
line of the command's stderr with the time it arrived and prints, per task, each subtask's start
(seconds after the job's first transition) and running time, longest first. A task whose subtasks
ran 12 s and 0 s did all its work in one slot: a single element, or a single key. Example::

    python -m bench.flink_tasks -- .venv/bin/python -m pipelines.replay --config bench/config.yaml \\
        --input bench/data/n.jsonl --output_dir /tmp/out --runner=FlinkRunner --parallelism=2 --verbose
"""
import argparse
import re
import subprocess
import sys
import time

from bench.timeline import parse_with_command

_TRANSITION = re.compile(r"ExecutionGraph\s+-\s+(?P<task>.*) \((?P<sub>\d+)/(?P<of>\d+)\) \(\S+\) "
                         r"switched from (?P<old>[A-Z_]+) to (?P<new>[A-Z_]+)\.")


def subtask_times(stamped_lines):
    """``{task: {subtask: (start, seconds running)}}`` from ``(time, line)`` pairs; ``start`` is
    seconds after the first transition seen. Subtasks that never finished are left out."""
    started, finished, first = {}, {}, None
    for when, line in stamped_lines:
        match = _TRANSITION.search(line)
        if not match:
            continue
        first = when if first is None else first
        key = (match.group("task"), int(match.group("sub")))
        if match.group("new") == "RUNNING":
            started[key] = when
        elif match.group("new") == "FINISHED":
            finished[key] = when
    tasks = {}
    for key, start in started.items():
        if key in finished:
            tasks.setdefault(key[0], {})[key[1]] = (round(start - first, 1), round(finished[key] - start, 1))
    return tasks


def format_tasks(tasks, top):
    rows = sorted(tasks.items(), key=lambda item: -max(seconds for _, seconds in item[1].values()))
    return ["  ".join("sub %d: +%.1f s, %.1f s" % (sub, start, seconds)
                      for sub, (start, seconds) in sorted(subs.items())) + " | " + name
            for name, subs in rows[:top]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=25, help="tasks shown, longest first")
    parser.add_argument("--log", help="also write the stamped stderr to this file")
    args, command = parse_with_command(parser, argv)
    stamped = []
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            errors="replace")
    for line in proc.stderr:
        stamped.append((time.monotonic(), line.rstrip("\n")))
    status = proc.wait()
    if args.log:
        with open(args.log, "w", encoding="utf-8") as fh:
            fh.writelines("%.3f %s\n" % (when - stamped[0][0], line) for when, line in stamped)
    tasks = subtask_times(stamped)
    print("\n".join(format_tasks(tasks, args.top)) or "no Flink task transitions in the log (--verbose?)")
    if status:
        sys.stderr.write("\n".join(line for _, line in stamped[-30:]) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
