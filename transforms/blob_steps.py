"""The private steps of :class:`transforms.blob.WriteToBlobExport` (its module docstring says
what they do together): selecting rows, writing window files through a destination opened in
``setup()`` (:mod:`clients.blob`), planning header-only files and moving the state marker
(:mod:`clients.markers`); on an unbounded input, one state key per window and one per work.
"""
import logging
from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagRuntimeState, BagStateSpec,
                                               ReadModifyWriteRuntimeState, ReadModifyWriteStateSpec,
                                               RuntimeTimer, TimerSpec, on_timer)
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.clients.blob import BlobExportError
from cdp_activation.clients.markers import write_marker
from cdp_activation.core.export import (CONTENT_TYPES, ExportRecord, ExportSpec, KeyedRow, advance_marker,
                         leading_gap_warning, marker_name, plan_windows, row_sort_key, window_limit)
from cdp_activation.core.records import SystemEvent, dead_letter
from cdp_activation.core.system_events import work_event
from cdp_activation.core.timeutil import MICROS, format_time
from cdp_activation.transforms.live import timer_at

if TYPE_CHECKING:  # transforms.blob imports this module
    from cdp_activation.transforms.blob import DestinationRecipe

_LOG = logging.getLogger(__name__)
#: Warnings for the user about the data (not the machinery): its own level, so they show on a
#: local run, whose launcher quiets the root logger to ERROR unless --verbose.
_USER_WARNINGS = logging.getLogger("cdp_activation.transforms.blob.data")
_USER_WARNINGS.setLevel(logging.WARNING)

#: Unbounded input: how long (event time) after a window's end its file is written, for records
#: whose ``ts`` lies after their ``received_at`` (client clocks ahead of the ingestion clock).
DEFAULT_GRACE_SECONDS = 300.0


class SelectRows(beam.DoFn):
    """Record -> (window start, keyed row); drops what the work does not export.

    ``batched``: each element is a list of records (the engine's export output, one list per user
    and bundle) rather than one record.
    """

    def __init__(self, spec: ExportSpec, batched: bool = False) -> None:
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

    @no_annotations
    def process(self, element: Union[ExportRecord, List[ExportRecord]]) -> Iterator[Tuple[int, KeyedRow]]:
        for record in element if self._batched else (element,):
            selected = self._selected(record)
            if selected is not None:
                yield selected


_GLOBAL = beam_window.GlobalWindow()


class SelectRowBatches(SelectRows):
    """Records -> ``(window start, [keyed row, ...])``: the bounded path's rows travel in lists,
    one element per window and bundle (or per :data:`MAX_BATCHED_ROWS` rows of a bundle, which
    bounds the memory a large bundle holds), so the group and write steps handle a few elements
    per window rather than one per row."""

    #: Rows held before the batches are emitted within a bundle.
    MAX_BATCHED_ROWS = 10_000

    def start_bundle(self) -> None:
        self._batches = {}
        self._held = 0

    @no_annotations
    def process(self, element: Union[ExportRecord, List[ExportRecord]]
                ) -> Iterator[Tuple[int, List[KeyedRow]]]:
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

    def finish_bundle(self) -> Iterator[WindowedValue]:
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


class WriteWindowFiles(_BlobDoFn):
    """(window start, [[keyed row, ...], ...]) -> the window's file, from the window's batches
    (:class:`SelectRowBatches`); work events out, and ``(start, written, first (received_at,
    id), rows)`` to RESULTS (``written`` None: past the run's window limit, the rows went to
    DEADLETTER instead). ``first_with_data``: ``[the run's first window start]``."""

    RESULTS = "results"
    DEADLETTER = "deadletter"

    @no_annotations
    def process(self, element: Tuple[int, List[List[KeyedRow]]], first_with_data: List[Optional[int]]
                ) -> Iterator[Any]:
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


class FinishRun(_BlobDoFn):
    """After every window file: header-only files for the plan's empty windows, then the marker;
    a ``failed`` event for windows past the window limit, a logged warning for a first window far
    before the rest (:func:`core.export.leading_gap_warning`)."""

    @no_annotations
    def process(self, unused_trigger: Any, results: Iterable[Tuple[int, Optional[bool], Any, int]]
                ) -> Iterator[SystemEvent]:
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


