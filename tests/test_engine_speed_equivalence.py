"""The engine's fast paths change nothing observable.

``core.engine`` keeps per-advance bounds of the next wake-up and expiry, skips evaluations that
cannot flip a node, applies late events through the same loop as on-time ones, and evaluates
generated condition functions (``AudienceSet.state_holds``) instead of the closure trees. Each of
these is only correct if a user's transitions do not depend on how its history is cut into
``advance`` calls, so this checks, on random histories:

* one ``advance`` with the whole history gives exactly the changes, export rows and final state
  of many small calls at random cut points (events of each chunk shuffled, the state through
  ``to_bytes``/``from_bytes`` between calls, cuts often exactly at event times, window expiries
  and one microsecond either side, empty chunks as timer-only wake-ups), as the streaming DoFn
  does;
* ``next_wake`` never sleeps through a transition: when no event comes after a call's clock
  before the next transition of the one-call run, that call announced a wake-up no later;
* late events (arriving after the clock passed them) are applied at the clock the same way
  whether they come alone or with others, and leave the same state behind;
* the generated conditions and the fast operator forms agree with the closures and the generic
  definitions, also for nesting too deep to generate.

The per-count tables of large caps (filled on first use) are checked by running some of the
random configurations with every cap treated as large.
"""
import random

import pytest

from cdp_activation.core import engine as engine_module
from cdp_activation.core.computed import ComputedSet
from cdp_activation.core.conditions import (AudienceSet, _comparable, _same_kind, compile_where,
                             values_equal)
from cdp_activation.core.engine import Engine, Stats
from cdp_activation.core.records import ProfileEvent, parse_record
from cdp_activation.core.timeutil import MAX_TIME, MIN_TIME, parse_time
from tests.datagen import generate

MIN = 60_000_000
BASE = 1_793_491_200_000_000          # 2026-11-01T00:00:00Z
EVENT_NAMES = ["a", "b", "c", "profile"]
WITHINS = [None, None, "5m", "30m", "2h", "1d"]


# -- random configurations and histories ---------------------------------------------------------

def _trait_leaf(rnd):
    op = rnd.choice(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "missing",
                     "contains", "starts_with", "matches"])
    value = {"eq": rnd.choice(["gold", 7, 7.0, True]), "ne": rnd.choice(["gold", 7]),
             "gt": rnd.choice([5, "m", 2.5]), "gte": rnd.choice([7, "gold"]),
             "lt": rnd.choice([7, "s"]), "lte": 3,
             "in": rnd.choice([["gold", "silver"], [7, "gold"], [1, 2.0]]),
             "not_in": rnd.choice([["gold"], [7, 8], ["gold", 3]]), "contains": "ol",
             "starts_with": "go", "matches": "^g.*d$"}.get(op)
    node = {"trait": rnd.choice(["tier", "score", "x.y"]), "op": op}
    if value is not None:
        node["value"] = value
    return node


def _event_leaf(rnd):
    node = {"event": rnd.choice(EVENT_NAMES[:3]), "min_count": rnd.choice([0, 1, 1, 2, 3])}
    within = rnd.choice(WITHINS)
    if within:
        node["within"] = within
    if rnd.random() < 0.3:
        node["max_count"] = node["min_count"] + rnd.choice([0, 1, 2])
    if rnd.random() < 0.3:
        node["where"] = rnd.choice([{"property": "price", "op": "gt", "value": 10},
                                    {"not": {"property": "price", "op": "in", "value": [5, 20]}}])
    return node


def _condition(rnd, refs, depth=0):
    x = rnd.random()
    if depth < 3 and x < 0.35:
        kind = rnd.choice(["and", "or"])
        return {kind: [_condition(rnd, refs, depth + 1) for _ in range(rnd.randint(1, 3))]}
    if depth < 3 and x < 0.45:
        return {"not": _condition(rnd, refs, depth + 1)}
    if refs and x < 0.55:
        return {"audience": rnd.choice(refs)}
    return _trait_leaf(rnd) if x < 0.7 else _event_leaf(rnd)


