"""A small TCP fault-injection proxy for tests (toxiproxy-like), loopback only.

    with FaultProxy(("127.0.0.1", upstream_port)) as proxy:
        client_connects_to(proxy.port)
        proxy.set_latency(0.02)                     # every forwarded chunk waits 20 ms
        proxy.reset_after(4096, times=2)            # the next 2 connections that forward 4 KiB
                                                    # upstream are cut there (TCP RST)
        proxy.stall(3.0)                            # forward nothing for 3 s, from now
        proxy.on_pattern(b"DELETE ", "stall", seconds=5)   # stall when a request is seen
        proxy.reset_all()                           # cut every open connection now
        proxy.periodic_resets(every=10)             # reset_all() every 10 s (background)
        proxy.counters()                            # what was forwarded and injected

Design
------
- Listens on ``127.0.0.1:0`` (a free port, :attr:`FaultProxy.port`) and forwards each accepted
  connection to one upstream ``(host, port)``, which must be a loopback address.
- One accept thread, two pump threads per connection (one per direction). Every blocking call has
  a short timeout so that the threads notice :meth:`stop`. At most ``max_connections`` are open at
  once (more are accepted and closed at once, counted as ``refused``).
- It stops by itself: after ``lifetime`` seconds (default 900) the accept thread stops it, so a
  test that forgets to stop it cannot leave threads behind for long; the threads are daemons too.
- Faults are switchable at any time and apply to open and new connections:

  * latency: ``set_latency(seconds)`` sleeps before forwarding each chunk, in both directions;
  * reset mid-transfer: ``reset_after(n_bytes, times, direction, min_interval)`` arms ``times``
    cuts; a connection that has forwarded ``n_bytes`` in ``direction`` ("up" = client to server,
    "down", or "both") since the cut was armed (or since it opened) forwards exactly that many
    bytes, then both of its sockets are closed with ``SO_LINGER`` 0 (an RST, as a network failure
    looks); ``min_interval`` spaces the cuts of one arming out in time;
  * stall: ``stall(seconds)`` forwards nothing in either direction until the time is up (data
    waits in the kernel buffers; clients see silence, then the data);
  * triggers: ``on_pattern(pattern, "reset" | "stall", seconds, times, direction)`` cuts or stalls
    when a chunk containing ``pattern`` is about to be forwarded (the chunk is not forwarded on a
    reset; on a stall it is forwarded afterwards);
  * ``reset_all()`` cuts every open connection now; ``periodic_resets(every)`` does so every
    ``every`` seconds on a background thread until :meth:`stop` or ``clear_periodic()``.

- :meth:`counters` returns a dict: ``connections`` (accepted and forwarded), ``open``,
  ``refused``, ``upstream_failures``, ``bytes_up``, ``bytes_down``, ``resets`` (connections cut by a
  fault), ``stalls``, ``stalled_seconds``, ``delayed_chunks``.
"""
import ipaddress
import select
import socket
import struct
import threading
import time

