"""Files under ``--output_dir``, on any Beam file system: a local path or a URI (``azfs://``...).

Every output the pipeline writes itself (local sinks, dead letters, the system-event log, the
summary, the report, local Blob export files) goes through :mod:`apache_beam.io.filesystems`, so
on Flink or Dataflow it lands where ``--output_dir`` points, not on a worker's disk. A file is
written under a temporary name in its directory (``.tmp-<random>-<name>``) and then renamed: a
reader sees the whole file or none. On a local disk the rename is atomic; Beam's Azure Blob file
system renames by copy and delete, so a reader may briefly see both names, never a partial file.

Local paths keep their spelling (``os.path`` joins, no ``abspath``), so a local run names its
files exactly as it always did. Beam's file system for a URI needs its options set first (the
launcher calls :func:`use_options`; Beam does it on workers): for ``azfs://ACCOUNT/CONTAINER/PATH``
``--azure_connection_string`` or ``--blob_service_endpoint`` (see docs/OUTPUTS.md).
"""
import contextlib
import os
import posixpath
import uuid
from typing import Iterable, List, Optional

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from cdp_activation.core.interrupt import tracked_temporary

#: Prefix of the temporary names files are written under before their rename.
TEMPORARY_PREFIX = ".tmp-"


def is_uri(path: str) -> bool:
    """Whether ``path`` names a file system by scheme (``azfs://``, ``gs://``...), not a local path."""
    return "://" in path


def use_options(options: PipelineOptions) -> None:
    """Gives Beam's file systems the pipeline options (credentials of ``azfs://`` and the like)."""
    FileSystems.set_options(options)


def join(base: str, *names: str) -> str:
    """``base`` and ``names`` joined with the file system's separator."""
    if is_uri(base):
        return FileSystems.join(base, *names)
    return os.path.join(base, *names)


def dirname(path: str) -> str:
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return scheme + "://" + posixpath.dirname(rest)
    return os.path.dirname(path)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else os.path.basename(path)


def relative(path: str, root: str) -> str:
    """``path`` relative to the directory ``root``, ``/``-separated."""
    if is_uri(path):
        prefix = root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError("%s is not under %s" % (path, root))
        return path[len(prefix):]
    return os.path.relpath(path, root).replace(os.sep, "/")


def make_directory(path: str) -> None:
    """Creates the directory ``path`` where the file system has directories (a local disk); an
    existing one is fine.

    Blob stores have none: a "directory" is a name prefix and exists once a file is under it.
    """
    if is_uri(path):
        return
    try:
        FileSystems.mkdirs(path)
    except IOError:
        if not os.path.isdir(path):
            raise


def write_file(path: str, chunks: Iterable[bytes], mime_type: str = "application/octet-stream") -> None:
    """Writes ``chunks`` as the file ``path``: under a temporary name, then renamed to ``path``.

    A retry replaces the same name whole. Bytes are written as given (no compression by name:
    a ``.gz`` file's chunks are already compressed).
    """
    temporary = join(dirname(path), "%s%s-%s" % (TEMPORARY_PREFIX, uuid.uuid4().hex[:12],
                                                 basename(path)))
    # A Ctrl-C removes a local temporary file too (core/interrupt.py).
    with contextlib.nullcontext() if is_uri(temporary) else tracked_temporary(temporary):
        _write_then_rename(temporary, path, chunks, mime_type)


def _write_then_rename(temporary, path, chunks, mime_type):
    try:
        handle = FileSystems.create(temporary, mime_type=mime_type,
                                    compression_type=CompressionTypes.UNCOMPRESSED)
        try:
            for chunk in chunks:
                handle.write(chunk)
        finally:
            handle.close()
        FileSystems.rename([temporary], [path])
    except BaseException:
        _delete_quietly(temporary)
        raise


def _delete_quietly(path: str) -> None:
    try:
        if exists(path):
            FileSystems.delete([path])
    except Exception:  # pylint: disable=broad-except
        pass  # the temporary name starts with TEMPORARY_PREFIX; readers skip it


def read_file(path: str) -> Optional[bytes]:
    """The bytes of ``path``, or None when there is no such file."""
    try:
        handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except FileNotFoundError:
        return None
    except BeamIOError as exc:
        if _not_found(exc):
            return None
        raise
    try:
        return handle.read()
    finally:
        handle.close()


def _not_found(exc: BeamIOError) -> bool:
    causes = list((getattr(exc, "exception_details", None) or {}).values())
    return bool(causes) and all(
        isinstance(c, FileNotFoundError) or getattr(c, "code", None) == 404
        or getattr(c, "status_code", None) == 404 for c in causes)


def exists(path: str) -> bool:
    """Whether the file ``path`` exists (by listing: Beam's ``azfs`` ``exists``, seen with 2.77, raises for a
    missing blob instead of answering False)."""
    if not is_uri(path):
        return FileSystems.exists(path)
    return path in list_files(dirname(path))


def delete_file(path: str) -> None:
    """Deletes the file ``path``; a missing file is fine."""
    try:
        FileSystems.delete([path])
    except BeamIOError as exc:
        if not _not_found(exc) and exists(path):
            raise


def list_files(directory: str) -> List[str]:
    """Sorted paths of every file under ``directory`` (recursively), temporary names left out."""
    try:
        matched = FileSystems.match([join(directory, "**")])[0].metadata_list
    except BeamIOError as exc:
        if _not_found(exc):
            return []
        raise
    return sorted(m.path for m in matched if not basename(m.path).startswith(TEMPORARY_PREFIX))


def file_size(path: str) -> int:
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
