"""Which of fileshare's outbound connections may go without TLS.

Every dependency fileshare talks to carries PHI or what guards it: upload bytes (the
store, clamd), the index (names, owners, the audit trail), the keys that verify tokens
(JWKS). Over plain TCP anybody on the path reads or swaps them. So https (or TLS to
PostgreSQL) is required unless the peer is on loopback (a sidecar in the pod, the tests)
or is named in ``FILESHARE_PLAINTEXT_HOSTS`` — an explicit list (``*`` for any host, in
development), each use of which is logged loudly at start-up. Inside a service mesh that
wraps pod-to-pod traffic in mTLS, list the mesh-local names there.

clamd has no TLS at all: it belongs on the pod's loopback (the NetworkPolicy keeps its
port closed), so a ``tcp://`` clamd elsewhere needs the same explicit listing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

#: ``sslmode`` values that encrypt (libpq's names, which asyncpg takes too).
TLS_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})
ANY_HOST = "*"


def normal_host(host: str) -> str:
    """A host as compared here: lower case, without IPv6 brackets or a trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def is_loopback(host: str) -> bool:
    host = normal_host(host)
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def plaintext_host_entry(entry: str) -> str:
    """A ``FILESHARE_PLAINTEXT_HOSTS`` entry as a host: ``[fd00::1]`` and ``db:5432`` are
    read as the hosts they name (a port never narrows the listing)."""
    entry = entry.strip()
    if entry.startswith("["):
        return normal_host(entry[: entry.find("]") + 1])
    if entry.count(":") == 1:
        entry = entry.partition(":")[0]
    return normal_host(entry)


def plaintext_allowed(host: str, plaintext_hosts: frozenset[str]) -> bool:
    """Whether ``host`` may be reached without TLS."""
    host = normal_host(host)
    return is_loopback(host) or ANY_HOST in plaintext_hosts or host in plaintext_hosts


@dataclass(frozen=True)
class Plaintext:
    """A dependency reached without TLS outside loopback (allowed by the listing)."""

    what: str
    host: str


def http_endpoint_problem(url: str, plaintext_hosts: frozenset[str]) -> str | None:
    """What makes a storage endpoint URL unfit, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute https URL"
    if parts.username or parts.password:
        return "must not hold credentials (they have settings of their own)"
    if parts.scheme == "http" and not plaintext_allowed(parts.hostname, plaintext_hosts):
        return (
            f"is plain http to {parts.hostname}: use https (plain http only on loopback "
            "or for a host in FILESHARE_PLAINTEXT_HOSTS)"
        )
    return None


def postgres_hosts(dsn: str) -> list[str]:
    """The hosts a PostgreSQL DSN connects to (a comma-separated list is tried in turn);
    none for a unix socket. As asyncpg reads it: the authority, else a ``host`` query
    parameter (``config.with_pg_environment`` makes a ``PGHOST`` fallback explicit)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query).get("host")
    raw = parts.netloc.rpartition("@")[2]
    if not postgres_authority_host(dsn):
        raw = query[-1] if query else ""
    hosts = []
    for item in (i.strip() for i in raw.split(",")):
        if not item or item.startswith("/") or item.startswith("%2F"):
            continue  # a unix socket directory
        host = item[1 : item.find("]")] if item.startswith("[") else item.split(":")[0]
        if host:
            hosts.append(unquote(host).lower())
    return hosts


def postgres_authority_host(dsn: str) -> str:
    """The (first) host of the URL's authority, empty when it names none."""
    first = urlsplit(dsn).netloc.rpartition("@")[2].split(",")[0]
    return first[1 : first.find("]")] if first.startswith("[") else first.split(":")[0]


def postgres_sslmode(dsn: str) -> str | None:
    modes = parse_qs(urlsplit(dsn).query).get("sslmode")
    return modes[-1].lower() if modes else None


def postgres_problem(dsn: str, plaintext_hosts: frozenset[str]) -> str | None:
    """What makes an index DSN send the index in the clear, or None. Never echoes the DSN
    (it holds a password). Without an ``sslmode`` asyncpg would *prefer* TLS and fall back
    to plaintext silently, so outside loopback the DSN must choose one that encrypts."""
    if "service" in parse_qs(urlsplit(dsn).query):
        return "names a service: write the host and sslmode in the URL itself"
    exposed = [h for h in postgres_hosts(dsn) if not plaintext_allowed(h, plaintext_hosts)]
    mode = postgres_sslmode(dsn)
    if not exposed or mode in TLS_SSLMODES:
        return None
    host = exposed[0]
    said = "names no sslmode" if mode is None else f"has sslmode={mode[:20]}"
    return (
        f"{said} for {host}: add sslmode=verify-full (with sslrootcert=<CA file>) or "
        "sslmode=require, or list the host in FILESHARE_PLAINTEXT_HOSTS"
    )


def plaintext_uses(
    *,
    storage_endpoint: str | None,
    index_dsn: str | None,
    clamd_host: str | None,
    jwks_urls: tuple[str, ...],
) -> Iterator[Plaintext]:
    """The dependencies of a (valid) configuration reached without TLS outside loopback:
    what the start-up log warns about."""
    if storage_endpoint and (host := _plain_http_host(storage_endpoint)):
        yield Plaintext("storage", host)
    if index_dsn and postgres_sslmode(index_dsn) not in TLS_SSLMODES:
        for host in postgres_hosts(index_dsn):
            if not is_loopback(host):
                yield Plaintext("index", host)
    if clamd_host and not is_loopback(clamd_host):
        yield Plaintext("clamd", clamd_host)
    for url in jwks_urls:
        if host := _plain_http_host(url):
            yield Plaintext("jwks", host)


def _plain_http_host(url: str) -> str | None:
    """The host of a plain-http URL outside loopback, else None."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname or is_loopback(parts.hostname):
        return None
    return parts.hostname
