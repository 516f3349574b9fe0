"""A local Azure Event Hubs-compatible AMQP 1.0 endpoint, for tests and local runs.

Microsoft's Event Hubs emulator is a container image; this is a small pure-Python endpoint that the
real ``azure-eventhub`` SDK (5.x, pure-Python AMQP transport) talks to over plain AMQP on loopback.
It implements what the SDK's producer, consumer and management calls need, and checks credentials
the way the service does, so tests exercise the real SDK end to end:

* SASL ``ANONYMOUS`` (authentication happens afterwards, through CBS, as on the service);
* CBS ``put-token`` with a real shared-access-signature check against the configured key and key
  name: a wrong key, key name, expired token or a token for another hub is answered with status
  401, which the SDK raises as ``azure.eventhub.exceptions.AuthenticationError``;
* ``$management`` ``READ`` of the hub (``get_eventhub_properties``, ``get_partition_ids``) and of a
  partition (``get_partition_properties``);
* producer links to the hub or to ``/Partitions/N``: batches (message format ``0x80013700``, one
  complete event per Data section), single events, routing by the ``x-opt-partition-key``
  annotation (a stable hash, not the service's own), by partition id, or round robin; deliveries
  over the link's ``max-message-size`` are rejected with ``amqp:link:message-size-exceeded``;
* consumer links ``/ConsumerGroups/<any>/Partitions/N`` with the offset, sequence-number or
  enqueued-time selector filter; events carry ``x-opt-sequence-number``, ``x-opt-offset`` and
  ``x-opt-enqueued-time`` like the service's.

Every delivery is settled; every performative is written with all of its fields, because the SDK's
AMQP layer reads fields by position. Events are kept in memory only.

Usage in tests::

    with LocalEventHubs(partitions=4) as hubs:
        producer = EventHubProducerClient.from_connection_string(hubs.connection_string)
        ...
        assert [e.body for e in hubs.events()] == [...]

    hubs.fail_next_transfers(1)   # the next producer delivery drops the connection before settling
    hubs.drop_connections()       # drop every client connection now

From a shell (runs until Ctrl-C and prints its connection string)::

    python -m emulators.eventhubs [--host 127.0.0.1] [--port 5672] [--hub NAME] [--partitions 4]

The key is a throwaway local development key; the endpoint binds to loopback unless told otherwise
and has no TLS, so it must never be exposed to a network.
"""
import base64
import collections
import datetime
import hashlib
import hmac
import ipaddress
import itertools
import logging
import re
import secrets
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from typing import Any, NamedTuple, Optional

_LOGGER = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# AMQP 1.0 type system: just enough of an encoder/decoder for the transport and message sections.
# ------------------------------------------------------------------------------------------------


class Symbol(str):
    """An AMQP symbol (ASCII name), as opposed to an AMQP string."""


class UByte(int):
    pass


class UShort(int):
    pass


class UInt(int):
    pass


class ULong(int):
    pass


class Byte(int):
    pass


class Short(int):
    pass


class Int(int):
    pass


class Timestamp(int):
    """Milliseconds since the Unix epoch."""


class Float32(float):
    pass


class Described(NamedTuple):
    descriptor: Any
    value: Any


class Array(list):
    """An AMQP array: every element has one type (given by the first element's Python type)."""


class _Raw(bytes):
    """An encoded value kept verbatim (types this codec does not model, e.g. decimals, char)."""


class AmqpDecodeError(ValueError):
    pass


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


def _encode_variable(out, small_code, large_code, data):
    if len(data) < 256:
        out.append(small_code)
        out.append(len(data))
    else:
        out.append(large_code)
        out += _U32.pack(len(data))
    out += data


