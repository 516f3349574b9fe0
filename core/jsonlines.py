"""JSON Lines encoding shared by the local sinks and the steps that build their lines."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson

_Record = TypeVar("_Record")
_Key = TypeVar("_Key")


def json_line(record: Any) -> bytes:
    """One record (any JSON value a sink writes: a message, a dead letter...) as a JSON line
    (bytes, ending in a newline)."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # what orjson refuses (integers beyond 64 bits, ...) the stdlib writes
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def encode_sorted_lines(records: Iterable[_Record], sort_key: Callable[[_Record], _Key]
                        ) -> list[tuple[_Key, bytes]]:
    """Records as ``(sort key, JSON line bytes)`` pairs, for ``WriteJsonLinesFile(encoded=True)``.

    Encoding where the records are made keeps only compact bytes in the sink's single group,
    instead of every record decoded back into dicts at once (the peak memory of a large replay).
    """
    return [(sort_key(r), json_line(r)) for r in records]
