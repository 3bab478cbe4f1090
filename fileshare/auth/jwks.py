"""An identity provider's verification keys, fetched from its JWKS URL (RFC 7517) and cached.

One ``RemoteJwks`` per issuer, all sharing one ``aiohttp.ClientSession`` (``client_session``,
made and closed by the app's cleanup context). The keys are kept for the response's
``Cache-Control: max-age`` (clamped to [1 min, 24 h]; 1 h without one). A token naming a
``kid`` the cache does not hold triggers a refresh — at most one per minimum interval
(30 s), shared by every request that misses meanwhile — so a provider's key rotation is
picked up within seconds while a flood of made-up ``kid``s costs the provider one request
per interval. When the provider is down the cached keys keep serving (expired or not);
only an issuer whose keys were never fetched refuses its tokens (``KeysUnavailable``).

A fetch is bounded: a short timeout, a body of at most 64 KiB, https only (but loopback or
``FILESHARE_JWKS_ALLOW_HTTP``), redirects followed only within the same origin — the keys
decide who is authenticated, so they come from where the operator said, nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
import jwt
import structlog

from fileshare.auth.trust import ASYMMETRIC, KeysUnavailable
from fileshare.config import jwks_url_problem

log = structlog.get_logger(__name__)

#: Seconds a whole fetch may take (connect, redirects, body).
FETCH_TIMEOUT = 5.0
#: Largest JWKS body read; real ones are a few KiB (a handful of RSA keys).
MAX_BODY = 64 * 1024
MAX_REDIRECTS = 3
DEFAULT_MAX_AGE = 3600.0
MIN_MAX_AGE = 60.0
MAX_MAX_AGE = 86400.0
#: At most one fetch per this many seconds, whatever tokens arrive.
MIN_REFRESH_INTERVAL = 30.0

_MAX_AGE = re.compile(r'(?:^|[,\s])max-age\s*=\s*"?(\d+)"?', re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(?:no-cache|no-store)(?:$|[,\s=])", re.IGNORECASE)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def client_session() -> aiohttp.ClientSession:
    """The HTTP client of every JWKS fetch: one per app, never one per request."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Accept": "application/jwk-set+json, application/json"},
    )


def max_age(cache_control: str | None) -> float:
    """How long a JWKS answer may be kept, from its ``Cache-Control``."""
    if not cache_control:
        return DEFAULT_MAX_AGE
    if _NO_CACHE.search(cache_control):
        # Taken literally, every token would cost the provider a request.
        return MIN_MAX_AGE
    m = _MAX_AGE.search(cache_control)
    if m is None:
        return DEFAULT_MAX_AGE
    return min(max(float(m.group(1)), MIN_MAX_AGE), MAX_MAX_AGE)


