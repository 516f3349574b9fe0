"""Event Hubs checkpoint stores: where a catch-up read starts, per partition.

A checkpoint records the *last processed* event of a partition (its sequence number, its offset
and, when known, its enqueued time); the next run starts after it. Two stores, one interface
(``read``, ``read_all``, ``write``, ``description``):

:class:`BlobStorageCheckpointStore`
    Azure Blob Storage in the layout of Azure's own ``azure-eventhub-checkpointstoreblob``
    (``BlobCheckpointStore`` of the azure-eventhub SDK's event processor): one empty blob per
    partition, ``{fully qualified namespace}/{event hub}/{consumer group}/checkpoint/{partition
    id}``, all lower case, with metadata ``offset`` and ``sequencenumber`` (decimal strings). So an
    ``EventHubConsumerClient`` given Azure's store on the same container and consumer group
    continues where this job stopped, and this job continues where such a processor checkpointed.
    The fully qualified namespace is the connection string's endpoint host, with the port when
    it names one (what the SDK uses). This store also writes ``enqueuedtimeus`` (the event's
    enqueued time, microseconds); Azure's processor ignores it and drops it when it writes.
    Ownership blobs (``.../ownership/{partition id}``, metadata ``ownerid``) belong to Azure's
    processors' load balancing: :meth:`BlobStorageCheckpointStore.live_owners` reads them so that a
    catch-up run can refuse to read partitions a processor is reading at the same time.

:class:`LocalCheckpointStore`
    One JSON file per partition in a local directory,
    ``<dir>/<namespace host>/<event hub>/<consumer group>/<partition>.json`` (names lower-cased).
    For a single machine: a cluster's workers do not share a local disk.

Both never move a partition's checkpoint backwards (a retried or stale commit must not make the
next run read again what was delivered) and replace it atomically: the local file by a rename,
the blob's metadata under an ETag condition (a concurrent writer makes the write re-read and
decide again).

No Beam here: ``transforms/eventhubs_source.py`` plans reads from these stores (chosen by
``clients/eventhubs_consumer.make_checkpoint_store``) and ``transforms/eventhubs_checkpoints.py``
commits to them. Nothing here logs or raises a credential: errors are one line, scrubbed with
``core.redact``.
"""
from __future__ import annotations

import json
import os
import re
import time
import typing
import urllib.parse

from cdp_activation.core.config import EnvRef
from cdp_activation.core.redact import Redactor, reveal, secret_parts
from cdp_activation.core.timeutil import format_time
from cdp_activation.core.interrupt import temporary_file

#: The local checkpoint files' format version.
CHECKPOINT_VERSION = 1
#: Blob metadata names of Azure's ``BlobCheckpointStore`` (and of this project's extra one).
OFFSET_KEY, SEQUENCE_KEY, ENQUEUED_KEY, OWNER_KEY = ("offset", "sequencenumber", "enqueuedtimeus",
                                                     "ownerid")
#: How long Azure's event processor keeps a partition's ownership without renewing it (its
#: default ``ownership_timeout``); a claim younger than this is a processor reading now.
OWNERSHIP_EXPIRY_SECONDS = 180.0
#: Blob requests: short timeouts and few retries, so a dead endpoint fails in seconds.
CONNECTION_TIMEOUT_S, READ_TIMEOUT_S, RETRY_TOTAL = 5, 20, 3
#: Attempts of a checkpoint write that loses an ETag race before it gives up.
MAX_WRITE_ATTEMPTS = 5


class CheckpointError(ValueError):
    """A one-line, secret-free description of a checkpoint store that cannot be used."""


class Checkpoint(typing.NamedTuple):
    """The last processed event of a partition."""
    partition: str
    sequence_number: int
    offset: str
    enqueued_time_us: typing.Optional[int]


# Consumer groups: letters, digits, '.', '_', '-' and the service's '$Default'. Also keeps every
# path component a single, harmless directory or blob-name segment.
NAME = re.compile(r"^\$?[A-Za-z0-9][A-Za-z0-9._-]*$")
PARTITION = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


