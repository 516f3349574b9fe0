"""Reading input records: ``ReadRecords`` parses JSON Lines (and Parquet) files into typed records.

Output is a ``beam.pvalue.DoOutputsTuple`` with three tagged PCollections:

* ``profile``: ``((key_field, key), group)`` — a user's events *of one read chunk*
  (``ProfileEvent`` fields as plain tuples, see ``to_wire``, packed into one bytes value by
  ``pack_rows``; ``unpack_rows`` gives the tuples back),
  grouped as they are read. Downstream stages work on a user's events a chunk at a time, which is
  what makes both pipelines cheap per event (one state access per user and chunk, not per event).
* ``system``: :class:`core.records.SystemEvent`.
* ``deadletter``: ``{"raw", "error", "source"}`` for every line that could not be processed.

Every element is timestamped with its event time. Nothing is dropped: a line is either a record or a
dead letter, and both are counted (``input:records_read``, ``input:deadlettered``).
"""
import io
import logging
import marshal
import pickle
import sys
import time

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from core.records import InputError, ProfileEvent, dead_letter, parse_record

_LOGGER = logging.getLogger(__name__)

PROFILE, SYSTEM, DEADLETTER = "profile", "system", "deadletter"
#: Lines parsed before a chunk's per-user groups are emitted: bounds memory (about 150 MB of parsed
#: events), keeps grouping useful. Each group is one element and one state access downstream, so
#: fewer chunks mean fewer groups: 200k instead of 100k made a 600k-event stream run 6% faster.
CHUNK_LINES = 200000


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


def pack_rows(rows):
    """A group of event tuples as one bytes value: what crosses Beam boundaries and sits in state.

    One bytes element per group instead of a list of tuples: ``marshal`` encodes and decodes
    plain values several times faster than Beam's per-field coder. Values it cannot write (e.g. a
    date from a Parquet file) make the group fall back to pickle; the first byte says which.
    """
    try:
        return b"m" + marshal.dumps(rows)
    except ValueError:
        return b"p" + pickle.dumps(rows, protocol=5)


def unpack_rows(group):
    """The event tuples of a group: packed bytes (``pack_rows``) or a plain list of tuples."""
    if not isinstance(group, bytes):
        return group
    return marshal.loads(group[1:]) if group[:1] == b"m" else pickle.loads(group[1:])


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
    return [m.path for m in matches]


