"""Computed traits (core/computed.py): each op, window edges, ties, values that do not qualify,
config errors, conditions on them, and the engine's wake-up when an entry leaves its window."""
import math
from fractions import Fraction

import pytest

from cdp_activation.core.computed import ComputedSet, exact_sum
from cdp_activation.core.conditions import AudienceSet, ConditionError
from cdp_activation.core.config import parse_config
from cdp_activation.core.engine import Engine
from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.values import ConfigError

S = 1_000_000
D = 86400 * S


def ev(eid, ts, props=None, name="purchase"):
    return ProfileEvent("u", eid, name, ts, ts, "u", None, props or {}, None)


def engine_for(computed, audiences=(), **kwargs):
    cset = ComputedSet(computed)
    return Engine(AudienceSet(list(audiences), computed=cset), change_computed=True, **kwargs)


def values_at(computed, events, t):
    engine = engine_for(computed)
    state = engine.new_state()
    engine.advance(state, events, t)
    return engine.computed_values(state)


OPS = {name: {"op": name, "event": "purchase", "property": "price"}
       for name in ("sum", "min", "max", "avg", "first", "last")}
OPS["count"] = {"op": "count", "event": "purchase"}


def test_each_op_over_all_time():
    events = [ev("a", 1 * D, {"price": 10}), ev("b", 2 * D, {"price": 2.5}),
              ev("c", 3 * D, {"price": 7})]
    assert values_at(OPS, events, 10 * D) == {"sum": 19.5, "min": 2.5, "max": 10, "avg": 6.5,
                                              "first": 10, "last": 7, "count": 3}


def test_no_event_gives_zero_count_and_sum_and_absent_others():
    assert values_at(OPS, [ev("x", D, {"price": 1}, name="login")], 2 * D) == {"sum": 0,
                                                                               "count": 0}


@pytest.mark.parametrize("within", ["2d"])
def test_window_is_half_open_ts_le_t_lt_ts_plus_within(within):
    computed = {k: dict(v, within=within) for k, v in OPS.items()}
    events = [ev("a", 1 * D, {"price": 10}), ev("b", 2 * D, {"price": 4})]
    # at 3D - 1us both are in; at 3D the first has left (1D + 2d <= 3D)
    assert values_at(computed, events, 3 * D - 1)["sum"] == 14
    after = values_at(computed, events, 3 * D)
    assert after == {"sum": 4, "min": 4, "max": 4, "avg": 4.0, "first": 4, "last": 4,
                     "count": 1}
    assert values_at(computed, events, 4 * D) == {"sum": 0, "count": 0}


def test_ties_are_ordered_by_ts_then_event_id():
    events = [ev("b", D, {"price": 2}), ev("a", D, {"price": 1}), ev("c", D, {"price": 1.0})]
    values = values_at(OPS, events, 2 * D)
    assert values["first"] == 1 and values["last"] == 1.0
    assert type(values["last"]) is float
    # equal values: min and max keep the earliest event's (a: the int 1)
    assert type(values["min"]) is int


def test_values_that_do_not_qualify_are_ignored_by_that_trait_only():
    events = [ev("a", D, {"price": "12"}), ev("b", D + 1, {"price": True}),
              ev("c", D + 2, {"price": None}), ev("d", D + 3, {}),
              ev("e", D + 4, {"price": float("nan")}), ev("f", D + 5, {"price": 3})]
    values = values_at(OPS, events, 2 * D)
    assert values["count"] == 6                       # count reads no property
    assert values["sum"] == 3 and values["avg"] == 3.0 and values["min"] == 3
    # first/last take any value but null: the string of event a, the number of event f
    assert values["first"] == "12" and values["last"] == 3


