"""Reading a file in byte ranges (transforms.read._ParseFile, a splittable DoFn): whatever the
ranges, and wherever a runner splits a range while it is read, every line is read once, by the
range its first byte lies in, and gives the records and dead letters (with their ``path:line``) of
one range over the whole file."""
import gzip
import io
import types

import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from hypothesis import given, settings, strategies as st

from cdp_activation.core.blocks import unpack_rows
from tests.test_read_blocks import _LINES, reference_parse
from cdp_activation.transforms import read

PATH = "/in/f.jsonl"
#: Epoch seconds of the records' times (2026-11-18): records before 2000 are dead letters.
BASE = 1795000000
TIME_RANGE = ((BASE + 20) * 10 ** 6, (BASE + 900) * 10 ** 6)


def _file(path, data):
    return types.SimpleNamespace(
        metadata=types.SimpleNamespace(path=path, size_in_bytes=len(data)),
        open=lambda: io.BytesIO(data))


class _Counter:
    def __init__(self):
        self.total = 0

    def inc(self, n=1):
        self.total += n


def _fn(split_bytes=read.SPLIT_BYTES, time_range=TIME_RANGE):
    fn = read._ParseFile(time_range, split_bytes=split_bytes)
    fn._records_read, fn._deadlettered, fn._out_of_range = _Counter(), _Counter(), _Counter()
    return fn


def _collect(outputs, into):
    """Adds a range's outputs to ``into``: events per user, system events, dead letters."""
    for output in outputs:
        tag = getattr(output, "tag", None)
        value = output.value
        if tag is None:
            key, packed = value
            into["users"].setdefault(key, []).extend(unpack_rows(packed))
        elif tag == read.SYSTEM:
            into["system"].append(value.value)
        elif tag == read.DEADLETTER:
            into["dead"].append(value)
        elif tag == read.LATEST:
            into["latest"].append(value)


def _empty():
    return {"users": {}, "system": [], "dead": [], "latest": []}


def _read(fn, readable, restrictions, tracker=OffsetRestrictionTracker):
    got = _empty()
    for restriction in restrictions:
        t = tracker(restriction)
        _collect(fn.process(readable, t), got)
        t.check_done()
    return got


def _canonical(got, fn):
    """What must not depend on the ranges: each user's events (in line order within a range, so
    compared sorted), the system events and dead letters (each in line order: sorted by line), the
    counts, and the latest ``received_at``."""
    line = lambda letter: int(letter["source"].rsplit(":", 1)[1])  # noqa: E731
    return ({key: sorted(rows) for key, rows in got["users"].items()},
            sorted(got["system"], key=lambda e: (e.ts, e.id)),
            sorted(got["dead"], key=line),
            (fn._records_read.total, fn._deadlettered.total, fn._out_of_range.total),
            max(got["latest"], default=None))


def _reference(data, fn):
    users, system, dead, counts = reference_parse(data, PATH, fn._time_range)
    return ({key: sorted(rows) for key, rows in users.items()},
            sorted(system, key=lambda e: (e.ts, e.id)), dead, counts)


def _event(user, second, extra=""):
    return ('{"user_id":"%s","event":"purchase","ts":%d%s}' % (user, BASE + second, extra)).encode()


#: A file with a bit of everything: a line far longer than the ranges (it crosses several
#: boundaries), bad lines, a system event, blank lines, CRLF, a line that is not UTF-8, a record
#: outside the time range, and no final newline.
SAMPLE = b"\n".join([
    _event("u1", 100), b"not json", _event("u2", 50, ',"properties":{"pad":"%s"}' % ("x" * 300)),
    b"", b"   ", _event("u1", 30) + b"\r",
    b'{"kind":"system","id":"s1","ts":%d,"data":{"subject_type":"work","verb":"failed"}}' % (BASE + 70),
    b"\xff\xfe{}", _event("u3", 5), _event("u3", 1000), b"[1]", _event("u2", 60),
    _event("u4", 400, ',"received_at":%d' % (BASE - 10 ** 6)),  # ts 11 days after received_at
    b"broken {", _event("u1", 200)])


@pytest.mark.parametrize("split_bytes", [1, 2, 3, 7, 16, 40, 64, 100, 333, len(SAMPLE) // 2])
def test_a_file_split_into_ranges_reads_as_one_range(split_bytes):
    whole_fn = _fn()
    readable = _file(PATH, SAMPLE)
    whole_restriction = whole_fn.initial_restriction(readable)
    assert whole_restriction == OffsetRange(0, len(SAMPLE))
    assert list(whole_fn.split(readable, whole_restriction)) == [whole_restriction]
    whole = _canonical(_read(whole_fn, readable, [whole_restriction]), whole_fn)

    fn = _fn(split_bytes)
    ranges = list(fn.split(readable, fn.initial_restriction(readable)))
    assert len(ranges) > 1
    assert [r.start for r in ranges[1:]] == [r.stop for r in ranges[:-1]]
    assert (ranges[0].start, ranges[-1].stop) == (0, len(SAMPLE))
    assert _canonical(_read(fn, readable, ranges), fn) == whole

    # And both are what a line-by-line reader gives: the dead letters name their file's line.
    reference = _reference(SAMPLE, fn)
    assert whole[:4] == reference
    sources = [letter["source"] for letter in whole[2]]
    assert sources == ["%s:%d" % (PATH, n) for n in (2, 8, 11, 13, 14)]
    assert whole[3] == (13, 5, 2)
    # The last line, without a final newline, is read.
    assert not SAMPLE.endswith(b"\n")
    assert max(row[3] for row in whole[0][("user_id", "u1")]) == (BASE + 200) * 10 ** 6


class _SplittingTracker(OffsetRestrictionTracker):
    """A tracker whose range a runner splits while it is read: before the ``at``-th claim, it
    keeps ``fraction`` of what is left (``try_split``, as a runner's split request does)."""

    def __init__(self, restriction, at, fraction):
        super().__init__(restriction)
        self._claims, self._at, self._fraction = 0, at, fraction
        self.residuals = []

    def try_claim(self, position):
        if self._claims == self._at:
            split = self.try_split(self._fraction)
            if split is not None:
                self.residuals.append(split[1])
        self._claims += 1
        return super().try_claim(position)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=30), st.booleans(), st.integers(1, 120), st.integers(1, 50),
       st.integers(0, 4), st.sampled_from([0.0, 0.01, 0.3, 0.5, 0.9]),
       st.sampled_from([None, TIME_RANGE]))
