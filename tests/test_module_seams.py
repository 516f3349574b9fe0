"""The modules keep to their seams: layers import downwards only, nothing imports another module's
private names, and the Event Hubs modules stay small.

Read from the source with ``ast`` (nothing is imported), so this runs in a fraction of a second.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The Event Hubs input and output, split along the lines of Beam's own Azure modules (clients
#: apart from transforms): at most MAX_LINES lines each.
EVENTHUBS_MODULES = ("clients/eventhubs.py", "clients/eventhubs_consumer.py",
                     "clients/checkpoints.py", "clients/input_uri.py", "transforms/eventhubs.py",
                     "transforms/eventhubs_source.py", "transforms/eventhubs_read.py",
                     "transforms/eventhubs_checkpoints.py", "transforms/live_sources.py")
MAX_LINES = 600


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
    return module.split(".", 1)[0]


@pytest.mark.parametrize("package, refused", [
    ("core", {"apache_beam", "clients", "transforms", "pipelines", "emulators"}),
    ("clients", {"transforms", "pipelines", "emulators"}),
])
def test_lower_layers_do_not_import_upper_ones(package, refused):
    wrong = ["%s:%d imports %s" % (path, line, module)
             for path in _modules(package) for line, module, _ in _imports(path)
             if _top(module) in refused]
    assert wrong == []


def test_the_eventhubs_clients_do_not_import_beam():
    wrong = ["%s:%d imports %s" % (path, line, module)
             for path in EVENTHUBS_MODULES if path.startswith("clients/")
             for line, module, _ in _imports(path) if _top(module) == "apache_beam"]
    assert wrong == []


@pytest.mark.parametrize("package", ["clients", "transforms"])
def test_no_module_imports_the_private_names_of_another(package):
    wrong = ["%s:%d imports %s from %s" % (path, line, name, module)
             for path in _modules(package) for line, module, names in _imports(path)
             for name in names if name.startswith("_")]
    assert wrong == []


@pytest.mark.parametrize("path", EVENTHUBS_MODULES)
def test_the_eventhubs_modules_are_at_most_600_lines(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        lines = sum(1 for _ in handle)
    assert lines <= MAX_LINES, "%s has %d lines" % (path, lines)
