"""No secret in the staged pipeline: ``${VAR}`` credentials travel as references and are resolved
on the worker, in the DoFns' ``setup()``.

The whole ``pipelines.stream`` command runs with every kind of credential in its environment (an
``eventhubs://`` input with Blob checkpoints, an Event Hubs work, a Blob export, a webhook with a
secret URL, token and signing secret, an email work with an SMTP password) against real
servers: the local Event Hubs endpoint, Azurite, an HTTP server and an SMTP server with STARTTLS.
The pipeline's Runner API proto, as ``Pipeline.run`` has it, and every pickled DoFn in it are
searched for the secret values: none may be there. The deliveries arriving with the right
credentials then show that the workers resolved them from their environment.
"""
import base64
import bz2
import json
import logging
import re
import uuid
import zlib

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
import cloudpickle  # the pickler Beam 2.62 uses for DoFns (a dependency of apache-beam)
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from azure.eventhub import EventData, EventHubProducerClient
from azure.storage.blob import ContainerClient

from cdp_activation.core.config import EnvRef, parse_config, resolve_settings
from emulators.eventhubs import LocalEventHubs
from tests.fixtures_alerts import SMTP_PASSWORD, SMTP_USER

HOOK_TOKEN = "tok-" + uuid.uuid4().hex
HOOK_SECRET = "sig-" + uuid.uuid4().hex
HOOK_PATH = "/hooks/T0-" + uuid.uuid4().hex


def _config(smtp_port, container):
    return """
account: {name: acme, aid: 1234}
audiences:
  - {id: fb, slug: frequent_buyers, condition: {event: purchase, within: 7d, min_count: 2}}
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${EH_OUT_CS}", user_fields: [email]}
  - id: w-blob
    workflow: azure_blob_event_export
    config: {connection_string: "${BLOB_CS}", container: %s, period_hours: 24}
  - id: w-hook
    workflow: webhook_system_events
    config:
      system_event_sources: {work: []}
      webhook_url: "${HOOK_URL}"
      headers: {Authorization: "Bearer ${HOOK_TOKEN}", X-Team: analytics}
      signing_secret: "${HOOK_SECRET}"
      allow_private_network: true
  - id: w-mail
    workflow: email_system_events
    config: {system_event_type: completed, smtp_host: localhost, smtp_port: %d,
             from: cdp@example.com, to: [ops@example.com], username: %s,
             password: "${SMTP_PASSWORD}", allow_private_network: true}
""" % (container, smtp_port, SMTP_USER)


def _decoded(blob, depth=0):
    """``blob`` and, recursively, every base64 + bz2/zlib payload inside it (Beam's pickles)."""
    found = [blob]
    if depth > 3:
        return found
    for run in re.findall(rb"[A-Za-z0-9+/]{24,}={0,2}", blob):
        try:
            raw = base64.b64decode(run, validate=True)
        except ValueError:
            continue
        for decompress in (bz2.decompress, zlib.decompress):
            try:
                inner = decompress(raw)
            except (OSError, ValueError, zlib.error):
                continue
            found.extend(_decoded(inner, depth + 1))
    return found


def staged_bytes(proto):
    """Everything the staged pipeline holds: the serialized Runner API proto, each pickle in it
    decompressed, and each ParDo's DoFn unpickled and pickled again without compression."""
    blobs = _decoded(proto.SerializeToString())
    dofns = 0
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if payload.do_fn.urn == "beam:dofn:pickled_python_info:v1":
                blobs.append(cloudpickle.dumps(pickler.loads(payload.do_fn.payload)))
                dofns += 1
    return blobs, dofns


def _steps_holding(proto, values):
    """The names of the steps whose payloads hold any of ``values`` (for a failure message)."""
    return sorted({t.unique_name for t in proto.components.transforms.values()
                   for blob in _decoded(t.SerializeToString())
                   for value in values if value.encode() in blob})


