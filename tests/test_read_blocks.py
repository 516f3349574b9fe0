"""Parsing input files in blocks (core.blocks): the same records, dead letters and counts as a
line-by-line reader, whatever the block size."""
import io

from hypothesis import given, settings, strategies as st

from cdp_activation.core.blocks import (block_lines, join_packed, pack_rows, parse_block, parse_rows, read_blocks,
                         unpack_rows)
from cdp_activation.core.records import InputError, ProfileEvent, dead_letter, parse_record, time_bounds_error


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
            reason = time_bounds_error(record)
            if reason is not None:
                raise InputError(reason)
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
    '{"user_id":"u1","event":"purchase","ts":1795000100,"properties":{"price":5}}',
    '{"user_id":"u2","event":"view","ts":"2026-11-23T10:00:00Z"}',
    '{"anonymous_id":"a1","event":"view","ts":50}\r',  # before 2000: a dead letter
    '{"user_id":"u1","event":"purchase","ts":1795000010,"properties":{"name":"caf\u00e9"}}',
    '{"kind":"system","id":"s1","ts":1795000070,"data":{"subject_type":"work","verb":"failed"}}',
    "not json", "[1]", "", "   \t", "\r", '{"user_id":"u3"}',
]).map(lambda s: s.encode("utf-8")) | st.sampled_from([b"\xff\xfe{}", b'{"user_id":"\xc3","event":"e","ts":1}'])


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=40), st.booleans(), st.integers(1, 200),
       st.sampled_from([None, (1795000040 * 10 ** 6, 1795000080 * 10 ** 6)]))
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
    marshalled = parse_rows([(1, '{"user_id":"u","event":"e","ts":1795000001}')], "p").groups[0][2]
    pickled = pack_rows([("u", "e2", "e", 2, 2, "u", None, {"at": datetime.date(2026, 11, 24)}, None)])
    assert marshalled[:1] == b"m" and pickled[:1] == b"p"
    assert join_packed([marshalled]) is marshalled
    joined = join_packed([marshalled, pickled, marshalled])
    assert joined[:1] == b"M"
    assert [r[3] for r in unpack_rows(joined)] == [1795000001_000_000, 2, 1795000001_000_000]


def test_a_file_is_read_in_a_fixed_number_of_blocks_within_bounds():
    """A parsed block holds a group per user in it: a fixed number of blocks per range keeps the
    merges linear in the users where fixed-size blocks made them grow as users x blocks."""
    from cdp_activation.transforms.read import BLOCKS_PER_FILE, MAX_BLOCK_BYTES, block_bytes
    assert block_bytes(0) == block_bytes(10_000) == 1 << 20
    for size in (80 << 20, 100 << 20, 8 * MAX_BLOCK_BYTES):
        assert -(-size // block_bytes(size)) == BLOCKS_PER_FILE
    assert block_bytes(1 << 40) == MAX_BLOCK_BYTES
