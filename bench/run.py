"""The benchmark: one command, one data set, every path side by side.

    python -m bench.run [--events 150000] [--users 3000] [--days 40] [--repeat 3] [--skip-1m]
        [--skip-profile] [--eventhubs-events 100000] [--flink [--flink-parallelism 1,2]]

Times, on the same files in one run: the naive Beam baseline (one state read+write and one timer per
event), ``pipelines.stream``, ``pipelines.replay`` and the pure core in a plain loop. The job is the
whole job a user runs (``bench/config.yaml``: every branch at once, the alerts posted to a loopback
receiver) on real-shaped data (``bench/make_data.py``: RFC 3339 times, late and out-of-order
arrival, duplicates); then each branch alone (``--branches``), so a slow branch shows. Each pipeline
runs at N and at 4N events (4x the users, same events per user) and its marginal rate is
3N / (t(4N) - t(N)), so start-up does not blur the comparison; start-up (a run over a handful of
events) is reported on its own. Each pipeline runs ``--repeat`` times at each size, in rounds (every
path at tiny, N and 4N, then again), and the figures use the fastest run of each: on a shared host
other work only ever adds time, and one run can be a quarter slower than the next. The same figures
from the medians are in ``results.json`` too.
Writes ``bench/results.json`` and prints a table. Also checks that stream and replay wrote the
same messages, and (unless ``--skip-1m``) replays 1M events for peak RSS.
With ``--flink`` the same run also times the baseline, ``stream`` and ``replay`` on embedded Flink
(``--runner=FlinkRunner``, set up by ``pipelines.runners``: the installed job server, Beam's worker
pool with one SDK worker process per slot) at each ``--flink-parallelism``, on the same files and in
the same rounds. Their figures compare with the DirectRunner's baseline and with Flink's baseline at
the same parallelism; their outputs are compared byte for byte with the DirectRunner's; their CPU,
memory and SDK worker processes are sampled over the whole process tree (``bench._tree``), since
the work runs in the job server's JVM and the SDK workers, not in the launching process.
Then (unless skipped) it profiles ``replay`` and ``stream`` at N (``bench.profile``: the share of
time per component, to show what limits them) and times a catch-up read of 100k events from the
bundled Event Hubs endpoint (``bench.eventhubs_catchup``; ``--eventhubs-events 0`` skips it).
Last, the targets (``bench.targets``): each one met, missed or not measured, and for each missed one
what the run's own CPU figures and profile say about why.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import yaml

from bench.make_data import write
from bench.receiver import webhook_receiver
from bench.targets import format_targets

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(HERE, "config.yaml")
SIZES = ("tiny", "N", "4N")


def _measure(module, args, label, tree=False):
    command = [sys.executable, "-m", "bench._measure"] + (["--tree"] if tree else []) + [module] + args
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
        raise SystemExit("benchmark step %s failed (exit %d)" % (label, result.returncode))
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    measured = json.loads(lines[-1])
    measured["wall_seconds"] = wall
    measured["extra"] = json.loads(lines[-2]) if len(lines) > 1 else None
    # With --tree, the whole tree's peak (a Flink run's JVM and SDK workers); else this process's
    # and its own worker processes'.
    sys.stderr.write("  %-28s %7.2f s  peak %7.1f MB\n" % (
        label, wall, measured.get("tree_peak_rss_mb", measured["peak_rss_mb"])))
    return measured


def _run_quietly(command, label):
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
        raise SystemExit("benchmark step %s failed (exit %d)" % (label, result.returncode))
    sys.stderr.write("  %-28s %7.2f s\n" % (label, time.perf_counter() - started))
    return result.stdout


#: The single-branch jobs: the whole job's works of these workflows only.
BRANCHES = {"audiences": ("eventhub_audience_export",), "blob": ("azure_blob_event_export",),
            "alerts": ("webhook_system_events",)}


#: The paths timed on every runner.
KINDS = ("baseline", "stream", "replay")


def _pipeline_args(kind, path, out, config=CONFIG, runner_args=()):
    """``(module, argv)`` of one path's run; ``runner_args`` (e.g. :func:`flink_args`) go last."""
    if kind == "baseline":
        return "bench.baseline", ["--input", path] + list(runner_args)
    module = "pipelines." + kind
    return module, (["--config", config, "--input", path, "--output_dir", out, "--progress_seconds", "0"]
                    + list(runner_args))


