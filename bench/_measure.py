"""Runs one module's ``run(argv)`` and prints ``{"seconds", "peak_rss_mb", "status"}`` as its last line.

``python -m bench._measure MODULE [ARGS...]``

``peak_rss_mb`` counts the child processes the run waited for too (a runner's job server and SDK
workers): this process's peak plus the largest child's peak. ``self_peak_rss_mb`` is this process
alone. ``cpu_seconds`` is the user and system time of this process and of the child processes it
waited for; ``self_cpu_seconds`` is this process's alone.
"""
import importlib
import json
import resource
import sys
import time


def main():
    module, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    status = importlib.import_module(module).run(argv)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    self_kb = usage.ru_maxrss
    peak_kb = self_kb + children.ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": round(peak_kb / 1024, 1),
                      "self_peak_rss_mb": round(self_kb / 1024, 1), "cpu_seconds": round(cpu, 3),
                      "self_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
                      "status": status or 0}))
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
