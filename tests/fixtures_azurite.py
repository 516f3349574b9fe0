"""Azurite (the Azure Storage emulator) for the Blob export tests.

``azurite``: a session-scoped fixture that starts ``azurite-blob`` from ``.tools/azurite`` (running
``scripts/install_azurite.sh`` first when it is missing) on a free port, in memory, and stops it at
the end of the session. ``node`` is started directly: killing an ``npx`` parent would leave the
server running.
"""
import base64
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AZURITE_DIR = os.path.join(ROOT, ".tools", "azurite")
AZURITE_BIN = os.path.join(AZURITE_DIR, "node_modules", ".bin", "azurite-blob")
INSTALL_SCRIPT = os.path.join(ROOT, "scripts", "install_azurite.sh")
ACCOUNT = "devstoreaccount1"
#: Azurite's well-known development key (public, documented by Microsoft).
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
WRONG_KEY = base64.b64encode(b"not the key of this account, but valid base64!!").decode("ascii")
_LISTENS = re.compile(r"listens on https?://[^:\s]+:(\d+)")


def connection_string(port, key=ACCOUNT_KEY):
    return ("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;"
            "BlobEndpoint=http://127.0.0.1:%d/%s;" % (ACCOUNT, key, port, ACCOUNT))


class Azurite:
    def __init__(self, process, port, workdir):
        self.process = process
        self.port = port
        self.workdir = workdir
        self.connection_string = connection_string(port)
        self.wrong_key_connection_string = connection_string(port, WRONG_KEY)
        self.account_key = ACCOUNT_KEY
        self.wrong_key = WRONG_KEY


def _install():
    if not os.path.exists(AZURITE_BIN):
        subprocess.run(["bash", INSTALL_SCRIPT], check=True, cwd=ROOT)


def _start(timeout=30.0):
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH: the Blob tests need Node.js 18+ for Azurite")
    workdir = tempfile.mkdtemp(prefix="azurite-")
    process = subprocess.Popen(
        [node, AZURITE_BIN, "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
         "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir)
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline().decode("utf-8", "replace")
            if not line and process.poll() is not None:
                break
            seen.append(line)
            m = _LISTENS.search(line)
            if m:
                # Keep draining its output so a full pipe never blocks it.
                _drain(process)
                return Azurite(process, int(m.group(1)), workdir)
        elif process.poll() is not None:
            break
    _stop(process)
    raise RuntimeError("azurite-blob did not start: %s" % "".join(seen)[-2000:])


def _drain(process):
    import threading

    def run():
        for _ in iter(process.stdout.readline, b""):
            pass
    threading.Thread(target=run, daemon=True).start()


def _stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def azurite():
    _install()
    server = _start()
    try:
        yield server
    finally:
        _stop(server.process)
        shutil.rmtree(server.workdir, ignore_errors=True)