def flink_args(parallelism):
    """The options of a run on embedded Flink: everything else (job server, worker pool, one SDK
    worker process per slot) is ``pipelines.runners``' default, as for a user."""
    return ["--runner=FlinkRunner", "--parallelism=%d" % parallelism]


def _parallelisms(text):
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of parallelisms of 1 or more")
    return sorted(set(values))


def branch_config(branch, directory):
    """Writes the whole job's config with only one branch's works; returns its path."""
    with open(CONFIG, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    config["works"] = [w for w in config["works"] if w["workflow"] in BRANCHES[branch]]
    path = os.path.join(directory, "config-%s.yaml" % branch)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return path


def _outputs(out):
    """Every file a run wrote to its local sinks and Blob directory, by relative path: bytes (a
    Blob export marker without its ``updated_at``)."""
    files = {}
    for sub in ("eventhub", "blob", "alerts"):
        top = os.path.join(out, sub)
        for folder, _, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as fh:
                    data = fh.read()
                if os.path.basename(folder) == "_state":
                    # A Blob export's marker records when it was written; the rest must agree.
                    marker = json.loads(data)
                    marker.pop("updated_at", None)
                    data = json.dumps(marker, sort_keys=True).encode()
                files[os.path.relpath(path, out)] = data
    return files


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return sorted(fh.read().splitlines())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=150000, help="N: events of the small run")
    parser.add_argument("--users", type=int, default=3000, help="users of the small run")
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--skip-1m", action="store_true", help="skip the 1M-event replay (RSS check)")
    parser.add_argument("--skip-profile", action="store_true", help="skip the profiles of replay and stream")
    parser.add_argument("--eventhubs-events", type=int, default=100000,
                        help="events of the Event Hubs catch-up run (0: skip it)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of each pipeline at each size; the figures use the fastest "
                             "(the medians' are in results.json too)")
    parser.add_argument("--branches", type=int, default=2,
                        help="runs of replay and stream at each size for each single-branch job "
                             "(0: skip them)")
    parser.add_argument("--flink", action="store_true",
                        help="also time the baseline, stream and replay on embedded Flink "
                             "(--runner=FlinkRunner) at each --flink-parallelism, in the same rounds")
    parser.add_argument("--flink-parallelism", type=_parallelisms, default=[1, 2],
                        help="comma-separated Flink parallelisms (slots and SDK worker processes) "
                             "for --flink (default 1,2)")
    parser.add_argument("--out", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--data", default=os.path.join(HERE, "data"),
                        help="where the data sets and the runs' outputs go")
    args = parser.parse_args(argv)
    if args.flink:
        from pipelines.runners import INSTALL_FLINK, flink_job_server_jar
        if not os.path.exists(flink_job_server_jar()):
            parser.error("--flink: the Flink job server is not installed (%s): run %s"
                         % (flink_job_server_jar(), INSTALL_FLINK))
    load_before = _load()
    with webhook_receiver() as receiver:
        results = _bench(args)
        results["webhook_posts"] = receiver.posts
    # Other work on the host only ever adds time: the load averages say how much there was.
    results["machine"]["load_average_before"], results["machine"]["load_average_after"] = load_before, _load()
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    print(format_table(results))
    flink_equal = all(same for by_p in results.get("flink", {}).get("equal_to_direct", {}).values()
                      for same in by_p.values())
    return 0 if results["stream_equals_replay"] and flink_equal else 1