def _audiences(rnd):
    audiences = []
    for k in range(rnd.randint(2, 6)):
        audiences.append({"slug": "s%d" % k,
                          "condition": _condition(rnd, [a["slug"] for a in audiences])})
    # At least one windowed count, so that expiries and delayed exits happen.
    audiences.append({"slug": "windowed", "condition": {"event": "a", "within": "30m",
                                                        "min_count": 2}})
    return audiences


def _history(rnd):
    """Events of one user: clustered minutes (expiries often fall on other events' times),
    shared timestamps, long ids (hashed for dedupe), copies within and after 24 h, traits."""
    events = []
    for k in range(rnd.randint(1, 60)):
        minute = rnd.choice([rnd.randint(0, 600), rnd.choice([0, 30, 60, 90, 120, 300])])
        ts = BASE + minute * MIN + rnd.choice([0, 0, 0, 1])
        event_id = rnd.choice(["e%d" % k, "an-event-id-longer-than-16-chars-%d" % k])
        traits = rnd.choice([None, None, {"tier": "gold"}, {"tier": None}, {"score": 7},
                             {"score": 7.0}, {"x": {"y": 1}}, {"score": True}])
        props = rnd.choice([{}, {"price": 5}, {"price": 50}])
        event = ProfileEvent("u", event_id, rnd.choice(EVENT_NAMES), ts, ts + 5 * MIN, "u", None,
                             props, traits)
        events.append(event)
        if rnd.random() < 0.15:
            delay = rnd.choice([MIN, 23 * 60 * MIN, 24 * 60 * MIN])
            events.append(event._replace(received_at=event.received_at + delay))
    return events


def _cuts(rnd, events, windows):
    """Increasing cut times, many of them on the boundaries where off-by-one errors live."""
    special = set()
    for e in events:
        for w in windows:
            special.update((e.ts + w - 1, e.ts + w, e.ts + w + 1))
        special.update((e.ts - 1, e.ts, e.ts + 1))
    candidates = sorted(special)
    cuts = sorted(set(rnd.sample(candidates, min(len(candidates), rnd.randint(1, 25)))))
    # Repeated cuts: a call that brings no event and no new time (a timer firing again).
    return cuts + [cuts[-1]] + [MAX_TIME]


# -- the drivers -----------------------------------------------------------------------------------

def _in_one_call(engine, events):
    state = engine.new_state()
    stats = Stats()
    changes, rows = engine.advance(state, list(events), MAX_TIME, stats)
    return changes, rows, stats, engine.dump_state(state)


def _in_chunks(engine, events, cuts, rnd):
    """As the streaming DoFn calls it: each call gets the events up to its cut (shuffled) and
    the state comes back from bytes. Returns what the calls produced and, per call, the clock and
    next_wake it left."""
    data = engine.dump_state(engine.new_state())
    remaining = sorted(events, key=lambda e: e.ts)
    changes, rows, wakes, stats = [], [], [], Stats()
    for cut in cuts:
        chunk = [e for e in remaining if e.ts <= cut]
        remaining = [e for e in remaining if e.ts > cut]
        rnd.shuffle(chunk)
        state = engine.load_state(data)
        found, exported = engine.advance(state, chunk, cut, stats)
        changes.extend(found)
        rows.extend(exported)
        data = engine.dump_state(state)
        assert engine.dump_state(engine.load_state(data)) == data
        wakes.append((state.clock, engine.next_wake(state)))
    return changes, rows, stats, data, wakes


def _tuples(items):
    return [tuple(item) for item in items]


# -- the checks ------------------------------------------------------------------------------------

