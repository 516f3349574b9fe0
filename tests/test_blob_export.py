"""The azure_blob_event_export work against Azurite, through real Beam pipelines: the files, failures
and catch-up, and rows travelling batched (credentials: ``test_blob_credentials.py``).

Every run's files are compared with :func:`core.export.render_files` over the same records and with
the local sink's files, byte for byte.
"""
import io
import re
import uuid

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from cdp_activation.core import export
from cdp_activation.transforms import blob, blob_steps
from tests.blob_runs import (ACCOUNT, AID, COLLECTED, H, T0, collect, container_client,
                             contents, data_blobs, dead_port, export_row, launch, local_files,
                             make_work, marker_of, new_container, read_cells, run_export,
                             sample_rows, sample_system_events, window_name)
from tests.fixtures_azurite import connection_string

FORMULAS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$")   # a number cell is not a formula


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
         | beam.Map(collect, key))
    assert contents(data_blobs(azurite, container)) == \
        export.render_files(records, work.settings, ACCOUNT, work.id)
    assert marker_of(azurite, work) == T0 + 6 * H
    events = COLLECTED.pop(key, [])
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
     | beam.Map(collect, key))
    p.run().wait_until_finish()
    elements = COLLECTED.pop(key, [])
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
