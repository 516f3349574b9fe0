"""Security: no one gets in, nothing leaks (issue 9, part 4).

- SSRF: webhook URLs that reach loopback, link-local (cloud metadata), private, CGNAT or
  unique-local addresses, in every spelling, are refused before any connection and dead-lettered
  with the reason, through ``WebhookSender`` (with every ``connect()`` of the process recorded) and
  through the real pipeline (with canary servers that record any request). A redirect from an
  allowed loopback server to an internal address is not followed.
- Jsonnet templates that import files, recurse forever or build huge values are refused at config
  time when they always do so, and otherwise fail their own alert only, within a bound, while the
  pipeline goes on; nothing of the files they aimed at appears anywhere.
- CSV export cells that a spreadsheet would run as a formula come out guarded; numbers stay numbers.
- A run at DEBUG log level with every secret set (Event Hub key, Blob account key, webhook bearer
  token, signing secret, webhook URL path and query, SMTP password, and wrong keys that make works
  fail) prints and writes none of them, in plain, base64 or URL-encoded form.
"""
import base64
import csv
import gzip
import io
import json
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.parse

import pytest

from emulators.eventhubs import LocalEventHubs
from tests.commands import write_job
from tests.fixtures_alerts import (SMTP_PASSWORD, SMTP_USER, Reply, WebhookServer, make_work,
                                   read_jsonl, system_event)
from tests.test_faults import (PY, ROOT, azure_blob_files, pipeline_command, unique_container)
from cdp_activation.clients.webhook import WebhookSender

RUN_TIMEOUT = 180


def _run(cfg, inp, out, env=None, extra=(), argv_prefix=None, timeout=RUN_TIMEOUT):
    full_env = dict(os.environ)
    for name in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"):
        full_env.pop(name, None)
    full_env.update(env or {})
    command = pipeline_command("stream", cfg, inp, out, *extra)
    if argv_prefix is not None:
        command = argv_prefix + command[3:]      # replace "python -m pipelines.stream"
    return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def _failed(event_id, subject_id="w-1", notes=None):
    data = {"aid": 1234, "subject_type": "work", "subject_id": subject_id, "verb": "failed"}
    if notes is not None:
        data["notes"] = notes
    return {"kind": "system", "id": event_id, "ts": "2026-11-20T10:00:00Z", "data": data}


def _profile(i, **fields):
    record = {"event_id": "e-%d" % i, "user_id": "u%d" % (i % 3), "event": "purchase",
              "ts": "2026-11-20T%02d:00:00Z" % (i % 24)}
    record.update(fields)
    return record


# ------------------------------------------------------------------------------------------------
# SSRF
# ------------------------------------------------------------------------------------------------


