"""The audience condition language (CONTRACT section 4), compiled to plain Python closures.

A condition tree compiles into a function ``holds(traits, counts, members, computed) -> bool``:

* ``traits`` is the user's trait dict as of the evaluation time T,
* ``counts[i]`` is the user's (capped) count of events matching counter spec ``i`` at T,
* ``members[j]`` is whether the user is in audience ``j`` at T (audiences are evaluated in
  dependency order, so a referenced audience already holds its value for T),
* ``computed[k]`` is the value at T of computed trait ``k`` (``core.computed``; None: absent).

Every ``{event: ...}`` node becomes a :class:`CounterSpec` (event name, ``where`` predicate,
``within`` window); nodes that share all three share one spec. The name ``"*"`` (:data:`ANY_EVENT`)
counts events of every name, so "no activity in 30 days" is ``{not: {event: "*", within: 30d}}``.
A spec only needs to count up to its *cap*: the largest threshold any node asks of it
(``min_count``, or ``max_count + 1``). Past the cap the answer of every node is known, so the
engine keeps at most ``cap`` timestamps per windowed spec and a saturating counter for all-time
specs.

The engine evaluates :attr:`AudienceSet.state_holds`, each condition one function over its state;
:meth:`AudienceSet.trace` evaluates it node by node (:class:`NodeTrace`) for ``pipelines.explain``.
"""
import json
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

from cdp_activation.core.keys import did_you_mean, unknown_key
from cdp_activation.core.timeutil import parse_duration
from cdp_activation.core.state import condition_key

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "starts_with",
             "ends_with", "exists", "missing", "matches")
#: ``{event: "*"}`` counts the user's events of every name.
ANY_EVENT = "*"
#: The keys of each kind of node, by the key that names the kind (CONTRACT section 4).
CONDITION_NODES = {"and": ("and",), "or": ("or",), "not": ("not",),
                   "trait": ("trait", "op", "value"),
                   "event": ("event", "within", "min_count", "max_count", "where"),
                   "audience": ("audience",),
                   "computed": ("computed", "op", "value")}
WHERE_NODES = {"and": ("and",), "or": ("or",), "not": ("not",),
               "property": ("property", "op", "value")}
AUDIENCE_KEYS = ("id", "slug", "name", "condition")


