"""Blob export files (CONTRACT 5.2): windows, names, rows, cells, encoders and the state marker.

Pure functions, no Beam: the Beam shell (``transforms/blob.py``) and the tests' reference both use
them, so a file written by a pipeline is exactly what :func:`render_files` computes from the same
records.

Windows
    A file covers ``received_at`` in ``[start, start + period)``. Windows are fixed and anchored:
    ``start = anchor + k * period`` where the anchor is the end of the last window recorded in the
    state marker, else the config ``anchor``, else the config ``start``, else the Unix epoch
    (:func:`resolve_anchor`). All times are integer microseconds.

Rows
    ``events``: ``event_id, user_id, anonymous_id, event, timestamp, received_at``, then
    ``properties.<name>`` per event parameter and ``traits.<name>`` per attribute (the user's value as
    of the event). ``system_events``: ``id, timestamp, received_at, aid, subject_type, subject_id,
    verb, notes, data``. Rows are ordered by (``received_at``, ``event_id`` / ``id``); times are
    RFC 3339 UTC (:func:`core.timeutil.format_time`).

Cells (CSV)
    Numbers as ``repr`` (``19.99``, ``42``), booleans ``true``/``false``, objects and lists compact
    JSON, absent or null empty, and a *string* starting with ``= + - @``, tab or CR gets a leading
    ``'`` (the spreadsheet-formula guard). CSV is written by Python's ``csv`` module with ``\\n`` line
    ends, minimal quoting (a cell holding a CR or LF is quoted too) and a header row; ``csv.gz`` is
    that CSV gzipped with mtime 0 and no file name, so the same rows always give the same bytes.

Parquet typing
    Each column is typed from its values in the file: all non-null values booleans -> ``bool``; all
    integers in the int64 range -> ``int64``; all numbers (ints and floats) -> ``double``; anything
    else, or no value at all (a header-only file) -> ``string`` holding exactly the CSV cell text
    (JSON for objects, ``true``/``false``, the formula guard). Nulls stay null. The id, name and
    time columns (``timestamp`` and ``received_at`` are RFC 3339 text, as in the CSV) are therefore
    always ``string``, numbers stay numbers as the contract asks, and a reader gets the same values
    as from the CSV. The price: a column whose values change type (a property that is an integer in
    one hour and a string in the next) has a different Parquet type in those two files. Files are
    written by pyarrow with snappy compression and no wall-clock metadata, so the same rows give
    the same bytes.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Union

from cdp_activation.core.records import SystemEvent, canonical_json, dedupe_first_copies
from cdp_activation.core.timeutil import MICROS, format_time, parse_time, to_unix_seconds

if TYPE_CHECKING:
    from cdp_activation.core.workflows import BlobSettings
    from cdp_activation.core.engine import ExportRow

#: What a work exports: an event with its user's attributes (``events``) or a system event.
ExportRecord = Union["ExportRow", SystemEvent]
#: ``(received_at, event_id or id, row values)``: a row with its sort key.
KeyedRow = tuple[int, str, list[Any]]

EVENT_COLUMNS = ("event_id", "user_id", "anonymous_id", "event", "timestamp", "received_at")
SYSTEM_EVENT_COLUMNS = ("id", "timestamp", "received_at", "aid", "subject_type", "subject_id", "verb",
                        "notes", "data")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "csv.gz": "application/gzip",
                 "parquet": "application/vnd.apache.parquet"}
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
#: The most windows a Blob export plans in one run, unless its config sets ``max_windows_per_run``
#: or ``allow_more_windows: true`` (CONTRACT 2).
DEFAULT_MAX_WINDOWS = 10_000


# -- windows -----------------------------------------------------------------------------------

def period_micros(period_hours: int) -> int:
    return int(period_hours) * 3600 * MICROS


def resolve_anchor(marker_end: int | None = None, anchor: int | None = None,
                   start: int | None = None) -> int:
    """The window anchor: the state marker's end, else config ``anchor``, else ``start``, else 0."""
    for value in (marker_end, anchor, start):
        if value is not None:
            return value
    return 0


