"""Why did this user enter or exit? A user's timeline with the reasons for each transition.

    python -m pipelines.explain --config FILE --input GLOB --user KEY [--anonymous]

Prints each of the user's events and each audience transition, and for each transition the
condition as a tree (``and``, ``or``, ``not`` and the leaves), each node with its value, the counts,
trait and computed values behind it, and a ``*`` on the nodes whose value changed at that moment:
the cause of the transition; then the job's computed traits at that moment (``computed:``), when it
has any. Transitions and trees come from the engine the pipelines run, traced
(``core.engine.Evaluation``): nothing here evaluates a condition. Runs in plain Python on the local files
(no Beam). A key with no events but found as the other kind of id gets a hint (``--anonymous``).
With ``identity: {stitch: true}`` it follows merges: a known user's timeline shows at each merge
the anonymous id that merged in and what its history brought, from the same traced engine over
``core.identity``'s merge (``advance_with_merges``); an anonymous id's shows its exit at the merge
with the user it merged into.
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
from typing import List, Optional, Sequence, TextIO, Tuple  # noqa: E402

from cdp_activation.core.conditions import ANY_EVENT, NodeTrace  # noqa: E402
from cdp_activation.core.config import ConfigError, JobConfig, load_config  # noqa: E402
from cdp_activation.core.engine import Engine, Evaluation  # noqa: E402
from cdp_activation.core.identity import (Merge, advance_with_merges, close_anonymous, link_of,  # noqa: E402
                           merges_won, split_at)
from cdp_activation.core.records import (DEFAULT_MAX_TS_SKEW_US, InputError, ProfileEvent,  # noqa: E402
                          dedupe_batch, parse_record, time_bounds_error)
from cdp_activation.core.timeutil import MAX_TIME, format_time  # noqa: E402
from pipelines.cli import CommandParser, run_command  # noqa: E402


def _read_user_events(pattern, key, max_ts_skew=DEFAULT_MAX_TS_SKEW_US):
    """The events whose ``user_id`` or ``anonymous_id`` is ``key`` (a string, or a set of keys),
    by the user they belong to: ``{(key field, user key): [events]}`` (an event with both ids
    belongs to its user_id). Records the pipelines dead-letter (out of time bounds, see
    ``input.max_ts_skew``) are left out."""
    keys = {key} if isinstance(key, str) else set(key)
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
                if not any(k in line for k in keys):
                    continue  # cheap pre-filter: a key must appear in the record's text
                try:
                    record = parse_record(line)
                except InputError:
                    continue
                if time_bounds_error(record, max_ts_skew) is not None:
                    continue  # dead-lettered by the pipelines, so not applied
                if isinstance(record, ProfileEvent) and (record.user_id in keys
                                                         or record.anonymous_id in keys):
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
        self.values = {}  # (time, audience index) -> the condition's value there

    def __call__(self, evaluation: Evaluation) -> None:
        before = self._last.get(evaluation.audience)
        if before is None:
            before = self.engine.trace(self.engine.new_state(), evaluation.audience)
        if evaluation.transition is not None:
            self.at[(evaluation.time, evaluation.audience)] = (evaluation.tree, before)
        self.values[(evaluation.time, evaluation.audience)] = evaluation.value
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
    trace = TransitionTrace()
    engine = trace.engine = Engine(job.audiences, job.backfill_starts, observer=trace)
    if job.identity.stitch:
        if args.anonymous:
            claims = [e for evs in found.values() for e in evs if e.anonymous_id == args.user]
            claim = link_of(claims, args.user)
            if claim is not None:
                _explain_merged_anonymous(job, trace, events, claim, sys.stdout)
                return 0
        else:
            _explain_known_user(job, trace, args, found, sys.stdout)
            return 0
    changes, _ = engine.advance(engine.new_state(), events, MAX_TIME)
    write_timeline(sys.stdout, job, trace, events, changes)
    return 0


def write_timeline(out: TextIO, job: JobConfig, trace: TransitionTrace,
                   events: List[ProfileEvent], changes: list,
                   notes: Sequence[Tuple[int, List[str]]] = (), marked: bool = False) -> None:
    """The timeline: ``events`` (deduplicated, in order), ``notes`` (``(time, lines)``, before
    the events of their time) and each change with its trees from ``trace``; a change that is a
    merge exit (``core.identity.MergeExit``) names the user. ``marked``: an event carrying an
    ``anonymous_id`` shows it."""
    kept = sorted(dedupe_batch(events, key=lambda e: e.event_id), key=lambda e: (e.ts, e.event_id))
    first_ts = kept[0].ts if kept else None
    audiences = job.audiences.audiences
    timeline = ([(t, 0, lines) for t, lines in notes] + [(e.ts, 1, e) for e in kept]
                + [(c.time, 2, c) for c in changes])
    for t, kind, item in sorted(timeline, key=lambda x: (x[0], x[1])):
        if kind == 0:
            for line in item:
                out.write(line + "\n")
            continue
        if kind == 1:
            out.write("%s  event %s\n" % (format_time(t), event_text(item, marked)))
            continue
        merged_into = getattr(item, "merged_into", None)
        for audience_index, what, entered in item.changes:
            audience = audiences[audience_index]
            label = "BACKFILL" if item.backfill else what.upper()
            out.write("%s  %-5s %s\n" % (format_time(t), label, audience.slug))
            if item.backfill or merged_into is not None:
                out.write("      member since %s\n" % format_time(entered))
                if merged_into is not None:
                    out.write("      merged into user_id %s: every membership ends here\n"
                              % merged_into)
                continue
            lines = tree_lines(*trace.at[(t, audience_index)], audiences)
            for line in lines:
                out.write("      %s\n" % line)
            if item.computed is not None:
                out.write("      computed: %s\n" % computed_line(item.computed, job))
            if t == first_ts and not lines[0].startswith("*"):
                out.write("      (the user's first event: before it a user is in no audience)\n")
    out.write("(* = changed at this moment: the cause of the transition)\n")


def event_text(event: ProfileEvent, marked: bool = False) -> str:
    """An event's name, properties and traits as a timeline line shows them (and its
    ``anonymous_id`` when ``marked``)."""
    text = "%-14s" % event.event
    if marked and event.anonymous_id:
        text += " anonymous_id=%s" % event.anonymous_id
    if event.properties:
        text += " properties=%s" % json.dumps(event.properties, sort_keys=True)
    if event.traits:
        text += " traits=%s" % json.dumps(event.traits, sort_keys=True)
    return text


def _explain_merged_anonymous(job, trace, events, claim, out):
    """An anonymous profile merged into a user: its events before the merge, its transitions,
    and its exit at the merge with the user it merged into (``core.identity.close_anonymous``)."""
    engine = trace.engine
    before, after = split_at(events, claim.ts)
    changes, _, exit_change, _ = close_anonymous(engine, engine.new_state(), events, claim.ts,
                                                 claim.user_id)
    if exit_change is not None:
        changes.append(exit_change)
    note = ["%s  MERGED into user_id %s (identify %s)" % (format_time(claim.ts), claim.user_id,
                                                         claim.event_id)]
    if after:
        note.append("      its %d later event(s) are %s's: explain them with --user %s"
                    % (len(after), claim.user_id, claim.user_id))
    write_timeline(out, job, trace, before, changes, [(claim.ts, note)])


def _explain_known_user(job, trace, args, found, out):
    """A known user with the anonymous ids it won (``core.identity.merges_won``): at each merge,
    the anonymous id, its events, what it held (memberships, computed values, traits) and every
    audience's result at the merge point; the user's evaluation is the engine's
    (``core.identity.advance_with_merges``), traced."""
    user = args.user
    mine = [e for (f, k), evs in found.items() if f == "user_id" and k == user for e in evs]
    claimed = {e.anonymous_id for e in mine if e.anonymous_id}
    theirs = []
    if claimed:
        others = _read_user_events(args.input, claimed, job.max_ts_skew)
        theirs = [e for evs in others.values() for e in evs
                  if e.anonymous_id in claimed and e.user_id != user]
    own, won = merges_won(mine + theirs, user)
    engine = trace.engine
    anon_engine = Engine(job.audiences, job.backfill_starts, observer=_ignore)
    merges, forwarded, notes = [], [], []
    for m in won:
        state = anon_engine.new_state()
        _, _, exit_change, after = close_anonymous(anon_engine, state, m.events, m.claim.ts, user)
        merges.append(Merge(m.claim.ts, m.claim.anonymous_id, state, m.identify))
        forwarded += after
        notes.append((m, state, exit_change, [e for e in m.events if e.ts < m.claim.ts]))
    changes, _ = advance_with_merges(engine, engine.new_state(), own + forwarded, merges, MAX_TIME)
    lines = [(m.claim.ts, _merge_note(job, trace, m, state, exit_change, before, anon_engine))
             for m, state, exit_change, before in notes]
    write_timeline(out, job, trace, own + forwarded + [m.identify for m in won], changes, lines,
                   marked=True)


def _ignore(_evaluation):
    pass


def _merge_note(job, trace, merge, state, exit_change, before, anon_engine):
    """The lines at a merge point: which anonymous id merged in and what its history brought."""
    at = merge.claim.ts
    audiences = job.audiences.audiences
    kept = sorted(dedupe_batch(before, key=lambda e: e.event_id), key=lambda e: (e.ts, e.event_id))
    lines = ["%s  MERGE anonymous_id %s (identify %s): %d event(s) of it before the merge count "
             "from here" % (format_time(at), merge.claim.anonymous_id, merge.claim.event_id,
                            len(kept))]
    for e in kept:
        lines.append("      %s  event %s" % (format_time(e.ts), event_text(e)))
    held = [] if exit_change is None else exit_change.changes
    lines.append("      it was a member of: %s" % (", ".join(
        "%s (since %s)" % (audiences[a].slug, format_time(entered)) for a, _, entered in held)
        or "nothing"))
    if state.traits:
        lines.append("      its traits: %s" % json.dumps(state.traits, sort_keys=True))
    values = anon_engine.computed_values(state)
    if values is not None:
        lines.append("      its computed: %s" % computed_line(values, job))
    lines.append("      at the merge point: %s" % ", ".join(
        "%s=%s" % (a.slug, "true" if trace.values.get((at, i)) else "false")
        for i, a in enumerate(audiences)))
    return lines


if __name__ == "__main__":
    exit_process(run())