def encode_value(value, out):
    """Appends the AMQP encoding of ``value`` to the bytearray ``out``.

    Python types map to AMQP types as follows: None null, bool boolean, int long, float double,
    str string, bytes binary, uuid.UUID uuid, list/tuple list, dict map; the wrapper classes above
    select the other types.
    """
    if value is None:
        out.append(0x40)
    elif isinstance(value, bool):
        out.append(0x41 if value else 0x42)
    elif isinstance(value, Described):
        out.append(0x00)
        encode_value(value.descriptor, out)
        encode_value(value.value, out)
    elif isinstance(value, _Raw):
        out += value
    elif isinstance(value, Symbol):
        _encode_variable(out, 0xA3, 0xB3, value.encode("ascii"))
    elif isinstance(value, str):
        _encode_variable(out, 0xA1, 0xB1, value.encode("utf-8"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _encode_variable(out, 0xA0, 0xB0, bytes(value))
    elif isinstance(value, int):
        _encode_int(value, out)
    elif isinstance(value, Float32):
        out.append(0x72)
        out += _F32.pack(value)
    elif isinstance(value, float):
        out.append(0x82)
        out += _F64.pack(value)
    elif isinstance(value, uuid.UUID):
        out.append(0x98)
        out += value.bytes
    elif isinstance(value, Array):
        _encode_array(value, out)
    elif isinstance(value, (list, tuple)):
        body = bytearray()
        for item in value:
            encode_value(item, body)
        # Always list32: the SDK parses performatives as list8/list32 only (never list0).
        out.append(0xD0)
        out += _U32.pack(len(body) + 4)
        out += _U32.pack(len(value))
        out += body
    elif isinstance(value, dict):
        body = bytearray()
        for key, item in value.items():
            encode_value(key, body)
            encode_value(item, body)
        out.append(0xD1)
        out += _U32.pack(len(body) + 4)
        out += _U32.pack(2 * len(value))
        out += body
    else:
        raise TypeError("cannot encode %s as AMQP" % type(value).__name__)
    return out


def _encode_int(value, out):
    if isinstance(value, UInt):
        if value == 0:
            out.append(0x43)
        elif value < 256:
            out += bytes((0x52, value))
        else:
            out.append(0x70)
            out += _U32.pack(value)
    elif isinstance(value, ULong):
        if value == 0:
            out.append(0x44)
        elif value < 256:
            out += bytes((0x53, value))
        else:
            out.append(0x80)
            out += _U64.pack(value)
    elif isinstance(value, UByte):
        out += bytes((0x50, value))
    elif isinstance(value, UShort):
        out.append(0x60)
        out += _U16.pack(value)
    elif isinstance(value, Byte):
        out.append(0x51)
        out += _I8.pack(value)
    elif isinstance(value, Short):
        out.append(0x61)
        out += _I16.pack(value)
    elif isinstance(value, Int):
        if -128 <= value <= 127:
            out.append(0x54)
            out += _I8.pack(value)
        else:
            out.append(0x71)
            out += _I32.pack(value)
    elif isinstance(value, Timestamp):
        out.append(0x83)
        out += _I64.pack(value)
    elif -128 <= value <= 127:
        out.append(0x55)
        out += _I8.pack(value)
    else:
        out.append(0x81)
        out += _I64.pack(value)


# Fixed-width element encodings used inside arrays: (constructor, packer).
_ARRAY_ELEMENT = (
    (bool, 0x56, lambda v: b"\x01" if v else b"\x00"),
    (Symbol, 0xB3, lambda v: _U32.pack(len(v)) + v.encode("ascii")),
    (str, 0xB1, lambda v: _U32.pack(len(v.encode("utf-8"))) + v.encode("utf-8")),
    (bytes, 0xB0, lambda v: _U32.pack(len(v)) + v),
    (UInt, 0x70, _U32.pack),
    (ULong, 0x80, _U64.pack),
    (Int, 0x71, _I32.pack),
    (Timestamp, 0x83, _I64.pack),
    (int, 0x81, _I64.pack),
    (uuid.UUID, 0x98, lambda v: v.bytes),
)


def _encode_array(values, out):
    body = bytearray()
    if values:
        first = values[0]
        for kind, constructor, pack in _ARRAY_ELEMENT:
            if isinstance(first, kind):
                break
        else:
            raise TypeError("cannot encode an AMQP array of %s" % type(first).__name__)
        body.append(constructor)
        for item in values:
            body += pack(item)
    out.append(0xF0)
    out += _U32.pack(len(body) + 4)
    out += _U32.pack(len(values))
    out += body


_FIXED = {
    0x40: (0, lambda b: None), 0x41: (0, lambda b: True), 0x42: (0, lambda b: False),
    0x43: (0, lambda b: UInt(0)), 0x44: (0, lambda b: ULong(0)), 0x45: (0, lambda b: []),
    0x50: (1, lambda b: UByte(b[0])), 0x51: (1, lambda b: Byte(_I8.unpack(b)[0])),
    0x52: (1, lambda b: UInt(b[0])), 0x53: (1, lambda b: ULong(b[0])),
    0x54: (1, lambda b: Int(_I8.unpack(b)[0])), 0x55: (1, lambda b: _I8.unpack(b)[0]),
    0x56: (1, lambda b: b[0] != 0),
    0x60: (2, lambda b: UShort(_U16.unpack(b)[0])), 0x61: (2, lambda b: Short(_I16.unpack(b)[0])),
    0x70: (4, lambda b: UInt(_U32.unpack(b)[0])), 0x71: (4, lambda b: Int(_I32.unpack(b)[0])),
    0x72: (4, lambda b: Float32(_F32.unpack(b)[0])),
    0x80: (8, lambda b: ULong(_U64.unpack(b)[0])), 0x81: (8, lambda b: _I64.unpack(b)[0]),
    0x82: (8, lambda b: _F64.unpack(b)[0]), 0x83: (8, lambda b: Timestamp(_I64.unpack(b)[0])),
    0x98: (16, lambda b: uuid.UUID(bytes=bytes(b))),
}
# Kept verbatim: char, decimal32/64/128.
_RAW_WIDTH = {0x73: 4, 0x74: 4, 0x84: 8, 0x94: 16}


def decode_value(buf, pos=0):
    """Decodes one AMQP value from ``buf`` at ``pos``; returns ``(value, next position)``."""
    try:
        code = buf[pos]
        pos += 1
        if code == 0x00:
            descriptor, pos = decode_value(buf, pos)
            value, pos = decode_value(buf, pos)
            return Described(descriptor, value), pos
        return _decode_with_constructor(buf, pos, code)
    except (IndexError, struct.error) as exc:
        raise AmqpDecodeError("truncated AMQP value: %s" % exc) from None


def _decode_with_constructor(buf, pos, code):
    fixed = _FIXED.get(code)
    if fixed is not None:
        width, convert = fixed
        if pos + width > len(buf):
            raise AmqpDecodeError("truncated AMQP value")
        return convert(buf[pos:pos + width]), pos + width
    if code in _RAW_WIDTH:
        end = pos + _RAW_WIDTH[code]
        return _Raw(bytes(buf[pos - 1:end])), end
    if code in (0xA0, 0xA1, 0xA3, 0xB0, 0xB1, 0xB3):
        if code < 0xB0:
            size, pos = buf[pos], pos + 1
        else:
            size, pos = _U32.unpack_from(buf, pos)[0], pos + 4
        data = bytes(buf[pos:pos + size])
        if len(data) != size:
            raise AmqpDecodeError("truncated AMQP value")
        pos += size
        if code in (0xA0, 0xB0):
            return data, pos
        if code in (0xA3, 0xB3):
            return Symbol(data.decode("ascii", errors="replace")), pos
        return data.decode("utf-8", errors="replace"), pos
    if code in (0xC0, 0xC1, 0xE0, 0xD0, 0xD1, 0xF0):
        if code in (0xC0, 0xC1, 0xE0):
            count, pos = buf[pos + 1], pos + 2
        else:
            count, pos = _U32.unpack_from(buf, pos + 4)[0], pos + 8
        if code in (0xC0, 0xD0):
            items = []
            for _ in range(count):
                item, pos = decode_value(buf, pos)
                items.append(item)
            return items, pos
        if code in (0xC1, 0xD1):
            result = {}
            for _ in range(count // 2):
                key, pos = decode_value(buf, pos)
                value, pos = decode_value(buf, pos)
                result[key if not isinstance(key, list) else tuple(key)] = value
            return result, pos
        # array: one constructor (possibly described) for every element
        items = Array()
        if count:
            element_code, pos = buf[pos], pos + 1
            descriptor = None
            if element_code == 0x00:
                descriptor, pos = decode_value(buf, pos)
                element_code, pos = buf[pos], pos + 1
            for _ in range(count):
                item, pos = _decode_with_constructor(buf, pos, element_code)
                items.append(item if descriptor is None else Described(descriptor, item))
        return items, pos
    raise AmqpDecodeError("unknown AMQP constructor 0x%02x" % code)


# ------------------------------------------------------------------------------------------------
# Frames and performatives
# ------------------------------------------------------------------------------------------------

_AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
_SASL_HEADER = b"AMQP\x03\x01\x00\x00"
_FRAME_AMQP, _FRAME_SASL = 0, 1

OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
_ERROR = 0x1D
_ACCEPTED, _REJECTED = 0x24, 0x25
_SOURCE, _TARGET = 0x28, 0x29
_SASL_MECHANISMS, _SASL_INIT, _SASL_OUTCOME = 0x40, 0x41, 0x44
# Full field counts. The SDK reads fields by position (and a TRANSFER's payload after field 11), so
# every performative is written with all of its fields, trailing nulls included.
_FIELD_COUNT = {OPEN: 10, BEGIN: 8, ATTACH: 14, FLOW: 11, TRANSFER: 11, DISPOSITION: 6,
                DETACH: 3, END: 1, CLOSE: 1, _SASL_MECHANISMS: 1, _SASL_OUTCOME: 2}

# Message sections.
_HEADER, _DELIVERY_ANNOTATIONS, _MESSAGE_ANNOTATIONS, _PROPERTIES = 0x70, 0x71, 0x72, 0x73
_APPLICATION_PROPERTIES, _DATA, _AMQP_SEQUENCE, _AMQP_VALUE, _FOOTER = 0x74, 0x75, 0x76, 0x77, 0x78
_SECTION_NAMES = {
    "amqp:header:list": _HEADER, "amqp:delivery-annotations:map": _DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": _MESSAGE_ANNOTATIONS, "amqp:properties:list": _PROPERTIES,
    "amqp:application-properties:map": _APPLICATION_PROPERTIES, "amqp:data:binary": _DATA,
    "amqp:amqp-sequence:list": _AMQP_SEQUENCE, "amqp:amqp-value:*": _AMQP_VALUE,
    "amqp:footer:map": _FOOTER}
_BATCH_FORMAT = 0x80013700

_PARTITION_KEY = Symbol("x-opt-partition-key")
_SEQUENCE_NUMBER = Symbol("x-opt-sequence-number")
_OFFSET = Symbol("x-opt-offset")
_ENQUEUED_TIME = Symbol("x-opt-enqueued-time")
_SELECTOR_FILTER = "apache.org:selector-filter:string"


def _performative(code, fields):
    fields = list(fields)
    fields += [None] * (_FIELD_COUNT[code] - len(fields))
    return Described(ULong(code), fields)


def _frame(channel, code, fields, payload=b"", frame_type=_FRAME_AMQP):
    body = encode_value(_performative(code, fields), bytearray())
    body += payload
    return struct.pack(">IBBH", 8 + len(body), 2, frame_type, channel) + bytes(body)


def _error(condition, description):
    return Described(ULong(_ERROR), [Symbol(condition), description, None])


def _descriptor_code(descriptor):
    if isinstance(descriptor, str):
        return _SECTION_NAMES.get(descriptor, descriptor)
    return int(descriptor)


class _Section(NamedTuple):
    code: int
    value: Any
    raw: bytes


def _split_sections(payload):
    """The sections of an encoded message, each with its own bytes (to re-send it unchanged)."""
    sections, pos, view = [], 0, memoryview(payload)
    while pos < len(payload):
        start = pos
        value, pos = decode_value(view, pos)
        if not isinstance(value, Described):
            raise AmqpDecodeError("message section is not a described type")
        sections.append(_Section(_descriptor_code(value.descriptor), value.value,
                                 bytes(view[start:pos])))
    return sections


class _Message:
    """A decoded message: the parts the endpoint looks at, plus its sections for re-encoding."""

    def __init__(self, payload):
        self.sections = _split_sections(payload)
        self.annotations, self.properties, self.application_properties = {}, [], {}
        self.data, self.value = [], None
        for section in self.sections:
            if section.code == _MESSAGE_ANNOTATIONS and isinstance(section.value, dict):
                self.annotations = section.value
            elif section.code == _PROPERTIES and isinstance(section.value, list):
                self.properties = section.value
            elif section.code == _APPLICATION_PROPERTIES and isinstance(section.value, dict):
                self.application_properties = section.value
            elif section.code == _DATA:
                self.data.append(section.value)
            elif section.code == _AMQP_VALUE:
                self.value = section.value

    def property(self, index):
        return self.properties[index] if len(self.properties) > index else None

    def app(self, name):
        value = self.application_properties.get(name)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _message_bytes(sections):
    out = bytearray()
    for code, value in sections:
        encode_value(Described(ULong(code), value), out)
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# The hub: partitions of stored events
# ------------------------------------------------------------------------------------------------


class ReceivedEvent(NamedTuple):
    """One event as the endpoint stored it (``LocalEventHubs.events()``)."""
    body: bytes                  # the Data sections joined (None for an AMQP value/sequence body)
    partition_key: Optional[str]
    message_id: Any              # the AMQP message-id: str for the SDK's string ids
    partition: str
    sequence_number: int
    offset: str
    enqueued_time: datetime.datetime
    content_type: Optional[str]
    properties: dict             # application properties


class _StoredEvent(NamedTuple):
    event: ReceivedEvent
    arrival: int                 # global arrival order across partitions
    enqueued_ms: int
    offset_value: int
    wire: bytes                  # the message as delivered to consumers, annotations included


def partition_for_key(partition_key, partition_count):
    """The partition index a partition key is routed to: stable across runs and processes.

    The service uses its own hash; this endpoint only guarantees the property that matters to
    publishers, that one key always lands on one partition.
    """
    digest = hashlib.sha256(partition_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partition_count


class _Hub:
    """Events of one event hub; thread-safe (connections run on their own threads)."""

    def __init__(self, name, partition_count):
        self.name = name
        self.partition_ids = [str(i) for i in range(partition_count)]
        self.created_ms = int(time.time() * 1000)
        self.partitions = [[] for _ in range(partition_count)]
        self._next_offset = [0] * partition_count
        self._arrival = itertools.count()
        self._round_robin = itertools.count()
        self.lock = threading.Lock()

    def route(self, partition_key):
        if partition_key is not None:
            return partition_for_key(partition_key, len(self.partitions))
        return next(self._round_robin) % len(self.partitions)

    def append(self, partition, messages, partition_key):
        """Stores the encoded events of one delivery in one partition, in order."""
        with self.lock:
            for raw in messages:
                self._store(partition, raw, partition_key)

    def _store(self, partition, raw, partition_key):
        message = _Message(raw)
        events = self.partitions[partition]
        sequence_number = len(events)
        offset_value = self._next_offset[partition]
        self._next_offset[partition] += len(raw)
        enqueued_ms = max(int(time.time() * 1000), events[-1].enqueued_ms if events else 0)
        inner_key = message.annotations.get(_PARTITION_KEY)
        key = partition_key if partition_key is not None else inner_key
        annotations = dict(message.annotations)
        annotations.update({_SEQUENCE_NUMBER: sequence_number, _OFFSET: str(offset_value),
                            _ENQUEUED_TIME: Timestamp(enqueued_ms)})
        if key is not None:
            annotations[_PARTITION_KEY] = key
        # Section order is fixed by the spec: header and delivery annotations come before the
        # message annotations, everything else after them.
        wire = bytearray()
        for section in message.sections:
            if section.code in (_HEADER, _DELIVERY_ANNOTATIONS):
                wire += section.raw
        encode_value(Described(ULong(_MESSAGE_ANNOTATIONS), annotations), wire)
        for section in message.sections:
            if section.code not in (_HEADER, _DELIVERY_ANNOTATIONS, _MESSAGE_ANNOTATIONS):
                wire += section.raw
        content_type = message.property(6)
        event = ReceivedEvent(
            body=b"".join(message.data) if message.data else None,
            partition_key=key,
            message_id=message.property(0),
            partition=self.partition_ids[partition],
            sequence_number=sequence_number,
            offset=str(offset_value),
            enqueued_time=datetime.datetime.fromtimestamp(enqueued_ms / 1000,
                                                          datetime.timezone.utc),
            content_type=str(content_type) if content_type is not None else None,
            properties={(k.decode() if isinstance(k, bytes) else k): v
                        for k, v in message.application_properties.items()})
        events.append(_StoredEvent(event, next(self._arrival), enqueued_ms, offset_value,
                                   bytes(wire)))

    def read(self, partition, start, limit):
        with self.lock:
            return self.partitions[partition][start:start + limit]

    def start_index(self, partition, selector):
        """Index of the first event a consumer with this selector filter receives."""
        with self.lock:
            events = self.partitions[partition]
            if selector is None:
                return 0
            field, operator, value = selector
            if value == "@latest":
                return len(events)
            try:
                bound = int(value)
            except ValueError:
                return 0
            for index, stored in enumerate(events):
                actual = {"offset": stored.offset_value, "sequence": index,
                          "enqueued": stored.enqueued_ms}[field]
                if actual > bound or (operator == ">=" and actual == bound):
                    return index
            return len(events)

    def partition_info(self, partition):
        with self.lock:
            events = self.partitions[partition]
            last = events[-1] if events else None
            return {
                "name": self.name,
                "partition": self.partition_ids[partition],
                "type": "com.microsoft:partition",
                "begin_sequence_number": 0,
                "last_enqueued_sequence_number": len(events) - 1,
                "last_enqueued_offset": str(last.offset_value) if last else "-1",
                "last_enqueued_time_utc": Timestamp(last.enqueued_ms if last else 0),
                "is_partition_empty": not events,
            }

    def snapshot(self, partition=None):
        with self.lock:
            if partition is not None:
                return [stored.event for stored in self.partitions[partition]]
            stored = sorted(itertools.chain.from_iterable(self.partitions),
                            key=lambda s: s.arrival)
            return [s.event for s in stored]


_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time)\s*(>=|>)\s*'([^']*)'\s*$")


def _parse_selector(expression):
    match = _SELECTOR.match(expression or "")
    if not match:
        return None
    field = {"offset": "offset", "sequence-number": "sequence",
             "enqueued-time": "enqueued"}[match.group(1)]
    return field, match.group(2), match.group(3)


# ------------------------------------------------------------------------------------------------
# Shared access signatures
# ------------------------------------------------------------------------------------------------


def _audience_path(audience):
    """``sb://host:port/Hub/ConsumerGroups/X`` -> ``('hub', 'consumergroups', 'x')``."""
    parsed = urllib.parse.urlparse(audience)
    path = parsed.path if parsed.scheme else audience
    return tuple(part.lower() for part in path.split("/") if part)


def check_sas_token(token, audience, key_name, key, now=None):
    """Validates a CBS ``put-token`` SAS token; returns ``(ok, reason)``.

    The signature is recomputed as the service does, ``base64(HMAC-SHA256(key, quote_plus(sr) +
    "\\n" + se))``, and compared in constant time. The reason never contains the token.
    """
    if not isinstance(token, str) or not token.startswith("SharedAccessSignature "):
        return False, "not a shared access signature"
    fields = dict(urllib.parse.parse_qsl(token[len("SharedAccessSignature "):],
                                         keep_blank_values=True))
    resource, signature, expiry, name = (fields.get("sr"), fields.get("sig"), fields.get("se"),
                                         fields.get("skn"))
    if not (resource and signature and expiry and name):
        return False, "the signature lacks sr, sig, se or skn"
    # The SDK quotes the key name twice (quote_plus, then urlencode); accept either form.
    if key_name not in (name, urllib.parse.unquote_plus(name)):
        return False, "unknown key name"
    try:
        expires = int(expiry)
    except ValueError:
        return False, "bad expiry"
    if expires <= (time.time() if now is None else now):
        return False, "the signature has expired"
    if audience and _audience_path(audience) != _audience_path(resource):
        return False, "the signature is for another resource"
    to_sign = ("%s\n%s" % (urllib.parse.quote_plus(resource), expiry)).encode("utf-8")
    expected = base64.b64encode(hmac.new(key.encode("utf-8"), to_sign, hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature.encode("utf-8")):
        return False, "invalid signature"
    return True, "OK"


# ------------------------------------------------------------------------------------------------
# Connections
# ------------------------------------------------------------------------------------------------


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


class _Connection:
    """One client connection, served on its own thread."""

    def __init__(self, server, sock, peer):
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

    def wake(self):
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def abort(self):
        """Drops the connection without an AMQP close, as a network failure would."""
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.wake()

    def run(self):
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
            frame = memoryview(bytes(self._inbuf[:size]))
            del self._inbuf[:size]
            if size == doff * 4:
                continue                # empty frame: the client's keep-alive
            body = frame[doff * 4:]
            performative, end = decode_value(body, 0)
            if not isinstance(performative, Described):
                raise _ConnectionClosed()
            fields = list(performative.value or [])
            fields += [None] * (_FIELD_COUNT.get(int(performative.descriptor), 0) - len(fields))
            payload = body[end:]
            if frame_type == _FRAME_SASL:
                self._on_sasl(int(performative.descriptor), fields)
            else:
                self._on_frame(channel, int(performative.descriptor), fields, payload)

    def _on_protocol_header(self, header):
        self._expect_header = False
        if header == _SASL_HEADER and not self._sasl_done:
            self._send(_SASL_HEADER + _frame(0, _SASL_MECHANISMS, [Array([Symbol("ANONYMOUS")])],
                                             frame_type=_FRAME_SASL))
        elif header == _AMQP_HEADER:
            self._send(_AMQP_HEADER)
        else:
            self._send(_SASL_HEADER)    # the protocol we speak; the client will give up
            raise _ConnectionClosed()

    def _on_sasl(self, code, fields):
        if code != _SASL_INIT:
            raise _ConnectionClosed()
        ok = fields[0] == "ANONYMOUS"
        # Credentials are checked later by CBS, as on the service; SASL only says "anonymous".
        self._send(_frame(0, _SASL_OUTCOME, [UByte(0 if ok else 1), None], frame_type=_FRAME_SASL))
        if not ok:
            raise _ConnectionClosed()
        self._sasl_done = True
        self._expect_header = True

    def _on_frame(self, channel, code, fields, payload):
        if code == OPEN:
            self.remote_max_frame = max(512, min(fields[2] or 2 ** 32 - 1, 2 ** 32 - 1))
            if fields[4]:
                self.remote_idle_timeout = fields[4] / 1000.0
            self._send(_frame(0, OPEN, [
                "local-eventhubs-%s" % self.server.hub, None, UInt(self.server.max_frame_size),
                UShort(65535), None, None, None, None, None, None]))
        elif code == BEGIN:
            session = _Session(channel, fields[1] or 0, fields[2] or 0)
            self.sessions[channel] = session
            self._send(_frame(channel, BEGIN, [
                UShort(channel), UInt(session.next_outgoing_id), UInt(_INCOMING_WINDOW),
                UInt(_INCOMING_WINDOW), UInt(65535), None, None, None]))
        elif code == END:
            if self.sessions.pop(channel, None) is not None:
                self._send(_frame(channel, END, [None]))
        elif code == CLOSE:
            self._send(_frame(0, CLOSE, [None]))
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
                self._send(_frame(channel, DETACH, [UInt(fields[0]), bool(fields[1]), None]))

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
        reply_source = source if source is not None else Described(ULong(_SOURCE), [None] * 11)
        reply_target = target if target is not None else Described(ULong(_TARGET), [None] * 7)
        self._send(_frame(session.channel, ATTACH, [
            name, UInt(handle), not client_sends,
            UByte(send_settle_mode) if send_settle_mode is not None else UByte(2), UByte(0),
            reply_source, reply_target, None, False,
            None if client_sends else UInt(0),
            ULong(self.server.max_message_size), None, None, None]))
        if error is not None:
            self._send(_frame(session.channel, DETACH, [UInt(handle), True, _error(*error)]))
            session.refused.add(handle)
            return
        session.links[handle] = link
        if kind == "consumer":
            selector = None
            filters = source.value[7] if len(source.value) > 7 else None
            for key, value in (filters or {}).items():
                descriptor = value.descriptor if isinstance(value, Described) else None
                if _SELECTOR_FILTER in (key, descriptor):
                    expression = value.value if isinstance(value, Described) else value
                    selector = _parse_selector(expression)
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
            partition = self._partition_index(rest[1])
            if partition is not None:
                return "producer", partition, None
        if not client_sends and len(rest) == 4 and rest[0] == "consumergroups" \
                and rest[2] == "partitions":
            partition = self._partition_index(rest[3])
            if partition is not None:
                return "consumer", partition, None
        return None, None, ("amqp:not-found", "The messaging entity '%s' could not be found."
                            % "/".join(parts))

    def _partition_index(self, text):
        return int(text) if text in self.hub.partition_ids else None

    def _authorised(self, path):
        now = time.time()
        return any(expiry > now and tuple(path[:len(granted)]) == granted
                   for granted, expiry in self.tokens.items())

    def _send_link_flow(self, session, link):
        self._send(_frame(session.channel, FLOW, [
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
            self._send(_frame(session.channel, DISPOSITION, [
                True, UInt(delivery["delivery_id"]), UInt(delivery["delivery_id"]), True, state,
                None]))
        self._pump()

    def _on_delivery(self, session, link, delivery):
        """Handles one complete incoming message; returns the delivery outcome."""
        accepted = Described(ULong(_ACCEPTED), [])
        payload = bytes(delivery["payload"])
        if len(payload) > self.server.max_message_size:
            return Described(ULong(_REJECTED), [_error(
                "amqp:link:message-size-exceeded",
                "The received message (delivery-id:%s, size:%d bytes) exceeds the limit (%d bytes)"
                " currently allowed on the link." % (delivery["delivery_id"], len(payload),
                                                     self.server.max_message_size))])
        try:
            message = _Message(payload)
        except AmqpDecodeError as exc:
            return Described(ULong(_REJECTED), [_error("amqp:decode-error", str(exc))])
        if link.kind in ("cbs", "management"):
            status, description, body = (self._put_token(message) if link.kind == "cbs"
                                         else self._management(message))
            self._reply(session, link, message, status, description, body)
            return accepted
        if link.kind != "producer":
            return accepted
        events = message.data if delivery["format"] == _BATCH_FORMAT else [payload]
        key = message.annotations.get(_PARTITION_KEY)
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
        if message.app("operation") != "put-token":
            return 400, "Unsupported CBS operation.", None
        audience = message.app("name")
        ok, reason = check_sas_token(message.value, audience, self.server.key_name,
                                     self.server.key)
        if ok:
            path = _audience_path(audience)
            if not path or path[0] != self.hub.name.lower():
                return 404, "The messaging entity '%s' could not be found." % "/".join(path), None
            fields = dict(urllib.parse.parse_qsl(message.value[len("SharedAccessSignature "):]))
            self.tokens[path] = int(fields["se"])
            return 200, "OK", None
        self.server._note_auth_failure()
        _LOGGER.info("Local Event Hubs: put-token rejected from %s: %s", self.peer, reason)
        return 401, "Unauthorized: InvalidSignature: %s." % reason, None

    def _management(self, message):
        if message.app("operation") != "READ":
            return 400, "Unsupported management operation.", None
        if not self._authorised((self.hub.name.lower(),)):
            return 401, "Unauthorized access. A valid token is required for management.", None
        name = message.app("name")
        if not isinstance(name, str) or name.lower() != self.hub.name.lower():
            return 404, "The messaging entity '%s' could not be found." % name, None
        kind = message.app("type")
        if kind == "com.microsoft:eventhub":
            return 200, "OK", {
                "name": self.hub.name, "type": "com.microsoft:eventhub",
                "created_at": Timestamp(self.hub.created_ms),
                "partition_count": Int(len(self.hub.partition_ids)),
                "partition_ids": Array(self.hub.partition_ids)}
        if kind == "com.microsoft:partition":
            partition = self._partition_index(str(message.app("partition")))
            if partition is None:
                return 404, "The partition '%s' could not be found." % message.app("partition"), \
                    None
            return 200, "OK", self.hub.partition_info(partition)
        return 400, "Unsupported management type.", None

    def _reply(self, session, request_link, request, status, description, body):
        """Queues a response on the client's receiving link for the same node, same session."""
        reply_link = next((link for link in session.links.values()
                           if not link.client_sends and link.kind == request_link.kind), None)
        if reply_link is None:
            return
        properties = [uuid.uuid4(), None, request.property(4), None, None, request.property(0)]
        sections = [(_PROPERTIES, properties),
                    (_APPLICATION_PROPERTIES, {"status-code": Int(status),
                                               "status-description": description})]
        sections.append((_AMQP_VALUE, body))
        reply_link.outbox.append(_message_bytes(sections))

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

        overhead = len(_frame(session.channel, TRANSFER, fields(True))) + 16
        chunk = max(1, self.remote_max_frame - overhead)
        frames, count = bytearray(), 0
        for start in range(0, max(len(message), 1), chunk):
            piece = message[start:start + chunk]
            frames += _frame(session.channel, TRANSFER, fields(start + chunk < len(message)),
                             piece)
            count += 1
        self._send(bytes(frames))
        session.next_outgoing_id += 1
        # The SDK counts its incoming window per frame (and ids per delivery): do the same.
        session.remote_incoming_window -= count
        link.delivery_count += 1
        link.credit -= 1


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------


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

    def __init__(self, host="127.0.0.1", port=0, hub="hub", partitions=4,
                 key_name="RootManageSharedAccessKey", key=None, max_message_size=1048576,
                 max_frame_size=65536):
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
        self._hub = _Hub(hub, partitions)
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

    def start(self):
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

    def stop(self):
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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
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
            connection = _Connection(self, sock, "%s:%s" % peer[:2])
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
    def port(self):
        if self._listener is None:
            raise RuntimeError("LocalEventHubs is not started")
        return self._listener.getsockname()[1]

    @property
    def endpoint(self):
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
    def connection_string(self):
        """The connection string for this endpoint and hub (plain AMQP, development key)."""
        return self.connection_string_with()

    def connection_string_with(self, key=None, key_name=None, hub=None):
        """A connection string with another key, key name or hub: for testing rejections."""
        return ("Endpoint=%s;SharedAccessKeyName=%s;SharedAccessKey=%s;EntityPath=%s;"
                "UseDevelopmentEmulator=true" % (
                    self.endpoint, self.key_name if key_name is None else key_name,
                    self.key if key is None else key, self.hub if hub is None else hub))

    # -- inspection and test hooks -------------------------------------------------------------

    @property
    def partition_ids(self):
        return list(self._hub.partition_ids)

    def events(self, partition=None):
        """Events received so far, in arrival order (of one partition, by id, if given)."""
        if partition is None:
            return self._hub.snapshot()
        index = self._hub.partition_ids.index(str(partition))
        return self._hub.snapshot(index)

    def wait_for_events(self, count, timeout=10.0):
        """Waits until at least ``count`` events are stored; returns them (possibly fewer)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if len(events) >= count or time.monotonic() >= deadline:
                return events
            time.sleep(0.02)

    def consumer_starts(self):
        """``(partition id, sequence number)`` of every consumer link opened so far, in order:
        where each reader asked to start (its selector filter resolved against the partition)."""
        with self._lock:
            return list(self._consumer_starts)

    def _note_consumer_start(self, partition, sequence_number):
        with self._lock:
            self._consumer_starts.append((partition, sequence_number))

    def drop_connections(self):
        """Drops every client connection now (no AMQP close); returns how many were dropped."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort()
        return len(connections)

    def fail_next_transfers(self, count=1, after_store=False):
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


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def main(argv=None):
    from pipelines.cli import CommandParser, UsageError
    parser = CommandParser(
        "python -m emulators.eventhubs",
        "Runs a local Event Hubs-compatible AMQP endpoint until Ctrl-C (or SIGTERM) and prints its\n"
        "connection string; the real azure-eventhub SDK talks to it. Loopback only, no TLS, a\n"
        "throwaway key. Ctrl-C stops it normally (exit 0) and prints how many events arrived.",
        ("python -m emulators.eventhubs",
         "python -m emulators.eventhubs --port 0 --hub audiences --partitions 2"))
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to bind (default 127.0.0.1; keep it on loopback), e.g. "
                             "--host 127.0.0.1")
    parser.add_argument("--port", type=int, default=5672,
                        help="TCP port (default 5672; 0: a free one), e.g. --port 0")
    parser.add_argument("--hub", default="hub",
                        help="Event hub name (default hub), e.g. --hub audiences")
    parser.add_argument("--partitions", type=int, default=4,
                        help="Partition count (default 4), e.g. --partitions 2")
    parser.add_argument("--key", default=None,
                        help="Shared access key (default: a random development key), e.g. "
                             "--key \"$(openssl rand -base64 32)\"")
    try:
        args = parser.parse(argv)
    except UsageError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    if args is None:
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        hubs = LocalEventHubs(host=args.host, port=args.port, hub=args.hub,
                              partitions=args.partitions, key=args.key).start()
    except (OSError, ValueError) as exc:
        print("error: cannot start the local Event Hubs endpoint: %s" % exc, file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A throwaway local development key: printing it is the point of this command.
    print("Local Event Hubs listening on %s (hub %r, %d partitions)"
          % (hubs.endpoint, hubs.hub, args.partitions), flush=True)
    print(hubs.connection_string, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        hubs.stop()
    print("stopped; %d events received" % len(hubs.events()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
