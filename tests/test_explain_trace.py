"""One evaluator: the engine's trace (``core.engine.Evaluation``) and ``pipelines.explain`` on it.

* A traced engine reports each evaluation (time, audience, the condition node by node with the
  counts and traits behind it, the transition), and its tree agrees with the engine's own answer.
* Tracing changes no transition, and the counts it reports are the true ones (a brute-force count
  over the user's events), also past a spec's cap.
* ``explain`` prints the trees the engine traced; no module imports a private name of a core
  module (``explain`` re-implemented the evaluation with ``_lookup`` and ``_make_predicate``).
"""
import ast
import json
import os
import random
import subprocess
import sys

from cdp_activation.core.conditions import AudienceSet, compile_where
from cdp_activation.core.config import parse_config
from cdp_activation.core.engine import Engine, Evaluation
from cdp_activation.core.records import ProfileEvent, parse_record
from cdp_activation.core.timeutil import MAX_TIME, parse_time
from tests.commands import project_module
from tests.datagen import generate
from tests.engine_audiences import AUDIENCES as AUDIENCES_OF_ALL_KINDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY = 86_400_000_000
MIN = 60_000_000
BASE = parse_time("2026-11-01T00:00:00Z")
AUDIENCES = [
    {"id": "fb1", "slug": "frequent_buyers",
     "condition": {"event": "purchase", "within": "7d", "min_count": 3}},
    {"slug": "vip", "condition": {"and": [{"audience": "frequent_buyers"},
                                          {"trait": "tier", "op": "eq", "value": "gold"}]}},
]


def _event(name, day, event_id, traits=None, user="u1", props=None):
    ts = BASE + day * DAY
    return ProfileEvent(user, event_id, name, ts, ts, user, None, props or {}, traits)


def _traced(audience_defs, events, backfill_starts=()):
    evaluations = []
    engine = Engine(AudienceSet(audience_defs), backfill_starts, observer=evaluations.append)
    changes, _ = engine.advance(engine.new_state(), events, MAX_TIME)
    return changes, evaluations


def test_a_traced_engine_reports_each_evaluation_with_its_counts_and_transition():
    events = [_event("visit", 0, "v1", {"tier": "gold"})] + [
        _event("purchase", day, "p%d" % day) for day in (1, 2, 3)]
    changes, evaluations = _traced(AUDIENCES, events)
    assert all(isinstance(e, Evaluation) for e in evaluations)
    transitions = [(e.time, e.audience_id, e.transition) for e in evaluations if e.transition]
    assert transitions == [(BASE + 3 * DAY, "fb1", "enter"), (BASE + 3 * DAY, "vip", "enter"),
                           (BASE + 8 * DAY, "fb1", "exit"), (BASE + 8 * DAY, "vip", "exit")]
    enter = next(e for e in evaluations if e.transition == "enter" and e.audience_id == "fb1")
    assert (enter.tree.kind, enter.tree.value, enter.tree.detail) == ("event", True, 3)
    exit_ = next(e for e in evaluations if e.transition == "exit" and e.audience_id == "fb1")
    assert (exit_.tree.kind, exit_.tree.value, exit_.tree.detail) == ("event", False, 2)
    vip = next(e for e in evaluations if e.transition == "enter" and e.audience_id == "vip")
    assert [(c.kind, c.value, c.detail) for c in vip.tree.children] == [
        ("audience", True, 0), ("trait", True, "gold")]
    assert vip.tree.node is AUDIENCES[1]["condition"]
    # Evaluations without a transition are reported too: the first point evaluates every audience.
    assert [(e.time, e.audience_id, e.transition) for e in evaluations[:2]] == [
        (BASE, "fb1", None), (BASE, "vip", None)]
    assert [(c.time, c.changes) for c in changes] == [
        (BASE + 3 * DAY, ((0, "enter", BASE + 3 * DAY), (1, "enter", BASE + 3 * DAY))),
        (BASE + 8 * DAY, ((0, "exit", BASE + 3 * DAY), (1, "exit", BASE + 3 * DAY)))]


def test_counts_past_the_cap_are_the_true_counts_only_when_traced():
    condition = {"and": [{"event": "purchase", "within": "7d", "min_count": 3},
                         {"trait": "tier", "op": "eq", "value": "gold"}]}
    defs = [{"slug": "gold_buyers", "condition": condition}]
    events = [_event("purchase", day, "p%d" % day) for day in range(5)]
    events.append(_event("visit", 5, "v1", {"tier": "gold"}))
    _, evaluations = _traced(defs, events)
    enter = [e for e in evaluations if e.transition == "enter"]
    assert len(enter) == 1 and enter[0].tree.children[0].detail == 5
    # The untraced engine keeps only what the thresholds need (the cap, 3), with the same answer.
    plain = Engine(AudienceSet(defs))
    state = plain.new_state()
    changes, _ = plain.advance(state, events, BASE + 5 * DAY)
    assert len(state.counts[0]) == 3 and changes[0].changes == ((0, "enter", BASE + 5 * DAY),)


