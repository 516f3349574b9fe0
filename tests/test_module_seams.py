"""The modules keep to their seams: layers import downwards only, nothing imports another module's
private names, and no module is over 600 lines unless its docstring says why.

Read from the source with ``ast`` (nothing is imported), so this runs in a fraction of a second.
"""
import ast
import os
import re

import pytest

from tests.commands import project_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The Event Hubs input and output, split along the lines of Beam's own Azure modules (clients
#: apart from transforms).
EVENTHUBS_MODULES = ("clients/eventhubs.py", "clients/eventhubs_consumer.py",
                     "clients/checkpoints.py", "clients/input_uri.py", "transforms/eventhubs.py",
                     "transforms/eventhubs_source.py", "transforms/eventhubs_read.py",
                     "transforms/eventhubs_checkpoints.py", "transforms/live_sources.py")
#: No module is longer, unless its docstring says "longer than 600 lines" and why, in that sentence.
MAX_LINES = 600
#: Directories that hold no module of the project: environments, tools, caches, outputs (the
#: .gitignore's list); any directory whose name starts with a dot is skipped too.
NOT_THE_PROJECT = {"__pycache__", "node_modules", "out", "build", "dist", "bench/data"}
#: The phrase, then the rest of its sentence (a full stop ends it; the dot of ``Engine._run`` does not).
_LONG_MODULE = re.compile(r"longer than %d lines\b((?:[^.]|\.(?!\s|$))*)" % MAX_LINES)


def _modules(package):
    directory = os.path.join(ROOT, package)
    return sorted("%s/%s" % (package, name) for name in os.listdir(directory)
                  if name.endswith(".py"))


def _imports(path):
    """``(line, module, [imported names])`` of every import in the file, in functions too."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _top(module):
    """The first name of a module of the repository's folders (``cdp_activation.core.x``: core)."""
    return project_module(module).split(".", 1)[0]


@pytest.mark.parametrize("package, refused", [
    ("core", {"apache_beam", "clients", "transforms", "pipelines", "emulators"}),
    ("clients", {"transforms", "pipelines", "emulators"}),
])
def test_lower_layers_do_not_import_upper_ones(package, refused):
    wrong = ["%s:%d imports %s" % (path, line, module)
             for path in _modules(package) for line, module, _ in _imports(path)
             if _top(module) in refused]
    assert wrong == []


def test_the_installed_folders_are_imported_through_their_package_only():
    """core, clients and transforms are installed as ``cdp_activation.*`` (pyproject.toml): a bare
    ``import core.x`` works from a checkout's root only, and there loads a second copy."""
    wrong = ["%s:%d imports %s" % (path, line, module)
             for path in _project_modules() for line, module, _ in _imports(path)
             if module.split(".", 1)[0] in ("core", "clients", "transforms")]
    assert wrong == []


def test_the_eventhubs_clients_do_not_import_beam():
    wrong = ["%s:%d imports %s" % (path, line, module)
             for path in EVENTHUBS_MODULES if path.startswith("clients/")
             for line, module, _ in _imports(path) if _top(module) == "apache_beam"]
    assert wrong == []


@pytest.mark.parametrize("package", ["clients", "transforms", "emulators/eventhubs"])
def test_no_module_imports_the_private_names_of_another(package):
    wrong = ["%s:%d imports %s from %s" % (path, line, name, module)
             for path in _modules(package) for line, module, names in _imports(path)
             for name in names if name.startswith("_")]
    assert wrong == []


def _project_modules():
    """Every ``.py`` file of the repository, as a path relative to ROOT."""
    found = []
    for directory, subdirs, files in os.walk(ROOT):
        relative = os.path.relpath(directory, ROOT).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")
                            and not d.endswith(".egg-info") and d not in NOT_THE_PROJECT
                            and prefix + d not in NOT_THE_PROJECT)
        found.extend(prefix + name for name in files if name.endswith(".py"))
    return sorted(found)


def _why_longer(docstring):
    """The reason a module docstring gives for being longer than MAX_LINES lines, or None: the
    words after "longer than 600 lines" up to the end of that sentence, if there are at least
    three."""
    match = _LONG_MODULE.search(" ".join((docstring or "").split()))
    if match is None or len(re.findall(r"\w+", match.group(1))) < 3:
        return None
    return re.sub(r"^[:,;]\s+", "", match.group(1).strip())


def test_no_module_is_over_600_lines_unless_its_docstring_says_why():
    modules = _project_modules()
    assert "core/engine.py" in modules and "emulators/eventhubs/server.py" in modules
    long_and_silent = []
    for path in modules:
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            text = handle.read()
        lines = text.count("\n") + (not text.endswith("\n") and bool(text))
        if lines > MAX_LINES and _why_longer(ast.get_docstring(ast.parse(text, path))) is None:
            long_and_silent.append("%s (%d lines)" % (path, lines))
    assert long_and_silent == [], (
        "split these along their seams, or say in the module docstring that it is \"longer than "
        "%d lines\" and why: %s" % (MAX_LINES, ", ".join(long_and_silent)))


@pytest.mark.parametrize("docstring, reason", [
    ("Engine.\n\nThe module is longer than 600 lines on purpose: the tables and the loop\nare one "
     "design. Other text.", "on purpose: the tables and the loop are one design"),
    ("The module is longer than 600 lines: :meth:`Engine._run` reads the tables.\nMore.",
     ":meth:`Engine._run` reads the tables"),
    ("Engine.\n\nThe module is longer than 600 lines.", None),
    ("Engine.\n\nIt is longer than 600 lines because.", None),
    ("Engine.\n\nIt is longer than 6000 lines because nothing else fits.", None),
    ("Engine, with no word on its length.", None),
    (None, None),
])
def test_the_reason_is_the_rest_of_the_sentence_after_the_phrase(docstring, reason):
    assert _why_longer(docstring) == reason
