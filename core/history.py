"""Whole-history evaluation of a batch of users: the replay's evaluate step.

:func:`evaluate_histories` is what ``transforms.audiences`` runs per user: the same engine over
each user's whole history, with the results in plain values (changes packed by
:func:`pack_changes`, export rows packed by ``core.blocks.pack_rows``) and the metrics summed over
the batch.
"""
from __future__ import annotations

import marshal
import pickle
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from cdp_activation.core.blocks import pack_rows, unpack_rows
from cdp_activation.core.computed import ComputedSet
from cdp_activation.core.conditions import AudienceSet
from cdp_activation.core.engine import Engine, ExportRow, Stats, UserChange, UserState
from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.timeutil import MAX_TIME

if TYPE_CHECKING:
    from cdp_activation.core.config import JobConfig


#: Marks a user's saved state among its groups: the tag, then ``core.state`` document bytes.
RESTORED = b"r"
#: What :func:`evaluate_histories` gives per user: packed changes, packed export rows and the saved
#: ``(state bytes, packed waiting events or None)``, each None when there is none.
UserResult = tuple[bytes | None, bytes | None, tuple[bytes, bytes | None] | None]


class EngineSpec:
    """What a worker needs to rebuild the engine: no secrets, only audiences and export needs;
    and what a bounded run evaluates: up to ``as_of`` (None: no bound, every wake-up is taken),
    keeping each user's final state when ``keep_state`` (``--state``)."""

    def __init__(self, audience_defs: list[Any], backfill_starts: Iterable[int] = (),
                 export_attributes: Iterable[str] | None = None, as_of: int | None = None,
                 keep_state: bool = False, computed_defs: dict[str, Any] | None = None,
                 export_computed: Iterable[str] | None = None,
                 change_computed: bool = False) -> None:
        # audience_defs: the config's raw ``audiences`` list, validated by AudienceSet;
        # computed_defs: its raw ``computed_traits`` (core.computed), export_computed the names
        # the events exports need, change_computed whether messages copy computed values
        self.audience_defs = audience_defs
        self.backfill_starts = list(backfill_starts)
        self.export_attributes = export_attributes
        self.as_of = as_of
        self.keep_state = keep_state
        self.computed_defs = computed_defs
        self.export_computed = None if export_computed is None else list(export_computed)
        self.change_computed = change_computed

    def for_run(self, as_of: int | None, keep_state: bool | None = None) -> EngineSpec:
        """A copy bounded by ``as_of`` (and keeping state if ``keep_state``, unchanged if None)."""
        return EngineSpec(self.audience_defs, self.backfill_starts, self.export_attributes, as_of,
                          self.keep_state if keep_state is None else keep_state,
                          self.computed_defs, self.export_computed, self.change_computed)

    @classmethod
    def from_job(cls, job: JobConfig, raw_audiences: list[Any]) -> EngineSpec:
        return cls(raw_audiences, job.backfill_starts, job.export_attributes,
                   computed_defs=job.raw.get("computed_traits"),
                   export_computed=job.export_computed, change_computed=job.change_computed)

    def build(self) -> Engine:
        computed = ComputedSet(self.computed_defs) if self.computed_defs else None
        return Engine(AudienceSet(self.audience_defs, computed=computed), self.backfill_starts,
                      self.export_attributes, export_computed=self.export_computed,
                      change_computed=self.change_computed)


class BatchTotals:
    """What a batch adds to the metrics: engine stats, enters/exits per audience index, and, in a
    bounded run, the users with a wake-up after the as-of time and the events dated after it."""
    __slots__ = ("events", "duplicates", "late", "enters", "exits", "pending_wakeups",
                 "pending_events")

    def __init__(self, events: int, duplicates: int, late: int, enters: list[int], exits: list[int],
                 pending_wakeups: int = 0, pending_events: int = 0) -> None:
        self.events, self.duplicates, self.late = events, duplicates, late
        self.enters, self.exits = enters, exits
        self.pending_wakeups, self.pending_events = pending_wakeups, pending_events

    def __reduce__(self):
        return BatchTotals, (self.events, self.duplicates, self.late, self.enters, self.exits,
                             self.pending_wakeups, self.pending_events)


def count_transitions(changes: Iterable[UserChange], enters: list[int], exits: list[int]) -> None:
    """Adds ``changes``' enters and exits (backfill snapshots aside) to the per-audience counts."""
    for change in changes:
        if not change.backfill:
            for audience_index, kind, _ in change.changes:
                (enters if kind == "enter" else exits)[audience_index] += 1


#: The engines a process has built, by their spec's pickle (a worker sees one or two).
_engines: dict[bytes, Engine] = {}


