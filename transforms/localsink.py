"""Local sinks: one JSON Lines file per destination, written once at the end of the data.

Local runs write what a destination would have received to ``--output_dir``. Lines are sorted so
that two runs over the same input give byte-identical files, and the file is created (empty) even
when nothing reaches it, so users can tell "nothing to send" from "not run".
"""
import json
import os

import apache_beam as beam
import orjson


#: Marks the group of an empty PCollection; compared by value because elements are re-decoded.
_SENTINEL_VALUE = "__localsink_sentinel__"


def _encode_line(record):
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # what orjson refuses (integers beyond 64 bits, ...) the stdlib writes
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _default_sort_key(record):
    return json.dumps(record, sort_keys=True)


class _WriteSortedLines(beam.DoFn):
    def __init__(self, path, sort_key, batched):
        self._path = path
        self._sort_key = sort_key
        self._batched = batched

    def process(self, element):
        _, records = element
        records = (r for r in records if r != _SENTINEL_VALUE)
        if self._batched:
            records = (r for batch in records for r in batch)
        records = sorted(records, key=self._sort_key)
        directory = os.path.dirname(self._path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        tmp = self._path + ".tmp"
        with open(tmp, "wb") as fh:
            for record in records:
                fh.write(_encode_line(record))
        os.replace(tmp, self._path)  # a reader never sees a half-written file
        yield self._path, len(records)


class WriteJsonLinesFile(beam.PTransform):
    """Writes a PCollection of JSON-serialisable records to one local file, sorted.

    With ``batched=True`` each element is a list of records (fewer elements to shuffle).
    Returns a PCollection with one ``(path, count)`` element once the file is in place.
    """

    def __init__(self, path, sort_key=None, batched=False, label=None):
        super().__init__(label)
        self._path = path
        self._sort_key = sort_key or _default_sort_key
        self._batched = batched

    def expand(self, records):
        # A GroupByKey on one key rather than a side input: the FnApiRunner repeats side-input
        # contents in pipelines whose timers make it loop over stages. The sentinel makes the
        # group (and so the file) exist when no record arrives.
        keyed = records | "KeyAll" >> beam.Map(lambda r: (0, r))
        sentinel = records.pipeline | "Sentinel" >> beam.Create([(0, _SENTINEL_VALUE)])
        return ((keyed, sentinel)
                | "Merge" >> beam.Flatten()
                | "GroupAll" >> beam.GroupByKey()
                | "WriteFile" >> beam.ParDo(_WriteSortedLines(self._path, self._sort_key, self._batched)))
