"""Azure Blob Storage event export (``azure_blob_event_export``, CONTRACT 5.2).

This module writes a work's records as one file per fixed ingestion-time window to an Azure Blob
Storage container, or, without a connection string, to a local directory with the same names and
the same bytes. It is the Beam shell around :mod:`core.export`, which computes every name, row and
byte, and of :mod:`clients.blob` (the Azure destination) and :mod:`clients.markers` (the state
marker, the credential check); its steps are in :mod:`transforms.blob_steps`. The local
destination (:class:`LocalDestination`) is here: it writes through Beam's ``FileSystems``.

Configuring a work
------------------
In the job config (CONTRACT 3)::

  - id: w-blob
    workflow: azure_blob_event_export
    config:
      connection_string: ${AZURE_STORAGE_CONNECTION_STRING}  # absent or empty: local directory
      container: exports            # created when missing
      prefix: acme/events/          # optional; put a trailing "/" to get a folder
      export_type: events           # events | system_events
      period_hours: 1               # 1, 2, 4, 6, 12 or 24
      events: [purchase]            # absent or []: every event
      event_parameters: [price]     # properties.<name> columns
      attributes: [email]           # traits.<name> columns, the user's value as of the event
      format: csv                   # csv | csv.gz | parquet
      anchor: "2026-11-01T00:30:00Z"   # optional: where the window grid starts
      start: "2026-11-01T00:00:00Z"    # optional: records received before it are not exported
      max_windows_per_run: 10000    # the most windows one run writes (see "Window limit")
      allow_more_windows: false     # true: no limit

Using the transform
-------------------
The launcher checks the credentials and reads the state marker before it builds the pipeline, then
applies one :class:`WriteToBlobExport` per work::

  from cdp_activation.clients.blob import BlobExportError
  from cdp_activation.clients.markers import read_marker, verify_credentials
  from cdp_activation.transforms.blob import WriteToBlobExport, make_destination

  destination = make_destination(work.settings, output_dir)
  try:
      verify_credentials(destination, work.id)      # raises BlobExportError, one line
      marker_end, reason = read_marker(destination, work.id), None
  except BlobExportError as exc:
      marker_end, reason = None, str(exc)
  finally:
      destination.close()
  work_events = export_rows | WriteToBlobExport(
      work, config.account_name, config.aid, output_dir, marker_end=marker_end,
      disabled_reason=reason)

The input is a PCollection of :class:`core.engine.ExportRow` for ``export_type: events`` (already
deduplicated by the engine; filtered here by ``events``) or of :class:`core.records.SystemEvent`
for ``system_events`` (deduplicated here by ``id`` with the 24 h rule). The output is a PCollection
of the work's own :class:`core.records.SystemEvent` (CONTRACT 5.4): ``synced`` per file written
(its ``unit`` and ``notes`` name the file), ``synccomplete`` when the state marker moved, and
``failed`` with the reason (never a secret).

Files
-----
``<prefix><account>_<export_type>_<work id>_<start_unix>_<end_unix>.<csv|csv.gz|parquet>`` covers
records with ``received_at`` in ``[start, end)``. Windows are anchored at the state marker's end,
else the config ``anchor``, else ``start``, else the Unix epoch. A run writes every window from the
marker's end (no marker: the first window with data) to the last window with data; a window
without data gets a header-only file. Columns, cell formatting, the spreadsheet-formula guard and
the Parquet column types are described in :mod:`core.export`.

Each file is uploaded under its final name with ``overwrite=True`` (Azure commits a blob
atomically), so a retried bundle rewrites the same name with the same bytes and never creates a
second one. The local sink ``<output_dir>/blob/<container>/`` (``--output_dir`` a local path or
any Beam file system URI, ``azfs://`` included) is written through Beam's ``FileSystems`` under a
temporary name and then renamed.

Window limit
------------
A run plans at most ``max_windows_per_run`` windows from its first (the marker's end, else the
first window with data; :func:`core.export.window_limit`), unless ``allow_more_windows: true``.
The rows of windows past the limit (a record dated 9999 on an hourly export) are not written: they
go to ``<output_dir>/deadletter/<work id>.jsonl`` with the reason, count as ``deadlettered``, and
one ``failed`` event names the first of them. A first window more than 30 days before the next
window with data is logged as a warning with the ``start`` to set
(:func:`core.export.leading_gap_warning`).

State marker and catch-up
-------------------------
After every file of the run has been committed, the work writes ``<prefix>_state/<work id>.json``
(``work_id``, ``last_window_end``, ``last_window_end_unix``, ``updated_at``): the end of the last
window such that it and every window before it were written. Records received before that end
are skipped by later runs (metric ``skipped_before_marker``). A file that cannot be written is not
written: the work emits ``failed``, goes on with the other windows, and the marker stops before
the first failed window, so the next run writes each missed window again as its own catch-up file
(windows after the failed one are rewritten with the same bytes). ``paused: true`` writes nothing
and leaves the marker alone; resumed, the work catches up from the marker. When the launcher's
credential check failed (``disabled_reason``), the work writes nothing and emits one ``failed``.

Credentials and secrets
-----------------------
:func:`clients.markers.verify_credentials` writes ``<prefix>_verify/<work id>_<unix>.txt`` and deletes it; a blob it
may not delete is left in place and logged. Rejected credentials (HTTP 401/403, a key that is not
base64) and an unreachable account raise :class:`clients.blob.BlobExportError` whose message is one line without
the connection string, key or SAS. The client (:mod:`clients.blob`) uses short timeouts and the
retry policy of :mod:`clients.retry`, so a dead endpoint fails in seconds. The connection string
never appears in logs, errors or display data.

Metrics
-------
Counters in the namespace ``work:<work id>``: ``files_delivered``, ``rows_delivered``,
``skipped_before_marker`` and ``failures``.

Unbounded input
---------------
On a bounded input the files are grouped in the global window and written at the end of the data.
On an unbounded input (a live source; chosen when the input PCollection is unbounded) the work's
rows are buffered in Beam state under one key per (work, window), and each window is written once
it is *closed*: when the watermark passes its end plus ``grace_seconds`` (default
:data:`DEFAULT_GRACE_SECONDS`). The watermark is in event time (``ts``); the audience engine emits
an event's row once the watermark passes its ``ts``, and ``ts <= received_at`` unless a client
clock runs ahead, which the grace covers. A window's close reads and writes that window's rows
only. A second stateful step, one key per work holding only which windows were written, then
does what a bounded run does between files: it writes the empty windows from the marker (none
yet: the first closed window with data) to the last closed window with data as header-only
files and moves the marker over the windows written without a gap. So the names and bytes are
those a bounded run over the same records writes; header-only files for empty windows between
windows with data appear when the next window with data closes, and a job started from an
existing marker writes the missed windows from the marker on as catch-up files.

A row that arrives after its window's file was written (each window keeps a small ``written``
mark for the life of the job) is not added to any file: it goes to
``<output_dir>/deadletter/<work id>.jsonl`` (in parts, see :mod:`transforms.localsink`) as
``{"raw": <the row by column>, "error": "late: ...", "source": <work id>}`` and counts as
``deadlettered``. A file that cannot be written keeps its rows in state and is tried again
``max(grace, 60 s)`` of event time later; the marker stays before it until it is written, while
later windows are written when they close.
``export_type: system_events`` is deduplicated with the streaming rule of
:class:`transforms.live.DedupeSystemEventsLive`.
"""

