"""Reading one value of the job config: :class:`ConfigError` and the typed readers every section
of the config uses (strings, lists, booleans, numbers, times, URLs and host names).

Each reader takes the mapping, the key and the mapping's config path, and raises
:class:`ConfigError` with a message that starts with the value's path (``works[0].config.start: ...``).
"""
import ipaddress
import re
import urllib.parse
from typing import Iterable, List, Optional, Union

from cdp_activation.core.keys import unknown_key
from cdp_activation.core.timeutil import TimeFormatError, parse_time


class ConfigError(ValueError):
    """A config that cannot run; ``str()`` is the one line shown to the user."""


def check_keys(mapping: dict, known: Iterable[str], path: str) -> None:
    """Raises :class:`ConfigError` for the first key of ``mapping`` that is not in ``known``."""
    unknown = unknown_key(mapping, known, path)
    if unknown is not None:
        raise ConfigError("%s: %s" % unknown)


def read_string(cfg: dict, key: str, path: str, required: bool = False,
                default: Optional[str] = None) -> Optional[str]:
    """``cfg[key]`` as a string; absent or empty gives ``default`` (an error when required)."""
    value = cfg.get(key, default)
    if value is None or value == "":
        if required:
            raise ConfigError("%s.%s: required" % (path, key))
        return default if value is None else (value or default)
    if not isinstance(value, str):
        raise ConfigError("%s.%s: must be a string" % (path, key))
    return value


def read_string_list(cfg: dict, key: str, path: str) -> Optional[List[str]]:
    """``cfg[key]`` as a list of strings, None when absent."""
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("%s.%s: must be a list of strings" % (path, key))
    return list(value)


def read_bool(cfg: dict, key: str, path: str, default: bool = False) -> bool:
    """``cfg[key]`` as true or false."""
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError("%s.%s: must be true or false" % (path, key))
    return value


def read_number(cfg: dict, key: str, path: str, default: Union[int, float], minimum: Union[int, float] = 0,
                integer: bool = False) -> Union[int, float]:
    """``cfg[key]`` as a number (an int when ``integer``) of at least ``minimum``."""
    value = cfg.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value < minimum:
        raise ConfigError("%s.%s: must be a%s number >= %s"
                          % (path, key, "n integer" if integer else "", minimum))
    return value


def read_time(cfg: dict, key: str, path: str) -> Optional[int]:
    """``cfg[key]`` as microseconds (RFC 3339 or epoch seconds), None when absent or empty."""
    value = cfg.get(key)
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except TimeFormatError as exc:
        raise ConfigError("%s.%s: %s" % (path, key, exc)) from None


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def host_problem(host: str) -> Optional[str]:
    """Why ``host`` is neither a host name nor an IP address, or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if "://" in host:
        return "it has a scheme"
    if ":" in host:
        return "it has a port or is not an IP address"
    if "/" in host or "@" in host or any(c.isspace() for c in host):
        return "it has '/', '@' or a space"
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        return "it is not a valid international domain name"
    labels = ascii_host[:-1].split(".") if ascii_host.endswith(".") else ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "each dot-separated part must be 1-63 letters, digits or hyphens"
    return None


def url_problem(url: str) -> Optional[str]:
    """Why the job could not send to ``url``, or None."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "it has a space or a control character (percent-encode it, e.g. %20)"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        if "Port" in str(exc) or "port" in str(exc):
            return "the port is not a number from 1 to 65535"
        return "it cannot be parsed (%s)" % exc
    if parts.scheme not in ("http", "https"):
        return "it must start with https:// or http://"
    if not parts.hostname:
        return "it has no host"
    if "@" in parts.netloc:
        return ("it has user:password@ before the host, which is never sent; put credentials "
                "in headers (e.g. Authorization)")
    if port == 0:
        return "the port is not a number from 1 to 65535"
    problem = host_problem(parts.hostname)
    if problem:
        return "its host %r is not a host name (%s)" % (parts.hostname, problem)
    return None
