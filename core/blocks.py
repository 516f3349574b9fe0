"""Input files in blocks: whole lines parsed and grouped per user, one block at a time.

A block is a run of whole lines of a file: bytes that end at a newline (or at the end of the file)
and the number of its first line. :func:`parse_block` turns one block into what the read stage emits:

* each user's profile events as one packed group (:func:`pack_rows`), with the earliest ``ts``;
* the system events;
* a dead letter for every line that is not a record (its source is ``path:line``);
* the counts of lines read, dead-lettered and outside the time range.

A block's result depends on nothing but its bytes, its first line number, the path, the time
range and the allowed ``ts`` skew, so the ranges of a file can be parsed by different workers of a
runner (``transforms.read``). Lines end at ``"\\n"`` only:
a bare CR is JSON whitespace and may sit inside a record. Blank lines (JSON whitespace only) are
skipped; anything else is a record or a dead letter. A line that is not UTF-8 is dead-lettered as
such, with its bytes kept.
"""
from __future__ import annotations

import marshal
import pickle
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

from cdp_activation.core.records import (DEFAULT_MAX_TS_SKEW_US, MIN_TS, InputError, ProfileEvent, SystemEvent,
                          dead_letter, parse_record, time_bounds_error)

#: The smallest block read (``transforms.read`` sizes them by file): large enough that a block's
#: parse dwarfs passing it between processes (1 MiB is about 7.5k events of the benchmark).
BLOCK_BYTES = 1 << 20


class ParsedBlock(NamedTuple):
    #: ((key_field, key), earliest ts, packed rows), users in order of first line
    groups: list[tuple[tuple[str, str], int, bytes]]
    system: list[SystemEvent]    # in line order
    dead: list[dict[str, Any]]   # dead-letter records, in line order
    events: int                  # profile events in the groups
    counts: tuple[int, int, int]  # (lines read, dead-lettered, outside the time range)
    latest_received: int | None = None  # the latest received_at of the records kept (None: none)


#: ``(start, end)`` microseconds of ``ts``, either end None for no bound.
TimeRange = tuple[int | None, int | None]


class ByteStream(Protocol):
    """What :func:`read_blocks` reads: a binary file, or what ``apache_beam.io.filesystems`` opens."""

    def read(self, size: int, /) -> bytes: ...


def read_blocks(stream: ByteStream, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """``(first line number, bytes)`` of consecutive blocks of whole lines of a binary stream.

    A line longer than ``block_bytes`` makes a longer block; nothing is split inside a line.
    """
    lineno, carry = 1, b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            break
        if carry:
            data = carry + data
        cut = data.rfind(b"\n") + 1
        if not cut:
            carry = data
            continue
        block, carry = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
        yield lineno, block
        lineno += block.count(b"\n")
    if carry:
        yield lineno, carry


def block_lines(block: bytes, first_lineno: int) -> Iterator[tuple[int, str | bytes]]:
    """``(line number, line)`` of a block's non-blank lines: ``str``, or the original ``bytes`` of
    a line that is not UTF-8 (so its dead letter says so)."""
    # One decode for the block: "\n" never occurs inside a UTF-8 sequence, and surrogateescape
    # maps each invalid byte on its own, so this equals decoding line by line.
    for lineno, line in enumerate(block.decode("utf-8", "surrogateescape").split("\n"), first_lineno):
        line = line.rstrip("\r")
        if not line.strip(" \t\r"):
            continue  # blank in JSON's sense ("\n" cannot occur here)
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                line = line.encode("utf-8", "surrogateescape")
        yield lineno, line


def parse_block(block: bytes, first_lineno: int, path: str, time_range: TimeRange | None = None,
                max_ts_skew: int = DEFAULT_MAX_TS_SKEW_US) -> ParsedBlock:
    """One block of a file, parsed (see the module docstring)."""
    return parse_rows(block_lines(block, first_lineno), path, time_range, max_ts_skew)


def parse_rows(rows: Iterable[tuple[int, Any]], path: str, time_range: TimeRange | None = None,
               max_ts_skew: int = DEFAULT_MAX_TS_SKEW_US) -> ParsedBlock:
    """``(line number, raw)`` rows (lines, or decoded objects such as Parquet rows) parsed into a
    :class:`ParsedBlock`.

    A record whose time is out of bounds (:func:`core.records.time_bounds_error`: ``ts`` before
    2000, or more than ``max_ts_skew`` after ``received_at``) is a dead letter; the time range
    filters the records that are in bounds.
    """
    start, end = time_range if time_range is not None else (None, None)
    groups, system, dead = {}, [], []
    read = deadlettered = outside = events = 0
    latest = None
    for lineno, raw in rows:
        read += 1
        try:
            record = parse_record(raw)
        except InputError as exc:
            deadlettered += 1
            dead.append(dead_letter(raw, exc, "%s:%d" % (path, lineno)))
            continue
        ts = record.ts
        if ts < MIN_TS or ts - record.received_at > max_ts_skew:
            deadlettered += 1
            dead.append(dead_letter(raw, time_bounds_error(record, max_ts_skew),
                                    "%s:%d" % (path, lineno)))
            continue
        if (start is not None and ts < start) or (end is not None and ts >= end):
            outside += 1
            continue
        if latest is None or record.received_at > latest:
            latest = record.received_at
        if type(record) is ProfileEvent:
            events += 1
            key = (record.key_field, record.key)
            entry = groups.get(key)
            if entry is None:
                groups[key] = [ts, [tuple(record)]]
            else:
                if ts < entry[0]:
                    entry[0] = ts
                entry[1].append(tuple(record))
        else:
            system.append(record)
    return ParsedBlock([(key, earliest, pack_rows(rows)) for key, (earliest, rows) in groups.items()],
                       system, dead, events, (read, deadlettered, outside), latest)


def renumbered(dead: list[dict[str, Any]], path: str, lines: int) -> list[dict[str, Any]]:
    """Dead letters of a block of ``path`` with ``lines`` added to their line numbers: for a block
    parsed with its lines counted from a point ``lines`` lines into the file (a range of the file
    whose earlier lines were not counted when it was parsed)."""
    prefix = len(path) + 1
    return [dict(letter, source="%s:%d" % (path, int(letter["source"][prefix:]) + lines))
            for letter in dead]


def pack_rows(rows: list[Any]) -> bytes:
    """A group of event tuples as one bytes value: what crosses Beam boundaries and sits in state.

    One bytes element per group instead of a list of tuples: ``marshal`` encodes and decodes
    plain values several times faster than Beam's per-field coder. Values it cannot write (e.g. a
    date from a Parquet file) make the group fall back to pickle; the first byte says which.
    """
    try:
        return b"m" + marshal.dumps(rows)
    except ValueError:
        return b"p" + pickle.dumps(rows, protocol=5)


def join_packed(parts: list[bytes]) -> bytes:
    """Packed groups of one user (in order) as one packed group, without unpacking them."""
    return parts[0] if len(parts) == 1 else b"M" + marshal.dumps(parts)


def unpack_rows(group: bytes | list[Any]) -> list[Any]:
    """The event tuples of a group: packed bytes (``pack_rows``, ``join_packed``) or a plain list."""
    if not isinstance(group, bytes):
        return group
    tag, body = group[:1], memoryview(group)[1:]
    if tag == b"m":
        return marshal.loads(body)
    if tag == b"M":
        rows = []
        for part in marshal.loads(body):
            rows.extend(unpack_rows(part))
        return rows
    return pickle.loads(body)
