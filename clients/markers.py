"""The Blob export's credential check and state marker, on any :class:`clients.blob.Destination`.

- :func:`verify_credentials` writes ``<prefix>_verify/<work id>_<unix>.txt`` and deletes it (and
  this work's check blobs left by interrupted earlier checks); a blob it may not delete is left in
  place and logged. Rejected credentials, an unreachable account or any other refusal raise
  :class:`clients.blob.BlobExportError`, one line without the connection string, key or SAS.
- The state marker ``<prefix>_state/<work id>.json`` (:func:`core.export.marker_bytes`) records
  the end of the last window such that it and every window before it were written
  (:func:`read_marker`, :func:`write_marker`).
"""
import logging
import re
import time
from typing import Optional

from cdp_activation.clients.blob import BlobExportError, Destination
from cdp_activation.core.config import Work
from cdp_activation.core.export import marker_bytes, marker_name, parse_marker, verify_name
from cdp_activation.core.timeutil import MICROS

_LOG = logging.getLogger(__name__)


def verify_credentials(destination: Destination, work_id: str,
                       prefix: Optional[str] = None) -> None:
    """Writes and deletes ``<prefix>_verify/<work id>_<unix>.txt``.

    ``prefix``: default the destination's. Raises :class:`BlobExportError` (one line, no secret)
    when the write fails: rejected credentials, an unreachable account or any other refusal. A blob
    that may be written but not deleted is left in place and logged.
    """
    prefix = destination.prefix if prefix is None else prefix
    name = verify_name(prefix, work_id, int(time.time()))
    try:
        destination.put(name, ("credential check of work %s\n" % work_id).encode("utf-8"),
                        content_type="text/plain")
    except BlobExportError as exc:
        what = {"credentials": "credentials rejected",
                "unreachable": "destination unreachable"}.get(exc.kind, "destination refused a write")
        raise BlobExportError("azure_blob_event_export work %r: %s: %s" % (work_id, what, exc),
                              exc.kind) from None
    try:
        destination.delete(name)
    except BlobExportError as exc:
        _LOG.warning("work %s: the credential check blob %s was left in place: %s",
                     work_id, name, exc)
        return
    _remove_stale_checks(destination, prefix, work_id)


def _remove_stale_checks(destination, prefix, work_id):
    """Deletes this work's check blobs left by earlier activations that stopped between the write
    and the delete (a crash, a pre-empted node), so the container ends as an uninterrupted run
    leaves it. Best effort: a credential that may not list or delete leaves them, logged."""
    pattern = re.compile(re.escape(verify_name(prefix, work_id, 0)[:-len("0.txt")]) + r"\d+\.txt\Z")
    try:
        stale = [n for n in destination.list_names(verify_name(prefix, work_id, 0)[:-len("0.txt")])
                 if pattern.match(n)]
        for stale_name in stale:
            destination.delete(stale_name)
            _LOG.info("work %s: removed %s, left by an interrupted credential check", work_id, stale_name)
    except BlobExportError as exc:
        _LOG.warning("work %s: could not remove earlier credential check blobs: %s", work_id, exc)


def read_marker(destination: Destination, work_id: str) -> Optional[int]:
    """The end (microseconds) of the last window written, or None when there is no marker."""
    name = marker_name(destination.prefix, work_id)
    data = destination.get(name)
    if data is None:
        return None
    try:
        return parse_marker(data)
    except ValueError as exc:
        raise BlobExportError("work %r: state marker %s is unreadable: %s" % (work_id, name, exc)) \
            from None


def read_marker_end(destination: Destination, work: Work) -> Optional[int]:
    """:func:`read_marker` of a :class:`core.config.Work` (as ``pipelines.workflows`` calls it)."""
    return read_marker(destination, work.id)


def write_marker(destination: Destination, work_id: str, end_us: int,
                 now_us: Optional[int] = None) -> None:
    """Records ``end_us`` as the end of the last window written."""
    now_us = int(time.time() * MICROS) if now_us is None else now_us
    destination.put(marker_name(destination.prefix, work_id),
                    marker_bytes(work_id, end_us, now_us), content_type="application/json")
