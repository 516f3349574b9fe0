"""Runs one module's ``run(argv)`` and prints ``{"seconds", "peak_rss_mb", "status"}`` as its last line.

``python -m bench._measure MODULE [ARGS...]``

``peak_rss_mb`` counts the worker processes too (``--worker_processes``): this process's peak plus
each worker's peak (an upper bound of their simultaneous total). ``self_peak_rss_mb`` is this
process alone. ``cpu_seconds`` is the user and system time of this process and of the child
processes it waited for (the workers, which the pipeline closes before it returns);
``self_cpu_seconds`` is this process's alone, and ``worker_task_cpu_seconds`` what the workers
spent per task (``transforms._worker_processes.worker_task_cpu``: parsing, evaluation, messages).
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
    from transforms._worker_processes import worker_peaks_kb, worker_task_cpu
    peak_kb = self_kb + sum(worker_peaks_kb())
    tasks = {task: round(seconds, 3) for task, (_, seconds) in sorted(worker_task_cpu().items())}
    print(json.dumps({"seconds": seconds, "peak_rss_mb": round(peak_kb / 1024, 1),
                      "self_peak_rss_mb": round(self_kb / 1024, 1), "cpu_seconds": round(cpu, 3),
                      "self_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
                      "worker_task_cpu_seconds": tasks, "status": status or 0}))
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
