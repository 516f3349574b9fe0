"""The AMQP 1.0 type system: just enough of an encoder and decoder for the transport and the
message sections the Event Hubs SDK sends and reads.

Python types map to AMQP types (None null, bool boolean, int long, float double, str string, bytes
binary, uuid.UUID uuid, list list, dict map); the wrapper classes below select the other types.
"""
import struct
import uuid
from typing import Any, NamedTuple, Tuple, Union


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


def encode_value(value: Any, out: bytearray) -> bytearray:
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


def decode_value(buf: Union[bytes, bytearray, memoryview], pos: int = 0) -> Tuple[Any, int]:
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
