"""Records, works and runs for the azure_blob_event_export tests (``test_blob_export.py``,
``test_blob_credentials.py``): sample rows and system events, a work's config, one pipeline run
through :class:`transforms.blob.WriteToBlobExport` with its events and counters, and readers of
what a run wrote to Azurite or to the local sink.
"""
import csv
import gzip
import io
import socket
import uuid

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from azure.storage.blob import BlobServiceClient

from cdp_activation.core import export
from cdp_activation.core.config import parse_config
from cdp_activation.core.engine import ExportRow
from cdp_activation.core.records import parse_record
from cdp_activation.core.timeutil import MICROS, parse_time
from cdp_activation.clients.blob import AzureDestination, BlobExportError
from cdp_activation.clients.markers import read_marker, verify_credentials
from cdp_activation.transforms import blob
from cdp_activation.transforms.blob import LocalDestination, make_destination

T0 = parse_time("2026-11-20T10:00:00Z")
H = 3600 * MICROS
ACCOUNT, AID = "acme", 1234


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


#: What the last step of a run collected, by run key (the runners here run in this process).
COLLECTED = {}


def collect(event, key):
    """The last step of a run: keeps ``event`` under the run's ``key``."""
    COLLECTED.setdefault(key, []).append(event)


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
     | beam.Map(collect, key))
    result = p.run()
    result.wait_until_finish()
    counters = {}   # one result per step: sum them
    for c in result.metrics().query(MetricsFilter().with_namespace("work:" + work.id))["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    return Run(COLLECTED.pop(key, []), counters)


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