_POLL = 0.05


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hard_close(sock):
    """Closes ``sock`` with an RST (SO_LINGER on, 0 s)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Trigger:
    def __init__(self, pattern, action, seconds, times, direction):
        self.pattern, self.action, self.seconds = pattern, action, seconds
        self.times, self.direction = times, direction


class _Connection:
    def __init__(self, proxy, client, upstream, number):
        self.proxy, self.client, self.upstream, self.number = proxy, client, upstream, number
        self.closed = threading.Event()
        self.sent = {"up": 0, "down": 0}         # bytes forwarded since the last arming
        self.tail = {"up": b"", "down": b""}     # the end of the last chunk (patterns across chunks)
        self._half_closed = 0
        self._lock = threading.Lock()

    def start(self):
        for direction, source, target in (("up", self.client, self.upstream),
                                          ("down", self.upstream, self.client)):
            threading.Thread(target=self._pump, args=(direction, source, target),
                             name="faultproxy-%s-%d" % (direction, self.number), daemon=True).start()

    def cut(self):
        """Both sockets closed with an RST; idempotent."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        _hard_close(self.client)
        _hard_close(self.upstream)
        self.proxy._forget(self)

    def _finish(self):
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.client, self.upstream):
            try:
                sock.close()
            except OSError:
                pass
        self.proxy._forget(self)

    def _pump(self, direction, source, target):
        proxy = self.proxy
        orderly = False
        try:
            while not self.closed.is_set() and not proxy._stopping.is_set():
                try:
                    ready, _, _ = select.select([source], [], [], _POLL)
                except (OSError, ValueError):
                    break
                if not ready:
                    continue
                try:
                    data = source.recv(65536)
                except (OSError, ValueError):
                    break
                if not data:
                    # Orderly close from this side: pass the FIN on, end when both sides did.
                    orderly = True
                    try:
                        target.shutdown(socket.SHUT_WR)
                    except (OSError, ValueError):
                        pass
                    with self._lock:
                        self._half_closed += 1
                        both = self._half_closed >= 2
                    if both:
                        self._finish()
                    return
                if not self._forward(direction, data, target):
                    break
        finally:
            # An error on one side (a reset, or stop()) ends the connection on both sides, as a
            # broken network path does.
            if not orderly or proxy._stopping.is_set():
                self.cut()

    def _forward(self, direction, data, target):
        """Applies the faults to one chunk and forwards what survives; False: stop pumping."""
        proxy = self.proxy
        action = proxy._match_trigger(self, direction, data)
        if action is not None:
            kind, seconds = action
            if kind == "reset":
                proxy._count("resets")
                self.cut()
                return False
            proxy._stall_for(seconds)
        proxy._wait_while_stalled(self)
        if self.closed.is_set():
            return False
        latency = proxy._latency
        if latency > 0:
            proxy._count("delayed_chunks")
            if self.closed.wait(latency):
                return False
        limit = proxy._cut_limit(self, direction, len(data))
        if limit is not None:
            if limit > 0:
                try:
                    target.sendall(data[:limit])
                except (OSError, ValueError):
                    return False
                proxy._count("bytes_" + direction, limit)
            proxy._count("resets")
            # Give the kernel a moment to push the partial chunk before the RST.
            time.sleep(0.01)
            self.cut()
            return False
        try:
            target.sendall(data)
        except (OSError, ValueError):
            return False
        proxy._count("bytes_" + direction, len(data))
        return True


