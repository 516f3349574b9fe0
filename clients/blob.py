"""The Azure destination of the Blob export (``azure_blob_event_export``): a container of an Azure
Storage account, and the :class:`Destination` interface it shares with the local sink
(``transforms.blob.LocalDestination``, written through Beam's ``FileSystems``). No Beam:
``transforms/blob.py`` opens a destination per DoFn in ``setup()``.

Every operation (``put``, ``get``, ``delete``, ``list_names``) raises :class:`BlobExportError`,
one line without the connection string, key or SAS (masked by :mod:`core.redact`), with a
``kind``: ``credentials`` (HTTP 401/403, a key that is not base64), ``unreachable`` or ``error``.

Azure operations are retried by :mod:`clients.retry` (the SDK's own retries are off): throttling
and server errors (408, 425, 429, 5xx) and dropped connections up to :data:`RETRY_ATTEMPTS`
attempts in all, with full-jitter backoff from :data:`BASE_BACKOFF_S`; a connection that cannot
be made is retried :data:`RETRY_CONNECT` time(s) after :data:`CONNECT_BACKOFF_S`, so a dead
endpoint fails in well under a second and a run with it goes on to its other windows. Each
operation is idempotent (a put replaces the blob whole), so a retry after a lost response
writes the same bytes again.
"""
import re
from typing import List, Optional

from cdp_activation.clients.retry import Failure, RetryPolicy, retryable_status
from cdp_activation.core.redact import Redactor, secret_parts

CONNECTION_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
#: Attempts of one Azure operation in all, the first included.
RETRY_ATTEMPTS = 4
#: Backoff base of throttling, server errors and dropped connections (full jitter, doubling).
BASE_BACKOFF_S = 2.0
#: Retries of a connection that cannot be made, and the wait before each.
RETRY_CONNECT = 1
CONNECT_BACKOFF_S = 0.2
#: The retry policy of Azure operations (tests pass one with a recording ``sleep``).
AZURE_RETRY = RetryPolicy(max_attempts=RETRY_ATTEMPTS, base_seconds=BASE_BACKOFF_S)


class BlobExportError(Exception):
    """A destination failure; ``str()`` is one line without secrets.

    ``kind``: ``credentials`` (rejected), ``unreachable`` or ``error``.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(" ".join(str(message).split()))
        self.kind = kind


class Destination:
    """Where a work's blobs go. Names are blob names (``/`` separated, prefix included)."""

    prefix = ""
    description = ""

    def put(self, name: str, data: bytes, content_type: Optional[str] = None) -> None:
        """Writes ``data`` under ``name``, replacing any blob of that name. BlobExportError."""
        raise NotImplementedError

    def get(self, name: str) -> Optional[bytes]:
        """The blob's bytes, or None when it does not exist. BlobExportError."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Deletes a blob (absent is fine). BlobExportError."""
        raise NotImplementedError

    def list_names(self, starts_with: str = "") -> List[str]:
        """Sorted names of the blobs whose name starts with ``starts_with``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _describe(exc):
    """A short reason for an Azure SDK error, and its kind."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                       ServiceRequestError, ServiceResponseError)
    from azure.storage.blob._shared.authentication import AzureSigningError
    if isinstance(exc, AzureSigningError):
        return "the account key is not valid (requests cannot be signed)", "credentials"
    if isinstance(exc, HttpResponseError) and exc.status_code:
        code = getattr(exc.error_code, "value", exc.error_code) or exc.reason or ""
        kind = "credentials" if exc.status_code in (401, 403) else "error"
        return ("HTTP %s %s" % (exc.status_code, code)).strip(), kind
    if isinstance(exc, ClientAuthenticationError):
        return "authentication failed", "credentials"
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        m = re.search(r"\[Errno -?\d+\] ([^'\"\]\)]+)", str(exc))
        detail = m.group(1).strip() if m else type(exc).__name__
        return "connection failed: %s" % detail, "unreachable"
    return "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""), "error"