def pack_changes(changes: Iterable[UserChange]) -> bytes:
    """A user's changes (``UserChange``) as one bytes value of their plain tuples.

    The wire form of a batch evaluation's changes: the evaluating step only passes them on (to
    the step that builds messages, say), and a bytes value crosses Beam's coders by being copied, where tuples, lists and trait dicts are encoded one object at a time.
    ``marshal`` covers what a change holds (numbers, strings, JSON values) and is read back by
    the same Python, within one pipeline.
    """
    return marshal.dumps([tuple(c) for c in changes], 4)


def unpack_changes(wire: bytes | Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
    """A user's changes as plain tuples, from :func:`pack_changes` bytes or a list of tuples (the
    stateful evaluation's wire form)."""
    return marshal.loads(wire) if isinstance(wire, bytes) else wire


def _engine_for(spec):
    key = pickle.dumps((spec.audience_defs, spec.backfill_starts, spec.export_attributes,
                        spec.computed_defs, spec.export_computed, spec.change_computed),
                       protocol=5)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = spec.build()
    return engine


def evaluate_histories(spec: EngineSpec, users: Iterable[tuple[Any, Iterable[bytes]]],
                       engine: Engine | None = None) -> tuple[list[UserResult], BatchTotals]:
    """``users``: ``[(key, [groups])]``, a group being packed event tuples (``pack_rows``) or a
    saved state (:data:`RESTORED` and ``core.state`` bytes, from a ``--state`` snapshot). Returns
    ``([(packed changes or None, packed export rows or None, saved or None)], BatchTotals)``, a
    triple per user in order; ``saved`` (with ``spec.keep_state``) is :func:`evaluate_user`'s.
    """
    engine = engine if engine is not None else _engine_for(spec)
    n_audiences = len(engine.audiences.audiences)
    enters, exits = [0] * n_audiences, [0] * n_audiences
    stats = Stats()
    totals = [0, 0]  # pending wake-ups, pending events
    results = []
    for _, groups in users:
        changes, rows, saved = evaluate_user(engine, groups, spec.as_of, spec.keep_state, stats,
                                             totals)
        count_transitions(changes, enters, exits)
        results.append((pack_changes(changes) if changes else None,
                        pack_rows([(tuple(r.event), r.attributes) for r in rows]) if rows else None,
                        saved))
    return results, BatchTotals(stats.events, stats.duplicates, stats.late, enters, exits, *totals)


def evaluate_user(engine: Engine, groups: Iterable[bytes], as_of: int | None, keep_state: bool,
                  stats: Stats, totals: list[int]
                  ) -> tuple[list[UserChange], list[ExportRow], tuple[bytes, bytes | None] | None]:
    """One user's groups (see :func:`evaluate_histories`) evaluated from its saved state, if any,
    up to ``as_of`` (None: no bound). Returns ``(changes, export rows, saved)``; ``saved`` is
    ``(state bytes, packed waiting events or None)`` when ``keep_state``, else None."""
    state, changes, exported, waiting = advance_user(engine, groups, as_of, stats, totals)
    saved = None
    if keep_state:
        saved = (engine.dump_state(state), pack_rows(waiting) if waiting else None)
    return changes, exported, saved


def advance_user(engine: Engine, groups: Iterable[bytes], as_of: int | None, stats: Stats,
                 totals: list[int], state: UserState | None = None
                 ) -> tuple[UserState, list[UserChange], list[ExportRow], list[tuple[Any, ...]]]:
    """Applies a user's groups to its saved state among them (else ``state``, else a new one) up
    to ``as_of`` (None: no bound). Returns ``(state, changes, export rows, waiting rows)``.

    Events dated after ``as_of`` are not applied: they are returned as waiting, for the run whose
    as-of reaches them. ``totals`` (a list) gets 1 added at [0] if the user's next wake-up lies
    after ``as_of``, and the number of waiting events at [1].
    """
    rows = []
    for group in groups:
        if group[:1] == RESTORED:
            state = engine.load_state(bytes(group[1:]))
        else:
            rows.extend(unpack_rows(group))
    if state is None:
        state = engine.new_state()
    waiting = []
    if as_of is not None:
        waiting = [r for r in rows if r[_TS] > as_of]
        if waiting:
            rows = [r for r in rows if r[_TS] <= as_of]
            totals[1] += len(waiting)
    make_event = ProfileEvent._make
    changes, exported = engine.advance(state, [make_event(r) for r in rows],
                                       MAX_TIME if as_of is None else as_of, stats)
    if as_of is not None and engine.next_wake(state) is not None:
        totals[0] += 1
    return state, changes, exported, waiting


_TS = ProfileEvent._fields.index("ts")
