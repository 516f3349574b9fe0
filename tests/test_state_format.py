"""The keyed, versioned user state (core/state.py, docs/STATE.md) through config edits.

Each test saves a user's state under one config, restores it under an edited config, goes on with
more events, and compares with what the edited config gives when it ran all along (or, for an
added audience, with what the contract says an added audience does).
"""
import marshal
import random

import pytest

from cdp_activation.core.computed import ComputedSet
from cdp_activation.core.conditions import AudienceSet
from cdp_activation.core.engine import Engine
from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.state import StateFormatError, decode_document, encode_document
from cdp_activation.core.timeutil import MAX_TIME

MIN = 60 * 1_000_000
BUYERS = {"id": "aud-buyers", "slug": "buyers",
          "condition": {"event": "purchase", "within": "30m", "min_count": 2}}
VIEWERS = {"id": "aud-viewers", "slug": "viewers", "condition": {"event": "view", "within": "10m"}}
GOLD = {"id": "aud-gold", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}}
GOLD_BUYERS = {"id": "aud-gold-buyers", "slug": "gold_buyers",
               "condition": {"and": [{"audience": "buyers"}, {"audience": "gold"}]}}
EVER_BOUGHT = {"id": "aud-ever", "slug": "ever_bought", "condition": {"event": "purchase"}}


def _event(i, name, minute, traits=None):
    ts = minute * MIN
    return ProfileEvent("u", "e%04d" % i, name, ts, ts, "u", None, {}, traits)


FIRST = [_event(0, "profile", 0, {"tier": "gold"}), _event(1, "purchase", 5), _event(2, "purchase", 8),
         _event(3, "view", 9)]
CUT = 12 * MIN  # saved with the user in buyers, viewers, gold and gold_buyers
SECOND = [_event(4, "purchase", 20), _event(5, "view", 50), _event(6, "profile", 60, {"tier": None}),
          _event(7, "purchase", 70), _event(8, "purchase", 75)]


def _engine(audiences):
    return Engine(AudienceSet(audiences))


def _by_id(engine, changes):
    """Transitions as (time, audience id, kind, enter time): positions do not matter."""
    ids = [a.id for a in engine.audiences.audiences]
    return sorted((c.time, ids[a], kind, enter) for c in changes for a, kind, enter in c.changes
                  if not c.backfill)


def _saved_after_first(audiences):
    engine = _engine(audiences)
    state = engine.new_state()
    changes, _ = engine.advance(state, FIRST, CUT)
    return engine.dump_state(state), _by_id(engine, changes)


def _continued(data, audiences):
    engine = _engine(audiences)
    state = engine.load_state(data)
    changes, _ = engine.advance(state, SECOND, MAX_TIME)
    return _by_id(engine, changes), state, engine


def _all_along(audiences):
    engine = _engine(audiences)
    changes, _ = engine.advance(engine.new_state(), FIRST + SECOND, MAX_TIME)
    return [c for c in _by_id(engine, changes) if c[0] > CUT]


def test_reordered_audiences_continue_exactly():
    before = [BUYERS, VIEWERS, GOLD, GOLD_BUYERS]
    after = [GOLD_BUYERS, GOLD, VIEWERS, BUYERS]
    data, first = _saved_after_first(before)
    assert ("aud-buyers" in {c[1] for c in first}) and ("aud-gold-buyers" in {c[1] for c in first})
    got, _, _ = _continued(data, after)
    assert got == _all_along(after)
    assert any(kind == "exit" and aid == "aud-buyers" for _, aid, kind, _ in got)


def test_removed_audience_is_dropped_and_the_others_continue():
    before = [BUYERS, VIEWERS, GOLD, GOLD_BUYERS]
    after = [VIEWERS, GOLD]
    data, _ = _saved_after_first(before)
    got, state, engine = _continued(data, after)
    assert got == _all_along(after)
    document = engine.state_document(state)
    assert set(document["audiences"]) == {"aud-viewers", "aud-gold"}
    assert set(document["members"]) <= {"aud-viewers", "aud-gold"}


