"""Why did this user enter or exit? A user's timeline with the reasons for each transition.

    python -m pipelines.explain --config FILE --input GLOB --user KEY [--anonymous]

Prints each of the user's events and each audience transition (from the same engine the pipelines
run), and for each transition the parts of the condition whose value changed at that moment, with
the counts and trait values behind them. Runs in plain Python on the local files (no Beam).
"""
import argparse
import glob
import json
import sys

from core.conditions import _lookup, _make_predicate, compile_where
from core.config import ConfigError, load_config
from core.engine import Engine
from core.records import InputError, ProfileEvent, dedupe_batch, parse_record
from core.timeutil import MAX_TIME, format_time, parse_duration


def _read_user_events(pattern, key, field):
    events = []
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError("input %s: no file matches" % pattern)
    for path in paths:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                if key not in line:
                    continue  # cheap pre-filter: the key must appear in the record's text
                try:
                    record = parse_record(line)
                except InputError:
                    continue
                if isinstance(record, ProfileEvent) and record.key == key and record.key_field == field:
                    events.append(record)
    return events


class Explainer:
    """Evaluates a condition tree node by node at a time T over one user's (deduplicated) events."""

    def __init__(self, job, events):
        self.job = job
        self.events = sorted(events, key=lambda e: (e.ts, e.event_id))

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

    def leaves(self, node, t, path):
        """[(path, description, value)] for every leaf of the tree at time t."""
        if "and" in node or "or" in node:
            kind = "and" if "and" in node else "or"
            out = []
            for i, child in enumerate(node[kind]):
                out += self.leaves(child, t, "%s.%s[%d]" % (path, kind, i))
            return out
        if "not" in node:
            return self.leaves(node["not"], t, path + ".not")
        if "trait" in node:
            value = _lookup(self.traits_at(t), node["trait"])
            holds = _make_predicate(node["op"], node.get("value"), path)(value)
            return [(path, "trait %s %s %s (is %s)" % (node["trait"], node["op"],
                                                        json.dumps(node.get("value")), json.dumps(value)), holds)]
        if "event" in node:
            within = parse_duration(node["within"]) if node.get("within") else None
            where = compile_where(node["where"], path) if node.get("where") else None
            count = sum(1 for e in self.events if e.event == node["event"] and e.ts <= t
                        and (within is None or t < e.ts + within) and (where is None or where(e.properties)))
            lo, hi = node.get("min_count", 1), node.get("max_count")
            holds = count >= lo and (hi is None or count <= hi)
            window = "in the last %s" % node["within"] if within else "ever"
            bounds = ">= %d" % lo if hi is None else "in [%d, %d]" % (lo, hi)
            return [(path, "%s %s%s: %d, needs %s" % (node["event"], window, " (where ...)" if where else "",
                                                      count, bounds), holds)]
        audience = self.job.audiences.by_ref(node["audience"])
        return [(path, "member of %s" % audience.slug, None)]


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--input", required=True, help="JSON Lines file or glob")
    parser.add_argument("--user", required=True, help="the user key (user_id, or anonymous_id with --anonymous)")
    parser.add_argument("--anonymous", action="store_true", help="the key is an anonymous_id")
    args = parser.parse_args(argv)
    try:
        job = load_config(args.config)
        events = _read_user_events(args.input, args.user, "anonymous_id" if args.anonymous else "user_id")
    except (ConfigError, FileNotFoundError) as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    if not events:
        sys.stderr.write("error: no events of user %s in %s\n" % (args.user, args.input))
        return 2
    engine = Engine(job.audiences, job.backfill_starts)
    changes, _ = engine.advance(engine.new_state(), events, MAX_TIME)
    kept = dedupe_batch(events, key=lambda e: e.event_id)
    explainer = Explainer(job, kept)
    raw = {a.get("slug") or a.get("id"): a["condition"] for a in job.raw.get("audiences", [])}
    timeline = [(e.ts, 0, e) for e in explainer.events] + [(c.time, 1, c) for c in changes]
    out = sys.stdout
    previous = {}
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
            leaves = explainer.leaves(raw[audience.slug], t, "condition")
            before = previous.get(audience.slug, {})
            for path, description, value in leaves:
                changed = path in before and before[path] != value
                mark = "*" if changed else " "
                shown = "" if value is None else ("true " if value else "false")
                out.write("      %s %s %s\n" % (mark, shown, description))
            previous[audience.slug] = {p: v for p, _, v in leaves}
    out.write("(* = changed since this audience's previous transition)\n")
    return 0


if __name__ == "__main__":
    sys.exit(run())