def _publish(hubs, records):
    producer = EventHubProducerClient.from_connection_string(hubs.connection_string,
                                                             retry_total=2)
    with producer:
        for record in records:
            batch = producer.create_batch(partition_key=record["user_id"])
            batch.add(EventData(json.dumps(record)))
            producer.send_batch(batch)


@pytest.fixture
def logging_restored():
    """The command reconfigures logging for its process; put this test process's back after."""
    names = ("apache_beam", "azure", "uamqp", "root")
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), list(root.filters),
             {n: logging.getLogger(n).level for n in names}, logging.getLogRecordFactory())
    yield
    level, handlers, filters, levels, factory = saved
    root.setLevel(level)
    root.handlers[:] = handlers
    root.filters[:] = filters
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    logging.setLogRecordFactory(factory)


@pytest.fixture
def output_hub():
    hubs = LocalEventHubs(host="127.0.0.1", port=0, hub="audiences", partitions=2)
    hubs.start()
    try:
        yield hubs
    finally:
        hubs.stop()


@pytest.mark.parametrize("runner", [
    [],
    # The Runner API / Fn API path of Flink and Dataflow: DoFns are unpickled in an SDK worker.
    pytest.param(["--runner=PortableRunner", "--job_endpoint=embed",
                  "--environment_type=LOOPBACK"], marks=pytest.mark.portable)],
    ids=["direct", "portable"])
