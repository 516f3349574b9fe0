"""Jsonnet body templates for webhook alerts (CONTRACT 5.3), evaluated in a sandbox.

Binding
    The system event object (the record as received: ``id``, ``ts``, ``data``...) is in scope as the
    variable ``event``, exactly as in the Slack example of the Lytics documentation
    (https://www.contentstack.com/docs/lytics/monitoring-job-status)::

        local note = if std.objectHas(event.data, "notes") then event.data.notes else "A work failed";
        {"text": "Alert notification: " + note + ". For more info go to: https://activate.getlytics.com/data/integrations/work/%s?aid=%s" % [event.data.subject_id, event.data.aid] }

    The same object is also available as ``std.extVar('event')`` and, when the template is a
    top-level function ``function(event) ...``, as its argument. Error locations refer to the
    template's own lines.

Sandbox
    - ``import``, ``importstr`` and ``importbin`` are refused (a template could otherwise read
      /etc/passwd or /proc/self/environ); ``std.extVar`` knows only ``event``.
    - Evaluation runs in a separate, long-lived worker process with an empty environment, a memory
      limit (:data:`MEMORY_LIMIT_BYTES`) and no core dumps, so a runaway template cannot crash or
      starve the pipeline: the C++ evaluator aborts its process when memory runs out.
    - The call stack is bounded (:data:`MAX_STACK`), each evaluation has a wall-clock bound
      (:data:`TIMEOUT_SECONDS`, counted from the request to a worker that said it is ready, so a
      slow process start does not count; a worker that overruns is killed and replaced), and so do the
      template's size (:data:`MAX_TEMPLATE_BYTES`) and the output's (:data:`MAX_OUTPUT_BYTES`).

Every failure raises :class:`TemplateError`, whose message is one line without the event's content.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

MAX_STACK = 200
MAX_TRACE = 5
TIMEOUT_SECONDS = 2.0
#: Bound on a new worker's start (interpreter and the Jsonnet module), apart from the evaluation
#: bound: a busy machine may take seconds to start a process, which must not count against the
#: template.
STARTUP_SECONDS = 60.0
#: The line a worker writes once it can evaluate.
_READY = b"ready\n"
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_OUTPUT_BYTES = 1024 * 1024
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024

#: Prepended to every template; on a line of its own so that error locations can be shifted back.
_PRELUDE = "local event = std.extVar('event');\n"
_SNIPPET_NAME = "template"
_SAMPLE_EVENT = {
    "kind": "system", "id": "validate", "ts": "2026-01-01T00:00:00Z",
    "data": {"aid": 0, "subject_type": "work", "subject_id": "w", "verb": "failed",
             "notes": "sample"}}


class TemplateError(ValueError):
    """A template that cannot be evaluated; the message says why, in one line."""


# --------------------------------------------------------------------------------------------
# The worker process (runs this file as a script).


def _refuse_import(base, rel):
    raise RuntimeError("imports are not allowed in templates")


def _limit_worker_resources():
    try:
        import resource
    except ImportError:  # not POSIX: the wall-clock bound still applies
        return
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _evaluate(jsonnet, template, event_json):
    return jsonnet.evaluate_snippet(
        _SNIPPET_NAME, _PRELUDE + template, ext_codes={"event": event_json},
        tla_codes={"event": event_json}, import_callback=_refuse_import,
        max_stack=MAX_STACK, max_trace=MAX_TRACE)


def _handle_request(jsonnet, line):
    request = json.loads(line)
    # Should the parent die mid-evaluation, the default SIGALRM action ends this process.
    if hasattr(signal, "alarm"):
        signal.alarm(int(request["timeout"]) + 2)
    try:
        text = _evaluate(jsonnet, request["template"], request["event"])
    except RuntimeError as exc:
        return {"error": str(exc)}
    finally:
        if hasattr(signal, "alarm"):
            signal.alarm(0)
    if len(text.encode("utf-8")) > request["max_output"]:
        return {"error": "LIMIT: output larger than %d bytes" % request["max_output"]}
    return {"ok": text}


def _worker_main():
    _limit_worker_resources()
    import _jsonnet
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)
    stdout.flush()
    for line in stdin:
        reply = json.dumps(_handle_request(_jsonnet, line), ensure_ascii=False)
        stdout.write(reply.encode("utf-8") + b"\n")
        stdout.flush()


# --------------------------------------------------------------------------------------------
# The parent side.


class _WorkerGone(Exception):
    pass


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass


class TemplateRenderer:
    """Evaluates templates in a worker process; one evaluation at a time, thread-safe.

    The worker starts on first use and is replaced after it overruns, crashes or is closed. Use one
    renderer per DoFn instance (create it in ``setup()``, :meth:`close` it in ``teardown()``).
    """

    def __init__(self, timeout: float = TIMEOUT_SECONDS, max_output: int = MAX_OUTPUT_BYTES) -> None:
        self.timeout = timeout
        self.max_output = max_output
        self._lock = threading.Lock()
        self._proc = None
        self._finalizer = None

    def render(self, template: str, event_record: Mapping[str, Any]) -> Any:
        """The JSON value of ``template`` with ``event`` bound to ``event_record`` (any JSON value:
        an object for a webhook body, but a template may give a list, a string...)."""
        _check_template_size(template)
        request = json.dumps({"template": template, "event": json.dumps(event_record),
                              "timeout": self.timeout, "max_output": self.max_output})
        with self._lock:
            reply = self._exchange(request.encode("utf-8") + b"\n")
        if "error" in reply:
            raise TemplateError(_one_line(reply["error"]))
        return json.loads(reply["ok"])

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> TemplateRenderer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exchange(self, request):
        proc = self._send(request)
        deadline = time.monotonic() + self.timeout
        try:
            return json.loads(self._read_line(proc, deadline))
        except TimeoutError:
            self._stop()
            raise TemplateError("evaluation took longer than %gs" % self.timeout) from None
        except (_WorkerGone, OSError, ValueError):
            self._stop()
            raise TemplateError("evaluation ran out of memory (limit %d MiB) or crashed"
                                % (MEMORY_LIMIT_BYTES // (1024 * 1024))) from None

    def _send(self, request):
        """Writes a request, replacing a worker that died while idle (one retry)."""
        for attempt in (1, 2):
            try:
                proc = self._start()
                proc.stdin.write(request)
                proc.stdin.flush()
                return proc
            except OSError:
                self._stop()
                if attempt == 2:
                    raise TemplateError("template worker could not be started") from None

    def _read_line(self, proc, deadline):
        fd, buffer = proc.stdout.fileno(), bytearray()
        limit = 6 * self.max_output + 4096  # a backstop: the worker bounds the text itself
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise TimeoutError()
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise _WorkerGone()
                buffer += chunk
                if len(buffer) > limit:
                    raise _WorkerGone()
        return bytes(buffer[:buffer.index(b"\n")])

    def _start(self):
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={}, cwd="/" if os.name == "posix" else None)
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        try:
            ready = self._read_line(self._proc, time.monotonic() + STARTUP_SECONDS) + b"\n"
        except (TimeoutError, _WorkerGone):
            ready = b""
        if ready != _READY:
            raise OSError("the template worker did not start")
        return self._proc

    def _stop(self):
        if self._finalizer is not None:
            self._finalizer()  # kills and reaps the worker once
        self._proc = self._finalizer = None


def _check_template_size(template):
    if not isinstance(template, str):
        raise TemplateError("a template must be a string")
    if len(template.encode("utf-8")) > MAX_TEMPLATE_BYTES:
        raise TemplateError("template larger than %d bytes" % MAX_TEMPLATE_BYTES)


_LOCATION = re.compile(r"%s:(\(?)(\d+):" % _SNIPPET_NAME)
_SPAN_END = re.compile(r"(%s:\(\d+:\d+\)-\()(\d+):" % _SNIPPET_NAME)


def _shift_lines(text):
    """Error locations relative to the user's template (the prelude is line 1)."""
    text = _LOCATION.sub(lambda m: "%s:%s%d:" % (_SNIPPET_NAME, m.group(1), int(m.group(2)) - 1),
                         text)
    return _SPAN_END.sub(lambda m: "%s%d:" % (m.group(1), int(m.group(2)) - 1), text)


