"""core.identity_stream: stage A's decisions (which claim wins, what goes where, what a cancel
voids, late claims) and stage K's (what a wake-up applies, A's state rebuilt at the merge), on
hand-written cases, and every order of a few claims against core.identity.resolve_claims."""
import itertools

from cdp_activation.core.conditions import AudienceSet
from cdp_activation.core.engine import Engine
from cdp_activation.core.identity import resolve_claims
from cdp_activation.core.identity_stream import (CANCEL, FORWARD, MERGE, AnonymousLink, LinkEntry, finalize,
                                  rebuild_anonymous, route_rows, take_claim, take_due)
from cdp_activation.core.records import ProfileEvent

MIN = 60 * 1_000_000
BASE = 1_795_132_800_000_000   # 2026-11-20T00:00:00Z
AUDIENCES = [{"id": "a1", "slug": "buyers2",
              "condition": {"event": "purchase", "within": "30m", "min_count": 2}}]


def row(eid, minute, user=None, anon="a1", event=None):
    event = event or ("identify" if user else "purchase")
    return tuple(ProfileEvent(user or anon, eid, event, BASE + minute * MIN, BASE + minute * MIN,
                              user, anon, {}, None))


def claim(eid, minute, user):
    return row(eid, minute, user)


def _no_wait():
    raise AssertionError("pending rows read for a claim that does not win")


def _state():
    return b"STATE"


def test_no_link_keeps_every_row():
    link = AnonymousLink()
    rows = [row("p1", 1), row("p2", 50)]
    assert route_rows(link, rows) == (rows, [])


def test_first_claim_sends_the_merge_in_and_moves_the_rows_from_the_merge_time():
    link = AnonymousLink()
    pending = [row("p1", 1), row("p2", 50)]
    out = take_claim(link, claim("i1", 20, "k1"), BASE, lambda: pending, _state)
    merge, forward = out.sends
    assert (merge.kind, merge.user_id, merge.link, merge.timestamp, merge.rows, merge.state) == (
        MERGE, "k1", ("a1", BASE + 20 * MIN, "i1"), BASE + 20 * MIN, (row("p1", 1),), b"STATE")
    assert (forward.kind, forward.user_id, forward.timestamp, forward.rows) == (
        FORWARD, "k1", BASE + 50 * MIN, (row("p2", 50),))
    assert out.keep == [row("p1", 1)] and not out.late and out.conflicts == []
    assert link.forwarded == [row("p2", 50)] and link.at == BASE + 20 * MIN


def test_rows_after_the_link_a_piece_before_the_merge_time_forwarded_after():
    link = AnonymousLink()
    take_claim(link, claim("i1", 20, "k1"), BASE, lambda: [], _state)
    keep, sends = route_rows(link, [row("p0", 5), row("p3", 30)])
    assert keep == [row("p0", 5)]
    piece, forward = sends
    assert (piece.kind, piece.timestamp, piece.state, piece.rows) == (
        MERGE, BASE + 20 * MIN, None, (row("p0", 5),))
    assert (forward.kind, forward.timestamp, forward.rows) == (
        FORWARD, BASE + 30 * MIN, (row("p3", 30),))
    assert link.forwarded == [row("p3", 30)]


def test_a_later_claim_of_the_same_user_changes_nothing():
    link = AnonymousLink()
    take_claim(link, claim("i1", 20, "k1"), BASE, lambda: [], _state)
    out = take_claim(link, claim("i2", 40, "k1"), BASE, _no_wait, _state)
    assert out.sends == [] and out.keep is None
    assert finalize(link) == []


def test_a_later_claim_of_another_user_is_a_conflict_when_the_link_is_final():
    link = AnonymousLink()
    take_claim(link, claim("i1", 20, "k1"), BASE, lambda: [], _state)
    out = take_claim(link, claim("i2", 40, "k2"), BASE, _no_wait, _state)
    assert out.sends == [] and out.conflicts == []
    assert finalize(link) == [claim("i2", 40, "k2")]
    assert link.final and link.forwarded == [] and link.losers == []


def test_an_earlier_claim_of_another_user_cancels_the_link_and_takes_what_it_forwarded():
    link = AnonymousLink()
    take_claim(link, claim("i1", 20, "k1"), BASE, lambda: [], _state)
    route_rows(link, [row("p3", 30)])
    pending = [row("p0", 5), row("p1", 12)]
    out = take_claim(link, claim("i0", 10, "k2"), BASE, lambda: pending, _state)
    merge, cancel, forward = out.sends
    assert (merge.kind, merge.user_id, merge.link, merge.rows) == (
        MERGE, "k2", ("a1", BASE + 10 * MIN, "i0"), (row("p0", 5),))
    assert (cancel.kind, cancel.user_id, cancel.link, cancel.timestamp) == (
        CANCEL, "k1", ("a1", BASE + 20 * MIN, "i1"), BASE + 10 * MIN)
    assert (forward.kind, forward.user_id, forward.timestamp, forward.rows) == (
        FORWARD, "k2", BASE + 12 * MIN, (row("p1", 12), row("p3", 30)))
    assert out.keep == [row("p0", 5)]
    assert finalize(link) == [claim("i1", 20, "k1")]


def test_an_earlier_claim_of_the_same_user_moves_the_merge_time():
    link = AnonymousLink()
    take_claim(link, claim("i1", 20, "k1"), BASE, lambda: [], _state)
    out = take_claim(link, claim("i0", 10, "k1"), BASE, lambda: [], _state)
    assert [(s.kind, s.user_id, s.link[1]) for s in out.sends] == [
        (MERGE, "k1", BASE + 10 * MIN), (CANCEL, "k1", BASE + 20 * MIN)]
    assert finalize(link) == []


