"""Computed traits in the streaming shell under TestStream: a windowed sum's exit comes from the
user's event-time timer when the oldest purchase leaves the window, with no later event, as the
delayed exits of counts do (tests/test_stream_timers.py is the model); the changes carry the
computed values at their time, whatever the arrival order ahead of the watermark."""
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

CONFIG = {
    "account": {"name": "t"},
    "computed_traits": {
        "spend_3d": {"op": "sum", "event": "purchase", "property": "price", "within": "3d"}},
    "audiences": [{"id": "big", "slug": "big",
                   "condition": {"computed": "spend_3d", "op": "gte", "value": 100}}],
    "works": [{"workflow": "eventhub_audience_export", "config": {"computed_fields": ["spend_3d"]}}],
}
DAY = 86400
DAY0 = 20393  # 2025-11-01


def _purchase(day, price):
    return {"user_id": "u1", "event": "purchase", "event_id": "p%s" % day,
            "ts": format_time(int((DAY0 + day) * DAY * 1e6)), "properties": {"price": price}}


def _at(day):
    return format_time(int((DAY0 + day) * DAY * 1e6))


def _run(batches, expected):
    job = parse_config(CONFIG)
    spec = EngineSpec.from_job(job, CONFIG["audiences"])
    stream = TestStream()
    for records, watermark in batches:
        stream = stream.add_elements([
            TimestampedValue(json.dumps(r), parse_time(r["ts"]) / 1e6) for r in records])
        stream = stream.advance_watermark_to((DAY0 + watermark) * DAY)
    stream = stream.advance_watermark_to((DAY0 + 1000) * DAY).advance_watermark_to_infinity()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(options=options, argv=[])
    evaluated = (p | stream | ParseLines())[PROFILE] | GroupUserEventsPerBundle() \
        | EvaluateAudiencesStateful(spec)
    transitions = evaluated.changes | beam.FlatMap(
        lambda kv: [(format_time(c.time), kind, c.computed["spend_3d"])
                    for c in changes_from_wire(kv[1]) for _, kind, _ in c.changes])
    assert_that(transitions, equal_to(expected))
    p.run().wait_until_finish()


EXPECTED = [(_at(2), "enter", 110.5),
            # no event after day 2.5: the 60 of day 1 leaves the 3-day window on day 4
            (_at(4), "exit", 50.5)]


def test_a_windowed_sum_exits_when_the_oldest_purchase_leaves_its_window():
    _run([([_purchase(1, 60)], 1.5), ([_purchase(2, 50.5)], 2.5),
          ([_purchase(2.5, "12")], 3)], EXPECTED)


def test_the_same_transitions_and_values_in_another_arrival_order():
    _run([([_purchase(2.5, "12"), _purchase(2, 50.5), _purchase(1, 60)], 3)], EXPECTED)
