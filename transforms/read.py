"""Reading input records: ``ReadRecords`` parses JSON Lines (and Parquet) files into typed records.

Output is a ``beam.pvalue.DoOutputsTuple`` with four tagged PCollections:

* ``profile``: ``((key_field, key), group)`` — a user's events *of one read chunk*
  (``ProfileEvent`` fields as plain tuples, see ``to_wire``, packed into one bytes value by
  ``core.blocks.pack_rows``/``join_packed``; ``core.blocks.unpack_rows`` gives the tuples back),
  grouped as they are read. Downstream stages work on a user's events a chunk at a time, which is
  what makes both pipelines cheap per event (one state access per user and chunk, not per event).
* ``system``: :class:`core.records.SystemEvent`.
* ``deadletter``: ``{"raw", "error", "source"}`` for every line that could not be processed.
* ``latest_received``: the latest ``received_at`` of the records kept, one value per range of a
  file (per bundle for ``ParseLines`` with ``track_latest``): their maximum is a bounded run's default as-of
  time (docs/STATE.md).

Every element is timestamped with its event time. Nothing is dropped: a line is either a record or a
dead letter, and both are counted (``input:records_read``, ``input:deadlettered``).

A file is read in byte ranges, which a runner may process in parallel: ``_ParseFile`` is a
splittable DoFn whose restrictions are offset ranges over the file's bytes (``_FileRanges``). A
line belongs to the range its first byte lies in, as in Beam's textio: a range starts at its first
line that starts inside it and reads its last line to the end, past the range if it must. A
compressed or Parquet file cannot be read from the middle and is one range. Within a range, the
lines are read in blocks of whole lines (``core.blocks``). A dead letter's ``source`` is
``path:line`` whatever the ranges: the lines before a range are counted once, and only when one of
its lines is a dead letter.
"""
import itertools
import logging
import os
import sys
import time
from typing import Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.pvalue import DoOutputsTuple, PBegin
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.core.blocks import BLOCK_BYTES, join_packed, parse_block, parse_rows, read_blocks, renumbered
from cdp_activation.core.records import (DEFAULT_MAX_TS_SKEW_US, InputError, ProfileEvent, dead_letter, parse_record,
                          time_bounds_error)

_LOGGER = logging.getLogger(__name__)

PROFILE, SYSTEM, DEADLETTER = "profile", "system", "deadletter"
#: Tagged output: the latest ``received_at`` of the records read (one value per range of a file,
#: or per bundle of lines), whose maximum is a bounded run's default as-of time (docs/STATE.md).
LATEST = "latest_received"
#: Bytes of packed events (``core.blocks.pack_rows``, about 120 per event) collected before a chunk's
#: per-user groups are emitted. Each group is one element and one state access downstream, and a
#: chunk has a group for every user in it, so the groups of a file are about users x chunks: with
#: users growing with the data, a fixed count of events per chunk made the cost grow faster than
#: the events (a 600k-event stream had 12 times the groups of a 150k one). 128 MiB, about 1M
#: events, bounds the memory as the former 200k parsed events did, now that parsed events wait
#: packed.
CHUNK_BYTES = 128 << 20
#: A range of a file is read in about this many blocks, of BLOCK_BYTES to MAX_BLOCK_BYTES each. A
#: parsed block holds a group per user in it, and the read merges them per user: with blocks of a
#: fixed size the merges grew as users x blocks (13x for 4x the benchmark's data, the users growing
#: with it); with a fixed number of blocks they grow with the users, up to ranges of
#: 8 x MAX_BLOCK_BYTES.
BLOCKS_PER_FILE = 8
MAX_BLOCK_BYTES = 16 << 20
#: Parquet rows parsed per block (a Parquet file is read whole; its rows are parsed in blocks).
CHUNK_LINES = 200000
#: Bytes per range a JSON Lines file is split into before it is read (Beam's textio splits at the
#: same size): a runner reads the ranges in parallel, and each range is one more group per user
#: downstream, so a range is large enough that its groups stay few.
SPLIT_BYTES = 64 << 20


