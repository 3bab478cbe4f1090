"""The S3 backend (AWS S3 or any S3-compatible store, SeaweedFS in tests), on aiobotocore.

One client per ``S3Storage``, opened by ``start``/``create`` and released by ``close``.
Every botocore, aiohttp and socket exception is turned into the neutral errors of
``storage.base`` here: nothing SDK-shaped leaves this module, and messages carry the
operation, bucket, key and S3 error code only (never credentials or request bodies).

Writes: a ``Writer`` keeps up to ``part_size`` bytes in memory. Small objects never
leave that buffer before ``commit`` and go up as one PutObject (faster than multipart on
SeaweedFS). From the first full part on, it is a multipart upload with at most
``parts_in_flight`` parts being sent: ``write`` waits for the oldest when the cap is
reached, which is the back-pressure on the client's socket.

Copies: ``begin_copy`` builds the target as a multipart upload of UploadPartCopy parts,
started at once in the background so that the copy runs while the virus scan verdict
is awaited; the target stays invisible until CompleteMultipartUpload (a few
milliseconds) or is thrown away with AbortMultipartUpload. Objects under 5 MiB (S3's
minimum part size, and an empty range cannot be copied at all) are copied with one
CopyObject at commit time instead, which is cheap at that size.

Permissions the credentials need: s3:GetObject, s3:PutObject, s3:DeleteObject,
s3:AbortMultipartUpload on both buckets' objects, and s3:ListBucket on both buckets.
Without ListBucket, S3 answers 403 rather than 404 for a missing key, so every "is it
already there?" check would fail as a StorageError instead of ObjectNotFound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import secrets
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from fileshare.storage.base import (
    PROBE_PREFIX,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
)
from fileshare.storage.encryption import Encryption
from fileshare.storage.s3_errors import SDK_ERRORS, describe, error_code, translate
from fileshare.storage.s3_presign import S3Presigning

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
#: S3 refuses parts under 5 MiB, but the last one.
MIN_PART_SIZE = 5 * MiB
#: S3 refuses parts over 5 GiB, and uploads of more than 10 000 parts.
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
#: Downloads are streamed in chunks of at most this size.
READ_CHUNK = 256 * 1024
_DEFAULT_TYPE = "application/octet-stream"


class S3Storage(S3Presigning):
    """Objects in S3 buckets. Use ``await S3Storage.create(...)`` (or construct, then
    ``await start()``), and ``await close()`` at the end."""

    def __init__(
        self,
        *,
        buckets: tuple[str, ...] = (),
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = 8 * MiB,
        parts_in_flight: int = 2,
        timeout: float = 60.0,
        max_pool_connections: int = 64,
        copy_part_size: int = 128 * MiB,
        copy_parts_in_flight: int = 4,
        conditional_writes: bool = True,
        encryption: Encryption | None = None,
    ) -> None:
        """``buckets`` are the ones ``ping`` checks. Without ``access_key`` and
        ``secret_key``, botocore's default credential chain applies (environment, web
        identity, instance profile...). ``conditional_writes``: the server honours
        ``If-None-Match: *`` on writes (AWS since 2024, SeaweedFS); if not, ``if_absent``
        falls back to a HEAD before the write, which is racy. ``encryption``: what every
        PutObject, CreateMultipartUpload and CopyObject asks for (``storage.encryption``)."""
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}")
        if not MIN_PART_SIZE <= copy_part_size <= MAX_PART_SIZE:
            raise ValueError(f"copy_part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}")
        if parts_in_flight < 1 or copy_parts_in_flight < 1 or max_pool_connections < 1:
            raise ValueError("parts_in_flight, copy_parts_in_flight, max_pool_connections >= 1")
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        self.buckets = buckets
        self.endpoint = endpoint
        self.region = region
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self.copy_part_size = copy_part_size
        self.copy_parts_in_flight = copy_parts_in_flight
        self.conditional_writes = conditional_writes
        self.encryption = encryption or Encryption()
        #: Spread into every request that creates an object.
        self._sse = self.encryption.s3_write_args()
        self.timeout = timeout
        self._access_key = access_key
        self._secret_key = secret_key
        self._max_pool_connections = max_pool_connections
        self._stack: AsyncExitStack | None = None
        self._client_: S3Client | None = None

    def __repr__(self) -> str:
        return f"S3Storage(endpoint={self.endpoint!r}, region={self.region!r})"

    @classmethod
    async def create(
        cls,
        *,
        buckets: tuple[str, ...] = (),
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = 8 * MiB,
        parts_in_flight: int = 2,
        timeout: float = 60.0,  # noqa: ASYNC109 (a client setting, not a deadline)
        max_pool_connections: int = 64,
        copy_part_size: int = 128 * MiB,
        copy_parts_in_flight: int = 4,
        conditional_writes: bool = True,
        encryption: Encryption | None = None,
    ) -> S3Storage:
        storage = cls(
            buckets=buckets,
            endpoint=endpoint,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
            part_size=part_size,
            parts_in_flight=parts_in_flight,
            timeout=timeout,
            max_pool_connections=max_pool_connections,
            copy_part_size=copy_part_size,
            copy_parts_in_flight=copy_parts_in_flight,
            conditional_writes=conditional_writes,
            encryption=encryption,
        )
        await storage.start()
        return storage

    async def start(self) -> None:
        if self._client_ is not None:
            return
        s3_options: dict[str, object] = {
            # Over plain http botocore would otherwise sha256 every part on the event
            # loop to sign it; the CRC32 checksum the server verifies (flexible
            # checksums) covers integrity, as botocore already does over https.
            "payload_signing_enabled": False,
        }
        if self.endpoint is not None:
            # S3-compatible servers (SeaweedFS, MinIO) want /bucket/key, not DNS names.
            s3_options["addressing_style"] = "path"
        config = AioConfig(
            region_name=self.region,
            signature_version="s3v4",
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=self.timeout,
            max_pool_connections=self._max_pool_connections,
            retries={"mode": "standard", "max_attempts": 3},
            s3=s3_options,
            # The endpoint is FILESHARE_S3_ENDPOINT (checked for TLS) or AWS, never one
            # botocore would find in AWS_ENDPOINT_URL* or ~/.aws/config on its own.
            ignore_configured_endpoint_urls=True,
        )
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=self.endpoint,
                    region_name=self.region,
                    aws_access_key_id=self._access_key,
                    aws_secret_access_key=self._secret_key,
                    config=config,
                )
            )
        except SDK_ERRORS as exc:
            await stack.aclose()
            raise StorageError(f"cannot create the S3 client: {type(exc).__name__}") from exc
        self._stack, self._client_ = stack, client

    async def close(self) -> None:
        stack, self._stack, self._client_ = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(*SDK_ERRORS):
                await stack.aclose()

    async def __aenter__(self) -> S3Storage:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def _client(self) -> S3Client:
        if self._client_ is None:
            raise StorageError("the S3 storage is not started")
        return self._client_

    # --- Storage ---------------------------------------------------------------------

    async def open_writer(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str = _DEFAULT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> S3Writer:
        return S3Writer(self, bucket, key, content_type=content_type, metadata=metadata or {})

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str = _DEFAULT_TYPE,
        metadata: dict[str, str] | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        metadata = metadata or {}
        what = f"put {bucket}/{key}"
        with translate(what):
            if if_absent and self.conditional_writes:
                # A retry of a PUT whose answer was lost may find our own object and
                # report ObjectExists: harmless for content-addressed keys.
                resp = await self._client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type,
                    Metadata=metadata,
                    IfNoneMatch="*",
                    **self._sse,
                )
            else:
                if if_absent:
                    # Fallback for servers without conditional writes: racy (two
                    # writers can both see "absent"), acceptable for content-addressed
                    # keys where both write the same bytes.
                    await self._raise_if_exists(bucket, key)
                resp = await self._client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type,
                    Metadata=metadata,
                    **self._sse,
                )
        return ObjectInfo(
            key=key,
            size=len(data),
            version=_etag(resp["ETag"]),
            content_type=content_type,
            metadata=dict(metadata),
        )

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        with translate(f"head {bucket}/{key}"):
            resp = await self._client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(
            key=key,
            size=resp["ContentLength"],
            version=_etag(resp["ETag"]),
            content_type=resp.get("ContentType") or _DEFAULT_TYPE,
            metadata=dict(resp.get("Metadata") or {}),
        )

    async def read(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        version: str | None = None,
    ) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise StorageError(f"invalid range {start}-{end}")
        what = f"read {bucket}/{key}"
        args: dict[str, str] = {"Bucket": bucket, "Key": key}
        if not (start == 0 and end is None):
            # No Range header otherwise: "bytes=0-" is unsatisfiable on an empty object.
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
        if version is not None:
            args["IfMatch"] = version
        with translate(what):
            resp = await self._client.get_object(**args)  # type: ignore[arg-type]
            if version is not None and resp.get("ETag") != version:
                # A store that ignores If-Match: refuse rather than stream another version.
                resp["Body"].close()
                raise StorageError(f"{what}: the object is not the version asked for")
        # ``async with`` closes the body (and releases or drops the connection) at the
        # end, on error and when the consumer stops early (aclose, cancellation).
        async with resp["Body"] as body:
            while True:
                with translate(what):
                    chunk = await body.read(READ_CHUNK)
                if not chunk:
                    return
                yield chunk

    async def begin_copy(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        size: int,
        content_type: str = _DEFAULT_TYPE,
        metadata: dict[str, str] | None = None,
        src_version: str | None = None,
    ) -> S3PendingCopy:
        if size < 0:
            raise StorageError(f"invalid size {size}")
        copy = S3PendingCopy(
            self,
            src_bucket,
            src_key,
            dst_bucket,
            dst_key,
            size=size,
            content_type=content_type,
            metadata=metadata or {},
            src_version=src_version,
        )
        if size >= MIN_PART_SIZE:
            await copy.start_parts()
        return copy

    async def delete(self, bucket: str, key: str) -> None:
        # S3 answers 204 for a missing key; a missing bucket is an error (NoSuchBucket).
        with translate(f"delete {bucket}/{key}"):
            await self._client.delete_object(Bucket=bucket, Key=key)

    async def list_keys(self, bucket: str, prefix: str = "") -> AsyncIterator[str]:
        async for page in self._pages("list_objects_v2", bucket, prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    async def _pages(self, operation: str, bucket: str, prefix: str) -> AsyncIterator[Any]:
        """The pages of a listing, each fetch's SDK errors made neutral."""
        paginator = self._client.get_paginator(operation)  # type: ignore[call-overload]
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix).__aiter__()
        while True:
            with translate(f"{operation} {bucket}/{prefix}"):
                try:
                    page = await pages.__anext__()
                except StopAsyncIteration:
                    return
            yield page

    async def list_stale(self, bucket: str, prefix: str, before: datetime) -> AsyncIterator[str]:
        async for page in self._pages("list_objects_v2", bucket, prefix):
            for item in page.get("Contents", []):
                if item["LastModified"] < before:
                    yield item["Key"]

    async def abort_stale_uploads(self, bucket: str, prefix: str, before: datetime) -> int:
        stale: list[tuple[str, str]] = []
        async for page in self._pages("list_multipart_uploads", bucket, prefix):
            stale += [
                (u["Key"], u["UploadId"])
                for u in page.get("Uploads", [])
                if u["Initiated"] < before
            ]
        for key, upload_id in stale:
            await self._abort_upload(bucket, key, upload_id)  # logs what it cannot abort
        return len(stale)

    async def ping(self) -> None:
        async def check(bucket: str) -> None:
            with translate(f"bucket {bucket}"):
                await self._client.head_bucket(Bucket=bucket)

        await asyncio.gather(*(check(b) for b in self.buckets))

    async def verify_encryption(self) -> str:
        """A probe object, written as uploads are and read back with HEAD, must come back
        encrypted as asked: a store that ignores the headers (some S3-compatible ones do),
        or a bucket without default encryption under ``default``, is refused at start
        rather than left holding PHI in the clear. Under ``default`` both buckets are
        probed (promoted copies take the permanent bucket's own default); otherwise the
        first (staging) one, where a second probe without the headers also tells whether
        the bucket refuses or encrypts what arrives unasked (the bucket policy and default
        encryption of ``k8s/iam``): reported, not enforced."""
        described = self.encryption.describe("s3")
        if not self.buckets or self.encryption.mode == "none":
            return described
        expected = self.encryption.s3_algorithm
        if expected is None:  # default: whatever each bucket applies, but something
            found = []
            for bucket in self.buckets:
                if (default := await self._probe(bucket, {})) is None:
                    raise StorageError(
                        f"bucket {bucket} keeps objects unencrypted: give it default "
                        "encryption (k8s/iam), or set FILESHARE_STORAGE_ENCRYPTION=sse-s3 "
                        "(or none, if the store encrypts below the S3 API)"
                    )
                found.append(f"{bucket} ({default['ServerSideEncryption']})")
            return f"{described}; verified on {', '.join(found)}"
        bucket = self.buckets[0]
        head = await self._probe(bucket, self._sse)
        got = (head or {}).get("ServerSideEncryption")
        if head is None or got != expected:
            raise StorageError(
                f"bucket {bucket}: asked for {expected} encryption, the store reports "
                f"{got or 'none'} (FILESHARE_STORAGE_ENCRYPTION)"
            )
        self._check_kms_key(bucket, head.get("SSEKMSKeyId", ""))
        try:
            unasked = await self._probe(bucket, {})
        except _WriteRefused:
            posture = "the bucket refuses unencrypted writes"
        else:
            if unasked is None:
                log.warning(
                    "storage.unencrypted_writes_accepted",
                    bucket=bucket,
                    detail="objects written without encryption headers stay unencrypted: "
                    "apply the bucket policy and default encryption of k8s/iam",
                )
                posture = "the bucket keeps unasked writes unencrypted (see k8s/iam)"
            else:
                posture = f"the bucket encrypts unasked writes ({unasked['ServerSideEncryption']})"
        return f"{described}; verified on {bucket}; {posture}"

    def _check_kms_key(self, bucket: str, kept: str) -> None:
        """HEAD names the key by its ARN; the setting may give the ARN or the key id. An
        alias (``alias/x`` or its ARN) cannot be compared without asking KMS: skipped."""
        key = self.encryption.kms_key
        if key is None or "alias/" in key:
            return
        key_id = key.rpartition("/")[2] if key.startswith("arn:") else key
        if kept.rpartition("/")[2] != key_id:
            raise StorageError(
                f"bucket {bucket}: objects are not encrypted with the configured KMS key "
                "(FILESHARE_STORAGE_KMS_KEY)"
            )

    async def _probe(self, bucket: str, sse: dict[str, str | bool]) -> dict[str, str] | None:
        """Write, HEAD and delete an empty object under a staging key of fileshare's own
        (where the IAM policy and the lifecycle rule already reach); the encryption HEAD
        reports, or None when it reports none. Raises ``_WriteRefused`` when the PUT itself
        is denied (a bucket policy refusing it), ``StorageError`` for anything else."""
        key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        what = f"encryption probe in {bucket}"
        try:
            await self._client.put_object(
                Bucket=bucket,
                Key=key,
                Body=b"",
                **sse,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            if error_code(exc) == "AccessDenied":
                raise _WriteRefused(f"{what}: {describe(exc)}") from None
            raise StorageError(f"{what}: {describe(exc)}") from None
        except SDK_ERRORS as exc:
            raise StorageError(f"{what}: {describe(exc)}") from None
        with translate(what):
            try:
                head = await self._client.head_object(Bucket=bucket, Key=key)
            finally:
                await self._client.delete_object(Bucket=bucket, Key=key)
        # (The stubs call the member required; a store that did not encrypt leaves it out.)
        reported: dict[str, object] = dict(head)
        if not reported.get("ServerSideEncryption"):
            return None
        kept = ("ServerSideEncryption", "SSEKMSKeyId")
        return {k: str(v) for k, v in reported.items() if k in kept}

    # --- helpers ---------------------------------------------------------------------

    async def _raise_if_exists(self, bucket: str, key: str) -> None:
        try:
            await self.head(bucket, key)
        except ObjectNotFound:
            return
        raise ObjectExists(f"{bucket}/{key} already exists")

    async def _abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort a multipart upload; never raises (the bucket's lifecycle rule for
        incomplete uploads is the safety net), but says so in the log."""
        try:
            await self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if error_code(exc) == "NoSuchUpload":
                return  # already aborted or completed
            log.error("storage.abort_failed", bucket=bucket, key=key, error=describe(exc))
        except (*SDK_ERRORS, StorageError) as exc:
            log.error("storage.abort_failed", bucket=bucket, key=key, error=describe(exc))


class _WriteRefused(StorageError):
    """The store denied a write outright (AccessDenied)."""


class S3Writer:
    """A streaming write: PutObject for small objects, multipart beyond one part."""

    def __init__(
        self,
        storage: S3Storage,
        bucket: str,
        key: str,
        *,
        content_type: str,
        metadata: dict[str, str],
    ) -> None:
        self._s = storage
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._metadata = metadata
        self._what = f"write {bucket}/{key}"
        self._buf = _PartBuffer()
        self._size = 0
        self._create: asyncio.Task[str] | None = None
        self._in_flight: deque[asyncio.Task[CompletedPartTypeDef]] = deque()
        self._parts: list[CompletedPartTypeDef] = []
        self._next_part = 1
        self._state: Literal["open", "sealed", "failed", "committed", "aborted"] = "open"

    async def write(self, chunk: bytes) -> None:
        self._check_open()
        try:
            self._buf.append(chunk)
            self._size += len(chunk)
            part_size = self._s.part_size
            while self._buf.size >= part_size:
                await self._send(self._buf.take(part_size))
        except BaseException:
            # Including cancellation: a part may be lost, so only abort is left.
            self._state = "failed"
            raise

    def buffered(self) -> bytes | None:
        if self._create is not None or self._state != "open":
            return None
        return self._buf.peek()

    async def seal(self) -> None:
        self._check_open()
        try:
            # Even a body under one part goes up as the (only, last) part of a multipart
            # upload: then nothing is left to send after the verdict but the completion.
            # An empty one stays a PutObject (commit); a part of nothing is not a part.
            # (A body ending on a part boundary has nothing left: no empty part is sent.)
            if self._buf.size:
                await self._send(self._buf.take(self._buf.size))
            await self._drain()
        except BaseException:
            self._state = "failed"
            raise
        self._state = "sealed"

    async def commit(self) -> ObjectInfo:
        self._check_open("open", "sealed")
        try:
            if self._create is None:
                # Everything is still in memory: one PutObject.
                with translate(self._what):
                    resp = await self._s._client.put_object(
                        Bucket=self._bucket,
                        Key=self._key,
                        Body=self._buf.peek(),
                        ContentType=self._content_type,
                        Metadata=self._metadata,
                        **self._s._sse,
                    )
                etag = _etag(resp["ETag"])
            else:
                if self._buf.size:
                    await self._send(self._buf.take(self._buf.size))
                await self._drain()
                upload_id = await self._create
                with translate(self._what):
                    done = await self._s._client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=self._key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
                etag = _etag(done["ETag"])
        except BaseException:
            self._state = "failed"
            raise
        self._state = "committed"
        self._buf.clear()
        return ObjectInfo(
            key=self._key,
            size=self._size,
            version=etag,
            content_type=self._content_type,
            metadata=dict(self._metadata),
        )

    async def abort(self) -> None:
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        self._buf.clear()
        await _cancel_and_reap(self._in_flight)
        self._in_flight.clear()
        if self._create is None:
            return
        # The creation was shielded from cancelled writes: wait for it to learn the id.
        await asyncio.wait([self._create])
        if self._create.cancelled() or self._create.exception() is not None:
            return  # no upload was created
        await self._s._abort_upload(self._bucket, self._key, self._create.result())

    # --- helpers ---------------------------------------------------------------------

    def _check_open(self, *allowed: str) -> None:
        if self._state not in (allowed or ("open",)):
            raise StorageError(f"{self._what}: the writer is {self._state}")

    async def _drain(self) -> None:
        while self._in_flight:
            # Await in order; on failure the rest are cancelled by abort.
            self._parts.append(await self._in_flight[0])
            self._in_flight.popleft()

    async def _send(self, part: list[bytes | memoryview]) -> None:
        """Start uploading ``part``, after waiting for room among the parts in flight."""
        if self._create is None:
            self._create = asyncio.create_task(self._create_upload())
        # Shielded: if this write is cancelled, abort still learns the upload id.
        upload_id = await asyncio.shield(self._create)
        for task in self._in_flight:  # fail early if a part already failed
            if task.done() and not task.cancelled() and task.exception() is not None:
                await task
        while len(self._in_flight) >= self._s.parts_in_flight:
            await asyncio.wait([self._in_flight[0]])
            self._parts.append(self._in_flight[0].result())
            self._in_flight.popleft()
        number = self._next_part
        if number > MAX_PARTS:
            raise StorageError(f"{self._what}: more than {MAX_PARTS} parts")
        self._next_part += 1
        self._in_flight.append(asyncio.create_task(self._upload_part(upload_id, number, part)))

    async def _create_upload(self) -> str:
        with translate(self._what):
            resp = await self._s._client.create_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                ContentType=self._content_type,
                Metadata=self._metadata,
                # Each part carries a CRC32 the server checks, and the completed upload
                # records them: end-to-end integrity without signing payloads.
                ChecksumAlgorithm="CRC32",
                **self._s._sse,
            )
        return resp["UploadId"]

    async def _upload_part(
        self, upload_id: str, number: int, pieces: list[bytes | memoryview]
    ) -> CompletedPartTypeDef:
        body, crc32 = await asyncio.to_thread(_assemble, pieces)
        del pieces  # the part is held once, by the body
        with translate(f"{self._what} (part {number})"):
            resp = await self._s._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm="CRC32",
                ChecksumCRC32=crc32,
            )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": resp["ETag"]}
        if resp.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return part


class S3PendingCopy:
    """A server-side copy into an invisible target (see the module docstring)."""

    def __init__(
        self,
        storage: S3Storage,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        size: int,
        content_type: str,
        metadata: dict[str, str],
        src_version: str | None = None,
    ) -> None:
        self._s = storage
        # CopySourceIfMatch: only the staged version that was scanned may be copied.
        self._source_condition: dict[str, str] = (
            {"CopySourceIfMatch": src_version} if src_version else {}
        )
        # If-None-Match: a promotion never replaces an existing object.
        self._target_condition: dict[str, str] = (
            {"IfNoneMatch": "*"} if storage.conditional_writes else {}
        )
        self._src_bucket = src_bucket
        self._src_key = src_key
        self._bucket = dst_bucket
        self._key = dst_key
        self._size = size
        self._content_type = content_type
        self._metadata = metadata
        self._what = f"copy {src_bucket}/{src_key} to {dst_bucket}/{dst_key}"
        self._upload_id: str | None = None
        self._tasks: list[asyncio.Task[CompletedPartTypeDef]] = []
        self._state: Literal["open", "failed", "committed", "aborted"] = "open"

    async def start_parts(self) -> None:
        """Create the multipart upload and start copying every part in the background."""
        create = asyncio.ensure_future(self._create())
        try:
            # Shielded: cancelled while the store creates it (the client left), the
            # upload may exist all the same, and nobody else would ever learn its id.
            self._upload_id = await asyncio.shield(create)
        except BaseException:
            await asyncio.shield(self._abort_once_created(create))
            raise
        limit = asyncio.Semaphore(self._s.copy_parts_in_flight)
        for number, (first, last) in enumerate(_copy_ranges(self._size, self._s.copy_part_size), 1):
            self._tasks.append(asyncio.create_task(self._copy_part(limit, number, first, last)))

    async def _create(self) -> str:
        with translate(self._what):
            resp = await self._s._client.create_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                ContentType=self._content_type,
                Metadata=self._metadata,
                **self._s._sse,
            )
        return resp["UploadId"]

    async def _abort_once_created(self, create: asyncio.Future[str]) -> None:
        self._state = "aborted"
        try:
            upload_id = await create
        except Exception:  # nothing was created (or its creation failed): nothing to abort
            return
        await self._s._abort_upload(self._bucket, self._key, upload_id)

    async def commit(self) -> ObjectInfo:
        if self._state != "open":
            raise StorageError(f"{self._what}: the copy is {self._state}")
        client = self._s._client
        try:
            if self._upload_id is None:
                # Under 5 MiB: one CopyObject, cheap at this size.
                if not self._s.conditional_writes:
                    await self._s._raise_if_exists(self._bucket, self._key)
                with translate(self._what):
                    resp = await client.copy_object(
                        Bucket=self._bucket,
                        Key=self._key,
                        CopySource={"Bucket": self._src_bucket, "Key": self._src_key},
                        MetadataDirective="REPLACE",
                        ContentType=self._content_type,
                        Metadata=self._metadata,
                        **self._target_condition,  # type: ignore[arg-type]
                        **self._source_condition,  # type: ignore[arg-type]
                        **self._s._sse,
                    )
                etag = _etag(resp["CopyObjectResult"].get("ETag", ""))
            else:
                parts = [await task for task in self._tasks]
                if not self._s.conditional_writes:
                    # Racy fallback, see S3Storage.put.
                    await self._s._raise_if_exists(self._bucket, self._key)
                with translate(self._what):
                    done = await client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                        **self._target_condition,  # type: ignore[arg-type]
                    )
                etag = _etag(done["ETag"])
        except BaseException:
            # The upload cannot be completed any more (a 412 leaves it open): drop it.
            self._state = "failed"
            await asyncio.shield(self.abort())
            raise
        self._state = "committed"
        return ObjectInfo(
            key=self._key,
            size=self._size,
            version=etag,
            content_type=self._content_type,
            metadata=dict(self._metadata),
        )

    async def abort(self) -> None:
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        await _cancel_and_reap(self._tasks)
        self._tasks = []
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            await self._s._abort_upload(self._bucket, self._key, upload_id)

    async def _copy_part(
        self, limit: asyncio.Semaphore, number: int, first: int, last: int
    ) -> CompletedPartTypeDef:
        assert self._upload_id is not None
        async with limit:
            try:
                with translate(f"{self._what} (part {number})"):
                    resp = await self._s._client.upload_part_copy(
                        Bucket=self._bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self._src_bucket, "Key": self._src_key},
                        CopySourceRange=f"bytes={first}-{last}",
                        **self._source_condition,  # type: ignore[arg-type]
                    )
            except ObjectExists:
                # A part has no target to exist: its only precondition is the source's.
                raise StorageError(
                    f"{self._what}: the source is no longer the version written"
                ) from None
        return {"PartNumber": number, "ETag": resp["CopyPartResult"].get("ETag", "")}


class _PartBuffer:
    """Written chunks, kept by reference until a part is full, then joined: one copy
    per byte (a growing bytearray would copy twice and shift the remainder)."""

    def __init__(self) -> None:
        self._pieces: deque[bytes | memoryview] = deque()
        self.size = 0

    def append(self, chunk: bytes) -> None:
        if chunk:  # bytes are immutable: keeping a reference is safe
            self._pieces.append(chunk)
            self.size += len(chunk)

    def take(self, n: int) -> list[bytes | memoryview]:
        """Remove and return the first ``n`` bytes (``n <= size``), still by reference
        (``_assemble`` joins them off the event loop)."""
        out: list[bytes | memoryview] = []
        need = n
        while need:
            piece = self._pieces[0]
            if len(piece) <= need:
                out.append(self._pieces.popleft())
                need -= len(piece)
            else:
                view = memoryview(piece)
                out.append(view[:need])
                self._pieces[0] = view[need:]
                need = 0
        self.size -= n
        return out

    def peek(self) -> bytes:
        return b"".join(self._pieces)

    def clear(self) -> None:
        self._pieces.clear()
        self.size = 0


def _assemble(pieces: list[bytes | memoryview]) -> tuple[io.BytesIO, str]:
    """One part's body and its CRC32 (base64), in a worker thread: given the checksum,
    botocore does not compute it on the event loop, and zlib releases the GIL.

    A BytesIO we fill ourselves, not ``bytes``: botocore would wrap bytes in a BytesIO
    sharing their buffer, and aiohttp's ``getbuffer()`` on that forces a private copy,
    holding every part in flight twice."""
    out = io.BytesIO()
    crc = 0
    for piece in pieces:
        out.write(piece)
        crc = zlib.crc32(piece, crc)
    out.seek(0)
    return out, base64.b64encode(crc.to_bytes(4, "big")).decode()


async def _cancel_and_reap(tasks: Iterable[asyncio.Task[CompletedPartTypeDef]]) -> None:
    """Cancel part uploads and wait for them; their outcomes are retrieved so that a
    failed part does not also log "exception never retrieved"."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()


def _copy_ranges(size: int, part_size: int) -> Iterator[tuple[int, int]]:
    """Inclusive byte ranges covering ``size`` bytes, within S3's part limits."""
    part_size = min(max(part_size, math.ceil(size / MAX_PARTS), MIN_PART_SIZE), MAX_PART_SIZE)
    for first in range(0, size, part_size):
        yield first, min(first + part_size, size) - 1


def _etag(value: str) -> str:
    """ETags in their quoted HTTP form. SeaweedFS (4.48) leaves the quotes out of
    CopyObjectResult, while its HEAD answers (and AWS everywhere) have them."""
    if value and not value.startswith(('"', "W/")):
        return f'"{value}"'
    return value
