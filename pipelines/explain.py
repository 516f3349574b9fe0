"""Why did this user enter or exit? A user's timeline with the reasons for each transition.

    python -m pipelines.explain --config FILE --input GLOB --user KEY [--anonymous]

Prints each of the user's events and each audience transition, and for each transition the
condition as a tree (``and``, ``or``, ``not`` and the leaves), each node with its value, the counts,
trait and computed values behind it, and a ``*`` on the nodes whose value changed at that moment:
the cause of the transition; then the job's computed traits at that moment (``computed:``), when it
has any. Transitions and trees come from the engine the pipelines run, traced
(``core.engine.Evaluation``): nothing here evaluates a condition. Runs in plain Python on the local files
(no Beam). A key with no events but found as the other kind of id gets a hint (``--anonymous``).
``--help`` lists the options (docs/COMMANDS.md).
"""
# Ctrl-C is handled from here on (core/interrupt.py).
from cdp_activation.core.interrupt import exit_on_interrupt, exit_process
if __name__ == "__main__":
    exit_on_interrupt()

import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import List, Optional  # noqa: E402

from cdp_activation.core.conditions import ANY_EVENT, NodeTrace  # noqa: E402
from cdp_activation.core.config import ConfigError, JobConfig, load_config  # noqa: E402
from cdp_activation.core.engine import Engine, Evaluation  # noqa: E402
from cdp_activation.core.records import (DEFAULT_MAX_TS_SKEW_US, InputError, ProfileEvent,  # noqa: E402
                          dedupe_batch, parse_record, time_bounds_error)
from cdp_activation.core.timeutil import MAX_TIME, format_time  # noqa: E402
from pipelines.cli import CommandParser, run_command  # noqa: E402


def _read_user_events(pattern, key, max_ts_skew=DEFAULT_MAX_TS_SKEW_US):
    """The events whose ``user_id`` or ``anonymous_id`` is ``key``, by the user they belong to:
    ``{(key field, user key): [events]}`` (an event with both ids belongs to its user_id).
    Records the pipelines dead-letter (out of time bounds, see ``input.max_ts_skew``) are left out."""
    found = {}
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError("input %s: no file matches" % pattern)
    for path in paths:
        if os.path.isdir(path):
            raise FileNotFoundError("input %s: is a directory; give a file or a glob, e.g. %s"
                                    % (pattern, os.path.join(path, "*.jsonl")))
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                if key not in line:
                    continue  # cheap pre-filter: the key must appear in the record's text
                try:
                    record = parse_record(line)
                except InputError:
                    continue
                if time_bounds_error(record, max_ts_skew) is not None:
                    continue  # dead-lettered by the pipelines, so not applied
                if isinstance(record, ProfileEvent) and key in (record.user_id, record.anonymous_id):
                    found.setdefault((record.key_field, record.key), []).append(record)
    return found


def _no_events_message(key, field, found, pattern):
    """One line for a key with no events, with the option that finds them when there is one."""
    message = "no events of %s %s in %s" % (field, key, pattern)
    if ("anonymous_id", key) in found and field == "user_id":
        return message + "; %s is an anonymous_id there: add --anonymous" % key
    if ("user_id", key) in found and field == "anonymous_id":
        return message + "; %s is a user_id there: drop --anonymous" % key
    owners = sorted(k for f, k in found if f == "user_id" and k != key)
    if owners:
        # The user key is user_id when a record has one, so these events are that user's.
        return message + "; events with anonymous_id %s belong to user_id %s: use --user %s" % (
            key, ", ".join(owners), owners[0])
    return message


def _describe_event(node, count):
    within = node.get("within")
    lo, hi = node.get("min_count", 1), node.get("max_count")
    name = "any event" if node["event"] == ANY_EVENT else node["event"]
    window = "in the last %s" % within if within else "ever"
    bounds = ">= %d" % lo if hi is None else "in [%d, %d]" % (lo, hi)
    return "%s %s%s: %d, needs %s" % (name, window, " (where ...)" if node.get("where") else "",
                                      count, bounds)


def _describe(node_trace, audiences):
    """What one node of a condition is, with the trait value or count behind it."""
    kind, node, detail = node_trace.kind, node_trace.node, node_trace.detail
    if kind in ("and", "or", "not"):
        return kind
    if kind == "trait":
        return "trait %s %s %s (is %s)" % (node["trait"], node["op"], json.dumps(node.get("value")),
                                          json.dumps(detail))
    if kind == "event":
        return _describe_event(node, detail)
    if kind == "computed":
        return "computed %s %s %s (is %s)" % (node["computed"], node["op"],
                                              json.dumps(node.get("value")), json.dumps(detail))
    return "member of %s" % audiences[detail].slug


