"""Checks a job config as the pipelines do and prints the plan, secrets masked.

    python -m pipelines.validate --config FILE [--json]

Exit status 0 when the config is valid, 2 with one line naming the problem otherwise. Validation is
the one the pipelines do before any data moves: every key known, every value valid, and every alert
destination one the job would connect to (its host is resolved here; see
``core.config.check_destinations``). ``--help`` lists the options (docs/COMMANDS.md).
"""
# Ctrl-C is handled from here on (core/interrupt.py).
from cdp_activation.core.interrupt import exit_on_interrupt, exit_process
if __name__ == "__main__":
    exit_on_interrupt()

import json  # noqa: E402
import sys  # noqa: E402
from typing import List, Optional, TextIO  # noqa: E402

from cdp_activation.core.computed import usage as computed_usage  # noqa: E402
from cdp_activation.core.config import ConfigError, JobConfig, check_destinations, load_config  # noqa: E402
from cdp_activation.core.redact import Redactor, collect_secrets, mask_secrets  # noqa: E402
from cdp_activation.core.workflows import WORKFLOWS  # noqa: E402
from pipelines.cli import CommandParser, run_command  # noqa: E402


def _duration(micros):
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if micros % (size * 1_000_000) == 0:
            return "%d%s" % (micros // (size * 1_000_000), unit)
    return "%dus" % micros


def plan(job: JobConfig) -> dict:
    """The job as ``--json`` prints it: the account, the input checks, each audience with what it
    reads, and each work with its destination (each workflow's fields from its
    ``core.workflows.Workflow.plan``) and its config, secrets masked."""
    audiences = []
    for a in job.audiences.audiences:
        specs, traits = job.audiences.inputs_of(a.index)
        computed = job.audiences.computed
        read = sorted(computed.traits[k].name for k in job.audiences.computed_inputs_of(a.index))
        windows = sorted({_duration(job.audiences.specs[i].within) if job.audiences.specs[i].within
                          else "all time" for i in specs})
        events = sorted({job.audiences.specs[i].event for i in specs})
        audiences.append({"id": a.id, "slug": a.slug, "name": a.name, "events": events,
                          "windows": windows, "traits": sorted(t for t in traits if "." not in t),
                          "computed": read,
                          "depends_on": [job.audiences.audiences[d].slug for d in a.depends_on]})
    works = []
    for w in job.works:
        entry = {"id": w.id, "workflow": w.workflow, "paused": w.paused}
        if w.label:
            entry["label"] = w.label
        if w.description:
            entry["description"] = w.description
        entry.update(WORKFLOWS[w.workflow].plan(job, w))
        entry["config"] = mask_secrets(w.config)
        works.append(entry)
    return {"account": {"name": job.account_name, "aid": job.aid},
            "input": {"max_ts_skew": _duration(job.max_ts_skew)},
            "identity": {"stitch": job.identity.stitch},
            "computed_traits": computed_usage(job.audiences, job.works),
            "audiences": audiences, "works": works}


def print_plan(p: dict, out: TextIO) -> None:
    out.write("account %s (aid %s)\n" % (p["account"]["name"], p["account"]["aid"]))
    if p["identity"]["stitch"]:
        out.write("identity: stitching on (an identify merges its anonymous id into its user; "
                  "the earliest claim wins)\n")
    if p["computed_traits"]:
        out.write("computed traits:\n")
        for c in p["computed_traits"]:
            out.write("  %-24s %s; read by %s; sent by %s\n" % (
                c["name"], c["computes"], ", ".join(c["read_by"]) or "-",
                ", ".join(c["sent_by"]) or "-"))
    out.write("audiences:\n")
    for a in p["audiences"]:
        out.write("  %-24s events %s, windows %s, traits %s%s%s\n" % (
            a["slug"], ", ".join(a["events"]) or "-", ", ".join(a["windows"]) or "-",
            ", ".join(a["traits"]) or "-",
            (", computed " + ", ".join(a["computed"])) if a["computed"] else "",
            (", uses " + ", ".join(a["depends_on"])) if a["depends_on"] else ""))
    out.write("works:\n")
    for w in p["works"]:
        out.write("  %-20s %-26s -> %s%s\n" % (w["id"], w["workflow"], w["destination"],
                                               " (paused)" if w["paused"] else ""))


def parser() -> CommandParser:
    p = CommandParser(
        "python -m pipelines.validate",
        "Checks a job config as the pipelines do, before any data moves (every key known, every\n"
        "value valid, every alert destination one the job would connect to), and prints the plan\n"
        "with secrets masked. Exit status 0 when valid, 2 with one line naming the problem.",
        ("python -m pipelines.validate --config examples/config.yaml",
         "python -m pipelines.validate --config job.yaml --json > plan.json"))
    p.add_argument("--config", required=True, metavar="FILE",
                   help="The job config to check, YAML or JSON, e.g. --config examples/config.yaml")
    p.add_argument("--json", action="store_true",
                   help="Print the plan as JSON instead of text, e.g. --json")
    return p


def run(argv: Optional[List[str]] = None) -> int:
    return run_command(lambda: parser().parse(argv), _validate)


def _validate(args):
    try:
        job = load_config(args.config)
        redact = Redactor(collect_secrets(job.raw))
        for warning in check_destinations(job):
            sys.stderr.write("warning: %s\n" % redact(warning))
    except ConfigError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    result = plan(job)
    if args.json:
        sys.stdout.write(redact(json.dumps(result, indent=2)) + "\n")
    else:
        import io
        buffer = io.StringIO()
        print_plan(result, buffer)
        sys.stdout.write(redact(buffer.getvalue()))
        sys.stdout.write("config is valid\n")
    return 0


if __name__ == "__main__":
    exit_process(run())
