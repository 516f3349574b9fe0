"""Whole-history evaluation of a batch of users: the replay's evaluate step, in any process.

:func:`evaluate_histories` is what ``transforms.audiences`` runs per user in the pipeline's process,
or hands to worker processes (``transforms._worker_processes``) a batch at a time: the same engine
over each user's whole history, with the results in plain values (changes packed by
:func:`pack_changes`, export rows packed by ``core.blocks.pack_rows``) and the metrics summed over
the batch.
"""
import marshal
import pickle

from core.blocks import pack_rows, unpack_rows
from core.conditions import AudienceSet
from core.engine import Engine, Stats
from core.records import ProfileEvent
from core.timeutil import MAX_TIME


class EngineSpec:
    """What a worker needs to rebuild the engine: no secrets, only audiences and export needs."""

    def __init__(self, audience_defs, backfill_starts=(), export_attributes=None):
        self.audience_defs = audience_defs
        self.backfill_starts = list(backfill_starts)
        self.export_attributes = export_attributes

    @classmethod
    def from_job(cls, job, raw_audiences):
        return cls(raw_audiences, job.backfill_starts, job.export_attributes)

    def build(self):
        return Engine(AudienceSet(self.audience_defs), self.backfill_starts, self.export_attributes)


class BatchTotals:
    """What a batch adds to the metrics: engine stats and enters/exits per audience index."""
    __slots__ = ("events", "duplicates", "late", "enters", "exits")

    def __init__(self, events, duplicates, late, enters, exits):
        self.events, self.duplicates, self.late = events, duplicates, late
        self.enters, self.exits = enters, exits

    def __reduce__(self):
        return BatchTotals, (self.events, self.duplicates, self.late, self.enters, self.exits)


def count_transitions(changes, enters, exits):
    """Adds ``changes``' enters and exits (backfill snapshots aside) to the per-audience counts."""
    for change in changes:
        if not change.backfill:
            for audience_index, kind, _ in change.changes:
                (enters if kind == "enter" else exits)[audience_index] += 1


_engines = {}  # the engines a process has built, by their spec's pickle (a worker sees one or two)


def pack_changes(changes):
    """A user's changes (``UserChange``) as one bytes value of their plain tuples.

    The wire form of a batch evaluation's changes: the pipeline's process only passes them on
    (to a worker that builds messages, say), and a bytes value crosses a pipe and Beam's coders
    by being copied, where tuples, lists and trait dicts are encoded one object at a time.
    ``marshal`` covers what a change holds (numbers, strings, JSON values) and is read back by
    the same Python, within one pipeline.
    """
    return marshal.dumps([tuple(c) for c in changes], 4)


def unpack_changes(wire):
    """A user's changes as plain tuples, from :func:`pack_changes` bytes or a list of tuples (the
    stateful evaluation's wire form)."""
    return marshal.loads(wire) if isinstance(wire, bytes) else wire


def _engine_for(spec):
    key = pickle.dumps((spec.audience_defs, spec.backfill_starts, spec.export_attributes), protocol=5)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = spec.build()
    return engine


def evaluate_histories(spec, users, engine=None):
    """``users``: ``[(key, [packed groups of event tuples])]``. Returns ``([(packed changes or None,
    packed export rows or None)], BatchTotals)``, a pair per user in order."""
    engine = engine if engine is not None else _engine_for(spec)
    n_audiences = len(engine.audiences.audiences)
    enters, exits = [0] * n_audiences, [0] * n_audiences
    stats = Stats()
    make_event = ProfileEvent._make
    results = []
    for _, groups in users:
        events = [make_event(row) for group in groups for row in unpack_rows(group)]
        changes, rows = engine.advance(engine.new_state(), events, MAX_TIME, stats)
        count_transitions(changes, enters, exits)
        results.append((pack_changes(changes) if changes else None,
                        pack_rows([(tuple(r.event), r.attributes) for r in rows]) if rows else None))
    return results, BatchTotals(stats.events, stats.duplicates, stats.late, enters, exits)
