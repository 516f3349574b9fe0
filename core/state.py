"""The versioned, keyed form of a user's engine state (docs/STATE.md).

The engine works on positional lists (a count per counter spec, a membership per audience, in the
config's order) because that is what its hot loop indexes. What is saved, in Beam state or in a
``--state`` snapshot, is keyed by ids that do not depend on positions:

* audiences by their ``id`` from the config;
* counter specs (what an ``{event: ...}`` node counts: event name, ``where`` and ``within``) by
  :func:`spec_id`, a hash of their canonical form, shared by every node that counts the same thing;
* each audience's condition by :func:`condition_key`, a hash of its canonical JSON, so that a
  restore can tell which audiences were evaluated under the condition they have now;
* computed traits' entries by their definition's id (``core.computed.computed_id``), so that a
  renamed trait keeps its entries and an edited one starts afresh.

A saved state is a :data:`STATE_VERSION` document (a plain dict of JSON-like values, see
:func:`new_document`). ``core.engine.Engine.state_document`` and ``Engine.state_from_document``
translate between it and the engine's positional state under the engine's configuration;
:func:`encode_document` / :func:`decode_document` give its bytes for Beam state.
"""
from __future__ import annotations

import hashlib
import json
import marshal
import pickle
from collections.abc import Mapping
from typing import Any, TypedDict, cast

#: The version of the saved state's layout this code writes. Version 2 added ``computed``.
STATE_VERSION = 2
#: The versions this code reads: a version-1 state has no computed traits' entries (every
#: computed trait starts from no events).
READ_VERSIONS = (1, 2)
#: Bytes of an encoded document start with this magic and the version byte.
_MAGIC = b"S"
_FIELDS = ("version", "clock", "first_ts", "last_ts", "max_received", "traits", "members",
           "audiences", "counts", "seen", "computed")
#: The fields of each version read, in their encoded order.
_VERSION_FIELDS = {1: _FIELDS[:-1], 2: _FIELDS}
#: Optional fields (identity stitching, docs/decisions/0004): an anonymous profile merged into a
#: known user keeps the user id and the merge time. Present in a document only when set; encoded
#: after the version's fields, so a state without them has the bytes it always had.
LINK_FIELDS = ("merged_into", "merged_at")


class StateFormatError(ValueError):
    """A saved state this code cannot read (corrupt, or of another version)."""


class StateDocument(TypedDict):
    """A saved user state (version :data:`STATE_VERSION`): plain, JSON-like values keyed by ids."""
    version: int
    clock: int                         # microseconds; every event up to here has been applied
    first_ts: int | None
    last_ts: int | None
    max_received: int
    traits: dict[str, Any]
    members: dict[str, int]            # audience id -> enter time
    audiences: dict[str, str]          # audience id -> condition key it was evaluated under
    counts: dict[str, int | list[int]]  # spec id -> count (all time) or event times (window)
    seen: dict[str | bytes, int]       # dedupe key -> received_at
    computed: dict[str, Any]           # computed trait id -> entries or aggregate (version 2)


def _canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _hash(text):
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def spec_id(event: str, where_key: str, within: int | None) -> str:
    """The stable id of a counter spec: the same event name, ``where`` tree (its canonical JSON,
    ``CounterSpec.where_key``) and ``within`` (microseconds, None for all time) give the same id
    in any config and at any position."""
    return _hash(_canonical(["spec", event, where_key, within]))


def condition_key(condition: Any) -> str:
    """A hash of an audience condition's canonical JSON (key order and spacing do not matter)."""
    return _hash(_canonical(["condition", condition]))


def encode_document(document: StateDocument) -> bytes:
    """A state document as bytes: ``b"S"``, the version byte, then ``m`` and the fields in
    :data:`_FIELDS` order marshalled (plain values), or ``p`` and a pickle when a trait holds a
    value marshal cannot write (e.g. a date from a Parquet input)."""
    fields: Mapping[str, Any] = document  # read by the names in _FIELDS
    values = tuple(fields[f] for f in _FIELDS)
    if fields.get("merged_into") is not None:
        values += tuple(fields[f] for f in LINK_FIELDS)
    try:
        body = b"m" + marshal.dumps(values, 2)  # 2: no references, so equal states give equal bytes
    except ValueError:
        body = b"p" + pickle.dumps(values, protocol=5)
    return _MAGIC + bytes((STATE_VERSION,)) + body


def decode_document(data: bytes) -> StateDocument:
    """The document of :func:`encode_document` bytes; :class:`StateFormatError` if they are not."""
    if len(data) < 3 or data[:1] != _MAGIC:
        raise StateFormatError("not a saved user state")
    if data[1] not in READ_VERSIONS:
        raise StateFormatError("user state version %d, this code reads versions %s"
                               % (data[1], ", ".join(map(str, READ_VERSIONS))))
    fields = _VERSION_FIELDS[data[1]]
    tag, body = data[2:3], memoryview(data)[3:]
    try:
        values = marshal.loads(body) if tag == b"m" else pickle.loads(body) if tag == b"p" else None
    except Exception as exc:
        raise StateFormatError("corrupt user state: %s" % exc) from None
    if not isinstance(values, tuple) or len(values) not in (len(fields),
                                                            len(fields) + len(LINK_FIELDS)):
        raise StateFormatError("corrupt user state")
    return upgrade_document(dict(zip(fields + LINK_FIELDS, values)))


def upgrade_document(document: dict[str, Any]) -> StateDocument:
    """A document of any version read, as a :data:`STATE_VERSION` one (``document`` itself when
    it is one): a version-1 state gets no computed entries."""
    if document.get("version") == 1:
        document = dict(document, version=STATE_VERSION, computed={})
    return cast(StateDocument, document)


def check_document(document: object) -> None:
    """Raises :class:`StateFormatError` unless ``document`` has the shape of a state of a version
    this code reads (:data:`READ_VERSIONS`)."""
    if not isinstance(document, dict):
        raise StateFormatError("a user state must be an object")
    if document.get("version") not in READ_VERSIONS:
        raise StateFormatError("user state version %r, this code reads versions %s"
                               % (document.get("version"), ", ".join(map(str, READ_VERSIONS))))
    missing = [f for f in _VERSION_FIELDS[document["version"]] if f not in document]
    if missing:
        raise StateFormatError("user state lacks %s" % ", ".join(missing))
    for name in ("clock", "max_received"):
        if not isinstance(document[name], int):
            raise StateFormatError("user state field %s must be an integer" % name)
    for name in ("traits", "members", "audiences", "counts", "seen", "computed"):
        if name in document and not isinstance(document[name], dict):
            raise StateFormatError("user state field %s must be an object" % name)
    if document.get("merged_into") is not None and not (
            isinstance(document["merged_into"], str) and isinstance(document.get("merged_at"), int)):
        raise StateFormatError("user state link: merged_into must be a string and merged_at an "
                               "integer")
    for value in document["counts"].values():
        if not (isinstance(value, int) or (isinstance(value, list)
                                           and all(isinstance(t, int) for t in value))):
            raise StateFormatError("user state counts must be integers or lists of times")
