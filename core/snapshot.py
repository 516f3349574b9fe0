"""The ``--state`` snapshot: a bounded run's state as one Parquet file (docs/STATE.md).

One row per user (``kind = "user"``) with the fields of its ``core.state`` document as columns,
the events dated after the run's as-of time that wait for a later run (``pending``), and one row
per system-event id still in the 24-hour dedupe memory (``kind = "system_event"``). The file's
key-value metadata holds the format name, :data:`SNAPSHOT_VERSION`, the account and the run's
as-of time. Nested values (traits, memberships, counts) are canonical JSON strings, so any Parquet
reader can inspect a snapshot.

Pure (pyarrow, no Beam): the pipeline reads and writes the bytes through Beam's file systems.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.state import (READ_VERSIONS, StateDocument, StateFormatError, check_document,
                        upgrade_document)

FORMAT = "activation-audience-state"
#: The snapshot layout's version; a reader refuses any other.
SNAPSHOT_VERSION = 1
USER, SYSTEM_EVENT = "user", "system_event"

SCHEMA = pa.schema([
    ("kind", pa.string()),           # "user" | "system_event"
    ("key_field", pa.string()),      # user_id | anonymous_id (null for a system event)
    ("key", pa.string()),            # the user key, or the system event id
    ("state_version", pa.int32()),   # core.state.STATE_VERSION of the user's document
    ("clock", pa.int64()),           # microseconds; every event up to here has been applied
    ("first_ts", pa.int64()),
    ("last_ts", pa.int64()),
    ("max_received", pa.int64()),    # a system event: the received_at its dedupe run started at
    ("traits", pa.string()),         # JSON object
    ("members", pa.string()),        # JSON object: audience id -> enter time
    ("audiences", pa.string()),      # JSON object: audience id -> condition key it was evaluated under
    ("counts", pa.string()),         # JSON object: spec id -> count (all time) or [ts, ...] (window)
    ("seen", pa.string()),           # JSON object: "s:<event_id>" or "h:<hex hash>" -> received_at
    ("pending", pa.string()),        # JSON list of waiting events (objects of ProfileEvent fields)
    ("computed", pa.string()),       # JSON object: computed trait id -> entries or aggregate
    ("merged_into", pa.string()),    # identity stitching: the user an anonymous profile merged into
    ("merged_at", pa.int64()),       # and when (both null: not merged)
])
#: Columns a snapshot written before they existed lacks (read as empty).
_OPTIONAL_COLUMNS = ("computed", "merged_into", "merged_at")
_USER_FIELDS = ("clock", "first_ts", "last_ts", "max_received")


class SnapshotError(ValueError):
    """A snapshot this code refuses (not a snapshot, corrupt, another version or account)."""


def _json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _seen_key(key):
    return "h:" + key.hex() if isinstance(key, bytes) else "s:" + key


def _seen_from(text):
    return bytes.fromhex(text[2:]) if text.startswith("h:") else text[2:]


def user_row(key_field: str, key: str, document: StateDocument,
             pending_rows: Sequence[Sequence[Any]] | None = None) -> dict[str, Any]:
    """A snapshot row of one user: its ``core.state`` document and its waiting event tuples."""
    row = {"kind": USER, "key_field": key_field, "key": key, "state_version": document["version"],
           "traits": _json(document["traits"]), "members": _json(document["members"]),
           "audiences": _json(document["audiences"]), "counts": _json(document["counts"]),
           "seen": _json({_seen_key(k): v for k, v in document["seen"].items()}),
           "pending": _json([dict(zip(ProfileEvent._fields, r)) for r in pending_rows])
           if pending_rows else None,
           "computed": _json(document.get("computed") or {}),
           "merged_into": document.get("merged_into"), "merged_at": document.get("merged_at")}
    fields: Mapping[str, Any] = document  # read by the names in _USER_FIELDS
    for name in _USER_FIELDS:
        row[name] = fields[name]
    return row


def system_event_row(event_id: str, received_at: int) -> dict[str, Any]:
    """A snapshot row of the system-event dedupe memory: the id and its run's first received_at."""
    return {"kind": SYSTEM_EVENT, "key": event_id, "max_received": received_at}


