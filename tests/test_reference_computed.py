"""Hand-computed cases proving the brute-force reference's computed traits (tests/reference.py)
right: values at window edges, ties, ignored values, and a windowed sum's exit with its message."""
import json

from tests import reference as R
from tests.datagen import generate
from tests.reference_cases import cfg, ev, spans
from tests.test_reference_outputs_selfcheck import LATER


SPEND = {"spend_3d": {"op": "sum", "event": "purchase", "property": "price", "within": "3d"},
         "avg_price": {"op": "avg", "event": "purchase", "property": "price"},
         "last_sku": {"op": "last", "event": "purchase", "property": "sku"}}


def test_computed_sum_exits_exactly_when_an_event_leaves_its_window_and_is_in_the_message():
    c = cfg([("big", {"computed": "spend_3d", "op": "gte", "value": 100})],
            [{"id": "w-eh", "workflow": "eventhub_audience_export",
              "config": {"computed_fields": ["spend_3d", "avg_price", "last_sku"]}}])
    c["computed_traits"] = SPEND
    lines = [ev("u1", "purchase", "2026-11-01T10:00:00Z", event_id="a",
                properties={"price": 60, "sku": "s1"}),
             ev("u1", "purchase", "2026-11-02T10:00:00Z", event_id="b",
                properties={"price": 40.5, "sku": "s2"}),
             ev("u1", "purchase", "2026-11-02T11:00:00Z", event_id="c",
                properties={"price": "12", "sku": "s3"})]   # a string price: not summed
    assert spans(c, lines) == {"big": [("2026-11-02T10:00:00Z", "2026-11-04T10:00:00Z")]}
    msgs = R.reference_outputs(c, lines, as_of=LATER)["eventhub"]["w-eh"]
    assert [(m["timestamp"], m["data"]["spend_3d"], m["data"]["avg_price"], m["data"]["last_sku"])
            for m in msgs] == [("2026-11-02T10:00:00Z", 100.5, 50.25, "s2"),
                               ("2026-11-04T10:00:00Z", 40.5, 50.25, "s3")]


def test_computed_values_at_each_op_edge():
    events = R.parse_lines([
        ev("u1", "purchase", "2026-11-01T10:00:00Z", event_id="b", properties={"price": 2}),
        ev("u1", "purchase", "2026-11-01T10:00:00Z", event_id="a", properties={"price": 2.0}),
        ev("u1", "purchase", "2026-11-01T11:00:00Z", event_id="c", properties={"price": True}),
        ev("u1", "login", "2026-11-01T12:00:00Z", event_id="d", properties={"price": 9})])[0]
    events.sort(key=lambda e: (e.ts, e.event_id))
    t = R.parse_time("2026-11-02T00:00:00Z")

    def value(op, **kw):
        d = dict({"op": op, "event": "purchase"}, **kw)
        if op != "count":
            d.setdefault("property", "price")
        return R.computed_value(d, events, t)
    assert value("count") == 3                       # the boolean price still counts
    assert value("sum") == 4.0 and type(value("sum")) is float
    assert value("avg") == 2.0 and value("min") == 2.0 and type(value("min")) is float  # a first
    assert value("first") == 2.0 and value("last") is True     # first/last take any value
    assert value("sum", event="*") == 13.0
    assert value("sum", within="12h") == 0 and value("avg", within="12h") is None
    # half-open windows: 10:00 + 14h is the time asked, so that event has left
    assert value("count", within="15h") == 3 and value("count", within="14h") == 1
    assert value("count", within="13h") == 0


def test_generator_covers_every_computed_op():
    config, _lines = generate(3, n_users=20, days=10)
    definitions = config["computed_traits"].values()
    assert {d["op"] for d in definitions} == {"count", "sum", "min", "max", "avg", "first",
                                              "last"}
    assert any("within" in d for d in definitions) and any("within" not in d for d in definitions)
    assert any("where" in d for d in definitions) and any(d["event"] == "*" for d in definitions)
    assert any("." in d.get("property", "") for d in definitions)
    assert '"computed":' in json.dumps(config["audiences"])
    sent = config["works"][0]["config"]["computed_fields"] + config["works"][2]["config"]["computed"]
    assert set(sent) <= set(config["computed_traits"])