def test_audience_inserted_ahead_starts_with_no_membership_and_enters_first():
    # The case: a member of buyers (position 0) is restored under a config with a new
    # audience at position 0. Positionally, the user would come back as a member of the new
    # audience and get an exit for it.
    before = [BUYERS, GOLD]
    after = [EVER_BOUGHT, BUYERS, GOLD]
    data, first = _saved_after_first(before)
    assert [c[1:3] for c in first] == [("aud-gold", "enter"), ("aud-buyers", "enter")]
    got, state, engine = _continued(data, after)
    ever = [c for c in got if c[1] == "aud-ever"]
    # Evaluated at the user's first point after the restore (the purchase at minute 20) from
    # what the state holds (an all-time purchase count saved by no condition: empty, so only the
    # new purchase counts): an enter, never an exit.
    assert ever == [(20 * MIN, "aud-ever", "enter", 20 * MIN)]
    kept = [c for c in got if c[1] != "aud-ever"]
    assert kept == [c for c in _all_along(before)]
    assert engine.state_document(state)["members"]["aud-ever"] == 20 * MIN


def test_added_audience_reads_counts_the_state_already_holds():
    # A new audience counting what a kept one counts (same event, where and within: same spec
    # id) sees the events before the restore.
    twice_in_30m = {"id": "aud-new", "slug": "new_buyers",
                    "condition": {"event": "purchase", "within": "30m", "min_count": 2}}
    data, _ = _saved_after_first([BUYERS, GOLD])
    got, _, _ = _continued(data, [twice_in_30m, BUYERS, GOLD])
    new = [c for c in got if c[1] == "aud-new"]
    # purchases at 5 and 8 are in the state; the one at 20 makes the first point after restore.
    assert new[0] == (20 * MIN, "aud-new", "enter", 20 * MIN)
    assert [c[2] for c in new] == ["enter", "exit", "enter", "exit"]


def test_edited_condition_is_reevaluated_at_the_next_point():
    data, _ = _saved_after_first([BUYERS, GOLD])
    platinum = dict(GOLD, condition={"trait": "tier", "op": "eq", "value": "platinum"})
    got, _, _ = _continued(data, [BUYERS, platinum])
    assert [c for c in got if c[1] == "aud-gold"][0] == (20 * MIN, "aud-gold", "exit", 0)


def test_added_audience_not_reached_in_a_run_stays_pending_in_the_saved_state():
    data, _ = _saved_after_first([BUYERS])
    engine = _engine([EVER_BOUGHT, BUYERS])
    state = engine.load_state(data)
    engine.advance(state, [], CUT + 1)   # no point: nothing evaluated
    document = engine.state_document(state)
    assert "aud-ever" not in document["audiences"]
    got, _, _ = _continued(engine.dump_state(state), [EVER_BOUGHT, BUYERS])
    assert [c for c in got if c[1] == "aud-ever"][0][2] == "enter"


def test_random_histories_cut_and_restored_under_a_reordered_config_match_one_run():
    audiences = [BUYERS, VIEWERS, GOLD, GOLD_BUYERS, EVER_BOUGHT]
    rnd = random.Random(20)
    for _ in range(40):
        events = [_event(i, rnd.choice(["purchase", "view", "profile"]), rnd.randint(0, 300),
                         rnd.choice([None, {"tier": "gold"}, {"tier": None}])) for i in range(30)]
        cut = rnd.randint(0, 300) * MIN
        shuffled = audiences[:]
        rnd.shuffle(shuffled)
        one = _engine(shuffled)
        whole, _ = one.advance(one.new_state(), events, MAX_TIME)
        first = _engine(audiences)
        state = first.new_state()
        part1, _ = first.advance(state, [e for e in events if e.ts <= cut], cut)
        second = _engine(shuffled)
        restored = second.load_state(first.dump_state(state))
        part2, _ = second.advance(restored, [e for e in events if e.ts > cut], MAX_TIME)
        assert _by_id(first, part1) + _by_id(second, part2) == _by_id(one, whole)


