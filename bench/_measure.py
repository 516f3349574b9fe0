"""Runs one module's ``run(argv)`` and prints ``{"seconds", "peak_rss_mb", "status"}`` as its last line.

``python -m bench._measure MODULE [ARGS...]``
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
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": round(peak_kb / 1024, 1),
                      "status": status or 0}))
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
