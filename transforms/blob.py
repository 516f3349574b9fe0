"""Azure Blob Storage event export (``azure_blob_event_export``, CONTRACT 5.2).

This module writes a work's records as one file per fixed ingestion-time window to an Azure Blob
Storage container, or, without a connection string, to a local directory with the same names and
the same bytes. It is the Beam shell around :mod:`core.export`, which computes every name, row and
byte; this module moves them.

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

  from transforms import blob

  destination = blob.make_destination(work.settings, output_dir)
  try:
      blob.verify_credentials(destination, work.id)      # raises BlobExportError, one line
      marker_end, reason = blob.read_marker(destination, work.id), None
  except blob.BlobExportError as exc:
      marker_end, reason = None, str(exc)
  finally:
      destination.close()
  work_events = export_rows | blob.WriteToBlobExport(
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
:func:`verify_credentials` writes ``<prefix>_verify/<work id>_<unix>.txt`` and deletes it; a blob it
may not delete is left in place and logged. Rejected credentials (HTTP 401/403, a key that is not
base64) and an unreachable account raise :class:`BlobExportError` whose message is one line without
the connection string, key or SAS. The client uses short timeouts and few retries so a dead
endpoint fails in seconds. The connection string never appears in logs, errors or display data.

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
import logging
import re
import time
import typing

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystem import BeamIOError
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                               on_timer)
from apache_beam.utils.windowed_value import WindowedValue

from core.export import (CONTENT_TYPES, ExportSpec, advance_marker, dedupe_system_events,
                         leading_gap_warning, marker_bytes, marker_name, parse_marker,
                         plan_windows, row_sort_key, verify_name, window_limit)
from core.records import dead_letter
from core.redact import Redactor, reveal, secret_parts
from core.system_events import work_event
from core.timeutil import MICROS, format_time, parse_time
from transforms.live import (BatchPerBundle, DedupeSystemEventsLive, Values, is_unbounded,
                            timer_at)
from transforms import outputs
from transforms.localsink import DEFAULT_FLUSH_SECONDS, WriteJsonLinesFile

_LOG = logging.getLogger(__name__)
#: Warnings for the user about the data (not the machinery): its own level, so they show on a
#: local run, whose launcher quiets the root logger to ERROR unless --verbose.
_USER_WARNINGS = logging.getLogger(__name__ + ".data")
_USER_WARNINGS.setLevel(logging.WARNING)

#: Client settings: throttling and server errors are retried with exponential backoff (about 3,
#: 5 and 9 s); a connection that cannot be made is retried once after CONNECT_BACKOFF_S, so a dead
#: endpoint fails in well under a second and a run with it goes on to its other windows.
CONNECTION_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
RETRY_TOTAL = 3
RETRY_CONNECT = 1
INITIAL_BACKOFF_S = 1.0
CONNECT_BACKOFF_S = 0.2
#: Unbounded input: how long (event time) after a window's end its file is written, for records
#: whose ``ts`` lies after their ``received_at`` (client clocks ahead of the ingestion clock).
DEFAULT_GRACE_SECONDS = 300.0


class BlobExportError(Exception):
    """A destination failure; ``str()`` is one line without secrets.

    ``kind``: ``credentials`` (rejected), ``unreachable`` or ``error``.
    """

    def __init__(self, message, kind="error"):
        super().__init__(" ".join(str(message).split()))
        self.kind = kind


# -- destinations ------------------------------------------------------------------------------

class Destination:
    """Where a work's blobs go. Names are blob names (``/`` separated, prefix included)."""

    prefix = ""
    description = ""

    def put(self, name, data, content_type=None):
        """Writes ``data`` under ``name``, replacing any blob of that name. BlobExportError."""
        raise NotImplementedError

    def get(self, name):
        """The blob's bytes, or None when it does not exist. BlobExportError."""
        raise NotImplementedError

    def delete(self, name):
        """Deletes a blob (absent is fine). BlobExportError."""
        raise NotImplementedError

    def list_names(self, starts_with=""):
        """Sorted names of the blobs whose name starts with ``starts_with``."""
        raise NotImplementedError

    def close(self):
        pass


