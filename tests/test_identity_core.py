"""core.identity: the stitching rules and state operations on hand-written cases."""
import pytest

from cdp_activation.core.conditions import AudienceSet
from cdp_activation.core.engine import Engine, Stats
from cdp_activation.core.identity import (Claim, IdentitySettings, Merge, MergeExit, advance_with_merges,
                           close_anonymous, merge_state, parse_identity, resolve_claims,
                           stitch_histories, winning_claim)
from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.values import ConfigError

MIN = 60 * 1_000_000
T0 = 1_700_000_000 * 1_000_000
AUDIENCES = [
    {"id": "a1", "slug": "buyers2", "condition": {"event": "purchase", "within": "30m",
                                                   "min_count": 2}},
    {"id": "a2", "slug": "viewer", "condition": {"event": "view"}},
    {"id": "a3", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}},
    {"id": "a4", "slug": "views3", "condition": {"event": "view", "min_count": 3}},
]


def engine():
    return Engine(AudienceSet(AUDIENCES))


def ev(event_id, name, minute, user=None, anon=None, traits=None):
    ts = T0 + minute * MIN
    return ProfileEvent(user or anon, event_id, name, ts, ts, user, anon, {}, traits)


def test_parse_identity():
    assert parse_identity(None) == IdentitySettings(stitch=False)
    assert parse_identity({"stitch": True}).stitch is True
    assert parse_identity({}).stitch is False
    with pytest.raises(ConfigError, match=r"identity.stich: unknown key \(did you mean 'stitch'\?\)"):
        parse_identity({"stich": True})
    with pytest.raises(ConfigError, match="identity.stitch: must be true or false"):
        parse_identity({"stitch": "yes"})
    with pytest.raises(ConfigError, match="identity: must be a mapping"):
        parse_identity(["stitch"])


def test_earliest_claim_wins_and_later_claims_by_others_conflict():
    events = [ev("i3", "identify", 10, user="k2", anon="a"),
              ev("i2", "identify", 5, user="k1", anon="a"),
              ev("i1", "identify", 5, user="k1", anon="a"),   # same ts: the smaller event_id
              ev("i4", "identify", 20, user="k1", anon="a")]  # the winner again: no conflict
    winners, identifies, conflicts = resolve_claims(events)
    assert winners["a"] == Claim(T0 + 5 * MIN, "i1", "k1", "a")
    assert identifies["a"].event_id == "i1"
    assert conflicts == [Claim(T0 + 10 * MIN, "i3", "k2", "a")]
    assert winning_claim([]) is None


def test_merge_state_unites_counts_traits_and_times():
    eng = engine()
    known, anon = eng.new_state(), eng.new_state()
    eng.advance(known, [ev("k1", "purchase", 0, user="k", traits={"tier": "gold"}),
                        ev("k2", "view", 1, user="k")], T0 + 2 * MIN)
    eng.advance(anon, [ev("a1", "purchase", -5, anon="a", traits={"tier": "silver", "city": "x"}),
                       ev("a2", "view", -4, anon="a"), ev("a3", "view", -3, anon="a")],
                T0 + 2 * MIN)
    merge_state(eng, known, anon)
    purchases = [i for i, s in enumerate(eng.specs) if s.event == "purchase"][0]
    views = [i for i, s in enumerate(eng.specs) if s.event == "view"]
    assert known.counts[purchases] == sorted([T0 - 5 * MIN, T0])[-eng.caps[purchases]:]
    for i in views:
        assert known.counts[i] == min(3, eng.caps[i])
    assert known.traits == {"tier": "gold", "city": "x"}   # the known value wins
    assert known.first_ts == T0 - 5 * MIN and known.last_ts == T0 + MIN
    assert known.reevaluate == (1 << len(AUDIENCES)) - 1


def test_anonymous_then_known_user():
    """Two anonymous purchases and a view, then a login at minute 10: the anonymous profile's
    'viewer' membership exits at 10 naming the user; the user enters 'buyers2' (the anonymous
    purchases count at their own times) and leaves it when the first one leaves its window."""
    eng = engine()
    events = [ev("a1", "purchase", 0, anon="a"), ev("a2", "purchase", 5, anon="a"),
              ev("a3", "view", 6, anon="a"),
              ev("i1", "identify", 10, user="k", anon="a"),
              ev("a4", "view", 12, anon="a"),          # after the merge: the user's
              ev("k1", "view", 1, user="k")]
    result = stitch_histories(eng, events, T0 + 60 * MIN)
    anon_changes = result.changes[("anonymous_id", "a")]
    assert anon_changes[-1] == MergeExit(T0 + 10 * MIN, ((0, "exit", T0 + 5 * MIN),
                                                         (1, "exit", T0 + 6 * MIN)),
                                         {}, T0, T0 + 6 * MIN, False, None, "k")
    user = [(c.time, c.changes) for c in result.changes[("user_id", "k")]]
    assert user == [
        (T0 + MIN, ((1, "enter", T0 + MIN),)),
        (T0 + 10 * MIN, ((0, "enter", T0 + 10 * MIN),)),
        (T0 + 12 * MIN, ((3, "enter", T0 + 12 * MIN),)),   # views: 1 own, 1 merged, 1 forwarded
        (T0 + 30 * MIN, ((0, "exit", T0 + 10 * MIN),)),     # the merged purchase at 0 leaves
    ]
    assert result.states[("user_id", "k")].first_ts == T0
    assert result.conflicts == []


def test_second_merge_and_a_conflicting_claim():
    eng = engine()
    events = [ev("a1", "view", 0, anon="a"), ev("b1", "view", 1, anon="b"),
              ev("k1", "view", 1, user="k"),
              ev("i1", "identify", 2, user="k", anon="a"),
              ev("i2", "identify", 3, user="k", anon="b"),
              ev("i3", "identify", 4, user="j", anon="a")]   # a is k's already
    result = stitch_histories(eng, events, T0 + 10 * MIN)
    assert [c.merged_into for c in result.changes[("anonymous_id", "a")]
            if isinstance(c, MergeExit)] == ["k"]
    assert [c.merged_into for c in result.changes[("anonymous_id", "b")]
            if isinstance(c, MergeExit)] == ["k"]
    user = [(c.time, c.changes) for c in result.changes[("user_id", "k")]]
    # views: k's own at 1, a's joins at the first merge (2), b's at the second (3)
    assert user == [(T0 + MIN, ((1, "enter", T0 + MIN),)),
                    (T0 + 3 * MIN, ((3, "enter", T0 + 3 * MIN),))]
    assert [c.user_id for c in result.conflicts] == ["j"]
    assert ("user_id", "j") not in result.changes   # j's identify counts for j only
    assert result.states[("user_id", "j")].first_ts == T0 + 4 * MIN


def test_a_late_merge_is_applied_at_the_clock():
    eng = engine()
    anon = eng.new_state()
    _, _, exit_change, after = close_anonymous(eng, anon, [ev("a1", "view", 0, anon="a")],
                                               T0 + 5 * MIN, "k")
    assert exit_change.changes == ((1, "exit", T0),) and after == []
    known = eng.new_state()
    eng.advance(known, [ev("k1", "purchase", 1, user="k")], T0 + 20 * MIN)
    stats = Stats()
    changes, _ = advance_with_merges(
        eng, known, [], [Merge(T0 + 5 * MIN, "a", anon, ev("i1", "identify", 5, user="k",
                                                             anon="a"))],
        T0 + 30 * MIN, stats)
    assert stats.late == 1
    assert [(c.time, c.changes) for c in changes] == [(T0 + 20 * MIN,
                                                       ((1, "enter", T0 + 20 * MIN),))]
