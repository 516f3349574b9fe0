"""Local sinks: what a destination would have received, as JSON Lines under ``--output_dir``.

``--output_dir`` is a local path or any Beam file system URI (``azfs://...``): files are written
through :mod:`transforms.outputs` (Beam's ``FileSystems``), under a temporary name and then
renamed, by the step that holds the records, so on Flink or Dataflow they land in the output
directory, not on a worker's disk.

Bounded input: one file per destination, written once at the end of the data. Lines are sorted so
that two runs over the same input give byte-identical files, and the file is created (empty) even
when nothing reaches it, so users can tell "nothing to send" from "not run"; a sink made with
``write_empty=False`` (the dead-letter files) writes no file then, and removes one an earlier run
left at its path, so such a file is there only when it has something to read.

Unbounded input (a live source): the file never ends, so it is written in parts. ``DIR/x.jsonl``
becomes the directory ``DIR/x/`` holding ``part-<n>-<shard>-<hash>.jsonl`` files. A sink's records
are spread over ``shards`` shards (default :data:`DEFAULT_SHARDS`) by a hash of their JSON line, so
its Beam state is kept under one key per (sink, shard) and the work spreads over the runner's
workers instead of one key holding everything. ``n`` (six digits or more, from 000000) counts the
parts of that shard, ``shard`` is three digits, and ``hash`` is the first 8 hex digits of the
SHA-256 of the part's bytes. A part holds the records of its shard that arrived since the shard's
previous part, sorted like the bounded file; it is written when the watermark passes the time of
its earliest record plus ``flush_seconds`` (event time: on a live source the watermark follows the
clock, so a part is written about ``flush_seconds`` after its first record, plus the source's
watermark delay). The count and the buffered records live in Beam state, so a retried flush
rewrites the same name with the same bytes and never adds a part; the hash keeps a later job that
starts counting at 0 again (new job, no state) from overwriting an earlier job's parts in the same
directory. On a local disk the directory is created when the sink starts, so it exists (empty)
while nothing has arrived (a blob store has no empty directories). Reading a sink: every
``part-*.jsonl`` of the directory; name order puts the parts of one flush together. See
``transforms/live.py`` for why this is a stateful DoFn with an event-time timer rather than a
triggered GroupByKey.
"""
import hashlib
import json
import os
import typing
import zlib

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.typehints.decorators import no_annotations
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                               on_timer)

from cdp_activation.core.jsonlines import json_line
from cdp_activation.transforms import outputs
from cdp_activation.transforms.live import BatchPerBundle, Values, is_unbounded, timer_at

#: How long (event time) a part of an unbounded sink collects records before it is written.
DEFAULT_FLUSH_SECONDS = 10.0
#: Shards of an unbounded sink: its state is kept under this many keys.
DEFAULT_SHARDS = 8


#: Marks the group of an empty PCollection; compared by value because elements are re-decoded.
_SENTINEL_VALUE = "__localsink_sentinel__"


#: The elements of a bounded sink's GroupByKey: every record under the key 0.
_KEYED = typing.Tuple[int, typing.Any]


def _key_all(record):
    return 0, record


def _default_sort_key(record):
    return json.dumps(record, sort_keys=True)


class _WriteSortedLines(beam.DoFn):
    def __init__(self, path, sort_key, batched, encoded=None, write_empty=True):
        self._path = path
        self._sort_key = sort_key
        self._batched = batched
        self._encoded = encoded
        self._write_empty = write_empty

    def process(self, element):
        _, records = element
        records = (r for r in records if r != _SENTINEL_VALUE)
        if self._batched:
            records = (r for batch in records for r in batch)
        if self._encoded is not None:
            chunks = self._encoded(records)
            count = sum(chunk.count(b"\n") for chunk in chunks)
        else:
            chunks = [json_line(r) for r in sorted(records, key=self._sort_key)]
            count = len(chunks)
        if not count and not self._write_empty:
            # an earlier run's file would tell of dead letters not made now
            outputs.delete_file(self._path)
        else:
            replace_file(self._path, chunks)
        yield self._path, count


def replace_file(path: str, chunks: typing.Iterable[bytes]) -> None:
    """Writes ``chunks`` (bytes) as the file ``path`` (a local path or a Beam file system URI)
    through a temporary name and a rename: a reader never sees a half-written file, and a retry
    replaces the same name whole."""
    outputs.write_file(path, chunks)


def parts_directory(path: str) -> str:
    """Where an unbounded sink writes the parts of ``path``: ``DIR/x.jsonl`` -> ``DIR/x``."""
    stem, ext = os.path.splitext(path)
    return stem if ext == ".jsonl" else path + ".parts"


def part_name(index: int, data: bytes, shard: int = 0) -> str:
    """``part-<index>-<shard>-<hash>.jsonl``: the same index, shard and bytes always give the
    same name."""
    return "part-%06d-%03d-%s.jsonl" % (index, shard, hashlib.sha256(data).hexdigest()[:8])


def write_part(directory: str, index: int, records: typing.Iterable[typing.Any],
               sort_key: typing.Callable[[typing.Any], typing.Any], shard: int = 0) -> str:
    """Writes one part (records sorted by ``sort_key``); returns its path.

    Through ``replace_file``: a reader never sees a half-written part, and a retry replaces the
    same name with the same bytes.
    """
    data = b"".join(json_line(r) for r in sorted(records, key=sort_key))
    path = outputs.join(directory, part_name(index, data, shard))
    replace_file(path, (data,))
    return path


def shard_of(record: typing.Any, shards: int) -> int:
    """The shard of an unbounded sink's record: the same record always goes to the same shard."""
    return zlib.crc32(json_line(record)) % shards