def _snapshots_hold(changes, events):
    """Each non-backfill change carries the traits and first/last ts as of its time: the events
    up to it, in (ts, event_id, received_at) order. (A duplicate shares ts and content with the
    copy that was applied, so leaving dedupe out changes neither.)"""
    ordered = sorted(events, key=lambda e: (e.ts, e.event_id, e.received_at))
    for change in changes:
        if change.backfill:
            continue
        upto = [e for e in ordered if e.ts <= change.time]
        traits = {}
        for e in upto:
            for name, value in (e.traits or {}).items():
                if value is None:
                    traits.pop(name, None)
                else:
                    traits[name] = value
        assert (change.first_ts, change.last_ts) == (upto[0].ts, upto[-1].ts)
        assert change.traits == traits


def _check_history(engine, events, windows, rnd):
    changes, rows, stats, final = _in_one_call(engine, events)
    _snapshots_hold(changes, events)
    for _ in range(3):
        cuts = _cuts(rnd, events, windows)
        got, got_rows, got_stats, got_final, wakes = _in_chunks(engine, events, cuts, rnd)
        assert _tuples(got) == _tuples(changes), cuts
        assert _tuples(got_rows) == _tuples(rows)
        assert (got_stats.events, got_stats.duplicates, got_stats.late) == \
            (stats.events, stats.duplicates, 0)
        assert got_final == final
        # With no event after a call's clock, the next transition is not before the wake-up the
        # call announced (the DoFn sets its timer there).
        event_times = sorted({e.ts for e in events})
        for clock, wake in wakes:
            after = [c.time for c in changes if c.time > clock]
            next_event = next((ts for ts in event_times if ts > clock), MAX_TIME + 1)
            if after and after[0] < next_event:
                assert wake is not None and wake <= after[0], (clock, wake, after[0])
    return changes


@pytest.mark.parametrize("seed", range(12))
def test_random_configs_give_the_same_changes_in_one_call_and_in_chunks(seed, monkeypatch):
    if seed % 3 == 2:
        # The per-count tables of caps too large to tabulate ahead, on small caps.
        monkeypatch.setattr(engine_module, "_TABULATED_CAP", 0)
    rnd = random.Random(seed)
    total = 0
    for _ in range(15):
        audiences = _audiences(rnd)
        starts = [BASE + m * MIN for m in (30, 60, 61, 300)]
        backfill = sorted(rnd.sample(starts, rnd.randint(0, 2)))
        export = rnd.choice([None, ["tier", "score"]])
        engine = Engine(AudienceSet(audiences), backfill, export)
        windows = sorted({s.within for s in engine.specs if s.within is not None})
        events = _history(rnd)
        total += len(_check_history(engine, events, windows, rnd))
    assert total > 0  # the histories do produce transitions


@pytest.mark.parametrize("seed", [3, 17])
def test_generated_data_gives_the_same_changes_in_one_call_and_in_chunks(seed):
    config, lines = generate(seed, n_users=25, days=20, outage=False, malformed=False,
                             system=False)
    start = [parse_time(w["config"]["start"]) for w in config["works"]
             if w["config"].get("existing_users")]
    # The generated config's computed traits too: their values in the changes and export rows
    # must not depend on how the history is cut into calls either.
    computed = ComputedSet(config["computed_traits"])
    engine = Engine(AudienceSet(config["audiences"], computed=computed), start,
                    ["email", "country", "ltv"], export_computed=computed.names,
                    change_computed=True)
    windows = sorted({s.within for s in engine.specs if s.within is not None}
                     | {t.within for t in computed.traits if t.within is not None})
    users = {}
    for line in lines:
        record = parse_record(line)
        if isinstance(record, ProfileEvent):
            users.setdefault(record.key, []).append(record)
    rnd = random.Random(seed)
    total = 0
    for key in sorted(users):
        total += len(_check_history(engine, users[key], windows, rnd))
    assert total > 0