class FirstWindow(beam.CombineFn):
    """The smallest window start, or None when there is none."""

    def create_accumulator(self) -> Optional[int]:
        return None

    def add_input(self, accumulator: Optional[int], start: int) -> Optional[int]:
        return start if accumulator is None or start < accumulator else accumulator

    def merge_accumulators(self, accumulators: Iterable[Optional[int]]) -> Optional[int]:
        present = [a for a in accumulators if a is not None]
        return min(present) if present else None

    def extract_output(self, accumulator: Optional[int]) -> Optional[int]:
        return accumulator


class KeyByWindow:
    def __init__(self, work_id: str) -> None:
        self._work_id = work_id

    def __call__(self, item: Tuple[int, Any]) -> Tuple[str, int]:
        return self._work_id, item[0]


class WriteClosedWindow(_BlobDoFn):
    """The unbounded path, one state key per (work, window): buffers the window's rows and writes
    its file once the window is closed.

    Input: ``((work id, window start), [(window start, keyed row), ...])``, one element per window
    and bundle. A window ``[s, s + period)`` of ``received_at`` is closed when the watermark passes
    ``s + period + grace``: by then the engine has emitted every row of an event whose ``ts`` is
    before that time, and ``ts <= received_at`` but for clock skew of less than ``grace``. The
    close timer reads this window's rows only, writes its file, drops the rows and keeps one
    small ``written`` mark for the window; it reports ``(work id, (start, written))`` on
    ``RESULTS`` for :class:`AdvanceMarker`, timestamped with the close time (the timer's time,
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

    def __init__(self, spec: ExportSpec, recipe: "DestinationRecipe", aid: Optional[int],
                 grace_us: int) -> None:
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

    @no_annotations
    def process(self, element: Tuple[Tuple[str, int], List[Tuple[int, KeyedRow]]],
                rows: BagRuntimeState = beam.DoFn.StateParam(ROWS),
                status: ReadModifyWriteRuntimeState = beam.DoFn.StateParam(STATUS),
                close: RuntimeTimer = beam.DoFn.TimerParam(CLOSE)) -> Iterator[Any]:
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
    def write_closed(self, key: Tuple[str, int] = beam.DoFn.KeyParam,
                     fired: Timestamp = beam.DoFn.TimestampParam,
                     rows: BagRuntimeState = beam.DoFn.StateParam(ROWS),
                     status: ReadModifyWriteRuntimeState = beam.DoFn.StateParam(STATUS),
                     close: RuntimeTimer = beam.DoFn.TimerParam(CLOSE)) -> Iterator[Any]:
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


class AdvanceMarker(_BlobDoFn):
    """The unbounded path, one state key per work: header-only files and the state marker.

    Input: ``(work id, (window start, written))`` from :class:`WriteClosedWindow`, one per
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

    def __init__(self, spec: ExportSpec, recipe: "DestinationRecipe", aid: Optional[int],
                 grace_us: int) -> None:
        super().__init__(spec, recipe, aid)
        self._grace = grace_us
        self._retry = max(grace_us, 60 * MICROS)

    def _closes_at(self, start):
        return start + self._spec.period + self._grace

    @no_annotations
    def process(self, element: Tuple[str, Tuple[int, bool]],
                timestamp: Timestamp = beam.DoFn.TimestampParam,
                results: BagRuntimeState = beam.DoFn.StateParam(RESULTS),
                progress: ReadModifyWriteRuntimeState = beam.DoFn.StateParam(PROGRESS),
                plan_timer: RuntimeTimer = beam.DoFn.TimerParam(PLAN)) -> None:
        _, result = element
        results.add(result)
        marker_end, due = progress.read() or (self._spec.marker_end, None)
        at = timer_at(timestamp.micros)
        if due is None or at < due:
            plan_timer.set(at)
            progress.write((marker_end, at))

    @on_timer(PLAN)
    def plan(self, fired: Timestamp = beam.DoFn.TimestampParam,
             results: BagRuntimeState = beam.DoFn.StateParam(RESULTS),
             progress: ReadModifyWriteRuntimeState = beam.DoFn.StateParam(PROGRESS),
             plan_timer: RuntimeTimer = beam.DoFn.TimerParam(PLAN)) -> Iterator[SystemEvent]:
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