def block_bytes(range_size: int) -> int:
    """Bytes per block for a range of ``range_size`` bytes (see BLOCKS_PER_FILE)."""
    return min(max(range_size // BLOCKS_PER_FILE + 1, BLOCK_BYTES), MAX_BLOCK_BYTES)


def read_whole(path: str) -> bool:
    """Whether a file is read whole, as one range: Parquet, and compressed files (by their name's
    suffix, as Beam's file systems tell them), cannot be read from the middle."""
    return (path.endswith(".parquet")
            or CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED)


def user_key(event: ProfileEvent) -> Tuple[str, str]:
    return (event.key_field, event.key)


def to_wire(records: Iterable[tuple]) -> List[tuple]:
    """Records as plain tuples: Beam's fast coder encodes those natively, named tuples one by one
    through pickle (several times slower)."""
    return [tuple(r) for r in records]


def events_from_wire(rows: Iterable[Sequence]) -> List[ProfileEvent]:
    return [ProfileEvent._make(r) for r in rows]


#: Position of ``ts`` in an event tuple, for code that handles rows without building events.
TS_INDEX = ProfileEvent._fields.index("ts")


def _timestamp(micros):
    return Timestamp(micros=micros)


class InputMissingError(ValueError):
    pass


def check_input_exists(pattern: str) -> List[str]:
    """Raises InputMissingError with one line when the glob matches no file."""
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # the filesystem's own error (bad scheme, unreachable) is the message
        raise InputMissingError("input %s: %s" % (pattern, str(exc).splitlines()[0])) from None
    if not matches:
        raise InputMissingError("input %s: no file matches" % pattern)
    for m in matches:
        # A local directory matches itself (object stores have no directories to match).
        if FileSystems.get_scheme(m.path) is None and os.path.isdir(m.path):
            raise InputMissingError("input %s: is a directory; give a file or a glob, e.g. %s"
                                    % (pattern, os.path.join(m.path, "*.jsonl")))
    return [m.path for m in matches]


class _Progress:
    """Prints records read and the rate to stderr every ``every`` seconds (0: never)."""

    def __init__(self, path, every):
        self._path, self._every = path, every
        self._count = 0
        self._started = self._last = time.monotonic()

    def advance(self, lines):
        self._count += lines
        if self._every:
            now = time.monotonic()
            if now - self._last >= self._every:
                self._last = now
                sys.stderr.write("progress: %s: %d records read, %.0f/s\n"
                                 % (self._path, self._count, self._count / (now - self._started)))

    def done(self):
        elapsed = time.monotonic() - self._started
        if self._every and elapsed >= self._every:
            sys.stderr.write("progress: %s: %d records read in %.1f s\n" % (self._path, self._count, elapsed))


class _FileRanges(RestrictionProvider):
    """The restrictions of ``_ParseFile``: offset ranges over an input file's bytes.

    A file read by ranges (``read_whole`` says which are not) starts as ``[0, size)`` and is split
    into ranges of about ``split_bytes``; a runner may split a range further while it is read
    (``OffsetRestrictionTracker``). A file read whole is the one position ``[0, 1)``, claimed
    before it is read; its size for the runner is still the file's.
    """

    def __init__(self, split_bytes=SPLIT_BYTES):
        self._split_bytes = split_bytes

    def initial_restriction(self, readable_file):
        if read_whole(readable_file.metadata.path):
            return OffsetRange(0, 1)
        return OffsetRange(0, readable_file.metadata.size_in_bytes or 0)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def split(self, readable_file, restriction):
        if read_whole(readable_file.metadata.path) or restriction.size() <= self._split_bytes:
            yield restriction
            return
        yield from restriction.split(self._split_bytes)

    def restriction_size(self, readable_file, restriction):
        if read_whole(readable_file.metadata.path):
            return (readable_file.metadata.size_in_bytes or 0) if restriction.size() else 0
        return restriction.size()


class _ParseFile(beam.DoFn, _FileRanges):
    """Parses a range of a file in blocks (``core.blocks``), emitting a user's events as one group
    per CHUNK_BYTES of packed events (a splittable DoFn: its restrictions are ``_FileRanges``)."""

    def __init__(self, time_range=None, progress_seconds=0.0, max_ts_skew=DEFAULT_MAX_TS_SKEW_US,
                 split_bytes=SPLIT_BYTES):
        _FileRanges.__init__(self, split_bytes)
        self._time_range = time_range
        self._max_ts_skew = max_ts_skew
        self._progress_seconds = progress_seconds
        self._records_read = Metrics.counter("input", "records_read")
        self._deadlettered = Metrics.counter("input", "deadlettered")
        self._out_of_range = Metrics.counter("input", "outside_time_range")

    def process(self, readable_file, tracker=beam.DoFn.RestrictionParam()):
        path = readable_file.metadata.path
        progress = _Progress(path, self._progress_seconds)
        # Counted per block and added to the Beam counters once per chunk: an update per line is a
        # sizeable share of the cost of a line. ``finally``: a failing range still counts the
        # blocks it read before the failure.
        counts = [0, 0, 0]  # records read, dead-lettered, outside the time range
        merged, pending = {}, 0  # user: [earliest ts, [packed parts]]; bytes in them
        latest = None
        try:
            for block in self._parsed_blocks(readable_file, path, tracker):
                if block.latest_received is not None and (latest is None
                                                          or block.latest_received > latest):
                    latest = block.latest_received
                for i, count in enumerate(block.counts):
                    counts[i] += count
                progress.advance(block.counts[0])
                for letter in block.dead:
                    yield beam.pvalue.TaggedOutput(DEADLETTER, letter)
                for event in block.system:
                    yield beam.pvalue.TaggedOutput(SYSTEM, TimestampedValue(event, _timestamp(event.ts)))
                for key, earliest, packed in block.groups:
                    pending += len(packed)
                    entry = merged.get(key)
                    if entry is None:
                        merged[key] = [earliest, [packed]]
                    else:
                        if earliest < entry[0]:
                            entry[0] = earliest
                        entry[1].append(packed)
                if pending >= CHUNK_BYTES:
                    self._publish(counts)
                    yield from self._flush(merged)
                    merged, pending = {}, 0
            yield from self._flush(merged)
        finally:
            self._publish(counts)
        if latest is not None:
            yield beam.pvalue.TaggedOutput(LATEST, latest)
        progress.done()

    def _parsed_blocks(self, readable_file, path, tracker):
        time_range, max_ts_skew = self._time_range, self._max_ts_skew
        if read_whole(path):
            if not tracker.try_claim(tracker.current_restriction().start):
                return  # split off before it was read: another restriction reads the file
            if path.endswith(".parquet"):
                rows = iter(self._parquet_rows(readable_file))
                while True:
                    block = parse_rows(itertools.islice(rows, CHUNK_LINES), path, time_range,
                                       max_ts_skew)
                    if not block.counts[0]:
                        return
                    yield block
            with readable_file.open() as raw:
                blocks = read_blocks(raw, block_bytes(readable_file.metadata.size_in_bytes or 0))
                for first_lineno, data in blocks:
                    yield parse_block(data, first_lineno, path, time_range, max_ts_skew)
            return
        lines_before = None  # lines of the file before the range's first line, counted if needed
        for first_line, lineno, data in self._range_blocks(readable_file, tracker):
            if first_line == 0:
                lines_before = 0
            block = parse_block(data, lineno + (lines_before or 0), path, time_range, max_ts_skew)
            if block.dead and lines_before is None:
                lines_before = _lines_before(readable_file, first_line)
                block = block._replace(dead=renumbered(block.dead, path, lines_before))
            yield block

    @staticmethod
    def _range_blocks(readable_file, tracker):
        """``(offset of the range's first line, number of the block's first line counted from the
        range's first line, block)`` of the blocks of whole lines that start in the tracker's range.

        Each block claims the offset of its last line: once that succeeds, the range can only be
        split after it, so every line of the block is the range's; when it fails, the range ends
        before that line and the block keeps the lines that start before the end.
        """
        restriction = tracker.current_restriction()
        with readable_file.open() as raw:
            position = restriction.start
            if position > 0:
                # The range's first line starts after the first newline at or after its start - 1:
                # a line that starts before the range is the previous range's.
                raw.seek(position - 1)
                position += len(raw.readline()) - 1
            first_line, lineno = position, 1
            size = block_bytes(restriction.size())
            while True:
                stop = tracker.current_restriction().stop
                if position >= stop:
                    break
                data = raw.read(min(size, stop - position))
                if not data:
                    break
                if not data.endswith(b"\n"):
                    data += raw.readline()  # the last line, to its end
                last = position + data.rfind(b"\n", 0, len(data) - 1) + 1
                if not tracker.try_claim(last):
                    stop = tracker.current_restriction().stop
                    if stop > position:
                        yield first_line, lineno, data[:data.find(b"\n", stop - 1 - position) + 1]
                    return
                yield first_line, lineno, data
                lineno += data.count(b"\n")
                position += len(data)
        # No line starts in what is left of the range (the next one starts at or after its end,
        # or the file ended): claiming the end says so.
        tracker.try_claim(tracker.current_restriction().stop)

    def _publish(self, counts):
        for counter, count in zip((self._records_read, self._deadlettered, self._out_of_range), counts):
            if count:  # a counter never incremented stays absent from the results, as before
                counter.inc(count)
        counts[:] = [0, 0, 0]

    @staticmethod
    def _flush(merged):
        for key, (earliest, parts) in merged.items():
            yield TimestampedValue((key, join_packed(parts)), _timestamp(earliest))

    @staticmethod
    def _parquet_rows(readable_file):
        import pyarrow.parquet as pq
        with readable_file.open() as raw:
            table = pq.read_table(raw)
        for lineno, row in enumerate(table.to_pylist(), 1):
            yield lineno, {k: v for k, v in row.items() if v is not None}


def _lines_before(readable_file, offset):
    """The number of lines of the file that end before byte ``offset`` (a line's start)."""
    lines, left = 0, offset
    with readable_file.open() as raw:
        while left > 0:
            data = raw.read(min(left, 8 << 20))
            if not data:
                break
            lines += data.count(b"\n")
            left -= len(data)
    return lines


class ReadRecords(beam.PTransform):
    """Reads JSON Lines (``.parquet`` files as Parquet) matching ``pattern`` into tagged records.

    ``time_range``: optional ``(start, end)`` in microseconds; records whose ``ts`` falls outside
    ``[start, end)`` are skipped and counted (``input:outside_time_range``).
    ``max_ts_skew``: microseconds ``ts`` may lie after ``received_at``; a record further ahead, or
    dated before 2000, is a dead letter (:func:`core.records.time_bounds_error`).
    ``split_bytes``: the size of the ranges a JSON Lines file is split into before it is read
    (the runner may split them further); the records and dead letters are the same whatever it is.
    """

    def __init__(self, pattern: str, time_range: Optional[Tuple[Optional[int], Optional[int]]] = None,
                 progress_seconds: float = 0.0, label: Optional[str] = None,
                 max_ts_skew: int = DEFAULT_MAX_TS_SKEW_US, split_bytes: int = SPLIT_BYTES) -> None:
        super().__init__(label)
        self._max_ts_skew = max_ts_skew
        self._pattern = pattern
        self._time_range = time_range
        self._progress_seconds = progress_seconds
        self._split_bytes = split_bytes

    @no_annotations
    def expand(self, pbegin: PBegin) -> DoOutputsTuple:
        return (pbegin
                | "MatchFiles" >> fileio.MatchFiles(self._pattern)
                | "ReadMatches" >> fileio.ReadMatches()
                | "Reshuffle" >> beam.Reshuffle()
                | "ParseRecords" >> beam.ParDo(_ParseFile(
                    self._time_range, self._progress_seconds, self._max_ts_skew,
                    self._split_bytes)).with_outputs(
                    DEADLETTER, SYSTEM, LATEST, main=PROFILE))


class _ParseLine(beam.DoFn):
    """Parses single lines (unbounded sources, TestStream) into tagged records."""

    def __init__(self, source, track_latest=False, max_ts_skew=DEFAULT_MAX_TS_SKEW_US):
        self._source = source
        self._track_latest = track_latest
        self._max_ts_skew = max_ts_skew
        self._records_read = Metrics.counter("input", "records_read")
        self._deadlettered = Metrics.counter("input", "deadlettered")

    def start_bundle(self):
        self._latest = None

    def finish_bundle(self):
        if self._latest is not None and self._track_latest:
            yield beam.pvalue.TaggedOutput(
                LATEST, WindowedValue(self._latest, MIN_TIMESTAMP, [GlobalWindow()]))
        self._latest = None

    def process(self, raw):
        self._records_read.inc()
        source, received_at = self._source, None
        if hasattr(raw, "received_at_us"):  # an InputRecord from a live source
            source, received_at, raw = raw.source, raw.received_at_us, raw.body
        try:
            record = parse_record(raw, default_received_at=received_at)
            reason = time_bounds_error(record, self._max_ts_skew)
            if reason is not None:
                raise InputError(reason)
        except InputError as exc:
            self._deadlettered.inc()
            yield beam.pvalue.TaggedOutput(DEADLETTER, dead_letter(raw, exc, source))
            return
        if self._latest is None or record.received_at > self._latest:
            self._latest = record.received_at
        if isinstance(record, ProfileEvent):
            yield TimestampedValue((user_key(record), tuple(record)), _timestamp(record.ts))
        else:
            yield beam.pvalue.TaggedOutput(SYSTEM, TimestampedValue(record, _timestamp(record.ts)))


class ParseLines(beam.PTransform):
    """Parses a PCollection of JSON lines, or of live sources' ``InputRecord`` (body, arrival time,
    source): profile events come out one per element, keyed by user; a record without
    ``received_at`` gets the source's arrival time. ``max_ts_skew``: as for :class:`ReadRecords`."""

    def __init__(self, source: str = "stream", track_latest: bool = False,
                 label: Optional[str] = None, max_ts_skew: int = DEFAULT_MAX_TS_SKEW_US) -> None:
        super().__init__(label)
        self._source = source
        self._track_latest = track_latest
        self._max_ts_skew = max_ts_skew

    @no_annotations
    def expand(self, lines: beam.PCollection) -> DoOutputsTuple:
        return lines | "Parse" >> beam.ParDo(_ParseLine(
            self._source, self._track_latest, self._max_ts_skew)).with_outputs(
            DEADLETTER, SYSTEM, LATEST, main=PROFILE)
