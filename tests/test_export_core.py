"""core.export: windows, anchors, names, rows, cells, encoders, plan and marker (pure, no Beam)."""
import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdp_activation.core import export
from cdp_activation.core.config import parse_config
from cdp_activation.core.engine import ExportRow
from cdp_activation.core.records import canonical_json, parse_record
from cdp_activation.core.timeutil import MICROS, parse_time

H = 3600 * MICROS
T0 = parse_time("2026-11-20T10:00:00Z")


def t(text):
    return parse_time(text)


def blob_settings(**config):
    base = {"container": "exports", "export_type": "events", "period_hours": 1, "format": "csv"}
    base.update(config)
    job = parse_config({"account": {"name": "acme", "aid": 7},
                        "works": [{"id": "w-blob", "workflow": "azure_blob_event_export",
                                   "config": base}]})
    return job.works[0].settings


def row(attributes=None, **fields):
    obj = {"user_id": "u1", "event": "purchase", "ts": "2026-11-20T10:00:00Z"}
    obj.update(fields)
    obj = {k: v for k, v in obj.items() if v is not None}
    return ExportRow(parse_record(obj), attributes or {})


def system(id_, received_at, verb="failed", **data):
    body = {"aid": 7, "subject_type": "work", "subject_id": "w-1", "verb": verb}
    body.update(data)
    return parse_record({"kind": "system", "id": id_, "ts": received_at,
                         "received_at": received_at, "data": body})


# -- windows and anchors -----------------------------------------------------------------------

def test_window_start_on_hour_grid():
    assert export.window_start(T0, 0, H) == T0
    assert export.window_start(T0 + H - 1, 0, H) == T0
    assert export.window_start(T0 + H, 0, H) == T0 + H
    assert export.window_start(T0 + 5 * H + 17, 0, 6 * H) == t("2026-11-20T12:00:00Z")


def test_window_start_with_non_hour_anchor():
    anchor = t("2026-11-01T00:30:15Z")
    period = 2 * H
    assert export.window_start(t("2026-11-20T10:30:14Z"), anchor, period) == t("2026-11-20T08:30:15Z")
    assert export.window_start(t("2026-11-20T10:30:15Z"), anchor, period) == t("2026-11-20T10:30:15Z")
    # before the anchor: the grid extends backwards
    assert export.window_start(t("2026-10-31T23:00:00Z"), anchor, period) == t("2026-10-31T22:30:15Z")
    assert export.window_start(anchor, anchor, 24 * H) == anchor


def test_anchor_resolution_order():
    assert export.resolve_anchor(5, 6, 7) == 5
    assert export.resolve_anchor(None, 6, 7) == 6
    assert export.resolve_anchor(None, None, 7) == 7
    assert export.resolve_anchor(None, None, None) == 0
    assert export.resolve_anchor(0, 6, 7) == 0  # a marker at the epoch still wins


def test_spec_uses_marker_else_anchor_else_start():
    s = blob_settings(anchor="2026-11-01T00:20:00Z", start="2026-11-02T00:45:00Z")
    assert export.ExportSpec(s, "acme", "w").anchor == t("2026-11-01T00:20:00Z")
    assert export.ExportSpec(s, "acme", "w", marker_end=T0).anchor == T0
    s = blob_settings(start="2026-11-02T00:45:00Z")
    assert export.ExportSpec(s, "acme", "w").window_of(t("2026-11-20T10:00:00Z")) == \
        t("2026-11-20T09:45:00Z")
    assert export.ExportSpec(blob_settings(), "acme", "w").anchor == 0


# -- names and marker --------------------------------------------------------------------------