def _one_line(message):
    """``RUNTIME ERROR: x`` plus its first template location, as one short line."""
    lines = [ln.strip() for ln in _shift_lines(message).strip().splitlines() if ln.strip()]
    if not lines:
        return "evaluation failed"
    first = lines[0]
    for prefix, label in (("STATIC ERROR: ", "syntax error: "), ("RUNTIME ERROR: ", "error: "),
                          ("LIMIT: ", "")):
        if first.startswith(prefix):
            first = label + first[len(prefix):]
    where = next((ln.split()[0] for ln in lines[1:] if ln.startswith(_SNIPPET_NAME + ":")), None)
    if where and _SNIPPET_NAME + ":" not in first:
        first += " (at %s)" % where
    if "max stack frames exceeded" in first:
        first += " (recursion deeper than %d)" % MAX_STACK
    return first[:300]


_shared = None
_shared_lock = threading.Lock()


def _shared_renderer():
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TemplateRenderer()
        return _shared


def render(template: str, event_record: Mapping[str, Any]) -> Any:
    """Evaluates ``template`` with ``event`` bound to ``event_record`` (a shared worker)."""
    return _shared_renderer().render(template, event_record)


def validate_template(template: str) -> None:
    """Config-time check: the template compiles and evaluates against a sample failed-work event.

    Raises :class:`TemplateError` on a syntax error, an unknown variable, an import, an error
    raised for the sample event, or a template over the time, stack or size bounds.
    """
    render(template, _SAMPLE_EVENT)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
