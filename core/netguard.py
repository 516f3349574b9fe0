"""Which network addresses user-configured destinations may reach (CONTRACT 5.3).

Webhook URLs and SMTP hosts are user input. Left unchecked they let a config reach the pipeline's
own network: loopback services, private ranges, the cloud metadata endpoint (169.254.169.254).
This module decides, for one *resolved* address, whether it is public. It does no I/O: callers
resolve the host with ``socket.getaddrinfo`` at connect time, pass the result to
:func:`check_addrinfo`, and connect to the address that was checked (never resolving again, which
defeats DNS rebinding).

Checking the resolver's answer rather than the URL text is what catches the numeric spellings a
resolver accepts: ``0x7f000001``, ``2130706433``, ``0177.0.0.1`` and ``127.1`` all resolve to
``127.0.0.1``.

Refused (the reason names the class):

- unspecified ``0.0.0.0/8``, ``::``; loopback ``127.0.0.0/8``, ``::1``
- private ``10/8``, ``172.16/12``, ``192.168/16``; carrier-grade NAT ``100.64/10``
- link-local ``169.254/16`` (cloud metadata) and ``fe80::/10``; unique-local ``fc00::/7``;
  site-local ``fec0::/10``
- multicast ``224/4``, ``ff00::/8``; reserved ``240/4`` and every other range that is not globally
  routable (documentation, benchmarking, broadcast, ...)
- any of those embedded in IPv6: IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``,
  NAT64 ``64:ff9b::/96`` and 6to4 ``2002::/16``.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, Union

#: An address as ``ipaddress`` gives it.
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_CLASSES = (
    ("unspecified address", ("0.0.0.0/8", "::/128")),
    ("loopback address", ("127.0.0.0/8", "::1/128")),
    ("private address", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("link-local address (the cloud metadata range)", ("169.254.0.0/16",)),
    ("link-local address", ("fe80::/10",)),
    ("carrier-grade NAT address", ("100.64.0.0/10",)),
    ("unique-local address", ("fc00::/7",)),
    ("site-local address", ("fec0::/10",)),
    ("multicast address", ("224.0.0.0/4", "ff00::/8")),
    ("reserved address", ("240.0.0.0/4",)),
)
_NETWORKS = tuple((reason, tuple(ipaddress.ip_network(n) for n in nets))
                  for reason, nets in _CLASSES)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(ValueError):
    """A destination resolved to an address that is not publicly routable."""

    def __init__(self, host: str, address: str | IPAddress, reason: str) -> None:
        self.host, self.address, self.reason = host, str(address), reason
        shown = host if str(host) == str(address) else "%s (%s)" % (host, address)
        super().__init__("refused to connect to %s: %s; set allow_private_network: true to allow it"
                         % (shown, reason))


def parse_address(address: str | IPAddress) -> IPAddress:
    """An ``ipaddress`` object from a str (an IPv6 zone ``%eth0`` is dropped) or address."""
    if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return address
    return ipaddress.ip_address(str(address).split("%", 1)[0])


def _embedded_ipv4(ip):
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # ::a.b.c.d (deprecated); not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def refusal_reason(address: str | IPAddress) -> str | None:
    """Why ``address`` may not be reached, or None when it is a public address."""
    ip = parse_address(address)
    suffix = ""
    if ip.version == 6:
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            suffix, ip = " (%s embedded in IPv6)" % embedded, embedded
    for reason, networks in _NETWORKS:
        if any(ip in net for net in networks):
            return reason + suffix
    if not ip.is_global:
        return "reserved address (not globally routable)" + suffix
    return None


def check_address(address: str | IPAddress, host: str | None = None) -> IPAddress:
    """Raises :class:`AddressRefused` unless ``address`` is public; returns the address object."""
    ip = parse_address(address)
    reason = refusal_reason(ip)
    if reason is not None:
        raise AddressRefused(host if host is not None else str(ip), ip, reason)
    return ip


def check_addrinfo(host: str, infos: Sequence[tuple[Any, ...]]) -> list[IPAddress]:
    """Checks every address of a ``socket.getaddrinfo`` result; one refused address refuses all.

    Refusing the whole answer (rather than skipping the bad entries) keeps a host that mixes public
    and internal records from being used as a foothold.
    """
    if not infos:
        raise AddressRefused(host, "", "the name resolved to no address")
    return [check_address(info[4][0], host) for info in infos]
