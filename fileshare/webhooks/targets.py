"""Where a webhook may point: the server-side request forgery checks.

A callback URL is chosen by a client, and fileshare posts to it from inside the cluster:
without checks, a client could make fileshare reach the cloud's metadata service
(169.254.169.254), the pod's sidecars on loopback, or any private service. So a callback
goes only to public addresses, unless an operator lists a host or network in
``FILESHARE_WEBHOOK_PRIVATE_HOSTS`` (a receiver inside the cluster, the tests' loopback):

* at registration, the URL's form is checked and its host resolved, and an address that is
  loopback, link-local, private, shared (CGNAT), reserved, multicast or unspecified
  refuses it — IPv4-mapped IPv6 addresses are judged as the IPv4 address they map;
* on every attempt, the check runs again on the literal, and names are resolved through
  ``GuardedResolver``, which drops such addresses from what aiohttp may connect to: a name
  that resolved to a public address at registration and to 10.0.0.1 now (DNS rebinding)
  is not reached, because the connection is made to the address that was checked;
* redirects are never followed and no proxy from the environment is used.

Plain http is refused like every other outbound connection of fileshare's
(``transport``): only loopback and hosts in ``FILESHARE_PLAINTEXT_HOSTS`` may go without TLS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from fileshare.transport import normal_host, plaintext_allowed

log = structlog.get_logger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Longest callback URL accepted.
URL_MAX = 2048
#: How long registration waits for DNS.
RESOLVE_TIMEOUT = 5.0


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(normal_host(text).split("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


#: IPv6 prefixes that carry an IPv4 address a gateway may forward to (NAT64, 6to4,
#: Teredo, the IPv4-compatible and -translated forms): ``is_global`` calls most of them
#: public, but ``[64:ff9b::a00:1]`` reaches 10.0.0.1 through a NAT64 gateway.
_EMBEDDING = tuple(
    ipaddress.ip_network(n)
    for n in (
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2002::/16",
        "2001::/32",
        "::/96",
        "::ffff:0:0:0/96",
    )
)


def public(address: Address) -> bool:
    """Reachable on the internet: not loopback, link-local, private, shared, reserved,
    documentation, multicast or unspecified (``is_global`` says all but multicast), and
    not an IPv6 address standing for an IPv4 one."""
    if address.version == 6 and any(address in network for network in _EMBEDDING):
        return False
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Targets:
    #: Host names that may resolve to private addresses, and networks that may be reached.
    private_hosts: frozenset[str] = frozenset()
    private_networks: tuple[Network, ...] = ()
    plaintext_hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, entries: Iterable[str], plaintext_hosts: frozenset[str]) -> Targets:
        """From ``FILESHARE_WEBHOOK_PRIVATE_HOSTS``: names, addresses and CIDR networks."""
        names: set[str] = set()
        networks: list[Network] = []
        for entry in entries:
            entry = normal_host(entry)
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry)
        return cls(frozenset(names), tuple(networks), plaintext_hosts)

    def allowed(self, host: str, address: Address) -> bool:
        """Whether a connection to ``address`` (which ``host`` resolved to) may be made."""
        if public(address) or normal_host(host) in self.private_hosts:
            return True
        return any(address in network for network in self.private_networks)

    def url_problem(self, url: str) -> str | None:
        """What makes ``url`` unfit as a callback without resolving it, or None."""
        if len(url) > URL_MAX:
            return f"is longer than {URL_MAX} characters"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a port that is not a number)
            # The host aiohttp will connect to, as yarl reads it: judged here, so that
            # what is checked is what is reached (yarl maps fullwidth digits to ASCII).
            connected = URL(url).raw_host
        except ValueError:
            return "is not a URL"
        if parts.scheme not in ("https", "http") or not parts.hostname:
            return "must be an absolute https URL"
        if connected != parts.hostname or not parts.hostname.isascii():
            return "must name its host in ASCII (an international name in its xn-- form)"
        if parts.username is not None or parts.password is not None:
            return "must not hold credentials"
        if parts.fragment:
            return "must not have a fragment"
        host = parts.hostname
        if parts.scheme == "http" and not plaintext_allowed(host, self.plaintext_hosts):
            return "is plain http: use https (or list the host in FILESHARE_PLAINTEXT_HOSTS)"
        literal = _address(host)
        if literal is not None and not self.allowed(host, literal):
            return f"targets {literal}, a {_kind(literal)} address"
        return None

    async def check(self, url: str) -> str | None:
        """``url_problem``, then the addresses its host resolves to now (registration)."""
        if (problem := self.url_problem(url)) is not None:
            return problem
        host = urlsplit(url).hostname or ""
        if _address(host) is not None:
            return None
        loop = asyncio.get_running_loop()
        # One answer for a name that does not resolve and one that resolves inside: which
        # it is would map the cluster's private names for any client. The log says.
        refused = "names a host that does not resolve to public addresses only"
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            log.info("webhook.target_unresolved", host=host[:80])
            return refused
        for info in infos:
            address = _address(str(info[4][0]))
            if address is None or not self.allowed(host, address):
                log.info("webhook.target_private", host=host[:80], address=str(address))
                return refused
        return None


def _kind(address: Address) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    return "non-public"


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, with every address ``targets`` refuses left out: what is left
    is what the connection is made to, so what was checked is what is reached."""

    def __init__(self, targets: Targets) -> None:
        self._targets = targets
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [
            r
            for r in found
            if (a := _address(r["host"])) is not None and self._targets.allowed(host, a)
        ]
        if not kept:
            raise OSError(f"{host[:80]} resolves only to addresses webhooks may not reach")
        return kept

    async def close(self) -> None:
        await self._inner.close()