import json
import typing
from typing import Any, Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.typehints.decorators import no_annotations

from cdp_activation.clients.blob import AzureDestination, BlobExportError, Destination
from cdp_activation.clients.markers import read_marker, read_marker_end, verify_credentials
from cdp_activation.core.config import Work
from cdp_activation.core.export import ExportSpec, dedupe_system_events
from cdp_activation.core.records import SystemEvent
from cdp_activation.core.redact import reveal
from cdp_activation.core.system_events import work_event
from cdp_activation.core.timeutil import MICROS, parse_time
from cdp_activation.core.workflows import BlobSettings
from cdp_activation.transforms.blob_steps import (DEFAULT_GRACE_SECONDS, AdvanceMarker, FinishRun,
                                   FirstWindow, KeyByWindow, SelectRowBatches, SelectRows,
                                   WriteClosedWindow, WriteWindowFiles)
from cdp_activation.transforms.live import BatchPerBundle, DedupeSystemEventsLive, Values, is_unbounded
from cdp_activation.transforms import outputs
from cdp_activation.transforms.localsink import DEFAULT_FLUSH_SECONDS, WriteJsonLinesFile

#: The composite, the destinations, and the client functions the launcher (``pipelines.workflows``)
#: reaches through this module.
__all__ = ["WriteToBlobExport", "DEFAULT_GRACE_SECONDS", "BlobExportError", "LocalDestination",
           "DestinationRecipe", "destination_for", "make_destination", "read_marker",
           "read_marker_end", "verify_credentials"]