class _Canary:
    """A TCP listener that records every connection it gets (IPv4 or IPv6 loopback)."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connections = 0

    def poll(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                return self.connections
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def canaries():
    v4 = _Canary()
    try:
        v6 = _Canary(socket.AF_INET6, "::1")
    except OSError:
        v6 = None
    yield v4, v6
    v4.close()
    if v6 is not None:
        v6.close()


def _ssrf_urls(v4_port, v6_port):
    """(url, words the refusal must contain); loopback URLs point at live canaries."""
    urls = [
        ("http://127.0.0.1:%d/hook" % v4_port, "loopback address"),
        ("http://localhost:%d/hook" % v4_port, "loopback address"),
        ("http://0x7f000001:%d/hook" % v4_port, "loopback address"),
        ("http://2130706433:%d/hook" % v4_port, "loopback address"),
        ("http://0177.0.0.1:%d/hook" % v4_port, "loopback address"),
        ("http://0.0.0.0:%d/hook" % v4_port, "unspecified address"),   # Linux: reaches loopback
        ("http://[::ffff:127.0.0.1]:%d/hook" % v4_port, "127.0.0.1 embedded in IPv6"),
        ("http://[::ffff:7f00:1]:%d/hook" % v4_port, "127.0.0.1 embedded in IPv6"),
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/",
         "link-local address (the cloud metadata range)"),
        ("http://10.0.0.1/hook", "private address"),
        ("http://100.64.0.1/hook", "carrier-grade NAT address"),
        ("http://[fc00::1]/hook", "unique-local address"),
        ("https://192.168.0.1/hook", "private address"),
    ]
    if v6_port is not None:
        urls += [("http://[::1]:%d/hook" % v6_port, "loopback address"),
                 ("http://[::]:%d/hook" % v6_port, "unspecified address")]
    else:
        urls += [("http://[::1]/hook", "loopback address")]
    return urls


def test_ssrf_spellings_are_refused_without_any_connect(canaries, socket_connects):
    v4, v6 = canaries
    for url, reason in _ssrf_urls(v4.port, v6.port if v6 else None):
        work = make_work("webhook_system_events",
                         {"webhook_url": url, "max_attempts": 3, "timeout_seconds": 2})
        sender = WebhookSender(work.id, work.settings, sleep=lambda s: None)
        try:
            delivery = sender.send(system_event("se-ssrf"))
        finally:
            sender.close()
        assert not delivery.ok, url
        assert delivery.attempts == 1, (url, delivery)      # refused: never retried
        assert "refused to connect" in delivery.reason and reason in delivery.reason, (
            url, delivery.reason)
        assert socket_connects == [], "%s: connect() was called: %s" % (url, socket_connects)
    assert v4.poll() == 0 and (v6 is None or v6.poll() == 0)


def test_ssrf_destinations_fail_validation_before_any_data_moves(canaries, tmp_path):
    from cdp_activation.core.config import ConfigError, check_destinations, parse_config
    v4, v6 = canaries
    urls = _ssrf_urls(v4.port, v6.port if v6 else None)
    works = [{"id": "w-ssrf-%02d" % i, "workflow": "webhook_system_events",
              "config": {"system_event_type": "failed", "webhook_url": url,
                         "max_attempts": 3, "timeout_seconds": 2}}
             for i, (url, _) in enumerate(urls)]
    for i, ((url, reason), work) in enumerate(zip(urls, works)):
        job = parse_config({"account": {"name": "acme"}, "audiences": [], "works": [work]}, {})
        with pytest.raises(ConfigError) as info:
            check_destinations(job)
        message = str(info.value)
        assert message.startswith("works[0].config.webhook_url: the job refuses to connect to "), (
            url, message)
        assert reason in message and "set allow_private_network: true" in message, (url, message)
    # The run command refuses the same config in one line, exit 2, before reading any input.
    config = {"account": {"name": "acme", "aid": 1234}, "audiences": [], "works": works}
    cfg, inp = write_job(str(tmp_path / "in"), config, [_failed("se-1"), _profile(1)])
    out = str(tmp_path / "out")
    result = _run(cfg, inp, out)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: works[0].config.webhook_url: the job refuses to connect to 127.0.0.1, a loopback "
        "address; set allow_private_network: true")
    assert "Traceback" not in result.stderr and not os.path.exists(out)
    assert v4.poll() == 0 and (v6 is None or v6.poll() == 0)


def test_redirects_to_internal_addresses_are_dead_lettered_and_never_followed(canaries, tmp_path):
    v4, v6 = canaries
    redirector = WebhookServer()
    internal = WebhookServer()          # "internal" service the redirects point at
    try:
        works = []
        # Loopback is allowed for these works only, to reach the redirecting test server; the
        # redirects it answers point at the metadata address and at another loopback server.
        redirector.script("/to-metadata", Reply(302, {
            "Location": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}))
        redirector.script("/to-internal", Reply(307, {"Location": internal.url("/admin")}))
        redirector.script("/to-internal-hex", Reply(301, {
            "Location": "http://0x7f000001:%d/admin" % internal.port}))
        for path in ("/to-metadata", "/to-internal", "/to-internal-hex"):
            works.append({"id": "w-redirect%s" % path.replace("/", "-"),
                          "workflow": "webhook_system_events",
                          "config": {"system_event_type": "failed",
                                     "webhook_url": redirector.url(path),
                                     "allow_private_network": True, "max_attempts": 3,
                                     "timeout_seconds": 2}})
        config = {"account": {"name": "acme", "aid": 1234}, "audiences": [], "works": works}
        cfg, inp = write_job(str(tmp_path / "in"), config,
                          [_failed("se-1"), _profile(1)])
        out = str(tmp_path / "out")
        result = _run(cfg, inp, out)
        assert result.returncode == 0, result.stderr[-3000:]
        for path in ("/to-metadata", "/to-internal", "/to-internal-hex"):
            [record] = read_jsonl(os.path.join(
                out, "deadletter", "w-redirect%s.jsonl" % path.replace("/", "-")))
            assert "redirect" in record["error"] and "not followed" in record["error"], record
            assert len(redirector.requests(path)) == 1      # a 3xx is not retried either
        assert internal.requests() == []
        assert v4.poll() == 0 and (v6 is None or v6.poll() == 0)
        summary = json.loads(open(os.path.join(out, "summary.json")).read())
        for work in works:
            assert summary["works"][work["id"]]["alerts"] == 0
            assert summary["works"][work["id"]]["deadlettered"] == 1
    finally:
        redirector.close()
        internal.close()


# ------------------------------------------------------------------------------------------------
# Jsonnet templates
# ------------------------------------------------------------------------------------------------

ENV_CANARY = "env-canary-" + secrets.token_hex(8)
LEAK_MARKERS = ("root:x:0:0", "root:", ENV_CANARY, "daemon:")

_RUNTIME_TEMPLATE = """
local s = event.data.subject_id;
if s == "w-passwd" then {leak: importstr "/etc/passwd"}
else if s == "w-environ" then {leak: importstr "/proc/self/environ"}
else if s == "w-bin" then {leak: importbin "/etc/passwd"}
else if s == "w-import" then import "/etc/passwd"
else if s == "w-relative" then {leak: importstr "../../../../../../../../etc/passwd"}
else if s == "w-extvar" then {leak: std.extVar("HOME")}
else if s == "w-deep" then (local f(n) = 1 + f(n + 1); {depth: f(0)})
else if s == "w-huge" then {size: std.length(std.range(1, 1e9))}
else if s == "w-wide" then (local d(t, n) = if n == 0 then t else d(t + t, n - 1); {wide: d("0123456789abcdef", 17)})
else if s == "w-slow" then (local f(n) = if n == 0 then 0 else f(n - 1) tailstrict; {n: f(1e12)})
else {text: event.id}
"""
_BAD_SUBJECTS = ("w-passwd", "w-environ", "w-bin", "w-import", "w-relative", "w-extvar", "w-deep",
                 "w-huge", "w-wide", "w-slow")


def _tree_text(directory):
    parts = []
    for base, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(base, name), "rb") as fh:
                parts.append((os.path.join(base, name), fh.read()))
    return parts


@pytest.mark.timeout(300)
def test_hostile_templates_fail_their_alert_only_within_a_bound(tmp_path):
    server = WebhookServer()
    try:
        config = {"account": {"name": "acme", "aid": 1234}, "audiences": [], "works": [
            {"id": "w-tpl", "workflow": "webhook_system_events",
             "config": {"system_event_type": "failed", "webhook_url": server.url(),
                        "allow_private_network": True, "json_template": _RUNTIME_TEMPLATE}}]}
        events = [_failed("se-ok-1", "w-ok-1")] + [
            _failed("se-%s" % s, s) for s in _BAD_SUBJECTS] + [_failed("se-ok-2", "w-ok-2")]
        cfg, inp = write_job(str(tmp_path / "in"), config, events)
        out = str(tmp_path / "out")
        result = _run(cfg, inp, out, env={"LEAK_CANARY": ENV_CANARY})
        assert result.returncode == 0, result.stderr[-3000:]
        # Each runaway template is stopped by its bound (2 s wall clock, stack, memory, size): the
        # dead letters below name the bound; pytest-timeout guards the test as a whole. "w-wide"
        # reaches the output bound (2 MiB, built by 17 doublings of a string) with milliseconds of
        # work, so the time bound cannot stop it first on a busy machine.

        bodies = sorted(json.loads(r.body)["text"] for r in server.requests())
        assert bodies == ["se-ok-1", "se-ok-2"]
        errors = {d["raw"]["id"]: d["error"]
                  for d in read_jsonl(os.path.join(out, "deadletter", "w-tpl.jsonl"))}
        assert set(errors) == {"se-%s" % s for s in _BAD_SUBJECTS}
        assert all(e.startswith("template error: ") for e in errors.values()), errors
        for s in ("w-passwd", "w-environ", "w-bin", "w-import", "w-relative"):
            assert "imports are not allowed" in errors["se-" + s], errors["se-" + s]
        assert "undefined external variable" in errors["se-w-extvar"]
        assert "max stack frames exceeded" in errors["se-w-deep"]
        assert "output larger than" in errors["se-w-wide"]
        for s in ("w-huge", "w-slow"):
            assert re.search("longer than|out of memory", errors["se-" + s]), errors["se-" + s]
        everything = [("stdout", result.stdout.encode()), ("stderr", result.stderr.encode())]
        everything += _tree_text(out)
        everything += [("webhook", r.body) for r in server.requests()]
        for where, data in everything:
            for marker in LEAK_MARKERS:
                assert marker.encode() not in data, "%s contains %r" % (where, marker)
    finally:
        server.close()


@pytest.mark.parametrize("template, reason", [
    ('{leak: importstr "/etc/passwd"}', "imports are not allowed"),
    ('{leak: importbin "/proc/self/environ"}', "imports are not allowed"),
    ('import "/etc/passwd"', "imports are not allowed"),
    ("local f(n) = f(n + 1) + 1; f(0)", "max stack frames exceeded"),
    ("std.length(std.range(1, 1e9))", "longer than|out of memory"),
    ('std.makeArray(200000, function(i) "0123456789")', "output larger than"),
])
def test_templates_that_always_fail_are_refused_at_config_time(tmp_path, template, reason):
    config = {"account": {"name": "acme", "aid": 1234}, "audiences": [], "works": [
        {"workflow": "webhook_system_events",
         "config": {"system_event_type": "failed", "webhook_url": "http://127.0.0.1:9/x",
                    "allow_private_network": True, "json_template": template}}]}
    cfg, inp = write_job(str(tmp_path / "in"), config, [_failed("se-1")])
    result = _run(cfg, inp, str(tmp_path / "out"), env={"LEAK_CANARY": ENV_CANARY})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: works[0].config.json_template: "), \
        result.stderr
    assert re.search(reason, lines[0]), lines[0]
    for marker in LEAK_MARKERS:
        assert marker not in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# CSV formula guard
# ------------------------------------------------------------------------------------------------

FORMULAS = ["=cmd|' /C calc'!A0", "=HYPERLINK(\"http://x.example\",\"y\")", "+1+cmd|' /C calc'!A0",
            "-2+3+cmd|' /C calc'!A0", "@SUM(A1:A9)", "\t=1+1", "\r=1+1", "=1+1\n=2"]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_formula_cells_are_guarded_and_numbers_stay_numbers(azurite, tmp_path, fmt):
    params = ["f%d" % i for i in range(len(FORMULAS))] + ["neg_int", "neg_float", "pos", "big",
                                                          "text", "nested", "listed", "flag"]
    config = {"account": {"name": "acme", "aid": 1234}, "audiences": [], "works": [
        {"id": "w-csv", "workflow": "azure_blob_event_export",
         "config": {"connection_string": azurite.connection_string, "container": "${CONTAINER}",
                    "prefix": "guard/", "export_type": "events", "period_hours": 24,
                    "event_parameters": params, "attributes": ["email", "score"],
                    "format": fmt}},
        {"id": "w-csv-sys", "workflow": "azure_blob_event_export",
         "config": {"connection_string": azurite.connection_string, "container": "${CONTAINER}",
                    "prefix": "guard-sys/", "export_type": "system_events", "period_hours": 24,
                    "format": fmt}}]}
    properties = {"f%d" % i: f for i, f in enumerate(FORMULAS)}
    properties.update({"neg_int": -5, "neg_float": -1.5, "pos": 42, "big": 2 ** 62,
                       "text": "plain text", "nested": {"a": "=1+1"}, "listed": ["=1+1", -1],
                       "flag": True})
    record = {"event_id": "=1+1", "user_id": "@user", "anonymous_id": "-anon",
              "event": "+purchase", "ts": "2026-11-20T10:00:00Z",
              "properties": properties, "traits": {"email": "=x@example.com", "score": -3}}
    sys_event = _failed("=se-1", "-w-1", notes="=cmd|' /C calc'!A0")
    cfg, inp = write_job(str(tmp_path / "in"), config, [record, sys_event])
    container = unique_container("guard")
    result = _run(cfg, inp, str(tmp_path / "out"), env={"CONTAINER": container})
    assert result.returncode == 0, result.stderr[-3000:]
    files = {n: d for n, d in azure_blob_files(azurite.connection_string, container).items()
             if "/_" not in "/" + n}
    assert len(files) == 2

    def rows_of(prefix):
        [(name, data)] = [(n, d) for n, d in files.items() if n.startswith(prefix)]
        if fmt == "csv.gz":
            data = gzip.decompress(data)
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        return [dict(zip(rows[0], r)) for r in rows[1:]]

    [row] = rows_of("guard/")
    for i, formula in enumerate(FORMULAS):
        assert row["properties.f%d" % i] == "'" + formula, (formula, row["properties.f%d" % i])
    assert (row["event_id"], row["user_id"], row["anonymous_id"], row["event"]) == (
        "'=1+1", "'@user", "'-anon", "'+purchase")
    assert row["traits.email"] == "'=x@example.com"
    # Numbers stay numbers: no quote, no guard, the same value.
    assert (row["properties.neg_int"], row["properties.neg_float"], row["properties.pos"],
            row["properties.big"], row["traits.score"]) == ("-5", "-1.5", "42", str(2 ** 62),
                                                            "-3")
    assert row["properties.text"] == "plain text" and row["properties.flag"] == "true"
    # Objects and lists are JSON: they start with { or [ and cannot be formulas.
    assert json.loads(row["properties.nested"]) == {"a": "=1+1"}
    assert json.loads(row["properties.listed"]) == ["=1+1", -1]
    [sys_row] = rows_of("guard-sys/")
    assert sys_row["id"] == "'=se-1" and sys_row["subject_id"] == "'-w-1"
    assert sys_row["notes"] == "'=cmd|' /C calc'!A0"
    assert sys_row["aid"] == "1234"
    # No cell of either file starts with a formula character unless it is a number.
    for r in (row, sys_row):
        for column, value in r.items():
            if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(value)   # only numbers may start that way


# ------------------------------------------------------------------------------------------------
# Secrets at DEBUG log level
# ------------------------------------------------------------------------------------------------

#: Runs pipelines.stream with the root logger, the Azure SDKs, Beam and the project at DEBUG
#: (after the pipeline's own logging set-up, which --verbose puts at INFO).
_DEBUG_WRAPPER = r"""
import logging, sys
import pipelines.launch as launch
_configure = launch._configure_logging
def _debug_logging(verbose, redactor):
    _configure(verbose, redactor)
    logging.getLogger().setLevel(logging.DEBUG)
    for name in ("azure", "azure.core", "azure.eventhub", "azure.storage", "uamqp", "urllib3",
                 "apache_beam", "pipelines", "cdp_activation", "emulators"):
        logging.getLogger(name).setLevel(logging.DEBUG)
