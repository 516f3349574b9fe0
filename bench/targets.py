"""Issue 21's targets, checked against one ``bench.run`` result, with the shortfall explained.

``python -m bench.run`` prints these lines under its table: for each target, what it asks, what the
run measured and whether it is met; for each target that is missed, what the run's own figures say
about why (the CPU each event costs against what the target leaves per event, and where that CPU
goes: the profile's largest shares, or for Flink the CPU by process). A target the run did not
measure (``--skip-1m``, no ``--flink``) is listed as not measured, never as met.

    python -m bench.targets [bench/results.json]   # the same lines from a saved result
"""
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

#: Marginal rate over the naive baseline's, both on the DirectRunner, in the same run.
REPLAY_SPEEDUP = 10.0
STREAM_SPEEDUP = 3.0
#: Peak RSS of the 1M-event replay (all processes), MB.
MILLION_PEAK_RSS_MB = 2048
#: Median saved state per user, bytes.
STATE_MEDIAN_BYTES = 1024
#: t(4N) / t(N), after start-up.
LINEARITY = 4.5
#: Each command's rate at Flink parallelism 2 over its rate at parallelism 1.
FLINK_SCALING = 1.7


@dataclass(frozen=True)
class Target:
    """One target: ``met`` is None when the run did not measure it."""
    name: str
    wanted: str
    measured: str
    met: Optional[bool]
    why: str = ""


def _at_least(value: Optional[float], bound: float) -> Optional[bool]:
    return None if value is None else value >= bound


def _at_most(value: Optional[float], bound: float) -> Optional[bool]:
    return None if value is None else value <= bound


def _cpu_budget_us(results: Dict[str, Any], speedup: float) -> Optional[float]:
    """CPU microseconds per event left at ``speedup`` times the baseline's marginal rate with every
    CPU busy all the time."""
    base = results["paths"]["baseline"]["marginal_events_per_second"]
    cpus = results.get("machine", {}).get("cpus") or 1
    return 1e6 * cpus / (speedup * base) if base else None


def _speed_why(results: Dict[str, Any], kind: str, speedup: float) -> str:
    """Why ``kind`` misses ``speedup`` x the baseline, from the run's own CPU figures."""
    paths = results["paths"]
    parts = []
    job_us = paths[kind].get("cpu_us_per_event", {}).get("total")
    base_us = paths["baseline"].get("cpu_us_per_event", {}).get("total")
    budget = _cpu_budget_us(results, speedup)
    if job_us is not None and base_us is not None and budget is not None:
        parts.append("%s costs %.1f us of CPU per event (the baseline %.1f us, and it does far less); "
                     "%.0fx the baseline's rate leaves %.1f us per event with all %d CPUs busy"
                     % (kind, job_us, base_us, speedup, budget, results.get("machine", {}).get("cpus") or 1))
    parse_rate = paths.get("core", {}).get("parse_events_per_second")
    if parse_rate and budget is not None:
        parts.append("parsing a record alone costs %.1f us" % (1e6 / parse_rate))
    shares = results.get("profile_N", {}).get(kind)
    if shares:
        top = sorted(shares.items(), key=lambda item: -item[1])[:5]
        parts.append("profile at N: " + ", ".join("%s %.0f%%" % (name, 100 * share) for name, share in top))
    return "; ".join(parts)


def _flink_why(flink: Dict[str, Any], kind: str, low: str, high: str) -> str:
    """Where a Flink command's CPU went at both parallelisms, by process."""
    parts = []
    for key in (low, high):
        roles = flink["paths"][kind][key].get("cpu_us_per_event_by_role", {})
        if roles:
            parts.append("%s CPU per event by process: %s" % (key, ", ".join(
                "%s %.1f us" % (name, us) for name, us in roles.items())))
    return "; ".join(parts)


def check_targets(results: Dict[str, Any]) -> List[Target]:
    """Every target of issue 21 against ``results`` (``bench.run``'s ``results.json``)."""
    paths = results["paths"]
    targets = []
    for kind, speedup in (("replay", REPLAY_SPEEDUP), ("stream", STREAM_SPEEDUP)):
        ratio = paths[kind].get("ratio_to_baseline")
        met = _at_least(ratio, speedup)
        targets.append(Target(
            "%s speed" % kind, ">= %gx the baseline (DirectRunner)" % speedup,
            "-" if ratio is None else "%.2fx" % ratio, met,
            _speed_why(results, kind, speedup) if met is False else ""))
    million = results.get("replay_1m")
    rss = million["peak_rss_mb"] if million else None
    targets.append(Target("1M events", "peak RSS <= %d MB" % MILLION_PEAK_RSS_MB,
                          "not measured (--skip-1m)" if rss is None else "%.0f MB in %.1f s"
                          % (rss, million["seconds"]), _at_most(rss, MILLION_PEAK_RSS_MB)))
    median = paths.get("core", {}).get("state_bytes_median")
    targets.append(Target("state per user", "median <= %d B" % STATE_MEDIAN_BYTES,
                          "-" if median is None else "%d B" % median, _at_most(median, STATE_MEDIAN_BYTES)))
    for kind in ("stream", "replay"):
        linearity = paths[kind].get("linearity")
        met = _at_most(linearity, LINEARITY)
        cpu = paths[kind].get("cpu_linearity")
        why = ("in CPU time t(4N)/t(N) is %.2f (wall time on a shared host includes other work)" % cpu
               if met is False and cpu is not None else "")
        targets.append(Target("%s linearity" % kind, "t(4N) <= %.1f t(N)" % LINEARITY,
                              "-" if linearity is None else "%.2f" % linearity, met, why))
    flink = results.get("flink")
    scaling = (flink or {}).get("scaling")
    for kind in ("stream", "replay"):
        if not scaling or scaling.get("from") != 1 or scaling.get("to") != 2:
            targets.append(Target("Flink %s p2/p1" % kind, ">= %.1fx" % FLINK_SCALING,
                                  "not measured (--flink --flink-parallelism 1,2)", None))
            continue
        ratio = scaling["ratio"][kind]
        met = _at_least(ratio, FLINK_SCALING)
        targets.append(Target("Flink %s p2/p1" % kind, ">= %.1fx" % FLINK_SCALING, "%.2fx" % ratio, met,
                              _flink_why(flink, kind, "p1", "p2") if met is False else ""))
    return targets


def format_targets(results: Dict[str, Any]) -> List[str]:
    """The targets as a Markdown table, then one line per missed target saying why."""
    targets = check_targets(results)
    verdict = {True: "met", False: "**not met**", None: "not measured"}
    lines = ["| target | wanted | measured | |", "| --- | --- | --- | --- |"]
    lines += ["| %s | %s | %s | %s |" % (t.name, t.wanted, t.measured, verdict[t.met]) for t in targets]
    missed = [t for t in targets if t.met is False]
    if missed:
        lines.append("")
        lines += ["why %s misses its target: %s" % (t.name, t.why or "no figures in this run to say why")
                  for t in missed]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
    with open(path, encoding="utf-8") as fh:
        print("\n".join(format_targets(json.load(fh))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
