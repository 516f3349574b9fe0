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
When timers fire as the watermark moves (``--streaming``, unbounded input) ``pipelines.launch``
takes the incremental form instead (``transforms.identity_stream``).
With ``--state`` each profile's saved state comes in as one of its groups and goes to its stage;
an anonymous profile merged into a user keeps the link (``core.identity.Link``: ``merged_into``,
``merged_at`` in its saved state), so a later run forwards its events to that user and takes any
new claim of it as losing to the saved one. Every profile's final state goes out on ``state``.
Metrics: those of ``transforms.audiences``, and ``identity:merges``,
``identity:conflicting_claims``, ``identity:forwarded_events``.
"""
import json
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import DoOutputsTuple
from apache_beam.typehints.decorators import no_annotations

from cdp_activation.core.blocks import pack_rows, unpack_rows
from cdp_activation.core.engine import Stats
from cdp_activation.core.history import RESTORED
from cdp_activation.core.identity import (Claim, Merge, advance_with_merges, dump_profile, evaluate_anonymous,
                           load_profile)
from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.timeutil import MAX_TIME, format_time
from cdp_activation.transforms.audiences import CHANGES, EXPORT, STATE, EngineMetrics, EvaluatingTransform
from cdp_activation.transforms.read import TS_INDEX, events_from_wire, to_wire

_USER_ID = ProfileEvent._fields.index("user_id")
_ANONYMOUS_ID = ProfileEvent._fields.index("anonymous_id")
EVENTS, MERGE, SAVED = "e", "m", "s"
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
    identifies) to that anonymous id (tagged ``anonymous``), the others to the user, as events. A
    saved state (``--state``) goes to its profile's stage: an anonymous profile's to stage 1."""
    key, group = element
    if isinstance(group, bytes) and group[:1] == RESTORED:
        saved = (SAVED, bytes(group[1:]))
        if key[0] == "anonymous_id":
            yield beam.pvalue.TaggedOutput(ANONYMOUS, (key[1], saved))
        else:
            yield key, saved
        return
    known, anonymous = [], {}
    for row in unpack_rows(group):
        if row[_ANONYMOUS_ID]:
            anonymous.setdefault(row[_ANONYMOUS_ID], []).append(tuple(row))
        else:
            known.append(tuple(row))
    if known:
        yield key, (EVENTS, known)
    for anon, rows in anonymous.items():
        yield beam.pvalue.TaggedOutput(ANONYMOUS, (anon, (EVENTS, rows)))


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
        """The evaluation's end, the rows dated up to it and those after it (waiting: counted
        pending, and saved with ``--state``)."""
        as_of = as_of if as_of is not None else self._spec.as_of
        if as_of is None:
            return MAX_TIME, rows, []
        kept = [r for r in rows if r[TS_INDEX] <= as_of]
        waiting = [r for r in rows if r[TS_INDEX] > as_of]
        self._metrics.record_pending(0, len(waiting))
        return as_of, kept, waiting

    def _emit(self, key, changes, rows, stats):
        self._metrics.record(stats, changes)
        if changes:
            yield key, to_wire(changes)
        if rows:
            yield beam.pvalue.TaggedOutput(EXPORT, [(tuple(r.event), r.attributes) for r in rows])

    def _save(self, key, until, state, waiting, link=None):
        """The profile's saved state on ``state`` (``--state``), its wake-up counted pending."""
        if link is None and until != MAX_TIME and self._engine.next_wake(state) is not None:
            self._metrics.record_pending(1, 0)
        if self._spec.keep_state:
            yield beam.pvalue.TaggedOutput(STATE, (key, (
                dump_profile(self._engine, state, link),
                pack_rows([tuple(r) for r in waiting]) if waiting else None)))


def _items(items):
    """A grouped profile's tagged items: its rows, its merges and its saved state (or None)."""
    rows, merges, saved = [], [], None
    for kind, body in items:
        if kind == EVENTS:
            rows.extend(body)
        elif kind == MERGE:
            merges.append(body)
        else:
            saved = body
    return rows, merges, saved


