"""Runs one module's ``run(argv)`` and prints ``{"seconds", "peak_rss_mb", "status"}`` as its last line.

``python -m bench._measure [--tree] MODULE [ARGS...]``

``peak_rss_mb`` counts the child processes the run waited for too (a runner's job server and SDK
workers): this process's peak plus the largest child's peak. ``self_peak_rss_mb`` is this process
alone. ``cpu_seconds`` is the user and system time of this process and of the child processes it
waited for; ``self_cpu_seconds`` is this process's alone.

``--tree`` also samples the whole process tree (``bench._tree``): a run on a portable runner
works in processes this one never waits for (Flink's job server, which Beam stops at exit, and
Beam's SDK workers, children of the worker pool), so their CPU and memory are read from ``/proc``
while the run goes on (``tree_cpu_seconds``, ``tree_peak_rss_mb``, CPU by role, the SDK worker
processes started and at once).
"""
import importlib
import json
import resource
import sys
import time


def main():
    argv = sys.argv[1:]
    sampler = None
    if argv[:1] == ["--tree"]:
        from bench._tree import TreeSampler
        argv = argv[1:]
        sampler = TreeSampler().start()
    module, argv = argv[0], argv[1:]
    started = time.perf_counter()
    status = importlib.import_module(module).run(argv)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    self_kb = usage.ru_maxrss
    peak_kb = self_kb + children.ru_maxrss
    measured = {"seconds": seconds, "peak_rss_mb": round(peak_kb / 1024, 1),
                "self_peak_rss_mb": round(self_kb / 1024, 1), "cpu_seconds": round(cpu, 3),
                "self_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3), "status": status or 0}
    if sampler is not None:
        measured.update(sampler.stop().summary())
    print(json.dumps(measured))
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
