"""The run summary: the counters of a finished run, ``summary.json``, ``report.html`` and the
lines the commands print (docs/OUTPUTS.md)."""
import json
import logging
import sys
from typing import TYPE_CHECKING, Dict, List, Optional, TextIO, Tuple

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from cdp_activation.core.computed import usage as computed_usage
from cdp_activation.core.config import JobConfig
from cdp_activation.core.report import build_report, count_rows, export_files, export_windows
from cdp_activation.core.timeutil import format_time
from cdp_activation.core.workflows import WORKFLOWS
from cdp_activation.transforms import outputs

if TYPE_CHECKING:  # pipelines.wiring builds the graph; the summary only reads its RunState
    from pipelines.wiring import RunState

_LOGGER = logging.getLogger(__name__)


def counter_totals(result: PipelineResult) -> Optional[Dict[Tuple[str, str], int]]:
    """The run's counters summed per (namespace, name); None when the runner reports none."""
    totals = {}
    try:
        counters = result.metrics().query(MetricsFilter())["counters"]
    except Exception as exc:  # some runners do not report metrics; the summary says so
        _LOGGER.warning("metrics unavailable from this runner: %s", exc)
        return None
    for c in counters:
        value = c.committed if c.committed is not None else c.attempted
        key = (c.key.metric.namespace, c.key.metric.name)
        totals[key] = totals.get(key, 0) + (value or 0)
    return totals


def build_summary(job: JobConfig, totals: Optional[Dict[Tuple[str, str], int]], output_dir: str,
                  mode: str, seconds: float) -> dict:
    """The run summary (``summary.json``): the input's and the engine's counters, each audience's
    enters and exits, and each work's delivery counters (``core.workflows.Workflow.summary_counters``)."""
    available = totals is not None
    totals = totals or {}

    def get(namespace, name):
        return totals.get((namespace, name), 0)

    summary = {
        "command": mode,
        "records_read": get("input", "records_read"),
        "deadlettered": get("input", "deadlettered"),
        "outside_time_range": get("input", "outside_time_range"),
        "late": get("audiences", "late"),
        "duplicates": get("audiences", "duplicates"),
        "events_applied": get("audiences", "events_applied"),
        "pending_wakeups": get("audiences", "pending_wakeups"),
        "pending_events": get("audiences", "pending_events"),
        "audiences": {a.slug: {"enters": get("audience:" + a.slug, "enters"),
                               "exits": get("audience:" + a.slug, "exits")}
                      for a in job.audiences.audiences},
        "works": {},
        "computed_traits": computed_usage(job.audiences, job.works),
        "output_dir": output_dir,
        "seconds": round(seconds, 3),
    }
    if job.identity.stitch:
        # The last three count only in the incremental stages (--streaming, a live input); the
        # batch form sees every claim at once and never cancels a link.
        summary["identity"] = {name: get("identity", name) for name in
                               ("merges", "conflicting_claims", "forwarded_events",
                                "cancelled_links", "cancelled_entries", "late_claims")}
    for work in job.works:
        ns = "work:" + work.id
        entry = {"workflow": work.workflow}
        if work.label:
            entry["label"] = work.label
        if work.paused:
            entry["paused"] = True
        for name in WORKFLOWS[work.workflow].summary_counters + ("deadlettered", "failures"):
            entry[name.replace("_delivered", "")] = get(ns, name)
        summary["works"][work.id] = entry
    if not available:
        summary["metrics"] = "unavailable from this runner"
    return summary


