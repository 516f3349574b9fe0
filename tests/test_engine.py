"""The incremental engine against a brute-force re-evaluation, on random event histories."""
import random

from hypothesis import given, settings, strategies as st

from cdp_activation.core.conditions import AudienceSet
from cdp_activation.core.engine import Engine, Stats
from cdp_activation.core.records import ProfileEvent, dedupe_first_copies
from tests.engine_audiences import AUDIENCES

MIN = 60 * 1_000_000


def _counts_for(spec, event):
    return spec.event in ("*", event.event)


def brute_force(audience_set, events):
    """Transitions by recomputing everything at every evaluation point."""
    events = _dedupe(events)
    events.sort(key=lambda e: (e.ts, e.event_id))
    if not events:
        return []
    points = {e.ts for e in events}
    for spec in audience_set.specs:
        if spec.within is not None:
            points.update(e.ts + spec.within for e in events if _counts_for(spec, e))
    members = [None] * len(audience_set.audiences)
    out = []
    for t in sorted(points):
        traits = {}
        for e in events:
            if e.ts <= t and e.traits:
                for k, v in e.traits.items():
                    if v is None:
                        traits.pop(k, None)
                    else:
                        traits[k] = v
        counts = []
        for spec in audience_set.specs:
            n = sum(1 for e in events if _counts_for(spec, e) and e.ts <= t
                    and (spec.within is None or t < e.ts + spec.within)
                    and (spec.where is None or spec.where(e.properties)))
            counts.append(n)
        present = [m is not None for m in members]
        changed = []
        for i in audience_set.order:
            now = audience_set.audiences[i].holds(traits, counts, present)
            if now != present[i]:
                present[i] = now
                changed.append((i, "enter" if now else "exit", t if now else members[i]))
                members[i] = t if now else None
        if changed:
            out.append((t, tuple(sorted(changed))))
    return out


def _dedupe(events):
    by_id = {}
    for e in events:
        by_id.setdefault(e.event_id, []).append(e)
    kept = []
    for copies in by_id.values():
        copies.sort(key=lambda e: (e.received_at, e.ts))
        kept.extend(copies[i] for i in dedupe_first_copies([c.received_at for c in copies]))
    return kept


def _event(i, name, minute, props=None, traits=None, received_delay=0, event_id=None):
    ts = minute * MIN
    return ProfileEvent("u", event_id or "e%04d" % i, name, ts, ts + received_delay, "u", None,
                        props or {}, traits)


event_strategy = st.tuples(
    st.sampled_from(["purchase", "view", "email_open", "profile"]),
    st.integers(0, 180),
    st.sampled_from([None, 5, 15, 50]),
    st.sampled_from([None, "Sale now", "Hello"]),
    st.sampled_from([None, {"tier": "gold"}, {"tier": "silver"}, {"tier": None}, {"score": 7},
                     {"score": 2, "tier": "platinum"}]),
)


def _events_from(draws):
    events = []
    for i, (name, minute, price, subject, traits) in enumerate(draws):
        props = {}
        if price is not None:
            props["price"] = price
        if subject is not None:
            props["subject"] = subject
        events.append(_event(i, name, minute, props, traits))
    return events


