"""Type hints on the public API (issue 22): in the modules of :data:`COVERED`, every public
function and method annotates each parameter (``self`` and ``cls`` aside) and its return.

Read from the source (``ast``), so the check needs no import and no type checker. Public: a name
without a leading underscore, at module level or in a public class, and the constructor and
``__call__`` of a public class (their parameters are the class's interface). Functions nested in
functions, and other dunder methods (``__repr__``, ``__reduce__``...), are not counted.

:data:`COVERED` is the set of modules held to this; extend it as more modules get their hints.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Modules whose public functions and methods must be fully annotated.
COVERED = (
    "clients/checkpoints.py",
    "core/blocks.py",
    "core/computed.py",
    "core/export.py",
    "core/history.py",
    "core/jsonlines.py",
    "core/keys.py",
    "core/messages.py",
    "core/netguard.py",
    "core/records.py",
    "core/redact.py",
    "core/report.py",
    "core/snapshot.py",
    "core/state.py",
    "core/system_events.py",
    "core/templates.py",
    "core/timeutil.py",
)

#: Dunder methods that belong to a class's public interface.
PUBLIC_DUNDERS = frozenset(("__init__", "__call__"))


def _is_public(name):
    return not name.startswith("_") or name in PUBLIC_DUNDERS


def _decorator_names(fn):
    names = set()
    for decorator in fn.decorator_list:
        node = decorator.func if isinstance(decorator, ast.Call) else decorator
        names.add(node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", ""))
    return names


def _unannotated(fn, in_class):
    """What ``fn`` leaves unannotated: parameter names (``*args``, ``**kwargs`` starred) and
    ``return``."""
    args = fn.args
    params = list(args.posonlyargs) + list(args.args)
    if in_class and "staticmethod" not in _decorator_names(fn) and params:
        params = params[1:]  # self, or cls of a classmethod
    params += list(args.kwonlyargs)
    missing = [p.arg for p in params if p.annotation is None]
    if args.vararg is not None and args.vararg.annotation is None:
        missing.append("*" + args.vararg.arg)
    if args.kwarg is not None and args.kwarg.annotation is None:
        missing.append("**" + args.kwarg.arg)
    if fn.returns is None:
        missing.append("return")
    return missing


def public_functions(source, filename="<source>"):
    """``[(qualified name, [what is unannotated])]`` of every public function and method of a
    module's source, in source order."""
    found = []

    def visit(body, prefix, in_class):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _is_public(node.name):
                    found.append((prefix + node.name, _unannotated(node, in_class)))
            elif isinstance(node, ast.ClassDef):
                if not node.name.startswith("_"):
                    visit(node.body, prefix + node.name + ".", True)
            elif isinstance(node, ast.If):  # e.g. a definition per platform
                visit(node.body + node.orelse, prefix, in_class)
            elif isinstance(node, ast.Try):
                visit(node.body + [n for h in node.handlers for n in h.body] + node.orelse
                      + node.finalbody, prefix, in_class)

    visit(ast.parse(source, filename).body, "", False)
    return found


def missing_hints(source, filename="<source>"):
    """``"name: a, b, return"`` for each public function or method of ``source`` that lacks a
    hint."""
    return ["%s: %s" % (name, ", ".join(missing))
            for name, missing in public_functions(source, filename) if missing]


@pytest.mark.parametrize("module", COVERED)
def test_public_functions_are_annotated(module):
    path = ROOT / module
    source = path.read_text(encoding="utf-8")
    functions = public_functions(source, str(path))
    assert functions, "%s has no public function: is it still a covered module?" % module
    missing = missing_hints(source, str(path))
    assert not missing, "%s: public functions without full type hints:\n  %s" % (
        module, "\n  ".join(missing))


def test_the_check_names_every_missing_hint():
    source = '''
import typing

def bare(a, b=1, *args, c, **kwargs):
    pass

def no_return(a: int):
    pass

def no_param(a) -> int:
    return 1

def complete(a: int, *args: str, c: int = 0, **kwargs: str) -> None:
    pass

def _private(a):
    pass

class Public:
    def __init__(self, x):
        self.x = x

    def __call__(self, y) -> int:
        return y

    def method(self, y: int):
        return y

    @classmethod
    def make(cls, z) -> "Public":
        return cls(z)

    @staticmethod
    def helper(w) -> int:
        return w

    @property
    def value(self):
        return self.x

    def annotated(self, y: int) -> int:
        return y

    def __repr__(self):
        return "Public"

    def _private(self, y):
        return y

class _Private:
    def method(self, y):
        return y

if typing.TYPE_CHECKING:
    def conditional(a):
        pass

def outer(a: int) -> int:
    def inner(b):
        return b
    return inner(a)
'''
    assert missing_hints(source) == [
        "bare: a, b, c, *args, **kwargs, return",
        "no_return: return",
        "no_param: a",
        "Public.__init__: x, return",
        "Public.__call__: y",
        "Public.method: return",
        "Public.make: z",
        "Public.helper: w",
        "Public.value: return",
        "conditional: a, return",
    ]
    names = [name for name, _ in public_functions(source)]
    assert "complete" in names and "Public.annotated" in names and "outer" in names
    assert not {"_private", "Public._private", "Public.__repr__", "_Private.method",
                "inner"} & set(names)
