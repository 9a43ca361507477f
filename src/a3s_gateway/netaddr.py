"""IP addresses and networks as integers, shared by routing (``ClientIP``), ``trusted_ips``, ``ip-allow``,
``tcp_allowed_ips`` and the connections (client address, ``X-Forwarded-For``). Compiled by mypyc.

IPv4-mapped IPv6 addresses and networks are IPv4 everywhere (SPEC §5.2)."""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["IPSet", "Network", "normalize_ip", "parse_ip", "parse_network"]

_V4_MAPPED_BASE: Final = 0xFFFF00000000
_V4_MAPPED_MASK: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFF00000000

#: (version, network integer, mask)
Network = tuple[int, int, int]


def normalize_ip(text: str) -> str:
    """An address as it is reported: IPv4-mapped IPv6 as IPv4."""
    if text.startswith("::ffff:") and "." in text:
        return text[7:]
    return text


def parse_ip(text: str) -> tuple[int, int]:
    """``(version, integer)`` of an IP address, IPv4-mapped IPv6 as IPv4; ``(0, 0)`` when not an IP address."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return (0, 0)
    value = int(addr)
    if addr.version == 6:
        if value & _V4_MAPPED_MASK == _V4_MAPPED_BASE:
            return (4, value & 0xFFFFFFFF)
        return (6, value)
    return (4, value)


def parse_network(text: str) -> Network:
    """An IP or CIDR -> ``(version, network integer, mask)``; IPv4-mapped IPv6 becomes IPv4. Raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("empty IP address")
    net = ipaddress.ip_network(text, strict=False)
    version = net.version
    bits = 32 if version == 4 else 128
    prefix = net.prefixlen
    value = int(net.network_address)
    if version == 6 and prefix >= 96 and value & _V4_MAPPED_MASK == _V4_MAPPED_BASE:
        version, bits, prefix, value = 4, 32, prefix - 96, value & 0xFFFFFFFF
    full = (1 << bits) - 1
    mask = full ^ ((1 << (bits - prefix)) - 1)
    return (version, value & mask, mask)


class IPSet:
    """A list of IPs and networks, parsed once at configuration time (``trusted_ips``, ``allowed_ips``)."""

    def __init__(self, networks: list[str]) -> None:
        self.networks: list[Network] = [parse_network(n) for n in networks]

    def contains(self, ip: str) -> bool:
        """True when the address ``ip`` lies in one of the networks."""
        version, value = parse_ip(ip)
        return self.contains_value(version, value)

    def contains_value(self, version: int, value: int) -> bool:
        """The same for an address already parsed by :func:`parse_ip` (version 0: never)."""
        if version == 0:
            return False
        for net_version, net_value, mask in self.networks:
            if net_version == version and value & mask == net_value:
                return True
        return False
