"""Jsonnet body templates for webhook alerts, evaluated with no file access.

The system event is bound to the variable ``event``. ``import``, ``importstr`` and ``importbin`` are
refused (a template could otherwise read /proc/self/environ), and evaluation depth is bounded.
"""
import json

import _jsonnet

MAX_STACK = 200
MAX_TRACE = 5


class TemplateError(ValueError):
    pass


def _refuse_import(base, rel):
    raise RuntimeError("imports are not allowed in templates (%s)" % rel)


def render(template, event_record):
    """Evaluates a template with ``event`` bound to the system event object; returns a JSON value."""
    source = "local event = std.extVar('event');\n" + template
    try:
        text = _jsonnet.evaluate_snippet(
            "template", source, ext_codes={"event": json.dumps(event_record)},
            import_callback=_refuse_import, max_stack=MAX_STACK, max_trace=MAX_TRACE)
    except RuntimeError as exc:
        raise TemplateError(str(exc).strip().splitlines()[0][:300]) from None
    return json.loads(text)


def validate_template(template):
    """Compiles a template against a sample event; raises TemplateError if it does not compile."""
    sample = {"kind": "system", "id": "validate", "ts": "2026-01-01T00:00:00Z",
              "data": {"aid": 0, "subject_type": "work", "subject_id": "w", "verb": "failed",
                       "notes": "sample"}}
    render(template, sample)
