"""The registry of workflows: one place knows each workflow (``core.workflows`` for the config,
``pipelines.workflows`` for its Beam side); config parsing, the plan, the summary, the wiring and
the docs ask it."""
import ast
import os
import re

import pytest

from cdp_activation.core.config import ConfigError, parse_config
from cdp_activation.core.workflows import WORKFLOWS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docs_sections():
    """``{workflow: {key: default cell}}`` from the per-workflow tables of docs/CONFIG.md."""
    with open(os.path.join(ROOT, "docs", "CONFIG.md"), encoding="utf-8") as fh:
        text = fh.read()
    sections = {}
    for match in re.finditer(r"^### `([a-z_]+)`\n(.*?)(?=^#)", text, re.M | re.S):
        rows = {}
        for line in match.group(2).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 3 or cells[0] in ("key", "---"):
                continue
            for key in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[key] = cells[1]
        sections[match.group(1)] = rows
    return sections


def _shown(value):
    if isinstance(value, bool):
        return "false" if not value else "true"
    if isinstance(value, float) and value.is_integer():
        return "%d" % value
    if value == "":
        return '""'
    return str(value)


def test_the_docs_describe_every_key_and_default_of_every_workflow():
    sections = _docs_sections()
    assert list(sections) == list(WORKFLOWS)
    for name, workflow in WORKFLOWS.items():
        # ``paused`` is a key of every work (the Works table), also taken inside ``config``.
        assert set(sections[name]) == set(workflow.config_keys) - {"paused"}, name
        for key, default in workflow.defaults.items():
            assert key in workflow.config_keys, (name, key)
            assert _shown(default) in sections[name][key], (name, key, sections[name][key])


def test_parsing_validation_and_defaults_come_from_the_registry():
    for name, workflow in WORKFLOWS.items():
        config = {"container": "exports"} if name == "azure_blob_event_export" else {}
        job = parse_config({"account": {"name": "acme"}, "audiences": [],
                            "works": [{"workflow": name, "config": config}]})
        work = job.works[0]
        assert isinstance(work.settings, workflow.settings_type)
        for key, default in workflow.defaults.items():
            attribute = {"from": "sender", "to": "recipients"}.get(key, key)
            assert getattr(work.settings, attribute) == default, (name, key)
        with pytest.raises(ConfigError, match=r"works\[0\]\.config\.nope: unknown key"):
            parse_config({"account": {"name": "acme"}, "audiences": [],
                          "works": [{"workflow": name, "config": dict(config, nope=1)}]})
    with pytest.raises(ConfigError) as info:
        parse_config({"works": [{"workflow": "webhook_system_event"}]})
    assert str(info.value) == ("works[0].workflow: unknown workflow 'webhook_system_event' (did you "
                               "mean 'webhook_system_events'?); one of " + ", ".join(WORKFLOWS))


def test_every_workflow_has_its_beam_side():
    from pipelines.workflows import BEAM_WORKFLOWS
    assert list(BEAM_WORKFLOWS) == list(WORKFLOWS)


def test_no_module_but_the_registries_names_a_workflow():
    """Dispatch on a workflow's name is in ``core/workflows.py`` and ``pipelines/workflows.py``
    only: nowhere else is a string constant equal to a workflow name."""
    registries = {os.path.join("core", "workflows.py"), os.path.join("pipelines", "workflows.py")}
    found = []
    for top in ("core", "pipelines", "transforms", "clients", "emulators"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                path = os.path.join(folder, name)
                if not name.endswith(".py") or os.path.relpath(path, ROOT) in registries:
                    continue
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read(), path)
                found.extend((os.path.relpath(path, ROOT), node.lineno) for node in ast.walk(tree)
                             if isinstance(node, ast.Constant) and node.value in WORKFLOWS)
    assert found == []
