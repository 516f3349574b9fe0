"""Unbounded (live) input: the output graph the pipelines build for it, driven by TestStream.

The live Event Hubs source cannot run faithfully on the DirectRunner (docs/RUNNERS.md;
Prism runs it: tests/test_prism_live.py), so the output graph is fed by a TestStream of the same input records a live
source hands over, on the BundleBasedDirectRunner, which follows the watermark. Its outputs are
compared with a bounded run of the same records by ``pipelines.stream``.
"""
import collections
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from cdp_activation.core.config import load_config, parse_config
from cdp_activation.core.export import ExportSpec
from cdp_activation.core.timeutil import MICROS, format_time, parse_time
from pipelines import launch, wiring, workflows
from pipelines.options import ActivationOptions
from cdp_activation.clients.blob import BlobExportError
from cdp_activation.transforms import blob_steps
from cdp_activation.transforms.blob import LocalDestination
from cdp_activation.transforms.audiences import EngineSpec, EvaluateAudiencesStateful
from cdp_activation.transforms.live_sources import InputRecord, LiveSource
from cdp_activation.transforms.live import DedupeSystemEventsLive
from tests.commands import interrupt
from cdp_activation.transforms.localsink import part_name, write_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {
    "account": {"name": "acme", "aid": 1234},
    "audiences": [
        {"id": "fb", "slug": "frequent_buyers",
         "condition": {"event": "purchase", "within": "7d", "min_count": 3}},
        {"id": "hv", "slug": "high_value", "condition": {"trait": "ltv", "op": "gte", "value": 500}},
    ],
    "works": [
        {"id": "w-eh", "workflow": "eventhub_audience_export", "config": {"user_fields": ["email"]}},
        {"id": "w-blob", "workflow": "azure_blob_event_export",
         "config": {"container": "exports", "prefix": "ev/", "period_hours": 1,
                    "event_parameters": ["price"], "attributes": ["email"], "format": "csv"}},
        {"id": "w-sys", "workflow": "azure_blob_event_export",
         "config": {"container": "exports", "prefix": "sys/", "export_type": "system_events",
                    "period_hours": 6, "format": "csv"}},
        {"id": "w-alerts", "workflow": "webhook_system_events",
         "config": {"system_event_type": "failed"}},
    ],
}
T0 = parse_time("2026-11-20T10:00:00Z")
MINUTE, HOUR, DAY = 60 * MICROS, 3600 * MICROS, 86400 * MICROS
PART = re.compile(r"^part-(\d{6})-(\d{3})-([0-9a-f]{8})\.jsonl$")


def _at(offset):
    return format_time(T0 + offset)


def _event(event_id, user, name, offset, delay=2 * MICROS, **extra):
    record = {"event_id": event_id, "user_id": user, "event": name, "ts": _at(offset),
              "received_at": _at(offset + delay)}
    record.update(extra)
    return record


def _system(event_id, verb, offset, received_offset=None):
    received = offset + MICROS if received_offset is None else received_offset
    return {"kind": "system", "id": event_id, "ts": _at(offset), "received_at": _at(received),
            "data": {"aid": 1234, "subject_type": "work", "subject_id": "w-x", "verb": verb,
                     "notes": "note of %s" % event_id}}


# Batches as a live source hands them over, each followed by a watermark (offset from T0).
BATCHES = [
    ([_event("v1", "u1", "visit", 5 * MINUTE, traits={"email": "u1@x", "ltv": 600}),
      _event("p1", "u1", "purchase", 10 * MINUTE, properties={"price": 10}),
      _event("p2", "u1", "purchase", 20 * MINUTE, properties={"price": 20}),
      _event("p3", "u2", "purchase", 15 * MINUTE, properties={"price": 5}, traits={"email": "u2@x"}),
      # the same record again a minute later: applied once
      _event("p3", "u2", "purchase", 15 * MINUTE, delay=62 * MICROS, properties={"price": 5},
             traits={"email": "u2@x"}),
      {"anonymous_id": "a1", "event": "page_view", "ts": _at(30 * MINUTE),
       "received_at": _at(30 * MINUTE + MICROS), "event_id": "pv1"},
      "not json at all",
      _system("se-1", "failed", 12 * MINUTE),
      _system("se-1", "failed", 12 * MINUTE, received_offset=40 * MINUTE)],   # a copy: dropped
     50 * MINUTE),
    ([_event("p4", "u1", "purchase", 70 * MINUTE, properties={"price": 30}),
      _system("se-2", "failed", 65 * MINUTE)],
     2 * HOUR + 10 * MINUTE),          # closes the 1 h windows 10:00 and 11:00 and the 6 h 06:00
    ([_event("p5", "u2", "purchase", 3 * HOUR + 5 * MINUTE, properties={"price": 7}),
      _system("se-3", "synced", 3 * HOUR + 10 * MINUTE),
      # received in the 6 h window 06:00-12:00, whose file is already written: a late row
      _system("se-4", "failed", 19 * MINUTE, received_offset=20 * MINUTE)],
     4 * HOUR + 10 * MINUTE),          # closes 12:00 (header-only) and 13:00
    ([_system("se-1", "failed", 12 * MINUTE, received_offset=25 * HOUR)],  # 25 h later: new run
     27 * HOUR),
]