def test_ranges_split_while_they_are_read_lose_and_repeat_nothing(
        lines, final_newline, split_bytes, block, at, fraction, time_range):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    fn = _fn(split_bytes, time_range)
    readable = _file(PATH, data)
    todo = [(r, at) for r in fn.split(readable, fn.initial_restriction(readable))]
    got = _empty()
    with pytest.MonkeyPatch.context() as patch:
        # Small blocks, so a range holds several and a split can come between their claims.
        patch.setattr(read, "block_bytes", lambda size: block)
        while todo:
            restriction, split_at = todo.pop(0)
            tracker = _SplittingTracker(restriction, split_at, fraction)
            _collect(fn.process(readable, tracker), got)
            tracker.check_done()
            # A residual is read like any range, and split again a claim later (a split before
            # any claim can give back the whole range as the residual).
            todo.extend((residual, split_at + 1) for residual in tracker.residuals)
    assert _canonical(got, fn)[:4] == _reference(data, fn)


def test_a_range_with_no_line_starting_in_it_reads_nothing_and_is_done():
    line = _event("u1", 100, ',"properties":{"pad":"%s"}' % ("x" * 200)) + b"\n"
    data = line + _event("u2", 100) + b"\n"
    fn = _fn()
    readable = _file(PATH, data)
    inside = OffsetRange(10, 100)  # within the first line: the line is the first range's
    tracker = OffsetRestrictionTracker(inside)
    got = _empty()
    _collect(fn.process(readable, tracker), got)
    tracker.check_done()
    assert got == _empty()
    rest = OffsetRestrictionTracker(OffsetRange(100, len(data)))
    _collect(fn.process(readable, rest), got)
    assert list(got["users"]) == [("user_id", "u2")]


@pytest.mark.parametrize("name", ["f.jsonl.gz", "f.parquet"])
def test_compressed_and_parquet_files_are_one_range_read_whole(name):
    fn = _fn(1)
    readable = _file("/in/" + name, b"x" * 1000)
    restriction = fn.initial_restriction(readable)
    assert restriction == OffsetRange(0, 1)
    assert list(fn.split(readable, restriction)) == [restriction]
    assert fn.restriction_size(readable, restriction) == 1000
    # Split off before it was claimed, the empty primary reads nothing: the residual has it all.
    tracker = OffsetRestrictionTracker(restriction)
    primary, residual = tracker.try_split(0.0)
    assert (primary, residual) == (OffsetRange(0, 0), OffsetRange(0, 1))
    assert list(fn.process(readable, tracker)) == []
    tracker.check_done()


def test_the_pipeline_reads_split_plain_and_whole_gzip_files_as_the_line_reader(tmp_path):
    """On the DirectRunner: a file split into ranges of 64 bytes and the same lines gzipped give
    the line reader's records and dead letters. The gzipped file is one range and the plain one
    several: each range with records gives one ``latest_received`` value."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    plain, zipped = tmp_path / "f.jsonl", tmp_path / "f.jsonl.gz"
    plain.write_bytes(SAMPLE)
    zipped.write_bytes(gzip.compress(SAMPLE))
    users, system, dead = [], [], []
    for path in (plain, zipped):
        by_user, events, letters, _ = reference_parse(SAMPLE, str(path), TIME_RANGE)
        users += [(key, row) for key, rows in by_user.items() for row in rows]
        system += [(e.id, e.ts) for e in events]
        dead += letters

    with beam.Pipeline(runner="DirectRunner") as p:
        records = p | read.ReadRecords(str(tmp_path / "f.jsonl*"), TIME_RANGE, split_bytes=64)
        events = records[read.PROFILE] | "Rows" >> beam.FlatMap(
            lambda group: [(group[0], row) for row in unpack_rows(group[1])])
        assert_that(events, equal_to(users), label="Events")
        assert_that(records[read.SYSTEM] | "Ids" >> beam.Map(lambda e: (e.id, e.ts)),
                    equal_to(system), label="System")
        assert_that(records[read.DEADLETTER], equal_to(dead), label="Dead")
        assert_that(records[read.LATEST] | beam.combiners.Count.Globally()
                    | beam.Map(lambda n: n > 2), equal_to([True]), label="Ranges")
