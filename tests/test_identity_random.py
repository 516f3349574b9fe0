"""core.identity.stitch_histories against tests/reference_identity.py on random histories:
identifies, anonymous-then-known users, second claims, events of an anonymous id after its merge,
copies of records, and lines in shuffled order."""
import json
import random

import pytest

from cdp_activation.core.conditions import AudienceSet
from cdp_activation.core.engine import Engine
from cdp_activation.core.identity import MergeExit, stitch_histories
from cdp_activation.core.records import parse_record
from tests import reference as ref
from tests.reference_identity import reference_stitched_outputs, reference_stitched_transitions

MIN = 60 * 1_000_000
BASE = ref.parse_time("2026-11-20T00:00:00Z")
AUDIENCES = [
    {"id": "a1", "slug": "buyers2", "condition": {"event": "purchase", "within": "30m",
                                                   "min_count": 2}},
    {"id": "a2", "slug": "few_views", "condition": {"event": "view", "within": "20m",
                                                     "min_count": 1, "max_count": 2}},
    {"id": "a3", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}},
    {"id": "a4", "slug": "quiet", "condition": {"not": {"event": "*", "within": "45m"}}},
    {"id": "a5", "slug": "big_spender",
     "condition": {"event": "purchase", "where": {"property": "price", "op": "gte", "value": 50}}},
    {"id": "a6", "slug": "gold_buyer",
     "condition": {"and": [{"audience": "gold"}, {"audience": "buyers2"}]}},
    {"id": "a7", "slug": "parisian", "condition": {"trait": "city", "op": "eq", "value": "Paris"}},
]


def random_lines(rng):
    users = ["k%d" % i for i in range(rng.randint(1, 4))]
    anons = ["a%d" % i for i in range(rng.randint(1, 5))]
    records = []
    n = 0
    for _ in range(rng.randint(5, 40)):
        n += 1
        minute = rng.randint(0, 180)
        roll = rng.random()
        rec = {"event_id": "e%d" % n, "ts": BASE + minute * MIN}
        if roll < 0.15:
            rec.update(event="identify", user_id=rng.choice(users), anonymous_id=rng.choice(anons))
        elif roll < 0.6:
            rec.update(event=rng.choice(["purchase", "view", "view"]), anonymous_id=rng.choice(anons))
        else:
            rec.update(event=rng.choice(["purchase", "view", "profile"]), user_id=rng.choice(users))
        if rec["event"] == "purchase":
            rec["properties"] = {"price": rng.choice([5, 20, 50, 80])}
        if rng.random() < 0.3:
            rec["traits"] = {rng.choice(["tier", "city"]): rng.choice(
                ["gold", "silver", "Paris", "Rome", None])}
        rec["received_at"] = rec["ts"] + rng.randint(0, 5) * MIN
        records.append(rec)
        if rng.random() < 0.1:   # a copy within the 24 h dedupe horizon
            copy = dict(rec, received_at=rec["received_at"] + rng.randint(1, 120) * MIN)
            records.append(copy)
    rng.shuffle(records)   # arrival order is not event-time order
    for rec in records:
        rec["ts"] = ref.fmt_time(rec["ts"])
        rec["received_at"] = ref.fmt_time(rec["received_at"])
    return [json.dumps(r) for r in records]


def core_transitions(lines, as_of):
    engine = Engine(AudienceSet(AUDIENCES))
    events = [parse_record(x) for x in lines]
    events = [e for e in events if e.ts <= as_of]
    result = stitch_histories(engine, events, as_of)
    slugs = [a.slug for a in engine.audiences.audiences]
    out = {}
    for key, changes in result.changes.items():
        rows = []
        for c in changes:
            ch = tuple(sorted((slugs[a], kind, enter) for a, kind, enter in c.changes))
            rows.append((c.time, ch, c.merged_into if isinstance(c, MergeExit) else None))
        out[key] = rows
    conflicts = sorted((c.anonymous_id, c.user_id, c.event_id) for c in result.conflicts)
    return out, conflicts


def reference_transitions(lines, as_of):
    config = {"account": {"name": "acme"}, "audiences": AUDIENCES, "works": []}
    got = reference_stitched_transitions(config, lines, as_of)
    conflicts = sorted(reference_stitched_outputs(config, lines, as_of=as_of)["conflicts"])
    return ({k: [(T, tuple(sorted(ch)), m) for T, ch, m in rows] for k, rows in got.items()},
            conflicts)


@pytest.mark.parametrize("seed", range(200))
def test_core_matches_the_reference(seed):
    rng = random.Random(seed)
    lines = random_lines(rng)
    as_of = BASE + rng.choice([120, 200, 400]) * MIN
    assert core_transitions(lines, as_of) == reference_transitions(lines, as_of)


def test_the_random_histories_have_what_they_are_for():
    """Across the seeds: merges with exits, second claims, and anonymous events after a merge."""
    merges = conflicts = after = 0
    for seed in range(200):
        rng = random.Random(seed)
        lines = random_lines(rng)
        as_of = BASE + rng.choice([120, 200, 400]) * MIN
        got, found = core_transitions(lines, as_of)
        merges += sum(1 for rows in got.values() for r in rows if r[2] is not None)
        conflicts += len(found)
        recs = [json.loads(x) for x in lines]
        claims = {}
        for r in recs:
            if "user_id" in r and "anonymous_id" in r:
                claims[r["anonymous_id"]] = min(claims.get(r["anonymous_id"], r["ts"]), r["ts"])
        after += sum(1 for r in recs if "user_id" not in r and r["anonymous_id"] in claims
                     and r["ts"] >= claims[r["anonymous_id"]])
    assert merges >= 50 and conflicts >= 50 and after >= 100
