"""The guard against server-side request forgery: a destination must not reach inside.

A host that resolves to a loopback, private, link-local (which holds the clouds' metadata
address 169.254.169.254), multicast, reserved or unspecified address is refused, unless the
deployment allows that class (MOSAIC_DELIVERY_ALLOW_ADDRESSES, e.g. `loopback` for tests and
the local mesh). It is checked when a destination is created and again on every connection,
inside the HTTP client's resolver, because DNS can change between the two (rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

CLASSES = ("loopback", "private", "link-local")
# Cloud metadata endpoints outside the link-local range (AWS's IPv6 one is in fd00::/8).
METADATA = (ipaddress.ip_address("fd00:ec2::254"),)


class Forbidden(Exception):
    """The host resolves to an address destinations may not reach."""


class AddressPolicy:
    """Which address classes this deployment lets destinations reach."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = frozenset(allowed)
        unknown = self.allowed - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown address classes {sorted(unknown)}; known: {', '.join(CLASSES)}")

    def refusal(self, address: str) -> str | None:
        """Why `address` may not be reached, or None when it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip in METADATA:
            return f"{ip} is a cloud metadata address"
        if ip.is_loopback:
            return None if "loopback" in self.allowed else f"{ip} is a loopback address"
        if ip.is_link_local:
            return None if "link-local" in self.allowed else f"{ip} is a link-local (or metadata) address"
        if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
            return f"{ip} is not a unicast address"
        if ip.is_private or not ip.is_global:  # not global: shared (CGNAT) space too
            return None if "private" in self.allowed else f"{ip} is a private address"
        return None

    async def check_host(self, host: str, port: int) -> list[str]:
        """The host's addresses, all allowed; raises Forbidden naming the first that is not."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise Forbidden(f"{host} does not resolve: {error.strerror}") from error
        addresses = [info[4][0] for info in infos]
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise Forbidden(f"{host} resolves to {reason}")
        return addresses


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing forbidden addresses on every connection."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        hosts = await self._inner.resolve(host, port, family)
        for entry in hosts:
            reason = self.policy.refusal(entry["host"])
            if reason is not None:
                raise Forbidden(f"{host} resolves to {reason}")
        return hosts

    async def close(self) -> None:
        await self._inner.close()