def test_other_versions_and_corrupt_bytes_are_refused():
    engine = _engine([BUYERS])
    state = engine.new_state()
    engine.advance(state, FIRST, CUT)
    data = engine.dump_state(state)
    document = decode_document(data)
    assert document["version"] == 2 and document["members"] == {"aud-buyers": 8 * MIN}
    with pytest.raises(StateFormatError, match="version 3"):
        engine.load_state(data[:1] + bytes((3,)) + data[2:])
    with pytest.raises(StateFormatError):
        engine.load_state(data[:len(data) // 2])
    with pytest.raises(StateFormatError):
        engine.load_state(b"\x80\x05garbage")
    with pytest.raises(StateFormatError, match="version"):
        engine.state_from_document(dict(document, version=7))
    assert engine.dump_state(engine.load_state(encode_document(document))) == data


def test_backfill_at_a_start_after_the_as_of_waits_for_the_run_that_reaches_it():
    start = 40 * MIN
    engine = Engine(AudienceSet([GOLD]), backfill_starts=[start])
    state = engine.new_state()
    as_of = 30 * MIN
    changes, _ = engine.advance(state, FIRST, as_of)
    assert [c.backfill for c in changes] == [False]      # gold's enter, no backfill
    assert engine.next_wake(state) == start              # pending: counted, kept in the state
    restored = engine.load_state(engine.dump_state(state))
    later, _ = engine.advance(restored, [], 50 * MIN)
    assert [(c.time, c.backfill, c.changes) for c in later] == [(start, True, ((0, "enter", 0),))]


def _version_1_bytes(document):
    """A state as version 1 wrote it: its ten fields (no ``computed``) marshalled."""
    fields = ("version", "clock", "first_ts", "last_ts", "max_received", "traits", "members",
              "audiences", "counts", "seen")
    values = tuple(1 if f == "version" else document[f] for f in fields)
    return b"S" + bytes((1,)) + b"m" + marshal.dumps(values, 2)


def test_a_version_1_state_loads_and_its_computed_traits_start_from_no_events():
    engine = _engine([BUYERS, GOLD])
    state = engine.new_state()
    engine.advance(state, FIRST, CUT)
    old = _version_1_bytes(engine.state_document(state))
    assert decode_document(old)["version"] == 2 and decode_document(old)["computed"] == {}
    # Under the same config: the same state, written back as version 2.
    assert engine.dump_state(engine.load_state(old)) == engine.dump_state(state)
    # Under a config with a computed trait: it starts from no events, the rest goes on.
    computed = ComputedSet({"bought": {"op": "count", "event": "purchase", "within": "1h"}})
    edited = Engine(AudienceSet([BUYERS, GOLD], computed=computed), change_computed=True)
    restored = edited.load_state(old)
    assert edited.computed_values(restored) == {"bought": 0}
    changes, _ = edited.advance(restored, SECOND, MAX_TIME)
    assert edited.computed_values(restored) == {"bought": 0}  # every purchase has left the hour
    # The purchases at 5 and 8 minutes came before the restore: not counted; 20, 70, 75 are.
    assert [(c.time // MIN, c.computed["bought"]) for c in changes] == [(38, 1), (60, 1), (75, 3),
                                                                      (100, 2)]
    fresh = _engine([BUYERS, GOLD])
    expected, _ = fresh.advance(fresh.load_state(old), SECOND, MAX_TIME)
    assert [(c.time, c.changes) for c in changes] == [(c.time, c.changes) for c in expected]


def test_a_snapshot_keeps_computed_entries_and_one_written_before_them_still_reads():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cdp_activation.core.snapshot import SCHEMA, read_snapshot, user_row, write_snapshot
    computed = ComputedSet({"spend": {"op": "sum", "event": "purchase", "property": "price",
                                      "within": "1h"}})
    engine = Engine(AudienceSet([BUYERS], computed=computed), change_computed=True)
    state = engine.new_state()
    events = [ProfileEvent("u", "e1", "purchase", 5 * MIN, 5 * MIN, "u", None, {"price": 2.5}, None),
              ProfileEvent("u", "e2", "purchase", 8 * MIN, 8 * MIN, "u", None, {"price": 4}, None)]
    engine.advance(state, events, CUT)
    document = engine.state_document(state)
    out = io.BytesIO()
    write_snapshot(out, [user_row("user_id", "u", document)], "acme", CUT)
    (_, read, _), = read_snapshot(out.getvalue()).users
    assert read == document and engine.computed_values(engine.state_from_document(read)) == \
        {"spend": 6.5}
    # A file of the layout before computed traits: no computed column, state version 1.
    old_row = dict(user_row("user_id", "u", dict(document, version=1)))
    del old_row["computed"]
    old_schema = pa.schema([f for f in SCHEMA if f.name != "computed"])
    table = pa.Table.from_pylist([old_row], schema=old_schema).replace_schema_metadata(
        {"format": "activation-audience-state", "version": "1", "account": "acme",
         "as_of": str(CUT)})
    old = io.BytesIO()
    pq.write_table(table, old)
    (_, upgraded, _), = read_snapshot(old.getvalue()).users
    assert upgraded == dict(document, computed={})
    assert engine.computed_values(engine.state_from_document(upgraded)) == {"spend": 0}