def _engine_changes(engine, chunks):
    state = engine.new_state()
    out = []
    for events, until in chunks:
        changes, _ = engine.advance(state, events, until)
        out.extend((c.time, c.changes) for c in changes)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_engine_equals_brute_force_in_any_chunking(draws, rnd):
    audience_set = AudienceSet(AUDIENCES)
    engine = Engine(audience_set)
    events = _events_from(draws)
    expected = brute_force(audience_set, events)
    # All at once, as the replay does.
    assert _engine_changes(engine, [(events, 2 ** 62)]) == expected
    # In watermark-ordered chunks, as the streaming DoFn does: each chunk holds events up to a
    # cut (shuffled), then the engine advances to the cut.
    cuts = sorted(rnd.sample(range(0, 200), 4)) + [2 ** 62 // MIN]
    chunks, remaining = [], sorted(events, key=lambda e: e.ts)
    for cut in cuts:
        chunk = [e for e in remaining if e.ts <= cut * MIN]
        remaining = [e for e in remaining if e.ts > cut * MIN]
        rnd.shuffle(chunk)
        chunks.append((chunk, cut * MIN))
    assert _engine_changes(engine, chunks) == expected


def test_delayed_exit_is_exactly_ts_plus_within_of_the_event_leaving():
    audience_set = AudienceSet(AUDIENCES[:1])
    engine = Engine(audience_set)
    events = [_event(i, "purchase", m) for i, m in enumerate([0, 7, 9, 12])]
    changes = _engine_changes(engine, [(events, 2 ** 62)])
    # count reaches 3 at minute 9; the 3rd most recent at minute 12 is minute 7: exit at 7 + 30.
    assert changes == [(9 * MIN, ((0, "enter", 9 * MIN),)), (37 * MIN, ((0, "exit", 9 * MIN),))]


def test_any_event_counts_every_name_so_inactivity_needs_no_list():
    audience_set = AudienceSet([
        {"slug": "inactive", "condition": {"not": {"event": "*", "within": "30m"}}},
        {"slug": "busy", "condition": {"event": "*", "within": "10m", "min_count": 3}}])
    engine = Engine(audience_set)
    events = [_event(0, "view", 0), _event(1, "login", 4), _event(2, "purchase", 8),
              _event(3, "email_open", 50), _event(3, "email_open", 50)]  # a copy counts once
    changes = _engine_changes(engine, [(events, 2 ** 62)])
    # busy: three events of three names by minute 8, until the first leaves at 0 + 10.
    # inactive: no event from 8 + 30 until 50, and none after 50 + 30.
    assert changes == [(8 * MIN, ((1, "enter", 8 * MIN),)), (10 * MIN, ((1, "exit", 8 * MIN),)),
                       (38 * MIN, ((0, "enter", 38 * MIN),)), (50 * MIN, ((0, "exit", 38 * MIN),)),
                       (80 * MIN, ((0, "enter", 80 * MIN),))]


def test_wakes_only_for_expiries_that_cross_a_threshold():
    audience_set = AudienceSet(AUDIENCES[:1])
    engine = Engine(audience_set)
    state = engine.new_state()
    # Ten purchases: only the three most recent are kept and only one wake-up is due.
    engine.advance(state, [_event(i, "purchase", i) for i in range(10)], 10 * MIN)
    assert state.counts[0] == [7 * MIN, 8 * MIN, 9 * MIN]
    assert engine.next_wake(state) == 37 * MIN


def test_all_time_count_is_a_saturating_counter():
    audience_set = AudienceSet([{"slug": "x", "condition": {"event": "view", "min_count": 2}}])
    engine = Engine(audience_set)
    state = engine.new_state()
    engine.advance(state, [_event(i, "view", i) for i in range(50)], 2 ** 62)
    assert state.counts == [2]


def test_duplicates_within_24h_count_once_and_after_24h_again():
    audience_set = AudienceSet([{"slug": "two", "condition": {"event": "view", "min_count": 2}}])
    engine = Engine(audience_set)
    day = 24 * 60
    first = _event(0, "view", 0, event_id="same")
    again = _event(0, "view", 0, event_id="same", received_delay=(day - 1) * MIN)
    later = _event(0, "view", 0, event_id="same", received_delay=day * MIN)
    stats = Stats()
    changes, _ = engine.advance(engine.new_state(), [again, first], 2 ** 62, stats)
    assert changes == [] and stats.duplicates == 1
    stats = Stats()
    changes, _ = engine.advance(engine.new_state(), [first, later], 2 ** 62, stats)
    assert [c.changes[0][1] for c in changes] == ["enter"] and stats.duplicates == 0


def test_late_event_is_applied_at_the_clock_and_counted():
    audience_set = AudienceSet(AUDIENCES[:1])
    engine = Engine(audience_set)
    state = engine.new_state()
    engine.advance(state, [_event(i, "purchase", m) for i, m in enumerate([0, 5])], 60 * MIN)
    stats = Stats()
    changes, _ = engine.advance(state, [_event(9, "purchase", 40)], 60 * MIN, stats)
    assert stats.late == 1
    # The clock is minute 60 (the caller said everything up to 60 had arrived). The minute-40
    # purchase still counts at 60 (its window runs to 70), but minutes 0 and 5 have left theirs,
    # so nothing changes; a second late purchase makes... still only 2 in the window: no enter.
    assert changes == []
    changes, _ = engine.advance(state, [_event(10, "purchase", 45), _event(11, "purchase", 50)],
                                60 * MIN, stats)
    assert stats.late == 3
    assert [(c.time, c.changes[0][1]) for c in changes] == [(60 * MIN, "enter")]


def test_backfill_snapshot_lists_memberships_as_of_just_before_start():
    audience_set = AudienceSet(AUDIENCES[:1])
    engine = Engine(audience_set, backfill_starts=[20 * MIN])
    events = [_event(i, "purchase", m) for i, m in enumerate([0, 1, 2])]
    state = engine.new_state()
    changes, _ = engine.advance(state, events, 2 ** 62)
    kinds = [(c.time, c.backfill, c.changes) for c in changes]
    assert kinds == [(2 * MIN, False, ((0, "enter", 2 * MIN),)),
                     (20 * MIN, True, ((0, "enter", 2 * MIN),)),
                     (30 * MIN, False, ((0, "exit", 2 * MIN),))]


def test_state_round_trips_and_stays_small():
    audience_set = AudienceSet(AUDIENCES)
    engine = Engine(audience_set, export_attributes=None)
    state = engine.new_state()
    rnd = random.Random(3)
    # The benchmark's shape: about 50 events over 40 days.
    events = [_event(i, rnd.choice(["purchase", "view", "email_open"]), rnd.randint(0, 40 * 1440),
                     {"price": rnd.choice([5, 50])}, rnd.choice([None, {"tier": "gold"}]))
              for i in range(50)]
    engine.advance(state, events, 40 * 1440 * MIN)
    data = engine.dump_state(state)
    assert len(data) < 1024
    again = engine.load_state(data)
    assert engine.dump_state(again) == data


def test_copies_are_deduplicated_even_when_pruning_falls_between_them():
    # Regression (found by the random acceptance test): one early event received days late pushes
    # max_received ahead; 31 distinct events fill the dedupe map so that the first copy of a record
    # makes it reach a pruning size. Pruning must not forget that copy before its twin is checked.
    audience_set = AudienceSet([{"slug": "twice", "condition": {"event": "view", "min_count": 2}}])
    engine = Engine(audience_set)
    day = 24 * 60 * MIN
    events = [_event(0, "profile", 0, received_delay=5 * day)]
    events += [_event(i, "profile", i) for i in range(1, 31)]
    first = _event(99, "view", 100, event_id="dup")
    second = _event(99, "view", 100, event_id="dup", received_delay=int(11.8 * 60) * MIN)
    stats = Stats()
    changes, _ = engine.advance(engine.new_state(), events + [second, first], 2 ** 62, stats)
    assert stats.duplicates == 1
    assert changes == [c for c in changes if c.changes[0][0] != 0]  # never counted twice: no enter
