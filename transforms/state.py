"""``--state``: a bounded run's snapshot read at its start and written at its end (docs/STATE.md).

``ReadStateSnapshot`` turns a snapshot (``core.snapshot``) into what the evaluation and the
system-event dedupe take in: each user's saved state as a ``(user, RESTORED + state bytes)``
group, its waiting events as a packed group, and the remembered system-event ids.
``WriteStateSnapshot`` collects every user's final state (the evaluation's ``state`` output) and
the dedupe memory into one Parquet file at a temporary name; the launcher renames it over the
snapshot once the whole run has succeeded (``commit_snapshot``), so a failed run leaves the
previous snapshot as it was. Both go through ``apache_beam.io.filesystems``, so the URI may be a
local path or any Beam file system (``azfs://``, ``gs://``...).
"""
import io
import logging
from typing import Any, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import DoOutputsTuple
from apache_beam.transforms.window import GlobalWindow
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.core.blocks import pack_rows, unpack_rows
from cdp_activation.core.history import RESTORED
from cdp_activation.core.records import DEDUPE_HORIZON_US
from cdp_activation.core.snapshot import Snapshot, SnapshotError, read_snapshot, system_event_row, user_row, write_snapshot
from cdp_activation.core.state import decode_document, encode_document
from cdp_activation.transforms.live import Values
from cdp_activation.transforms.outputs import exists

_LOGGER = logging.getLogger(__name__)

USERS, SYSTEM_MEMORY = "users", "system_memory"


def load_snapshot(uri: str) -> Optional[Snapshot]:
    """The snapshot at ``uri`` (``core.snapshot.Snapshot``), or None if there is none yet.
    Raises ``SnapshotError`` (one line) for a file that is not a snapshot this code reads."""
    if not exists(uri):  # not FileSystems.exists: Beam's azfs raises for a missing blob
        return None
    try:
        with FileSystems.open(uri) as stream:
            data = stream.read()
    except Exception as exc:
        raise SnapshotError("cannot read: %s" % str(exc).splitlines()[0]) from None
    return read_snapshot(data)


def temporary_uri(uri: str, run_id: str) -> str:
    return "%s.tmp-%s" % (uri, run_id)


def commit_snapshot(temporary: str, uri: str) -> None:
    """Moves the run's snapshot over the previous one (a rename: readers see one or the other)."""
    if exists(uri):
        try:
            FileSystems.rename([temporary], [uri])
            return
        except Exception:  # a file system whose rename will not replace: delete, then rename
            FileSystems.delete([uri])
    FileSystems.rename([temporary], [uri])


class _ReadSnapshotFn(beam.DoFn):
    def __init__(self, uri):
        self._uri = uri

    def process(self, _):
        snapshot = load_snapshot(self._uri)
        if snapshot is None:
            return
        for (key_field, key), document, pending in snapshot.users:
            # Stamped with the user's clock: a real time, where the timer of a stateful step that
            # takes it in may be set.
            stamp = Timestamp(micros=max(document["clock"], 0))
            user = (key_field, key)
            yield WindowedValue((user, RESTORED + encode_document(document)), stamp,
                                [GlobalWindow()])
            if pending:
                yield WindowedValue((user, pack_rows(pending)), stamp, [GlobalWindow()])
        for event_id, received_at in snapshot.system_events:
            yield beam.pvalue.TaggedOutput(SYSTEM_MEMORY, (event_id, received_at))


class ReadStateSnapshot(beam.PTransform):
    """The snapshot at ``uri`` as ``users`` (groups for the evaluation) and ``system_memory``
    (``(system event id, received_at)``); both empty if there is no snapshot yet."""

    def __init__(self, uri: str, label: Optional[str] = None) -> None:
        super().__init__(label)
        self._uri = uri

    @no_annotations
    def expand(self, pbegin: beam.pvalue.PBegin) -> DoOutputsTuple:
        return (pbegin
                | "Uri" >> Values([self._uri])
                | "Read" >> beam.ParDo(_ReadSnapshotFn(self._uri)).with_outputs(
                    SYSTEM_MEMORY, main=USERS))


def _user_row(element):
    (key_field, key), (state_bytes, waiting) = element
    return user_row(key_field, key, decode_document(state_bytes),
                    unpack_rows(waiting) if waiting else None)


class _WriteSnapshotFn(beam.DoFn):
    def __init__(self, temporary, account):
        self._temporary = temporary
        self._account = account
        self._users = Metrics.counter("state", "users_saved")

    def process(self, rows, as_of):
        kept = []
        for row in rows:
            if row["kind"] == "system_event" and as_of is not None \
                    and row["max_received"] + DEDUPE_HORIZON_US <= as_of:
                continue  # no later copy can be a duplicate of it any more
            kept.append(row)
        buffer = io.BytesIO()
        write_snapshot(buffer, kept, self._account, as_of)
        with FileSystems.create(self._temporary) as out:
            out.write(buffer.getvalue())
        self._users.inc(sum(1 for r in kept if r["kind"] == "user"))
        yield self._temporary


class WriteStateSnapshot(beam.PTransform):
    """Writes users' states (``(user, (state bytes, packed waiting events or None))``) and the
    system-event memory (``(id, received_at)``) as one snapshot at ``temporary``.

    ``as_of``: the run's as-of time (it drops the memory no later copy can match): an int,
    None, or a singleton PCollection of it."""

    def __init__(self, temporary: str, account: str,
                 as_of: Union[int, None, beam.PCollection[Optional[int]]],
                 label: Optional[str] = None) -> None:
        super().__init__(label)
        self._temporary = temporary
        self._account = account
        self._as_of = as_of

    @no_annotations
    def expand(self, inputs: Tuple[beam.PCollection[Tuple[Tuple[str, str], Tuple[bytes, Any]]],
                                   beam.PCollection[Tuple[Any, int]]]) -> beam.PCollection[str]:
        states, memory = inputs
        as_of = self._as_of
        if not isinstance(as_of, beam.PCollection):
            as_of = states.pipeline | "AsOf" >> Values([as_of])
        user_rows = states | "UserRows" >> beam.Map(_user_row)
        memory_rows = memory | "MemoryRows" >> beam.MapTuple(system_event_row)
        return ((user_rows, memory_rows)
                | "AllRows" >> beam.Flatten()
                | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                | "OneList" >> beam.combiners.ToList()
                | "WriteParquet" >> beam.ParDo(_WriteSnapshotFn(self._temporary, self._account),
                                               beam.pvalue.AsSingleton(as_of)))
