"""The local Event Hubs endpoint: :class:`LocalEventHubs` binds, accepts connections (each served
by a :class:`~emulators.eventhubs.connection.Connection` on its own thread), and gives tests the
stored events and their failure hooks.
"""
import base64
import collections
import ipaddress
import logging
import secrets
import socket
import threading
import time
from typing import Any, List, NamedTuple, Optional, Tuple, Union

from emulators.eventhubs.connection import Connection
from emulators.eventhubs.hub import Hub, ReceivedEvent

_LOGGER = logging.getLogger(__name__)


class _Failure(NamedTuple):
    after_store: bool


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LocalEventHubs:
    """An Event Hubs-compatible AMQP endpoint on loopback, with one event hub.

    :param host: address to bind; loopback by default (the endpoint has no TLS and a dev key).
    :param port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
    :param hub: the event hub's name (the connection string's ``EntityPath``).
    :param partitions: number of partitions, ids ``"0"`` .. ``"N-1"``.
    :param key_name: the shared access key name clients must sign with.
    :param key: the shared access key; a random one when not given.
    :param max_message_size: the link's ``max-message-size`` (bytes): the SDK sizes batches from
        it and larger deliveries are rejected. 1 MiB is the Standard tier's limit.
    :param max_frame_size: the largest AMQP frame this endpoint accepts; larger deliveries arrive
        in several frames.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, hub: str = "hub",
                 partitions: int = 4, key_name: str = "RootManageSharedAccessKey",
                 key: Optional[str] = None, max_message_size: int = 1048576,
                 max_frame_size: int = 65536) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if not hub or "/" in hub:
            raise ValueError("hub must be a non-empty name without '/'")
        self.host = host
        self._requested_port = port
        self.hub = hub
        self.key_name = key_name
        self.key = key if key is not None else base64.b64encode(secrets.token_bytes(32)).decode()
        self.max_message_size = max_message_size
        self.max_frame_size = max_frame_size
        self._hub = Hub(hub, partitions)
        self._listener = None
        self._thread = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections = set()
        self._threads = []
        self._failures = collections.deque()
        self.connections_accepted = 0
        self.auth_failures = 0
        self._consumer_starts = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "LocalEventHubs":
        """Binds and starts serving on a background thread; returns self."""
        if self._listener is not None:
            return self
        if not _is_loopback(self.host):
            _LOGGER.warning("Local Event Hubs is binding to non-loopback address %s: it has no "
                            "TLS and a development key", self.host)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._requested_port))
        listener.listen(64)
        # accept() with a timeout: closing a socket does not wake a blocked accept() on Linux.
        listener.settimeout(0.1)
        self._listener = listener
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="local-eventhubs-accept",
                                        daemon=True)
        self._thread.start()
        _LOGGER.debug("Local Event Hubs listening on %s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stops accepting, drops every connection and waits for the threads to end."""
        if self._listener is None:
            return
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        self._listener = None
        self.drop_connections()
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> "LocalEventHubs":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _serve(self):
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(self, sock, "%s:%s" % peer[:2])
            thread = threading.Thread(target=connection.run, name="local-eventhubs-conn",
                                      daemon=True)
            with self._lock:
                self._connections.add(connection)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                self.connections_accepted += 1
            thread.start()

    def _forget(self, connection):
        with self._lock:
            self._connections.discard(connection)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("LocalEventHubs is not started")
        return self._listener.getsockname()[1]

    @property
    def endpoint(self) -> str:
        """``sb://host:port`` as clients should address it."""
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = "[%s]" % host
        return "sb://%s:%d" % (host, self.port)

    @property
    def connection_string(self) -> str:
        """The connection string for this endpoint and hub (plain AMQP, development key)."""
        return self.connection_string_with()

    def connection_string_with(self, key: Optional[str] = None, key_name: Optional[str] = None,
                               hub: Optional[str] = None) -> str:
        """A connection string with another key, key name or hub: for testing rejections."""
        return ("Endpoint=%s;SharedAccessKeyName=%s;SharedAccessKey=%s;EntityPath=%s;"
                "UseDevelopmentEmulator=true" % (
                    self.endpoint, self.key_name if key_name is None else key_name,
                    self.key if key is None else key, self.hub if hub is None else hub))

    # -- inspection and test hooks -------------------------------------------------------------

    @property
    def partition_ids(self) -> List[str]:
        return list(self._hub.partition_ids)

    def events(self, partition: Union[str, int, None] = None) -> List[ReceivedEvent]:
        """Events received so far, in arrival order (of one partition, by id, if given)."""
        if partition is None:
            return self._hub.snapshot()
        index = self._hub.partition_ids.index(str(partition))
        return self._hub.snapshot(index)

    def wait_for_events(self, count: int, timeout: float = 10.0) -> List[ReceivedEvent]:
        """Waits until at least ``count`` events are stored; returns them (possibly fewer)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if len(events) >= count or time.monotonic() >= deadline:
                return events
            time.sleep(0.02)

    def consumer_starts(self) -> List[Tuple[str, int]]:
        """``(partition id, sequence number)`` of every consumer link opened so far, in order:
        where each reader asked to start (its selector filter resolved against the partition)."""
        with self._lock:
            return list(self._consumer_starts)

    def _note_consumer_start(self, partition, sequence_number):
        with self._lock:
            self._consumer_starts.append((partition, sequence_number))

    def drop_connections(self) -> int:
        """Drops every client connection now (no AMQP close); returns how many were dropped."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort()
        return len(connections)

    def fail_next_transfers(self, count: int = 1, after_store: bool = False) -> None:
        """The next ``count`` producer deliveries drop their connection before being settled.

        With ``after_store=False`` the events are lost, as if the network failed on the way in;
        with ``after_store=True`` they are stored first, as if the acknowledgement was lost, so a
        retrying client delivers them twice. Either way the client sees a lost connection.
        """
        with self._lock:
            self._failures.extend(_Failure(after_store) for _ in range(count))

    def _take_failure(self):
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _note_auth_failure(self):
        with self._lock:
            self.auth_failures += 1

    def _events_changed(self):
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.wake()