def test_the_staged_pipeline_holds_no_secret_and_workers_resolve_them(
        runner, tmp_path, monkeypatch, local_eventhubs, output_hub, azurite, webhook_server,
        smtp_tls_server, trust_test_cert, logging_restored):
    container = "exports-" + uuid.uuid4().hex[:8]
    checkpoints = "ckpt-" + uuid.uuid4().hex[:8]
    ContainerClient.from_connection_string(azurite.connection_string,
                                           checkpoints).create_container()
    config = tmp_path / "config.yaml"
    config.write_text(_config(smtp_tls_server.port, container))
    environment = {"IN_CS": local_eventhubs.connection_string,
                   "CKPT_CS": azurite.connection_string,
                   "EH_OUT_CS": output_hub.connection_string,
                   "BLOB_CS": azurite.connection_string,
                   "HOOK_URL": webhook_server.url(HOOK_PATH),
                   "HOOK_TOKEN": HOOK_TOKEN, "HOOK_SECRET": HOOK_SECRET,
                   "SMTP_PASSWORD": SMTP_PASSWORD}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    secrets = dict(environment, IN_KEY=local_eventhubs.key, EH_OUT_KEY=output_hub.key,
                   BLOB_KEY=azurite.account_key, HOOK_PATH=HOOK_PATH)
    _publish(local_eventhubs, [
        {"event_id": "e%d" % i, "user_id": "u%d" % (i % 3), "event": "purchase",
         "ts": "2026-11-20T10:%02d:00Z" % i, "traits": {"email": "u%d@example.com" % (i % 3)}}
        for i in range(9)])

    staged = {}
    run = beam.Pipeline.run

    def capture_and_run(pipeline, *args, **kwargs):
        staged["proto"] = pipeline.to_runner_api()
        return run(pipeline, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", capture_and_run)
    from pipelines import stream
    status = stream.run([
        "--config", str(config), "--output_dir", str(tmp_path / "out"),
        "--input", "eventhubs://hub?connection_string_env=IN_CS&checkpoint_container=%s"
                   "&checkpoint_connection_string_env=CKPT_CS&mode=catchup" % checkpoints,
        *runner])
    assert status == 0

    blobs, dofns = staged_bytes(staged["proto"])
    assert dofns >= 10
    # The scan sees inside the pickled DoFns: the references themselves are there.
    assert any(b"${EH_OUT_CS}" in blob for blob in blobs)
    assert any(b"${HOOK_TOKEN}" in blob for blob in blobs)
    assert any(b"${CKPT_CS}" in blob for blob in blobs)
    leaked = sorted({name for name, value in secrets.items()
                     for blob in blobs if value.encode() in blob})
    assert leaked == [], "secret values in the staged pipeline: %s (in %s)" % (
        leaked, _steps_holding(staged["proto"], [secrets[name] for name in leaked]))

    # The workers resolved every credential from their environment: everything was delivered.
    assert len(output_hub.events()) > 0
    exported = [b.name for b in ContainerClient.from_connection_string(
        azurite.connection_string, container).list_blobs()]
    assert any(name.endswith(".csv") for name in exported)
    hooks = webhook_server.requests(HOOK_PATH)
    assert hooks and all(r.headers["authorization"] == "Bearer " + HOOK_TOKEN for r in hooks)
    assert all(r.headers["x-signature"].startswith("t=") for r in hooks)
    assert smtp_tls_server.mails and smtp_tls_server.recorder.logins


def test_worker_settings_keep_references_and_resolve_where_they_run():
    job = parse_config({"works": [
        {"id": "w", "workflow": "webhook_system_events",
         "config": {"webhook_url": "https://hooks.example.com/${HOOK_PATH_PART}",
                    "headers": {"Authorization": "Bearer ${TOKEN}", "X-Team": "a"},
                    "signing_secret": "${SIGNING}"}},
        {"id": "b", "workflow": "azure_blob_event_export",
         "config": {"container": "c1x", "connection_string": "literal-not-a-reference"}}]},
        environ={"HOOK_PATH_PART": "T0/B1/xyz", "TOKEN": "t0k3n-value", "SIGNING": "s1gn-value"})
    hook = job.works[0]
    assert hook.settings.headers["Authorization"] == "Bearer t0k3n-value"
    worker = hook.worker_settings
    assert worker.headers == {"Authorization": EnvRef("Bearer ${TOKEN}",
                                                      "works[0].config.headers.Authorization"),
                              "X-Team": "a"}
    assert worker.signing_secret == EnvRef("${SIGNING}", "works[0].config.signing_secret")
    assert "t0k3n" not in repr(worker) and "s1gn" not in repr(worker)
    assert b"t0k3n" not in cloudpickle.dumps(worker) and b"${TOKEN}" in cloudpickle.dumps(worker)
    resolved = resolve_settings(worker, {"HOOK_PATH_PART": "T9", "TOKEN": "other",
                                         "SIGNING": "s"})
    assert resolved.headers["Authorization"] == "Bearer other"
    assert resolved.webhook_url == "https://hooks.example.com/T9"
    with pytest.raises(Exception, match=r"works\[0\].config.signing_secret: environment "
                                        r"variable SIGNING is not set"):
        resolve_settings(worker, {"HOOK_PATH_PART": "x", "TOKEN": "y"})
    # A literal credential is the config's own choice: it stays as written.
    assert job.works[1].worker_settings.connection_string == "literal-not-a-reference"


def test_a_variable_missing_on_the_worker_fails_setup_with_one_line_naming_it(monkeypatch):
    from cdp_activation.core.config import ConfigError
    from cdp_activation.transforms.eventhubs import WriteToEventHubs
    value = ("Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=send;"
             "SharedAccessKey=k3y-" + uuid.uuid4().hex + ";EntityPath=audiences")
    monkeypatch.setenv("EH_OUT_CS", value)
    job = parse_config({"works": [{"id": "w-eh", "workflow": "eventhub_audience_export",
                                   "config": {"connection_string": "${EH_OUT_CS}"}}]})
    sink = WriteToEventHubs(job.works[0].worker_settings.connection_string, "w-eh",
                            "/tmp/unused-deadletter.jsonl")
    assert sink._target == "acme.servicebus.windows.net/audiences"   # checked on the launcher
    shipped = pickler.loads(pickler.dumps(sink._fn))                 # what a worker gets
    monkeypatch.delenv("EH_OUT_CS")                                  # a worker without it
    with pytest.raises(ConfigError) as missing:
        shipped.setup()
    assert str(missing.value) == ("works[0].config.connection_string: environment variable "
                                  "EH_OUT_CS is not set")