def _load():
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _bench(args):
    data = args.data
    os.makedirs(data, exist_ok=True)
    n, users = args.events, args.users
    files = {"tiny": os.path.join(data, "tiny.jsonl"), "N": os.path.join(data, "n.jsonl"),
             "4N": os.path.join(data, "4n.jsonl")}
    sys.stderr.write("making data: %d and %d events\n" % (n, 4 * n))
    write(files["tiny"], 20, 5, 2)
    write(files["N"], n, users, args.days)
    write(files["4N"], 4 * n, 4 * users, args.days, seed=12)
    results = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count()},
               "events": {"N": n, "4N": 4 * n, "users_N": users}, "paths": {}}
    results["repeats"] = args.repeat
    kinds = KINDS
    measured = {kind: {size: [] for size in SIZES} for kind in kinds}  # bench._measure's results
    parallelisms = args.flink_parallelism if args.flink else []
    flink_measured = {p: {kind: {size: [] for size in SIZES} for kind in kinds} for p in parallelisms}
    for round_ in range(args.repeat):
        # Rounds over every path and size: a slow spell of the machine does not fall on one alone.
        sys.stderr.write("round %d of %d\n" % (round_ + 1, args.repeat))
        for kind in kinds:
            for size in SIZES:
                module, margs = _pipeline_args(kind, files[size], os.path.join(data, "out-%s-%s" % (kind, size)))
                measured[kind][size].append(_measure(module, margs, "%s %s" % (kind, size)))
        for p in parallelisms:
            for kind in kinds:
                for size in SIZES:
                    module, margs = _pipeline_args(kind, files[size], flink_out(data, kind, size, p),
                                                   runner_args=flink_args(p))
                    flink_measured[p][kind][size].append(
                        _measure(module, margs, "flink p%d %s %s" % (p, kind, size), tree=True))
    for kind in kinds:
        runs = measured[kind]
        results["paths"][kind] = summarise(_field(runs, "wall_seconds"), n, _field(runs, "cpu_seconds"))
        results["paths"][kind]["peak_rss_mb_4N"] = max(_field(runs, "peak_rss_mb")["4N"])
        results["paths"][kind]["cpu_us_per_event"] = cpu_per_event(runs, n)
    sys.stderr.write("core\n")
    core = {size: _measure("bench.core_loop", ["--config", CONFIG, "--input", files[size]], "core " + size)
            for size in ("N", "4N")}
    engine_rate = core["4N"]["extra"]["events"] / core["4N"]["extra"]["engine_seconds"]
    parse_rate = core["4N"]["extra"]["events"] / core["4N"]["extra"]["parse_seconds"]
    results["paths"]["core"] = {
        "engine_events_per_second": round(engine_rate),
        "parse_events_per_second": round(parse_rate),
        "state_bytes_median": core["N"]["extra"]["state_bytes_median"],
        "state_bytes_max": core["N"]["extra"]["state_bytes_max"],
        "peak_rss_mb_4N": core["4N"]["peak_rss_mb"]}
    base = results["paths"]["baseline"]["marginal_events_per_second"]
    base_median = results["paths"]["baseline"]["median"]["marginal_events_per_second"]
    for kind in ("stream", "replay"):
        figures = results["paths"][kind]
        figures["ratio_to_baseline"] = round(figures["marginal_events_per_second"] / base, 2)
        figures["median"]["ratio_to_baseline"] = round(
            figures["median"]["marginal_events_per_second"] / base_median, 2)
    results["paths"]["core"]["ratio_to_baseline"] = round(engine_rate / base, 1)
    # What 20x the baseline's marginal rate leaves per event, with every CPU busy all the time.
    results["replay_target_cpu_us_per_event"] = float("%.4g" % (1e6 / (20 * base) * (os.cpu_count() or 1)))
    same = all(_outputs(os.path.join(data, "out-stream-%s" % s))
               == _outputs(os.path.join(data, "out-replay-%s" % s)) for s in ("N", "4N"))
    results["stream_equals_replay"] = same
    results["output_files_N"] = len(_outputs(os.path.join(data, "out-replay-N")))
    if parallelisms:
        results["flink"] = flink_results(flink_measured, n, results["paths"]["baseline"], data)
    if args.branches:
        results["branches"] = {}
        for branch in BRANCHES:
            config = branch_config(branch, data)
            results["branches"][branch] = {}
            for kind in ("stream", "replay"):
                walls = {size: [] for size in SIZES}
                for _ in range(args.branches):
                    for size in SIZES:
                        module, margs = _pipeline_args(
                            kind, files[size], os.path.join(data, "out-%s-%s-%s" % (branch, kind, size)),
                            config)
                        walls[size].append(_measure(module, margs, "%s %s %s" % (branch, kind, size))
                                           ["wall_seconds"])
                figures = summarise(walls, n)
                figures["ratio_to_baseline"] = round(figures["marginal_events_per_second"] / base, 2)
                results["branches"][branch][kind] = figures
    if not args.skip_1m:
        million = os.path.join(data, "1m.jsonl")
        write(million, 1_000_000, 20000, args.days, seed=13)
        run = _measure("pipelines.replay", _pipeline_args("replay", million, os.path.join(data, "out-1m"))[1],
                       "replay 1M")
        results["replay_1m"] = {"seconds": round(run["wall_seconds"], 1), "peak_rss_mb": run["peak_rss_mb"]}
    if not args.skip_profile:
        results["profile_N"] = {}
        for kind in ("replay", "stream"):
            shares = os.path.join(data, "profile-%s.json" % kind)
            _run_quietly([sys.executable, "-m", "bench.profile", "pipelines." + kind, "--input", files["N"],
                          "--config", CONFIG, "--top", "0", "--json", shares], "profile " + kind)
            with open(shares, encoding="utf-8") as fh:
                results["profile_N"][kind] = json.load(fh)["share"]
    if args.eventhubs_events:
        output = _run_quietly([sys.executable, "-m", "bench.eventhubs_catchup", "--events",
                               str(args.eventhubs_events), "--skip-raw"], "eventhubs catch-up")
        results["eventhubs_catchup"] = json.loads([l for l in output.splitlines() if l.startswith("{")][-1])
    return results