def _brute_count(node, events, t):
    """The ``{event: ...}`` node's count at t from the user's (unique) events."""
    within = {"10m": 10 * MIN, "20m": 20 * MIN, "30m": 30 * MIN, "40m": 40 * MIN}.get(
        node.get("within"))
    where = compile_where(node["where"], "where") if node.get("where") else None
    return sum(1 for e in events
               if node["event"] in ("*", e.event) and e.ts <= t
               and (within is None or t < e.ts + within)
               and (where is None or where(e.properties)))


def _leaves(tree):
    if not tree.children:
        yield tree
    for child in tree.children:
        yield from _leaves(child)


def test_tracing_changes_no_transition_and_reports_true_counts_on_random_histories():
    rnd = random.Random(7)
    for _ in range(60):
        events = []
        for k in range(rnd.randint(1, 25)):
            ts = BASE + rnd.randint(0, 180) * MIN
            name = rnd.choice(["purchase", "view", "email_open", "visit"])
            traits = {"tier": rnd.choice(["gold", "silver", None])} if rnd.random() < 0.3 else None
            events.append(ProfileEvent("u", "e%d" % k, name, ts, ts, "u", None,
                                       {"price": rnd.choice([5, 50])}, traits))
        plain = Engine(AudienceSet(AUDIENCES_OF_ALL_KINDS))
        expected, _ = plain.advance(plain.new_state(), list(events), MAX_TIME)
        changes, evaluations = _traced(AUDIENCES_OF_ALL_KINDS, list(events))
        assert changes == expected
        assert sorted((e.time, e.audience, e.transition) for e in evaluations if e.transition) == \
            sorted((c.time, a, kind) for c in changes for a, kind, _ in c.changes)
        for e in evaluations:
            assert e.tree.value == e.value
            for leaf in _leaves(e.tree):
                if leaf.kind == "event":
                    assert leaf.detail == _brute_count(leaf.node, events, e.time), (leaf, e.time)


def test_tracing_changes_nothing_on_the_acceptance_data():
    config, lines = generate(5, n_users=40, days=10)
    job = parse_config(config, environ={})
    users = {}
    for line in lines:
        try:
            record = parse_record(line)
        except ValueError:
            continue
        if isinstance(record, ProfileEvent):
            users.setdefault((record.key_field, record.key), []).append(record)
    assert len(users) >= 30
    for events in users.values():
        # The changes carry the computed traits' values, as a traced engine's do.
        plain = Engine(job.audiences, job.backfill_starts, change_computed=True)
        expected, _ = plain.advance(plain.new_state(), list(events), MAX_TIME)
        evaluations = []
        traced = Engine(job.audiences, job.backfill_starts, observer=evaluations.append)
        changes, _ = traced.advance(traced.new_state(), list(events), MAX_TIME)
        assert changes == expected
        assert all(e.tree.value == e.value for e in evaluations)


CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: fb1, slug: frequent_buyers, condition: {event: purchase, within: 7d, min_count: 3}}
  - slug: gold_buyers
    condition: {and: [{event: purchase, within: 7d, min_count: 3}, {trait: tier, op: eq, value: gold}]}
works: []
"""


def test_explain_prints_the_engines_counts_past_the_cap(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    events = [{"user_id": "u1", "event": "purchase", "event_id": "p%d" % d,
               "ts": "2026-11-0%dT00:00:00Z" % d} for d in range(1, 6)]
    events.append({"user_id": "u1", "event": "visit", "ts": "2026-11-06T00:00:00Z",
                   "traits": {"tier": "gold"}})
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    result = subprocess.run([sys.executable, "-m", "pipelines.explain", "--config",
                             str(tmp_path / "config.yaml"), "--input", str(tmp_path / "events.jsonl"),
                             "--user", "u1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("2026-11-06T00:00:00Z  ENTER gold_buyers\n"
            "      * true  and\n"
            "        true    purchase in the last 7d: 5, needs >= 3\n"
            "      * true    trait tier eq \"gold\" (is \"gold\")\n") in result.stdout
    # Day 10: the third most recent purchase (day 3) leaves the window; two remain.
    assert ("2026-11-10T00:00:00Z  EXIT  frequent_buyers\n"
            "      * false purchase in the last 7d: 2, needs >= 3\n") in result.stdout


def _private_core_imports(path, module):
    """``(line, name)`` of each private name of a core module that ``path`` imports (a module
    may use its own)."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    found = []
    for node in ast.walk(tree):
        imported = project_module(node.module) if isinstance(node, ast.ImportFrom) \
            and node.module else None
        if imported and node.level == 0 and imported.split(".")[0] == "core" \
                and imported != module:
            found.extend((node.lineno, "%s.%s" % (imported, a.name))
                         for a in node.names if a.name.startswith("_"))
    return found


def test_no_module_imports_a_private_name_of_a_core_module():
    offenders = []
    for top in ("core", "pipelines", "transforms", "clients", "emulators", "bench"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    offenders.extend((module, line, imported) for line, imported
                                     in _private_core_imports(path, module))
    assert offenders == []