class LocalDestination(Destination):
    """``<output_dir>/blob/<container>/<blob name>``: the local sink of a work without a connection
    string. ``output_dir`` is a local path or a Beam file system URI (``azfs://...``); files are
    written through Beam's ``FileSystems`` and appear complete or not at all (temporary name, then
    rename; see :mod:`transforms.outputs`)."""

    def __init__(self, output_dir, container, prefix=""):
        self.root = outputs.join(output_dir, "blob", container)
        self.prefix = prefix or ""
        self.description = "output directory %s" % self.root

    def _path(self, name):
        return outputs.join(self.root, *name.split("/"))

    def put(self, name, data, content_type=None):
        path = self._path(name)
        try:
            outputs.write_file(path, (data,), mime_type=content_type or "application/octet-stream")
        except (OSError, BeamIOError) as exc:
            raise BlobExportError("cannot write %s: %s" % (path, _io_reason(exc))) from None

    def get(self, name):
        try:
            return outputs.read_file(self._path(name))
        except (OSError, BeamIOError) as exc:
            raise BlobExportError("cannot read %s: %s" % (self._path(name), _io_reason(exc))) \
                from None

    def delete(self, name):
        try:
            outputs.delete_file(self._path(name))
        except (OSError, BeamIOError) as exc:
            raise BlobExportError("cannot delete %s: %s" % (self._path(name), _io_reason(exc))) \
                from None

    def list_names(self, starts_with=""):
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