def flink_out(data, kind, size, parallelism):
    return os.path.join(data, "out-%s-%s-flink-p%d" % (kind, size, parallelism))


def _ratio(rate, base):
    return round(rate / base, 2) if base else None


def differing_outputs(reference, other):
    """Relative paths of the files ``other`` lacks, adds or holds other bytes in (``_outputs``)."""
    return sorted(name for name in set(reference) | set(other) if reference.get(name) != other.get(name))


def flink_results(measured, n, direct_baseline, data):
    """The Flink part of ``results.json``: per parallelism and path, the figures of ``summarise``
    from the wall times and the whole tree's CPU, ratios to the DirectRunner's baseline and to
    Flink's own baseline at that parallelism, peak memory and CPU by role over the tree, the SDK
    worker processes seen; each command's rate at the highest parallelism over its rate at 1;
    whether ``stream`` and ``replay`` wrote the DirectRunner's bytes."""
    out = {"parallelisms": sorted(measured), "paths": {}, "equal_to_direct": {}, "differing_files": {}}
    for p, by_kind in sorted(measured.items()):
        key = "p%d" % p
        for kind, runs in by_kind.items():
            figures = summarise(_field(runs, "wall_seconds"), n, _field(runs, "tree_cpu_seconds"))
            figures["peak_rss_mb_4N"] = max(_field(runs, "tree_peak_rss_mb")["4N"])
            every = [run for size in SIZES for run in runs[size]]
            figures["sdk_workers_started"] = max(run["sdk_workers_started"] for run in every)
            figures["sdk_workers_at_once"] = max(run["sdk_workers_at_once"] for run in every)
            figures["cpu_us_per_event_by_role"] = role_cpu_per_event(runs, n)
            fastest = min(runs["4N"], key=lambda run: run["wall_seconds"])
            figures["cpu_seconds_by_role_4N"] = fastest["tree_cpu_by_role"]
            figures["sdk_worker_cpu_seconds_4N"] = fastest["sdk_worker_cpu_seconds"]
            out["paths"].setdefault(kind, {})[key] = figures
        base = out["paths"]["baseline"][key]
        for kind in KINDS:
            figures = out["paths"][kind][key]
            rate, median = figures["marginal_events_per_second"], figures["median"]["marginal_events_per_second"]
            figures["ratio_to_direct_baseline"] = _ratio(rate, direct_baseline["marginal_events_per_second"])
            figures["ratio_to_flink_baseline"] = _ratio(rate, base["marginal_events_per_second"])
            figures["median"]["ratio_to_direct_baseline"] = _ratio(
                median, direct_baseline["median"]["marginal_events_per_second"])
            figures["median"]["ratio_to_flink_baseline"] = _ratio(
                median, base["median"]["marginal_events_per_second"])
        for kind in ("stream", "replay"):
            differing = []
            for size in ("N", "4N"):
                direct = _outputs(os.path.join(data, "out-%s-%s" % (kind, size)))
                flink = _outputs(flink_out(data, kind, size, p))
                differing += [size + ": " + name for name in differing_outputs(direct, flink)]
            out["equal_to_direct"].setdefault(kind, {})[key] = not differing
            out["differing_files"].setdefault(kind, {})[key] = differing[:10]
    low, high = min(measured), max(measured)
    if high > low:
        out["scaling"] = {"from": low, "to": high, "target": 1.7, "ratio": {
            kind: _ratio(out["paths"][kind]["p%d" % high]["marginal_events_per_second"],
                         out["paths"][kind]["p%d" % low]["marginal_events_per_second"]) for kind in KINDS},
            "median_ratio": {
            kind: _ratio(out["paths"][kind]["p%d" % high]["median"]["marginal_events_per_second"],
                         out["paths"][kind]["p%d" % low]["median"]["marginal_events_per_second"])
            for kind in KINDS}}
    return out


