"""Time values: integer microseconds since the Unix epoch, UTC.

Integers keep window arithmetic exact (``ts + within`` must equal the expiry to the microsecond) and
match Beam's own timestamp resolution.
"""
from __future__ import annotations

import datetime as _dt
import functools
import re

MICROS = 1_000_000
#: Far-future ``exit`` value of a member that has not left (Lytics convention).
OPEN_EXIT = "2099-12-31T23:59:59Z"
MIN_TIME = -(2 ** 62)
MAX_TIME = 2 ** 62
#: Epoch numbers up to this size are seconds; larger ones milliseconds.
EPOCH_SECONDS_LIMIT = 100_000_000_000

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_MICROS = {"s": MICROS, "m": 60 * MICROS, "h": 3600 * MICROS, "d": 86400 * MICROS,
                "w": 7 * 86400 * MICROS}


class TimeFormatError(ValueError):
    pass


def parse_time(value: object) -> int:
    """Parses an RFC 3339 string or an epoch number (seconds; milliseconds if > 1e11)."""
    if type(value) is int and -EPOCH_SECONDS_LIMIT <= value <= EPOCH_SECONDS_LIMIT:
        return value * MICROS  # the common case first: whole epoch seconds
    if isinstance(value, bool):
        raise TimeFormatError("expected an RFC 3339 string or an epoch number, got a boolean")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise TimeFormatError("epoch number is not finite")
        if abs(value) > 1e17:
            # Beyond any representable time even as milliseconds (and round(1e306 * 1000) would
            # overflow): the same answer as the range check below, without the arithmetic.
            raise TimeFormatError("epoch number out of range")
        if abs(value) > 1e11:
            # Milliseconds: integer arithmetic where possible keeps sub-ms digits exact.
            micros = value * 1000 if isinstance(value, int) else round(value * 1000)
        else:
            micros = value * MICROS if isinstance(value, int) else round(value * MICROS)
        if not MIN_TIME < micros < MAX_TIME:
            raise TimeFormatError("epoch number out of range")
        return int(micros)
    if isinstance(value, str):
        if _common_shape(value):
            try:
                delta = _dt.datetime.fromisoformat(value) - _EPOCH
            except ValueError:
                pass        # e.g. a leap second or a day that does not exist: the strict path says
            else:
                return (delta.days * 86400 + delta.seconds) * MICROS + delta.microseconds
        return parse_rfc3339_strict(value)
    raise TimeFormatError("expected an RFC 3339 string or an epoch number, got %s"
                          % type(value).__name__)


def _common_shape(value):
    """True for ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` in ASCII with digits where
    digits belong: the forms of RFC 3339 that ``datetime.fromisoformat`` reads with the same
    meaning. Anything else (lower-case or space separators, no colon in the offset, other ISO
    8601 forms fromisoformat also accepts) takes the strict parser."""
    n = len(value)
    if n < 20 or not value.isascii() or value[10] != "T" or value[4] != "-" or value[7] != "-" \
            or value[13] != ":" or value[16] != ":":
        return False
    if value[-1] == "Z":
        zone = n - 1
    elif value[-3] == ":" and value[-6] in "+-" and value[-5:-3].isdigit() and value[-2:].isdigit():
        zone = n - 6
    else:
        return False
    if zone != 19 and not (20 < zone <= 29 and value[19] == "." and value[20:zone].isdigit()):
        return False
    return (value[:4].isdigit() and value[5:7].isdigit() and value[8:10].isdigit()
            and value[11:13].isdigit() and value[14:16].isdigit() and value[17:19].isdigit())