class _Progress:
    """Prints records read and the rate to stderr every ``every`` seconds (0: never)."""

    def __init__(self, path, every):
        self._path, self._every = path, every
        self._count = 0
        self._started = self._last = time.monotonic()

    def tick(self):
        self._count += 1
        if self._every and not self._count & 1023:
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
    """Parses one file, emitting per-user groups of events every CHUNK_LINES lines."""

    def __init__(self, time_range=None, progress_seconds=0.0):
        self._time_range = time_range
        self._progress_seconds = progress_seconds
        self._records_read = Metrics.counter("input", "records_read")
        self._deadlettered = Metrics.counter("input", "deadlettered")
        self._out_of_range = Metrics.counter("input", "outside_time_range")

    def process(self, readable_file):
        path = readable_file.metadata.path
        if path.endswith(".parquet"):
            rows = self._parquet_rows(readable_file)
        else:
            rows = self._text_lines(readable_file)
        groups, pending = {}, 0
        progress = _Progress(path, self._progress_seconds)
        tick = progress.tick if self._progress_seconds else None  # it only counts otherwise
        start, end = self._time_range if self._time_range is not None else (None, None)
        # Counted here and added to the Beam counters once per chunk: an update per line is a
        # sizeable share of the cost of a line. ``finally``: a failing file still counts what it read.
        counts = [0, 0, 0]  # records read, dead-lettered, outside the time range
        try:
            for lineno, raw in rows:
                counts[0] += 1
                if tick is not None:
                    tick()
                try:
                    record = parse_record(raw)
                except InputError as exc:
                    counts[1] += 1
                    yield beam.pvalue.TaggedOutput(
                        DEADLETTER, dead_letter(raw, exc, "%s:%d" % (path, lineno)))
                    continue
                if (start is not None and record.ts < start) or (end is not None and record.ts >= end):
                    counts[2] += 1
                    continue
                if isinstance(record, ProfileEvent):
                    groups.setdefault(user_key(record), []).append(record)
                    pending += 1
                    if pending >= CHUNK_LINES:
                        self._publish(counts)
                        yield from self._flush(groups)
                        groups, pending = {}, 0
                else:
                    yield beam.pvalue.TaggedOutput(
                        SYSTEM, TimestampedValue(record, _timestamp(record.ts)))
            yield from self._flush(groups)
        finally:
            self._publish(counts)
        progress.done()

    def _publish(self, counts):
        for counter, count in zip((self._records_read, self._deadlettered, self._out_of_range), counts):
            if count:  # a counter never incremented stays absent from the results, as before
                counter.inc(count)
        counts[:] = [0, 0, 0]

    @staticmethod
    def _flush(groups):
        for key, events in groups.items():
            yield TimestampedValue((key, pack_rows(to_wire(events))), _timestamp(min(e.ts for e in events)))

    @staticmethod
    def _text_lines(readable_file):
        with readable_file.open() as raw:
            # Lines end at "\n" only: a bare CR is JSON whitespace and may sit inside a record.
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="\n")
            for lineno, line in enumerate(text, 1):
                line = line.rstrip("\r\n")
                if not line.strip(" \t\r\n"):
                    continue  # blank in JSON's sense; any other content is a record or a dead letter
                if not line.isascii():
                    try:
                        line.encode("utf-8")
                    except UnicodeEncodeError:
                        # Not UTF-8: hand over the original bytes, so the dead letter says so.
                        line = line.encode("utf-8", "surrogateescape")
                yield lineno, line

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
    """

    def __init__(self, pattern, time_range=None, progress_seconds=0.0, label=None):
        super().__init__(label)
        self._pattern = pattern
        self._time_range = time_range
        self._progress_seconds = progress_seconds

    def expand(self, pbegin):
        return (pbegin
                | "MatchFiles" >> fileio.MatchFiles(self._pattern)
                | "ReadMatches" >> fileio.ReadMatches()
                | "Reshuffle" >> beam.Reshuffle()
                | "ParseRecords" >> beam.ParDo(_ParseFile(self._time_range, self._progress_seconds)).with_outputs(
                    DEADLETTER, SYSTEM, main=PROFILE))


class _ParseLine(beam.DoFn):
    """Parses single lines (unbounded sources, TestStream) into tagged records."""

    def __init__(self, source):
        self._source = source
        self._records_read = Metrics.counter("input", "records_read")
        self._deadlettered = Metrics.counter("input", "deadlettered")

    def process(self, raw):
        self._records_read.inc()
        source, received_at = self._source, None
        if hasattr(raw, "received_at_us"):  # an InputRecord from a live source
            source, received_at, raw = raw.source, raw.received_at_us, raw.body
        try:
            record = parse_record(raw, default_received_at=received_at)
        except InputError as exc:
            self._deadlettered.inc()
            yield beam.pvalue.TaggedOutput(DEADLETTER, dead_letter(raw, exc, source))
            return
        if isinstance(record, ProfileEvent):
            yield TimestampedValue((user_key(record), tuple(record)), _timestamp(record.ts))
        else:
            yield beam.pvalue.TaggedOutput(SYSTEM, TimestampedValue(record, _timestamp(record.ts)))


class ParseLines(beam.PTransform):
    """Parses a PCollection of JSON lines, or of live sources' ``InputRecord`` (body, arrival time,
    source): profile events come out one per element, keyed by user; a record without
    ``received_at`` gets the source's arrival time."""

    def __init__(self, source="stream", label=None):
        super().__init__(label)
        self._source = source

    def expand(self, lines):
        return lines | "Parse" >> beam.ParDo(_ParseLine(self._source)).with_outputs(
            DEADLETTER, SYSTEM, main=PROFILE)