def write_snapshot(stream: BinaryIO, rows: Iterable[Mapping[str, Any]], account: str,
                   as_of: int | None) -> None:
    """Writes ``rows`` (:func:`user_row`, :func:`system_event_row`) as a Parquet snapshot to the
    binary ``stream``, sorted by (kind, key field, key) so that equal states give equal files."""
    rows = sorted(rows, key=lambda r: (r["kind"], r.get("key_field") or "", r["key"]))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.replace_schema_metadata({
        "format": FORMAT, "version": str(SNAPSHOT_VERSION), "account": account,
        "as_of": "" if as_of is None else str(as_of)})
    pq.write_table(table, stream, compression="zstd")


class Snapshot:
    """A snapshot read back: its as-of time, account, user rows and system-event memory."""

    def __init__(self, as_of: int | None, account: str | None,
                 users: list[tuple[tuple[str, str], StateDocument, list[tuple[Any, ...]]]],
                 system_events: list[tuple[str, int]]) -> None:
        self.as_of = as_of                  # int or None
        self.account = account
        self.users = users                  # [((key_field, key), document, [event tuples])]
        self.system_events = system_events  # [(id, received_at)]


def read_snapshot(data: bytes) -> Snapshot:
    """A :class:`Snapshot` from a file's bytes; :class:`SnapshotError` with one line if the bytes
    are not a snapshot this code reads. Every row is checked, so nothing half-read goes on."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow's own message names what is wrong with the file
        raise SnapshotError("not a Parquet file (%s)" % str(exc).splitlines()[0]) from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != FORMAT:
        raise SnapshotError("not an audience state snapshot (format %r)" % meta.get("format"))
    if meta.get("version") != str(SNAPSHOT_VERSION):
        raise SnapshotError("snapshot version %s, this code reads version %d"
                            % (meta.get("version"), SNAPSHOT_VERSION))
    missing = [f.name for f in SCHEMA if f.name not in table.column_names
               and f.name not in _OPTIONAL_COLUMNS]
    if missing:
        raise SnapshotError("snapshot lacks column(s) %s" % ", ".join(missing))
    as_of = int(meta["as_of"]) if meta.get("as_of") else None
    users, system_events = [], []
    present = [f.name for f in SCHEMA if f.name in table.column_names]
    for n, row in enumerate(table.select(present).to_pylist()):
        try:
            if row["kind"] == SYSTEM_EVENT:
                if not isinstance(row["key"], str) or not isinstance(row["max_received"], int):
                    raise StateFormatError("a system event row needs key and max_received")
                system_events.append((row["key"], row["max_received"]))
                continue
            if row["kind"] != USER:
                raise StateFormatError("unknown kind %r" % row["kind"])
            if row["state_version"] not in READ_VERSIONS:
                raise StateFormatError("user state version %s, this code reads versions %s"
                                       % (row["state_version"],
                                          ", ".join(map(str, READ_VERSIONS))))
            if row["key_field"] not in ("user_id", "anonymous_id") or not row["key"]:
                raise StateFormatError("key_field and key must name the user")
            document = {"version": row["state_version"]}
            for name in _USER_FIELDS:
                document[name] = row[name]
            for name in ("traits", "members", "audiences", "counts"):
                document[name] = json.loads(row[name])
            document["seen"] = {_seen_from(k): v for k, v in json.loads(row["seen"]).items()}
            if document["version"] >= 2:
                document["computed"] = json.loads(row.get("computed") or "{}")
            if row.get("merged_into") is not None:
                document["merged_into"] = row["merged_into"]
                document["merged_at"] = row.get("merged_at")
            check_document(document)
            document = upgrade_document(document)
            pending = [tuple(e[f] for f in ProfileEvent._fields)
                       for e in json.loads(row["pending"])] if row["pending"] else []
        except (StateFormatError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SnapshotError("row %d: %s" % (n, exc)) from None
        users.append(((row["key_field"], row["key"]), document, pending))
    return Snapshot(as_of, meta.get("account"), users, system_events)
