"""Audience evaluation with identity stitching (``identity: {stitch: true}``; docs/decisions/0004).

``StitchAndEvaluate`` replaces the evaluating transform when the config turns stitching on. It
takes the same ``((key_field, key), group)`` elements and gives the same outputs (``changes``,
``export``) as ``transforms.audiences``, in two keyed stages around the pure ``core.identity``:

1. **By anonymous id** (``GroupByAnonymousId``): the anonymous-only events and the identifies of
   each anonymous id. The earliest claim wins; the anonymous profile is evaluated up to the merge
   (its memberships exit at the merge time in one change carrying ``merged_into``), and it sends
   the known user a merge element (its engine state and the winning identify) and its events dated
   from the merge on. Losing identifies go to their own users as ordinary events; those of another
   user are counted (``identity:conflicting_claims``).
2. **By user id** (``GroupByUser``): each known user's events, forwarded events and merges, in one
   call of ``core.identity.advance_with_merges``.

Records with a ``user_id`` and no ``anonymous_id`` skip stage 1. Conflicting claims also go to
``deadletter`` (``DIR/deadletter/identity.jsonl``). Both commands run this graph (a
bounded run evaluates each profile once, up to its as-of time), so they give the same results.
Not built: the incremental form for timers that fire as the watermark moves (``--streaming``,
unbounded input) and ``--state``; ``pipelines.launch`` refuses them with stitching on.
Metrics: those of ``transforms.audiences``, and ``identity:merges``,
``identity:conflicting_claims``, ``identity:forwarded_events``.
"""
import json
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints.decorators import no_annotations

from cdp_activation.core.blocks import unpack_rows
from cdp_activation.core.engine import Stats
from cdp_activation.core.identity import Claim, Merge, advance_with_merges, close_anonymous, identify_order
from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.timeutil import MAX_TIME, format_time
from cdp_activation.transforms.audiences import CHANGES, EXPORT, EngineMetrics, EvaluatingTransform
from cdp_activation.transforms.read import TS_INDEX, events_from_wire, to_wire

_USER_ID = ProfileEvent._fields.index("user_id")
_ANONYMOUS_ID = ProfileEvent._fields.index("anonymous_id")
EVENTS, MERGE = "e", "m"
ANONYMOUS, DEADLETTER = "anonymous", "deadletter"
#: Element types of the keyed steps: by anonymous id, and by ``(key field, key)``.
BY_ANONYMOUS_ID = typing.Tuple[str, typing.Any]
BY_USER = typing.Tuple[typing.Tuple[str, str], typing.Any]
#: Where ``pipelines.wiring`` writes the conflicting claims, under ``--output_dir``.
DEADLETTER_PATH = ("deadletter", "identity.jsonl")


def same_element(element: typing.Any) -> typing.Any:
    return element


@no_annotations
def route(element: typing.Tuple[typing.Tuple[str, str], typing.Any]) -> typing.Iterator[typing.Any]:
    """A user's group split: records with an ``anonymous_id`` (anonymous-only events and
    identifies) to that anonymous id (tagged ``anonymous``), the others to the user, as events."""
    key, group = element
    known, anonymous = [], {}
    for row in unpack_rows(group):
        if row[_ANONYMOUS_ID]:
            anonymous.setdefault(row[_ANONYMOUS_ID], []).append(tuple(row))
        else:
            known.append(tuple(row))
    if known:
        yield key, (EVENTS, known)
    for anon, rows in anonymous.items():
        yield beam.pvalue.TaggedOutput(ANONYMOUS, (anon, rows))


def conflict_dead_letter(winner: Claim, row: tuple) -> dict:
    """The dead letter of an identify whose claim lost to ``winner`` (another user's)."""
    event = ProfileEvent._make(row)
    raw = {"event_id": event.event_id, "event": event.event, "ts": format_time(event.ts),
           "user_id": event.user_id, "anonymous_id": event.anonymous_id}
    return {"raw": json.dumps(raw, sort_keys=True, ensure_ascii=False),
            "error": "anonymous_id %r already merged into %r at %s" % (
                winner.anonymous_id, winner.user_id, format_time(winner.ts)),
            "source": "identity"}


class _Evaluates(beam.DoFn):
    def __init__(self, spec):
        self._spec = spec

    def setup(self):
        self._engine = self._spec.build()
        self._metrics = EngineMetrics(self._engine)
        self._merges = Metrics.counter("identity", "merges")
        self._conflicts = Metrics.counter("identity", "conflicting_claims")
        self._forwarded = Metrics.counter("identity", "forwarded_events")

    def _until(self, as_of, rows):
        """The evaluation's end and the rows dated up to it (the others are counted pending)."""
        as_of = as_of if as_of is not None else self._spec.as_of
        if as_of is None:
            return MAX_TIME, rows
        kept = [r for r in rows if r[TS_INDEX] <= as_of]
        self._metrics.record_pending(0, len(rows) - len(kept))
        return as_of, kept

    def _emit(self, key, changes, rows, stats):
        self._metrics.record(stats, changes)
        if changes:
            yield key, to_wire(changes)
        if rows:
            yield beam.pvalue.TaggedOutput(EXPORT, [(tuple(r.event), r.attributes) for r in rows])


