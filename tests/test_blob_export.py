"""The azure_blob_event_export work against Azurite, through real Beam pipelines.

Every run's files are compared with :func:`core.export.render_files` over the same records and with
the local sink's files, byte for byte.
"""
import csv
import gzip
import io
import logging
import re
import socket
import uuid

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.transforms.display import DisplayData
from azure.storage.blob import BlobServiceClient

from core import export
from core.config import parse_config
from core.engine import ExportRow
from core.records import parse_record
from core.timeutil import MICROS, parse_time
from clients.blob import CONNECT_BACKOFF_S, AzureDestination, BlobExportError
from clients.markers import read_marker, verify_credentials
from clients.retry import RetryPolicy
from transforms import blob, blob_steps
from transforms.blob import LocalDestination, make_destination
from tests.faultproxy import FaultProxy
from tests.fixtures_azurite import connection_string

T0 = parse_time("2026-11-20T10:00:00Z")
H = 3600 * MICROS
ACCOUNT, AID = "acme", 1234
FORMULAS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$")   # a number cell is not a formula


# -- records -----------------------------------------------------------------------------------

def export_row(event_id, minutes, event="purchase", user="u1", anonymous=None, props=None,
               attrs=None):
    obj = {"event": event, "ts": (T0 + minutes * 60 * MICROS - 90 * MICROS) // MICROS,
           "received_at": (T0 + minutes * 60 * MICROS) // MICROS, "properties": props or {}}
    if event_id is not None:
        obj["event_id"] = event_id
    if user:
        obj["user_id"] = user
    if anonymous:
        obj["anonymous_id"] = anonymous
    return ExportRow(parse_record(obj), attrs or {})


def sample_rows():
    """Rows in hours 0, 1, 3 and 5 from T0 (2 and 4 are empty), with every kind of cell."""
    return [
        export_row("e-01", 5, props={"price": 19.99, "campaign": "=HYPERLINK(\"http://x\")"},
                   attrs={"email": "a@example.com", "score": 3}),
        export_row("e-02", 5, props={"price": 42, "campaign": "+33 1 23"},
                   attrs={"email": "@handle", "score": None}),
        export_row(None, 20, user=None, anonymous="anon-7", props={"price": -5, "campaign": "-x"},
                   attrs={"email": "\tz"}),
        export_row("e-04", 65, event="email_open", props={"campaign": "spring, \"sale\"\nline 2"},
                   attrs={"email": "\rcr", "score": 2.5}),
        export_row("e-05", 70, event="view", props={"price": 1}),   # not in the work's events
        export_row("e-06", 190, props={"price": True, "campaign": {"a": [1, {"b": None}]}},
                   attrs={"email": "é@example.com"}),
        export_row("e-07", 190, props={"price": "12", "campaign": ["x", 1]}, user="u2"),
        export_row("e-08", 301, props={"price": 0.1}, attrs={"email": "=1+2"}),
    ]


def system_event(id_, minutes, verb="failed", notes=None):
    data = {"aid": AID, "subject_type": "work", "subject_id": "w-1", "verb": verb}
    if notes is not None:
        data["notes"] = notes
    return parse_record({"kind": "system", "id": id_, "ts": "2026-11-20T09:00:00Z",
                         "received_at": (T0 + minutes * 60 * MICROS) // MICROS, "data": data})


def sample_system_events():
    return [system_event("se-1", 1, notes="=danger"), system_event("se-1", 30, notes="=danger"),
            system_event("se-2", 2, verb="synced", notes="ok"), system_event(17, 130, notes="-x"),
            system_event("se-3", 61, verb="created")]


# -- config, runs, inspection ------------------------------------------------------------------

def make_work(conn, container, paused=False, **config):
    cfg = {"container": container, "prefix": "acme/events/", "export_type": "events",
           "period_hours": 1, "format": "csv", "events": ["purchase", "email_open"],
           "event_parameters": ["price", "campaign"], "attributes": ["email", "score"]}
    if conn:
        cfg["connection_string"] = conn
    cfg.update(config)
    job = parse_config({"account": {"name": ACCOUNT, "aid": AID},
                        "works": [{"id": "w-blob", "workflow": "azure_blob_event_export",
                                   "paused": paused, "config": cfg}]})
    return job.works[0]


def new_container():
    return "t-" + uuid.uuid4().hex[:12]


_COLLECTED = {}


def _collect(event, key):
    _COLLECTED.setdefault(key, []).append(event)


class Run:
    def __init__(self, events, counters):
        self.events = events
        self.counters = counters

    def verbs(self, verb):
        return [e for e in self.events if e.verb == verb]


def run_export(work, records, output_dir, marker_end=None, disabled_reason=None, batch_size=0):
    """Runs one pipeline: Create(records) | WriteToBlobExport; the work's events and counters.

    ``batch_size`` above 0: the records go in as lists of that many (``batched=True``)."""
    key = uuid.uuid4().hex
    if batch_size:
        records = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    # The full name: Beam 2.62 knows the FnApiRunner by no short name.
    p = BeamTestPipeline(runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner")
    (p
     | beam.Create(records)
     | blob.WriteToBlobExport(work, ACCOUNT, AID, str(output_dir), marker_end=marker_end,
                              disabled_reason=disabled_reason, batched=batch_size > 0)
     | beam.Map(_collect, key))
    result = p.run()
    result.wait_until_finish()
    counters = {}   # one result per step: sum them
    for c in result.metrics().query(MetricsFilter().with_namespace("work:" + work.id))["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    return Run(_COLLECTED.pop(key, []), counters)


def launch(work, records, output_dir):
    """What the launcher does: check the credentials, read the marker, run."""
    destination = make_destination(work.settings, str(output_dir))
    try:
        verify_credentials(destination, work.id)
        marker_end, reason = read_marker(destination, work.id), None
    except BlobExportError as exc:
        marker_end, reason = None, str(exc)
    finally:
        destination.close()
    return run_export(work, records, output_dir, marker_end, reason), marker_end


def container_client(azurite, container):
    return BlobServiceClient.from_connection_string(
        azurite.connection_string).get_container_client(container)


def data_blobs(azurite, container):
    """{name: (bytes, etag)} of the export files (not the marker) in a container."""
    client = container_client(azurite, container)
    if not client.exists():
        return {}
    return {b.name: (client.download_blob(b.name).readall(), b.etag)
            for b in client.list_blobs() if "_state/" not in b.name}


def contents(blobs):
    return {name: data for name, (data, _) in blobs.items()}


def marker_of(azurite, work):
    destination = AzureDestination(azurite.connection_string, work.settings.container,
                                        work.settings.prefix)
    try:
        return read_marker(destination, work.id)
    finally:
        destination.close()


def window_name(work, start):
    return export.ExportSpec(work.settings, ACCOUNT, work.id).file_name(start)


def local_files(output_dir, work):
    destination = LocalDestination(str(output_dir), work.settings.container,
                                        work.settings.prefix)
    return {name: destination.get(name) for name in destination.list_names()
            if "_state/" not in name}


def read_cells(name, data):
    """The cells of a file as strings, opened with csv, gzip or pyarrow."""
    if name.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        return table.column_names, [[v for v in r.values()] for r in table.to_pylist()]
    text = gzip.decompress(data).decode("utf-8") if name.endswith(".gz") else data.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def dead_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# -- files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,extra", [
    ("csv", {}),
    ("csv.gz", {"period_hours": 2, "anchor": "2026-11-01T00:30:00Z"}),
    ("parquet", {}),
    ("csv", {"export_type": "system_events", "prefix": ""}),
])
def test_files_equal_core_and_local_sink(azurite, tmp_path, fmt, extra):
    container = new_container()
    work = make_work(azurite.connection_string, container, format=fmt, **extra)
    system = work.settings.export_type == "system_events"
    records = sample_system_events() if system else sample_rows()
    expected = export.render_files(records, work.settings, ACCOUNT, work.id)
    assert len(expected) >= 3

    run, marker_before = launch(work, records, tmp_path / "azure")
    assert marker_before is None
    blobs = contents(data_blobs(azurite, container))
    assert blobs == expected
    names = sorted(expected)
    assert sorted(e.data.get("notes", "").split()[1] for e in run.verbs("synced")) == names
    assert [e.verb for e in run.events if e.verb not in ("synced", "synccomplete")] == []
    assert len(run.verbs("synccomplete")) == 1
    spec = export.ExportSpec(work.settings, ACCOUNT, work.id)
    last_start = max(spec.window_of(spec.received_at(r)) for r in records if spec.accepts(r))
    assert marker_of(azurite, work) == last_start + spec.period
    assert run.counters["files_delivered"] == len(names)
    n_rows = sum(len(read_cells(n, d)[1]) for n, d in blobs.items())
    assert run.counters["rows_delivered"] == n_rows
    assert run.counters.get("failures", 0) == 0
    assert all(e.data["aid"] == AID and e.subject_id == work.id and e.subject_type == "work"
               for e in run.events)

    # The local sink: same names, same bytes.
    local = make_work(None, container, format=fmt, **extra)
    run_export(local, records, tmp_path / "local")
    assert local_files(tmp_path / "local", local) == blobs

    # Readable with csv / gzip / pyarrow; rows in order; no unguarded formula.
    for name, data in blobs.items():
        columns, rows = read_cells(name, data)
        assert columns == spec.columns
        received = [r[2 if system else 5] for r in rows]
        assert received == sorted(received)
        for r in rows:
            for cell in r:
                if isinstance(cell, str) and not NUMBER.match(cell):
                    assert not cell.startswith(FORMULAS), (name, cell)


def test_csv_cells(azurite, tmp_path):
    container = new_container()
    work = make_work(azurite.connection_string, container)
    launch(work, sample_rows(), tmp_path)
    blobs = contents(data_blobs(azurite, container))
    columns, rows = read_cells(window_name(work, T0), blobs[window_name(work, T0)])
    assert columns == ["event_id", "user_id", "anonymous_id", "event", "timestamp", "received_at",
                       "properties.price", "properties.campaign", "traits.email", "traits.score"]
    anonymous_id = sample_rows()[2].event.event_id
    assert rows == [
        ["e-01", "u1", "", "purchase", "2026-11-20T10:03:30Z", "2026-11-20T10:05:00Z", "19.99",
         "'=HYPERLINK(\"http://x\")", "a@example.com", "3"],
        ["e-02", "u1", "", "purchase", "2026-11-20T10:03:30Z", "2026-11-20T10:05:00Z", "42",
         "'+33 1 23", "'@handle", ""],
        [anonymous_id, "", "anon-7", "purchase", "2026-11-20T10:18:30Z", "2026-11-20T10:20:00Z",
         "-5", "'-x", "'\tz", ""]]
    _, rows = read_cells("x.csv", blobs[window_name(work, T0 + 3 * H)])
    assert [r[6:8] for r in rows] == [["true", '{"a":[1,{"b":null}]}'], ["12", '["x",1]']]
    _, rows = read_cells("x.csv", blobs[window_name(work, T0 + 2 * H)])
    assert rows == []   # the empty window between two with data: header only


def test_parquet_types(azurite, tmp_path):
    container = new_container()
    work = make_work(azurite.connection_string, container, format="parquet")
    launch(work, sample_rows(), tmp_path)
    blobs = contents(data_blobs(azurite, container))
    table = pq.read_table(io.BytesIO(blobs[window_name(work, T0)]))
    types = dict(zip(table.column_names, map(str, table.schema.types)))
    assert types["properties.price"] == "double" and types["traits.score"] == "int64"
    assert types["timestamp"] == "string" and types["properties.campaign"] == "string"
    assert table.column("properties.price").to_pylist() == [19.99, 42.0, -5.0]


# -- credentials -------------------------------------------------------------------------------

def test_verify_credentials_cleans_up(azurite, tmp_path):
    container = new_container()
    destination = make_destination(make_work(azurite.connection_string, container).settings)
    verify_credentials(destination, "w-blob")
    assert destination.list_names() == []
    destination.close()


def test_verify_credentials_removes_checks_left_by_interrupted_activations(azurite):
    container = new_container()
    destination = make_destination(make_work(azurite.connection_string, container).settings)
    # An earlier activation killed between its write and its delete, and other works' blobs.
    left = ["acme/events/_verify/w-blob_1793491200.txt"]
    others = ["acme/events/_verify/w-blob_x_1793491200.txt", "acme/events/_verify/w-blob2_1.txt",
              "acme/events/w-blob_1793491200.txt"]
    for name in left + others:
        destination.put(name, b"x")
    verify_credentials(destination, "w-blob")
    assert destination.list_names() == sorted(others)
    destination.close()


def test_azure_writes_are_retried_by_the_one_policy_counting_attempts(azurite):
    """Dropped connections are retried with the policy's backoff (waits recorded, not slept);
    the SDK's own retries are off, so every attempt is one request through the proxy."""
    container = new_container()
    container_client(azurite, container).create_container()
    with FaultProxy(("127.0.0.1", azurite.port), name="blob-retry") as proxy:
        waits = []
        destination = AzureDestination(connection_string(proxy.port), container,
                                       retry=RetryPolicy(4, 2.0, sleep=waits.append))
        proxy.on_pattern(b"PUT /devstoreaccount1/%s/f.csv" % container.encode(), "reset",
                         times=2)
        destination.put("f.csv", b"a,b\n", content_type="text/csv")
        assert proxy.counters()["resets"] == 2
        assert len(waits) == 2 and 0 <= waits[0] <= 2.0 and 0 <= waits[1] <= 4.0
        assert destination.get("f.csv") == b"a,b\n" and len(waits) == 2
        proxy.on_pattern(b"GET /devstoreaccount1/%s/f.csv" % container.encode(), "reset",
                         times=4)
        with pytest.raises(BlobExportError) as info:
            destination.get("f.csv")
        assert len(waits) == 5 and proxy.counters()["resets"] == 6    # 4 attempts in all
        assert str(info.value).startswith("cannot read f.csv in storage account")
        destination.close()


def test_a_dead_endpoint_is_retried_once_after_the_connect_backoff(azurite):
    waits = []
    destination = AzureDestination(connection_string(dead_port()), new_container(),
                                   retry=RetryPolicy(4, 2.0, sleep=waits.append))
    with pytest.raises(BlobExportError) as info:
        destination.put("f.csv", b"x")
    assert waits == [CONNECT_BACKOFF_S] and info.value.kind == "unreachable"
    destination.close()


@pytest.mark.parametrize("case", ["wrong_key", "not_base64", "dead_port"])
def test_verify_credentials_one_line_error(azurite, case):
    key = {"wrong_key": azurite.wrong_key, "not_base64": "not-base64!*", "dead_port": None}[case]
    conn = (connection_string(dead_port()) if case == "dead_port"
            else connection_string(azurite.port, key))
    work = make_work(conn, new_container())
    destination = make_destination(work.settings)
    with pytest.raises(BlobExportError) as info:
        verify_credentials(destination, work.id)
    message = str(info.value)
    assert "\n" not in message and "w-blob" in message
    assert conn not in message and "AccountKey" not in message
    assert (key or azurite.account_key) not in message and azurite.account_key not in message
    if case == "dead_port":
        assert info.value.kind == "unreachable" and "unreachable" in message
    else:
        assert info.value.kind == "credentials" and "credentials rejected" in message


def test_verify_blob_that_may_not_be_deleted_is_left_and_logged(azurite, caplog):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    container = new_container()
    container_client(azurite, container).create_container()
    sas = generate_container_sas("devstoreaccount1", container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(write=True, create=True,
                                                                    read=True),
                                 expiry=parse_time("2099-01-01T00:00:00Z") // MICROS)
    conn = "BlobEndpoint=http://127.0.0.1:%d/devstoreaccount1;SharedAccessSignature=%s" % (
        azurite.port, sas)
    destination = make_destination(make_work(conn, container).settings)
    with caplog.at_level(logging.WARNING, logger="clients.markers"):
        verify_credentials(destination, "w-blob")
    left = [b.name for b in container_client(azurite, container).list_blobs()]
    assert len(left) == 1 and left[0].startswith("acme/events/_verify/w-blob_")
    assert left[0] in caplog.text and "left in place" in caplog.text
    assert sas not in caplog.text and "sig=" not in caplog.text


def test_wrong_key_then_right_key_then_rerun(azurite, tmp_path, caplog):
    container = new_container()
    records = sample_rows()
    expected = export.render_files(records, make_work(None, container).settings, ACCOUNT, "w-blob")

    # 1. Wrong key: the check fails, nothing is written, one failed event, no secret anywhere.
    bad = make_work(azurite.wrong_key_connection_string, container)
    with caplog.at_level(logging.DEBUG):
        run, _ = launch(bad, records, tmp_path)
    assert [e.verb for e in run.events] == ["failed"]
    notes = run.events[0].data["notes"]
    assert "credentials rejected" in notes
    for secret in (azurite.wrong_key, azurite.wrong_key_connection_string, azurite.account_key):
        assert secret not in notes and secret not in caplog.text
    assert data_blobs(azurite, container) == {}
    assert run.counters["failures"] == 1

    # 2. The right key: every window, then the marker.
    good = make_work(azurite.connection_string, container)
    run, marker = launch(good, records, tmp_path)
    assert marker is None
    first = data_blobs(azurite, container)
    assert contents(first) == expected
    assert len(run.verbs("synced")) == len(expected) and len(run.verbs("synccomplete")) == 1

    # 3. Again: the marker holds the place; no window is written twice.
    run, marker = launch(good, records, tmp_path)
    assert marker == T0 + 6 * H
    assert run.events == []
    assert data_blobs(azurite, container) == first       # same bytes and same etags
    assert run.counters["skipped_before_marker"] == 7    # every exported row was before it
    assert run.counters.get("files_delivered", 0) == 0


def test_display_data_has_no_secret(azurite):
    work = make_work(azurite.connection_string, new_container())
    transform = blob.WriteToBlobExport(work, ACCOUNT, AID, "out", marker_end=T0)
    items = DisplayData.create_from(transform).items
    text = repr([(i.key, i.value) for i in items]) + repr(transform._recipe)
    assert azurite.account_key not in text and "AccountKey" not in text
    assert {"work_id": "w-blob", "destination": "azure"}.items() <= {i.key: i.value
                                                                     for i in items}.items()


# -- failures and catch-up ---------------------------------------------------------------------

def test_failure_in_the_middle_then_catch_up(azurite, tmp_path):
    """Window 3 cannot be written (a leased blob holds its name): the others are written, the
    marker stops before it, and the next run writes it as a catch-up file."""
    container = new_container()
    work = make_work(azurite.connection_string, container)
    records = sample_rows()
    expected = export.render_files(records, work.settings, ACCOUNT, work.id)
    blocked = window_name(work, T0 + 3 * H)
    client = container_client(azurite, container)
    client.create_container()
    client.upload_blob(blocked, b"stale")
    lease = client.get_blob_client(blocked).acquire_lease(lease_duration=-1)

    run, _ = launch(work, records, tmp_path)
    failed = run.verbs("failed")
    assert len(failed) == 1 and blocked in failed[0].data["notes"]
    assert "HTTP 412 LeaseIdMissing" in failed[0].data["notes"]
    assert run.counters["failures"] == 1
    after_failure = data_blobs(azurite, container)
    assert after_failure[blocked][0] == b"stale"
    assert {n: d for n, (d, _) in after_failure.items() if n != blocked} == \
        {n: d for n, d in expected.items() if n != blocked}
    assert marker_of(azurite, work) == T0 + 3 * H
    assert len(run.verbs("synccomplete")) == 1

    lease.break_lease(lease_break_period=0)
    run, marker = launch(work, records, tmp_path)
    assert marker == T0 + 3 * H
    after = data_blobs(azurite, container)
    assert contents(after) == expected
    for start in (T0, T0 + H, T0 + 2 * H):      # before the marker: not written again
        assert after[window_name(work, start)][1] == after_failure[window_name(work, start)][1]
    synced = sorted(e.data["notes"].split()[1] for e in run.verbs("synced"))
    assert synced == sorted(window_name(work, T0 + k * H) for k in (3, 4, 5))
    assert marker_of(azurite, work) == T0 + 6 * H


@pytest.mark.slow
def test_dead_endpoint_then_catch_up(azurite, tmp_path):
    """The endpoint dies after the launcher's check: every file fails, the marker stays; once
    it works again, each missed window is written once as its own catch-up file."""
    container = new_container()
    work = make_work(azurite.connection_string, container)
    records = sample_rows()
    early = [r for r in records if r.event.received_at < T0 + 2 * H]
    run, _ = launch(work, early, tmp_path)
    marker = marker_of(azurite, work)
    assert marker == T0 + 2 * H
    before = data_blobs(azurite, container)

    dead = make_work(connection_string(dead_port()), container)
    run = run_export(dead, records, tmp_path, marker_end=marker)
    failed = run.verbs("failed")
    missed = [window_name(work, T0 + k * H) for k in (2, 3, 4, 5)]
    assert sorted(e.data["notes"].split()[1] for e in failed) == sorted(missed)
    assert all("connection failed" in e.data["notes"] for e in failed)
    assert run.verbs("synced") == [] and run.verbs("synccomplete") == []
    assert run.counters["failures"] == 4
    assert data_blobs(azurite, container) == before and marker_of(azurite, work) == marker

    run, _ = launch(work, records, tmp_path)
    after = data_blobs(azurite, container)
    assert contents(after) == export.render_files(records, work.settings, ACCOUNT, work.id)
    assert sorted(e.data["notes"].split()[1] for e in run.verbs("synced")) == sorted(missed)
    assert {n: v for n, v in after.items() if n in before} == before
    assert marker_of(azurite, work) == T0 + 6 * H


def test_paused_then_resumed_catches_up(azurite, tmp_path):
    container = new_container()
    work = make_work(azurite.connection_string, container)
    records = sample_rows()
    early = [r for r in records if r.event.received_at < T0 + H]
    launch(work, early, tmp_path)
    assert marker_of(azurite, work) == T0 + H
    before = data_blobs(azurite, container)

    paused = make_work(azurite.connection_string, container, paused=True)
    run, _ = launch(paused, records, tmp_path)
    assert run.events == [] and run.counters == {}
    assert data_blobs(azurite, container) == before and marker_of(azurite, work) == T0 + H

    run, _ = launch(work, records, tmp_path)
    after = data_blobs(azurite, container)
    assert contents(after) == export.render_files(records, work.settings, ACCOUNT, work.id)
    assert after[window_name(work, T0)] == before[window_name(work, T0)]
    assert sorted(e.data["notes"].split()[1] for e in run.verbs("synced")) == \
        sorted(window_name(work, T0 + k * H) for k in range(1, 6))
    assert marker_of(azurite, work) == T0 + 6 * H


def test_local_sink_marker_and_catch_up(tmp_path):
    """Without a connection string: the same marker logic in <output_dir>/blob/<container>/."""
    work = make_work(None, "exports")
    records = sample_rows()
    early = [r for r in records if r.event.received_at < T0 + H]
    run, marker = launch(work, early, tmp_path)
    assert marker is None and len(run.verbs("synced")) == 1
    run, marker = launch(work, records, tmp_path)
    assert marker == T0 + H and len(run.verbs("synced")) == 5
    assert local_files(tmp_path, work) == export.render_files(records, work.settings, ACCOUNT,
                                                              work.id)
    assert (tmp_path / "blob" / "exports" / "acme" / "events" / "_state" / "w-blob.json").exists()
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


@pytest.mark.slow
@pytest.mark.portable
def test_portable_runner_writes_the_same_files(azurite, tmp_path):
    """Through the Runner API and the Fn API (the path of Flink and Dataflow)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    container = new_container()
    work = make_work(azurite.connection_string, container, format="parquet")
    records = sample_rows()
    key = uuid.uuid4().hex
    options = PipelineOptions(["--runner=PortableRunner", "--job_endpoint=embed",
                               "--environment_type=LOOPBACK"])
    with beam.Pipeline(options=options) as p:
        (p
         | beam.Create(records)
         | blob.WriteToBlobExport(work, ACCOUNT, AID, str(tmp_path))
         | beam.Map(_collect, key))
    assert contents(data_blobs(azurite, container)) == \
        export.render_files(records, work.settings, ACCOUNT, work.id)
    assert marker_of(azurite, work) == T0 + 6 * H
    events = _COLLECTED.pop(key, [])
    assert sorted(e.verb for e in events) == ["synccomplete"] + ["synced"] * 6


# -- rows travel batched (bounded input) -------------------------------------------------------

def many_rows(n=600):
    """``n`` purchase rows over 3 hours, out of order, two rows per minute, some sharing an id."""
    rows = [export_row("e-%03d" % (i % (n - 7)), (i * 37) % 180, user="u%d" % (i % 11),
                       props={"price": i, "campaign": "=c%d" % i if i % 5 == 0 else "c,%d" % i},
                       attrs={"email": "u%d@example.com" % (i % 11)})
            for i in range(n)]
    return rows


def test_select_step_emits_lists_per_window_not_rows():
    work = make_work(None, new_container())
    spec = export.ExportSpec(work.settings, ACCOUNT, work.id)
    records = many_rows()
    key = uuid.uuid4().hex
    p = BeamTestPipeline(runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner")
    (p
     | beam.Create(records)
     | beam.ParDo(blob_steps.SelectRowBatches(spec))
     | beam.Map(_collect, key))
    p.run().wait_until_finish()
    elements = _COLLECTED.pop(key, [])
    assert all(isinstance(rows, list) for _, rows in elements)
    windows = {start for start, _ in elements}
    assert len(windows) == 3
    # One element per window and bundle: far fewer than the 600 rows.
    assert len(elements) < len(records) // 10
    got = {}
    for start, rows in elements:
        got.setdefault(start, []).extend(rows)
    expected = {}
    for r in records:
        expected.setdefault(spec.window_of(spec.received_at(r)), []).append(spec.keyed_row(r))
    assert {s: export.sort_rows(v) for s, v in got.items()} == \
        {s: export.sort_rows(v) for s, v in expected.items()}


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_many_rows_files_equal_core(tmp_path, fmt):
    work = make_work(None, new_container(), format=fmt)
    records = many_rows()
    expected = export.render_files(records, work.settings, ACCOUNT, work.id)
    run = run_export(work, records, tmp_path)
    assert local_files(tmp_path, work) == expected
    assert run.counters["rows_delivered"] == len(records)
    assert run.counters["files_delivered"] == len(expected) == 3


@pytest.mark.parametrize("export_type", ["events", "system_events"])
def test_batched_input_writes_the_files_of_one_record_per_element(tmp_path, export_type):
    """Lists of records in (the engine's export output) give the bytes and counters of records
    one by one; system events are unbatched for their dedupe by id."""
    if export_type == "events":
        work = make_work(None, new_container(), format="csv")
        records = many_rows()
    else:
        work = make_work(None, new_container(), format="csv", export_type="system_events")
        records = sample_system_events()
    expected = export.render_files(records, work.settings, ACCOUNT, work.id)
    single = run_export(work, records, tmp_path / "single")
    batched = run_export(work, records, tmp_path / "batched", batch_size=7)
    assert local_files(tmp_path / "batched", work) == local_files(tmp_path / "single", work) \
        == expected
    assert batched.counters == single.counters
    assert sorted(e.verb for e in batched.events) == sorted(e.verb for e in single.events)


def test_select_step_bounds_the_rows_it_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(blob_steps.SelectRowBatches, "MAX_BATCHED_ROWS", 50)
    work = make_work(None, new_container())
    records = many_rows()
    spec = export.ExportSpec(work.settings, ACCOUNT, work.id)
    select = blob_steps.SelectRowBatches(spec)
    select.start_bundle()
    early = [out for r in records for out in select.process(r)]
    late = [wv.value for wv in select.finish_bundle()]
    assert early and all(len(rows) <= 50 for _, rows in early)
    assert sum(len(rows) for _, rows in early + late) == len(records)
    expected = export.render_files(records, work.settings, ACCOUNT, work.id)
    run_export(work, records, tmp_path)
    assert local_files(tmp_path, work) == expected


def _labels(pipeline):
    labels = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            labels.append(node.full_label)

        def visit_transform(self, node):
            labels.append(node.full_label)

    pipeline.visit(Visitor())
    return labels


@pytest.mark.parametrize("windowed", [False, True])
def test_global_window_step_only_for_windowed_input(tmp_path, windowed):
    # Re-windowing is a step per record: skipped when the input is in the global window already.
    work = make_work(None, new_container())
    records = many_rows(60)
    p = BeamTestPipeline(runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner")
    rows = p | beam.Create(records)
    if windowed:
        rows = (rows
                | beam.Map(lambda r: beam.window.TimestampedValue(r, r.event.received_at / 1e6))
                | beam.WindowInto(beam.window.FixedWindows(600)))
    _ = rows | "Export" >> blob.WriteToBlobExport(work, ACCOUNT, AID, str(tmp_path))
    p.run().wait_until_finish()
    assert any(label.endswith("Export/GlobalWindow") for label in _labels(p)) == windowed
    assert local_files(tmp_path, work) == export.render_files(records, work.settings, ACCOUNT,
                                                              work.id)