def window_start(received_at: int, anchor: int, period: int) -> int:
    """Start of the window ``[s, s + period)`` holding ``received_at`` on the grid of ``anchor``."""
    return anchor + ((received_at - anchor) // period) * period


def window_limit(first_with_data: int | None, marker_end: int | None, period: int,
                 max_windows: int | None) -> int | None:
    """The start of the first window past a run's plan, or None (no limit, or no data).

    A run plans at most ``max_windows`` windows (None: any number) from the marker's end, else
    from its first window with data: one record dated far ahead (``9999-12-31``) would otherwise
    make millions of header-only files. Records in windows at or after the limit are not written
    by this run (the Beam shell dead-letters them with :func:`beyond_limit_reason`).
    """
    first = marker_end if marker_end is not None else first_with_data
    if max_windows is None or first is None:
        return None
    return first + max_windows * period


def beyond_limit_reason(start: int, first: int, limit: int, period: int) -> str:
    """The dead-letter reason of a record in window ``start``, past the run's ``limit``."""
    return ("window %s is %d windows after the run's first window %s: more than "
            "max_windows_per_run (%d) header-only and data files in one run; set "
            "allow_more_windows: true to write them, or fix the record's time"
            % (format_time(start), (start - first) // period, format_time(first),
               (limit - first) // period))


#: A run whose first window lies this far before its next window with data gets a warning
#: (:func:`leading_gap_warning`): the gap is all header-only files, mostly from one stray record.
FAR_BEFORE_US = 30 * 24 * 3600 * MICROS


def leading_gap_warning(work_id: str, window_starts_with_data: Iterable[int], marker_end: int | None,
                        period: int, first_record: tuple[int, str] | None = None) -> str | None:
    """A warning (one line) when a run's first window lies far before the rest of its data, else
    None. Not an error: old records are valid; the tip is to set the work's ``start``.

    ``first_record``: ``(received_at, id)`` of the first record of the first window, named in the
    warning. Only a first window with data counts (no marker): catching up from a marker is what
    the marker is for.
    """
    if marker_end is not None:
        return None
    starts = sorted(set(window_starts_with_data))
    if len(starts) < 2 or starts[1] - starts[0] <= FAR_BEFORE_US:
        return None
    first, following = starts[0], starts[1]
    record = ("" if first_record is None else
              " (record %s, received_at %s)" % (first_record[1], format_time(first_record[0])))
    return ("work %s: the first window %s%s lies %d days before the next window with data %s, "
            "so %d header-only files fill the gap; if records received before %s should not be "
            "exported, set the work's start: \"%s\""
            % (work_id, format_time(first), record, (following - first) // (24 * 3600 * MICROS),
               format_time(following), (following - first) // period - 1, format_time(following),
               format_time(following)))


def plan_windows(window_starts_with_data: Iterable[int], marker_end: int | None, period: int,
                 limit: int | None = None) -> list[int]:
    """The window starts a run writes, in order.

    From the marker's end (if any, else the first window with data) to the last window with data,
    every window; those without data become header-only files. Windows before the marker's end
    are already written and never planned, nor are windows at or after ``limit``
    (:func:`window_limit`). No data: nothing to write.
    """
    starts = sorted(set(s for s in window_starts_with_data
                        if (marker_end is None or s >= marker_end) and (limit is None or s < limit)))
    if not starts:
        return []
    first = starts[0] if marker_end is None else marker_end
    if any((s - first) % period for s in starts):
        raise ValueError("window starts are not on the grid of %s" % format_time(first))
    return list(range(first, starts[-1] + 1, period))


def advance_marker(plan: Iterable[int], written: Collection[int], marker_end: int | None,
                   period: int) -> int | None:
    """The new marker end: the end of the last planned window that, with every window before it,
    was written (``written``: a set of window starts). ``marker_end`` when nothing advanced."""
    end = marker_end
    for start in plan:
        if start not in written:
            break
        end = start + period
    return end


# -- names and the state marker ----------------------------------------------------------------

def file_name(prefix: str | None, account: str, export_type: str, work_id: str, start_us: int,
              end_us: int, fmt: str) -> str:
    """``<prefix><account>_<export_type>_<work id>_<start_unix>_<end_unix>.<fmt>``."""
    return "%s%s_%s_%s_%d_%d.%s" % (prefix or "", account, export_type, work_id,
                                    to_unix_seconds(start_us), to_unix_seconds(end_us), fmt)


def marker_name(prefix: str | None, work_id: str) -> str:
    return "%s_state/%s.json" % (prefix or "", work_id)


def verify_name(prefix: str | None, work_id: str, unix_seconds: int) -> str:
    return "%s_verify/%s_%d.txt" % (prefix or "", work_id, unix_seconds)


def marker_bytes(work_id: str, end_us: int, updated_at_us: int) -> bytes:
    """The state marker: where the next run starts (the end of the last window written)."""
    body = {"work_id": work_id, "last_window_end": format_time(end_us),
            "last_window_end_unix": to_unix_seconds(end_us), "updated_at": format_time(updated_at_us)}
    return (json.dumps(body, indent=2) + "\n").encode("utf-8")


def parse_marker(data: bytes | str) -> int:
    """The marker's window end in microseconds; ValueError when it is not a marker."""
    try:
        body = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        if "last_window_end" in body:
            return parse_time(body["last_window_end"])
        unix = body["last_window_end_unix"]
        if not isinstance(unix, int) or isinstance(unix, bool):
            raise ValueError("last_window_end_unix is not an integer")
        return unix * MICROS
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError("not a state marker: %s" % exc) from None


# -- rows --------------------------------------------------------------------------------------

def event_columns(event_parameters: Iterable[str] = (), attributes: Iterable[str] = (),
                  computed: Iterable[str] = ()) -> list[str]:
    return (list(EVENT_COLUMNS) + ["properties." + p for p in event_parameters]
            + ["traits." + a for a in attributes] + ["computed." + c for c in computed])


def columns_for(settings: BlobSettings) -> list[str]:
    if settings.export_type == "system_events":
        return list(SYSTEM_EVENT_COLUMNS)
    return event_columns(settings.event_parameters, settings.attributes,
                         getattr(settings, "computed", None) or ())


def event_row(export_row: ExportRow, event_parameters: Iterable[str] = (),
              attributes: Iterable[str] = (), computed: Iterable[str] = ()) -> list[Any]:
    """The raw values of one ``events`` row from an :class:`core.engine.ExportRow`; the computed
    traits' values are in its attributes under ``core.computed.attribute_key``."""
    e = export_row.event
    values = [e.event_id, e.user_id, e.anonymous_id, e.event, format_time(e.ts),
              format_time(e.received_at)]
    # Names are plain keys (a dotted name is not a path), as for the engine's attributes.
    props = e.properties or {}
    values.extend(props.get(p) for p in event_parameters)
    attrs = export_row.attributes or {}
    values.extend(attrs.get(a) for a in attributes)
    values.extend(attrs.get(("computed", c)) for c in computed)
    return values


def system_event_row(event: SystemEvent) -> list[Any]:
    """The raw values of one ``system_events`` row from a :class:`core.records.SystemEvent`."""
    data = event.data
    return [event.id, format_time(event.ts), format_time(event.received_at), data.get("aid"),
            data.get("subject_type"), data.get("subject_id"), data.get("verb"), data.get("notes"),
            data]


def row_sort_key(received_at: int, record_id: str, values: Sequence[Any]) -> tuple[int, str, str]:
    """Rows are ordered by (received_at, event_id / id); the values break any remaining tie."""
    return (received_at, record_id, canonical_json(values))


def sort_rows(keyed_rows: Sequence[KeyedRow]) -> list[KeyedRow]:
    """``(received_at, id, values)`` rows in :func:`row_sort_key` order.

    Sorted by (received_at, id) alone when no two rows share both (the canonical JSON of the
    values is the costly part of the key, and only copies of one event need it).
    """
    keys = [(r[0], r[1]) for r in keyed_rows]
    if len(set(keys)) == len(keys):
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return [keyed_rows[i] for i in order]
    return sorted(keyed_rows, key=lambda r: row_sort_key(*r))


def dedupe_system_events(events: Iterable[SystemEvent]) -> list[SystemEvent]:
    """System events with copies of one ``id`` within 24 h of its run's first copy removed.

    The kept copy is the earliest by ``received_at`` (SEMANTICS: Input); the result is ordered.
    """
    by_id = {}
    for e in events:
        by_id.setdefault(e.id, []).append(e)
    kept = []
    for copies in by_id.values():
        copies.sort(key=lambda e: (e.received_at, canonical_json(e.record)))
        kept.extend(copies[i] for i in dedupe_first_copies([e.received_at for e in copies]))
    kept.sort(key=lambda e: (e.received_at, e.id))
    return kept


# -- cells and encoders ------------------------------------------------------------------------

def guard_formula(text: str) -> str:
    """A leading ``'`` on a string a spreadsheet would run as a formula."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def format_cell(value: Any) -> str:
    """The CSV text of one value (SEMANTICS: Blob export)."""
    if type(value) is str:  # the common case first; str subclasses take the general path
        return "'" + value if value.startswith(FORMULA_PREFIXES) else value
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return guard_formula(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return guard_formula(str(value))


class _LineEnds:
    """A file for csv.writer that turns each record's ``\r\n`` end into ``\n``.

    The writer is given ``lineterminator="\r\n"`` so that minimal quoting quotes a cell holding a
    CR as well as one holding a LF (with ``"\n"`` alone, Python before 3.13 leaves a bare CR
    unquoted, which readers then take for a line end). csv.writer writes one record per call.
    """

    def __init__(self):
        self.parts = []

    def write(self, record):
        self.parts.append(record[:-2] + "\n")


def encode_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """The CSV bytes of a header and ``rows`` (lists of raw values), encoded in one call.

    The rows go to one ``csv.writer.writerows`` call with ``\\n`` line ends when no cell holds a
    CR: then minimal quoting is the same as with ``\\r\\n`` ends (a cell holding a LF is quoted
    either way), so the bytes are those of :class:`_LineEnds`, which only a file with a CR in a
    cell needs.
    """
    fmt = format_cell
    cells = [[fmt(v) for v in values] for values in rows]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([columns] + cells if cells else [columns])
    text = out.getvalue()
    if "\r" in text:
        ends = _LineEnds()
        writer = csv.writer(ends, lineterminator="\r\n")
        writer.writerow(columns)
        writer.writerows(cells)
        text = "".join(ends.parts)
    return text.encode("utf-8")


def _parquet_array(pa, values):
    present = [v for v in values if v is not None]
    if present and all(v is True or v is False for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        if all(_INT64_MIN <= v <= _INT64_MAX for v in present):
            return pa.array(values, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else format_cell(v) for v in values], pa.string())


def encode_parquet(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    by_column = list(zip(*rows)) if rows else [()] * len(columns)
    arrays = [_parquet_array(pa, list(values)) for values in by_column]
    table = pa.Table.from_arrays(arrays, names=list(columns))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue()


def encode_file(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> bytes:
    """The bytes of one file: ``rows`` are lists of raw values, already in file order."""
    if fmt == "csv":
        return encode_csv(columns, rows)
    if fmt == "csv.gz":
        return gzip.compress(encode_csv(columns, rows), compresslevel=6, mtime=0)
    if fmt == "parquet":
        return encode_parquet(columns, rows)
    raise ValueError("unknown format %r; one of csv, csv.gz, parquet" % (fmt,))


# -- one work's export -------------------------------------------------------------------------

class ExportSpec:
    """What one Blob export work needs to turn records into files (no secrets: safe to pickle).

    ``marker_end``: the end of the last window already written (None: no marker yet).
    """

    def __init__(self, settings: BlobSettings, account_name: str, work_id: str,
                 marker_end: int | None = None) -> None:
        self.account_name = account_name
        self.work_id = work_id
        self.export_type = settings.export_type
        self.format = settings.format
        self.prefix = settings.prefix or ""
        self.events = settings.events
        self.start = settings.start
        self.event_parameters = list(settings.event_parameters)
        self.attributes = list(settings.attributes)
        self.computed = list(getattr(settings, "computed", None) or ())
        self.columns = columns_for(settings)
        self.period = period_micros(settings.period_hours)
        self.marker_end = marker_end
        self.anchor = resolve_anchor(marker_end, settings.anchor, settings.start)
        #: the most windows one run plans (None: any number, ``allow_more_windows: true``)
        self.max_windows = (None if getattr(settings, "allow_more_windows", False)
                            else getattr(settings, "max_windows_per_run", DEFAULT_MAX_WINDOWS))

    def received_at(self, record: ExportRecord) -> int:
        return record.event.received_at if self.export_type == "events" else record.received_at

    def accepts(self, record: ExportRecord) -> bool:
        """Whether the work exports this record: its event filter and ``start``."""
        if self.export_type == "events" and self.events and record.event.event not in self.events:
            return False
        return self.start is None or self.received_at(record) >= self.start

    def before_marker(self, received_at: int) -> bool:
        """Whether a record belongs to a window written by an earlier run (it is skipped)."""
        return self.marker_end is not None and received_at < self.marker_end

    def window_of(self, received_at: int) -> int:
        return window_start(received_at, self.anchor, self.period)

    def limit(self, first_with_data: int | None) -> int | None:
        """The first window start past this run's plan (:func:`window_limit`), or None."""
        return window_limit(first_with_data, self.marker_end, self.period, self.max_windows)

    def beyond_limit_reason(self, start: int, limit: int) -> str:
        first = limit - self.max_windows * self.period
        return beyond_limit_reason(start, first, limit, self.period)

    def keyed_row(self, record: ExportRecord) -> KeyedRow:
        """``(received_at, id, values)`` of one record: what :meth:`encode` sorts and writes."""
        if self.export_type == "events":
            e = record.event
            return (e.received_at, e.event_id,
                    event_row(record, self.event_parameters, self.attributes, self.computed))
        return record.received_at, record.id, system_event_row(record)

    def file_name(self, start: int) -> str:
        return file_name(self.prefix, self.account_name, self.export_type, self.work_id, start,
                         start + self.period, self.format)

    def encode(self, keyed_rows: Sequence[KeyedRow]) -> bytes:
        return encode_file(self.columns, [r[2] for r in sort_rows(keyed_rows)], self.format)


def render_files(records: Iterable[ExportRecord], settings: BlobSettings, account_name: str,
                 work_id: str, marker_end: int | None = None) -> dict[str, bytes]:
    """Every file one run writes, ``{name: bytes}``, computed in one process.

    ``records``: ExportRow (``events``) or SystemEvent (``system_events``, deduplicated here), as
    the Beam transform receives them. The reference the pipeline's files are checked against.
    """
    spec = ExportSpec(settings, account_name, work_id, marker_end)
    if spec.export_type == "system_events":
        records = dedupe_system_events(records)
    by_window = {}
    for record in records:
        if not spec.accepts(record):
            continue
        received_at = spec.received_at(record)
        if spec.before_marker(received_at):
            continue
        by_window.setdefault(spec.window_of(received_at), []).append(spec.keyed_row(record))
    limit = spec.limit(min(by_window) if by_window else None)
    return {spec.file_name(start): spec.encode(by_window.get(start, ()))
            for start in plan_windows(by_window, marker_end, spec.period, limit)}
