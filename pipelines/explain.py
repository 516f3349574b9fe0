"""Why did this user enter or exit? A user's timeline with the reasons for each transition.

    python -m pipelines.explain --config FILE --input GLOB --user KEY [--anonymous]

Prints each of the user's events and each audience transition (from the same engine the pipelines
run), and for each transition the condition as a tree (``and``, ``or``, ``not`` and the leaves),
each node with its value, the counts and trait values behind it, and a ``*`` on the nodes whose
value changed at that moment: the cause of the transition. Runs in plain Python on the local files
(no Beam). A key with no events but found as the other kind of id gets a hint (``--anonymous``).
``--help`` lists the options (docs/COMMANDS.md).
"""
# Ctrl-C is handled from here on (core/interrupt.py).
from core.interrupt import exit_on_interrupt, exit_process
if __name__ == "__main__":
    exit_on_interrupt()

import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from core.conditions import ANY_EVENT, _lookup, _make_predicate, compile_where  # noqa: E402
from core.config import ConfigError, load_config  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.records import (DEFAULT_MAX_TS_SKEW_US, InputError, ProfileEvent,  # noqa: E402
                          dedupe_batch, parse_record, time_bounds_error)
from core.timeutil import MAX_TIME, format_time, parse_duration  # noqa: E402
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


class Explainer:
    """Evaluates a condition tree node by node at a time T over one user's (deduplicated) events.

    ``memberships``: per audience index, the engine's enter and exit times for this user, which give
    ``{audience: ...}`` nodes their value.
    """

    def __init__(self, job, events, memberships=None):
        self.job = job
        self.events = sorted(events, key=lambda e: (e.ts, e.event_id))
        self.memberships = memberships or {}

    def traits_at(self, t):
        traits = {}
        for e in self.events:
            if e.ts > t:
                break
            for k, v in (e.traits or {}).items():
                if v is None:
                    traits.pop(k, None)
                else:
                    traits[k] = v
        return traits

    def member_at(self, index, t):
        inside = False
        for time, what in self.memberships.get(index, ()):
            if time > t:
                break
            inside = what == "enter"
        return inside

    def evaluate(self, node, t):
        """(value, description, children) of ``node`` at time t; children are the same triples."""
        if "and" in node or "or" in node:
            kind = "and" if "and" in node else "or"
            children = [self.evaluate(c, t) for c in node[kind]]
            values = [c[0] for c in children]
            return (all(values) if kind == "and" else any(values)), kind, children
        if "not" in node:
            child = self.evaluate(node["not"], t)
            return not child[0], "not", [child]
        if "trait" in node:
            value = _lookup(self.traits_at(t), node["trait"])
            holds = _make_predicate(node["op"], node.get("value"), "condition")(value)
            return holds, "trait %s %s %s (is %s)" % (
                node["trait"], node["op"], json.dumps(node.get("value")), json.dumps(value)), []
        if "event" in node:
            within = parse_duration(node["within"]) if node.get("within") else None
            where = compile_where(node["where"], "condition") if node.get("where") else None
            count = sum(1 for e in self.events
                        if (node["event"] == ANY_EVENT or e.event == node["event"]) and e.ts <= t
                        and (within is None or t < e.ts + within)
                        and (where is None or where(e.properties)))
            lo, hi = node.get("min_count", 1), node.get("max_count")
            return count >= lo and (hi is None or count <= hi), _describe_event(node, count), []
        audience = self.job.audiences.by_ref(node["audience"])
        return self.member_at(audience.index, t), "member of %s" % audience.slug, []

    def lines(self, node, t):
        """The tree at t, one line per node: ``*`` marks a node whose value differs from just
        before t (the cause of a transition at t), then its value, then what it is."""
        out = []

        def walk(now, before, depth):
            value, description, children = now
            mark = "*" if value != before[0] else " "
            out.append("%s %s %s%s" % (mark, "true " if value else "false", "  " * depth,
                                       description))
            for child_now, child_before in zip(children, before[2]):
                walk(child_now, child_before, depth + 1)

        walk(self.evaluate(node, t), self.evaluate(node, t - 1), 0)
        return out


def parser():
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


def run(argv=None):
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
    engine = Engine(job.audiences, job.backfill_starts)
    changes, _ = engine.advance(engine.new_state(), events, MAX_TIME)
    kept = dedupe_batch(events, key=lambda e: e.event_id)
    memberships = {}
    for change in changes:
        if not change.backfill:
            for audience_index, what, _ in change.changes:
                memberships.setdefault(audience_index, []).append((change.time, what))
    explainer = Explainer(job, kept, memberships)
    first_ts = explainer.events[0].ts
    raw = {a.get("slug") or a.get("id"): a["condition"] for a in job.raw.get("audiences", [])}
    timeline = [(e.ts, 0, e) for e in explainer.events] + [(c.time, 1, c) for c in changes]
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
            audience = job.audiences.audiences[audience_index]
            label = "BACKFILL" if item.backfill else what.upper()
            out.write("%s  %-5s %s\n" % (format_time(t), label, audience.slug))
            if item.backfill:
                out.write("      member since %s\n" % format_time(entered))
                continue
            lines = explainer.lines(raw[audience.slug], t)
            for line in lines:
                out.write("      %s\n" % line)
            if t == first_ts and not lines[0].startswith("*"):
                out.write("      (the user's first event: before it a user is in no audience)\n")
    out.write("(* = changed at this moment: the cause of the transition)\n")
    return 0


if __name__ == "__main__":
    exit_process(run())