def role_cpu_per_event(runs_by_size, n):
    """Marginal CPU microseconds per event by role of the process tree (``bench._tree``: the
    launcher, the job server's JVM, the worker pool, the SDK workers) and their ``total``, from
    each size's run of least tree CPU time, as :func:`cpu_per_event` does."""
    least = {size: min(runs_by_size[size], key=lambda run: run["tree_cpu_seconds"]) for size in ("N", "4N")}
    small, large = least["N"]["tree_cpu_by_role"], least["4N"]["tree_cpu_by_role"]
    per_event = {name: round((large.get(name, 0.0) - small.get(name, 0.0)) / (3 * n) * 1e6, 2)
                 for name in sorted(set(small) | set(large))}
    per_event["total"] = round((least["4N"]["tree_cpu_seconds"] - least["N"]["tree_cpu_seconds"])
                               / (3 * n) * 1e6, 2)
    return per_event


def _linearity(t):
    """t(4N)/t(N) once the start-up (the tiny run) is taken off both."""
    return round((t["4N"] - t["tiny"]) / max(t["N"] - t["tiny"], 1e-9), 2)


def _figures(t, n):
    return {"startup_seconds": round(t["tiny"], 2), "seconds_N": round(t["N"], 2),
            "seconds_4N": round(t["4N"], 2),
            "marginal_events_per_second": round(3 * n / max(t["4N"] - t["N"], 1e-9)),
            "linearity": _linearity(t)}


def _field(runs_by_size, name):
    """``{size: [run[name], ...]}`` of ``{size: [run, ...]}``."""
    return {size: [run[name] for run in runs] for size, runs in runs_by_size.items()}


def _per_size(runs_by_size, estimate):
    return {size: estimate(runs) for size, runs in runs_by_size.items()}


def summarise(walls, n, cpus=None):
    """A path's figures from its runs' wall times (``{size: [seconds, ...]}``, N events at size N)
    and, when given, their CPU times (``cpus``, the same shape: user and system time, child
    processes included).

    The figures use each size's fastest run: on a shared host other work only ever adds time, so the
    fastest run is the closest to what the code costs (the rule of Python's ``timeit``). The same
    figures from the medians are under ``"median"``, and every run's time under ``"runs_seconds"``.
    ``cpu_linearity`` is t(4N)/t(N) after start-up measured in CPU time, which a busy host disturbs
    less than wall time: it tells a cost that grows faster than the events from a noisy N run.
    """
    figures = _figures(_per_size(walls, min), n)
    figures["median"] = _figures(_per_size(walls, statistics.median), n)
    figures["runs_seconds"] = {size: [round(w, 2) for w in runs] for size, runs in walls.items()}
    if cpus is not None:
        figures["cpu_linearity"] = _linearity(_per_size(cpus, min))
        figures["median"]["cpu_linearity"] = _linearity(_per_size(cpus, statistics.median))
        figures["runs_cpu_seconds"] = {size: [round(c, 2) for c in runs] for size, runs in cpus.items()}
    return figures


def _cpu_parts(run):
    """One run's CPU seconds by part: the pipeline's own process, and the processes it started
    and waited for (a runner's job server and SDK workers)."""
    own = run.get("self_cpu_seconds", run["cpu_seconds"])
    return {"pipeline's process": own, "child processes": max(run["cpu_seconds"] - own, 0.0)}


