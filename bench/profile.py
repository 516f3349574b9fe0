"""Where a pipeline's time goes: a cProfile run bucketed by component.

    python -m bench.profile pipelines.replay --input bench/data/n.jsonl [--top 15]

Runs the command in-process (the DirectRunner's FnApiRunner executes bundles in this process, so the
profile sees the DoFns) and prints the share of self time per component: the engine, input parsing,
message building, the output sinks, the Beam SDK (coders, bundle processing, state) and the rest,
then the top functions by self time. ``--json`` writes the buckets for ``bench.run``. Profiling
slows function-call-heavy Python code more than C code, so shares are indicative, not exact.
"""
import argparse
import cProfile
import importlib
import json
import os
import pstats
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

#: (component, path fragments) checked in order; the first match wins.
COMPONENTS = (
    ("engine", ("core/engine.py", "core/conditions.py", "core/history.py")),
    ("parse", ("core/records.py", "core/blocks.py", "transforms/read.py", "orjson", "json/decoder.py",
               "marshal")),
    ("messages", ("core/messages.py", "core/jsonlines.py", "core/timeutil.py", "json/encoder.py",
                  "_hashlib", "hashlib")),
    ("sinks", ("transforms/localsink.py", "transforms/eventhubs.py", "transforms/blob",
               "clients/blob.py",
               "core/export.py")),
    ("audience DoFns", ("transforms/audiences.py",)),
    ("output glue (pipelines/wiring.py, workflows.py)", ("pipelines/wiring.py", "pipelines/workflows.py")),
    ("beam sdk", ("apache_beam",)),
    ("start-up (imports, pipeline construction)", ("importlib", "inspect.py", "argparse.py", "dis.py",
                                                   "enum.py", "gettext.py", "ssl.py", "typing.py")),
    ("threads (waiting)", ("threading.py", "concurrent/futures")),
)


def _component(filename):
    for name, fragments in COMPONENTS:
        if any(f in filename for f in fragments):
            return name
    return "other"


def buckets(stats):
    """Self time per component, and the total.

    A built-in's time (``sorted``, ``pickle.dumps``, a C coder...) goes to the components of its
    callers, in proportion to the time spent under each, so that "built-ins" does not hide who asked.
    """
    totals, overall = {}, 0.0

    def add(name, seconds):
        totals[name] = totals.get(name, 0.0) + seconds

    for (filename, _, _), (_, _, tottime, _, callers) in stats.stats.items():
        overall += tottime
        if filename != "~":
            add(_component(filename), tottime)
            continue
        attributed = 0.0
        for (caller_file, _, _), caller_figures in callers.items():
            share = caller_figures[2]
            attributed += share
            add(_component(caller_file) if caller_file != "~" else "other", share)
        if tottime > attributed:
            add("other", tottime - attributed)
    return totals, overall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", choices=("pipelines.replay", "pipelines.stream"))
    parser.add_argument("--input", required=True)
    parser.add_argument("--config", default=os.path.join(HERE, "config.yaml"))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", help="write the buckets here")
    args = parser.parse_args(argv)
    run = importlib.import_module(args.module).run
    with tempfile.TemporaryDirectory() as out:
        profiler = cProfile.Profile()
        status = profiler.runcall(run, ["--config", args.config, "--input", args.input,
                                        "--output_dir", out, "--progress_seconds", "0"])
    if status:
        raise SystemExit("%s exited %s" % (args.module, status))
    stats = pstats.Stats(profiler)
    totals, overall = buckets(stats)
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    sys.stdout.write("%s on %s: %.1f s of self time under the profiler\n" % (args.module, args.input, overall))
    for name, seconds in rows:
        sys.stdout.write("  %-32s %6.2f s  %5.1f%%\n" % (name, seconds, 100 * seconds / overall))
    sys.stdout.write("top functions by self time:\n")
    stats.sort_stats("tottime").print_stats(args.top)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"module": args.module, "input": os.path.basename(args.input),
                       "seconds": round(overall, 2),
                       "share": {name: round(seconds / overall, 3) for name, seconds in rows}}, fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