def test_file_name_uses_unix_seconds():
    name = export.file_name("acme/events/", "acme", "events", "w-blob", T0, T0 + H, "csv.gz")
    assert name == "acme/events/acme_events_w-blob_%d_%d.csv.gz" % (T0 // MICROS, T0 // MICROS + 3600)
    assert export.file_name("", "acme", "system_events", "w", 0, 2 * H, "parquet") == \
        "acme_system_events_w_0_7200.parquet"


def test_marker_round_trip_and_names():
    data = export.marker_bytes("w-blob", T0, T0 + 5)
    body = json.loads(data)
    assert body == {"work_id": "w-blob", "last_window_end": "2026-11-20T10:00:00Z",
                    "last_window_end_unix": T0 // MICROS, "updated_at": "2026-11-20T10:00:00.000005Z"}
    assert export.parse_marker(data) == T0
    assert export.parse_marker(json.dumps({"last_window_end_unix": 3600})) == H
    with pytest.raises(ValueError):
        export.parse_marker(b"{not json")
    with pytest.raises(ValueError):
        export.parse_marker(b"{}")
    assert export.marker_name("p/", "w") == "p/_state/w.json"
    assert export.verify_name("p/", "w", 12) == "p/_verify/w_12.txt"


# -- plan --------------------------------------------------------------------------------------

def test_plan_fills_gaps_between_windows_with_data():
    assert export.plan_windows({T0 + 3 * H, T0}, None, H) == [T0, T0 + H, T0 + 2 * H, T0 + 3 * H]
    assert export.plan_windows([T0, T0], None, H) == [T0]
    assert export.plan_windows([], None, H) == []


def test_plan_starts_at_marker_and_ignores_older_windows():
    assert export.plan_windows([T0 + 2 * H], T0, H) == [T0, T0 + H, T0 + 2 * H]
    assert export.plan_windows([T0 - H], T0, H) == []
    assert export.plan_windows([], T0, H) == []
    with pytest.raises(ValueError):
        export.plan_windows([T0 + 17], T0, H)


def test_marker_advances_to_first_failed_window():
    plan = [T0, T0 + H, T0 + 2 * H, T0 + 3 * H]
    assert export.advance_marker(plan, {T0, T0 + H, T0 + 3 * H}, None, H) == T0 + 2 * H
    assert export.advance_marker(plan, set(plan), None, H) == T0 + 4 * H
    assert export.advance_marker(plan, {T0 + H}, None, H) is None
    assert export.advance_marker(plan, {T0 + H}, T0, H) == T0


# -- cells -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "=HYPERLINK(\"x\")"])
def test_formula_guard_on_strings(text):
    assert export.format_cell(text) == "'" + text


@pytest.mark.parametrize("value,cell", [
    (19.99, "19.99"), (42, "42"), (-5, "-5"), (-2.5, "-2.5"), (10 ** 20, "100000000000000000000"),
    (True, "true"), (False, "false"), (None, ""), ("", ""), ("plain", "plain"), ("a=b", "a=b"),
    ({"a": [1, {"b": None}]}, '{"a":[1,{"b":null}]}'), ([1, "x"], '[1,"x"]'), ("é", "é"),
    ({"c": "é"}, '{"c":"\\u00e9"}'),   # json.dumps defaults, as SEMANTICS writes them
])
def test_cell_formatting(value, cell):
    assert export.format_cell(value) == cell


def test_csv_quotes_carriage_returns():
    # A bare CR would be read as a line end: the cell is quoted even though lines end with LF.
    data = export.encode_file(["a"], [["\rx"], ["y\rz"]], "csv")
    assert data == b'a\n"\'\rx"\n"y\rz"\n'
    assert list(csv.reader(io.StringIO(data.decode(), newline=""))) == [["a"], ["'\rx"], ["y\rz"]]


def test_csv_quoting_and_line_ends():
    data = export.encode_file(["a", "b"], [["x,y", 'q"q'], ["line\nbreak", None]], "csv")
    assert data == b'a,b\n"x,y","q""q"\n"line\nbreak",\n'
    assert list(csv.reader(io.StringIO(data.decode()))) == [["a", "b"], ["x,y", 'q"q'],
                                                            ["line\nbreak", ""]]


# -- rows --------------------------------------------------------------------------------------

def test_event_row_columns_properties_and_traits():
    s = blob_settings(event_parameters=["price", "cart.total", "missing"], attributes=["email", "vip"])
    spec = export.ExportSpec(s, "acme", "w")
    assert spec.columns == ["event_id", "user_id", "anonymous_id", "event", "timestamp",
                            "received_at", "properties.price", "properties.cart.total",
                            "properties.missing", "traits.email", "traits.vip"]
    r = row(event_id="e1", ts="2026-11-20T09:59:00.5Z", received_at="2026-11-20T10:00:00Z",
            properties={"price": 19.99, "cart.total": 3, "cart": {"total": 9}, "missing": None},
            attributes={"email": "=x@y", "vip": True})
    received_at, record_id, values = spec.keyed_row(r)
    assert (received_at, record_id) == (T0, "e1")
    assert values == ["e1", "u1", None, "purchase", "2026-11-20T09:59:00.500Z",
                      "2026-11-20T10:00:00Z", 19.99, 3, None, "=x@y", True]
    text = spec.encode([spec.keyed_row(r)]).decode()
    assert text.splitlines()[1] == ("e1,u1,,purchase,2026-11-20T09:59:00.500Z,2026-11-20T10:00:00Z,"
                                    "19.99,3,,'=x@y,true")


def test_event_without_id_exports_its_content_hash():
    r = row(anonymous_id="anon-1", user_id=None)
    assert len(r.event.event_id) == 64
    values = export.event_row(r)
    assert values[0] == r.event.event_id and values[1] is None and values[2] == "anon-1"


def test_system_event_row():
    e = system("se-1", "2026-11-20T10:00:00Z", notes="boom", extra={"k": 1})
    assert export.system_event_row(e) == [
        "se-1", "2026-11-20T10:00:00Z", "2026-11-20T10:00:00Z", 7, "work", "w-1", "failed", "boom",
        {"aid": 7, "subject_type": "work", "subject_id": "w-1", "verb": "failed", "notes": "boom",
         "extra": {"k": 1}}]


def test_rows_ordered_by_received_at_then_id():
    s = blob_settings()
    rows = [row(event_id="b", received_at="2026-11-20T10:00:01Z"),
            row(event_id="c", received_at="2026-11-20T10:00:00Z"),
            row(event_id="a", received_at="2026-11-20T10:00:01Z")]
    files = export.render_files(rows, s, "acme", "w")
    (data,) = files.values()
    ids = [line.split(",")[0] for line in data.decode().splitlines()[1:]]
    assert ids == ["c", "a", "b"]


def test_dedupe_system_events_24h_rule():
    # given out of order: copies are taken in received_at order
    events = [system("x", "2026-11-21T09:59:59Z"), system("x", "2026-11-21T10:00:00Z"),
              system("y", "2026-11-20T11:00:00Z"), system("x", "2026-11-20T10:00:00Z"),
              system("x", "2026-11-21T10:30:00Z")]
    kept = export.dedupe_system_events(events)
    assert [(e.id, e.received_at) for e in kept] == [
        ("x", t("2026-11-20T10:00:00Z")), ("y", t("2026-11-20T11:00:00Z")),
        ("x", t("2026-11-21T10:00:00Z"))]


def test_render_files_filters_and_windows():
    s = blob_settings(events=["purchase"], start="2026-11-20T10:00:00Z", format="csv")
    rows = [row(event_id="early", received_at="2026-11-20T09:59:59Z"),       # before start
            row(event_id="view", event="view", received_at="2026-11-20T10:10:00Z"),  # filtered
            row(event_id="p1", received_at="2026-11-20T10:10:00Z"),
            row(event_id="p2", received_at="2026-11-20T13:00:00Z")]
    files = export.render_files(rows, s, "acme", "w")
    base = T0 // MICROS
    names = ["acme_events_w_%d_%d.csv" % (base + i * 3600, base + (i + 1) * 3600) for i in range(4)]
    assert sorted(files) == names
    assert files[names[1]] == files[names[2]] == \
        b"event_id,user_id,anonymous_id,event,timestamp,received_at\n"
    assert b"p1" in files[names[0]] and b"p2" in files[names[3]]
    # with a marker: windows before it are skipped, the plan starts at the marker
    files = export.render_files(rows, s, "acme", "w", marker_end=T0 + 2 * H)
    assert sorted(files) == names[2:]


def test_render_system_events_dedupes_into_first_window():
    s = blob_settings(export_type="system_events")
    events = [system("x", "2026-11-20T10:30:00Z"), system("x", "2026-11-20T11:30:00Z")]
    files = export.render_files(events, s, "acme", "w")
    assert len(files) == 1
    (name, data), = files.items()
    assert name.endswith("_%d_%d.csv" % (T0 // MICROS, T0 // MICROS + 3600))
    assert data.decode().splitlines()[0] == "id,timestamp,received_at,aid,subject_type,subject_id," \
                                            "verb,notes,data"
    assert len(data.decode().splitlines()) == 2


# -- encoders ----------------------------------------------------------------------------------

def test_gzip_is_deterministic_and_plain():
    rows = [["a", 1], ["b", None]]
    one = export.encode_file(["x", "y"], rows, "csv.gz")
    two = export.encode_file(["x", "y"], rows, "csv.gz")
    assert one == two
    assert one[:3] == b"\x1f\x8b\x08"
    assert one[3] & 0x08 == 0                 # FLG.FNAME not set: no file name
    assert one[4:8] == b"\x00\x00\x00\x00"    # MTIME 0
    assert gzip.decompress(one) == export.encode_file(["x", "y"], rows, "csv")


def test_parquet_types_values_and_determinism():
    columns = ["id", "n", "f", "mixed", "flag", "obj", "empty", "huge"]
    rows = [["a", 1, 1, 1, True, {"k": 1}, None, 2 ** 70],
            ["=b", None, 2.5, "x", False, [1], None, 1]]
    one = export.encode_file(columns, rows, "parquet")
    assert one == export.encode_file(columns, rows, "parquet")
    table = pq.read_table(io.BytesIO(one))
    assert table.schema.types == [pa.string(), pa.int64(), pa.float64(), pa.string(), pa.bool_(),
                                  pa.string(), pa.string(), pa.float64()]
    assert table.to_pylist() == [
        {"id": "a", "n": 1, "f": 1.0, "mixed": "1", "flag": True, "obj": '{"k":1}', "empty": None,
         "huge": float(2 ** 70)},
        {"id": "'=b", "n": None, "f": 2.5, "mixed": "x", "flag": False, "obj": "[1]", "empty": None,
         "huge": 1.0}]


def test_header_only_parquet_has_string_columns():
    data = export.encode_file(["a", "b"], [], "parquet")
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 0 and table.column_names == ["a", "b"]
    assert table.schema.types == [pa.string(), pa.string()]


def test_unknown_format():
    with pytest.raises(ValueError):
        export.encode_file(["a"], [], "xlsx")


# -- the window limit of one run (CONTRACT 2) ----------------------------------------------------

def test_a_run_plans_at_most_max_windows_from_its_first_window():
    assert export.window_limit(T0, None, H, 3) == T0 + 3 * H
    assert export.window_limit(T0, T0 - 5 * H, H, 3) == T0 - 2 * H   # from the marker's end
    assert export.window_limit(T0, None, H, None) is None             # allow_more_windows
    assert export.window_limit(None, None, H, 3) is None              # no data
    far = t("9999-12-31T23:00:00Z")
    assert export.plan_windows([T0, T0 + H, far], None, H, limit=T0 + 3 * H) == [T0, T0 + H]
    assert export.plan_windows([T0, T0 + 5 * H], None, H, limit=T0 + 3 * H) == [T0]
    reason = export.beyond_limit_reason(far, T0, T0 + 10000 * H, H)
    assert reason.startswith("window 9999-12-31T23:00:00Z is 69890869 windows after the run's "
                             "first window 2026-11-20T10:00:00Z: more than max_windows_per_run "
                             "(10000)") and "allow_more_windows: true" in reason


def test_render_files_of_a_record_dated_9999_stop_at_the_limit():
    rows = [row(event_id="a", ts="2026-11-20T10:00:00Z"), row(event_id="b", ts="2026-11-20T12:30:00Z"),
            row(event_id="far", ts="9999-12-31T23:00:00Z")]
    files = export.render_files(rows, blob_settings(), "acme", "w-blob")
    assert sorted(files) == ["acme_events_w-blob_%d_%d.csv" % (s, s + 3600)
                             for s in (1795168800, 1795172400, 1795176000)]
    files = export.render_files(rows[:2] + [row(event_id="c", ts="2026-11-21T10:00:00Z")],
                                blob_settings(max_windows_per_run=5), "acme", "w-blob")
    assert len(files) == 3  # the windows to the last one with data within the 5
    files = export.render_files(rows[:2] + [row(event_id="c", ts="2026-11-21T10:00:00Z")],
                                blob_settings(max_windows_per_run=5, allow_more_windows=True),
                                "acme", "w-blob")
    assert len(files) == 25


def test_a_first_window_far_before_the_next_window_with_data_is_warned_about():
    old, new = t("2019-03-01T00:00:00Z"), t("2026-11-20T10:00:00Z")
    warning = export.leading_gap_warning("w-blob", [new, old, new + H], None, H, (old + 5, "e-17"))
    assert warning == (
        "work w-blob: the first window 2019-03-01T00:00:00Z (record e-17, received_at "
        "2019-03-01T00:00:00.000005Z) lies 2821 days before the next window with data "
        "2026-11-20T10:00:00Z, so 67713 header-only files fill the gap; if records received "
        "before 2026-11-20T10:00:00Z should not be exported, set the work's start: "
        "\"2026-11-20T10:00:00Z\"")
    assert export.leading_gap_warning("w", [new - 29 * 24 * H, new], None, H) is None
    assert export.leading_gap_warning("w", [old, new], new - H, H) is None  # catch-up from a marker
    assert export.leading_gap_warning("w", [old], None, H) is None


# -- bulk encoding and sorting -----------------------------------------------------------------

def _encode_csv_row_by_row(columns, rows):
    """The CSV encoder of the contract, one csv.writer call per row: what the bulk one must equal."""
    parts = []

    class Sink:
        def write(self, record):
            parts.append(record[:-2] + "\n")

    writer = csv.writer(Sink(), lineterminator="\r\n")
    writer.writerow(columns)
    for values in rows:
        writer.writerow([export.format_cell(v) for v in values])
    return "".join(parts).encode("utf-8")


_CELLS = [None, "", "plain", "x,y", 'q"q', "line\nbreak", "cr\ronly", "crlf\r\nend", "=1+2", "+x",
          "-5", "@h", "\ttab", "\rlead", "é", 0, -3, 2 ** 70, 19.99, float("inf"), True, False,
          {"a": [1, None]}, ["x", 1], " ", '"']


@pytest.mark.parametrize("seed", range(40))
def test_bulk_csv_equals_row_by_row_encoder(seed):
    import random
    rnd = random.Random(seed)
    columns = ["c%d" % i for i in range(rnd.randint(1, 5))]
    pool = _CELLS if seed % 2 else [c for c in _CELLS if not (isinstance(c, str) and "\r" in c)]
    rows = [[rnd.choice(pool) for _ in columns] for _ in range(rnd.randint(0, 30))]
    assert export.encode_csv(columns, rows) == _encode_csv_row_by_row(columns, rows)


def test_bulk_csv_falls_back_for_a_carriage_return_among_many_rows():
    rows = [["a%d" % i, i] for i in range(100)] + [["x\ry", 1]]
    data = export.encode_csv(["s", "n"], rows)
    assert data == _encode_csv_row_by_row(["s", "n"], rows)
    assert data.endswith(b'"x\ry",1\n')


def test_sort_rows_matches_the_full_key_with_and_without_ties():
    import random
    rnd = random.Random(7)
    for ties in (False, True):
        keyed = []
        for i in range(300):
            ident = "e%d" % (rnd.randrange(40) if ties else i)
            keyed.append((rnd.randrange(5) * MICROS if ties else rnd.randrange(10 ** 9), ident,
                          [ident, rnd.choice([1, "b", None, {"k": rnd.randrange(3)}])]))
        expected = sorted(keyed, key=lambda r: export.row_sort_key(*r))
        assert [canonical_json(r) for r in export.sort_rows(keyed)] == \
            [canonical_json(r) for r in expected]