class _AnonymousFn(_Evaluates):
    """Stage 1: ``(anonymous id, [row lists])`` to the anonymous profile's changes and export
    rows, and what the known user receives, on ``to_user``."""

    def process(self, element, as_of=None):
        anon, groups = element
        until, rows = self._until(as_of, [r for rows in groups for r in rows])
        identifies = [r for r in rows if r[_USER_ID]]
        history = [r for r in rows if not r[_USER_ID]]
        key = ("anonymous_id", anon)
        engine, stats = self._engine, Stats()
        state = engine.new_state()
        winner = min(identifies, key=lambda r: identify_order(ProfileEvent._make(r)), default=None)
        if winner is None:
            changes, exported = engine.advance(state, events_from_wire(history), until, stats)
            yield from self._emit(key, changes, exported, stats)
            return
        user = winner[_USER_ID]
        claim = Claim(winner[TS_INDEX], winner[1], user, anon)
        changes, exported, exit_change, after = close_anonymous(
            engine, state, events_from_wire(history), claim.ts, user, stats)
        if exit_change is not None:
            changes.append(exit_change)
        yield from self._emit(key, changes, exported, stats)
        self._merges.inc()
        user_key = ("user_id", user)
        yield beam.pvalue.TaggedOutput("to_user", (user_key, (
            MERGE, (claim.ts, anon, engine.dump_state(state), tuple(winner)))))
        if after:
            self._forwarded.inc(len(after))
            yield beam.pvalue.TaggedOutput("to_user", (user_key, (EVENTS,
                                                                  [tuple(e) for e in after])))
        conflicts = set()
        for row in identifies:
            if row is winner:
                continue
            if row[_USER_ID] != user and (row[_USER_ID], row[1]) not in conflicts:
                conflicts.add((row[_USER_ID], row[1]))
                yield beam.pvalue.TaggedOutput(DEADLETTER, conflict_dead_letter(claim, row))
            yield beam.pvalue.TaggedOutput("to_user", (("user_id", row[_USER_ID]),
                                                       (EVENTS, [row])))
        if conflicts:
            self._conflicts.inc(len(conflicts))


class _KnownFn(_Evaluates):
    """Stage 2: ``(user, [tagged items])`` to the user's changes and export rows."""

    def process(self, element, as_of=None):
        key, items = element
        engine = self._engine
        rows, merges = [], []
        for kind, body in items:
            if kind == EVENTS:
                rows.extend(body)
            else:
                at, anon, state_bytes, identify = body
                merges.append(Merge(at, anon, engine.load_state(state_bytes),
                                    ProfileEvent._make(identify)))
        until, rows = self._until(as_of, rows)
        stats = Stats()
        changes, exported = advance_with_merges(engine, engine.new_state(),
                                                events_from_wire(rows), merges, until, stats)
        yield from self._emit(key, changes, exported, stats)


class _Evaluated(typing.NamedTuple):
    changes: beam.PCollection
    export: beam.PCollection
    deadletter: beam.PCollection   # conflicting claims (``conflict_dead_letter``)


class StitchAndEvaluate(EvaluatingTransform):
    """``(key, group)`` elements to changes and export rows with identity stitching.

    ``as_of``: as for ``transforms.audiences.EvaluateAudiencesStateful`` (set by
    ``pipelines.wiring.build_graph`` when the as-of time comes from the data).
    """

    @no_annotations
    def expand(self, groups: beam.PCollection[typing.Tuple[typing.Tuple[str, str], typing.Any]]
               ) -> "_Evaluated":
        side = () if self.as_of is None else (beam.pvalue.AsSingleton(self.as_of),)
        # Typed keys: a GroupByKey on an untyped key gets the pickled coder, which Prism does
        # not know; and each Flatten has one coder for its inputs and output (see
        # transforms.localsink.WriteJsonLinesFile).
        routed = (groups
                  | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                  | "RouteIdentities" >> beam.FlatMap(route).with_outputs(ANONYMOUS,
                                                                            main="known"))
        anonymous = (routed[ANONYMOUS]
                     | "TypedAnonymous" >> beam.Map(same_element).with_output_types(BY_ANONYMOUS_ID)
                     | "GroupByAnonymousId" >> beam.GroupByKey()
                     | "EvaluateAnonymous" >> beam.ParDo(_AnonymousFn(self._spec), *side)
                     .with_outputs(EXPORT, "to_user", DEADLETTER, main=CHANGES))
        known = ((routed.known | "TypedKnown" >> beam.Map(same_element).with_output_types(BY_USER),
                  anonymous.to_user | "TypedForwarded" >> beam.Map(same_element).with_output_types(
                      BY_USER))
                 | "WithForwarded" >> beam.Flatten()
                 | "GroupByUser" >> beam.GroupByKey()
                 | "EvaluateKnown" >> beam.ParDo(_KnownFn(self._spec), *side)
                 .with_outputs(EXPORT, main=CHANGES))
        changes = ((anonymous[CHANGES]
                    | "TypedAnonymousChanges" >> beam.Map(same_element).with_output_types(BY_USER),
                    known[CHANGES]
                    | "TypedKnownChanges" >> beam.Map(same_element).with_output_types(BY_USER))
                   | "AllChanges" >> beam.Flatten())
        export = ((anonymous[EXPORT], known[EXPORT])
                  | "AllExportRows" >> beam.Flatten())
        return _Evaluated(changes, export, anonymous[DEADLETTER])