# -- the local destination, and which destination a work has ----------------------------------

class LocalDestination(Destination):
    """``<output_dir>/blob/<container>/<blob name>``: the local sink of a work without a connection
    string. ``output_dir`` is a local path or a Beam file system URI (``azfs://...``); files are
    written through Beam's ``FileSystems`` and appear complete or not at all (temporary name, then
    rename; see :mod:`transforms.outputs`)."""

    def __init__(self, output_dir: str, container: str, prefix: str = "") -> None:
        self.root = outputs.join(output_dir, "blob", container)
        self.prefix = prefix or ""
        self.description = "output directory %s" % self.root

    def _path(self, name):
        return outputs.join(self.root, *name.split("/"))

    def put(self, name: str, data: bytes, content_type: Optional[str] = None) -> None:
        path = self._path(name)
        try:
            outputs.write_file(path, (data,), mime_type=content_type or "application/octet-stream")
        except (OSError, BeamIOError) as exc:
            raise BlobExportError("cannot write %s: %s" % (path, _io_reason(exc))) from None

    def get(self, name: str) -> Optional[bytes]:
        try:
            return outputs.read_file(self._path(name))
        except (OSError, BeamIOError) as exc:
            raise BlobExportError("cannot read %s: %s" % (self._path(name), _io_reason(exc))) \
                from None

    def delete(self, name: str) -> None:
        try:
            outputs.delete_file(self._path(name))
        except (OSError, BeamIOError) as exc:
            raise BlobExportError("cannot delete %s: %s" % (self._path(name), _io_reason(exc))) \
                from None

    def list_names(self, starts_with: str = "") -> List[str]:
        try:
            paths = outputs.list_files(self.root)
        except (OSError, BeamIOError) as exc:
            raise BlobExportError("cannot list %s: %s" % (self.root, _io_reason(exc))) from None
        names = (outputs.relative(path, self.root) for path in paths)
        return sorted(n for n in names if n.startswith(starts_with))


def _io_reason(exc):
    """A short reason for a file system error (one line)."""
    details = getattr(exc, "exception_details", None)
    if details:
        exc = next(iter(details.values()))
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]


def make_destination(settings: BlobSettings, output_dir: str = "out") -> Destination:
    """The destination of a work's :class:`core.workflows.BlobSettings`: Azure with a connection
    string, else the local directory ``<output_dir>/blob/<container>/``."""
    return DestinationRecipe(settings, output_dir).open()


class DestinationRecipe:
    """What a worker needs to open the destination; its repr never shows the connection string.

    A connection string given as a ``${VAR}`` reference (``core.config.EnvRef``, from
    ``Work.worker_settings``) travels as that reference and is resolved by :meth:`open`, on the
    worker (in the DoFns' ``setup()``).
    """

    def __init__(self, settings: BlobSettings, output_dir: str) -> None:
        self._connection_string = settings.connection_string
        self.container = settings.container
        self.prefix = settings.prefix or ""
        self.output_dir = output_dir

    @property
    def kind(self) -> str:
        return "azure" if self._connection_string else "local"

    def open(self) -> Destination:
        if self._connection_string:
            return AzureDestination(reveal(self._connection_string), self.container, self.prefix)
        return LocalDestination(self.output_dir, self.container, self.prefix)

    def __repr__(self):
        return "DestinationRecipe(%s, container=%r)" % (self.kind, self.container)


