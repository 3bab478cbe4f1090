"""Google Cloud Storage backend: the GCS JSON API spoken over aiohttp.

Why not google-cloud-storage: it is synchronous (``requests``), so each chunk PUT of
each upload would hold a worker of the default thread pool (``min(32, cpus + 4)``, the
pool hashing and DNS also need) for as long as GCS takes to answer, and a cancelled
upload could not stop its thread. Measured against fake-gcs-server (2 cores): one
64 MiB stream costs the same either way; 16 concurrent 24 MiB uploads took 2.9-3.2 s
here against 3.5-3.6 s, and a trivial ``to_thread`` call waited up to 100-160 ms
during them against 400-550 ms. The JSON API is small and stable; one
``aiohttp.ClientSession`` per backend speaks it without blocking the event loop.
google-auth is used for credentials only; its one blocking call (refreshing a token)
runs in a thread.

How the Protocol maps onto GCS:

- ``open_writer``: a resumable upload session, opened lazily when the first full part
  must leave memory. Chunks are multiples of 256 KiB and strictly sequential, so a
  writer holds at most its part buffer plus the one chunk being PUT. An object that
  never filled a part is sent at ``commit`` in one multipart request instead. On any
  failure or ``abort`` the session is cancelled (DELETE on the session URI).
- ``begin_copy``: GCS has no invisible copy target, so nothing happens until
  ``PendingCopy.commit``, which runs ``objects.rewrite`` (looping on ``rewriteToken``)
  with ``ifGenerationMatch=0``: a promotion never replaces an existing object. Within
  one location and storage class a rewrite is a metadata operation done in one call.
- ``version`` is the object's generation.
- ``ping`` lists at most one object per bucket: that needs ``storage.objects.list``,
  which the service holds anyway, where ``buckets.get`` would need a bucket-level role.
- Requests that are safe to repeat are retried on connection errors, timeouts, 408,
  429 and 5xx (three attempts, short back-off); chunk PUTs are not (that would need a
  status query), a failed chunk fails the upload and cancels its session.

Signed URLs (direct uploads, download redirects) are ``gcs_signing``'s: a subclass that
the factory builds only where something can sign.

The session URI of a resumable upload is a bearer credential for that upload: it never
appears in an error message or a log line, and neither does an access token.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import quote

import aiohttp
import google.auth.transport.urllib3
import structlog
import urllib3
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from yarl import URL

from fileshare.storage.base import (
    PROBE_PREFIX,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Presigned,
    StorageError,
)
from fileshare.storage.encryption import Encryption

log = structlog.get_logger(__name__)
T = TypeVar("T")

KiB: Final = 1024
MiB: Final = 1024 * KiB
#: Resumable upload chunks (all but the last) must be multiples of this.
CHUNK_QUANTUM: Final = 256 * KiB
DEFAULT_ENDPOINT: Final = "https://storage.googleapis.com"
SCOPE: Final = "https://www.googleapis.com/auth/devstorage.read_write"
#: Size of the pieces handed to the socket when sending and yielded when reading.
IO_SLICE: Final = 256 * KiB
#: A cached access token is refreshed when it has less than this (or half its
#: lifetime, if shorter) left to live.
TOKEN_MARGIN: Final = 300.0
#: Lifetime assumed for a token whose credentials report no expiry.
TOKEN_DEFAULT_TTL: Final = 300.0
#: After a failed token refresh, calls fail fast for this long instead of each one
#: trying again (a broken deployment must not hammer the token endpoint).
REFRESH_BACKOFF: Final = 2.0
#: Attempts for a request that is safe to repeat, and the first pause between them
#: (then x3): a brief GCS hiccup must not fail an upload.
RETRY_ATTEMPTS: Final = 3
RETRY_BACKOFF: Final = 0.1
RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
#: How many times a chunk may be re-sent without GCS persisting a single new byte.
MAX_STALLED_PUTS: Final = 3
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


# --------------------------------------------------------------------------- auth


class _TokenSource:
    """Bearer tokens for the Authorization header; ``None`` means anonymous."""

    #: Whether a 401 may be cured by fetching a new token.
    refreshable = False

    async def authorization(self) -> str | None:
        return None

    def invalidate(self, authorization: str) -> None:
        """Forget the cached token if it is the one a 401 answered."""


class _GoogleAuthTokens(_TokenSource):
    """Access tokens from google-auth credentials (ADC, Workload Identity, or given).

    ``refresh`` is a blocking HTTP call (metadata server or token endpoint): it runs in
    a worker thread, once at a time (a lock), and its token is cached until
    ``TOKEN_MARGIN`` seconds before it expires.
    """

    refreshable = True

    def __init__(self, credentials: Any | None) -> None:
        self._credentials = credentials
        self._transport: Any | None = None
        self._token: str | None = None
        self._deadline = 0.0  # time.monotonic() after which the token is stale
        self._failure: StorageError | None = None
        self._failed_until = 0.0
        self._lock = asyncio.Lock()

    async def resolve(self) -> None:
        """Find the credentials now (fail fast at start-up), without fetching a token."""
        if self._credentials is None:
            async with self._lock:
                if self._credentials is None:
                    self._credentials = await _auth_call(self._default_credentials)

    async def authorization(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < self._deadline:
            return f"Bearer {token}"
        async with self._lock:
            if self._token is None or time.monotonic() >= self._deadline:
                if self._failure is not None and time.monotonic() < self._failed_until:
                    raise StorageError(str(self._failure)) from self._failure.__cause__
                try:
                    self._token, ttl = await _auth_call(self._refresh)
                except StorageError as exc:
                    self._failure, self._failed_until = exc, time.monotonic() + REFRESH_BACKOFF
                    raise
                self._failure = None
                # Short-lived tokens are used for half their life, not one call.
                self._deadline = time.monotonic() + ttl - min(TOKEN_MARGIN, ttl / 2)
            return f"Bearer {self._token}"

    def invalidate(self, authorization: str) -> None:
        # A late 401 for an older token must not throw away a fresh one.
        if self._token is not None and authorization == f"Bearer {self._token}":
            self._deadline = 0.0

    # The two methods below run in a worker thread.

    @staticmethod
    def _default_credentials() -> Any:
        import google.auth

        credentials, _project = google.auth.default(scopes=[SCOPE])
        return credentials

    def _refresh(self) -> tuple[str, float]:
        if self._credentials is None:
            self._credentials = self._default_credentials()
        if self._transport is None:
            # (Imported with this module, not here: a first import in a worker thread holds
            # the GIL for as long as it runs, and the event loop waits for it.)
            pool = urllib3.PoolManager()
            self._transport = google.auth.transport.urllib3.Request(pool)  # type: ignore[no-untyped-call]
        self._credentials.refresh(self._transport)
        token = self._credentials.token
        if not token:
            raise StorageError("GCS credentials: the refresh returned no access token")
        expiry: datetime | None = self._credentials.expiry  # naive UTC in google-auth
        if expiry is None:
            return str(token), TOKEN_DEFAULT_TTL + TOKEN_MARGIN
        remaining = (expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        return str(token), max(remaining, 0.0)


async def _auth_call(fn: Callable[[], T]) -> T:
    try:
        result = await asyncio.to_thread(fn)
    except StorageError:
        raise
    except Exception as exc:  # google.auth.exceptions.*, urllib3 errors, OSError...
        # The exception type only: google-auth messages may quote token endpoint replies.
        raise StorageError(
            f"GCS credentials: cannot obtain an access token ({type(exc).__name__})"
        ) from exc
    return result


# ---------------------------------------------------------------------- payloads


class _Buffers(Payload):
    """A request body made of buffers sent as they are, in ``IO_SLICE`` pieces.

    aiohttp's own ``BytesPayload`` hands a whole multi-MiB chunk to the transport at
    once (which copies what the socket does not take); slicing lets the writer's
    drain() apply back-pressure every 256 KiB, and nothing is copied or joined.
    """

    def __init__(self, *buffers: bytes | bytearray | memoryview, content_type: str) -> None:
        views = tuple(memoryview(b).cast("B") for b in buffers)
        super().__init__(views, content_type=content_type)
        self._views = views
        self._total = sum(v.nbytes for v in views)
        self._size = self._total

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._views).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        remaining = self._total if content_length is None else content_length
        for view in self._views:
            for start in range(0, view.nbytes, IO_SLICE):
                if remaining <= 0:
                    return
                piece = view[start : start + min(IO_SLICE, remaining)]
                await writer.write(piece)
                remaining -= piece.nbytes


def _check_header_value(name: str, value: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{name} contains control characters")


# ----------------------------------------------------------------------- helpers


def _object_info(key: str, obj: Any) -> ObjectInfo:
    try:
        metadata = obj.get("metadata") or {}
        return ObjectInfo(
            key=key,
            size=int(obj["size"]),
            version=str(obj["generation"]),
            content_type=obj.get("contentType") or DEFAULT_CONTENT_TYPE,
            metadata={str(k): str(v) for k, v in metadata.items()},
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"GCS: malformed object resource for {key!r}") from exc


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise StorageError(f"{what}: malformed JSON reply") from exc


def _persisted(resp: aiohttp.ClientResponse) -> int:
    """Bytes GCS holds after a 308, from its ``Range: bytes=0-N`` header (none: 0)."""
    value = resp.headers.get("Range")
    if not value:
        return 0
    try:
        unit, _, span = value.partition("=")
        first, _, last = span.partition("-")
        if unit.strip() != "bytes" or int(first) != 0:
            raise ValueError(value)
        return int(last) + 1
    except ValueError as exc:
        raise StorageError("GCS resumable upload: unexpected Range header in reply") from exc


# ---------------------------------------------------------------------- backend


def emulator_endpoint(endpoint: str | None) -> str | None:
    """The emulator a backend with this ``endpoint`` talks to (the endpoint, else
    ``STORAGE_EMULATOR_HOST``), or None for Google itself."""
    return endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or None


class GcsStorage:
    """Object storage on Google Cloud Storage (or a GCS emulator)."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        project: str | None = None,
        buckets: Sequence[str] = (),
        part_size: int = 8 * MiB,
        timeout: float = 60.0,
        credentials: Any | None = None,
        max_bytes_rewritten_per_call: int | None = None,
        encryption: Encryption | None = None,
    ) -> None:
        """
        endpoint: base URL of the API (``http://127.0.0.1:4443``), for an emulator;
            default ``STORAGE_EMULATOR_HOST`` if set, else Google's. With an endpoint
            and no explicit ``credentials`` requests are anonymous.
        project: sent as ``x-goog-user-project`` (the project billed for requests to
            requester-pays buckets); leave unset otherwise.
        buckets: the buckets ``ping`` checks.
        part_size: resumable chunk size, a multiple of 256 KiB; bounds the memory of a
            writer to twice this.
        timeout: seconds for connecting, for each metadata request or chunk PUT, and
            between two reads of a download.
        credentials: google-auth credentials; default Application Default Credentials
            (Workload Identity on GKE) with the devstorage.read_write scope.
        max_bytes_rewritten_per_call: passed to ``objects.rewrite`` (a multiple of
            1 MiB); default lets GCS choose.
        encryption: with ``kms``, every upload, resumable session and rewrite names the
            key (``kmsKeyName``, ``destinationKmsKeyName``); otherwise the bucket's
            default applies.
        """
        if part_size <= 0 or part_size % CHUNK_QUANTUM:
            raise ValueError(f"part_size must be a positive multiple of {CHUNK_QUANTUM}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        emulator = emulator_endpoint(endpoint)
        base = emulator or DEFAULT_ENDPOINT
        if "://" not in base:
            base = f"http://{base}"
        self._base = base.rstrip("/")
        self._api = f"{self._base}/storage/v1"
        self._upload = f"{self._base}/upload/storage/v1"
        self._origin = URL(self._base).origin()
        self._buckets = tuple(buckets)
        self._project = project
        self.part_size = part_size
        self._timeout = timeout
        self._rewrite_max = max_bytes_rewritten_per_call
        self.encryption = encryption or Encryption()
        self._tokens: _TokenSource
        if emulator is not None and credentials is None:
            self._tokens = _TokenSource()
        else:
            self._tokens = _GoogleAuthTokens(credentials)
        #: fake-gcs-server ignores ifGenerationMatch on rewrites: check the target
        #: first when talking to an emulator (the precondition is still sent).
        self._check_target_first = emulator is not None
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    async def create(cls, **kwargs: Any) -> GcsStorage:
        """Build the backend inside the running loop and find its credentials now, so a
        deployment without credentials fails at start rather than on the first upload."""
        self = cls(**kwargs)
        self._session()
        if isinstance(self._tokens, _GoogleAuthTokens):
            try:
                await self._tokens.resolve()
            except BaseException:
                await self.close()
                raise
        return self

    async def __aenter__(self) -> GcsStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self._base!r}, buckets={self._buckets!r})"

    @property
    def base_url(self) -> str:
        """Scheme and host of the API (Google's, or the emulator's): the XML API's too,
        which signed URLs address."""
        return self._base

    # ----------------------------------------------------------- plumbing

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise StorageError("GCS storage is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._timeout, sock_read=self._timeout
                ),
                headers={"User-Agent": "fileshare"},
            )
        return self._http

    def _object_url(self, bucket: str, key: str, *, upload: bool = False) -> URL:
        base = self._upload if upload else self._api
        return URL(f"{base}/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}", encoded=True)

    def _bucket_url(self, bucket: str, suffix: str = "", *, upload: bool = False) -> URL:
        base = self._upload if upload else self._api
        return URL(f"{base}/b/{quote(bucket, safe='')}{suffix}", encoded=True)

    async def _headers(self, url: URL, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        # Only our own endpoint ever sees the token (a session URI could name another).
        if url.origin() == self._origin:
            authorization = await self._tokens.authorization()
            if authorization is not None:
                headers["Authorization"] = authorization
            if self._project:
                headers["x-goog-user-project"] = self._project
        return headers

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        url: URL,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Payload | bytes | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; transport errors become ``StorageError``.

        ``retry``: a connection error, a timeout, a 408/429/5xx (and a 401, after the
        token was dropped) before the response is handed over is tried again, up to
        ``RETRY_ATTEMPTS`` times. Every caller's request is safe to repeat (reads,
        deletes, preconditioned creates, session starts) except chunk PUTs and session
        cancels, which pass ``retry=False``. ``stream``: no total timeout (a download
        lasts as long as it lasts; each read still times out)."""
        session = self._session()
        timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout)
            if stream
            else aiohttp.ClientTimeout(total=self._timeout)
        )
        retryable = RETRY_STATUSES | ({401} if self._tokens.refreshable else set())
        attempts = RETRY_ATTEMPTS if retry else 1
        handed_over = False
        for attempt in range(1, attempts + 1):
            all_headers = await self._headers(url, headers)
            try:
                async with session.request(
                    method,
                    url,
                    params=params,
                    headers=all_headers,
                    data=data,
                    timeout=timeout,
                    allow_redirects=False,
                ) as resp:
                    if resp.status == 401:
                        self._tokens.invalidate(all_headers.get("Authorization", ""))
                    if attempt == attempts or resp.status not in retryable:
                        handed_over = True
                        yield resp
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                if handed_over or attempt == attempts:
                    raise StorageError(f"{what}: {type(exc).__name__} talking to GCS") from exc
            await asyncio.sleep(RETRY_BACKOFF * 3 ** (attempt - 1))

    async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> NoReturn:
        """Raise the neutral error for a non-success reply."""
        detail = ""
        with suppress(Exception):
            body = await resp.content.read(64 * KiB)
            detail = str(json.loads(body)["error"]["message"])[:200]
        if resp.status == 404:
            raise ObjectNotFound(f"{what}: not found")
        if resp.status == 412:
            raise ObjectExists(f"{what}: the target already exists")
        suffix = f": {detail}" if detail else ""
        raise StorageError(f"{what}: HTTP {resp.status} {resp.reason or ''}".rstrip() + suffix)

    async def _read_json(self, resp: aiohttp.ClientResponse, what: str) -> Any:
        return _json(await resp.read(), what)

    # ------------------------------------------------------------ writes

    async def open_writer(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> GcsWriter:
        _check_header_value("content type", content_type)
        self._session()  # fail now if closed
        return GcsWriter(self, bucket, key, content_type, dict(metadata or {}))

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        _check_header_value("content type", content_type)
        return await self._multipart_upload(
            bucket, key, data, content_type, dict(metadata or {}), if_absent=if_absent
        )

    async def _multipart_upload(
        self,
        bucket: str,
        key: str,
        data: bytes | bytearray | memoryview,
        content_type: str,
        metadata: dict[str, str],
        *,
        if_absent: bool,
    ) -> ObjectInfo:
        """objects.insert with uploadType=multipart: metadata and bytes in one request."""
        what = f"GCS upload {bucket}/{key}"
        boundary = secrets.token_hex(16)
        resource = json.dumps({"name": key, "contentType": content_type, "metadata": metadata})
        head = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{resource}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = _Buffers(head, data, tail, content_type=f'multipart/related; boundary="{boundary}"')
        params = {"uploadType": "multipart", **self.encryption.gcs_upload_params()}
        if if_absent:
            params["ifGenerationMatch"] = "0"
        url = self._bucket_url(bucket, "/o", upload=True)
        async with self._request("POST", url, what, params=params, data=body) as resp:
            if resp.status != 200:
                await self._fail(resp, what)
            return _object_info(key, await self._read_json(resp, what))

    async def _start_session(
        self, bucket: str, key: str, content_type: str, metadata: dict[str, str]
    ) -> URL:
        what = f"GCS upload {bucket}/{key}"
        url = self._bucket_url(bucket, "/o", upload=True)
        resource = json.dumps({"name": key, "contentType": content_type, "metadata": metadata})
        headers = {
            "Content-Type": "application/json; charset=UTF-8",
            "X-Upload-Content-Type": content_type,
        }
        params = {"uploadType": "resumable", **self.encryption.gcs_upload_params()}
        async with self._request(
            "POST", url, what, params=params, headers=headers, data=resource.encode()
        ) as resp:
            if resp.status != 200:
                await self._fail(resp, what)
            location = resp.headers.get("Location")
        if not location:
            raise StorageError(f"{what}: no session URI in the reply")
        return URL(location, encoded=True)

    async def start_direct_session(
        self, bucket: str, key: str, *, content_type: str, size: int
    ) -> Presigned:
        what = f"GCS direct session {bucket}/{key}"
        url = self._bucket_url(bucket, "/o", upload=True)
        resource = json.dumps({"name": key, "contentType": content_type})
        headers = {
            "Content-Type": "application/json; charset=UTF-8",
            "X-Upload-Content-Type": content_type,
            # GCS refuses a session's bytes beyond this, and finalizes only at exactly this.
            "X-Upload-Content-Length": str(size),
        }
        params = {
            "uploadType": "resumable",
            "ifGenerationMatch": "0",  # creates the object, never replaces one
            **self.encryption.gcs_upload_params(),
        }
        async with self._request(
            "POST", url, what, params=params, headers=headers, data=resource.encode()
        ) as resp:
            if resp.status != 200:
                await self._fail(resp, what)
            location = resp.headers.get("Location")
        if not location:
            raise StorageError(f"{what}: no session URI in the reply")
        # GCS keeps a session a week; the intent's expiry is fileshare's (the reconciler
        # cancels the session when it expires the intent).
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
        return Presigned("PUT", location, {"Content-Type": content_type}, expires)

    async def cancel_direct_session(self, url: str) -> None:
        await self._cancel_session(URL(url, encoded=True), "GCS direct session")

    async def _cancel_session(self, session: URL, what: str) -> None:
        """DELETE the session URI: GCS drops the bytes and answers 499. Never raises."""
        try:
            async with self._request(
                "DELETE", session, what, headers={"Content-Length": "0"}, retry=False
            ) as resp:
                status = resp.status
        except Exception as exc:
            log.warning("gcs.session_cancel_failed", upload=what, error=type(exc).__name__)
            return
        if status not in (499, 200, 204, 404, 410):
            log.warning("gcs.session_cancel_failed", upload=what, status=status)

    # ------------------------------------------------------------- reads

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        what = f"GCS head {bucket}/{key}"
        async with self._request("GET", self._object_url(bucket, key), what) as resp:
            if resp.status != 200:
                await self._fail(resp, what)
            return _object_info(key, await self._read_json(resp, what))

    async def read(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        version: str | None = None,
    ) -> AsyncIterator[bytes]:
        what = f"GCS read {bucket}/{key}"
        if start < 0 or (end is not None and end < start):
            raise StorageError(f"{what}: invalid range {start}-{end}")
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        url = self._object_url(bucket, key)
        params = {"alt": "media"}
        if version is not None:
            params["ifGenerationMatch"] = version
        async with self._request(
            "GET", url, what, params=params, headers=headers, stream=True
        ) as resp:
            if version is not None and resp.headers.get("x-goog-generation", version) != version:
                raise StorageError(f"{what}: the object is not the generation asked for")
            if resp.status == 416:
                if start == 0:
                    return  # an empty object: nothing to send
                raise StorageError(f"{what}: range starts beyond the end")
            if resp.status not in (200, 206):
                await self._fail(resp, what)
            if resp.status == 200 and start:
                raise StorageError(f"{what}: GCS ignored the Range header")
            async for chunk in resp.content.iter_chunked(IO_SLICE):
                yield chunk

    async def list_keys(self, bucket: str, prefix: str = "") -> AsyncIterator[str]:
        async for item in self._list(bucket, prefix, "name"):
            yield str(item["name"])

    async def list_stale(self, bucket: str, prefix: str, before: datetime) -> AsyncIterator[str]:
        async for item in self._list(bucket, prefix, "name,timeCreated"):
            try:
                created = datetime.fromisoformat(str(item["timeCreated"]))
            except (KeyError, ValueError):
                raise StorageError(
                    f"GCS list {bucket}/{prefix}*: an object without a time"
                ) from None
            if created < before:
                yield str(item["name"])

    async def abort_stale_uploads(self, bucket: str, prefix: str, before: datetime) -> int:
        """GCS has no list of resumable sessions: an abandoned one holds no object and
        expires after a week (and the lifecycle rule deletes nothing it cannot see)."""
        return 0

    async def _list(self, bucket: str, prefix: str, fields: str) -> AsyncIterator[Any]:
        what = f"GCS list {bucket}/{prefix}*"
        url = self._bucket_url(bucket, "/o")
        params = {
            "prefix": prefix,
            "maxResults": "1000",
            "fields": f"items({fields}),nextPageToken",
        }
        while True:
            async with self._request("GET", url, what, params=params) as resp:
                if resp.status != 200:
                    await self._fail(resp, what)
                page = await self._read_json(resp, what)
            for item in page.get("items") or ():
                yield item
            token = page.get("nextPageToken")
            if not token:
                return
            params = {**params, "pageToken": str(token)}

    # ------------------------------------------------------- copy/delete

    async def begin_copy(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        size: int,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
        src_version: str | None = None,
    ) -> GcsPendingCopy:
        # ``size`` is not needed: GCS sizes its rewrite rounds itself.
        self._session()
        return GcsPendingCopy(
            self,
            src_bucket,
            src_key,
            dst_bucket,
            dst_key,
            content_type,
            dict(metadata or {}),
            src_version,
        )

    async def _rewrite(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        content_type: str,
        metadata: dict[str, str],
        src_version: str | None = None,
    ) -> ObjectInfo:
        """objects.rewrite into a target that must not exist, until ``done``; with
        ``src_version``, only from that generation of the source."""
        what = f"GCS copy {src_bucket}/{src_key} -> {dst_bucket}/{dst_key}"
        if self._check_target_first:
            try:
                await self.head(dst_bucket, dst_key)
            except ObjectNotFound:
                pass
            else:
                raise ObjectExists(f"{what}: the target already exists")
        src = self._object_url(src_bucket, src_key)
        url = URL(
            f"{src}/rewriteTo/b/{quote(dst_bucket, safe='')}/o/{quote(dst_key, safe='')}",
            encoded=True,
        )
        body = json.dumps({"contentType": content_type, "metadata": metadata}).encode()
        headers = {"Content-Type": "application/json; charset=UTF-8"}
        params = {"ifGenerationMatch": "0", **self.encryption.gcs_rewrite_params()}
        if src_version:
            params["ifSourceGenerationMatch"] = src_version
        if self._rewrite_max:
            params["maxBytesRewrittenPerCall"] = str(self._rewrite_max)
        while True:
            async with self._request(
                "POST", url, what, params=params, headers=headers, data=body
            ) as resp:
                if resp.status != 200:
                    await self._fail(resp, what)
                reply = await self._read_json(resp, what)
            if reply.get("done"):
                return _object_info(dst_key, reply.get("resource"))
            token = reply.get("rewriteToken")
            if not token:
                raise StorageError(f"{what}: rewrite not done and no rewriteToken")
            params = {**params, "rewriteToken": str(token)}

    async def delete(self, bucket: str, key: str) -> None:
        what = f"GCS delete {bucket}/{key}"
        async with self._request("DELETE", self._object_url(bucket, key), what) as resp:
            if resp.status not in (200, 204, 404):
                await self._fail(resp, what)

    # ------------------------------------------------------------ admin

    async def ping(self) -> None:
        # objects.list needs storage.objects.list, which the service holds anyway;
        # buckets.get would need storage.buckets.get, in no object-level role.
        async def one(bucket: str) -> None:
            what = f"GCS bucket {bucket}"
            params = {"maxResults": "1", "fields": "kind"}
            async with self._request(
                "GET", self._bucket_url(bucket, "/o"), what, params=params
            ) as r:
                if r.status != 200:
                    await self._fail(r, what)

        await asyncio.gather(*(one(b) for b in self._buckets))

    async def verify_encryption(self) -> str:
        """GCS encrypts every object; with ``kms`` a probe object written as uploads are
        must come back naming the configured key (``kmsKeyName`` holds the key version
        that encrypted it). Emulators do not record keys: do not use ``kms`` with one."""
        described = self.encryption.describe("gcs")
        key = self.encryption.kms_key
        if self.encryption.mode != "kms" or key is None or not self._buckets:
            return described
        bucket = self._buckets[0]
        probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        what = f"GCS encryption probe in {bucket}"
        await self._multipart_upload(bucket, probe, b"", DEFAULT_CONTENT_TYPE, {}, if_absent=True)
        try:
            params = {"fields": "kmsKeyName"}
            url = self._object_url(bucket, probe)
            async with self._request("GET", url, what, params=params) as resp:
                if resp.status != 200:
                    await self._fail(resp, what)
                kept = (await self._read_json(resp, what)).get("kmsKeyName") or ""
        finally:
            await self.delete(bucket, probe)
        if kept != key and not str(kept).startswith(f"{key}/cryptoKeyVersions/"):
            raise StorageError(
                f"bucket {bucket}: objects are not encrypted with the configured KMS key "
                "(FILESHARE_STORAGE_KMS_KEY)"
            )
        return f"{described}; verified on {bucket}"

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()


# ------------------------------------------------------------------- writer


class GcsWriter:
    """A streaming write through a resumable upload session; see the module doc."""

    def __init__(
        self,
        storage: GcsStorage,
        bucket: str,
        key: str,
        content_type: str,
        metadata: dict[str, str],
    ) -> None:
        self._storage = storage
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._metadata = metadata
        self._what = f"GCS upload {bucket}/{key}"
        self._part = storage.part_size
        self._buf = bytearray()
        self._session: URL | None = None
        self._sent = 0  # bytes GCS has acknowledged
        self._inflight: asyncio.Task[None] | None = None
        self._state = "open"  # open | sealed | committed | failed | aborted

    def _check_open(self, *allowed: str) -> None:
        if self._state not in (allowed or ("open",)):
            raise StorageError(f"{self._what}: writer is {self._state}")

    async def write(self, chunk: bytes) -> None:
        self._check_open()
        view = memoryview(chunk).cast("B")
        try:
            while view.nbytes:
                room = self._part - len(self._buf)
                if room == 0:
                    # The buffer is full and more bytes follow: it is not the last chunk.
                    await self._flush()
                    continue
                self._buf += view[:room]
                view = view[room:]
        except BaseException:
            await self._failed()
            raise

    def buffered(self) -> bytes | None:
        if self._session is not None or self._state != "open":
            return None
        return bytes(self._buf)

    async def seal(self) -> None:
        self._check_open()
        try:
            await self._wait_inflight()
            # A middle chunk is a multiple of 256 KiB and the last one may not be empty
            # (an empty final PUT is not something every emulator finalises): keep back
            # the tail, or one quantum when the body ends on a boundary.
            keep = len(self._buf) % CHUNK_QUANTUM or min(len(self._buf), CHUNK_QUANTUM)
            send = len(self._buf) - keep
            if send:
                if self._session is None:
                    self._session = await self._storage._start_session(
                        self._bucket, self._key, self._content_type, self._metadata
                    )
                data, self._buf = self._buf, bytearray(self._buf[send:])
                del data[send:]  # the tail was copied: at most one quantum
                await self._put_part(data)
        except BaseException:
            await self._failed()
            raise
        self._state = "sealed"

    async def commit(self) -> ObjectInfo:
        self._check_open("open", "sealed")
        try:
            if self._session is None:
                info = await self._storage._multipart_upload(
                    self._bucket,
                    self._key,
                    self._buf,
                    self._content_type,
                    self._metadata,
                    if_absent=False,
                )
            else:
                await self._wait_inflight()
                data, self._buf = self._buf, bytearray()
                total = self._sent + len(data)
                obj = await self._put(data, total=total)
                info = _object_info(self._key, obj)
        except BaseException:
            await self._failed()
            raise
        self._state = "committed"
        self._buf = bytearray()
        self._session = None
        return info

    async def abort(self) -> None:
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        try:
            await self._cleanup()
        except Exception as exc:  # never raises
            log.warning("gcs.abort_failed", upload=self._what, error=type(exc).__name__)

    # -------------------------------------------------------- internals

    async def _flush(self) -> None:
        """Send the full buffer as the next chunk, in the background; wait for the
        previous chunk first (chunks of one session are strictly sequential)."""
        await self._wait_inflight()
        if self._session is None:
            self._session = await self._storage._start_session(
                self._bucket, self._key, self._content_type, self._metadata
            )
        data, self._buf = self._buf, bytearray()
        self._inflight = asyncio.create_task(self._put_part(data))

    async def _put_part(self, data: bytearray) -> None:
        if await self._put(data, total=None) is not None:
            raise StorageError(f"{self._what}: GCS finalised the upload before its end")

    async def _wait_inflight(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _put(self, data: bytearray, *, total: int | None) -> Any | None:
        """PUT ``data`` at offset ``self._sent``: a middle chunk (``total`` None, its
        size a multiple of 256 KiB) or the last one. GCS may persist less than it was
        sent (308 with a shorter Range): the rest is sent again. Returns the object
        resource once the upload is finalised, else None."""
        assert self._session is not None
        view = memoryview(data)
        stalls = 0
        while True:
            start = self._sent
            size = "*" if total is None else str(total)
            span = f"{start}-{start + view.nbytes - 1}" if view.nbytes else "*"
            headers = {"Content-Range": f"bytes {span}/{size}", "Content-Type": self._content_type}
            body = _Buffers(view, content_type=self._content_type)
            async with self._storage._request(
                "PUT", self._session, self._what, headers=headers, data=body, retry=False
            ) as resp:
                if resp.status in (200, 201):  # finalised
                    self._sent = start + view.nbytes
                    return _json(await resp.read(), self._what)
                if resp.status != 308:
                    await self._storage._fail(resp, self._what)
                persisted = _persisted(resp)
            if not start <= persisted <= start + view.nbytes:
                raise StorageError(f"{self._what}: GCS reports an unexpected offset")
            if persisted == start + view.nbytes and (total is None or view.nbytes == 0):
                if total is not None:  # all bytes there, yet not finalised
                    raise StorageError(f"{self._what}: GCS did not finalise the upload")
                self._sent = persisted
                return None
            stalls = stalls + 1 if persisted == start else 0
            if stalls > MAX_STALLED_PUTS:
                raise StorageError(f"{self._what}: GCS persists no more bytes")
            view = view[persisted - start :]
            self._sent = persisted

    async def _failed(self) -> None:
        if self._state in ("open", "sealed"):  # a failed commit of a sealed write too
            self._state = "failed"
        with suppress(Exception):
            await self._cleanup()

    async def _cleanup(self) -> None:
        """Stop the chunk in flight, cancel the session, drop the buffer. Idempotent."""
        self._buf = bytearray()
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with suppress(BaseException):
                await task
        session, self._session = self._session, None
        if session is not None:
            await self._storage._cancel_session(session, self._what)


class GcsPendingCopy:
    """A promotion waiting for its verdict: GCS has no invisible target, so the rewrite
    runs at ``commit`` (with ``ifGenerationMatch=0``) and ``abort`` has nothing to drop."""

    def __init__(
        self,
        storage: GcsStorage,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        content_type: str,
        metadata: dict[str, str],
        src_version: str | None = None,
    ) -> None:
        self._storage = storage
        self._args = (src_bucket, src_key, dst_bucket, dst_key, content_type, metadata)
        self._src_version = src_version
        self._state = "pending"

    async def commit(self) -> ObjectInfo:
        if self._state != "pending":
            raise StorageError(f"GCS copy: already {self._state}")
        self._state = "committed"
        try:
            return await self._storage._rewrite(*self._args, self._src_version)
        except ObjectExists:
            if self._src_version is None:
                raise
            # Two preconditions share one 412: tell "target exists" from "source changed".
            _src_bucket, _src_key, dst_bucket, dst_key = self._args[:4]
            try:
                await self._storage.head(dst_bucket, dst_key)
            except ObjectNotFound:
                raise StorageError(
                    "GCS copy: the source is no longer the generation written"
                ) from None
            raise

    async def abort(self) -> None:
        if self._state == "pending":
            self._state = "aborted"
