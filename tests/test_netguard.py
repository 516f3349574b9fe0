"""core.netguard: which resolved addresses a destination may use. No network needed: the host
spellings below are numeric, so ``socket.getaddrinfo`` answers them without DNS."""
import socket

import pytest

from cdp_activation.core import netguard


def resolve(host):
    return socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)


@pytest.mark.parametrize("host, reason", [
    ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local address (the cloud metadata range)"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback address (127.0.0.1 embedded in IPv6)"),
    ("0x7f000001", "loopback"),
    ("2130706433", "loopback"),
    ("127.1", "loopback"),
    ("0177.0.0.1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("fc00::1", "unique-local"),
    ("fd00:ec2::254", "unique-local"),
    ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.251", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.10", "reserved"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "link-local"),      # NAT64 form of 169.254.169.254
    ("2002:7f00:1::1", "loopback"),            # 6to4 form of 127.0.0.1
])
def test_resolved_internal_addresses_are_refused(host, reason):
    with pytest.raises(netguard.AddressRefused) as caught:
        netguard.check_addrinfo(host, resolve(host))
    assert reason in caught.value.reason
    assert "allow_private_network" in str(caught.value)


@pytest.mark.parametrize("host, resolved", [
    ("0x7f000001", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("127.1", "127.0.0.1")])
def test_numeric_spellings_are_judged_by_the_address_they_resolve_to(host, resolved):
    with pytest.raises(ValueError):  # the text alone is not an address: only the resolver knows
        netguard.parse_address(host)
    assert {info[4][0] for info in resolve(host)} == {resolved}
    with pytest.raises(netguard.AddressRefused, match="loopback"):
        netguard.check_addrinfo(host, resolve(host))


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1",
                                  "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(host):
    assert netguard.refusal_reason(host) is None
    assert netguard.check_addrinfo(host, resolve(host))


def test_one_internal_address_in_an_answer_refuses_the_whole_answer():
    infos = resolve("8.8.8.8") + resolve("10.1.2.3")
    with pytest.raises(netguard.AddressRefused) as caught:
        netguard.check_addrinfo("mixed.example", infos)
    assert caught.value.address == "10.1.2.3"
    assert "mixed.example (10.1.2.3)" in str(caught.value)


def test_an_empty_answer_is_refused():
    with pytest.raises(netguard.AddressRefused):
        netguard.check_addrinfo("nothing.example", [])


def test_ipv6_zone_ids_are_ignored():
    assert netguard.refusal_reason("fe80::1%eth0") == "link-local address"