class ConditionError(ValueError):
    """A condition that does not compile; ``str()`` starts with the config path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__("%s: %s" % (path, message))
        self.path = path


def parse_within(node: Dict[str, Any], path: str) -> Optional[int]:
    """``node["within"]`` in microseconds (None: absent); a ConditionError if not a duration."""
    try:
        return None if node.get("within") is None else parse_duration(node["within"])
    except ValueError as exc:
        raise ConditionError(path + ".within", str(exc)) from None


_NUMBER = (int, float)


def _is_number(x):
    return isinstance(x, _NUMBER) and not isinstance(x, bool)


def values_equal(a: Any, b: Any) -> bool:
    """Equality where a type mismatch is simply false (1 == 1.0, but True != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if type(a) is type(b):
        return a == b
    return False


def _same_kind(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return (_is_number(a) and _is_number(b)) or type(a) is type(b)


def _comparable(a, b):
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _make_predicate(op, value, path):
    """A function of the actual value (None when absent) for ``op`` against the configured value."""
    if op not in OPERATORS:
        raise ConditionError(path + ".op", "unknown operator %r; one of %s" % (op, ", ".join(OPERATORS)))
    if op == "exists":
        return lambda a: a is not None
    if op == "missing":
        return lambda a: a is None
    if op == "eq":
        if type(value) is str:
            # values_equal against a str is a same-type ==; predicates run for every event.
            return lambda a: type(a) is str and a == value
        return lambda a: a is not None and values_equal(a, value)
    if op == "ne":
        # Absent or of another type is a mismatch, and a mismatch is false.
        return lambda a: (a is not None and (type(a) is type(value) or (_is_number(a) and _is_number(value)))
                          and not values_equal(a, value))
    if op in ("gt", "gte", "lt", "lte"):
        if not (_is_number(value) or isinstance(value, str)):
            raise ConditionError(path + ".value", "%s needs a number or a string" % op)
        # _comparable(a, value) spelled out for the kind of ``value``, as one closure per operator:
        # these run for every event and evaluation. (bool cannot be subclassed, so ``type(a) is
        # not bool`` is ``not isinstance(a, bool)``.)
        if isinstance(value, str):
            return {"gt": lambda a: isinstance(a, str) and a > value,
                    "gte": lambda a: isinstance(a, str) and a >= value,
                    "lt": lambda a: isinstance(a, str) and a < value,
                    "lte": lambda a: isinstance(a, str) and a <= value}[op]
        return {"gt": lambda a: isinstance(a, _NUMBER) and type(a) is not bool and a > value,
                "gte": lambda a: isinstance(a, _NUMBER) and type(a) is not bool and a >= value,
                "lt": lambda a: isinstance(a, _NUMBER) and type(a) is not bool and a < value,
                "lte": lambda a: isinstance(a, _NUMBER) and type(a) is not bool and a <= value}[op]
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise ConditionError(path + ".value", "%s needs a list" % op)
        options = list(value)
        if options and all(type(v) is str for v in options):
            # Against str options both values_equal and _same_kind reduce to "a is a str", so a
            # set lookup gives the same answer as the scans below.
            strings = frozenset(options)
            if op == "in":
                return lambda a: type(a) is str and a in strings
            return lambda a: type(a) is str and a not in strings
        if op == "in":
            return lambda a: a is not None and any(values_equal(a, v) for v in options)
        # Of another type than every option is a mismatch, and a mismatch is false.
        return lambda a: (a is not None and any(_same_kind(a, v) for v in options)
                          and not any(values_equal(a, v) for v in options))
    if op == "contains":
        if value is None:
            raise ConditionError(path + ".value", "contains needs a value")

        def contains(a):
            if isinstance(a, str):
                return isinstance(value, str) and value in a
            if isinstance(a, list):
                return any(values_equal(x, value) for x in a)
            return False
        return contains
    if op in ("starts_with", "ends_with"):
        if not isinstance(value, str):
            raise ConditionError(path + ".value", "%s needs a string" % op)
        if op == "starts_with":
            return lambda a: isinstance(a, str) and a.startswith(value)
        return lambda a: isinstance(a, str) and a.endswith(value)
    # matches
    if not isinstance(value, str):
        raise ConditionError(path + ".value", "matches needs a regular expression string")
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise ConditionError(path + ".value", "bad regular expression: %s" % exc) from None
    return lambda a: isinstance(a, str) and pattern.search(a) is not None


def _lookup(mapping, name):
    """A property or trait by name; a dotted name also walks nested objects."""
    if name in mapping:
        return mapping[name]
    if "." in name:
        current = mapping
        for part in name.split("."):
            if not isinstance(current, dict) or part not in current:
                return None
            current = current[part]
        return current
    return None


def lookup(mapping: dict, name: str) -> Any:
    """A property or trait by name as conditions read it (key first, then a dotted path)."""
    return _lookup(mapping, name)


def _expect_mapping(node, path):
    if not isinstance(node, dict):
        raise ConditionError(path, "a condition node must be an object")


def node_kind(node: Dict[str, Any], path: str, kinds: Dict[str, Tuple[str, ...]],
              what: str = "condition") -> str:
    """The kind of a condition or ``where`` node (a key of ``kinds``), once its keys are checked:
    exactly one kind per node, and no key that kind does not have."""
    present = [k for k in kinds if k in node]
    if len(present) > 1:
        raise ConditionError(path, "a %s node is one of %s; this one has both '%s' and '%s' "
                                   "(combine them under and: [...])"
                             % (what, ", ".join(kinds), present[0], present[1]))
    if not present:
        every_key = []
        for keys in kinds.values():
            every_key.extend(k for k in keys if k not in every_key)
        for key in node:
            if key not in every_key:
                raise ConditionError("%s.%s" % (path, key), "unknown key%s" % (
                    did_you_mean(key, every_key) or "; a %s node is one of %s"
                    % (what, ", ".join(kinds))))
        raise ConditionError(path, "a %s node is one of %s" % (what, ", ".join(kinds)))
    kind = present[0]
    unknown = unknown_key(node, kinds[kind], path)
    if unknown is not None:
        raise ConditionError(*unknown)
    return kind


def _boolean_node(node, path, compile_child, arity):
    """and / or / not, shared by conditions (3 arguments) and ``where`` predicates (1 argument).

    Small fan-outs get their own closures: ``all()`` over a generator costs several times more
    than ``a(x) and b(x)``, and these run for every event.
    """
    if "and" in node or "or" in node:
        kind = "and" if "and" in node else "or"
        children = node[kind]
        if not isinstance(children, list) or not children:
            raise ConditionError("%s.%s" % (path, kind), "needs a non-empty list")
        fns = [compile_child(c, "%s.%s[%d]" % (path, kind, i)) for i, c in enumerate(children)]
        return _combine(kind, fns, arity)
    if "not" in node:
        fn = compile_child(node["not"], path + ".not")
        if arity == 1:
            return lambda x: not fn(x)
        return lambda t, c, m, v=None: not fn(t, c, m, v)
    return None


def _combine(kind, fns, arity):
    if len(fns) == 1:
        return fns[0]
    if arity == 1:
        if len(fns) == 2:
            a, b = fns
            return (lambda x: a(x) and b(x)) if kind == "and" else (lambda x: a(x) or b(x))
        return ((lambda x: all(f(x) for f in fns)) if kind == "and"
                else (lambda x: any(f(x) for f in fns)))
    if len(fns) == 2:
        a, b = fns
        if kind == "and":
            return lambda t, c, m, v=None: a(t, c, m, v) and b(t, c, m, v)
        return lambda t, c, m, v=None: a(t, c, m, v) or b(t, c, m, v)
    if len(fns) == 3:
        a, b, d = fns
        if kind == "and":
            return lambda t, c, m, v=None: a(t, c, m, v) and b(t, c, m, v) and d(t, c, m, v)
        return lambda t, c, m, v=None: a(t, c, m, v) or b(t, c, m, v) or d(t, c, m, v)
    if kind == "and":
        return lambda t, c, m, v=None: all(f(t, c, m, v) for f in fns)
    return lambda t, c, m, v=None: any(f(t, c, m, v) for f in fns)


def _comparison(node, field, path):
    """(name, predicate) of a ``{trait|property: NAME, op: OP, value: V}`` leaf."""
    name = node[field]
    if not isinstance(name, str) or not name:
        raise ConditionError("%s.%s" % (path, field), "needs a %s name" % field)
    if "op" not in node:
        raise ConditionError(path, "missing 'op'")
    return name, _make_predicate(node["op"], node.get("value"), path)


def compile_where(node: Any, path: str) -> Callable[[Dict[str, Any]], bool]:
    """A ``where`` tree to ``predicate(properties) -> bool``."""
    _expect_mapping(node, path)
    node_kind(node, path, WHERE_NODES, "where")
    combined = _boolean_node(node, path, compile_where, 1)
    if combined is not None:
        return combined
    if "property" in node:
        name, pred = _comparison(node, "property", path)
        if "." not in name:
            return lambda props: pred(props.get(name))  # what _lookup does for a plain name
        return lambda props: pred(_lookup(props, name))
    raise ConditionError(path, "a where node is one of and, or, not, property")


class CounterSpec(NamedTuple):
    event: str
    where: Optional[Callable]
    where_key: str               # canonical JSON of the where tree, for sharing specs
    within: Optional[int]        # microseconds; None is all time


class NodeTrace(NamedTuple):
    """One node of a condition evaluated at one time, with its children (:meth:`AudienceSet.trace`).

    ``kind`` is the key that names the node's kind (``and``, ``or``, ``not``, ``trait``, ``event``,
    ``audience``, ``computed``); ``node`` the node as configured. ``detail`` is what the value was
    computed from: a ``trait`` node's trait value (None when absent), an ``event`` node's count of
    matching events (in its window when it has one), an ``audience`` node's audience index, a
    ``computed`` node's computed value (None when absent); None for ``and``, ``or`` and ``not``.
    """
    kind: str
    node: dict
    value: bool
    detail: Any
    children: Tuple["NodeTrace", ...]


class Audience(NamedTuple):
    index: int
    id: str
    slug: str
    name: str
    holds: Callable
    depends_on: Tuple[int, ...]  # audience indices referenced


class AudienceSet:
    """All audiences of a job compiled together (specs are shared across audiences)."""

    def __init__(self, audience_defs: List[Dict[str, Any]], path: str = "audiences",
                 computed: Optional[Any] = None) -> None:
        #: ``core.computed.ComputedSet`` or None; ``{computed: NAME}`` reads ``computed[k]`` at T.
        self.computed = computed
        self.specs: List[CounterSpec] = []
        self.caps: List[int] = []
        self.thresholds: List[set] = []  # [i]: the (min_count, max_count or None) asked of spec i
        self._spec_index, self.audiences = {}, []  # type: Dict[Any, int], List[Audience]
        if not isinstance(audience_defs, list):
            raise ConditionError(path, "must be a list")
        by_ref, pending = {}, []
        for i, definition in enumerate(audience_defs):
            apath = "%s[%d]" % (path, i)
            if not isinstance(definition, dict):
                raise ConditionError(apath, "must be an object")
            unknown = unknown_key(definition, AUDIENCE_KEYS, apath)
            if unknown is not None:
                raise ConditionError(*unknown)
            slug = definition.get("slug") or definition.get("id")
            aid = definition.get("id") or slug
            if not isinstance(slug, str) or not slug:
                raise ConditionError(apath, "needs a slug or an id")
            if not isinstance(aid, str):
                raise ConditionError(apath + ".id", "must be a string")
            for ref in {slug, aid}:
                if ref in by_ref:
                    raise ConditionError(apath, "duplicate audience %r" % ref)
                by_ref[ref] = i
            if "condition" not in definition:
                raise ConditionError(apath, "missing 'condition'")
            pending.append((apath, aid, slug, definition.get("name") or slug, definition["condition"]))
        self._inputs = []
        #: Per audience, ``holds`` compiled a second time for the engine's own state (see
        #: :meth:`_compile_on_state`): saves building count and member lists at every evaluation.
        self.state_holds: List[Callable] = []
        #: Per audience, a hash of its condition (``core.state.condition_key``): a saved state
        #: records which condition each membership was evaluated under.
        self.condition_keys: List[str] = [condition_key(c) for _, _, _, _, c in pending]
        #: Per audience, its condition as configured.
        self.conditions: List[dict] = [c for _, _, _, _, c in pending]
        self._path = path
        self._by_ref = by_ref
        self._tracers = {}  # audience index -> traced condition, compiled on first use
        #: Per audience, the computed trait indices its condition reads directly.
        self._computed_inputs = []
        for i, (apath, aid, slug, name, condition) in enumerate(pending):
            deps = set()
            self._reading = (set(), set())
            self._reading_computed = set()
            holds = self._compile(condition, apath + ".condition", by_ref, deps)
            # Registers nothing new: the same specs, caps and thresholds as ``holds``.
            self.state_holds.append(
                self._compile_on_state(condition, apath + ".condition", by_ref, holds))
            self._inputs.append(self._reading)
            self._computed_inputs.append(self._reading_computed)
            self.audiences.append(Audience(i, aid, slug, name, holds, tuple(sorted(deps))))
        self.order = self._topological_order(path)
        self.specs_by_event = {}
        for i, spec in enumerate(self.specs):
            self.specs_by_event.setdefault(spec.event, []).append(i)
        self.windows = sorted({s.within for s in self.specs if s.within is not None})

    def inputs_of(self, index: int) -> Tuple[Set[int], Set[str]]:
        """(spec indices, trait names) that audience ``index`` reads directly."""
        return self._inputs[index]

    def computed_inputs_of(self, index: int) -> Set[int]:
        """The computed trait indices that audience ``index`` reads directly."""
        return self._computed_inputs[index]

    def trace(self, index: int, traits: dict, counts: list, members: list,
              computed: Optional[list] = None) -> NodeTrace:
        """Audience ``index``'s condition evaluated node by node over the engine's own state (as
        :attr:`state_holds` reads it: ``counts[i]`` the sorted timestamps of a windowed spec or the
        count of an all-time one, ``members[j]`` an enter time or None, ``computed[k]`` the value
        of computed trait ``k``). The root's value is what
        :attr:`state_holds` returns for the same state; the counts are as large as the state
        holds (at most the spec's cap, unless the engine keeps exact counts)."""
        tracer = self._tracers.get(index)
        if tracer is None:
            path = "%s[%d].condition" % (self._path, index)
            tracer = self._tracers[index] = self._compile_trace(self.conditions[index], path)
        return tracer(traits, counts, members, computed)

    def by_ref(self, ref: str) -> Optional[Audience]:
        for a in self.audiences:
            if ref in (a.slug, a.id):
                return a
        return None

    def _register_spec(self, event, where_node, where_fn, within, min_count, max_count):
        key = (event, json.dumps(where_node, sort_keys=True, default=str), within)
        if key not in self._spec_index:
            self._spec_index[key] = len(self.specs)
            self.specs.append(CounterSpec(event, where_fn, key[1], within))
            self.caps.append(0)
            self.thresholds.append(set())
        i = self._spec_index[key]
        self.caps[i] = max(self.caps[i], min_count, (max_count + 1) if max_count is not None else 0)
        self.thresholds[i].add((min_count, max_count))
        return i

    def _compile(self, node, path, by_ref, deps):
        _expect_mapping(node, path)
        node_kind(node, path, CONDITION_NODES)
        combined = _boolean_node(node, path, lambda c, p: self._compile(c, p, by_ref, deps), 3)
        if combined is not None:
            return combined
        if "trait" in node:
            name, pred = _comparison(node, "trait", path)
            self._reading[1].update({name, name.split(".", 1)[0]})
            if "." not in name:
                return lambda traits, counts, members, computed=None: pred(traits.get(name))  # _lookup, plain name
            return lambda traits, counts, members, computed=None: pred(_lookup(traits, name))
        if "event" in node:
            return self._compile_event(node, path)
        if "audience" in node:
            ref = node["audience"]
            if ref not in by_ref:
                raise ConditionError(path + ".audience", "unknown audience %r" % (ref,))
            target = by_ref[ref]
            deps.add(target)
            return lambda traits, counts, members, computed=None: members[target]
        if "computed" in node:
            k, pred = self._computed_leaf(node, path)
            self._reading_computed.add(k)
            return lambda traits, counts, members, computed=None: pred(computed[k])
        raise ConditionError(path, "a condition node is one of %s" % ", ".join(CONDITION_NODES))

    def _computed_leaf(self, node, path):
        """(computed trait index, predicate) of a ``{computed: NAME, op: OP, value: V}`` node."""
        if self.computed is None or not len(self.computed):
            raise ConditionError(path + ".computed", "unknown computed trait %r; define it in "
                                 "computed_traits" % (node["computed"],))
        name, pred = _comparison(node, "computed", path)
        return self.computed.get(name, path + ".computed").index, pred

    def _compile_event(self, node, path):
        i, _, min_count, max_count = self._event_leaf(node, path)
        self._reading[0].add(i)
        if max_count is None:
            return lambda traits, counts, members, computed=None: counts[i] >= min_count
        return lambda traits, counts, members, computed=None: min_count <= counts[i] <= max_count

    def _event_leaf(self, node, path):
        """(spec index, within, min_count, max_count) of an ``{event: ...}`` node."""
        event = node["event"]
        if not isinstance(event, str) or not event:
            raise ConditionError(path + ".event", 'needs an event name, or "*" for any event')
        within = parse_within(node, path)
        min_count = node.get("min_count", 1)
        max_count = node.get("max_count")
        for field, value in (("min_count", min_count), ("max_count", max_count)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConditionError("%s.%s" % (path, field), "must be a non-negative integer")
        if max_count is not None and max_count < min_count:
            raise ConditionError(path + ".max_count", "must be at least min_count (%d)" % min_count)
        where_node = node.get("where")
        where_fn = compile_where(where_node, path + ".where") if where_node is not None else None
        i = self._register_spec(event, where_node, where_fn, within, min_count, max_count)
        return i, within, min_count, max_count

    def _compile_on_state(self, condition, path, by_ref, holds):
        """``holds`` over the engine's own state, where ``counts[i]`` of a windowed spec is its
        list of timestamps (the count is its length) and ``members[j]`` the enter time or None.

        It is one generated Python function rather than a tree of closures: a closure costs a call
        per node, and the engine evaluates audiences at most points. ``condition`` has compiled
        into ``holds`` already, so it is valid; configured names and values enter the source only
        as bound variables, never as text (spec and audience indices and counts are validated
        ints).
        """
        env = {"_lookup": _lookup}
        try:
            source = ("def holds_on_state(traits, counts, members, computed=None):\n"
                      "    return %s\n"
                      % self._on_state_expression(condition, path, by_ref, env))
            code = compile(source, "<%s>" % path, "exec")
        except (SyntaxError, RecursionError, MemoryError):
            # Nesting deeper than the parser takes: the closures, on converted inputs.
            def holds_on_state(traits, counts, members, computed=None):
                return holds(traits, [len(c) if c.__class__ is list else c for c in counts],
                             [m is not None for m in members], computed)
            return holds_on_state
        exec(code, env)
        return env["holds_on_state"]

    def _on_state_expression(self, node, path, by_ref, env):
        # The same dispatch as _compile and _boolean_node, in the same order.
        if "and" in node or "or" in node:
            kind = "and" if "and" in node else "or"
            return "(%s)" % (" %s " % kind).join(
                self._on_state_expression(c, path, by_ref, env) for c in node[kind])
        if "not" in node:
            return "(not %s)" % self._on_state_expression(node["not"], path, by_ref, env)
        if "trait" in node:
            name, pred = _comparison(node, "trait", path)
            k = len(env)
            env["_pred%d" % k], env["_name%d" % k] = pred, name
            if "." not in name:
                return "_pred%d(traits.get(_name%d))" % (k, k)  # what _lookup does for a plain name
            return "_pred%d(_lookup(traits, _name%d))" % (k, k)
        if "event" in node:
            i, within, min_count, max_count = self._event_leaf(node, path)
            count = ("len(counts[%d])" if within is not None else "counts[%d]") % i
            if max_count is None:
                return "(%s >= %d)" % (count, min_count)
            return "(%d <= %s <= %d)" % (min_count, count, max_count)
        if "computed" in node:
            k, pred = self._computed_leaf(node, path)
            j = len(env)
            env["_pred%d" % j] = pred
            return "_pred%d(computed[%d])" % (j, k)
        return "(members[%d] is not None)" % by_ref[node["audience"]]

    def _compile_trace(self, node, path):
        """The traced form of a condition that compiled already (so it is valid): a function of
        the engine's state to a :class:`NodeTrace`, built from the same leaves as :meth:`_compile`
        (the same predicates and trait lookup, the same spec indices and thresholds)."""
        if "and" in node or "or" in node:
            kind = "and" if "and" in node else "or"
            fns = [self._compile_trace(c, "%s.%s[%d]" % (path, kind, i))
                   for i, c in enumerate(node[kind])]
            combine = all if kind == "and" else any

            def trace_combined(traits, counts, members, computed=None):
                children = tuple(f(traits, counts, members, computed) for f in fns)
                return NodeTrace(kind, node, combine(c.value for c in children), None, children)
            return trace_combined
        if "not" in node:
            fn = self._compile_trace(node["not"], path + ".not")

            def trace_not(traits, counts, members, computed=None):
                child = fn(traits, counts, members, computed)
                return NodeTrace("not", node, not child.value, None, (child,))
            return trace_not
        if "trait" in node:
            name, pred = _comparison(node, "trait", path)

            def trace_trait(traits, counts, members, computed=None):
                value = _lookup(traits, name)
                return NodeTrace("trait", node, pred(value), value, ())
            return trace_trait
        if "event" in node:
            i, within, min_count, max_count = self._event_leaf(node, path)

            def trace_event(traits, counts, members, computed=None):
                count = len(counts[i]) if within is not None else counts[i]
                holds = count >= min_count and (max_count is None or count <= max_count)
                return NodeTrace("event", node, holds, count, ())
            return trace_event
        if "computed" in node:
            k, pred = self._computed_leaf(node, path)

            def trace_computed(traits, counts, members, computed=None):
                value = computed[k] if computed is not None else None
                return NodeTrace("computed", node, pred(value), value, ())
            return trace_computed
        target = self._by_ref[node["audience"]]

        def trace_audience(traits, counts, members, computed=None):
            return NodeTrace("audience", node, members[target] is not None, target, ())
        return trace_audience

    def _topological_order(self, path):
        order, state = [], {}

        def visit(i, stack):
            if state.get(i) == 2:
                return
            if state.get(i) == 1:
                cycle = " -> ".join(self.audiences[j].slug for j in stack[stack.index(i):] + [i])
                raise ConditionError("%s[%d].condition" % (path, i), "cycle between audiences: " + cycle)
            state[i] = 1
            for d in self.audiences[i].depends_on:
                visit(d, stack + [i])
            state[i] = 2
            order.append(i)

        for a in self.audiences:
            visit(a.index, [])
        return order
