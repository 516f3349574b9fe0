"""Time values: integer microseconds since the Unix epoch, UTC.

Integers keep window arithmetic exact (``ts + within`` must equal the expiry to the microsecond) and
match Beam's own timestamp resolution.
"""
import datetime as _dt
import functools
import re

MICROS = 1_000_000
#: Far-future ``exit`` value of a member that has not left (Lytics convention).
OPEN_EXIT = "2099-12-31T23:59:59Z"
MIN_TIME = -(2 ** 62)
MAX_TIME = 2 ** 62

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_MICROS = {"s": MICROS, "m": 60 * MICROS, "h": 3600 * MICROS, "d": 86400 * MICROS,
                "w": 7 * 86400 * MICROS}


class TimeFormatError(ValueError):
    pass


def parse_time(value):
    """Parses an RFC 3339 string or an epoch number (seconds; milliseconds if > 1e11)."""
    if type(value) is int and -100_000_000_000 <= value <= 100_000_000_000:
        return value * MICROS  # the common case first: whole epoch seconds
    if isinstance(value, bool):
        raise TimeFormatError("expected an RFC 3339 string or an epoch number, got a boolean")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise TimeFormatError("epoch number is not finite")
        if abs(value) > 1e11:
            # Milliseconds: integer arithmetic where possible keeps sub-ms digits exact.
            micros = value * 1000 if isinstance(value, int) else round(value * 1000)
        else:
            micros = value * MICROS if isinstance(value, int) else round(value * MICROS)
        if not MIN_TIME < micros < MAX_TIME:
            raise TimeFormatError("epoch number out of range")
        return int(micros)
    if isinstance(value, str):
        m = _RFC3339.match(value.strip())
        if not m:
            raise TimeFormatError("not an RFC 3339 timestamp: %r" % value[:64])
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        frac = m.group(7) or ""
        try:
            if second == 60:  # leap second: RFC 3339 allows it, Python does not
                second = 59
            moment = _dt.datetime(year, month, day, hour, minute, second, tzinfo=_dt.timezone.utc)
        except ValueError as exc:
            raise TimeFormatError("invalid date in %r: %s" % (value[:64], exc)) from None
        micros = _days_seconds_micros(moment - _EPOCH)
        micros += int((frac + "000000")[:6]) if frac else 0
        if m.group(9):
            offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * MICROS
            micros -= offset if m.group(9) == "+" else -offset
        return micros
    raise TimeFormatError("expected an RFC 3339 string or an epoch number, got %s"
                          % type(value).__name__)


def _days_seconds_micros(delta):
    return (delta.days * 86400 + delta.seconds) * MICROS + delta.microseconds


@functools.lru_cache(maxsize=65536)
def format_time(micros):
    """RFC 3339 UTC with ``Z``; fractional digits only when the value has them.

    Cached: a user's messages repeat the same times (``_created``, ``enter``) many times over.
    """
    seconds, frac = divmod(int(micros), MICROS)
    days, rest = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % (year, month, day, hour, minute, second)
    if frac:
        digits = "%06d" % frac
        text += "." + (digits[:3] if digits.endswith("000") else digits)
    return text + "Z"


def _civil_from_days(z):
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


def parse_duration(text):
    """``30m``, ``7d``, ... to microseconds. Raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("a duration is an integer and a unit s, m, h, d or w, e.g. 7d")
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError("a duration is a positive integer and a unit s, m, h, d or w, e.g. 7d; got %r"
                         % text)
    return int(m.group(1)) * _UNIT_MICROS[m.group(2)]


def to_unix_seconds(micros):
    return int(micros // MICROS)