class AzureDestination(Destination):
    """A container of an Azure Storage account (or Azurite), via azure-storage-blob.

    Short timeouts and :data:`AZURE_RETRY` (see the module docstring): a dead endpoint fails in
    well under a second, not minutes. The container is created on the first write that finds it
    missing. ``retry``: another :class:`clients.retry.RetryPolicy` (tests count attempts).
    """

    def __init__(self, connection_string: str, container: str, prefix: str = "",
                 connection_timeout: float = CONNECTION_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S, retry: RetryPolicy = AZURE_RETRY) -> None:
        from azure.storage.blob import BlobServiceClient
        self.prefix = prefix or ""
        self.container = container
        self._retry = retry
        # The one scrubber (core.redact): the string, its key or SAS, and any sig=/key= text.
        self._scrub = Redactor(secret_parts(connection_string))
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string, retry_total=0, connection_timeout=connection_timeout,
                read_timeout=read_timeout)
        except Exception as exc:  # a malformed string: ValueError; never echo the string
            raise BlobExportError(
                "the Azure Storage connection string is malformed (%s); expected "
                "DefaultEndpointsProtocol=...;AccountName=...;AccountKey=... or a SAS"
                % self._scrub(type(exc).__name__)) from None
        self._container = self._service.get_container_client(container)
        self.account_name = self._service.account_name
        self.description = "storage account %r container %r at %s://%s" % (
            self.account_name, container, self._service.scheme,
            self._service.primary_hostname)

    def _run(self, action, name, operation):
        """``operation()`` under the retry policy; BlobExportError when it fails for good."""
        connect_failures = []

        def classify(exc):
            from azure.core.exceptions import (HttpResponseError, ServiceRequestError,
                                               ServiceResponseError)
            reason, kind = _describe(exc)
            if isinstance(exc, ServiceRequestError):    # no connection was made
                connect_failures.append(exc)
                return Failure(reason, len(connect_failures) <= RETRY_CONNECT, CONNECT_BACKOFF_S)
            if isinstance(exc, ServiceResponseError):   # dropped after the request went out
                return Failure(reason, True)
            if isinstance(exc, HttpResponseError) and kind != "credentials":
                return Failure(reason, retryable_status(exc.status_code or 500))
            return Failure(reason)

        result = self._retry.run(operation, classify, "%s %s in %s" % (
            action, name, self.description))
        if result.ok:
            return result.value
        reason, kind = _describe(result.error)
        raise BlobExportError(self._scrub("cannot %s %s in %s: %s"
                                          % (action, name, self.description, reason)), kind)

    def _upload(self, name, data, content_type):
        from azure.storage.blob import ContentSettings
        settings = ContentSettings(content_type=content_type) if content_type else None
        self._container.upload_blob(name, data, overwrite=True, content_settings=settings)

    def put(self, name: str, data: bytes, content_type: Optional[str] = None) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        def put_once():
            try:
                self._upload(name, data, content_type)
            except ResourceNotFoundError as exc:
                if exc.error_code != "ContainerNotFound":
                    raise
                try:
                    self._container.create_container()
                except ResourceExistsError:
                    pass
                self._upload(name, data, content_type)
        self._run("write", name, put_once)

    def get(self, name: str) -> Optional[bytes]:
        from azure.core.exceptions import ResourceNotFoundError

        def get_once():
            try:
                return self._container.download_blob(name).readall()
            except ResourceNotFoundError:
                return None
        return self._run("read", name, get_once)

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        def delete_once():
            try:
                self._container.delete_blob(name)
            except ResourceNotFoundError:
                pass
        self._run("delete", name, delete_once)

    def list_names(self, starts_with: str = "") -> List[str]:
        from azure.core.exceptions import ResourceNotFoundError

        def list_once():
            try:
                return sorted(b.name for b in self._container.list_blobs(
                    name_starts_with=starts_with or None))
            except ResourceNotFoundError:
                return []
        return self._run("list", starts_with or "blobs", list_once)

    def close(self) -> None:
        self._service.close()