def _lines(records):
    return [r if isinstance(r, str) else json.dumps(r) for r in records]


def _identity(element):
    return element


def _options(out):
    options = PipelineOptions(["--config=unused", "--input=teststream", "--output_dir=%s" % out])
    options.view_as(StandardOptions).streaming = True
    return options


def _test_stream():
    stream = TestStream()
    sequence = 0
    for records, watermark in BATCHES:
        elements = []
        for line in _lines(records):
            sequence += 1
            # What a live source hands over: the body, no arrival time (records carry received_at).
            elements.append(TimestampedValue(InputRecord(line.encode("utf-8"), None,
                                                         "teststream:%d" % sequence),
                                             (T0 + watermark) / MICROS - 60))
        stream = stream.add_elements(elements).advance_watermark_to((T0 + watermark) / MICROS)
    # Past every delayed exit (7 d) and the flushes after it, then the end (beam-local.md).
    return (stream.advance_watermark_to((T0 + 30 * DAY) / MICROS)
            .advance_watermark_to((T0 + 31 * DAY) / MICROS)
            .advance_watermark_to_infinity())


def _live_pipeline(config_path, out):
    """The graph ``pipelines.stream`` builds, with a TestStream as the live source."""
    job = load_config(str(config_path))
    os.makedirs(out, exist_ok=True)
    disabled = workflows.preflight(job, out)
    spec = EngineSpec.from_job(job, job.raw.get("audiences") or [])
    options = _options(out)
    p = beam.Pipeline(options=options)
    source = LiveSource("teststream", _test_stream(), False, _identity, "test stream",
                        frozenset())
    wiring.build_graph(p, job, EvaluateAudiencesStateful(spec), options.view_as(ActivationOptions),
                       "run-live", disabled, live_source=source)
    return p


def _read_parts(directory):
    """Every record of a sink's parts, and the part names, checking the naming rule."""
    names = sorted(os.listdir(directory))
    records, per_shard = [], collections.defaultdict(list)
    for name in names:
        m = PART.match(name)
        assert m, name
        data = open(os.path.join(directory, name), "rb").read()
        assert m.group(3) == hashlib.sha256(data).hexdigest()[:8]
        per_shard[int(m.group(2))].append(int(m.group(1)))
        records.extend(json.loads(line) for line in data.decode("utf-8").splitlines())
    # each shard counts its own parts from 0
    assert all(indexes == list(range(len(indexes))) for indexes in per_shard.values()), names
    return records, names


def _read_parts_of(directory, names):
    records = []
    for name in names:
        records.extend(_read_file(os.path.join(directory, name)))
    return records, names