@pytest.mark.parametrize("seed", range(6))
def test_late_events_are_applied_at_the_clock_alike_in_any_grouping(seed):
    """The first part of a history is applied up to a cut; the rest arrives after the clock
    passed it. Handing the late events over all at once, one per call, or in two calls gives the
    same changes, all stamped at the clock, and the same state."""
    rnd = random.Random(1000 + seed)
    late_total = 0
    for _ in range(20):
        engine = Engine(AudienceSet(_audiences(rnd)), [], rnd.choice([None, ["tier"]]))
        # Copies received a day later are left out: arriving in another call than their twin,
        # they may meet a dedupe map pruned in between (by design), which is not the point here.
        events = [e for e in _history(rnd) if e.received_at - e.ts < 60 * MIN]
        cut = rnd.choice(sorted({e.ts for e in events}))
        clock = cut + rnd.choice([0, 1, 45 * MIN])
        early = [e for e in events if e.ts <= cut]
        late = [e for e in events if e.ts > cut]
        rnd.shuffle(late)
        late = [e._replace(ts=min(e.ts, clock)) for e in late]  # all of them late at the clock
        results = []
        for groups in ([late], [[e] for e in late], [late[:len(late) // 2], late[len(late) // 2:]]):
            state = engine.new_state()
            engine.advance(state, early, clock)
            stats = Stats()
            out, rows = [], []
            for group in groups:
                state = engine.load_state(engine.dump_state(state))
                found, exported = engine.advance(state, group, state.clock, stats)
                out.extend(found)
                rows.extend(exported)
            assert stats.late == len(late)
            assert all(c.time == clock for c in out)
            found, _ = engine.advance(state, [], MAX_TIME)
            results.append((_tuples(out), _tuples(rows), _tuples(found), engine.dump_state(state)))
        assert results[1] == results[0]
        assert results[2] == results[0]
        late_total += len(results[0][0])
    assert late_total > 0


def test_late_events_never_prune_the_dedupe_map_between_copies():
    # One event received days late pushes max_received ahead and 30 others fill the dedupe map
    # up to one below its pruning size. Two copies of a record then arrive late, in one call:
    # applying the first must not prune it before the second is checked (points after the clock
    # prune; late events are points at the clock).
    engine = Engine(AudienceSet([{"slug": "twice",
                                  "condition": {"event": "view", "min_count": 2}}]))
    day = 24 * 60 * MIN
    events = [ProfileEvent("u", "early", "profile", BASE, BASE + 5 * day, "u", None, {}, None)]
    events += [ProfileEvent("u", "p%d" % i, "profile", BASE + i * MIN, BASE + i * MIN, "u", None,
                            {}, None) for i in range(1, 31)]
    state = engine.new_state()
    engine.advance(state, events, BASE + 100 * MIN)
    first = ProfileEvent("u", "dup", "view", BASE + 50 * MIN, BASE + 50 * MIN, "u", None, {}, None)
    second = first._replace(received_at=first.received_at + 60 * MIN)
    stats = Stats()
    changes, _ = engine.advance(state, [first, second], state.clock, stats)
    assert (stats.late, stats.duplicates, stats.events, changes) == (2, 1, 1, [])


# -- conditions --------------------------------------------------------------------------------

VALUES = [None, 0, 1, 7, 7.0, 2.5, -3, True, False, "", "gold", "go", "gold ", "m", "s", "US",
          ["gold", 7], {"y": 1}, [], 10 ** 20]


def _expected_predicate(op, value, a):
    """The operators as the contract states them, spelled out with the generic helpers."""
    if op == "eq":
        return a is not None and values_equal(a, value)
    if op in ("gt", "gte", "lt", "lte"):
        if not _comparable(a, value):
            return False
        return {"gt": a > value, "gte": a >= value, "lt": a < value, "lte": a <= value}[op]
    if op == "in":
        return a is not None and any(values_equal(a, v) for v in value)
    if op == "not_in":
        return (a is not None and any(_same_kind(a, v) for v in value)
                and not any(values_equal(a, v) for v in value))
    raise AssertionError(op)


@pytest.mark.parametrize("op,value", [
    ("eq", "gold"), ("eq", 7), ("eq", True), ("gt", 5), ("gte", 7.0), ("lt", "m"), ("lte", "s"),
    ("gt", 2.5), ("gt", 0), ("gte", 1), ("lt", 1), ("lte", 0.5), ("in", ["gold", "US"]),
    ("in", [7, "gold"]), ("in", ["go"]),
    ("not_in", ["gold", "US"]), ("not_in", [7, "gold"]), ("not_in", ["x"])])
def test_fast_predicates_equal_the_generic_definitions(op, value):
    audiences = AudienceSet([{"slug": "t", "condition": {"trait": "t", "op": op, "value": value}}])
    holds = audiences.audiences[0].holds
    state_holds = audiences.state_holds[0]
    where = compile_where({"property": "t", "op": op, "value": value}, "where")
    for a in VALUES:
        expected = _expected_predicate(op, value, a)
        traits = {} if a is None else {"t": a}
        assert bool(holds(traits, [], [False])) is expected, (op, value, a)
        assert bool(state_holds(traits, [], [None])) is expected, (op, value, a)
        assert bool(where(traits)) is expected, (op, value, a)


def _random_inputs(rnd, audience_set):
    traits = {name: rnd.choice(VALUES) for name in ("tier", "score", "x") if rnd.random() < 0.7}
    if "x" in traits and rnd.random() < 0.5:
        traits["x"] = {"y": rnd.choice([1, "gold", None])}
    if rnd.random() < 0.2:
        traits["x.y"] = rnd.choice([1, "gold"])
    raw = [sorted(rnd.sample(range(100), rnd.randint(0, 3))) if s.within is not None
           else rnd.randint(0, 3) for s in audience_set.specs]
    counts = [len(c) if isinstance(c, list) else c for c in raw]
    enter_times = [rnd.choice([None, 0, 5]) for _ in audience_set.audiences]  # 0: entered at 0
    return traits, raw, counts, enter_times


def test_generated_conditions_equal_the_closures():
    rnd = random.Random(7)
    checked = 0
    for _ in range(300):
        audience_set = AudienceSet(_audiences(rnd))
        for _ in range(20):
            traits, raw, counts, enter_times = _random_inputs(rnd, audience_set)
            present = [m is not None for m in enter_times]
            for a in audience_set.audiences:
                expected = bool(a.holds(traits, counts, present))
                assert bool(audience_set.state_holds[a.index](traits, raw, enter_times)) \
                    is expected
                checked += expected
    assert checked > 0


def test_conditions_nested_too_deep_to_generate_still_evaluate():
    condition = {"trait": "tier", "op": "eq", "value": "gold"}
    for _ in range(250):                  # beyond the parser's nesting limit
        condition = {"not": condition}
    audience_set = AudienceSet([{"slug": "deep", "condition": condition},
                                {"slug": "count", "condition": {"event": "a", "within": "1h"}}])
    holds = audience_set.state_holds[0]
    assert holds({"tier": "gold"}, [[1]], [None, None]) is True      # an even number of nots
    assert holds({"tier": "silver"}, [[1]], [None, None]) is False
    engine = Engine(audience_set)
    event = ProfileEvent("u", "e1", "a", BASE, BASE, "u", None, {}, {"tier": "gold"})
    changes, _ = engine.advance(engine.new_state(), [event], MAX_TIME)
    assert [(c.time, c.changes) for c in changes] == [
        (BASE, ((0, "enter", BASE), (1, "enter", BASE))), (BASE + 60 * MIN, ((1, "exit", BASE),))]


def test_events_may_be_any_iterable():
    engine = Engine(AudienceSet([{"slug": "two", "condition": {"event": "a", "min_count": 2}}]))
    events = [ProfileEvent("u", "e%d" % i, "a", BASE + i, BASE + i, "u", None, {}, None)
              for i in range(3)]
    state = engine.new_state()
    engine.advance(state, events[:1], BASE + 1)
    changes, _ = engine.advance(state, (e for e in [events[0]._replace(ts=MIN_TIME + 1,
                                                                       event_id="late")]
                                        + events[1:]), MAX_TIME)
    assert [(c.time, c.changes[0][1]) for c in changes] == [(BASE + 1, "enter")]