def parse_rfc3339_strict(value: str) -> int:
    """The full RFC 3339 parser (any separator case, leap seconds, offsets without a colon, up to
    nine fractional digits, truncated to microseconds); ``parse_time`` tries a faster path first
    for the common forms, and the property tests check that both agree."""
    m = _RFC3339.match(value.strip())
    if not m:
        raise TimeFormatError("not an RFC 3339 timestamp: %r" % value[:64])
    _, _, _, hour, minute, second, frac, _, sign, offset_hours, offset_minutes = m.groups()
    hour, minute, second = int(hour), int(minute), int(second)
    if second == 60:  # leap second: RFC 3339 allows it, Python does not
        second = 59
    midnight = _midnight(m.string[:10]) if hour < 24 and minute < 60 and second < 60 else None
    if midnight is None:
        raise _invalid_date_or_time(value, m)
    micros = midnight + ((hour * 60 + minute) * 60 + second) * MICROS
    micros += int((frac + "000000")[:6]) if frac else 0
    if sign:
        offset = (int(offset_hours) * 60 + int(offset_minutes)) * 60 * MICROS
        micros -= offset if sign == "+" else -offset
    return micros


@functools.lru_cache(maxsize=4096)
def _midnight(date_text):
    """Microseconds at the start of a ``YYYY-MM-DD`` day, or None for a date that does not exist.

    Cached: a file's timestamps fall on few days, and building a datetime is most of the cost.
    """
    try:
        day = _dt.datetime(int(date_text[:4]), int(date_text[5:7]), int(date_text[8:10]),
                           tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    return _days_seconds_micros(day - _EPOCH)


def _invalid_date_or_time(value, m):
    """The error for a matched RFC 3339 string whose date or time does not exist, in datetime's
    own words (the fast path above only knows that it does not)."""
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if second == 60:  # leap second: RFC 3339 allows it, Python does not
        second = 59
    try:
        _dt.datetime(year, month, day, hour, minute, second, tzinfo=_dt.timezone.utc)
    except ValueError as exc:
        return TimeFormatError("invalid date in %r: %s" % (value[:64], exc))
    return TimeFormatError("invalid date in %r" % value[:64])  # not reached: the caller checked


def _days_seconds_micros(delta):
    return (delta.days * 86400 + delta.seconds) * MICROS + delta.microseconds


@functools.lru_cache(maxsize=65536)
def format_time(micros: int) -> str:
    """RFC 3339 UTC with ``Z``; fractional digits only when the value has them.

    Cached: a user's messages repeat the same times (``_created``, ``enter``) many times over.
    """
    seconds, frac = divmod(int(micros), MICROS)
    days, rest = divmod(seconds, 86400)
    minutes, second = divmod(rest, 60)
    hour, minute = divmod(minutes, 60)
    text = "%sT%s:%s:%s" % (_date_text(days), _TWO_DIGITS[hour], _TWO_DIGITS[minute],
                            _TWO_DIGITS[second])
    if frac:
        digits = "%06d" % frac
        text += "." + (digits[:3] if digits.endswith("000") else digits)
    return text + "Z"


_TWO_DIGITS = ["%02d" % i for i in range(60)]


@functools.lru_cache(maxsize=4096)
def _date_text(days):
    # Cached apart from format_time: times that miss its cache still mostly fall on a known day.
    return "%04d-%02d-%02d" % civil_from_days(days)


def civil_from_days(z: int) -> tuple:
    """Proleptic Gregorian (year, month, day) of a day number (days since 1970-01-01).

    Howard Hinnant's algorithm: pure integer arithmetic, several times faster than datetime.
    """
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def parse_duration(text: object) -> int:
    """``30m``, ``7d``, ... to microseconds. Raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("a duration is an integer and a unit s, m, h, d or w, e.g. 7d")
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError("a duration is a positive integer and a unit s, m, h, d or w, e.g. 7d; got %r"
                         % text)
    return int(m.group(1)) * _UNIT_MICROS[m.group(2)]


def to_unix_seconds(micros: int) -> int:
    return int(micros // MICROS)


def format_duration(micros: int) -> str:
    """A duration in the largest unit of ``s m h d`` that divides it, e.g. ``7d``; the inverse
    of :func:`parse_duration` for whole seconds."""
    for unit in "dhms":
        size = _UNIT_MICROS[unit]
        if micros % size == 0:
            return "%d%s" % (micros // size, unit)
    return "%ss" % (micros / MICROS)