def destination_for(work: Work, output_dir: str = "out") -> Destination:
    """:func:`make_destination` of a :class:`core.config.Work` (as ``pipelines.workflows`` calls it)."""
    return make_destination(work.settings, output_dir)


# -- the transform -----------------------------------------------------------------------------

def _disabled_event(unused, aid, work_id, reason):
    Metrics.counter("work:" + work_id, "failures").inc()
    return work_event(aid, work_id, "failed", notes="export disabled: %s" % reason, unit="disabled")


def _same(element):
    return element


def _dead_letter_order(record):
    """Dead rows in (received_at, id) order: both are the work's columns of that name."""
    raw = record["raw"]
    return (parse_time(raw["received_at"]), str(raw.get("event_id", raw.get("id")) or ""),
            json.dumps(raw, sort_keys=True))


def _key_by_id(event):
    return event.id, event


def _dedupe_copies(item):
    return dedupe_system_events(item[1])


class WriteToBlobExport(beam.PTransform):
    """Writes one ``azure_blob_event_export`` work's files; returns the work's system events.

    ``work``: a :class:`core.config.Work` of that workflow. ``account_name``/``aid``: the job's
    account. ``output_dir``: the local sink's root when the work has no connection string (a local
    path or a Beam file system URI), and where late rows of a live run are dead-lettered.
    ``marker_end``: the end of the last written window as :func:`read_marker` returned it; None
    reads the marker here, while the pipeline is built (a marker that cannot be read disables the
    work for this run). ``disabled_reason``: the launcher's credential check failed with this
    (secret-free) reason: nothing is written and one ``failed`` event is emitted.

    On an unbounded input (a live source) windows are written as they close: ``grace_seconds``
    after their end, in event time (see "Unbounded input" in the module docstring);
    ``flush_seconds`` is the flush period of the late-row dead-letter parts.

    ``batched``: each input element is a list of records rather than one record (the engine's
    export output is one list per user and bundle), so rows never travel one Beam element each.
    """

    def __init__(self, work: Work, account_name: str, aid: Optional[int], output_dir: str,
                 marker_end: Optional[int] = None, disabled_reason: Optional[str] = None,
                 label: Optional[str] = None, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS, batched: bool = False) -> None:
        super().__init__(label)
        self._work = work
        self._batched = batched
        self._account_name = account_name
        self._aid = aid
        self._marker_end = marker_end
        self._disabled_reason = disabled_reason
        self._recipe = DestinationRecipe(work.worker_settings or work.settings, output_dir)
        self._output_dir = output_dir
        self._grace_seconds = float(grace_seconds)
        self._flush_seconds = flush_seconds
        if not self._grace_seconds >= 0:
            raise ValueError("grace_seconds must not be negative")

    def display_data(self) -> Dict[str, Any]:
        s = self._work.settings
        return {"work_id": self._work.id,
                "destination": DisplayDataItem(self._recipe.kind, label="Destination"),
                "container": s.container, "prefix": s.prefix or "",
                "export_type": s.export_type, "format": s.format,
                "period_hours": s.period_hours, "paused": self._work.paused}

    def _marker(self):
        """(marker end, disabled reason) for this run."""
        if self._disabled_reason is not None or self._marker_end is not None:
            return self._marker_end, self._disabled_reason
        destination = None
        try:
            destination = self._recipe.open()
            return read_marker(destination, self._work.id), None
        except BlobExportError as exc:
            return None, "state marker unreadable: %s" % exc
        finally:
            if destination is not None:
                destination.close()

    @no_annotations
    def expand(self, records: beam.PCollection[Any]) -> beam.PCollection[SystemEvent]:
        p = records.pipeline
        work = self._work
        if work.paused:
            return p | "Paused" >> Values([])
        marker_end, reason = self._marker()
        if reason is not None:
            return (p | "Disabled" >> Values([None])
                    | "DisabledEvent" >> beam.Map(_disabled_event, self._aid, work.id, reason))
        spec = ExportSpec(work.settings, self._account_name, work.id, marker_end)
        batched = self._batched
        if batched and spec.export_type == "system_events":
            # System events are deduplicated by id, one element each; they are few.
            records = records | "Unbatch" >> beam.FlatMap(_same)
            batched = False
        if not records.windowing.is_default():
            # A step per record: only when the input is not in the global window already.
            records = records | "GlobalWindow" >> beam.WindowInto(beam_window.GlobalWindows())
        if is_unbounded(records):
            return self._expand_unbounded(records, spec, batched)
        if spec.export_type == "system_events":
            records = (records
                       | "KeyById" >> beam.Map(_key_by_id)
                       | "GroupCopies" >> beam.GroupByKey()
                       | "DedupeCopies" >> beam.FlatMap(_dedupe_copies))
        windows = (records
                   | "SelectRows" >> beam.ParDo(SelectRowBatches(spec, batched))
                   | "GroupByWindow" >> beam.GroupByKey())
        first_with_data = (windows
                           | "WindowStarts" >> beam.Keys()
                           | "FirstWindow" >> beam.CombineGlobally(FirstWindow()))
        written = (windows
                   | "WriteFiles" >> beam.ParDo(WriteWindowFiles(spec, self._recipe, self._aid),
                                                beam.pvalue.AsList(first_with_data))
                   .with_outputs(WriteWindowFiles.RESULTS, WriteWindowFiles.DEADLETTER,
                                 main="events"))
        _ = written[WriteWindowFiles.DEADLETTER] | "WriteDeadLetters" >> WriteJsonLinesFile(
            outputs.join(self._output_dir, "deadletter", work.id + ".jsonl"),
            sort_key=_dead_letter_order, write_empty=False)
        finished = (p
                    | "Once" >> Values([None])
                    | "FinishRun" >> beam.ParDo(
                        FinishRun(spec, self._recipe, self._aid),
                        beam.pvalue.AsList(written[WriteWindowFiles.RESULTS])))
        return (written.events, finished) | "WorkEvents" >> beam.Flatten()

    def _expand_unbounded(self, records, spec, batched):
        """Windows written as they close, each by its own state key (see
        :class:`WriteClosedWindow`), the marker moved per work (:class:`AdvanceMarker`); late
        rows to ``<output_dir>/deadletter/<work id>.jsonl`` (written in parts)."""
        if spec.export_type == "system_events":
            records = records | "DedupeCopies" >> DedupeSystemEventsLive()
        grace_us = int(self._grace_seconds * MICROS)
        windows = (records
                   | "SelectRows" >> beam.ParDo(SelectRows(spec, batched))
                   | "BatchPerWindow" >> BatchPerBundle(
                       KeyByWindow(spec.work_id), key_type=typing.Tuple[str, int])
                   | "WriteClosedWindows" >> beam.ParDo(WriteClosedWindow(
                       spec, self._recipe, self._aid, grace_us))
                   .with_outputs(WriteClosedWindow.LATE, WriteClosedWindow.RESULTS,
                                 main="events"))
        marker = (windows[WriteClosedWindow.RESULTS]
                  | "TypedResults" >> beam.Map(_same).with_output_types(
                      typing.Tuple[str, typing.Tuple[int, bool]])
                  | "AdvanceMarker" >> beam.ParDo(AdvanceMarker(
                      spec, self._recipe, self._aid, grace_us)))
        _ = windows[WriteClosedWindow.LATE] | "WriteLateRows" >> WriteJsonLinesFile(
            outputs.join(self._output_dir, "deadletter", self._work.id + ".jsonl"),
            flush_seconds=self._flush_seconds)
        return (windows.events, marker) | "WorkEvents" >> beam.Flatten()