class _AnonymousFn(_Evaluates):
    """Stage 1: ``(anonymous id, [tagged items])`` to the anonymous profile's changes and export
    rows, and what the known user receives, on ``to_user`` (``core.identity.evaluate_anonymous``)."""

    def process(self, element, as_of=None):
        anon, items = element
        rows, _, saved = _items(items)
        until, rows, waiting = self._until(as_of, rows)
        engine, stats = self._engine, Stats()
        state, link = load_profile(engine, saved) if saved is not None else (None, None)
        identifies = [ProfileEvent._make(r) for r in rows if r[_USER_ID]]
        history = events_from_wire([r for r in rows if not r[_USER_ID]])
        out = evaluate_anonymous(engine, anon, state, link, history, identifies, until, stats)
        key = ("anonymous_id", anon)
        yield from self._emit(key, out.changes, out.rows, stats)
        yield from self._save(key, until, out.state, waiting, out.link)
        if out.link is None:
            return
        user_key = ("user_id", out.link.merged_into)
        if out.merge is not None:
            self._merges.inc()
            yield beam.pvalue.TaggedOutput("to_user", (user_key, (MERGE, (
                out.merge.at, anon, engine.dump_state(out.merge.state),
                tuple(out.merge.identify)))))
        if out.forwarded:
            self._forwarded.inc(len(out.forwarded))
            yield beam.pvalue.TaggedOutput("to_user", (user_key, (EVENTS, [
                tuple(e) for e in out.forwarded])))
        winner = Claim(out.link.merged_at, "", out.link.merged_into, anon)
        conflicts = {(c.user_id, c.event_id) for c in out.conflicts}
        for event in out.others:
            if (event.user_id, event.event_id) in conflicts:
                conflicts.discard((event.user_id, event.event_id))
                yield beam.pvalue.TaggedOutput(DEADLETTER,
                                               conflict_dead_letter(winner, tuple(event)))
            yield beam.pvalue.TaggedOutput("to_user", (("user_id", event.user_id),
                                                       (EVENTS, [tuple(event)])))
        if out.conflicts:
            self._conflicts.inc(len(out.conflicts))


class _KnownFn(_Evaluates):
    """Stage 2: ``(user, [tagged items])`` to the user's changes and export rows, from its saved
    state with ``--state``."""

    def process(self, element, as_of=None):
        key, items = element
        engine = self._engine
        rows, merge_items, saved = _items(items)
        merges = [Merge(at, anon, engine.load_state(state_bytes), ProfileEvent._make(identify))
                  for at, anon, state_bytes, identify in merge_items]
        until, rows, waiting = self._until(as_of, rows)
        stats = Stats()
        state = engine.load_state(saved) if saved is not None else engine.new_state()
        changes, exported = advance_with_merges(engine, state, events_from_wire(rows), merges,
                                                until, stats)
        yield from self._emit(key, changes, exported, stats)
        yield from self._save(key, until, state, waiting)


class _Evaluated(typing.NamedTuple):
    changes: beam.PCollection
    export: beam.PCollection
    deadletter: beam.PCollection   # conflicting claims (``conflict_dead_letter``)
    state: beam.PCollection        # ``(profile, (state bytes, packed waiting or None))``


def changes_and_export_rows(anonymous: DoOutputsTuple, known: DoOutputsTuple
                            ) -> typing.Tuple[beam.PCollection, beam.PCollection]:
    """The two stages' changes and export rows, each as one PCollection (the batch form's and the
    incremental form's common tail): changes keyed alike, so the Flatten has one coder."""
    changes = ((anonymous[CHANGES]
                | "TypedAnonymousChanges" >> beam.Map(same_element).with_output_types(BY_USER),
                known[CHANGES]
                | "TypedKnownChanges" >> beam.Map(same_element).with_output_types(BY_USER))
               | "AllChanges" >> beam.Flatten())
    export = ((anonymous[EXPORT], known[EXPORT])
              | "AllExportRows" >> beam.Flatten())
    return changes, export


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
                     .with_outputs(EXPORT, STATE, "to_user", DEADLETTER, main=CHANGES))
        known = ((routed.known | "TypedKnown" >> beam.Map(same_element).with_output_types(BY_USER),
                  anonymous.to_user | "TypedForwarded" >> beam.Map(same_element).with_output_types(
                      BY_USER))
                 | "WithForwarded" >> beam.Flatten()
                 | "GroupByUser" >> beam.GroupByKey()
                 | "EvaluateKnown" >> beam.ParDo(_KnownFn(self._spec), *side)
                 .with_outputs(EXPORT, STATE, main=CHANGES))
        changes, export = changes_and_export_rows(anonymous, known)
        state = ((anonymous[STATE], known[STATE])
                 | "AllSavedStates" >> beam.Flatten())
        return _Evaluated(changes, export, anonymous[DEADLETTER], state)

