"""parse_time's fast path (``datetime.fromisoformat`` behind a shape check) agrees with the strict
RFC 3339 parser on every string: the same microseconds, or both refuse."""
import string

from hypothesis import given, settings, strategies as st

from cdp_activation.core.timeutil import TimeFormatError, _common_shape, parse_rfc3339_strict, parse_time


def _outcome(parse, text):
    try:
        return parse(text)
    except TimeFormatError:
        return "refused"


def _two(lo, hi):
    return st.integers(lo, hi).map(lambda n: "%02d" % n)


#: Strings near RFC 3339: valid and invalid fields, every separator and zone form, fractions of
#: 0-11 digits, leap seconds, days that do not exist.
near_rfc3339 = st.builds(
    lambda year, month, day, sep, hour, minute, second, frac, zone: "%s-%s-%s%s%s:%s:%s%s%s" % (
        year, month, day, sep, hour, minute, second, frac, zone),
    st.integers(0, 9999).map(lambda n: "%04d" % n), _two(0, 13), _two(0, 32),
    st.sampled_from(["T", "t", " ", "_"]), _two(0, 25), _two(0, 61), _two(0, 61),
    st.one_of(st.just(""), st.text("0123456789", min_size=0, max_size=11).map(lambda d: "." + d)),
    st.one_of(st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+0200", "UTC"]),
              st.builds(lambda sign, h, m: "%s%s:%s" % (sign, h, m), st.sampled_from("+-"),
                        _two(0, 25), _two(0, 61))))


@settings(max_examples=3000, deadline=None)
@given(near_rfc3339)
def test_fast_path_agrees_with_the_strict_parser_near_rfc3339(text):
    assert _outcome(parse_time, text) == _outcome(parse_rfc3339_strict, text)


@settings(max_examples=1500, deadline=None)
@given(st.text(string.digits + "-:T.Z+ tz\u0663\u00b2_", min_size=18, max_size=32))
def test_fast_path_agrees_on_arbitrary_strings_of_timestamp_characters(text):
    # Unicode digits and underscores, which int() and isdigit() accept in places, must not slip
    # through the fast path.
    assert _outcome(parse_time, text) == _outcome(parse_rfc3339_strict, text)


def test_the_common_forms_take_the_fast_path():
    for text in ("2026-11-20T10:00:00Z", "2026-11-20T10:00:00.123456Z", "2026-11-20T10:00:00.1Z",
                 "2026-11-20T12:00:00+02:00", "2026-11-20T10:00:00.123-05:30"):
        assert _common_shape(text), text
        assert parse_time(text) == parse_rfc3339_strict(text)
    for text in ("2026-11-20t10:00:00z", "2026-11-20 10:00:00Z", "2026-11-20T10:00:00+0200",
                 " 2026-11-20T10:00:00Z", "2026-11-20T10:00:00.1234567890Z", "20261120T100000Z"):
        assert not _common_shape(text), text
