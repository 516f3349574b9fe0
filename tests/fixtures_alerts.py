"""Fixtures for the alert tests: real servers on loopback, no mocks.

- ``webhook_server``: a threaded HTTP/1.1 server on 127.0.0.1 whose replies are scripted per path
  (``server.script("/hook", Reply(503), Reply(200))``; unscripted requests get 200). It records
  every request (path, headers, body, arrival time). A ``Reply(hang=True)`` holds the request
  without answering until the test ends; ``server.drop_connections()`` closes kept-alive
  connections the way an idle timeout does.
- ``test_cert``: a self-signed certificate for ``localhost``, ``127.0.0.1`` and ``::1`` generated
  with ``cryptography`` (once per session); ``trust_test_cert`` makes it the CA bundle that
  ``ssl.create_default_context()`` loads (via ``SSL_CERT_FILE``).
- ``https_webhook_server``: the same server behind TLS with that certificate.
- ``smtp_server``: aiosmtpd on 127.0.0.1 without TLS; ``smtp_tls_server``: aiosmtpd that requires
  STARTTLS (the test certificate) and accepts AUTH only over TLS, with ``SMTP_USER`` /
  ``SMTP_PASSWORD``. Both record the messages they accept; ``SmtpServer(temporary_failures=n)``
  answers the first n DATA commands with 451.
"""
import datetime as _dt
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

import pytest

SMTP_USER = "alerts-user"
SMTP_PASSWORD = "smtp-pass-9f3b1c"


@dataclass
class Reply:
    status: int = 200
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: Dict[str, str]   # lower-case names
    body: bytes
    at: float                 # time.monotonic() on arrival
    peer: tuple               # the client's (address, port): one per TCP connection


class _WebhookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.server.recorder.connections.add(self.connection)

    def finish(self):
        self.server.recorder.connections.discard(self.connection)
        super().finish()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path
        self.server.recorder.record(Request(
            self.command, path, {k.lower(): v for k, v in self.headers.items()}, body,
            time.monotonic(), tuple(self.client_address[:2])))
        reply = self.server.recorder.next_reply(path)
        if reply.hang:
            self.server.recorder.released.wait(30)
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_PUT = do_POST

    def log_message(self, *args):  # keep test output quiet
        pass


class _Recorder:
    def __init__(self):
        self._lock = threading.Lock()
        self._requests: List[Request] = []
        self._scripts: Dict[str, List[Reply]] = {}
        self.released = threading.Event()
        self.connections = set()

    def record(self, request):
        with self._lock:
            self._requests.append(request)

    def next_reply(self, path):
        with self._lock:
            queue = self._scripts.get(path)
            return queue.pop(0) if queue else Reply()

    def script(self, path, replies):
        with self._lock:
            self._scripts.setdefault(path, []).extend(replies)

    def requests(self, path=None):
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]


class WebhookServer:
    """A running scriptable webhook endpoint (see the module docstring)."""

    def __init__(self, ssl_context=None, host_name="127.0.0.1"):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _WebhookHandler)
        self._httpd.daemon_threads = True
        self._httpd.recorder = self._recorder = _Recorder()
        if ssl_context is not None:
            self._httpd.socket = ssl_context.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if ssl_context is not None else "http"
        self.host_name = host_name
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def url(self, path="/hook"):
        return "%s://%s:%d%s" % (self.scheme, self.host_name, self.port, path)

    def script(self, path, *replies):
        self._recorder.script(path, replies)

    def requests(self, path=None):
        return self._recorder.requests(path)

    def event_ids(self, path=None):
        return [r.headers.get("x-event-id") for r in self.requests(path)]

    def drop_connections(self):
        """Closes every open (kept-alive) client connection from the server side."""
        for connection in list(self._recorder.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 2
        while self._recorder.connections and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self):
        self._recorder.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def webhook_server():
    server = WebhookServer()
    yield server
    server.close()


@pytest.fixture
def socket_connects(monkeypatch):
    """Every address a socket of this process connects to while the test runs (the connections
    go ahead)."""
    connects = []
    real_connect = socket.socket.connect

    def recorded_connect(sock, address):
        connects.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recorded_connect)
    return connects