def _name(kind, value):
    if not isinstance(value, str) or not NAME.match(value) or len(value) > 256:
        raise CheckpointError("%s %r is not a valid name (letters, digits, '.', '_', '-')"
                              % (kind, value))
    return value.lower()


def _partition(value):
    if not isinstance(value, str) or not PARTITION.match(value):
        raise CheckpointError("partition id %r cannot name a checkpoint" % (value,))
    return value


def _namespace(value):
    host = value.lower() if isinstance(value, str) else ""
    if not host or "/" in host or host.strip("[]") in ("", ".", ".."):
        raise CheckpointError("namespace %r cannot name a checkpoint location" % (value,))
    return host


def _sequence_number(value):
    """A stored sequence number as an int >= -1, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
        value = int(value)
    if isinstance(value, int) and value >= -1:
        return value
    return None


# ------------------------------------------------------------------------------------------------
# Local files
# ------------------------------------------------------------------------------------------------


class LocalCheckpointStore:
    """Per-partition checkpoint files of one namespace, event hub and consumer group.

    Layout: ``<checkpoint_dir>/<namespace>/<eventhub>/<consumer group>/<partition>.json``, names
    lower-cased (``namespace``: the endpoint's host). A URL is refused: a Blob container is
    :class:`BlobStorageCheckpointStore`.
    """

    def __init__(self, checkpoint_dir: str, namespace: str, eventhub_name: str,
                 consumer_group: str) -> None:
        if not checkpoint_dir or not isinstance(checkpoint_dir, str):
            raise CheckpointError("checkpoint_dir must be a directory path")
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", checkpoint_dir):
            raise CheckpointError(
                "checkpoint_dir %r: only local directories are supported for checkpoint files; "
                "for Azure Blob Storage use checkpoint_container=NAME with "
                "checkpoint_connection_string_env=VAR" % checkpoint_dir)
        self.checkpoint_dir = checkpoint_dir
        self.namespace = _namespace(namespace.strip("[]") if isinstance(namespace, str)
                                    else namespace)
        self.eventhub_name = _name("event hub", eventhub_name)
        self.consumer_group = _name("consumer group", consumer_group)
        self.directory = os.path.join(os.path.abspath(checkpoint_dir), self.namespace,
                                      self.eventhub_name, self.consumer_group)

    @property
    def description(self) -> str:
        """Where the checkpoints are, for messages."""
        return self.directory

    def path(self, partition: str) -> str:
        return os.path.join(self.directory, _partition(partition) + ".json")

    def read(self, partition: str) -> Checkpoint | None:
        """The partition's checkpoint, or None when it has none.

        An unreadable file raises :class:`CheckpointError`: guessing a position would either
        skip events or re-read the whole partition, so a person has to look.
        """
        path = self.path(partition)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                "checkpoint %s is unreadable (%s); fix it, or delete it to read partition %s from "
                "the beginning" % (path, type(exc).__name__, partition)) from None
        sequence_number = _sequence_number(data.get("sequence_number")) \
            if isinstance(data, dict) and isinstance(data.get("sequence_number"), int) else None
        if sequence_number is None:
            raise CheckpointError(
                "checkpoint %s has no valid sequence_number; fix it, or delete it to read "
                "partition %s from the beginning" % (path, partition))
        enqueued = data.get("enqueued_time_us")
        return Checkpoint(partition, sequence_number, str(data.get("offset", "")),
                          enqueued if isinstance(enqueued, int) else None)

    def read_all(self) -> dict[str, Checkpoint]:
        """Every checkpoint in the store, by partition id."""
        found = {}
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return found
        for name in names:
            if name.endswith(".json") and PARTITION.match(name[:-5]):
                checkpoint = self.read(name[:-5])
                if checkpoint is not None:
                    found[checkpoint.partition] = checkpoint
        return found

    def write(self, checkpoint: Checkpoint) -> Checkpoint:
        """Stores ``checkpoint`` atomically; never moves a partition's checkpoint backwards.

        Returns the checkpoint now stored: the existing one when it is already as far or further.
        """
        existing = self.read(checkpoint.partition)
        if existing is not None and existing.sequence_number >= checkpoint.sequence_number:
            return existing
        os.makedirs(self.directory, exist_ok=True)
        record = {
            "version": CHECKPOINT_VERSION,
            "namespace": self.namespace, "eventhub": self.eventhub_name,
            "consumer_group": self.consumer_group, "partition": checkpoint.partition,
            "sequence_number": checkpoint.sequence_number, "offset": checkpoint.offset,
            "enqueued_time_us": checkpoint.enqueued_time_us,
            "enqueued_time": (format_time(checkpoint.enqueued_time_us)
                              if checkpoint.enqueued_time_us is not None else None),
            "committed_at": format_time(int(time.time() * 1_000_000)),
        }
        path = self.path(checkpoint.partition)
        # A Ctrl-C removes the temporary file too (core/interrupt.py).
        with temporary_file(self.directory, prefix="." + checkpoint.partition + ".",
                            suffix=".tmp") as (fd, tmp):
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(record, handle, indent=1, sort_keys=True)
                    handle.write("\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                # The rename is the commit: a reader sees the old file or the new one, never half.
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        _fsync_directory(self.directory)
        return checkpoint

    def live_owners(self, now: float | None = None) -> dict[str, str]:
        """Processors reading partitions now: none are recorded in local files."""
        return {}

    def close(self) -> None:
        pass

    def __repr__(self):
        return "LocalCheckpointStore(%r)" % self.directory


def _fsync_directory(directory):
    """Makes a rename in ``directory`` durable (POSIX); a no-op where that is impossible."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Azure Blob Storage, in the layout of azure-eventhub-checkpointstoreblob
# ------------------------------------------------------------------------------------------------


class _Held:
    """A literal credential: ``repr`` never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def reveal(self):
        return self._value

    def __getstate__(self):
        return self._value

    def __setstate__(self, state):
        self._value = state

    def __repr__(self):
        return "<secret>"


def fully_qualified_namespace(endpoint: str) -> str:
    """The event processor's name for a namespace: the endpoint's ``host[:port]``, lower case.

    ``endpoint``: the connection string's ``Endpoint`` (``sb://NS.servicebus.windows.net/``).
    """
    parsed = urllib.parse.urlsplit(endpoint if "//" in endpoint else "sb://" + endpoint)
    return _namespace(parsed.netloc.rsplit("@", 1)[-1].strip())


def _describe(exc):
    """A short reason for an Azure SDK error (never its full text, which may quote a request)."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                       ServiceRequestError, ServiceResponseError)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, HttpResponseError) and status:
        code = getattr(exc.error_code, "value", exc.error_code) or exc.reason or ""
        return ("HTTP %s %s" % (status, code)).strip()
    if isinstance(exc, ClientAuthenticationError) or type(exc).__name__ == "AzureSigningError":
        return "the credentials were refused (requests cannot be signed)"
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        found = re.search(r"\[Errno -?\d+\] ([^'\"\]\)]+)", str(exc))
        return "connection failed: %s" % (found.group(1).strip() if found else type(exc).__name__)
    return type(exc).__name__


class BlobStorageCheckpointStore:
    """Checkpoints in an Azure Blob container, read and written as Azure's event processors do.

    :param connection_string: the storage account's connection string, or a
        :class:`core.config.EnvRef` to one (resolved where the store is first used: on a worker,
        in the DoFn's ``setup()``; only the reference is pickled).
    :param container: the container (created on the first write when missing).
    :param namespace: the fully qualified namespace, as :func:`fully_qualified_namespace` gives it.
    :param eventhub_name: the event hub.
    :param consumer_group: the consumer group.

    The client is made on first use and never pickled.
    """

    def __init__(self, connection_string: str | EnvRef, container: str, namespace: str,
                 eventhub_name: str, consumer_group: str) -> None:
        if not isinstance(container, str) or not _CONTAINER.match(container):
            raise CheckpointError(
                "checkpoint container %r is not a container name (3-63 lower-case letters, "
                "digits and single hyphens)" % (container,))
        if not isinstance(connection_string, (str, EnvRef)) or not connection_string:
            raise CheckpointError("the checkpoint store needs an Azure Storage connection string")
        self._connection_string = (connection_string if isinstance(connection_string, EnvRef)
                                   else _Held(connection_string))
        self.container = container
        self.namespace = _namespace(namespace)
        self.eventhub_name = _name("event hub", eventhub_name)
        self.consumer_group = _name("consumer group", consumer_group)
        self.prefix = "%s/%s/%s/" % (self.namespace, self.eventhub_name, self.consumer_group)
        self._client = None
        self._redact = None

    @property
    def description(self) -> str:
        """Where the checkpoints are, for messages (no credential)."""
        return "Azure Blob container %r, %scheckpoint/" % (self.container, self.prefix)

    def blob_name(self, partition: str) -> str:
        """The checkpoint blob of ``partition`` (Azure's layout, lower case)."""
        return (self.prefix + "checkpoint/" + _partition(partition)).lower()

    def ownership_blob_name(self, partition: str) -> str:
        return (self.prefix + "ownership/" + _partition(partition)).lower()

    # -- the client --------------------------------------------------------------------------

    def _container(self):
        if self._client is None:
            from azure.storage.blob import ContainerClient
            secret = reveal(self._connection_string)
            self._redact = Redactor(secret_parts(secret))
            try:
                self._client = ContainerClient.from_connection_string(
                    secret, self.container, connection_timeout=CONNECTION_TIMEOUT_S,
                    read_timeout=READ_TIMEOUT_S, retry_total=RETRY_TOTAL,
                    retry_connect=RETRY_TOTAL, initial_backoff=0.5, increment_base=2)
            except Exception as exc:  # a malformed string: never echo it
                raise CheckpointError(
                    "the checkpoint store's Azure Storage connection string is malformed (%s)"
                    % type(exc).__name__) from None
        return self._client

    def _error(self, doing, exc):
        text = "cannot %s in %s: %s" % (doing, self.description, _describe(exc))
        return CheckpointError(self._redact(text) if self._redact else text)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # pylint: disable=broad-except
                pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        state["_redact"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self, partition, metadata):
        metadata = {k.lower(): v for k, v in (metadata or {}).items()}
        sequence_number = _sequence_number(metadata.get(SEQUENCE_KEY))
        if sequence_number is None:
            raise CheckpointError(
                "checkpoint blob %s in container %r has no valid %s metadata; fix it, or delete "
                "it to read partition %s from the beginning"
                % (self.blob_name(partition), self.container, SEQUENCE_KEY, partition))
        enqueued = metadata.get(ENQUEUED_KEY)
        enqueued = int(enqueued) if isinstance(enqueued, str) and enqueued.isdigit() else None
        return Checkpoint(partition, sequence_number, str(metadata.get(OFFSET_KEY, "")), enqueued)

    def _properties(self, partition):
        """``(checkpoint or None, etag or None)`` of the partition's blob."""
        from azure.core.exceptions import ResourceNotFoundError
        blob = self._container().get_blob_client(self.blob_name(partition))
        try:
            properties = blob.get_blob_properties()
        except ResourceNotFoundError:
            return None, None
        except Exception as exc:  # pylint: disable=broad-except
            raise self._error("read the checkpoint of partition %s" % partition, exc) from None
        return self._checkpoint(partition, properties.metadata), properties.etag

    def read(self, partition: str) -> Checkpoint | None:
        """The partition's checkpoint, or None when it has none."""
        return self._properties(partition)[0]

    def read_all(self) -> dict[str, Checkpoint]:
        """Every checkpoint in the store, by partition id (what ``list_checkpoints`` of Azure's
        store lists)."""
        from azure.core.exceptions import ResourceNotFoundError
        found = {}
        try:
            blobs = list(self._container().list_blobs(
                name_starts_with=self.prefix + "checkpoint/", include=["metadata"]))
        except ResourceNotFoundError:
            return found
        except Exception as exc:  # pylint: disable=broad-except
            raise self._error("list the checkpoints", exc) from None
        for blob in blobs:
            partition = blob.name.rsplit("/", 1)[-1]
            if PARTITION.match(partition):
                found[partition] = self._checkpoint(partition, blob.metadata)
        return found

    def write(self, checkpoint: Checkpoint) -> Checkpoint:
        """Stores ``checkpoint``; never moves a partition's checkpoint backwards.

        The blob's metadata is replaced under the ETag just read (or the blob is created only if
        it still does not exist): a concurrent writer makes this attempt read again and decide
        again. Returns the checkpoint now stored.
        """
        from azure.core.exceptions import (HttpResponseError, ResourceExistsError,
                                           ResourceModifiedError, ResourceNotFoundError)
        metadata = {OFFSET_KEY: str(checkpoint.offset),
                    SEQUENCE_KEY: str(int(checkpoint.sequence_number))}
        if checkpoint.enqueued_time_us is not None:
            metadata[ENQUEUED_KEY] = str(int(checkpoint.enqueued_time_us))
        blob = self._container().get_blob_client(self.blob_name(checkpoint.partition))
        for _ in range(MAX_WRITE_ATTEMPTS):
            existing, etag = self._properties(checkpoint.partition)
            if existing is not None and existing.sequence_number >= checkpoint.sequence_number:
                return existing
            try:
                if etag is not None:
                    blob.set_blob_metadata(metadata, if_match=etag)
                else:
                    self._create(blob, metadata)
                return checkpoint
            except (ResourceModifiedError, ResourceExistsError):
                continue                    # someone else wrote it meanwhile: decide again
            except ResourceNotFoundError:
                continue                    # deleted meanwhile: create it
            except HttpResponseError as exc:
                if exc.status_code in (409, 412):
                    continue
                raise self._error("write the checkpoint of partition %s"
                                  % checkpoint.partition, exc) from None
            except Exception as exc:  # pylint: disable=broad-except
                raise self._error("write the checkpoint of partition %s"
                                  % checkpoint.partition, exc) from None
        raise CheckpointError("the checkpoint of partition %s in %s kept changing while it was "
                              "written (%d attempts): is another reader committing to it?"
                              % (checkpoint.partition, self.description, MAX_WRITE_ATTEMPTS))

    def _create(self, blob, metadata):
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
        try:
            blob.upload_blob(b"", metadata=metadata, if_none_match="*")
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) != "ContainerNotFound":
                raise
            try:
                self._container().create_container()
            except ResourceExistsError:
                pass
            blob.upload_blob(b"", metadata=metadata, if_none_match="*")

    # -- ownership ---------------------------------------------------------------------------

    def live_owners(self, now: float | None = None) -> dict[str, str]:
        """``{partition id: owner id}`` of the partitions an event processor claimed less than
        :data:`OWNERSHIP_EXPIRY_SECONDS` ago (a processor that stops gives its claims up with an
        empty owner id, which is not counted)."""
        from azure.core.exceptions import ResourceNotFoundError
        now = time.time() if now is None else now
        try:
            blobs = list(self._container().list_blobs(
                name_starts_with=self.prefix + "ownership/", include=["metadata"]))
        except ResourceNotFoundError:
            return {}
        except Exception as exc:  # pylint: disable=broad-except
            raise self._error("list the partition ownership", exc) from None
        owners = {}
        for blob in blobs:
            owner = {k.lower(): v for k, v in (blob.metadata or {}).items()}.get(OWNER_KEY)
            modified = blob.last_modified.timestamp() if blob.last_modified else 0.0
            if owner and now - modified < OWNERSHIP_EXPIRY_SECONDS:
                owners[blob.name.rsplit("/", 1)[-1]] = owner
        return owners

    def __repr__(self):
        return "BlobStorageCheckpointStore(container=%r, %r)" % (self.container, self.prefix)
