"""One client connection of the local Event Hubs endpoint, served on its own thread: the socket
loop, SASL, sessions and links (the producer, consumer, ``$cbs`` and ``$management`` links), link
credit and flow, and the frames of each delivery.

Every delivery is settled; everything the endpoint sends is pre-settled.
"""
import collections
import itertools
import logging
import selectors
import socket
import struct
import time
import urllib.parse
from typing import TYPE_CHECKING

from emulators.eventhubs.codec import (AmqpDecodeError, Array, Described, Symbol, UByte, UInt,
                                       ULong, UShort, decode_value)
from emulators.eventhubs.frames import (ACCEPTED, AMQP_HEADER, ATTACH, BATCH_FORMAT, BEGIN, CLOSE,
                                        DETACH, DISPOSITION, END, FIELD_COUNT, FLOW, FRAME_SASL,
                                        OPEN, PARTITION_KEY, REJECTED, SASL_HEADER, SASL_INIT,
                                        SASL_MECHANISMS, SASL_OUTCOME, SELECTOR_FILTER, SOURCE,
                                        TARGET, TRANSFER, Message, amqp_error, frame)
from emulators.eventhubs.hub import parse_selector
from emulators.eventhubs.nodes import put_token, read_management, reply_bytes

if TYPE_CHECKING:    # the server imports this module
    from emulators.eventhubs.server import LocalEventHubs

_LOGGER = logging.getLogger(__name__)


class _ConnectionClosed(Exception):
    pass


class _Link:
    def __init__(self, session, name, handle, client_sends, kind, source, target):
        self.session = session
        self.name = name
        self.handle = handle            # the client's handle; the reply uses the same number
        self.client_sends = client_sends
        self.kind = kind                # "cbs", "management", "producer" or "consumer"
        self.source = source
        self.target = target
        self.partition = None           # producer to one partition, or consumer partition
        self.delivery_count = 0
        self.credit = 0
        self.outbox = collections.deque()   # replies waiting for credit (cbs, management)
        self.cursor = 0                     # consumer: index of the next event to deliver
        self.partial = None                 # a multi-frame delivery being received


class _Session:
    def __init__(self, channel, next_incoming_id, remote_incoming_window):
        self.channel = channel          # the client's channel; the reply uses the same number
        self.next_incoming_id = next_incoming_id
        self.next_outgoing_id = 1
        self.remote_incoming_window = remote_incoming_window
        self.links = {}
        self.refused = set()            # handles this endpoint detached right after attaching


_INCOMING_WINDOW = 2 ** 31 - 1
_LINK_CREDIT = 1000