class _WriteParts(beam.DoFn):
    """Buffers one shard's records in state; an event-time timer writes them as its next part.

    Input: ``(shard, [records])``, one element per shard and bundle.

    ``PROGRESS`` holds (index of the next part, time of the pending flush timer or None). The
    timer is set from the earliest buffered record, so one record with a far-future time cannot
    hold back records that arrived with it.
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())
    PROGRESS = ReadModifyWriteStateSpec("progress", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, directory, sort_key, flush_seconds, merge):
        self._directory = directory
        self._sort_key = sort_key
        self._flush_us = int(flush_seconds * 1_000_000)
        self._merge = merge

    def setup(self):
        # An existing, empty directory tells "running, nothing yet" from "not run".
        outputs.make_directory(self._directory)

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                buffer=beam.DoFn.StateParam(BUFFER), progress=beam.DoFn.StateParam(PROGRESS),
                flush=beam.DoFn.TimerParam(FLUSH)):
        _, records = element
        buffer.add(records)
        index, flush_at = progress.read() or (0, None)
        due = timer_at(timestamp.micros + self._flush_us)
        if flush_at is None or due < flush_at:
            flush.set(due)
            progress.write((index, due))

    @on_timer(FLUSH)
    def write(self, key=beam.DoFn.KeyParam, buffer=beam.DoFn.StateParam(BUFFER),
              progress=beam.DoFn.StateParam(PROGRESS)):
        index, _ = progress.read() or (0, None)
        records = [r for batch in buffer.read() for r in batch]
        buffer.clear()
        if self._merge is not None:
            records = self._merge(records)
        if not records:
            progress.write((index, None))
            return
        path = write_part(self._directory, index, records, self._sort_key, shard=key)
        progress.write((index + 1, None))
        yield path, len(records)


class WriteJsonLinesFile(beam.PTransform):
    """Writes a PCollection of JSON-serialisable records to one file, sorted: ``path`` is a local
    path or a Beam file system URI.

    With ``batched=True`` each element is a list of records (fewer elements to shuffle). With
    ``encoded`` (bounded input only), a function, the elements are encoded runs of lines that it
    turns into the file's bytes in order, as chunks of whole lines (e.g.
    ``core.messages.merge_message_line_runs``).
    Returns a PCollection with one ``(path, count)`` element once the file is in place.

    On an unbounded PCollection the file is written in parts (see the module docstring): one
    ``(part path, count)`` per part, ``flush_seconds`` of event time after its first record,
    the records spread over ``shards`` state keys.
    ``merge``, if given, maps one part's records to the records written (e.g. sums counts per key);
    it applies to parts only, since a bounded input is combined before the sink.
    ``write_empty=False``: no file when no record arrives (see the module docstring).
    """

    def __init__(self, path: str,
                 sort_key: typing.Optional[typing.Callable[[typing.Any], typing.Any]] = None,
                 batched: bool = False, label: typing.Optional[str] = None,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS,
                 merge: typing.Optional[typing.Callable[[list], list]] = None,
                 encoded: typing.Optional[typing.Callable[[typing.Iterable[typing.Any]],
                                                          typing.Sequence[bytes]]] = None,
                 shards: int = DEFAULT_SHARDS, write_empty: bool = True) -> None:
        super().__init__(label)
        if not (isinstance(shards, int) and shards >= 1):
            raise ValueError("shards must be a whole number of 1 or more")
        self._shards = shards
        self._write_empty = write_empty
        self._encoded = encoded
        self._path = path
        self._sort_key = sort_key or _default_sort_key
        self._batched = batched
        self._flush_seconds = float(flush_seconds)
        self._merge = merge
        if not self._flush_seconds >= 0:
            raise ValueError("flush_seconds must not be negative")

    @no_annotations
    def expand(self, records: beam.PCollection[typing.Any]
               ) -> beam.PCollection[typing.Tuple[str, int]]:
        if is_unbounded(records):
            if self._encoded is not None:
                raise ValueError("encoded records are for bounded input; an unbounded sink "
                                 "takes the records themselves")
            return self._expand_parts(records)
        # A GroupByKey on one key rather than a side input: the FnApiRunner repeats side-input
        # contents in pipelines whose timers make it loop over stages. The sentinel makes the
        # group (and so the file) exist when no record arrives.
        # Both inputs of the Flatten have its output's type, so one coder: Prism's Flatten gives
        # its inputs the output's coder by coder id, which breaks a shared coder (issue 19).
        keyed = records | "KeyAll" >> beam.Map(_key_all).with_output_types(_KEYED)
        sentinel = records.pipeline | "Sentinel" >> Values([(0, _SENTINEL_VALUE)],
                                                           element_type=_KEYED)
        return ((keyed, sentinel)
                | "Merge" >> beam.Flatten()
                | "GroupAll" >> beam.GroupByKey()
                | "WriteFile" >> beam.ParDo(_WriteSortedLines(self._path, self._sort_key, self._batched,
                                                          self._encoded, self._write_empty)))

    def _expand_parts(self, records):
        if self._batched:
            records = records | "Unbatch" >> beam.FlatMap(_identity)
        return (records
                | "GlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "BatchPerShard" >> BatchPerBundle(_ShardOf(self._shards), key_type=int)
                | "WriteParts" >> beam.ParDo(_WriteParts(
                    parts_directory(self._path), self._sort_key, self._flush_seconds, self._merge)))


def _identity(batch):
    return batch


class _ShardOf:
    def __init__(self, shards):
        self._shards = shards

    def __call__(self, record):
        return shard_of(record, self._shards)