class FaultProxy:
    """See the module docstring."""

    def __init__(self, upstream, name="proxy", max_connections=64, lifetime=900.0):
        host, port = upstream
        if not _is_loopback(host):
            raise ValueError("FaultProxy forwards to loopback addresses only, not %r" % (host,))
        self.upstream = (host, int(port))
        self.name = name
        self.max_connections = max_connections
        self.lifetime = lifetime
        self._listener = None
        self._accept_thread = None
        self._periodic_thread = None
        self._periodic_stop = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections = set()
        self._number = 0
        self._latency = 0.0
        self._stalled_until = 0.0
        self._cuts = []                  # [remaining, n_bytes, direction]
        self._triggers = []
        self._counters = dict.fromkeys(
            ("connections", "refused", "upstream_failures", "bytes_up", "bytes_down", "resets",
             "stalls", "delayed_chunks"), 0)
        self._counters["stalled_seconds"] = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(_POLL)
        self._listener = listener
        self._deadline = time.monotonic() + self.lifetime
        self._accept_thread = threading.Thread(target=self._accept_loop,
                                               name="faultproxy-accept-%s" % self.name, daemon=True)
        self._accept_thread.start()
        return self

    def stop(self):
        """Stops accepting, cuts every connection, ends the threads (bounded wait)."""
        self._stopping.set()
        self._periodic_stop.set()
        if self._accept_thread is not None and self._accept_thread is not threading.current_thread():
            self._accept_thread.join(5)
        if self._periodic_thread is not None:
            self._periodic_thread.join(5)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.cut()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def port(self):
        return self._listener.getsockname()[1]

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    @property
    def stopped(self):
        return self._stopping.is_set()

    def _accept_loop(self):
        while not self._stopping.is_set():
            if time.monotonic() >= self._deadline:
                self._stopping.set()      # the lifetime is up: stop by ourselves
                break
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                too_many = len(self._connections) >= self.max_connections
            if too_many:
                self._count("refused")
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self._count("upstream_failures")
                _hard_close(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._number += 1
                connection = _Connection(self, client, upstream, self._number)
                self._connections.add(connection)
                self._counters["connections"] += 1
            connection.start()
        # Stopping (by stop() or by the lifetime): cut what is left.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.cut()

    def _forget(self, connection):
        with self._lock:
            self._connections.discard(connection)

    # -- switches ----------------------------------------------------------------------------------

    def set_latency(self, seconds):
        self._latency = max(0.0, float(seconds))

    def reset_after(self, n_bytes, times=1, direction="up", min_interval=0.0):
        """Arms ``times`` cuts after ``n_bytes`` forwarded in ``direction`` (see the module doc).

        ``min_interval``: after a cut, the next one of this arming waits at least that many
        seconds (spreads the faults out in time instead of cutting every retry in a row).
        """
        if direction not in ("up", "down", "both"):
            raise ValueError("direction must be up, down or both")
        with self._lock:
            for connection in self._connections:
                connection.sent = {"up": 0, "down": 0}
            self._cuts.append([int(times), int(n_bytes), direction, float(min_interval), 0.0])

    def stall(self, seconds):
        self._stall_for(seconds)

    def on_pattern(self, pattern, action, seconds=0.0, times=1, direction="up"):
        if action not in ("reset", "stall"):
            raise ValueError("action must be reset or stall")
        with self._lock:
            self._triggers.append(_Trigger(bytes(pattern), action, float(seconds), int(times),
                                           direction))

    def reset_all(self):
        """Cuts every open connection now; returns how many."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.cut()
        if connections:
            self._count("resets", len(connections))
        return len(connections)

    def periodic_resets(self, every, first_after=None):
        """``reset_all()`` every ``every`` seconds on a background thread (until stop)."""
        self.clear_periodic()
        self._periodic_stop = threading.Event()
        stop_event = self._periodic_stop

        def run():
            wait = every if first_after is None else first_after
            while not stop_event.wait(wait) and not self._stopping.is_set():
                self.reset_all()
                with self._lock:
                    self._counters.setdefault("periodic_rounds", 0)
                    self._counters["periodic_rounds"] += 1
                wait = every
        self._periodic_thread = threading.Thread(target=run, name="faultproxy-periodic-%s"
                                                 % self.name, daemon=True)
        self._periodic_thread.start()

    def clear_periodic(self):
        self._periodic_stop.set()
        if self._periodic_thread is not None:
            self._periodic_thread.join(5)
            self._periodic_thread = None

    def clear(self):
        """No latency, no stall, no armed cuts or triggers (periodic resets stop too)."""
        self.clear_periodic()
        with self._lock:
            self._latency = 0.0
            self._stalled_until = 0.0
            self._cuts = []
            self._triggers = []

    def counters(self):
        with self._lock:
            snapshot = dict(self._counters)
            snapshot["open"] = len(self._connections)
        snapshot["stalled_seconds"] = round(snapshot["stalled_seconds"], 3)
        return snapshot

    # -- internals used by the connections -----------------------------------------------------------

    def _count(self, name, amount=1):
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def _stall_for(self, seconds):
        seconds = max(0.0, float(seconds))
        with self._lock:
            now = time.monotonic()
            current = max(self._stalled_until, now)
            until = max(current, now + seconds)
            self._counters["stalls"] += 1
            self._counters["stalled_seconds"] += until - current
            self._stalled_until = until

    def _wait_while_stalled(self, connection):
        # Bounded by the stall's end, stop() and the connection's end.
        while not connection.closed.is_set() and not self._stopping.is_set():
            remaining = self._stalled_until - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, _POLL))

    def _match_trigger(self, connection, direction, data):
        with self._lock:
            if not self._triggers:
                return None
            window = connection.tail[direction] + data
            connection.tail[direction] = data[-64:]
            for trigger in self._triggers:
                if trigger.times <= 0 or trigger.direction not in (direction, "both"):
                    continue
                if trigger.pattern in window:
                    trigger.times -= 1
                    return trigger.action, trigger.seconds
        return None

    def _cut_limit(self, connection, direction, size):
        """Bytes of this chunk to forward before a cut, or None when no cut applies."""
        with self._lock:
            before = connection.sent[direction]
            connection.sent[direction] = before + size
            now = time.monotonic()
            for cut in self._cuts:
                remaining, n_bytes, cut_direction, min_interval, next_allowed = cut
                if remaining <= 0 or cut_direction not in (direction, "both") or now < next_allowed:
                    continue
                if before + size >= n_bytes:
                    cut[0] -= 1
                    cut[4] = now + min_interval
                    return max(0, n_bytes - before)
        return None