def print_summary(summary: dict, stream: Optional[TextIO] = None) -> None:
    """The summary as the commands print it (to stdout by default)."""
    stream = stream or sys.stdout
    w = stream.write
    w("Summary (%s, %.1f s)\n" % (summary["command"], summary["seconds"]))
    w("  records read %d, dead-lettered %d, outside time range %d, late %d, duplicates %d\n"
      % (summary["records_read"], summary["deadlettered"], summary["outside_time_range"],
         summary["late"], summary["duplicates"]))
    if summary.get("as_of") is not None:
        w("  as of %s: pending wake-ups %d, pending events %d\n"
          % (summary["as_of"], summary["pending_wakeups"], summary["pending_events"]))
    if "identity" in summary:
        w("  identity: merges %(merges)d, conflicting claims %(conflicting_claims)d, "
          "forwarded events %(forwarded_events)d\n" % summary["identity"])
    w("  audiences:\n")
    for slug, figures in summary["audiences"].items():
        w("    %-28s enters %6d  exits %6d\n" % (slug, figures["enters"], figures["exits"]))
    w("  works:\n")
    for work_id, entry in summary["works"].items():
        figures = ", ".join("%s %s" % (k, v) for k, v in entry.items() if k not in ("workflow", "label"))
        w("    %-20s %-26s %s\n" % (work_id, entry["workflow"], figures))
    w("  output: %s\n" % summary["output_dir"])


def failed_work_events(output_dir: str, job: JobConfig) -> List[Tuple[str, str]]:
    """``(work id, notes)`` of each ``failed`` event of the job's works in the system-event log."""
    own_ids = {w.id for w in job.works}
    failures = []
    data = outputs.read_file(outputs.join(output_dir, "system_events.jsonl"))
    for line in (data or b"").decode("utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        fields = record.get("data", {})
        if fields.get("verb") == "failed" and fields.get("subject_id") in own_ids:
            failures.append((fields["subject_id"], fields.get("notes", "failed")))
    return failures


def write_summary(output_dir: str, summary: dict) -> str:
    """``DIR/summary.json`` (through Beam's file systems, like every output)."""
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    path = outputs.join(output_dir, "summary.json")
    outputs.write_file(path, (text.encode("utf-8"),), mime_type="application/json")
    return path


def write_report(output_dir: str, summary: dict) -> str:
    """``DIR/report.html`` from the summary, ``DIR/audiences_daily.jsonl`` and the export files
    under ``DIR/blob`` (see :mod:`core.report`)."""
    data = outputs.read_file(outputs.join(output_dir, "audiences_daily.jsonl")) or b""
    daily = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    root = outputs.join(output_dir, "blob")
    listing = [(outputs.relative(path, root), outputs.file_size(path))
               for path in outputs.list_files(root)]
    files = [(rel, size, count_rows(rel, outputs.read_file(outputs.join(root, rel)) or b""))
             for rel, size in export_files(listing)]
    path = outputs.join(output_dir, "report.html")
    page = build_report(summary, daily, dead_letters=_dead_letter_files(output_dir),
                        windows=export_windows(files))
    outputs.write_file(path, (page.encode("utf-8"),), mime_type="text/html")
    return path


def _dead_letter_files(output_dir):
    """``[(name, [records])]`` under ``DIR/deadletter``: ``x.jsonl`` files, and the part
    directories of unbounded runs (``x/part-*.jsonl``, named ``x/``), by name."""
    root = outputs.join(output_dir, "deadletter")
    found = {}
    for path in outputs.list_files(root):
        rel = outputs.relative(path, root)
        if not rel.endswith(".jsonl"):
            continue
        name = rel if "/" not in rel else rel.split("/", 1)[0] + "/"
        data = outputs.read_file(path) or b""
        found.setdefault(name, []).extend(
            json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip())
    return sorted(found.items())


def summary_as_of(result: PipelineResult, run_state: Optional["RunState"]) -> Optional[str]:
    """The run's as-of time for the summary (RFC 3339), None for an unbounded run."""
    if run_state is None:
        return None
    if run_state.as_of is not None:
        return format_time(run_state.as_of)
    try:
        distributions = result.metrics().query(MetricsFilter().with_name("as_of"))["distributions"]
    except Exception:
        return None
    values = [d.committed or d.attempted for d in distributions]
    values = [v.max for v in values if v is not None and v.count]
    return format_time(max(values)) if values else None