class TransitionTrace:
    """The engine's observer (``core.engine.Evaluation``) that keeps, for each transition, the
    condition as the engine evaluated it at that point and as it stood just before.

    Just before a point, a condition's nodes have the values of the audience's previous
    evaluation: the engine re-evaluates an audience at every point where one of its nodes can
    change, so none changes between two evaluations. Before the first one, they are the values
    over a fresh state (no events yet).
    """

    def __init__(self) -> None:
        self.engine = None
        self._last = {}
        self.at = {}  # (time, audience index) -> (tree at the point, tree just before)

    def __call__(self, evaluation: Evaluation) -> None:
        before = self._last.get(evaluation.audience)
        if before is None:
            before = self.engine.trace(self.engine.new_state(), evaluation.audience)
        if evaluation.transition is not None:
            self.at[(evaluation.time, evaluation.audience)] = (evaluation.tree, before)
        self._last[evaluation.audience] = evaluation.tree


def tree_lines(now: NodeTrace, before: NodeTrace, audiences: list) -> List[str]:
    """The condition tree, one line per node: ``*`` marks a node whose value differs from just
    before (the cause of a transition), then its value, then what it is."""
    out = []

    def walk(now, before, depth):
        mark = "*" if now.value != before.value else " "
        out.append("%s %s %s%s" % (mark, "true " if now.value else "false", "  " * depth,
                                   _describe(now, audiences)))
        for child_now, child_before in zip(now.children, before.children):
            walk(child_now, child_before, depth + 1)

    walk(now, before, 0)
    return out


def computed_line(values: dict, job: JobConfig) -> str:
    """The job's computed traits at a transition, in config order: ``name=value`` (JSON), an
    absent value shown as ``absent``."""
    return ", ".join("%s=%s" % (name, json.dumps(values[name]) if name in values else "absent")
                     for name in job.audiences.computed.names)


def parser() -> CommandParser:
    p = CommandParser(
        "python -m pipelines.explain",
        "Why did this user enter or exit? Prints the user's events and audience transitions (from\n"
        "the engine the pipelines run), each with its condition as a tree and a * on the nodes\n"
        "that caused it. Plain Python over local files, no Beam.",
        ("python -m pipelines.explain --config examples/config.yaml --input examples/events.jsonl "
         "--user cust-00042",
         "python -m pipelines.explain --config examples/config.yaml --input 'archive/*.jsonl' "
         "--user anon-7f3a --anonymous"))
    p.add_argument("--config", required=True, metavar="FILE",
                   help="The job config whose audiences are explained, e.g. --config "
                        "examples/config.yaml")
    p.add_argument("--input", required=True, metavar="GLOB",
                   help="JSON Lines file or glob holding the user's events, e.g. --input "
                        "'archive/2026-11-*.jsonl'")
    p.add_argument("--user", required=True, metavar="KEY",
                   help="The user key: a user_id, or an anonymous_id with --anonymous, e.g. "
                        "--user cust-00042")
    p.add_argument("--anonymous", action="store_true",
                   help="--user is an anonymous_id, not a user_id, e.g. --anonymous")
    return p


def run(argv: Optional[List[str]] = None) -> int:
    return run_command(lambda: parser().parse(argv), _explain)


def _explain(args):
    try:
        job = load_config(args.config)
        field = "anonymous_id" if args.anonymous else "user_id"
        found = _read_user_events(args.input, args.user, job.max_ts_skew)
    except (ConfigError, FileNotFoundError) as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    events = found.get((field, args.user))
    if not events:
        sys.stderr.write("error: %s\n" % _no_events_message(args.user, field, found, args.input))
        return 2
    if job.identity.stitch:
        sys.stderr.write("note: identity.stitch is on; explain shows this profile's own events "
                         "only (merged anonymous histories are not followed yet)\n")
    trace = TransitionTrace()
    engine = trace.engine = Engine(job.audiences, job.backfill_starts, observer=trace)
    changes, _ = engine.advance(engine.new_state(), events, MAX_TIME)
    kept = sorted(dedupe_batch(events, key=lambda e: e.event_id), key=lambda e: (e.ts, e.event_id))
    first_ts = kept[0].ts
    audiences = job.audiences.audiences
    timeline = [(e.ts, 0, e) for e in kept] + [(c.time, 1, c) for c in changes]
    out = sys.stdout
    for t, kind, item in sorted(timeline, key=lambda x: (x[0], x[1])):
        if kind == 0:
            extra = ""
            if item.properties:
                extra += " properties=%s" % json.dumps(item.properties, sort_keys=True)
            if item.traits:
                extra += " traits=%s" % json.dumps(item.traits, sort_keys=True)
            out.write("%s  event %-14s%s\n" % (format_time(t), item.event, extra))
            continue
        for audience_index, what, entered in item.changes:
            audience = audiences[audience_index]
            label = "BACKFILL" if item.backfill else what.upper()
            out.write("%s  %-5s %s\n" % (format_time(t), label, audience.slug))
            if item.backfill:
                out.write("      member since %s\n" % format_time(entered))
                continue
            lines = tree_lines(*trace.at[(t, audience_index)], audiences)
            for line in lines:
                out.write("      %s\n" % line)
            if item.computed is not None:
                out.write("      computed: %s\n" % computed_line(item.computed, job))
            if t == first_ts and not lines[0].startswith("*"):
                out.write("      (the user's first event: before it a user is in no audience)\n")
    out.write("(* = changed at this moment: the cause of the transition)\n")
    return 0


if __name__ == "__main__":
    exit_process(run())
