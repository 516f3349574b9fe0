"""Reading input records: ``ReadRecords`` parses JSON Lines (and Parquet) files into typed records.

Output is a ``beam.pvalue.DoOutputsTuple`` with four tagged PCollections:

* ``profile``: ``((key_field, key), group)`` — a user's events *of one read chunk*
  (``ProfileEvent`` fields as plain tuples, see ``to_wire``, packed into one bytes value by
  ``core.blocks.pack_rows``/``join_packed``; ``core.blocks.unpack_rows`` gives the tuples back),
  grouped as they are read. Downstream stages work on a user's events a chunk at a time, which is
  what makes both pipelines cheap per event (one state access per user and chunk, not per event).
* ``system``: :class:`core.records.SystemEvent`.
* ``deadletter``: ``{"raw", "error", "source"}`` for every line that could not be processed.
* ``latest_received``: the latest ``received_at`` of the records kept, one value per file (per
  bundle for ``ParseLines`` with ``track_latest``): their maximum is a bounded run's default as-of
  time (docs/STATE.md).

Every element is timestamped with its event time. Nothing is dropped: a line is either a record or a
dead letter, and both are counted (``input:records_read``, ``input:deadlettered``).

Files are read in blocks of whole lines (``core.blocks``). With ``worker_processes`` above 0, a file
of more than one block is parsed by that many worker processes (``transforms._worker_processes``) and
put back in file order: the elements are the same as parsing in this process, and on a local runner
the parse uses the machine's other cores.
"""
import itertools
import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.blocks import BLOCK_BYTES, join_packed, parse_block, parse_rows, read_blocks
from core.records import (DEFAULT_MAX_TS_SKEW_US, InputError, ProfileEvent, dead_letter, parse_record,
                          time_bounds_error)
from transforms._worker_processes import acquire_workers, release_workers

_LOGGER = logging.getLogger(__name__)

PROFILE, SYSTEM, DEADLETTER = "profile", "system", "deadletter"
#: Tagged output: the latest ``received_at`` of the records read (one value per file, or per
#: bundle of lines), whose maximum is a bounded run's default as-of time (docs/STATE.md).
LATEST = "latest_received"
#: Bytes of packed events (``core.blocks.pack_rows``, about 120 per event) collected before a chunk's
#: per-user groups are emitted. Each group is one element and one state access downstream, and a
#: chunk has a group for every user in it, so the groups of a file are about users x chunks: with
#: users growing with the data, a fixed count of events per chunk made the cost grow faster than
#: the events (a 600k-event stream had 12 times the groups of a 150k one). 128 MiB, about 1M
#: events, bounds the memory as the former 200k parsed events did, now that parsed events wait
#: packed.
CHUNK_BYTES = 128 << 20
#: A file is read in about this many blocks, of BLOCK_BYTES to MAX_BLOCK_BYTES each. A parsed block
#: holds a group per user in it, and the read merges them per user: with blocks of a fixed size the
#: merges grew as users x blocks (13x for 4x the benchmark's data, the users growing with it); with
#: a fixed number of blocks they grow with the users, up to files of 8 x MAX_BLOCK_BYTES.
BLOCKS_PER_FILE = 8
MAX_BLOCK_BYTES = 16 << 20
#: Parquet rows parsed per block (a Parquet file is read whole; its rows are parsed in blocks).
CHUNK_LINES = 200000


