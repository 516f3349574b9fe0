"""The streaming shell under TestStream: event-time order, delayed triggers, late data."""
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from cdp_activation.core.config import parse_config
from cdp_activation.core.timeutil import format_time, parse_time
from cdp_activation.transforms.audiences import (EngineSpec, EvaluateAudiencesStateful, GroupUserEventsPerBundle,
                                  changes_from_wire)
from cdp_activation.transforms.read import PROFILE, ParseLines

AUDIENCES = [
    {"id": "fb", "slug": "frequent_buyers",
     "condition": {"event": "purchase", "within": "7d", "min_count": 3}},
    {"id": "gold", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}},
]
DAY = 86400
#: Day numbers count from this day (2025-11-01): the job dead-letters a ts before 2000.
DAY0 = 20393


def _event(user, name, day, **extra):
    record = {"user_id": user, "event": name, "ts": format_time(int((DAY0 + day) * DAY * 1e6)),
              "event_id": "%s-%s-%s" % (user, name, day)}
    record.update(extra)
    return record


def _transitions(changes):
    (key_field, key), change = changes
    return tuple((key, format_time(change.time), AUDIENCES[a]["slug"], kind)
                 for a, kind, _ in change.changes)


def _run(batches, late_counter=None):
    """Feeds batches of (records, watermark_after) through TestStream; returns the transitions."""
    job = parse_config({"account": {"name": "t"}, "audiences": AUDIENCES, "works": []})
    spec = EngineSpec.from_job(job, AUDIENCES)
    stream = TestStream()
    for records, watermark in batches:
        stream = stream.add_elements([
            TimestampedValue(json.dumps(r), parse_time(r["ts"]) / 1e6) for r in records])
        if watermark is not None:
            stream = stream.advance_watermark_to((DAY0 + watermark) * DAY)
    # Past every delayed trigger first, as beam-local.md advises, then to infinity.
    stream = stream.advance_watermark_to((DAY0 + 1000) * DAY).advance_watermark_to_infinity()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(options=options, argv=[])
    parsed = p | stream | ParseLines()
    evaluated = (parsed[PROFILE] | GroupUserEventsPerBundle()
                 | EvaluateAudiencesStateful(spec))
    transitions = evaluated.changes | beam.FlatMap(
        lambda kv: [t for c in changes_from_wire(kv[1]) for t in _transitions((kv[0], c))])
    return p, transitions


