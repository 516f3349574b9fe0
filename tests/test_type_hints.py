"""Type hints on the public API (issue 22): in every module of the installed packages
(:data:`PACKAGES`), every public function and method annotates each parameter (``self`` and
``cls`` aside) and its return.

Read from the source (``ast``), so the check needs no import and no type checker. Public: a name
without a leading underscore, at module level or in a public class, and the constructor and
``__call__`` of a public class (their parameters are the class's interface). Functions nested in
functions, and other dunder methods (``__repr__``, ``__reduce__``...), are not counted.

The modules are found by listing the package folders, so a new module is held to this without a
list to keep. ``emulators/`` and ``bench/`` are not installed with the runtime and are not held.
"""
import ast
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The installed packages whose modules must annotate every public function and method.
PACKAGES = ("core", "clients", "pipelines", "transforms")


def covered_modules():
    """Every ``.py`` file under the folders of :data:`PACKAGES`, relative to the project root."""
    return sorted(path.relative_to(ROOT).as_posix() for package in PACKAGES
                  for path in (ROOT / package).rglob("*.py"))


COVERED = covered_modules()

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


def test_every_package_folder_is_a_package_with_modules():
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package
        assert any(m.startswith(package + "/") and not m.endswith("__init__.py")
                   for m in COVERED), package


@pytest.mark.parametrize("module", COVERED)
def test_public_functions_are_annotated(module):
    path = ROOT / module
    source = path.read_text(encoding="utf-8")
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


# -- hints are for readers and type checkers, not for Beam ------------------------------------------

#: The methods Beam reads annotations from when it builds a graph: a DoFn's ``process`` (and
#: ``process_batch``) for its element types, a PTransform's ``expand`` for its output's type.
BEAM_READ_METHODS = frozenset(("process", "process_batch", "expand"))


def beam_read_methods_without_the_decorator(source, filename="<source>"):
    """``[Class.method]`` of every annotated ``process``/``process_batch``/``expand`` of a class in
    ``source`` that lacks ``@no_annotations`` (``apache_beam.typehints.decorators``)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.ClassDef):
            continue
        for fn in node.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = fn.args
            annotated = fn.returns is not None or any(
                a.annotation is not None for a in args.posonlyargs + args.args + args.kwonlyargs)
            if (fn.name in BEAM_READ_METHODS and annotated
                    and "no_annotations" not in _decorator_names(fn)):
                found.append("%s.%s" % (node.name, fn.name))
    return found


@pytest.mark.parametrize("module", [m for m in COVERED if m.startswith(("transforms/", "pipelines/"))])
def test_beam_does_not_read_the_hints_of_process_and_expand(module):
    """Every annotated ``DoFn.process`` and ``PTransform.expand`` carries Beam's
    ``@no_annotations``.

    Beam 2.62 reads these annotations when it builds a graph (``DoFn.default_type_hints``,
    ``PTransform.default_type_hints``): an element type there picks the coders of the outputs (a
    ``Tuple[str, bytes]`` becomes a tuple coder instead of the pickling "any" coder) and is
    checked against the producer's type at construction. Coders are what Flink's savepoints and
    Dataflow's update compatibility hold, and what Prism's Flatten handling depends on
    (``tests/test_prism.py``): a hint written for a reader must not change them. So the hints
    document the code and feed a type checker; the types Beam uses are the ones the shells give
    it explicitly (``with_output_types``, typed coders). Checked on the source, so transforms
    that no sample graph builds (the Event Hubs, Kafka and Pub/Sub reads) are held too; the
    functions given to ``beam.Map`` and friends are held by the graph test below.
    """
    path = ROOT / module
    missing = beam_read_methods_without_the_decorator(path.read_text(encoding="utf-8"), str(path))
    assert not missing, "%s: annotated without @no_annotations: %s" % (module, ", ".join(missing))


def test_the_decorator_check_names_what_lacks_it():
    source = '''
from apache_beam.typehints.decorators import no_annotations

class Typed:
    def process(self, element: int) -> None:
        pass

    @no_annotations
    def expand(self, pcoll: int) -> int:
        return pcoll

class Bare:
    def process(self, element):
        pass

    def helper(self, element: int) -> int:
        return element

class Batched:
    def process_batch(self, batch) -> None:
        pass
'''
    assert beam_read_methods_without_the_decorator(source) == ["Typed.process",
                                                              "Batched.process_batch"]


class _Built(Exception):
    """Raised instead of running a pipeline: its graph was captured."""


def _coders_by_pcollection(proto):
    """``{PCollection unique name: its coder}`` of a Runner API pipeline proto."""
    from apache_beam.runners import pipeline_context
    context = pipeline_context.PipelineContext(proto.components)
    return {p.unique_name: context.coders.get_by_id(p.coder_id)
            for p in proto.components.pcollections.values()}


@pytest.mark.parametrize("command, stitch", [("stream", False), ("replay", False),
                                             ("replay", True), ("stream", True)])
def test_the_graphs_coders_are_the_same_with_beams_annotation_reading_off(command, stitch,
                                                                          tmp_path, monkeypatch):
    """The stream and replay graphs of a sample job (every workflow, alerts; ``--state`` for
    replay, or identity stitching, which ``--state`` does not take) have the same coder on every PCollection whether Beam reads Python annotations or
    not (``apache_beam.typehints.decorators._disable_from_callable``, which
    ``disable_type_annotations()`` sets for the whole process): no hint in the project, on a
    ``process``, an ``expand`` or a function given to ``beam.Map``, changes what Beam encodes.
    Why that matters: see the test above. A function given to ``beam.Map`` may keep its hints
    when they say what Beam infers from its bytecode anyway (``export_rows_from_wire`` returns a
    list either way); a hint that says more or other is a failure here, naming the PCollection.
    The unbounded graphs (live sources) are not built here; their ``process`` and ``expand``
    are held by the test above."""
    import importlib

    import apache_beam as beam
    from apache_beam.typehints import decorators

    from tests.commands import write_job
    from tests.datagen import generate
    from tests.test_prism import with_webhook_alerts
    config, lines = generate(5, n_users=10, days=3)
    config = with_webhook_alerts(config, "http://127.0.0.1:9/hook")
    if stitch:
        config["identity"] = {"stitch": True}
    config_path, input_path = write_job(str(tmp_path), config, lines)
    graphs = []

    def capture(pipeline, *args, **kwargs):
        graphs.append(pipeline.to_runner_api())
        raise _Built()

    monkeypatch.setattr(beam.Pipeline, "run", capture)
    argv = ["--config", str(config_path), "--input", str(input_path), "--output_dir",
            str(tmp_path / "out"), "--progress_seconds", "0"]
    if command == "replay" and not stitch:
        argv += ["--state", str(tmp_path / "state.parquet")]
    if command == "stream" and stitch:   # the incremental stitching stages
        argv += ["--streaming"]
    run = importlib.import_module("pipelines." + command).run
    # The launcher quiets these loggers for the run; later tests of the process read warnings.
    levels = {name: logging.getLogger(name).level for name in ("", "apache_beam", "azure", "uamqp")}
    try:
        run(argv)
        monkeypatch.setattr(decorators, "_disable_from_callable", True)
        run(argv)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert len(graphs) == 2
    read, ignored = (_coders_by_pcollection(g) for g in graphs)
    assert len(read) > 50 and set(read) == set(ignored)
    assert stitch == any("RouteIdentities" in name for name in read)
    changed = ["%s: %r, without annotations %r" % (name, read[name], ignored[name])
               for name in sorted(read) if read[name] != ignored[name]]
    assert not changed, "\n".join(changed)