def test_sum_is_exact_whatever_the_order():
    values = [0.1] * 10 + [1e16, -1e16]
    assert exact_sum(values) == 1.0
    # an integer beyond 2**53 does not convert to a float exactly: summed as fractions
    assert exact_sum([2 ** 60 + 128, 0.5]) == float(Fraction(2 ** 60 + 128) + Fraction(1, 2))
    assert exact_sum([2 ** 60 + 128, 0.5]) != math.fsum([2 ** 60 + 128, 0.5])
    assert exact_sum([1, 2, 3]) == 6 and type(exact_sum([1, 2])) is int
    events = [ev("e%d" % i, D + i, {"price": v}) for i, v in enumerate(values)]
    computed = {"s": {"op": "sum", "event": "purchase", "property": "price"}}
    forward = values_at(computed, events, 2 * D)
    backward = values_at(computed, list(reversed(events)), 2 * D)
    assert forward == backward == {"s": 1.0}


def test_where_and_dotted_property_and_any_event():
    computed = {"eur": {"op": "sum", "event": "*", "property": "order.total",
                        "where": {"property": "currency", "op": "eq", "value": "EUR"}}}
    events = [ev("a", D, {"order": {"total": 5}, "currency": "EUR"}, name="x"),
              ev("b", D + 1, {"order": {"total": 7}, "currency": "USD"}),
              ev("c", D + 2, {"order": {"total": 1}, "currency": "EUR"})]
    assert values_at(computed, events, 2 * D) == {"eur": 6}


def test_windowed_sum_exits_exactly_when_an_event_leaves_its_window():
    computed = {"spend": {"op": "sum", "event": "purchase", "property": "price", "within": "7d"}}
    audiences = [{"slug": "big", "condition": {"computed": "spend", "op": "gte", "value": 100}}]
    engine = engine_for(computed, audiences)
    state = engine.new_state()
    changes, _ = engine.advance(state, [ev("a", D, {"price": 60}), ev("b", 3 * D, {"price": 50})],
                                3 * D)
    assert [(c.time, c.changes[0][1], c.computed) for c in changes] == [
        (3 * D, "enter", {"spend": 110})]
    # the wake-up is when the 60 leaves: 1D + 7d, with no event after it
    assert engine.next_wake(state) == 8 * D
    changes, _ = engine.advance(state, [], 20 * D)
    assert [(c.time, c.changes[0][1], c.computed) for c in changes] == [
        (8 * D, "exit", {"spend": 50})]
    assert engine.next_wake(state) is None


def test_state_round_trip_keeps_the_entries():
    computed = dict(OPS, w={"op": "sum", "event": "purchase", "property": "price",
                            "within": "3d"})
    engine = engine_for(computed)
    state = engine.new_state()
    engine.advance(state, [ev("a", D, {"price": 1.5}), ev("b", 2 * D, {"price": 4})], 2 * D)
    restored = engine.load_state(engine.dump_state(state))
    assert engine.computed_values(restored) == engine.computed_values(state)
    engine.advance(state, [ev("c", 3 * D, {"price": 2})], 5 * D)
    engine.advance(restored, [ev("c", 3 * D, {"price": 2})], 5 * D)
    assert engine.computed_values(restored) == engine.computed_values(state)


@pytest.mark.parametrize("section,message", [
    ({"x": {"op": "total", "event": "p"}},
     "computed_traits.x.op: unknown operation 'total'; one of count, sum, min, max, avg, first, "
     "last"),
    ({"x": {"op": "summ", "event": "p", "property": "v"}},
     "computed_traits.x.op: unknown operation 'summ' (did you mean 'sum'?); one of count, sum, "
     "min, max, avg, first, last"),
    ({"x": {"op": "sum", "event": "p", "propery": "v"}},
     "computed_traits.x.propery: unknown key (did you mean 'property'?)"),
    ({"x": {"op": "sum", "event": "p"}},
     "computed_traits.x.property: sum needs the name of an event property"),
    ({"x": {"op": "count", "event": "p", "property": "v"}},
     "computed_traits.x.property: count counts events and reads no property; remove it"),
    ({"x": {"op": "count", "event": "p", "within": "7 days"}},
     "computed_traits.x.within: a duration is a positive integer and a unit s, m, h, d or w, "
     "e.g. 7d; got '7 days'"),
    ({"x": {"op": "count"}}, 'computed_traits.x.event: needs an event name, or "*" for any event'),
    ({"9x": {"op": "count", "event": "p"}},
     "computed_traits.9x: a computed trait's name is letters, digits and '_', not starting with "
     "a digit"),
])
def test_bad_definitions_are_one_line_errors_naming_the_path(section, message):
    with pytest.raises(ConfigError) as info:
        parse_config({"computed_traits": section})
    assert str(info.value) == message


