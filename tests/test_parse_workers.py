"""Parsing input files in blocks, in this process and in worker processes (core.blocks,
transforms._parse_workers): the same records, dead letters and counts as reading the file line by
line, whatever the block size and wherever the blocks are parsed."""
import io
import os
import signal
import types

import pytest
from hypothesis import given, settings, strategies as st

from core.blocks import (block_lines, join_packed, pack_rows, parse_block, parse_rows, read_blocks,
                         unpack_rows)
from core.records import InputError, ProfileEvent, dead_letter, parse_record
from pipelines.common import resolve_parse_processes
from pipelines.options import parse_processes_value
from transforms._parse_workers import ParseWorkerError, ParseWorkers


def reference_lines(data):
    """The line reader the blocks replaced: a text stream split at "\\n" only."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape", newline="\n")
    for lineno, line in enumerate(text, 1):
        line = line.rstrip("\r\n")
        if not line.strip(" \t\r\n"):
            continue
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                line = line.encode("utf-8", "surrogateescape")
        yield lineno, line


def reference_parse(data, path, time_range=None):
    """(rows per user in line order, system events, dead letters, counts), one line at a time."""
    users, system, dead, counts = {}, [], [], [0, 0, 0]
    for lineno, raw in reference_lines(data):
        counts[0] += 1
        try:
            record = parse_record(raw)
        except InputError as exc:
            counts[1] += 1
            dead.append(dead_letter(raw, exc, "%s:%d" % (path, lineno)))
            continue
        if time_range is not None and not time_range[0] <= record.ts < time_range[1]:
            counts[2] += 1
            continue
        if isinstance(record, ProfileEvent):
            users.setdefault((record.key_field, record.key), []).append(tuple(record))
        else:
            system.append(record)
    return users, system, dead, tuple(counts)


def merge(blocks):
    users, earliest, system, dead, counts = {}, {}, [], [], [0, 0, 0]
    for block in blocks:
        for key, first_ts, packed in block.groups:
            rows = unpack_rows(packed)
            users.setdefault(key, []).extend(rows)
            earliest[key] = min(earliest.get(key, first_ts), first_ts)
            assert first_ts == min(r[3] for r in rows)
        system.extend(block.system)
        dead.extend(block.dead)
        counts = [a + b for a, b in zip(counts, block.counts)]
    return users, system, dead, tuple(counts)


_LINES = st.sampled_from([
    '{"user_id":"u1","event":"purchase","ts":100,"properties":{"price":5}}',
    '{"user_id":"u2","event":"view","ts":"2026-11-23T10:00:00Z"}',
    '{"anonymous_id":"a1","event":"view","ts":50}\r',
    '{"user_id":"u1","event":"purchase","ts":10,"properties":{"name":"caf\u00e9"}}',
    '{"kind":"system","id":"s1","ts":70,"data":{"subject_type":"work","verb":"failed"}}',
    "not json", "[1]", "", "   \t", "\r", '{"user_id":"u3"}',
]).map(lambda s: s.encode("utf-8")) | st.sampled_from([b"\xff\xfe{}", b'{"user_id":"\xc3","event":"e","ts":1}'])


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=40), st.booleans(), st.integers(1, 200),
       st.sampled_from([None, (40, 1_000_000)]))
def test_blocks_parse_like_the_line_reader(lines, final_newline, block_bytes, time_range):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    blocks = list(read_blocks(io.BytesIO(data), block_bytes))
    assert b"".join(b for _, b in blocks) == data
    parsed = [parse_block(b, first, "/in/f.jsonl", time_range) for first, b in blocks]
    assert merge(parsed) == reference_parse(data, "/in/f.jsonl", time_range)


def test_block_lines_number_every_line_and_keep_undecodable_bytes():
    block = b'a\n\n  \nb\r\n\xff\n'
    assert list(block_lines(block, 10)) == [(10, "a"), (13, "b"), (14, b"\xff")]


def test_joined_groups_unpack_in_order_and_mix_formats():
    import datetime
    marshalled = parse_rows([(1, '{"user_id":"u","event":"e","ts":1}')], "p").groups[0][2]
    pickled = pack_rows([("u", "e2", "e", 2, 2, "u", None, {"at": datetime.date(2026, 11, 24)}, None)])
    assert marshalled[:1] == b"m" and pickled[:1] == b"p"
    assert join_packed([marshalled]) is marshalled
    joined = join_packed([marshalled, pickled, marshalled])
    assert joined[:1] == b"M"
    assert [r[3] for r in unpack_rows(joined)] == [1_000_000, 2, 1_000_000]


# ------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------

def _sample_file(lines=400):
    rows = []
    for i in range(lines):
        if i % 37 == 0:
            rows.append(b"broken line %d" % i)
        elif i % 53 == 0:
            rows.append(b'{"kind":"system","id":"s%d","ts":%d,"data":{"subject_type":"work","verb":"failed"}}'
                        % (i, i))
        else:
            rows.append(b'{"user_id":"u%d","event":"purchase","ts":%d,"properties":{"n":%d}}'
                        % (i % 7, 1000 - i, i))
    return b"\n".join(rows) + b"\n"


@pytest.fixture
def workers():
    pool = ParseWorkers(2)
    yield pool
    pool.close()


def test_workers_give_the_blocks_back_in_order_as_parsed_here(workers):
    data = _sample_file()
    blocks = list(read_blocks(io.BytesIO(data), 700))
    assert len(blocks) > 6
    here = [parse_block(b, first, "/in/f.jsonl", (0, 900 * 10 ** 6)) for first, b in blocks]
    there = list(workers.parse_blocks(iter(blocks), "/in/f.jsonl", (0, 900 * 10 ** 6)))
    assert there == here
    assert merge(there) == reference_parse(data, "/in/f.jsonl", (0, 900 * 10 ** 6))


def test_a_failing_block_raises_with_the_workers_traceback(workers):
    with pytest.raises(ParseWorkerError) as info:
        list(workers.parse_blocks(iter([(5, b'{"user_id":"u","event":"e","ts":1}\n')]), "/in/f.jsonl",
                                  ("not", "comparable")))
    assert "/in/f.jsonl at line 5" in str(info.value) and "TypeError" in str(info.value)
    # The worker survives its request's failure and parses the next one.
    assert next(workers.parse_blocks(iter([(1, b"x\n")]), "/in/f.jsonl")).counts == (1, 1, 0)


def test_a_worker_that_dies_is_an_error_not_a_short_read(workers):
    next(workers.parse_blocks(iter([(1, b"x\n")]), "/in/f.jsonl"))  # starts a worker
    for child in workers._children:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with pytest.raises(ParseWorkerError, match="exited with code -9"):
        list(workers.parse_blocks(iter([(1, b"x\n")] * 2), "/in/f.jsonl"))


def test_close_ends_the_workers():
    pool = ParseWorkers(2)
    list(pool.parse_blocks(iter([(1, b"x\n")] * 4), "/in/f.jsonl"))
    children = list(pool._children)
    assert children
    pool.close()
    assert all(child.returncode == 0 for child in children)


def test_parse_file_with_workers_emits_what_it_emits_in_process(monkeypatch):
    from transforms import read
    monkeypatch.setattr(read, "BLOCK_BYTES", 500)
    monkeypatch.setattr(read, "CHUNK_LINES", 150)
    data = _sample_file(1200)

    def run(processes):
        fn = read._ParseFile((0, 990 * 10 ** 6), 0.0, processes)
        fn.setup()
        readable = types.SimpleNamespace(
            metadata=types.SimpleNamespace(path="/in/f.jsonl", size_in_bytes=len(data)),
            open=lambda: io.BytesIO(data))
        try:
            outputs = list(fn.process(readable))
        finally:
            fn.teardown()
        return [(getattr(o, "tag", None), getattr(o, "value", o)) for o in outputs], fn

    here, _ = run(0)
    there, fn = run(2)
    assert there == here
    assert fn._workers is None  # teardown closed them
    profile = [v for tag, v in here if tag is None]
    users = reference_parse(data, "/in/f.jsonl", (0, 990 * 10 ** 6))[0]
    assert len(profile) > len(users)  # flushed in chunks
    assert sum(len(unpack_rows(v[1])) for v in profile) == sum(len(rows) for rows in users.values())


def test_parse_processes_option_and_its_resolution():
    assert parse_processes_value("auto") == "auto" and parse_processes_value("3") == 3
    for bad in ("-1", "two"):
        with pytest.raises(ValueError):
            parse_processes_value(bad)
    cpus = os.cpu_count() or 1
    assert resolve_parse_processes("auto", None) == cpus
    assert resolve_parse_processes("auto", "DirectRunner") == cpus
    assert resolve_parse_processes("auto", "DataflowRunner") == 0
    assert resolve_parse_processes("auto", "FlinkRunner") == 0
    assert resolve_parse_processes(0, "DirectRunner") == 0
    assert resolve_parse_processes(3, "DataflowRunner") == 3
