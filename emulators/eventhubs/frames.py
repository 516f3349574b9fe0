"""AMQP 1.0 frames, performatives and message sections, as the Event Hubs SDK writes and reads them.

The SDK's AMQP layer reads a performative's fields by position, so :func:`frame` writes every
performative with all of its fields. :class:`Message` keeps each section's own bytes, so a stored
event is re-sent to consumers unchanged apart from the annotations the service adds.
"""
import struct
from typing import Any, NamedTuple

from emulators.eventhubs.codec import (AmqpDecodeError, Described, Symbol, ULong, decode_value,
                                       encode_value)

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
FRAME_AMQP, FRAME_SASL = 0, 1

OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
_ERROR = 0x1D
ACCEPTED, REJECTED = 0x24, 0x25
SOURCE, TARGET = 0x28, 0x29
SASL_MECHANISMS, SASL_INIT, SASL_OUTCOME = 0x40, 0x41, 0x44
# Full field counts. The SDK reads fields by position (and a TRANSFER's payload after field 11), so
# every performative is written with all of its fields, trailing nulls included.
FIELD_COUNT = {OPEN: 10, BEGIN: 8, ATTACH: 14, FLOW: 11, TRANSFER: 11, DISPOSITION: 6,
               DETACH: 3, END: 1, CLOSE: 1, SASL_MECHANISMS: 1, SASL_OUTCOME: 2}

# Message sections.
HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES = 0x70, 0x71, 0x72, 0x73
APPLICATION_PROPERTIES, DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER = 0x74, 0x75, 0x76, 0x77, 0x78
_SECTION_NAMES = {
    "amqp:header:list": HEADER, "amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": MESSAGE_ANNOTATIONS, "amqp:properties:list": PROPERTIES,
    "amqp:application-properties:map": APPLICATION_PROPERTIES, "amqp:data:binary": DATA,
    "amqp:amqp-sequence:list": AMQP_SEQUENCE, "amqp:amqp-value:*": AMQP_VALUE,
    "amqp:footer:map": FOOTER}
BATCH_FORMAT = 0x80013700

PARTITION_KEY = Symbol("x-opt-partition-key")
SEQUENCE_NUMBER = Symbol("x-opt-sequence-number")
OFFSET = Symbol("x-opt-offset")
ENQUEUED_TIME = Symbol("x-opt-enqueued-time")
SELECTOR_FILTER = "apache.org:selector-filter:string"


def _performative(code, fields):
    fields = list(fields)
    fields += [None] * (FIELD_COUNT[code] - len(fields))
    return Described(ULong(code), fields)


def frame(channel: int, code: int, fields: list, payload: bytes = b"",
          frame_type: int = FRAME_AMQP) -> bytes:
    """One encoded frame: the performative ``code`` with ``fields`` (padded to all of its fields),
    then ``payload``."""
    body = encode_value(_performative(code, fields), bytearray())
    body += payload
    return struct.pack(">IBBH", 8 + len(body), 2, frame_type, channel) + bytes(body)


def amqp_error(condition: str, description: str) -> Described:
    """An AMQP ``error`` (for a detach or a rejected outcome)."""
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


class Message:
    """A decoded message: the parts the endpoint looks at, plus its sections for re-encoding."""

    def __init__(self, payload: bytes) -> None:
        self.sections = _split_sections(payload)
        self.annotations, self.properties, self.application_properties = {}, [], {}
        self.data, self.value = [], None
        for section in self.sections:
            if section.code == MESSAGE_ANNOTATIONS and isinstance(section.value, dict):
                self.annotations = section.value
            elif section.code == PROPERTIES and isinstance(section.value, list):
                self.properties = section.value
            elif section.code == APPLICATION_PROPERTIES and isinstance(section.value, dict):
                self.application_properties = section.value
            elif section.code == DATA:
                self.data.append(section.value)
            elif section.code == AMQP_VALUE:
                self.value = section.value

    def property(self, index: int) -> Any:
        """The ``index``-th field of the properties section (None when absent)."""
        return self.properties[index] if len(self.properties) > index else None

    def app(self, name: str) -> Any:
        """An application property; binary values decoded as UTF-8."""
        value = self.application_properties.get(name)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def message_bytes(sections: list) -> bytes:
    """The encoding of a message given as ``[(section code, value), ...]``."""
    out = bytearray()
    for code, value in sections:
        encode_value(Described(ULong(code), value), out)
    return bytes(out)