def parse_jwks(body: bytes) -> tuple[jwt.PyJWK, ...]:
    """The signature keys of a JWK Set; raises ``ValueError`` when it holds none usable.

    Keys for encryption, of unknown types, or for symmetric algorithms are left out: an
    ``oct`` key in a JWKS could only ever verify an HS* token, which is never accepted."""
    try:
        document = json.loads(body)
    except ValueError:
        raise ValueError("the answer is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('the answer is not a JWK Set (no "keys" list)')
    keys: list[jwt.PyJWK] = []
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        if not isinstance(data.get("kid", ""), str):
            continue
        try:
            key = jwt.PyJWK(data)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ASYMMETRIC:
            keys.append(key)
    if not keys:
        raise ValueError("the JWK Set holds no usable signature key")
    return tuple(keys)


def find(keys: Sequence[jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    """The key named ``kid``; without a ``kid``, the only key (never a guess among several)."""
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    for key in keys:
        if key.key_id == kid:
            return key
    return None


class FetchFailed(Exception):
    """A JWKS fetch did not give keys; the message says why (never a body)."""


@dataclass(frozen=True)
class _Cached:
    keys: tuple[jwt.PyJWK, ...]
    #: ``clock()`` time after which a refresh is due.
    stale_at: float


class RemoteJwks:
    """A ``KeySource`` over an issuer's JWKS URL (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        http: aiohttp.ClientSession,
        *,
        issuer: str,
        allow_http: bool = False,
        min_interval: float = MIN_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (problem := jwks_url_problem(url, allow_http)) is not None:
            raise ValueError(f"JWKS URL of {issuer}: {problem}")
        self.url = url
        self.issuer = issuer
        self._http = http
        self._allow_http = allow_http
        self._min_interval = min_interval
        self._clock = clock
        self._cached: _Cached | None = None
        self._attempted: float | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._failure = "not fetched yet"

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        cached = self._cached
        if cached is not None and (found := find(cached.keys, kid)) is not None:
            if self._clock() >= cached.stale_at:
                # Serve the key at hand; the refresh runs meanwhile (or waits its turn).
                self._start_fetch()
            return found
        # An unknown kid, or no keys yet: a fresh fetch may know it, if one is allowed.
        task = self._start_fetch()
        if task is not None:
            # Shielded: a request given up on does not cancel the fetch others await.
            await asyncio.shield(task)
        if self._cached is None:
            raise KeysUnavailable(f"no keys from {self.url}: {self._failure}")
        return find(self._cached.keys, kid)

    def _start_fetch(self) -> asyncio.Task[None] | None:
        """The fetch in flight, or a new one if the last began at least the minimum
        interval ago; None when neither."""
        if self._fetch is not None:
            return self._fetch
        now = self._clock()
        if self._attempted is not None and now - self._attempted < self._min_interval:
            return None
        self._attempted = now
        task = self._fetch = asyncio.get_running_loop().create_task(self._refresh())
        task.add_done_callback(self._fetched)
        return task

    def _fetched(self, task: asyncio.Task[None]) -> None:
        if self._fetch is task:
            self._fetch = None

    async def _refresh(self) -> None:
        """Fetch the keys; a failure is logged and keeps whatever was cached."""
        try:
            keys, seconds = await self._download()
        except Exception as exc:  # FetchFailed, or a bug: either way the cache stands
            self._failure = str(exc) if isinstance(exc, FetchFailed) else type(exc).__name__
            log.warning(
                "jwks.fetch_failed",
                issuer=self.issuer,
                url=self.url,
                reason=self._failure,
                serving_cached=self._cached is not None,
                exc_info=not isinstance(exc, FetchFailed),
            )
            return
        self._cached = _Cached(keys, self._clock() + seconds)
        log.info(
            "jwks.fetched",
            issuer=self.issuer,
            url=self.url,
            kids=[k.key_id for k in keys],
            max_age=seconds,
        )

    async def _download(self) -> tuple[tuple[jwt.PyJWK, ...], float]:
        url = self.url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with self._http.get(url, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS:
                        url = self._redirect(url, resp.headers.get("Location"))
                        continue
                    if resp.status != 200:
                        raise FetchFailed(f"HTTP {resp.status}")
                    body = await _bounded_body(resp)
                    try:
                        keys = parse_jwks(body)
                    except ValueError as exc:
                        raise FetchFailed(str(exc)) from None
                    return keys, max_age(resp.headers.get("Cache-Control"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")

    def _redirect(self, current: str, location: str | None) -> str:
        if not location:
            raise FetchFailed("a redirect without a Location")
        target = urljoin(current, location)
        here, there = urlsplit(current), urlsplit(target)
        if (here.scheme, here.hostname, here.port) != (there.scheme, there.hostname, there.port):
            raise FetchFailed(f"a redirect to another origin ({there.scheme}://{there.netloc})")
        if (problem := jwks_url_problem(target, self._allow_http)) is not None:
            raise FetchFailed(f"a redirect to a URL that {problem}")
        return target

    async def close(self) -> None:
        """Stop a fetch in flight (at shutdown, before the session closes)."""
        task = self._fetch
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


async def _bounded_body(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_BODY:
        raise FetchFailed(f"the answer is larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_BODY:
            raise FetchFailed(f"the answer is larger than {MAX_BODY} bytes")
    return bytes(body)