@pytest.fixture(scope="session")
def test_cert(tmp_path_factory):
    """``(cert_path, key_path)`` of a fresh self-signed certificate (EC P-256)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = _dt.datetime.now(_dt.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=1))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("alerts-tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _server_context(test_cert):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*test_cert)
    return context


@pytest.fixture
def trust_test_cert(test_cert, monkeypatch):
    """Makes the test certificate the only CA that ``ssl.create_default_context()`` trusts."""
    monkeypatch.setenv("SSL_CERT_FILE", test_cert[0])
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return test_cert[0]


@pytest.fixture
def https_webhook_server(test_cert):
    server = WebhookServer(ssl_context=_server_context(test_cert), host_name="localhost")
    yield server
    server.close()


# --------------------------------------------------------------------------------------------
# SMTP


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: List[str]
    message: email.message.EmailMessage
    tls: bool
    login: Optional[str]


class _MailRecorder:
    def __init__(self, temporary_failures=0):
        self.mails: List[Mail] = []
        self.logins: List[str] = []
        self.data_attempts = 0
        self.temporary_failures = temporary_failures

    async def handle_DATA(self, server, session, envelope):
        self.data_attempts += 1
        if self.temporary_failures > 0:
            self.temporary_failures -= 1
            return "451 4.3.0 Try again later"
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message,
                               session.ssl is not None,
                               SMTP_USER if session.authenticated else None))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult
        ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        if ok:
            self.logins.append(SMTP_USER)
        return AuthResult(success=ok, handled=False)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SmtpServer:
    def __init__(self, temporary_failures=0, **smtp_parameters):
        from aiosmtpd.controller import Controller
        self.recorder = _MailRecorder(temporary_failures)
        if smtp_parameters.pop("with_auth", False):
            smtp_parameters["authenticator"] = self.recorder.authenticate
        self.host, self.port = "127.0.0.1", _free_port()
        self._controller = Controller(self.recorder, hostname=self.host, port=self.port,
                                      **smtp_parameters)
        self._controller.start()

    @property
    def mails(self):
        return self.recorder.mails

    def close(self):
        self._controller.stop()


@pytest.fixture
def smtp_server():
    pytest.importorskip("aiosmtpd")
    server = SmtpServer()
    yield server
    server.close()


@pytest.fixture
def smtp_tls_server(test_cert):
    pytest.importorskip("aiosmtpd")
    server = SmtpServer(tls_context=_server_context(test_cert), require_starttls=True,
                        auth_require_tls=True, with_auth=True)
    yield server
    server.close()


# --------------------------------------------------------------------------------------------
# Helpers shared by the alert tests.


def make_work(workflow, config, work_id="w-alerts", paused=False):
    """A work parsed and validated by the real config loader."""
    from cdp_activation.core.config import parse_config
    job = parse_config({"account": {"name": "acme", "aid": 1234},
                        "works": [{"id": work_id, "workflow": workflow, "config": config,
                                   "paused": paused}]}, environ={})
    return job.works[0]


def system_event(event_id, verb="failed", subject_type="work", subject_id="w-1", notes=None):
    """A system event parsed by the real input parser."""
    from cdp_activation.core.records import parse_record
    data = {"aid": 1234, "subject_type": subject_type, "subject_id": subject_id, "verb": verb}
    if notes is not None:
        data["notes"] = notes
    return parse_record({"kind": "system", "id": event_id, "ts": "2026-11-20T10:00:00Z",
                         "data": data})


def run_alerts(transform, events):
    """Runs ``transform`` over ``events`` in a Beam TestPipeline (DirectRunner); the result."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    pipeline = TestPipeline()
    _ = pipeline | "Events" >> beam.Create(events) | transform
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counters(result, work_id):
    """The committed Beam counters of a work, by name (never incremented: 0)."""
    from apache_beam.metrics.metric import MetricsFilter
    found = result.metrics().query(MetricsFilter().with_namespace("work:" + work_id))["counters"]
    totals = {"alerts_delivered": 0, "deadlettered": 0, "failures": 0}
    for metric in found:
        totals[metric.key.metric.name] = totals.get(metric.key.metric.name, 0) + metric.committed
    return totals


def read_jsonl(path):
    import json
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
