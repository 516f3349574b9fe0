"""core.templates: the Lytics binding of ``event`` and the sandbox's bounds."""
import sys

import pytest

from cdp_activation.core import templates
from cdp_activation.core.templates import TemplateError, TemplateRenderer, render, validate_template

# Verbatim from https://www.contentstack.com/docs/lytics/monitoring-job-status ("Slack
# Integration"), i.e. the value of "json_template" after JSON unescaping.
SLACK_TEMPLATE = (
    'local note = if std.objectHas(event.data, "notes") then event.data.notes '
    'else "A work failed"; '
    '{"text": "Alert notification: " + note + ". For more info go to: '
    'https://activate.getlytics.com/data/integrations/work/%s?aid=%s" % '
    '[event.data.subject_id, event.data.aid] }')


def failed_work(notes=None):
    data = {"aid": 1234, "subject_type": "work", "subject_id": "w-1", "verb": "failed"}
    if notes is not None:
        data["notes"] = notes
    return {"kind": "system", "id": "se-1", "ts": "2026-11-20T10:00:00Z", "data": data}


@pytest.fixture(scope="module")
def renderer():
    with TemplateRenderer() as shared:
        yield shared


def test_slack_example_with_notes(renderer):
    assert renderer.render(SLACK_TEMPLATE, failed_work("disk full")) == {
        "text": "Alert notification: disk full. For more info go to: "
                "https://activate.getlytics.com/data/integrations/work/w-1?aid=1234"}


def test_slack_example_without_notes(renderer):
    assert renderer.render(SLACK_TEMPLATE, failed_work()) == {
        "text": "Alert notification: A work failed. For more info go to: "
                "https://activate.getlytics.com/data/integrations/work/w-1?aid=1234"}


@pytest.mark.parametrize("template", [
    "{verb: event.data.verb, id: event.id}",
    "local e = std.extVar('event'); {verb: e.data.verb, id: e.id}",
    "function(event) {verb: event.data.verb, id: event.id}",
])
def test_event_binding_forms(renderer, template):
    assert renderer.render(template, failed_work()) == {"verb": "failed", "id": "se-1"}


@pytest.mark.parametrize("statement", ["import", "importstr", "importbin"])
@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ"])
def test_imports_are_refused(renderer, statement, path):
    with pytest.raises(TemplateError, match="imports are not allowed") as caught:
        renderer.render('{leak: %s "%s"}' % (statement, path), failed_work())
    assert "root:" not in str(caught.value)


def test_no_other_external_variables(renderer):
    with pytest.raises(TemplateError, match="undefined external variable: HOME"):
        renderer.render("std.extVar('HOME')", failed_work())


def test_errors_point_at_the_users_lines(renderer):
    with pytest.raises(TemplateError, match=r"field does not exist: nope \(at template:3:"):
        renderer.render("{\n  a: 1,\n  b: event.nope,\n}", failed_work())
    with pytest.raises(TemplateError, match=r"syntax error: template:1:"):
        renderer.render("{a: 1", failed_work())


def test_deep_recursion_is_bounded(renderer):
    with pytest.raises(TemplateError, match="max stack frames exceeded"):
        renderer.render("local f(n) = if n == 0 then 0 else 1 + f(n - 1); f(1000000)",
                        failed_work())


@pytest.mark.parametrize("template", [
    "std.length(std.range(1, 1e9))",                                          # memory
    "local f(n) = if n == 0 then 0 else f(n - 1) tailstrict; f(1e12)",      # time
])
def test_runaway_templates_fail_within_the_bound_and_the_renderer_recovers(renderer, template):
    # The message names the bound that stopped it ("took longer than" the time bound, or "out of
    # memory"): that, not a stopwatch here, shows the bound fired.
    with pytest.raises(TemplateError, match="longer than|out of memory"):
        renderer.render(template, failed_work())
    assert renderer.render("{ok: true}", failed_work()) == {"ok": True}


def test_output_size_is_bounded():
    with TemplateRenderer(max_output=1000) as small:
        assert len(small.render("std.join('', std.repeat(['x'], 900))", failed_work())) == 900
        with pytest.raises(TemplateError, match="output larger than 1000 bytes"):
            small.render("std.join('', std.repeat(['x'], 2000))", failed_work())


def test_template_size_is_bounded(renderer):
    with pytest.raises(TemplateError, match="template larger than"):
        renderer.render("1" + " " * templates.MAX_TEMPLATE_BYTES, failed_work())


def test_validate_template_at_config_time():
    validate_template(SLACK_TEMPLATE)
    for broken, reason in [("{a: ", "syntax error"), ("{a: b}", "Unknown variable: b"),
                           ("importstr '/etc/passwd'", "imports are not allowed")]:
        with pytest.raises(TemplateError, match=reason):
            validate_template(broken)


def test_module_level_render_uses_a_shared_worker():
    assert render("event.data.subject_id", failed_work()) == "w-1"


def test_a_worker_that_died_while_idle_is_replaced():
    with TemplateRenderer() as fresh:
        assert fresh.render("1 + 1", failed_work()) == 2
        fresh._proc.kill()          # e.g. the OOM killer, between two alerts
        fresh._proc.wait()
        assert fresh.render("event.id", failed_work()) == "se-1"


def test_a_slow_worker_start_does_not_count_against_the_evaluation_bound(tmp_path, monkeypatch):
    # A machine busy enough to take a second to start the worker: the template's own bound (half
    # a second here) covers its evaluation only, so a valid alert is not dead-lettered for it.
    slow_python = tmp_path / "slow-python"
    slow_python.write_text("#!/bin/sh\nsleep 1\nexec %s \"$@\"\n" % sys.executable)
    slow_python.chmod(0o755)
    monkeypatch.setattr(templates.sys, "executable", str(slow_python))
    renderer = templates.TemplateRenderer(timeout=0.5)
    try:
        assert renderer.render("{subject: event.data.subject_id}", failed_work()) == {"subject": "w-1"}
    finally:
        renderer.close()