def _collect(batches, expected):
    """Runs the pipeline, asserting inside it that the transitions equal ``expected``."""
    p, transitions = _run(batches)
    assert_that(transitions, equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    return result


PURCHASES = [_event("u1", "visit", 1, traits={"tier": "gold"}),
             _event("u1", "purchase", 2), _event("u1", "purchase", 3), _event("u1", "purchase", 4)]
EXPECTED = sorted([
    ("u1", format_time((DAY0 + 1) * DAY * 10**6), "gold", "enter"),
    ("u1", format_time((DAY0 + 4) * DAY * 10**6), "frequent_buyers", "enter"),
    # the delayed trigger: the purchase of day 2 leaves the 7-day window on day 9
    ("u1", format_time((DAY0 + 9) * DAY * 10**6), "frequent_buyers", "exit"),
])


def test_in_order_events_give_exact_delayed_exit():
    _collect([(PURCHASES, 5)], EXPECTED)


def test_out_of_order_ahead_of_watermark_gives_same_transitions():
    shuffled = [PURCHASES[3], PURCHASES[1], PURCHASES[0], PURCHASES[2]]
    _collect([(shuffled[:2], None), (shuffled[2:], 5)], EXPECTED)


def test_late_event_is_applied_and_counted_not_dropped():
    # Purchases on days 2, 2.5 and 4 make the user enter on day 4 and exit on day 9 (day 2 leaves
    # the 7-day window). The watermark passes day 20 before the day-3 purchase arrives, so by then
    # the user was evaluated up to day 9 and the purchase is late: it is applied at the user's clock
    # (day 9), where its window [3, 10) still covers it, so the count goes 2 -> 3 and the user
    # re-enters at day 9, then exits at day 9.5 when the day-2.5 purchase leaves the window.
    early = [PURCHASES[0], PURCHASES[1], PURCHASES[3], _event("u1", "purchase", 2.5)]
    t = lambda day: format_time(int((DAY0 + day) * DAY * 10**6))
    expected = [("u1", t(1), "gold", "enter"),
                ("u1", t(4), "frequent_buyers", "enter"),
                ("u1", t(9), "frequent_buyers", "exit"),
                ("u1", t(9), "frequent_buyers", "enter"),
                ("u1", t(9.5), "frequent_buyers", "exit")]
    # The transitions at day 9 exist only if the late purchase was applied. (The late *count* is
    # checked on the engine in test_engine.py: the BundleBasedDirectRunner that runs TestStream
    # drops the metrics of bundles after a watermark advance, so they cannot be read here.)
    _collect([(early, 20), ([PURCHASES[2]], None)], expected)


def test_microsecond_event_times_do_not_stall_millisecond_timers():
    # Event times with microseconds (runners keep timers in milliseconds): the exit is still at
    # exactly ts + 7d of the purchase that leaves the window.
    us = 654321
    events = [dict(_event("u2", "purchase", d), ts=format_time(int((DAY0 + d) * DAY * 10**6) + us))
              for d in (2, 3, 4)]
    t = lambda day: format_time(int((DAY0 + day) * DAY * 10**6) + us)
    _collect([(events, 5)], [("u2", t(4), "frequent_buyers", "enter"),
                             ("u2", t(9), "frequent_buyers", "exit")])


class _Bag:
    def __init__(self):
        self.items = []

    def add(self, value):
        self.items.append(value)

    def read(self):
        return list(self.items)

    def clear(self):
        self.items = []


class _Value:
    def __init__(self):
        self.value, self.reads = None, 0

    def read(self):
        self.reads += 1
        return self.value

    def write(self, value):
        self.value = value


class _Timer:
    def __init__(self):
        self.at = None

    def set(self, at):
        self.at = at

    def clear(self):
        self.at = None


def test_batch_wake_up_keeps_state_in_the_bag_and_a_group_after_it_is_late():
    """Batch execution: one wake-up evaluates everything without reading USER; a group that still
    comes after it (no runner does this, but nothing may be lost) is applied as late."""
    from apache_beam.utils.timestamp import Timestamp

    from cdp_activation.core.blocks import pack_rows
    from cdp_activation.core.records import parse_record
    from cdp_activation.transforms.audiences import _EvaluateStatefulFn
    job = parse_config({"account": {"name": "t"}, "audiences": AUDIENCES, "works": []})
    fn = _EvaluateStatefulFn(EngineSpec.from_job(job, AUDIENCES), complete_when_timers_fire=True)
    fn.setup()
    late = []
    fn._metrics._late = type("Counter", (), {"inc": lambda self, n=1: late.append(n)})()
    user_state, bag, timer = _Value(), _Bag(), _Timer()
    key = ("user_id", "u1")

    def feed(records):
        rows = [tuple(parse_record(json.dumps(r))) for r in records]
        ts = Timestamp(micros=min(r[3] for r in rows))
        list(fn.process((key, pack_rows(rows)), ts, user_state, bag, timer))

    def changes(outputs):
        return [t for element in outputs if not hasattr(element, "tag")
                for wire in [element.value[1] if hasattr(element, "windows") else element[1]]
                for c in changes_from_wire(wire) for t in _transitions((key, c))]

    def wake():
        fn.start_bundle()
        out = list(fn.wake_up(key, Timestamp(micros=timer.at.micros), user_state, bag, timer))
        return changes(out)

    try:
        feed(PURCHASES[:2])
        feed(PURCHASES[2:])
        assert timer.at is not None and user_state.reads == 0
        first = wake()
        assert sorted(first) == EXPECTED
        assert user_state.reads == 0 and user_state.value is None
        assert [b[:1] for b in bag.items] == [b"s"]  # only the user's state waits in the bag
        feed([_event("u1", "visit", 20, traits={"tier": "silver"})])
        second = wake()
        assert late == [1]
        # Applied at the user's clock, the end of time: gold is left then.
        assert [(k, audience, kind) for k, _, audience, kind in second] == [("u1", "gold", "exit")]
        assert [b[:1] for b in bag.items] == [b"s"]
    finally:
        fn.teardown()