launch._configure_logging = _debug_logging
from pipelines import stream
sys.exit(stream.run(sys.argv[1:]))
"""


def _encoded_forms(secret):
    """The secret as text, URL-encoded, JSON-escaped and base64 (also the stable middle part of
    its base64 at each alignment inside a longer stream, e.g. SMTP AUTH PLAIN)."""
    raw = secret.encode("utf-8")
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
             json.dumps(secret)[1:-1], base64.b64encode(raw).decode(),
             base64.urlsafe_b64encode(raw).decode()}
    for pad in (0, 1, 2):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        middle = encoded[4 if pad else 0:-4]
        if len(middle) >= 12:
            forms.add(middle)
            forms.add(middle.replace("+", "-").replace("/", "_"))
    return {f for f in forms if len(f) >= 8}


def _start_azurite_with_account(account, key):
    """A second Azurite whose only account has a random key (AZURITE_ACCOUNTS)."""
    import shutil
    import signal
    import tempfile
    from tests.fixtures_azurite import AZURITE_BIN, _install
    _install()
    workdir = tempfile.mkdtemp(prefix="azurite-secrets-")
    proc = subprocess.Popen(
        [shutil.which("node"), AZURITE_BIN, "--blobHost", "127.0.0.1", "--blobPort", "0",
         "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir,
        env=dict(os.environ, AZURITE_ACCOUNTS="%s:%s" % (account, key)))
    deadline = time.monotonic() + 30
    port = None
    while time.monotonic() < deadline and port is None:
        line = proc.stdout.readline().decode("utf-8", "replace")
        if not line and proc.poll() is not None:
            break
        match = re.search(r"listens on https?://[^:\s]+:(\d+)", line)
        if match:
            port = int(match.group(1))
    if port is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        raise RuntimeError("azurite with a custom account did not start")
    import threading
    threading.Thread(target=lambda: [None for _ in iter(proc.stdout.readline, b"")],
                     daemon=True).start()
    return proc, port, workdir


@pytest.mark.timeout(300)
def test_no_secret_in_any_output_at_debug_level(tmp_path, smtp_tls_server, test_cert):
    import signal
    import shutil
    token = "tok" + secrets.token_hex(16)
    signing = "whsec" + secrets.token_hex(16)
    path_secret = "pathsec" + secrets.token_hex(12)
    query_secret = "qsec" + secrets.token_hex(12)
    eh_key = base64.b64encode(secrets.token_bytes(32)).decode()
    eh_wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    blob_account = "acct" + secrets.token_hex(4)
    blob_key = base64.b64encode(secrets.token_bytes(64)).decode()
    blob_wrong = base64.b64encode(secrets.token_bytes(64)).decode()
    secret_values = {"eventhub key": eh_key, "wrong eventhub key": eh_wrong,
                     "blob account key": blob_key, "wrong blob key": blob_wrong,
                     "bearer token": token, "signing secret": signing,
                     "webhook URL path": path_secret, "webhook URL query": query_secret,
                     "SMTP password": SMTP_PASSWORD}

    azurite_proc, azurite_port, azurite_dir = _start_azurite_with_account(blob_account, blob_key)
    server = WebhookServer()
    hook_path = "/services/T0001/B0002/%s?token=%s" % (path_secret, query_secret)
    # A receiver that rejects the token and echoes it back: the error path quotes responses.
    server.script("/echo", Reply(401, body=("bad token %s, secret %s" % (token, signing))
                                 .encode()))
    try:
        with LocalEventHubs(partitions=2, key=eh_key) as hubs:
            blob_endpoint = "http://127.0.0.1:%d/%s" % (azurite_port, blob_account)
            blob_cs = "DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;" \
                % (blob_account, blob_key, blob_endpoint)
            env = {
                "EH_CS": hubs.connection_string,
                "EH_CS_WRONG": hubs.connection_string_with(key=eh_wrong),
                "BLOB_CS": blob_cs, "BLOB_CS_WRONG": blob_cs.replace(blob_key, blob_wrong),
                "HOOK_URL": server.url(hook_path), "ECHO_URL": server.url("/echo"),
                "HOOK_TOKEN": token, "HOOK_SECRET": signing, "SMTP_PASSWORD": SMTP_PASSWORD,
                "SSL_CERT_FILE": test_cert[0], "AZURE_LOG_LEVEL": "DEBUG",
                "PYTHONUNBUFFERED": "1"}
            blob = {"container": "exports", "prefix": "acme/", "export_type": "events",
                    "period_hours": 24, "format": "csv"}
            hook = {"system_event_type": "failed", "allow_private_network": True,
                    "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
                    "signing_secret": "${HOOK_SECRET}", "max_attempts": 2,
                    "timeout_seconds": 5}
            config = {"account": {"name": "acme", "aid": 1234},
                      "audiences": [{"id": "a1", "slug": "buyers",
                                     "condition": {"event": "purchase"}}],
                      "works": [
                          {"id": "w-eh", "workflow": "eventhub_audience_export",
                           "config": {"connection_string": "${EH_CS}"}},
                          {"id": "w-eh-wrong", "workflow": "eventhub_audience_export",
                           "config": {"connection_string": "${EH_CS_WRONG}"}},
                          {"id": "w-blob", "workflow": "azure_blob_event_export",
                           "config": dict(blob, connection_string="${BLOB_CS}")},
                          {"id": "w-blob-wrong", "workflow": "azure_blob_event_export",
                           "config": dict(blob, connection_string="${BLOB_CS_WRONG}",
                                          prefix="wrong/")},
                          {"id": "w-hook", "workflow": "webhook_system_events",
                           "config": dict(hook, webhook_url="${HOOK_URL}")},
                          {"id": "w-echo", "workflow": "webhook_system_events",
                           "config": dict(hook, webhook_url="${ECHO_URL}")},
                          {"id": "w-mail", "workflow": "email_system_events",
                           "config": {"system_event_type": "failed",
                                      "smtp_host": smtp_tls_server.host,
                                      "smtp_port": smtp_tls_server.port,
                                      "from": "alerts@acme.test", "to": ["ops@acme.test"],
                                      "username": SMTP_USER, "password": "${SMTP_PASSWORD}",
                                      "allow_private_network": True}}]}
            lines = [_profile(i) for i in range(12)] + [_failed("se-1")]
            cfg, inp = write_job(str(tmp_path / "in"), config, lines)
            out = str(tmp_path / "out")
            result = _run(cfg, inp, out, env=env, extra=["--verbose"],
                             argv_prefix=[PY, "-c", _DEBUG_WRAPPER])
            received = hubs.events()
            exported = azure_blob_files(blob_cs, "exports")
        (tmp_path / "stderr.txt").write_text(result.stderr)       # for a look after a failure
        # The secrets were really in play: every destination was used with them.
        assert result.returncode == 1     # the wrong keys fail their works, by design
        assert "DEBUG" in result.stderr    # the run logged at DEBUG level
        assert len(received) > 0
        assert any(name.startswith("acme/acme_events_w-blob_") for name in exported)
        assert [r.headers["authorization"] for r in server.requests("/services/T0001/B0002/%s"
                                                                    "?token=%s" % (path_secret,
                                                                                   query_secret))]
        assert all(r.headers["authorization"] == "Bearer " + token for r in server.requests())
        assert server.requests("/echo")
        assert smtp_tls_server.mails and smtp_tls_server.recorder.logins
        assert "rejected the credentials" in result.stderr           # the wrong-key works
        assert "credentials rejected" in result.stderr

        texts = [("stdout", result.stdout.encode()), ("stderr", result.stderr.encode())]
        texts += _tree_text(out)
        assert any(name.endswith("report.html") for name, _ in texts)
        assert any(name.endswith("system_events.jsonl") for name, _ in texts)
        leaks = []
        for label, value in secret_values.items():
            for form in _encoded_forms(value):
                for where, data in texts:
                    if form.encode() in data:
                        leaks.append("%s (%s) in %s" % (label, form[:12] + "...", where))
        assert leaks == []
    finally:
        server.close()
        azurite_proc.send_signal(signal.SIGTERM)
        try:
            azurite_proc.wait(10)
        except subprocess.TimeoutExpired:
            azurite_proc.kill()
        shutil.rmtree(azurite_dir, ignore_errors=True)