def _describe(exc):
    """A short reason for an Azure SDK error, and its kind."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                       ServiceRequestError, ServiceResponseError)
    from azure.storage.blob._shared.authentication import AzureSigningError
    if isinstance(exc, AzureSigningError):
        return "the account key is not valid (requests cannot be signed)", "credentials"
    if isinstance(exc, HttpResponseError) and exc.status_code:
        code = getattr(exc.error_code, "value", exc.error_code) or exc.reason or ""
        kind = "credentials" if exc.status_code in (401, 403) else "error"
        return ("HTTP %s %s" % (exc.status_code, code)).strip(), kind
    if isinstance(exc, ClientAuthenticationError):
        return "authentication failed", "credentials"
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        m = re.search(r"\[Errno -?\d+\] ([^'\"\]\)]+)", str(exc))
        detail = m.group(1).strip() if m else type(exc).__name__
        return "connection failed: %s" % detail, "unreachable"
    return "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""), "error"


def _retry_policy(retry_total, retry_connect, initial_backoff, connect_backoff):
    from azure.core.exceptions import ServiceRequestError
    from azure.storage.blob import ExponentialRetry

    class _Retry(ExponentialRetry):
        """ExponentialRetry, but a failed connection waits ``connect_backoff`` only."""

        def increment(self, settings, request, response=None, error=None):
            settings["connect_failed"] = isinstance(error, ServiceRequestError)
            return super().increment(settings, request, response=response, error=error)

        def get_backoff_time(self, settings):
            if settings.get("connect_failed"):
                return connect_backoff
            return super().get_backoff_time(settings)

    return _Retry(initial_backoff=initial_backoff, increment_base=2, retry_total=retry_total,
                  retry_connect=retry_connect, random_jitter_range=min(0.5, initial_backoff))


class AzureDestination(Destination):
    """A container of an Azure Storage account (or Azurite), via azure-storage-blob.

    Short timeouts and few retries (see the module's constants): a dead endpoint fails in well
    under a second, not minutes. The container is created on the first write that finds it missing.
    """

    def __init__(self, connection_string, container, prefix="",
                 connection_timeout=CONNECTION_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                 retry_total=RETRY_TOTAL, retry_connect=RETRY_CONNECT,
                 initial_backoff=INITIAL_BACKOFF_S, connect_backoff=CONNECT_BACKOFF_S):
        from azure.storage.blob import BlobServiceClient
        self.prefix = prefix or ""
        self.container = container
        # The one scrubber (core.redact): the string, its key or SAS, and any sig=/key= text.
        self._scrub = Redactor(secret_parts(connection_string))
        retry = _retry_policy(retry_total, retry_connect, initial_backoff, connect_backoff)
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string, retry_policy=retry, connection_timeout=connection_timeout,
                read_timeout=read_timeout)
        except Exception as exc:  # a malformed string: ValueError; never echo the string
            raise BlobExportError(
                "the Azure Storage connection string is malformed (%s); expected "
                "DefaultEndpointsProtocol=...;AccountName=...;AccountKey=... or a SAS"
                % self._scrub(type(exc).__name__)) from None
        self._container = self._service.get_container_client(container)
        self.account_name = self._service.account_name
        self.description = "storage account %r container %r at %s://%s" % (
            self.account_name, container, self._service.scheme,
            self._service.primary_hostname)

    def _error(self, action, name, exc):
        reason, kind = _describe(exc)
        return BlobExportError(self._scrub("cannot %s %s in %s: %s"
                                           % (action, name, self.description, reason)), kind)

    def _upload(self, name, data, content_type):
        from azure.storage.blob import ContentSettings
        settings = ContentSettings(content_type=content_type) if content_type else None
        self._container.upload_blob(name, data, overwrite=True, content_settings=settings)

    def put(self, name, data, content_type=None):
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
        try:
            try:
                self._upload(name, data, content_type)
            except ResourceNotFoundError as exc:
                if exc.error_code != "ContainerNotFound":
                    raise
                try:
                    self._container.create_container()
                except ResourceExistsError:
                    pass
                self._upload(name, data, content_type)
        except Exception as exc:
            raise self._error("write", name, exc) from None

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError
        try:
            return self._container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise self._error("read", name, exc) from None

    def delete(self, name):
        from azure.core.exceptions import ResourceNotFoundError
        try:
            self._container.delete_blob(name)
        except ResourceNotFoundError:
            pass
        except Exception as exc:
            raise self._error("delete", name, exc) from None

    def list_names(self, starts_with=""):
        from azure.core.exceptions import ResourceNotFoundError
        try:
            return sorted(b.name for b in self._container.list_blobs(
                name_starts_with=starts_with or None))
        except ResourceNotFoundError:
            return []
        except Exception as exc:
            raise self._error("list", starts_with or "blobs", exc) from None

    def close(self):
        self._service.close()


def make_destination(settings, output_dir="out"):
    """The destination of a work's :class:`core.config.BlobSettings`: Azure with a connection
    string, else the local directory ``<output_dir>/blob/<container>/``."""
    return _DestinationRecipe(settings, output_dir).open()


class _DestinationRecipe:
    """What a worker needs to open the destination; its repr never shows the connection string.

    A connection string given as a ``${VAR}`` reference (``core.config.EnvRef``, from
    ``Work.worker_settings``) travels as that reference and is resolved by :meth:`open`, on the
    worker (in the DoFns' ``setup()``).
    """

    def __init__(self, settings, output_dir):
        self._connection_string = settings.connection_string
        self.container = settings.container
        self.prefix = settings.prefix or ""
        self.output_dir = output_dir

    @property
    def kind(self):
        return "azure" if self._connection_string else "local"

    def open(self):
        if self._connection_string:
            return AzureDestination(reveal(self._connection_string), self.container, self.prefix)
        return LocalDestination(self.output_dir, self.container, self.prefix)

    def __repr__(self):
        return "_DestinationRecipe(%s, container=%r)" % (self.kind, self.container)


# -- credential check and state marker ---------------------------------------------------------

def verify_credentials(destination, work_id, prefix=None):
    """Writes and deletes ``<prefix>_verify/<work id>_<unix>.txt``.

    ``prefix``: default the destination's. Raises :class:`BlobExportError` (one line, no secret)
    when the write fails: rejected credentials, an unreachable account or any other refusal. A blob
    that may be written but not deleted is left in place and logged.
    """
    prefix = destination.prefix if prefix is None else prefix
    name = verify_name(prefix, work_id, int(time.time()))
    try:
        destination.put(name, ("credential check of work %s\n" % work_id).encode("utf-8"),
                        content_type="text/plain")
    except BlobExportError as exc:
        what = {"credentials": "credentials rejected",
                "unreachable": "destination unreachable"}.get(exc.kind, "destination refused a write")
        raise BlobExportError("azure_blob_event_export work %r: %s: %s" % (work_id, what, exc),
                              exc.kind) from None
    try:
        destination.delete(name)
    except BlobExportError as exc:
        _LOG.warning("work %s: the credential check blob %s was left in place: %s",
                     work_id, name, exc)
        return
    _remove_stale_checks(destination, prefix, work_id)


def _remove_stale_checks(destination, prefix, work_id):
    """Deletes this work's check blobs left by earlier activations that stopped between the write
    and the delete (a crash, a pre-empted node), so the container ends as an uninterrupted run
    leaves it. Best effort: a credential that may not list or delete leaves them, logged."""
    pattern = re.compile(re.escape(verify_name(prefix, work_id, 0)[:-len("0.txt")]) + r"\d+\.txt\Z")
    try:
        stale = [n for n in destination.list_names(verify_name(prefix, work_id, 0)[:-len("0.txt")])
                 if pattern.match(n)]
        for stale_name in stale:
            destination.delete(stale_name)
            _LOG.info("work %s: removed %s, left by an interrupted credential check", work_id, stale_name)
    except BlobExportError as exc:
        _LOG.warning("work %s: could not remove earlier credential check blobs: %s", work_id, exc)


def read_marker(destination, work_id):
    """The end (microseconds) of the last window written, or None when there is no marker."""
    name = marker_name(destination.prefix, work_id)
    data = destination.get(name)
    if data is None:
        return None
    try:
        return parse_marker(data)
    except ValueError as exc:
        raise BlobExportError("work %r: state marker %s is unreadable: %s" % (work_id, name, exc)) \
            from None


def destination_for(work, output_dir="out"):
    """:func:`make_destination` of a :class:`core.config.Work` (as ``pipelines.common`` calls it)."""
    return make_destination(work.settings, output_dir)


def read_marker_end(destination, work):
    """:func:`read_marker` of a :class:`core.config.Work` (as ``pipelines.common`` calls it)."""
    return read_marker(destination, work.id)


def write_marker(destination, work_id, end_us, now_us=None):
    """Records ``end_us`` as the end of the last window written."""
    now_us = int(time.time() * MICROS) if now_us is None else now_us
    destination.put(marker_name(destination.prefix, work_id),
                    marker_bytes(work_id, end_us, now_us), content_type="application/json")


# -- the transform -----------------------------------------------------------------------------

class _SelectRows(beam.DoFn):
    """Record -> (window start, keyed row); drops what the work does not export.

    ``batched``: each element is a list of records (the engine's export output, one list per user
    and bundle) rather than one record.
    """

    def __init__(self, spec, batched=False):
        self._spec = spec
        self._batched = batched
        self._skipped = Metrics.counter("work:" + spec.work_id, "skipped_before_marker")

    def _selected(self, record):
        """``(window start, keyed row)`` of a record the work exports, else None (counted when it
        lies before the marker)."""
        spec = self._spec
        if not spec.accepts(record):
            return None
        received_at = spec.received_at(record)
        if spec.before_marker(received_at):
            self._skipped.inc()
            return None
        return spec.window_of(received_at), spec.keyed_row(record)

    def process(self, element):
        for record in element if self._batched else (element,):
            selected = self._selected(record)
            if selected is not None:
                yield selected


_GLOBAL = beam_window.GlobalWindow()


class _SelectRowBatches(_SelectRows):
    """Records -> ``(window start, [keyed row, ...])``: the bounded path's rows travel in lists,
    one element per window and bundle (or per :data:`MAX_BATCHED_ROWS` rows of a bundle, which
    bounds the memory a large bundle holds), so the group and write steps handle a few elements
    per window rather than one per row."""

    #: Rows held before the batches are emitted within a bundle.
    MAX_BATCHED_ROWS = 10_000

    def start_bundle(self):
        self._batches = {}
        self._held = 0

    def process(self, element):
        for record in element if self._batched else (element,):
            selected = self._selected(record)
            if selected is None:
                continue
            start, row = selected
            batch = self._batches.get(start)
            if batch is None:
                self._batches[start] = [row]
            else:
                batch.append(row)
            self._held += 1
            if self._held >= self.MAX_BATCHED_ROWS:
                yield from self._batches.items()
                self._batches = {}
                self._held = 0

    def finish_bundle(self):
        # The input is in the global window (WriteToBlobExport.expand puts it there), so the
        # batches are too; not asking for each record's window keeps process() on Beam's fast
        # call path.
        for start, rows in self._batches.items():
            yield WindowedValue((start, rows), _GLOBAL.max_timestamp(), [_GLOBAL])
        self._batches = {}
        self._held = 0


class _BlobDoFn(beam.DoFn):
    """Base of the steps that write: one client per DoFn instance, made in setup()."""

    def __init__(self, spec, recipe, aid):
        self._spec = spec
        self._recipe = recipe
        self._aid = aid
        namespace = "work:" + spec.work_id
        self._files = Metrics.counter(namespace, "files_delivered")
        self._rows = Metrics.counter(namespace, "rows_delivered")
        self._failures = Metrics.counter(namespace, "failures")
        self._deadlettered = Metrics.counter(namespace, "deadlettered")
        self._destination = None
        self._setup_error = None

    def setup(self):
        try:
            self._destination = self._recipe.open()
        except BlobExportError as exc:
            self._setup_error = exc

    def teardown(self):
        if self._destination is not None:
            self._destination.close()
            self._destination = None

    def _opened(self):
        """The destination, or the error that kept setup() from opening it."""
        if self._destination is None:
            raise self._setup_error
        return self._destination

    def _event(self, verb, notes, unit):
        return work_event(self._aid, self._spec.work_id, verb, notes=notes, unit=unit)

    def _fail(self, notes, unit):
        self._failures.inc()
        _LOG.warning("work %s: %s", self._spec.work_id, notes)
        return self._event("failed", notes, unit)

    def _deliver(self, start, keyed_rows):
        """Writes one window's file; (written, system event)."""
        name = self._spec.file_name(start)
        try:
            self._opened().put(name, self._spec.encode(keyed_rows),
                               content_type=CONTENT_TYPES[self._spec.format])
        except BlobExportError as exc:
            return False, self._fail("file %s not written: %s" % (name, exc), name)
        self._files.inc()
        self._rows.inc(len(keyed_rows))
        n = len(keyed_rows)
        return True, self._event("synced", "file %s written, %d row%s" % (
            name, n, "" if n == 1 else "s"), name)

    def _beyond_limit(self, start, limit, keyed_rows, tag):
        """Dead letters (to output ``tag``) of a window past the run's window limit."""
        spec = self._spec
        reason = spec.beyond_limit_reason(start, limit)
        self._deadlettered.inc(len(keyed_rows))
        for keyed_row in sorted(keyed_rows, key=lambda r: row_sort_key(*r)):
            yield beam.pvalue.TaggedOutput(
                tag, dead_letter(dict(zip(spec.columns, keyed_row[2])), reason, spec.work_id))

    def _limit_failed(self, beyond):
        """One ``failed`` event for the windows past the limit: ``beyond`` is ``[(start, first
        (received_at, id) of the window, rows)]``; it names the first record."""
        spec = self._spec
        start, (received_at, record_id), _ = min(beyond)
        rows = sum(n for _, _, n in beyond)
        notes = ("%d record%s in %d window%s from %s on not written: more than max_windows_per_run "
                 "(%d) windows in one run; the first is record %s (received_at %s); see "
                 "deadletter/%s.jsonl, and set allow_more_windows: true to write them"
                 % (rows, "" if rows == 1 else "s", len(beyond), "" if len(beyond) == 1 else "s",
                    format_time(start), spec.max_windows, record_id, format_time(received_at),
                    spec.work_id))
        return self._fail(notes, "window-limit@%s" % format_time(start))

    def _move_marker(self, end):
        """Records that every window up to ``end`` is written; ``synccomplete``, or ``failed``.

        A marker that cannot be written leaves the files in place: the next run (or, live, the
        next close) writes the same windows again under the same names and then the marker.
        """
        spec = self._spec
        unit = "%s@%s" % (marker_name(spec.prefix, spec.work_id), format_time(end))
        try:
            write_marker(self._opened(), spec.work_id, end)
        except BlobExportError as exc:
            yield self._fail("state marker not written: %s" % exc, unit)
            return
        yield self._event("synccomplete", "windows written up to %s" % format_time(end), unit)


class _WriteWindowFiles(_BlobDoFn):
    """(window start, [[keyed row, ...], ...]) -> the window's file, from the window's batches
    (:class:`_SelectRowBatches`); work events out, and ``(start, written, first (received_at,
    id), rows)`` to RESULTS (``written`` None: past the run's window limit, the rows went to
    DEADLETTER instead). ``first_with_data``: ``[the run's first window start]``."""

    RESULTS = "results"
    DEADLETTER = "deadletter"

    def process(self, element, first_with_data):
        start, batches = element
        keyed_rows = [row for batch in batches for row in batch]
        first = min((r[0], r[1]) for r in keyed_rows)
        # A list side input (its one value, or None): a runner that repeats a side input's
        # contents gives the same minimum, where a singleton would fail.
        limit = self._spec.limit(min((f for f in first_with_data if f is not None), default=None))
        if limit is not None and start >= limit:
            yield from self._beyond_limit(start, limit, keyed_rows, self.DEADLETTER)
            yield beam.pvalue.TaggedOutput(self.RESULTS, (start, None, first, len(keyed_rows)))
            return
        written, event = self._deliver(start, keyed_rows)
        yield event
        yield beam.pvalue.TaggedOutput(self.RESULTS, (start, written, first, len(keyed_rows)))


class _FinishRun(_BlobDoFn):
    """After every window file: header-only files for the plan's empty windows, then the marker;
    a ``failed`` event for windows past the window limit, a logged warning for a first window far
    before the rest (:func:`core.export.leading_gap_warning`)."""

    def process(self, unused_trigger, results):
        spec = self._spec
        with_data = {start for start, ok, _, _ in results if ok is not None}
        written = {start for start, ok, _, _ in results if ok}
        beyond = [(start, first, n) for start, ok, first, n in results if ok is None]
        firsts = {start: first for start, _, first, _ in results}
        if with_data:
            warning = leading_gap_warning(spec.work_id, with_data, spec.marker_end, spec.period,
                                          firsts[min(with_data)])
            if warning:
                _USER_WARNINGS.warning("%s", warning)
        limit = spec.limit(min(firsts) if firsts else None)
        plan = plan_windows(with_data, spec.marker_end, spec.period, limit)
        for start in plan:
            if start not in with_data:
                ok, event = self._deliver(start, [])
                if ok:
                    written.add(start)
                yield event
        if beyond:
            yield self._limit_failed(beyond)
        end = advance_marker(plan, written, spec.marker_end, spec.period)
        if end is None or end == spec.marker_end:
            return
        yield from self._move_marker(end)


class _FirstWindow(beam.CombineFn):
    """The smallest window start, or None when there is none."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, start):
        return start if accumulator is None or start < accumulator else accumulator

    def merge_accumulators(self, accumulators):
        present = [a for a in accumulators if a is not None]
        return min(present) if present else None

    def extract_output(self, accumulator):
        return accumulator


class _KeyByWindow:
    def __init__(self, work_id):
        self._work_id = work_id

    def __call__(self, item):
        return self._work_id, item[0]


class _WriteClosedWindow(_BlobDoFn):
    """The unbounded path, one state key per (work, window): buffers the window's rows and writes
    its file once the window is closed.

    Input: ``((work id, window start), [(window start, keyed row), ...])``, one element per window
    and bundle. A window ``[s, s + period)`` of ``received_at`` is closed when the watermark passes
    ``s + period + grace``: by then the engine has emitted every row of an event whose ``ts`` is
    before that time, and ``ts <= received_at`` but for clock skew of less than ``grace``. The
    close timer reads this window's rows only, writes its file, drops the rows and keeps one
    small ``written`` mark for the window; it reports ``(work id, (start, written))`` on
    ``RESULTS`` for :class:`_AdvanceMarker`, timestamped with the close time (the timer's time,
    which the runner holds the output watermark at until it fires).

    A row that arrives after its window's file was written is not added to any file: it goes to
    the ``LATE`` output with the reason, never silently away. A file that cannot be written keeps
    its rows in state and is tried again ``retry`` later (``max(grace, 60 s)`` of event time).
    """

    LATE = "late"
    RESULTS = "results"
    ROWS = BagStateSpec("rows", PickleCoder())
    STATUS = ReadModifyWriteStateSpec("status", PickleCoder())
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)
    _WRITTEN, _WAITING = "written", "waiting"

    def __init__(self, spec, recipe, aid, grace_us):
        super().__init__(spec, recipe, aid)
        self._grace = grace_us
        self._retry = max(grace_us, 60 * MICROS)

    def _late_row(self, start, keyed_row):
        spec = self._spec
        self._deadlettered.inc()
        name = spec.file_name(start)
        reason = ("late: received_at %s belongs to window %s, whose file %s was already written"
                  % (format_time(keyed_row[0]), format_time(start), name))
        _LOG.warning("work %s: %s", spec.work_id, reason)
        return beam.pvalue.TaggedOutput(
            self.LATE, dead_letter(dict(zip(spec.columns, keyed_row[2])), reason, spec.work_id))

    def process(self, element, rows=beam.DoFn.StateParam(ROWS),
                status=beam.DoFn.StateParam(STATUS), close=beam.DoFn.TimerParam(CLOSE)):
        (_, start), group = element
        state = status.read()
        if state == self._WRITTEN:
            for _, keyed_row in group:
                yield self._late_row(start, keyed_row)
            return
        rows.add([keyed_row for _, keyed_row in group])
        if state is None:
            close.set(timer_at(start + self._spec.period + self._grace))
            status.write(self._WAITING)

    @on_timer(CLOSE)
    def write_closed(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                     rows=beam.DoFn.StateParam(ROWS), status=beam.DoFn.StateParam(STATUS),
                     close=beam.DoFn.TimerParam(CLOSE)):
        work_id, start = key
        keyed_rows = [row for group in rows.read() for row in group]
        written, event = self._deliver(start, keyed_rows)
        yield event
        if written:
            rows.clear()
            status.write(self._WRITTEN)
        else:
            close.set(timer_at(fired.micros + self._retry))
        yield beam.pvalue.TaggedOutput(self.RESULTS, (work_id, (start, written)))


class _AdvanceMarker(_BlobDoFn):
    """The unbounded path, one state key per work: header-only files and the state marker.

    Input: ``(work id, (window start, written))`` from :class:`_WriteClosedWindow`, one per
    attempt at a window with data, timestamped with the window's close (or retry) time. State:
    those results (window starts and flags, never rows) and the marker end as this run knows it.
    A timer at each result's time runs when the watermark has passed it, hence when the result of
    every window that closed by then has arrived; it then plans, like a bounded run
    (:func:`core.export.plan_windows`), the windows from the marker (none yet: the first closed
    window with data) to the last closed window with data, writes the empty ones as header-only
    files, and moves the marker over the windows written without a gap. A failed window holds the
    marker back until its retry reports it written; a failed header-only file is tried again
    ``retry`` later.

    A row that arrives for an empty window after its header-only file was written (an event
    that is late for the watermark) is written by its window's key as that window's file, which
    replaces the header-only one: it lands in its window, not in the dead letters.
    """

    RESULTS = BagStateSpec("results", PickleCoder())
    PROGRESS = ReadModifyWriteStateSpec("progress", PickleCoder())
    PLAN = TimerSpec("plan", TimeDomain.WATERMARK)

    def __init__(self, spec, recipe, aid, grace_us):
        super().__init__(spec, recipe, aid)
        self._grace = grace_us
        self._retry = max(grace_us, 60 * MICROS)

    def _closes_at(self, start):
        return start + self._spec.period + self._grace

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                results=beam.DoFn.StateParam(RESULTS), progress=beam.DoFn.StateParam(PROGRESS),
                plan_timer=beam.DoFn.TimerParam(PLAN)):
        _, result = element
        results.add(result)
        marker_end, due = progress.read() or (self._spec.marker_end, None)
        at = timer_at(timestamp.micros)
        if due is None or at < due:
            plan_timer.set(at)
            progress.write((marker_end, at))

    @on_timer(PLAN)
    def plan(self, fired=beam.DoFn.TimestampParam, results=beam.DoFn.StateParam(RESULTS),
             progress=beam.DoFn.StateParam(PROGRESS), plan_timer=beam.DoFn.TimerParam(PLAN)):
        spec = self._spec
        now = fired.micros
        marker_end, _ = progress.read() or (spec.marker_end, None)
        written_by_window = {}
        for start, ok in results.read():
            written_by_window[start] = written_by_window.get(start, False) or ok
        closed = [start for start in written_by_window if self._closes_at(start) <= now]
        # The window limit caps the header-only files a close plans (a far window's own file
        # is its own key's; it closes only when the watermark reaches it).
        limit = window_limit(min(closed) if closed else None, marker_end, spec.period,
                             spec.max_windows)
        plan = plan_windows(closed, marker_end, spec.period, limit)
        written = {start for start in plan if written_by_window.get(start)}
        retry_empty = False
        for start in plan:
            if start not in written_by_window:
                ok, event = self._deliver(start, [])
                if ok:
                    written.add(start)
                else:
                    retry_empty = True
                yield event
        end = advance_marker(plan, written, marker_end, spec.period)
        if end is not None and end != marker_end:
            yield from self._move_marker(end)
        kept = [(start, ok) for start, ok in written_by_window.items()
                if end is None or start >= end]
        results.clear()
        for item in kept:
            results.add(item)
        # Results not planned yet have their timers' times; a failed window reports again on
        # its retry; a failed header-only file is tried again here.
        pending = [self._closes_at(start) for start, _ in kept if self._closes_at(start) > now]
        if retry_empty:
            pending.append(now + self._retry)
        if not pending:
            plan_timer.clear()
            progress.write((end, None))
            return
        due = timer_at(min(pending))
        plan_timer.set(due)
        progress.write((end, due))


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

    def __init__(self, work, account_name, aid, output_dir, marker_end=None, disabled_reason=None,
                 label=None, grace_seconds=DEFAULT_GRACE_SECONDS,
                 flush_seconds=DEFAULT_FLUSH_SECONDS, batched=False):
        super().__init__(label)
        self._work = work
        self._batched = batched
        self._account_name = account_name
        self._aid = aid
        self._marker_end = marker_end
        self._disabled_reason = disabled_reason
        self._recipe = _DestinationRecipe(work.worker_settings or work.settings, output_dir)
        self._output_dir = output_dir
        self._grace_seconds = float(grace_seconds)
        self._flush_seconds = flush_seconds
        if not self._grace_seconds >= 0:
            raise ValueError("grace_seconds must not be negative")

    def display_data(self):
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

    def expand(self, records):
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
                   | "SelectRows" >> beam.ParDo(_SelectRowBatches(spec, batched))
                   | "GroupByWindow" >> beam.GroupByKey())
        first_with_data = (windows
                           | "WindowStarts" >> beam.Keys()
                           | "FirstWindow" >> beam.CombineGlobally(_FirstWindow()))
        written = (windows
                   | "WriteFiles" >> beam.ParDo(_WriteWindowFiles(spec, self._recipe, self._aid),
                                                beam.pvalue.AsList(first_with_data))
                   .with_outputs(_WriteWindowFiles.RESULTS, _WriteWindowFiles.DEADLETTER,
                                 main="events"))
        _ = written[_WriteWindowFiles.DEADLETTER] | "WriteDeadLetters" >> WriteJsonLinesFile(
            outputs.join(self._output_dir, "deadletter", work.id + ".jsonl"),
            sort_key=_dead_letter_order, write_empty=False)
        finished = (p
                    | "Once" >> Values([None])
                    | "FinishRun" >> beam.ParDo(
                        _FinishRun(spec, self._recipe, self._aid),
                        beam.pvalue.AsList(written[_WriteWindowFiles.RESULTS])))
        return (written.events, finished) | "WorkEvents" >> beam.Flatten()

    def _expand_unbounded(self, records, spec, batched):
        """Windows written as they close, each by its own state key (see
        :class:`_WriteClosedWindow`), the marker moved per work (:class:`_AdvanceMarker`); late
        rows to ``<output_dir>/deadletter/<work id>.jsonl`` (written in parts)."""
        if spec.export_type == "system_events":
            records = records | "DedupeCopies" >> DedupeSystemEventsLive()
        grace_us = int(self._grace_seconds * MICROS)
        windows = (records
                   | "SelectRows" >> beam.ParDo(_SelectRows(spec, batched))
                   | "BatchPerWindow" >> BatchPerBundle(
                       _KeyByWindow(spec.work_id), key_type=typing.Tuple[str, int])
                   | "WriteClosedWindows" >> beam.ParDo(_WriteClosedWindow(
                       spec, self._recipe, self._aid, grace_us))
                   .with_outputs(_WriteClosedWindow.LATE, _WriteClosedWindow.RESULTS,
                                 main="events"))
        marker = (windows[_WriteClosedWindow.RESULTS]
                  | "TypedResults" >> beam.Map(_same).with_output_types(
                      typing.Tuple[str, typing.Tuple[int, bool]])
                  | "AdvanceMarker" >> beam.ParDo(_AdvanceMarker(
                      spec, self._recipe, self._aid, grace_us)))
        _ = windows[_WriteClosedWindow.LATE] | "WriteLateRows" >> WriteJsonLinesFile(
            outputs.join(self._output_dir, "deadletter", self._work.id + ".jsonl"),
            flush_seconds=self._flush_seconds)
        return (windows.events, marker) | "WorkEvents" >> beam.Flatten()