def _read_file(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _blob_files(out):
    root = os.path.join(out, "blob", "exports")
    return {os.path.relpath(p, root): open(p, "rb").read()
            for p in glob.glob(os.path.join(root, "**", "*.csv"), recursive=True)}


def _counted(records):
    return collections.Counter(json.dumps(r, sort_keys=True) for r in records)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same records through a bounded run (a file) and the unbounded graph (TestStream)."""
    tmp = tmp_path_factory.mktemp("unbounded")
    config = tmp / "config.json"
    config.write_text(json.dumps(CONFIG))
    events = tmp / "events.jsonl"
    events.write_text("\n".join(line for records, _ in BATCHES for line in _lines(records)) + "\n")
    bounded = subprocess.run(
        # A live run has no as-of time: the bounded run is taken past every wake-up to compare.
        [sys.executable, "-m", "pipelines.stream", "--config", str(config), "--input", str(events),
         "--output_dir", str(tmp / "bounded"), "--as_of", "2099-01-01T00:00:00Z"], cwd=ROOT,
        capture_output=True, text=True,
        timeout=300)
    assert bounded.returncode == 0, bounded.stderr[-3000:]
    _live_pipeline(config, str(tmp / "live")).run().wait_until_finish()
    return str(tmp / "bounded"), str(tmp / "live")


def test_audience_messages_are_written_in_parts_as_the_watermark_moves(runs):
    bounded, live = runs
    expected = _read_file(os.path.join(bounded, "eventhub", "w-eh.jsonl"))
    messages, names = _read_parts(os.path.join(live, "eventhub", "w-eh"))
    assert _counted(messages) == _counted(expected) and expected
    assert len(names) >= 3
    # The first flush came at the first watermark (10:50): what happened before it is in the
    # first part of its shard, and later flushes wrote further parts.
    early_parts, later_parts = set(), set()
    for name in names:
        part, _ = _read_parts_of(os.path.join(live, "eventhub", "w-eh"), [name])
        early = [m["timestamp"] < _at(50 * MINUTE) for m in part]
        if any(early):
            early_parts.add(name)
        if not any(early):
            later_parts.add(name)
    assert early_parts and all(PART.match(n).group(1) == "000000" for n in early_parts)
    assert later_parts
    assert not os.path.exists(os.path.join(live, "eventhub", "w-eh.jsonl"))


def test_blob_windows_are_the_bounded_files_and_a_late_row_is_dead_lettered(runs):
    bounded, live = runs
    expected, written = _blob_files(bounded), _blob_files(live)
    assert set(written) == set(expected)
    # 1 h windows 10:00, 11:00, 12:00 (header-only, between windows with data) and 13:00
    events = sorted(n for n in written if n.startswith("ev/"))
    assert len(events) == 4 and written[events[2]].count(b"\n") == 1
    late_window = "sys/acme_system_events_w-sys_%d_%d.csv" % (
        (T0 - 4 * HOUR) // MICROS, (T0 + 2 * HOUR) // MICROS)
    for name in expected:
        if name != late_window:
            assert written[name] == expected[name], name
    # se-4 arrived after its window was written: the bounded file has it, the live one does not,
    # and it is in the work's dead letters with the reason.
    missing = set(expected[late_window].splitlines()) - set(written[late_window].splitlines())
    assert [row.split(b",")[0] for row in missing] == [b"se-4"]
    dead, _ = _read_parts(os.path.join(live, "deadletter", "w-sys"))
    assert [(d["raw"]["id"], d["source"]) for d in dead] == [("se-4", "w-sys")]
    assert dead[0]["error"].startswith("late: ") and "already written" in dead[0]["error"]
    for work, prefix in (("w-blob", "ev/"), ("w-sys", "sys/")):
        marker = lambda out: json.loads(open(os.path.join(
            out, "blob", "exports", prefix + "_state", work + ".json")).read())["last_window_end"]
        assert marker(live) == marker(bounded)


def test_dead_letters_alerts_and_daily_activity_match_the_bounded_run(runs):
    bounded, live = runs
    inputs, _ = _read_parts(os.path.join(live, "deadletter", "input"))
    assert [(d["raw"], d["error"]) for d in inputs] == [
        (d["raw"], d["error"]) for d in _read_file(os.path.join(bounded, "deadletter", "input.jsonl"))]
    alerts, _ = _read_parts(os.path.join(live, "alerts", "w-alerts"))
    expected_alerts = _read_file(os.path.join(bounded, "alerts", "w-alerts.jsonl"))
    assert _counted(alerts) == _counted(expected_alerts)
    # se-1 (its copy within 24 h dropped, the one 25 h later kept), se-2, se-4
    assert sorted(a["id"] for a in alerts) == ["se-1", "se-1", "se-2", "se-4"]
    daily, _ = _read_parts(os.path.join(live, "audiences_daily"))
    totals = collections.Counter()
    for row in daily:
        totals[(row["day"], row["audience"], row["event"])] += row["count"]
    assert totals == {(r["day"], r["audience"], r["event"]): r["count"]
                      for r in _read_file(os.path.join(bounded, "audiences_daily.jsonl"))}


def test_system_event_log_reports_parts_and_files_but_no_completed(runs):
    bounded, live = runs
    log, _ = _read_parts(os.path.join(live, "system_events"))
    verbs = collections.Counter((e["data"]["subject_id"], e["data"]["verb"]) for e in log)
    assert {w: verbs[(w, "started")] for w in ("w-eh", "w-blob", "w-sys", "w-alerts")} == {
        "w-eh": 1, "w-blob": 1, "w-sys": 1, "w-alerts": 1}
    assert not [e for e in log if e["data"]["verb"] in ("completed", "failed")]
    parts = sorted(os.listdir(os.path.join(live, "eventhub", "w-eh")))
    assert verbs[("w-eh", "synced")] == len(parts) == verbs[("w-eh", "synccomplete")]
    synced_files = lambda records: sorted(
        e["data"]["notes"].split()[1] for e in records
        if e["data"]["verb"] == "synced" and e["data"]["subject_id"] in ("w-blob", "w-sys"))
    assert synced_files(log) == synced_files(_read_file(os.path.join(bounded, "system_events.jsonl")))
    assert len(log) == len({e["id"] for e in log})


def test_the_unbounded_graph_has_no_group_by_key_on_unbounded_data(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    p = _live_pipeline(config, str(tmp_path / "out"))
    grouped = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, (beam.GroupByKey, beam.CombinePerKey)) and not all(
                    pcoll.is_bounded for pcoll in node.inputs):
                grouped.append(node.full_label)

    p.visit(Visitor())
    assert grouped == []


def test_a_retried_part_rewrites_the_same_name_with_the_same_bytes(tmp_path):
    records = [{"b": 2}, {"a": 1}]
    first = write_part(str(tmp_path), 7, records, lambda r: json.dumps(r, sort_keys=True))
    again = write_part(str(tmp_path), 7, list(reversed(records)), lambda r: json.dumps(r, sort_keys=True))
    assert first == again and os.listdir(tmp_path) == [os.path.basename(first)]
    data = open(first, "rb").read()
    assert data == b'{"a":1}\n{"b":2}\n' and os.path.basename(first) == part_name(7, data)
    assert os.path.basename(first).startswith("part-000007-000-")


def test_live_dedupe_keeps_the_first_copy_to_arrive_for_24_hours(tmp_path):
    from cdp_activation.core.records import parse_record
    copies = [_system("s", "failed", 0, received_offset=HOUR),          # kept
              _system("s", "failed", 0, received_offset=30 * MINUTE),   # earlier, but later to arrive
              _system("s", "failed", 0, received_offset=24 * HOUR),     # within 24 h of 1 h
              _system("s", "failed", 0, received_offset=25 * HOUR),     # a new run: kept
              _system("t", "failed", 0)]
    stream = TestStream()
    for record in copies:
        event = parse_record(json.dumps(record))
        stream = stream.add_elements([TimestampedValue(event, event.ts / MICROS)])
    stream = stream.advance_watermark_to((T0 + 60 * HOUR) / MICROS).advance_watermark_to_infinity()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    out = tmp_path / "kept.jsonl"
    with beam.Pipeline(options=options) as p:
        _ = (p | stream | DedupeSystemEventsLive()
             | beam.Map(lambda e: "%s %s" % (e.id, format_time(e.received_at)))
             | beam.Map(lambda line, path=str(out): open(path, "a").write(line + "\n")))
    assert sorted(out.read_text().split("\n")[:-1]) == sorted(
        ["s " + _at(HOUR), "s " + _at(25 * HOUR), "t " + _at(MICROS)])


class _FlakyDestination(LocalDestination):
    """A local destination whose first ``failures`` puts fail."""

    def __init__(self, root, failures, prefix):
        super().__init__(str(root), "exports", prefix)
        self.failures = failures

    def put(self, name, data, content_type=None):
        if self.failures:
            self.failures -= 1
            raise BlobExportError("connection failed: reset", "unreachable")
        super().put(name, data, content_type)


class _Recipe:
    def __init__(self, destination):
        self.destination = destination

    def open(self):
        return self.destination


class _Value:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class _Bag(_Value):
    def read(self):
        return list(self.value or [])

    def add(self, value):
        self.value = (self.value or []) + [value]


class _Timer(_Value):
    def set(self, timestamp):
        self.value = timestamp


def _split(outputs):
    """A DoFn's outputs: (main outputs, {tag: [values]})."""
    main, tagged = [], collections.defaultdict(list)
    for o in outputs:
        if isinstance(o, beam.pvalue.TaggedOutput):
            tagged[o.tag].append(o.value)
        else:
            main.append(o)
    return main, tagged


def test_a_window_file_that_fails_is_written_again_and_holds_the_marker_back(tmp_path):
    work = parse_config(CONFIG).works[1]
    spec = ExportSpec(work.settings, "acme", work.id)
    destination = _FlakyDestination(tmp_path, 1, spec.prefix)
    windows = blob_steps.WriteClosedWindow(spec, _Recipe(destination), 1234, grace_us=5 * MINUTE)
    marker = blob_steps.AdvanceMarker(spec, _Recipe(destination), 1234, grace_us=5 * MINUTE)
    windows.setup()
    marker.setup()
    row = lambda offset, event_id: (T0 + offset, event_id, [event_id, "u", "", "purchase",
                                                            _at(offset), _at(offset), None, None])
    at = lambda micros: beam.utils.timestamp.Timestamp(micros=micros)
    # Windows 10:00, 11:00 and 13:00 have rows, each under its own key; 12:00 is empty.
    state = {}
    for start, event_id in ((T0, "a"), (T0 + HOUR, "b"), (T0 + 3 * HOUR, "d")):
        state[start] = (_Bag(), _Value(), _Timer())
        list(windows.process((("w-blob", start), [(start, row(start - T0 + MINUTE, event_id))]),
                             *state[start]))
        assert state[start][2].value.micros == start + HOUR + 5 * MINUTE
    marker_state = (_Bag(), _Value(), _Timer())

    def close(start):
        events, tagged = _split(windows.write_closed(("w-blob", start), state[start][2].value,
                                                     *state[start]))
        for result in tagged["results"]:
            marker.process(result, at(start + HOUR + 5 * MINUTE), *marker_state)
        return [e.data["verb"] for e in events], tagged["results"]

    # 10:00 fails; 11:00 is written; the marker does not move past the failed window
    assert close(T0) == (["failed"], [("w-blob", (T0, False))])
    assert state[T0][2].value.micros == T0 + HOUR + 10 * MINUTE  # its retry
    assert close(T0 + HOUR) == (["synced"], [("w-blob", (T0 + HOUR, True))])
    assert state[T0 + HOUR][0].read() == [] and state[T0][0].read() != []
    events = list(marker.plan(at(T0 + 2 * HOUR + 5 * MINUTE), *marker_state))
    assert events == [] and marker_state[1].value[0] is None
    # The retry writes 10:00; 13:00 closes; the marker writes 12:00 header-only and moves to 14:00
    events, results = _split(windows.write_closed(("w-blob", T0), state[T0][2].value, *state[T0]))
    assert [e.data["verb"] for e in events] == ["synced"] and state[T0][0].read() == []
    marker.process(results["results"][0], state[T0][2].value, *marker_state)
    assert close(T0 + 3 * HOUR) == (["synced"], [("w-blob", (T0 + 3 * HOUR, True))])
    events = list(marker.plan(at(T0 + 4 * HOUR + 5 * MINUTE), *marker_state))
    assert [(e.data["verb"], e.data["notes"].split(",")[0]) for e in events] == [
        ("synced", "file %s written" % spec.file_name(T0 + 2 * HOUR)),
        ("synccomplete", "windows written up to %s" % _at(4 * HOUR))]
    assert marker_state[1].value == (T0 + 4 * HOUR, None) and marker_state[0].read() == []
    assert sorted(destination.list_names()) == sorted(
        ["ev/_state/w-blob.json"] + [spec.file_name(T0 + h * HOUR) for h in range(4)])
    assert destination.get(spec.file_name(T0 + 2 * HOUR)).count(b"\n") == 1  # header only
    # A row for a written window is late: dead-lettered with the reason, not buffered.
    main, late = _split(windows.process((("w-blob", T0), [(T0, row(2 * MINUTE, "c"))]),
                                        *state[T0]))
    assert main == [] and [d["raw"]["event_id"] for d in late["late"]] == ["c"]
    assert state[T0][0].read() == []


def test_live_sinks_and_blob_windows_spread_their_state_over_keys(tmp_path):
    """The stateful steps of the live graph get their input under many keys: a local sink's
    records under (sink, shard) keys, a Blob export's rows under (work, window) keys."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    p = _live_pipeline(config, str(tmp_path / "out"))
    inputs = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            for suffix in ("Work[w-eh]WriteLocalSink/WriteParts",
                           "Work[w-blob]WriteToBlob/WriteClosedWindows/ParDo(WriteClosedWindow)"):
                if node.full_label.endswith(suffix):
                    inputs[suffix] = node.inputs[0]

    p.visit(Visitor())
    assert len(inputs) == 2
    seen = str(tmp_path / "keys.jsonl")
    for suffix, pcoll in inputs.items():
        _ = pcoll | "Keys of %s" % suffix >> beam.Map(
            lambda kv, what=suffix, path=seen: open(path, "a").write(
                json.dumps([what, kv[0]]) + "\n"))
    p.run().wait_until_finish()
    keys = collections.defaultdict(set)
    for line in open(seen):
        what, key = json.loads(line)
        keys[what].add(json.dumps(key))
    sink_keys = keys["Work[w-eh]WriteLocalSink/WriteParts"]
    window_keys = {tuple(json.loads(k)) for k in keys["Work[w-blob]WriteToBlob/WriteClosedWindows/ParDo(WriteClosedWindow)"]}
    assert len(sink_keys) > 1
    # the four 1 h windows with rows: 10:00, 11:00, 13:00 (and 12:00 is empty)
    assert window_keys == {("w-blob", T0), ("w-blob", T0 + HOUR), ("w-blob", T0 + 3 * HOUR)}


def test_local_runners_that_cannot_run_a_live_read_are_refused_or_warned_about(capsys):
    with pytest.raises(launch.LaunchError, match="cannot run a live read"):
        launch.check_live_runner("BundleBasedDirectRunner")
    for runner in (None, "DirectRunner", "direct"):
        launch.check_live_runner(runner)
        assert "does not follow the source's watermark" in capsys.readouterr().err
    for runner in ("FlinkRunner", "DataflowRunner", "PortableRunner", "PrismRunner"):
        launch.check_live_runner(runner)
        assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_live_command_builds_reads_the_hub_and_stops_on_ctrl_c(tmp_path, local_eventhubs):
    """The command that failed at construction ("GroupByKey cannot be applied to an unbounded
    PCollection") builds, connects its live reader and runs until Ctrl-C, on the DirectRunner
    (named: a live input with no --runner runs on Prism, tests/test_prism_live.py).

    What it writes is not checked: offline the DirectRunner runs the FnApiRunner, which fires
    event-time timers at once and may hold back whatever follows a timer until the input ends
    (README "Live (unbounded) runs"); the output graph is checked with TestStream above.
    """
    from azure.eventhub import EventData, EventHubProducerClient
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    producer = EventHubProducerClient.from_connection_string(
        local_eventhubs.connection_string, retry_total=2)
    with producer:
        for line in _lines(BATCHES[0][0]):
            batch = producer.create_batch()
            batch.add(EventData(line))
            producer.send_batch(batch)
    before = local_eventhubs.connections_accepted
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.stream", "--config", str(tmp_path / "config.json"),
         "--streaming", "--output_dir", str(tmp_path / "out"), "--runner=DirectRunner",
         "--input", "eventhubs://hub?connection_string_env=IN_CS&mode=live"],
        cwd=ROOT, env=dict(os.environ, IN_CS=local_eventhubs.connection_string),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The launcher's credential check, the partition planner and the reader each connect.
        deadline = time.monotonic() + 60
        while (local_eventhubs.connections_accepted - before < 3 and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.2)
        time.sleep(3)
        running = proc.poll() is None
        connected = local_eventhubs.connections_accepted - before
    finally:
        stdout, stderr = interrupt(proc)
    assert running and connected >= 3, (connected, stderr[-3000:])
    assert proc.returncode == 130 and "interrupted" in stderr, stderr[-3000:]
    assert "GroupByKey" not in stderr and "does not follow the source's watermark" in stderr
    key = local_eventhubs.connection_string.split("SharedAccessKey=")[1].split(";")[0]
    assert key not in stdout + stderr