class Connection:
    """One client connection, served on its own thread."""

    def __init__(self, server: "LocalEventHubs", sock: socket.socket, peer: str) -> None:
        self.server = server
        self.hub = server._hub
        self.sock = sock
        self.peer = peer
        self.sessions = {}
        self.tokens = {}                # authorised audience path -> expiry (epoch seconds)
        self.remote_max_frame = 512
        self.remote_idle_timeout = None
        self.last_sent = time.monotonic()
        self._inbuf = bytearray()
        self._expect_header = True
        self._sasl_done = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)     # a full wake-up pipe already means "wake up"
        self._closed = False
        self._delivery_tags = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Wakes the connection's thread: new events may be waiting for its consumers."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def abort(self) -> None:
        """Drops the connection without an AMQP close, as a network failure would."""
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.wake()

    def run(self) -> None:
        """Serves the connection until it closes, fails or is aborted."""
        selector = selectors.DefaultSelector()
        try:
            selector.register(self.sock, selectors.EVENT_READ, "socket")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._closed:
                timeout = self.remote_idle_timeout / 2 if self.remote_idle_timeout else None
                for key, _ in selector.select(timeout):
                    if key.data == "wake":
                        self._wake_r.recv(4096)
                        continue
                    data = self.sock.recv(1 << 16)
                    if not data:
                        raise _ConnectionClosed()
                    self._inbuf += data
                    self._process_input()
                if self._closed:
                    break
                self._pump()
                if self.remote_idle_timeout and \
                        time.monotonic() - self.last_sent > self.remote_idle_timeout / 2:
                    self._send(b"\x00\x00\x00\x08\x02\x00\x00\x00")   # empty frame: keep-alive
        except (_ConnectionClosed, OSError):
            pass
        except AmqpDecodeError as exc:
            _LOGGER.info("Local Event Hubs: malformed AMQP from %s (%s); closing", self.peer, exc)
        except Exception:  # a bug here must not take the test process down silently
            _LOGGER.exception("Local Event Hubs connection from %s failed", self.peer)
        finally:
            selector.close()
            self._closed = True
            for closable in (self.sock, self._wake_r, self._wake_w):
                try:
                    closable.close()
                except OSError:
                    pass
            self.server._forget(self)
            _LOGGER.debug("Local Event Hubs connection from %s closed", self.peer)

    def _send(self, data):
        self.sock.sendall(data)
        self.last_sent = time.monotonic()

    # -- input -------------------------------------------------------------------------------

    def _process_input(self):
        while not self._closed:
            if self._expect_header:
                if len(self._inbuf) < 8:
                    return
                header = bytes(self._inbuf[:8])
                del self._inbuf[:8]
                self._on_protocol_header(header)
                continue
            if len(self._inbuf) < 8:
                return
            size, doff, frame_type, channel = struct.unpack_from(">IBBH", self._inbuf)
            if size < 8 or doff < 2:
                raise _ConnectionClosed()
            if len(self._inbuf) < size:
                return
            received = memoryview(bytes(self._inbuf[:size]))
            del self._inbuf[:size]
            if size == doff * 4:
                continue                # empty frame: the client's keep-alive
            body = received[doff * 4:]
            performative, end = decode_value(body, 0)
            if not isinstance(performative, Described):
                raise _ConnectionClosed()
            fields = list(performative.value or [])
            fields += [None] * (FIELD_COUNT.get(int(performative.descriptor), 0) - len(fields))
            payload = body[end:]
            if frame_type == FRAME_SASL:
                self._on_sasl(int(performative.descriptor), fields)
            else:
                self._on_frame(channel, int(performative.descriptor), fields, payload)

    def _on_protocol_header(self, header):
        self._expect_header = False
        if header == SASL_HEADER and not self._sasl_done:
            self._send(SASL_HEADER + frame(0, SASL_MECHANISMS, [Array([Symbol("ANONYMOUS")])],
                                             frame_type=FRAME_SASL))
        elif header == AMQP_HEADER:
            self._send(AMQP_HEADER)
        else:
            self._send(SASL_HEADER)    # the protocol we speak; the client will give up
            raise _ConnectionClosed()

    def _on_sasl(self, code, fields):
        if code != SASL_INIT:
            raise _ConnectionClosed()
        ok = fields[0] == "ANONYMOUS"
        # Credentials are checked later by CBS, as on the service; SASL only says "anonymous".
        self._send(frame(0, SASL_OUTCOME, [UByte(0 if ok else 1), None], frame_type=FRAME_SASL))
        if not ok:
            raise _ConnectionClosed()
        self._sasl_done = True
        self._expect_header = True

    def _on_frame(self, channel, code, fields, payload):
        if code == OPEN:
            self.remote_max_frame = max(512, min(fields[2] or 2 ** 32 - 1, 2 ** 32 - 1))
            if fields[4]:
                self.remote_idle_timeout = fields[4] / 1000.0
            self._send(frame(0, OPEN, [
                "local-eventhubs-%s" % self.server.hub, None, UInt(self.server.max_frame_size),
                UShort(65535), None, None, None, None, None, None]))
        elif code == BEGIN:
            session = _Session(channel, fields[1] or 0, fields[2] or 0)
            self.sessions[channel] = session
            self._send(frame(channel, BEGIN, [
                UShort(channel), UInt(session.next_outgoing_id), UInt(_INCOMING_WINDOW),
                UInt(_INCOMING_WINDOW), UInt(65535), None, None, None]))
        elif code == END:
            if self.sessions.pop(channel, None) is not None:
                self._send(frame(channel, END, [None]))
        elif code == CLOSE:
            self._send(frame(0, CLOSE, [None]))
            raise _ConnectionClosed()
        elif channel not in self.sessions:
            # The SDK ends a session before detaching its links; frames for a session that has
            # ended are moot.
            return
        elif code == ATTACH:
            self._on_attach(self.sessions[channel], fields)
        elif code == FLOW:
            self._on_flow(self.sessions[channel], fields)
        elif code == TRANSFER:
            self._on_transfer(self.sessions[channel], fields, payload)
        elif code == DISPOSITION:
            pass                        # everything this endpoint sends is pre-settled
        elif code == DETACH:
            session = self.sessions[channel]
            session.links.pop(fields[0], None)
            if fields[0] in session.refused:
                session.refused.discard(fields[0])   # the answer to our own detach
            else:
                self._send(frame(channel, DETACH, [UInt(fields[0]), bool(fields[1]), None]))

    # -- links -------------------------------------------------------------------------------

    def _on_attach(self, session, fields):
        name, handle, role, send_settle_mode = fields[0], fields[1], fields[2], fields[3]
        source, target = fields[5], fields[6]
        client_sends = not role         # role false: the client is the sender
        terminus = target if client_sends else source
        address = terminus.value[0] if isinstance(terminus, Described) and terminus.value else None
        kind, partition, error = self._resolve(address, client_sends)
        link = _Link(session, name, handle, client_sends, kind, source, target)
        link.partition = partition
        if client_sends:
            link.delivery_count = fields[9] or 0
        # The reply must carry source and target, or the SDK drops the link.
        reply_source = source if source is not None else Described(ULong(SOURCE), [None] * 11)
        reply_target = target if target is not None else Described(ULong(TARGET), [None] * 7)
        self._send(frame(session.channel, ATTACH, [
            name, UInt(handle), not client_sends,
            UByte(send_settle_mode) if send_settle_mode is not None else UByte(2), UByte(0),
            reply_source, reply_target, None, False,
            None if client_sends else UInt(0),
            ULong(self.server.max_message_size), None, None, None]))
        if error is not None:
            self._send(frame(session.channel, DETACH, [UInt(handle), True, amqp_error(*error)]))
            session.refused.add(handle)
            return
        session.links[handle] = link
        if kind == "consumer":
            selector = None
            filters = source.value[7] if len(source.value) > 7 else None
            for key, value in (filters or {}).items():
                descriptor = value.descriptor if isinstance(value, Described) else None
                if SELECTOR_FILTER in (key, descriptor):
                    expression = value.value if isinstance(value, Described) else value
                    selector = parse_selector(expression)
            link.cursor = self.hub.start_index(partition, selector)
            self.server._note_consumer_start(self.hub.partition_ids[partition], link.cursor)
        if client_sends:
            link.credit = _LINK_CREDIT
            self._send_link_flow(session, link)

    def _resolve(self, address, client_sends):
        """(kind, partition index, error) for a link address."""
        if address in ("$cbs", "$management"):
            return address.lstrip("$"), None, None
        if not isinstance(address, str):
            return None, None, ("amqp:invalid-field", "The link has no address.")
        parsed = urllib.parse.urlparse(address)
        parts = [p for p in (parsed.path if parsed.scheme else address).split("/") if p]
        lowered = [p.lower() for p in parts]
        if not lowered or lowered[0] != self.hub.name.lower():
            return None, None, ("amqp:not-found", "The messaging entity '%s' could not be found."
                                % "/".join(parts))
        if not self._authorised(lowered):
            return None, None, ("amqp:unauthorized-access",
                                "Unauthorized access. A valid token is required for '%s'."
                                % "/".join(parts))
        rest = lowered[1:]
        if client_sends and not rest:
            return "producer", None, None
        if client_sends and len(rest) == 2 and rest[0] == "partitions":
            partition = self.hub.partition_index(rest[1])
            if partition is not None:
                return "producer", partition, None
        if not client_sends and len(rest) == 4 and rest[0] == "consumergroups" \
                and rest[2] == "partitions":
            partition = self.hub.partition_index(rest[3])
            if partition is not None:
                return "consumer", partition, None
        return None, None, ("amqp:not-found", "The messaging entity '%s' could not be found."
                            % "/".join(parts))

    def _authorised(self, path):
        now = time.time()
        return any(expiry > now and tuple(path[:len(granted)]) == granted
                   for granted, expiry in self.tokens.items())

    def _send_link_flow(self, session, link):
        self._send(frame(session.channel, FLOW, [
            UInt(session.next_incoming_id), UInt(_INCOMING_WINDOW),
            UInt(session.next_outgoing_id), UInt(_INCOMING_WINDOW), UInt(link.handle),
            UInt(link.delivery_count), UInt(link.credit), None, False, False, None]))

    def _on_flow(self, session, fields):
        next_incoming_id = fields[0] if fields[0] is not None else 1
        session.remote_incoming_window = next_incoming_id + (fields[1] or 0) - \
            session.next_outgoing_id
        if fields[4] is None:
            return
        link = session.links.get(fields[4])
        if link is None or link.client_sends:
            return
        delivery_count = fields[5] if fields[5] is not None else link.delivery_count
        link.credit = max(0, delivery_count + (fields[6] or 0) - link.delivery_count)
        self._pump()
        if fields[8] and link.credit:   # drain: nothing more to send, use the credit up
            link.delivery_count += link.credit
            link.credit = 0
            self._send_link_flow(session, link)
        elif fields[9]:                 # echo
            self._send_link_flow(session, link)

    def _on_transfer(self, session, fields, payload):
        session.next_incoming_id += 1
        link = session.links.get(fields[0])
        if link is None or not link.client_sends:
            return
        if link.partial is None:
            link.partial = {"delivery_id": fields[1], "format": fields[3] or 0,
                            "settled": bool(fields[4]), "payload": bytearray()}
        delivery = link.partial
        delivery["payload"] += payload
        if fields[9]:                   # aborted: the client gave up on this delivery
            link.partial = None
            return
        if fields[5]:                   # more frames follow
            return
        link.partial = None
        link.delivery_count += 1
        link.credit -= 1
        if link.credit < _LINK_CREDIT // 2:
            link.credit = _LINK_CREDIT
            self._send_link_flow(session, link)
        state = self._on_delivery(session, link, delivery)
        if not delivery["settled"]:
            self._send(frame(session.channel, DISPOSITION, [
                True, UInt(delivery["delivery_id"]), UInt(delivery["delivery_id"]), True, state,
                None]))
        self._pump()

    def _on_delivery(self, session, link, delivery):
        """Handles one complete incoming message; returns the delivery outcome."""
        accepted = Described(ULong(ACCEPTED), [])
        payload = bytes(delivery["payload"])
        if len(payload) > self.server.max_message_size:
            return Described(ULong(REJECTED), [amqp_error(
                "amqp:link:message-size-exceeded",
                "The received message (delivery-id:%s, size:%d bytes) exceeds the limit (%d bytes)"
                " currently allowed on the link." % (delivery["delivery_id"], len(payload),
                                                     self.server.max_message_size))])
        try:
            message = Message(payload)
        except AmqpDecodeError as exc:
            return Described(ULong(REJECTED), [amqp_error("amqp:decode-error", str(exc))])
        if link.kind in ("cbs", "management"):
            status, description, body = (self._put_token(message) if link.kind == "cbs"
                                         else self._management(message))
            self._reply(session, link, message, status, description, body)
            return accepted
        if link.kind != "producer":
            return accepted
        events = message.data if delivery["format"] == BATCH_FORMAT else [payload]
        key = message.annotations.get(PARTITION_KEY)
        partition = link.partition if link.partition is not None else self.hub.route(key)
        failure = self.server._take_failure()
        if failure is not None and failure.after_store:
            self.hub.append(partition, events, key)
            self.server._events_changed()
        if failure is not None:
            _LOGGER.info("Local Event Hubs: dropping the connection before settling a delivery "
                         "(test hook, events %s)", "stored" if failure.after_store else "lost")
            self.abort()
            raise _ConnectionClosed()
        self.hub.append(partition, events, key)
        self.server._events_changed()
        return accepted

    # -- CBS and management --------------------------------------------------------------------

    def _put_token(self, message):
        answer = put_token(message, self.hub.name, self.server.key_name, self.server.key)
        if answer.grant is not None:
            path, expiry = answer.grant
            self.tokens[path] = expiry
        if answer.refusal is not None:
            self.server._note_auth_failure()
            _LOGGER.info("Local Event Hubs: put-token rejected from %s: %s", self.peer,
                         answer.refusal)
        return answer.status, answer.description, None

    def _management(self, message):
        return read_management(message, self.hub, self._authorised((self.hub.name.lower(),)))

    def _reply(self, session, request_link, request, status, description, body):
        """Queues a response on the client's receiving link for the same node, same session."""
        reply_link = next((link for link in session.links.values()
                           if not link.client_sends and link.kind == request_link.kind), None)
        if reply_link is not None:
            reply_link.outbox.append(reply_bytes(request, status, description, body))

    # -- output ------------------------------------------------------------------------------

    def _pump(self):
        """Sends what links have credit for: management replies and consumer events."""
        for session in list(self.sessions.values()):
            for link in list(session.links.values()):
                if link.client_sends:
                    continue
                while link.credit > 0 and link.outbox and session.remote_incoming_window > 0:
                    self._deliver(session, link, link.outbox.popleft())
                if link.kind == "consumer":
                    while link.credit > 0 and session.remote_incoming_window > 0:
                        batch = self.hub.read(link.partition, link.cursor,
                                              min(link.credit, 100))
                        if not batch:
                            break
                        for stored in batch:
                            self._deliver(session, link, stored.wire)
                            link.cursor += 1

    def _deliver(self, session, link, message):
        """One pre-settled delivery, split into frames the client accepts."""
        delivery_id = session.next_outgoing_id
        tag = struct.pack(">I", next(self._delivery_tags) & 0xFFFFFFFF)

        def fields(more):
            return [UInt(link.handle), UInt(delivery_id), tag, UInt(0), True, more, None, None,
                    False, False, False]

        overhead = len(frame(session.channel, TRANSFER, fields(True))) + 16
        chunk = max(1, self.remote_max_frame - overhead)
        frames, count = bytearray(), 0
        for start in range(0, max(len(message), 1), chunk):
            piece = message[start:start + chunk]
            frames += frame(session.channel, TRANSFER, fields(start + chunk < len(message)),
                             piece)
            count += 1
        self._send(bytes(frames))
        session.next_outgoing_id += 1
        # The SDK counts its incoming window per frame (and ids per delivery): do the same.
        session.remote_incoming_window -= count
        link.delivery_count += 1
        link.credit -= 1