def cpu_per_event(runs_by_size, n):
    """Marginal CPU microseconds per event, by part (``_cpu_parts``), and their ``total``.

    ``runs_by_size``: ``{"N": [run, ...], "4N": [...]}`` of ``bench._measure``'s results. Each size
    takes its run of least CPU time whole, so the parts add up to the total; the marginal cost is
    (part at 4N - part at N) / 3N, as for the rates, so start-up costs cancel.
    """
    least = {size: min(runs_by_size[size], key=lambda run: run["cpu_seconds"]) for size in ("N", "4N")}
    small, large = _cpu_parts(least["N"]), _cpu_parts(least["4N"])
    per_event = {name: round((large[name] - small[name]) / (3 * n) * 1e6, 2) for name in small}
    per_event["total"] = round((least["4N"]["cpu_seconds"] - least["N"]["cpu_seconds"]) / (3 * n) * 1e6, 2)
    return per_event


def format_table(results):
    rows = ["| path | runner | marginal ev/s | x baseline (DirectRunner) | x baseline (same runner) "
            "| start-up s | t(N) s | t(4N) s | linearity | medians: x baseline (DirectRunner), linearity "
            "| peak RSS MB (4N) | outputs |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    row = "| %s | %s | %d | %s | %s | %.1f | %.1f | %.1f | %.2f | %s, %.2f | %.0f | %s |"
    for kind in KINDS:
        r = results["paths"][kind]
        m = r["median"]
        ratio = r.get("ratio_to_baseline", 1.0)
        rows.append(row % (
            kind, "direct", r["marginal_events_per_second"], ratio, ratio, r["startup_seconds"],
            r["seconds_N"], r["seconds_4N"], r["linearity"], m.get("ratio_to_baseline", 1.0), m["linearity"],
            r["peak_rss_mb_4N"], "reference" if kind != "baseline" else "-"))
    flink = results.get("flink")
    for p in (flink or {}).get("parallelisms", ()):
        key = "p%d" % p
        for kind in KINDS:
            r = flink["paths"][kind][key]
            m = r["median"]
            same = flink["equal_to_direct"].get(kind, {}).get(key)
            rows.append(row % (
                kind, "flink " + key, r["marginal_events_per_second"], r["ratio_to_direct_baseline"],
                r["ratio_to_flink_baseline"], r["startup_seconds"], r["seconds_N"], r["seconds_4N"],
                r["linearity"], m["ratio_to_direct_baseline"], m["linearity"], r["peak_rss_mb_4N"],
                "-" if same is None else "= direct" if same else "**differ**"))
    c = results["paths"]["core"]
    rows.append("| core (plain loop, engine only) | - | %d | %s | - | - | - | - | - | - | %.0f | - |" % (
        c["engine_events_per_second"], c["ratio_to_baseline"], c["peak_rss_mb_4N"]))
    lines = ["\n".join(rows), "", "each time is the fastest of %d runs" % results["repeats"]]
    if results.get("branches"):
        lines += ["", "| branch alone | stream ev/s | x baseline | replay ev/s | x baseline |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for branch, kinds in results["branches"].items():
            lines.append("| %s | %d | %s | %d | %s |" % (
                branch, kinds["stream"]["marginal_events_per_second"], kinds["stream"]["ratio_to_baseline"],
                kinds["replay"]["marginal_events_per_second"], kinds["replay"]["ratio_to_baseline"]))
        lines.append("")
    lines += [
             "t(4N)/t(N) after start-up in CPU time (user and system, child processes included): " + ", ".join(
                 "%s %.2f (medians %.2f)" % (kind, results["paths"][kind]["cpu_linearity"],
                                             results["paths"][kind]["median"]["cpu_linearity"])
                 for kind in ("baseline", "stream", "replay")),
             "parse alone: %d ev/s; state per user: median %d B, max %d B; stream == replay: %s "
             "(%d output files at N, every byte compared); webhook posts received: %d"
             % (c["parse_events_per_second"], c["state_bytes_median"], c["state_bytes_max"],
                results["stream_equals_replay"], results.get("output_files_N", 0),
                results.get("webhook_posts", 0))]
    lines.append("marginal CPU per event, microseconds (each size's run of least CPU time): " + "; ".join(
        "%s %s" % (kind, ", ".join("%s %.1f" % (name, us) for name, us in
                                   results["paths"][kind]["cpu_us_per_event"].items() if us or name == "total"))
        for kind in ("baseline", "stream", "replay")))
    if "replay_target_cpu_us_per_event" in results:
        lines.append("20x the baseline's rate leaves %.1f microseconds of CPU per event with all %d CPUs busy"
                     % (results["replay_target_cpu_us_per_event"], results["machine"]["cpus"]))
    if "replay_1m" in results:
        lines.append("replay of 1M events: %.1f s, peak RSS %.0f MB"
                     % (results["replay_1m"]["seconds"], results["replay_1m"]["peak_rss_mb"]))
    for kind, shares in results.get("profile_N", {}).items():
        lines.append("profile of %s at N (share of self time): %s" % (kind, ", ".join(
            "%s %.0f%%" % (name, 100 * share) for name, share in shares.items() if share >= 0.01)))
    if "eventhubs_catchup" in results:
        e = results["eventhubs_catchup"]
        lines.append("Event Hubs catch-up (bundled endpoint, %d partitions): %d events in %.1f s, %d ev/s "
                     "(start-up included)" % (e["partitions"], e["events"], e["pipeline_seconds"],
                                              e["pipeline_events_per_second"]))
    if flink:
        lines += [""] + format_flink(flink)
    lines += ["", "targets (issue 21; `python -m bench.targets` prints them again from results.json):"]
    lines += format_targets(results)
    machine = results["machine"]
    lines.append("machine: %s, Python %s, %d CPUs" % (machine["platform"], machine["python"], machine["cpus"])
                 + "".join("; load average (1, 5, 15 min) %s: %s" % (when, ", ".join("%.2f" % v for v in load))
                           for when, load in (("before", machine.get("load_average_before")),
                                              ("after", machine.get("load_average_after"))) if load))
    return "\n".join(lines)


def format_flink(flink):
    """The Flink lines under the table: per command, the rate at each parallelism, the scaling
    from the lowest to the highest, start-up, SDK worker processes and output equality; then where
    the CPU went by process."""
    ps = flink["parallelisms"]
    keys = ["p%d" % p for p in ps]
    scaling = flink.get("scaling")
    head = "| Flink (embedded) | " + " | ".join("%s ev/s" % k for k in keys)
    if scaling:
        head += " | p%d/p%d (target >= %.1f), medians" % (scaling["to"], scaling["from"], scaling["target"])
    head += " | start-up s (%s) | SDK worker processes started, at once (%s) | outputs = DirectRunner |" % (
        ", ".join(keys), ", ".join(keys))
    lines = [head, "| --- |" + " ---: |" * (len(keys) + (1 if scaling else 0) + 2) + " --- |"]
    for kind in KINDS:
        by_p = flink["paths"][kind]
        cells = ["%d" % by_p[k]["marginal_events_per_second"] for k in keys]
        if scaling:
            cells.append("%sx, %sx" % (scaling["ratio"][kind], scaling["median_ratio"][kind]))
        cells.append(", ".join("%.1f" % by_p[k]["startup_seconds"] for k in keys))
        cells.append(", ".join("%d/%d" % (by_p[k]["sdk_workers_started"], by_p[k]["sdk_workers_at_once"])
                               for k in keys))
        equal = flink["equal_to_direct"].get(kind)
        cells.append(", ".join("%s %s" % (k, "yes" if equal[k] else "**no**") for k in keys) if equal else "-")
        lines.append("| %s | %s |" % (kind, " | ".join(cells)))
    lines.append("")
    lines.append("Flink start-up is the tiny run's wall time (the job server's JVM, the worker pool and "
                 "its SDK workers, the job's submission); marginal rates leave it out. Peak RSS and CPU "
                 "are sampled over the whole process tree (JVM and SDK workers included).")
    for kind in KINDS:
        for k in keys:
            r = flink["paths"][kind][k]
            lines.append("Flink %s %s: marginal CPU per event, microseconds, by process: %s; SDK workers' "
                         "CPU s at 4N, each: %s" % (
                             k, kind, ", ".join("%s %.1f" % (name, us)
                                                for name, us in r["cpu_us_per_event_by_role"].items()),
                             ", ".join("%.1f" % cpu for cpu in r["sdk_worker_cpu_seconds_4N"]) or "-"))
    for kind, by_p in flink.get("differing_files", {}).items():
        for k, names in by_p.items():
            if names:
                lines.append("Flink %s %s wrote other outputs than the DirectRunner: %s" % (
                    k, kind, ", ".join(names)))
    return lines


if __name__ == "__main__":
    sys.exit(main())