def test_unknown_names_in_conditions_and_works_are_config_errors():
    base = {"computed_traits": {"spend": {"op": "sum", "event": "p", "property": "v"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(dict(base, audiences=[{"slug": "a", "condition": {
            "computed": "spent", "op": "gt", "value": 1}}]))
    assert str(info.value) == ("audiences[0].condition.computed: unknown computed trait 'spent' "
                               "(did you mean 'spend'?); known: spend")
    with pytest.raises(ConfigError) as info:
        parse_config(dict(base, works=[{"workflow": "eventhub_audience_export",
                                        "config": {"computed_fields": ["spend", "nope"]}}]))
    assert str(info.value) == ("works[0].config.computed_fields[1]: unknown computed trait "
                               "'nope'; known: spend")
    with pytest.raises(ConfigError) as info:
        parse_config({"works": [{"workflow": "azure_blob_event_export",
                                 "config": {"container": "abc", "computed": ["spend"]}}]})
    assert "unknown computed trait 'spend'; known: none is defined" in str(info.value)
    with pytest.raises(ConditionError):
        AudienceSet([{"slug": "a", "condition": {"computed": "x", "op": "gt", "value": 1}}])


def test_conditions_on_absent_values_follow_the_trait_operators():
    computed = {"avg": {"op": "avg", "event": "purchase", "property": "price"}}
    audiences = [{"slug": "none", "condition": {"computed": "avg", "op": "missing"}},
                 {"slug": "low", "condition": {"computed": "avg", "op": "lt", "value": 10}}]
    engine = engine_for(computed, audiences)
    state = engine.new_state()
    changes, _ = engine.advance(state, [ev("a", D, {}, name="login"),
                                        ev("b", 2 * D, {"price": 4})], 3 * D)
    assert [(c.time, c.changes) for c in changes] == [
        (D, ((0, "enter", D),)), (2 * D, ((0, "exit", D), (1, "enter", 2 * D)))]


def test_blob_computed_columns_in_csv_csv_gz_and_parquet():
    import gzip
    import io

    import pyarrow.parquet as pq

    from cdp_activation.core.export import render_files
    from cdp_activation.core.workflows import BlobSettings

    computed = {"spend": {"op": "sum", "event": "purchase", "property": "price",
                          "within": "1d"},
                "first_sku": {"op": "first", "event": "purchase", "property": "sku"}}
    engine = engine_for(computed, export_computed=["spend", "first_sku"], export_attributes=[])
    _, rows = engine.advance(engine.new_state(), [
        ev("a", D, {"price": 2, "sku": "=x"}), ev("b", D + 1, {"price": 0.5}),
        ev("c", 3 * D, {"price": 1})], 4 * D)
    files = {}
    for fmt in ("csv", "csv.gz", "parquet"):
        settings = BlobSettings(None, "c", "", "events", 24, None, [], [], fmt, 0, None,
                                computed=["spend", "first_sku"])
        rendered = render_files(rows, settings, "acct", "w")
        files[fmt] = rendered["acct_events_w_86400_172800.%s" % fmt]  # the window of day 1
    csv_text = files["csv"].decode()
    assert csv_text.splitlines()[0].endswith(",computed.spend,computed.first_sku")
    # as of each event: 2, then 2.5; the first sku guarded as a formula
    assert [line.split(",")[-2:] for line in csv_text.splitlines()[1:]] == [["2", "'=x"],
                                                                         ["2.5", "'=x"]]
    assert gzip.decompress(files["csv.gz"]).decode() == csv_text
    table = pq.read_table(io.BytesIO(files["parquet"]))
    assert str(table.schema.field("computed.spend").type) == "double"
    assert table.column("computed.spend").to_pylist() == [2.0, 2.5]