def test_a_claim_dead_lettered_only_against_the_final_winner():
    """i2 (k1) wins first and i3 (k2) loses to it; then i1 (k2) wins: k1's claim is the conflict,
    k2's later claim is not (the final winner is k2's)."""
    link = AnonymousLink()
    for c in (claim("i2", 20, "k1"), claim("i3", 30, "k2"), claim("i1", 10, "k2")):
        take_claim(link, c, BASE, lambda: [], _state)
    assert finalize(link) == [claim("i2", 20, "k1")]


def test_every_order_of_the_claims_gives_the_whole_history_winner_and_conflicts():
    claims = [claim("i2", 20, "k1"), claim("i3", 30, "k2"), claim("i1", 10, "k2"),
              claim("i0", 10, "k3"), claim("i2", 20, "k1")]   # a copy of i2 too
    winners, _identifies, conflicts = resolve_claims(ProfileEvent._make(c) for c in claims)
    want = sorted((c.user_id, c.event_id) for c in conflicts)
    for order in itertools.permutations(claims):
        link = AnonymousLink()
        for c in order:
            take_claim(link, c, BASE, lambda: [], _state)
        got = finalize(link)
        assert link.claim == winners["a1"], order
        assert sorted((c[5], c[1]) for c in got) == want, order


def test_claims_after_the_link_is_final_are_late():
    link = AnonymousLink()
    take_claim(link, claim("i1", 20, "k1"), BASE, lambda: [], _state)
    finalize(link)
    clock = BASE + 25 * MIN
    out = take_claim(link, claim("i0", 10, "k2"), clock, _no_wait, _state)
    assert out.late and out.sends == [] and out.conflicts == [claim("i0", 10, "k2")]
    again = take_claim(link, claim("i0", 10, "k2"), clock, _no_wait, _state)
    assert again.conflicts == []   # once per user and event_id
    loser = take_claim(link, claim("i7", 70, "k3"), clock, _no_wait, _state)
    assert not loser.late and loser.conflicts == [claim("i7", 70, "k3")]
    same = take_claim(link, claim("i9", 5, "k1"), clock, _no_wait, _state)
    assert same.late and same.conflicts == [] and link.claim.event_id == "i1"
    keep, sends = route_rows(link, [row("p0", 2), row("p9", 90)])
    assert keep == [] and [(s.kind, s.rows) for s in sends] == [
        (FORWARD, (row("p0", 2), row("p9", 90)))]
    assert link.forwarded == []


def test_a_late_claim_never_moves_a_link_and_with_none_links_after_the_clock():
    link = AnonymousLink()
    clock = BASE + 30 * MIN
    out = take_claim(link, claim("i1", 20, "k1"), clock, lambda: [row("p1", 40)], _state)
    assert out.late and out.sends[0].link == ("a1", clock + 1, "i1")
    assert out.sends[0].timestamp == clock + 1
    later = take_claim(link, claim("i0", 10, "k2"), clock, _no_wait, _state)
    assert later.late and later.sends == []
    assert finalize(link) == [claim("i0", 10, "k2")]


def test_a_wake_up_applies_what_is_due_and_drops_cancelled_links():
    m1, m2 = ("a1", BASE + 10 * MIN, "i1"), ("a2", BASE + 10 * MIN, "i2")
    gone = ("a3", BASE + 5 * MIN, "i3")
    later = ("a4", BASE + 50 * MIN, "i4")
    orphan = ("a5", BASE + 8 * MIN, "i5")
    entries = [
        LinkEntry(MERGE, m2, b"S2", ()),
        LinkEntry(MERGE, m1, None, (row("p1", 3, anon="a1"),)),
        LinkEntry(MERGE, m1, b"S1", (row("p0", 2, anon="a1"),)),
        LinkEntry(FORWARD, m1, None, (row("f1", 15, anon="a1"), row("f2", 40, anon="a1"))),
        LinkEntry(MERGE, gone, b"S3", ()),
        LinkEntry(FORWARD, gone, None, (row("g1", 6, anon="a3"),)),
        LinkEntry(MERGE, later, b"S4", ()),
        LinkEntry(MERGE, orphan, None, (row("o1", 7, anon="a5"),)),
    ]
    due = take_due(entries, {gone}, BASE + 20 * MIN)
    assert due.dropped == 2
    assert [(link, state, rows) for link, state, rows in due.merges] == [
        (m1, b"S1", [row("p1", 3, anon="a1"), row("p0", 2, anon="a1")]), (m2, b"S2", [])]
    assert due.forwarded == [row("f1", 15, anon="a1"), row("o1", 7, anon="a5")]
    assert due.waiting == [LinkEntry(FORWARD, m1, None, (row("f2", 40, anon="a1"),)),
                           LinkEntry(MERGE, later, b"S4", ())]
    assert [e.time for e in due.waiting] == [BASE + 40 * MIN, BASE + 50 * MIN]


def test_a_state_rebuilt_at_the_merge_is_the_state_advanced_over_every_row():
    engine = Engine(AudienceSet(AUDIENCES))
    first = engine.new_state()
    engine.advance(first, [ProfileEvent._make(row("p1", 1))], BASE + 2 * MIN)
    pieces = [ProfileEvent._make(row("p2", 5)), ProfileEvent._make(row("p3", 8))]
    rebuilt = rebuild_anonymous(engine, engine.dump_state(first), pieces, BASE + 10 * MIN)
    whole = engine.new_state()
    engine.advance(whole, [ProfileEvent._make(row(e, m)) for e, m in
                           (("p1", 1), ("p2", 5), ("p3", 8))], BASE + 10 * MIN - 1)
    assert engine.dump_state(rebuilt) == engine.dump_state(whole)
    assert rebuilt.clock == BASE + 10 * MIN - 1
