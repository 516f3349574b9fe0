import pytest

from cdp_activation.core.conditions import AudienceSet, ConditionError, compile_where


def holds_for(condition, traits=None, counts=None):
    audiences = AudienceSet([{"slug": "a", "condition": condition}])
    n = len(audiences.specs)
    return audiences.audiences[0].holds(traits or {}, counts or [0] * n, [False])


@pytest.mark.parametrize("op,value,actual,expected", [
    ("eq", "US", "US", True), ("eq", "US", "us", False), ("eq", 1, 1.0, True), ("eq", 1, True, False),
    ("eq", "1", 1, False), ("ne", "US", "FR", True), ("ne", "US", "US", False), ("ne", "US", None, False),
    ("ne", "US", 5, False), ("gt", 10, 11, True), ("gt", 10, 10, False), ("gte", 10, 10, True),
    ("lt", 10, 9.5, True), ("lte", 10, 10, True), ("gt", 10, "11", False),
    ("gt", "2026-01-01", "2026-02-01", True), ("in", ["a", "b"], "a", True), ("in", ["a"], "c", False),
    ("in", [1, 2], 2.0, True), ("not_in", ["a"], "c", True), ("not_in", ["a"], "a", False),
    ("not_in", ["a"], None, False), ("not_in", ["a"], 5, False), ("not_in", [1, "a"], 2.5, True), ("contains", "ell", "hello", True), ("contains", "x", "hello", False),
    ("contains", "b", ["a", "b"], True), ("contains", 2, [1, 2], True), ("contains", "a", 5, False),
    ("starts_with", "he", "hello", True), ("starts_with", "lo", "hello", False),
    ("ends_with", "lo", "hello", True), ("ends_with", "he", 5, False), ("exists", None, 0, True),
    ("exists", None, None, False), ("missing", None, None, True), ("missing", None, "", False),
    ("matches", r"^\d{3}$", "123", True), ("matches", r"\d", "abc", False), ("matches", "a", 5, False),
])
def test_trait_operators(op, value, actual, expected):
    traits = {} if actual is None else {"t": actual}
    assert holds_for({"trait": "t", "op": op, "value": value}, traits) is expected


def test_where_on_properties_and_dotted_paths():
    where = compile_where({"and": [{"property": "price", "op": "gte", "value": 10},
                                   {"not": {"property": "item.sku", "op": "starts_with", "value": "X"}}]},
                          "w")
    assert where({"price": 12, "item": {"sku": "A1"}})
    assert not where({"price": 12, "item": {"sku": "X1"}})
    assert not where({"price": "12"})


def test_event_counts_min_max_and_sharing():
    audiences = AudienceSet([
        {"slug": "a", "condition": {"event": "p", "within": "7d", "min_count": 3}},
        {"slug": "b", "condition": {"event": "p", "within": "7d", "min_count": 1, "max_count": 4}},
        {"slug": "c", "condition": {"event": "p"}}])
    assert len(audiences.specs) == 2          # a and b share one (event, where, within) spec
    assert audiences.caps == [5, 1]           # a needs 3, b needs max+1 = 5; c needs 1
    holds = [a.holds for a in audiences.audiences]
    assert [h({}, [3, 0], [False] * 3) for h in holds] == [True, True, False]
    assert [h({}, [5, 1], [False] * 3) for h in holds] == [True, False, True]


@pytest.mark.parametrize("condition,path", [
    ({"trait": "x", "op": "like", "value": 1}, "audiences[0].condition.op"),
    ({"trait": "x", "op": "in", "value": "a"}, "audiences[0].condition.value"),
    ({"trait": "x", "op": "matches", "value": "("}, "audiences[0].condition.value"),
    ({"event": "p", "within": "7 days"}, "audiences[0].condition.within"),
    ({"event": "p", "min_count": -1}, "audiences[0].condition.min_count"),
    ({"event": "p", "min_count": 3, "max_count": 2}, "audiences[0].condition.max_count"),
    ({"and": []}, "audiences[0].condition.and"),
    ({"or": [{"trait": "x", "op": "eq", "value": 1}, {"bogus": 1}]}, "audiences[0].condition.or[1].bogus"),
    ({"audience": "nope"}, "audiences[0].condition.audience"),
    ({"event": "p", "where": {"property": "x", "op": "gt", "value": None}}, "audiences[0].condition.where.value"),
])
def test_bad_conditions_name_their_path(condition, path):
    with pytest.raises(ConditionError) as info:
        AudienceSet([{"slug": "a", "condition": condition}])
    assert str(info.value).startswith(path + ":")


def test_cycles_between_audiences_are_refused():
    with pytest.raises(ConditionError) as info:
        AudienceSet([{"slug": "a", "condition": {"audience": "b"}},
                     {"slug": "b", "condition": {"not": {"audience": "a"}}}])
    assert "cycle between audiences" in str(info.value)


def test_audiences_evaluate_in_dependency_order():
    audiences = AudienceSet([{"slug": "top", "condition": {"audience": "base"}},
                             {"slug": "base", "condition": {"trait": "x", "op": "exists"}}])
    assert audiences.order == [1, 0]


@pytest.mark.parametrize("definition,message", [
    ({"event": "purchase", "min_cout": 3},
     "audiences[0].condition.min_cout: unknown key (did you mean 'min_count'?)"),
    ({"event": "purchase", "whithin": "7d"},
     "audiences[0].condition.whithin: unknown key (did you mean 'within'?)"),
    ({"and": [{"trait": "x", "op": "exists", "vaule": 1}]},
     "audiences[0].condition.and[0].vaule: unknown key (did you mean 'value'?)"),
    ({"event": "p", "where": {"property": "x", "op": "exists", "within": "1d"}},
     "audiences[0].condition.where.within: unknown key; known keys here: property, op, value"),
    ({"event": "p", "where": {"propety": "x", "op": "exists"}},
     "audiences[0].condition.where.propety: unknown key (did you mean 'property'?)"),
    ({"evnt": "p"}, "audiences[0].condition.evnt: unknown key (did you mean 'event'?)"),
    ({"not": {"audience": "b", "slug": "c"}},
     "audiences[0].condition.not.slug: unknown key; known keys here: audience"),
    ({"and": [{"event": "p"}], "trait": "x", "op": "exists"},
     "audiences[0].condition: a condition node is one of and, or, not, trait, event, audience, "
     "computed; "
     "this one has both 'and' and 'trait' (combine them under and: [...])"),
])
def test_unknown_keys_in_conditions_name_the_path_and_the_nearest_key(definition, message):
    with pytest.raises(ConditionError) as info:
        AudienceSet([{"slug": "a", "condition": definition}, {"slug": "b", "condition": {"event": "p"}}])
    assert str(info.value) == message


def test_unknown_key_of_an_audience():
    with pytest.raises(ConditionError) as info:
        AudienceSet([{"slug": "a", "conditon": {"event": "p"}}])
    assert str(info.value) == "audiences[0].conditon: unknown key (did you mean 'condition'?)"


def test_any_event_counts_every_name_in_one_spec():
    audiences = AudienceSet([
        {"slug": "active", "condition": {"event": "*", "within": "30d"}},
        {"slug": "inactive", "condition": {"not": {"event": "*", "within": "30d"}}},
        {"slug": "buyer", "condition": {"event": "purchase"}}])
    assert [(s.event, s.within) for s in audiences.specs] == [("*", 30 * 86400 * 10 ** 6),
                                                                ("purchase", None)]
    assert audiences.specs_by_event == {"*": [0], "purchase": [1]}