def block_bytes(file_size):
    """Bytes per block for a file of ``file_size`` bytes (see BLOCKS_PER_FILE)."""
    return min(max(file_size // BLOCKS_PER_FILE + 1, BLOCK_BYTES), MAX_BLOCK_BYTES)


def user_key(event):
    return (event.key_field, event.key)


def to_wire(records):
    """Records as plain tuples: Beam's fast coder encodes those natively, named tuples one by one
    through pickle (several times slower)."""
    return [tuple(r) for r in records]


def events_from_wire(rows):
    return [ProfileEvent._make(r) for r in rows]


#: Position of ``ts`` in an event tuple, for code that handles rows without building events.
TS_INDEX = ProfileEvent._fields.index("ts")


def _timestamp(micros):
    return Timestamp(micros=micros)


class InputMissingError(ValueError):
    pass


def check_input_exists(pattern):
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


class _ParseFile(beam.DoFn):
    """Parses one file in blocks (``core.blocks``), emitting a user's events as one group per
    CHUNK_BYTES of packed events; blocks go to ``worker_processes`` worker processes when there
    are any and the file has more than one block."""

    def __init__(self, time_range=None, progress_seconds=0.0, worker_processes=0,
                 max_ts_skew=DEFAULT_MAX_TS_SKEW_US):
        self._time_range = time_range
        self._max_ts_skew = max_ts_skew
        self._progress_seconds = progress_seconds
        self._worker_processes = worker_processes
        self._records_read = Metrics.counter("input", "records_read")
        self._deadlettered = Metrics.counter("input", "deadlettered")
        self._out_of_range = Metrics.counter("input", "outside_time_range")

    def setup(self):
        self._workers = None  # started at the first file that has more than one block

    def teardown(self):
        if getattr(self, "_workers", None) is not None:
            release_workers(self._workers)
            self._workers = None

    def process(self, readable_file):
        path = readable_file.metadata.path
        progress = _Progress(path, self._progress_seconds)
        # Counted per block and added to the Beam counters once per chunk: an update per line is a
        # sizeable share of the cost of a line. ``finally``: a failing file still counts the blocks
        # it read before the failure.
        counts = [0, 0, 0]  # records read, dead-lettered, outside the time range
        merged, pending = {}, 0  # user: [earliest ts, [packed parts]]; bytes in them
        latest = None
        try:
            for block in self._parsed_blocks(readable_file, path):
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

    def _parsed_blocks(self, readable_file, path):
        time_range, max_ts_skew = self._time_range, self._max_ts_skew
        if path.endswith(".parquet"):
            rows = iter(self._parquet_rows(readable_file))
            while True:
                block = parse_rows(itertools.islice(rows, CHUNK_LINES), path, time_range,
                                   max_ts_skew)
                if not block.counts[0]:
                    return
                yield block
        with readable_file.open() as raw:
            size = readable_file.metadata.size_in_bytes or 0
            block = block_bytes(size)
            blocks = read_blocks(raw, block)
            if self._worker_processes and size > block:
                if getattr(self, "_workers", None) is None:
                    self._workers = acquire_workers(self._worker_processes)
                yield from self._workers.map_ordered(
                    "parse_block", ((data, first_lineno, path, time_range, max_ts_skew)
                                    for first_lineno, data in blocks))
                return
            for first_lineno, data in blocks:
                yield parse_block(data, first_lineno, path, time_range, max_ts_skew)

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


class ReadRecords(beam.PTransform):
    """Reads JSON Lines (``.parquet`` files as Parquet) matching ``pattern`` into tagged records.

    ``time_range``: optional ``(start, end)`` in microseconds; records whose ``ts`` falls outside
    ``[start, end)`` are skipped and counted (``input:outside_time_range``).
    ``worker_processes``: worker processes that parse a file's blocks (0: parse in the DoFn).
    ``max_ts_skew``: microseconds ``ts`` may lie after ``received_at``; a record further ahead, or
    dated before 2000, is a dead letter (:func:`core.records.time_bounds_error`).
    """

    def __init__(self, pattern, time_range=None, progress_seconds=0.0, worker_processes=0,
                 label=None, max_ts_skew=DEFAULT_MAX_TS_SKEW_US):
        super().__init__(label)
        self._max_ts_skew = max_ts_skew
        self._pattern = pattern
        self._time_range = time_range
        self._progress_seconds = progress_seconds
        self._worker_processes = worker_processes

    def expand(self, pbegin):
        return (pbegin
                | "MatchFiles" >> fileio.MatchFiles(self._pattern)
                | "ReadMatches" >> fileio.ReadMatches()
                | "Reshuffle" >> beam.Reshuffle()
                | "ParseRecords" >> beam.ParDo(_ParseFile(
                    self._time_range, self._progress_seconds, self._worker_processes,
                    self._max_ts_skew)).with_outputs(
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

    def __init__(self, source="stream", track_latest=False, label=None,
                 max_ts_skew=DEFAULT_MAX_TS_SKEW_US):
        super().__init__(label)
        self._source = source
        self._track_latest = track_latest
        self._max_ts_skew = max_ts_skew

    def expand(self, lines):
        return lines | "Parse" >> beam.ParDo(_ParseLine(
            self._source, self._track_latest, self._max_ts_skew)).with_outputs(
            DEADLETTER, SYSTEM, LATEST, main=PROFILE)
