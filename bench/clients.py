"""The clients the benchmark drives: S3 directly (aiobotocore), the GCS emulator directly
(aiohttp), clamd directly (fileshare's own INSTREAM client), and fileshare over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.exceptions import ClientError

from fileshare.scan.clamd import ClamdScanner, ClamdSession

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

MiB = 1024 * 1024
#: What the bench hands the socket at a time when it sends a body from memory.
SEND_SLICE = 256 * 1024
#: fileshare regroups socket chunks to 1 MiB before fanning them out; clamd frames are
#: at most 1 MiB: the direct clamd client feeds the same size.
SCAN_CHUNK = 1 * MiB
OCTET_STREAM = "application/octet-stream"


class MemoryBody(Payload):
    """A request body sent from memory in ``SEND_SLICE`` pieces, with a Content-Length:
    nothing is copied or joined, and the writer's drain applies back-pressure."""

    def __init__(self, data: bytes | memoryview, content_type: str = OCTET_STREAM) -> None:
        view = memoryview(data).cast("B")
        super().__init__(view, content_type=content_type)
        self._view = view
        self._size = view.nbytes

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._view.tobytes().decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        end = self._view.nbytes if content_length is None else content_length
        for start in range(0, end, SEND_SLICE):
            await writer.write(self._view[start : min(start + SEND_SLICE, end)])


def chunks(data: bytes, size: int) -> Iterable[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size]


# ------------------------------------------------------------------------------- S3


class S3Direct:
    """Direct S3 calls, with fileshare's part size and parts in flight."""

    def __init__(self, client: S3Client, *, part_size: int, parts_in_flight: int) -> None:
        self.client = client
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight

    async def multipart(self, bucket: str, key: str, data: bytes) -> None:
        """CreateMultipartUpload, UploadPart (CRC32, ``parts_in_flight`` at a time),
        CompleteMultipartUpload: what fileshare's S3 writer does for its staging copy."""
        c = self.client
        created = await c.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=OCTET_STREAM, ChecksumAlgorithm="CRC32"
        )
        upload_id = created["UploadId"]
        limit = asyncio.Semaphore(self.parts_in_flight)

        async def part(number: int, first: int) -> CompletedPartTypeDef:
            async with limit:
                resp = await c.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[first : first + self.part_size],
                    ChecksumAlgorithm="CRC32",
                )
            done: CompletedPartTypeDef = {"PartNumber": number, "ETag": resp["ETag"]}
            if resp.get("ChecksumCRC32"):
                done["ChecksumCRC32"] = resp["ChecksumCRC32"]
            return done

        try:
            offsets = range(0, max(len(data), 1), self.part_size)
            parts = await asyncio.gather(*(part(n, o) for n, o in enumerate(offsets, 1)))
            await c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            await asyncio.shield(
                c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            )
            raise

    def writer(self, bucket: str, key: str) -> PartWriter:
        return PartWriter(self, bucket, key)

    async def put(self, bucket: str, key: str, data: bytes) -> None:
        await self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=OCTET_STREAM)

    async def exists(self, bucket: str, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def read(self, bucket: str, key: str, size: int) -> AsyncIterator[bytes]:
        """The object's bytes, regrouped to about ``size`` bytes per chunk."""
        resp = await self.client.get_object(Bucket=bucket, Key=key)
        pending = bytearray()
        async with resp["Body"] as body:
            while chunk := await body.read(size):
                pending += chunk
                if len(pending) >= size:
                    yield bytes(pending)
                    pending.clear()
        if pending:
            yield bytes(pending)

    async def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> None:
        await self.client.copy_object(
            Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key}
        )

    async def delete(self, bucket: str, key: str) -> None:
        await self.client.delete_object(Bucket=bucket, Key=key)


class PartWriter:
    """An incremental multipart upload: ``write`` chunks as they come, parts of
    ``part_size`` go up with at most ``parts_in_flight`` at a time (``write`` waits
    for room: back-pressure, as in fileshare's S3 writer)."""

    def __init__(self, direct: S3Direct, bucket: str, key: str) -> None:
        self.d = direct
        self.bucket = bucket
        self.key = key
        self.upload_id = ""
        self.pending = bytearray()
        self.number = 0
        self.in_flight: list[asyncio.Task[CompletedPartTypeDef]] = []
        self.parts: list[CompletedPartTypeDef] = []

    async def start(self) -> None:
        created = await self.d.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key, ContentType=OCTET_STREAM, ChecksumAlgorithm="CRC32"
        )
        self.upload_id = created["UploadId"]

    async def _part(self, number: int, body: bytes) -> CompletedPartTypeDef:
        resp = await self.d.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="CRC32",
        )
        done: CompletedPartTypeDef = {"PartNumber": number, "ETag": resp["ETag"]}
        if resp.get("ChecksumCRC32"):
            done["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return done

    async def _send(self, body: bytes) -> None:
        while len(self.in_flight) >= self.d.parts_in_flight:
            self.parts.append(await self.in_flight.pop(0))
        self.number += 1
        self.in_flight.append(asyncio.create_task(self._part(self.number, body)))

    async def write(self, chunk: bytes) -> None:
        self.pending += chunk
        while len(self.pending) >= self.d.part_size:
            body = bytes(self.pending[: self.d.part_size])
            del self.pending[: self.d.part_size]
            await self._send(body)

    async def finish(self) -> None:
        if self.pending or not self.number:
            await self._send(bytes(self.pending))
            self.pending.clear()
        while self.in_flight:
            self.parts.append(await self.in_flight.pop(0))
        await self.d.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    async def abort(self) -> None:
        for task in self.in_flight:
            task.cancel()
        if self.in_flight:
            await asyncio.wait(self.in_flight)
        if self.upload_id:
            await self.d.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )


# ------------------------------------------------------------------------------ GCS


class GcsDirect:
    """Direct uploads to a GCS emulator over the JSON API (anonymous)."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: str, *, part_size: int) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self.part_size = part_size

    def _upload_url(self, bucket: str) -> str:
        return f"{self.endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o"

    async def simple(self, bucket: str, key: str, data: bytes) -> None:
        """One request: ``uploadType=media``."""
        params = {"uploadType": "media", "name": key}
        async with self.http.post(
            self._upload_url(bucket), params=params, data=MemoryBody(data)
        ) as resp:
            await _expect(resp, 200)

    async def resumable(self, bucket: str, key: str, data: bytes) -> None:
        """A resumable session, then ``part_size`` chunks one after the other (as
        fileshare's GCS writer sends them)."""
        resource = json.dumps({"name": key, "contentType": OCTET_STREAM}).encode()
        async with self.http.post(
            self._upload_url(bucket),
            params={"uploadType": "resumable"},
            data=resource,
            headers={
                "Content-Type": "application/json; charset=UTF-8",
                "X-Upload-Content-Type": OCTET_STREAM,
            },
        ) as resp:
            await _expect(resp, 200)
            session = resp.headers["Location"]
        total = len(data)
        for start in range(0, total, self.part_size):
            end = min(start + self.part_size, total)
            last = end == total
            headers = {"Content-Range": f"bytes {start}-{end - 1}/{total if last else '*'}"}
            async with self.http.put(
                session, data=MemoryBody(memoryview(data)[start:end]), headers=headers
            ) as resp:
                await _expect(resp, *((200, 201) if last else (308,)))

    async def delete(self, bucket: str, key: str) -> None:
        url = f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}"
        async with self.http.delete(url) as resp:
            await _expect(resp, 200, 204, 404)


async def _expect(resp: aiohttp.ClientResponse, *statuses: int) -> None:
    if resp.status not in statuses:
        body = await resp.read()
        raise RuntimeError(f"{resp.method} {resp.url.path}: HTTP {resp.status} {body[:300]!r}")
    await resp.read()


# ---------------------------------------------------------------------------- clamd


async def scan(scanner: ClamdScanner, data: bytes) -> tuple[float, float]:
    """INSTREAM ``data`` in 1 MiB frames; returns (seconds to the last byte sent,
    seconds to the verdict). Raises unless the verdict is clean."""
    started = time.perf_counter()
    session = await scanner.open()
    try:
        for chunk in chunks(data, SCAN_CHUNK):
            await session.feed(chunk.tobytes())
        sent = time.perf_counter() - started
        verdict = await session.verdict()
    finally:
        await session.cancel()
    if not verdict.clean:
        raise RuntimeError(f"clamd found {verdict.signature} in random bytes")
    return sent, time.perf_counter() - started


async def scan_stream(scanner: ClamdScanner, stream: AsyncIterator[bytes]) -> None:
    session: ClamdSession = await scanner.open()
    try:
        async for chunk in stream:
            await session.feed(chunk)
        verdict = await session.verdict()
    finally:
        await session.cancel()
    if not verdict.clean:
        raise RuntimeError(f"clamd found {verdict.signature} in random bytes")


async def lockstep(writer: PartWriter, scanner: ClamdScanner, data: bytes) -> float:
    """fileshare's data flow without fileshare: each 1 MiB chunk goes to the S3 part
    writer and to clamd before the next one is taken; then the upload is completed while
    the verdict is awaited. Returns the seconds to the last byte."""
    started = time.perf_counter()
    await writer.start()
    session = await scanner.open()
    try:
        for chunk in chunks(data, SCAN_CHUNK):
            piece = chunk.tobytes()
            await asyncio.gather(writer.write(piece), session.feed(piece))
        sent = time.perf_counter() - started
        _, verdict = await asyncio.gather(writer.finish(), session.verdict())
    except BaseException:
        await asyncio.shield(writer.abort())
        raise
    finally:
        await session.cancel()
    if not verdict.clean:
        raise RuntimeError(f"clamd found {verdict.signature} in random bytes")
    return sent


# ------------------------------------------------------------------------ fileshare

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


class FileshareClient:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, api_key: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def upload(self, data: bytes, *, sha256: bytes | None = None) -> tuple[int, Any]:
        """POST /v1/files with the raw body; returns (status, JSON answer)."""
        headers = dict(self.headers)
        if sha256 is not None:
            headers["Content-Digest"] = f"sha-256=:{base64.b64encode(sha256).decode()}:"
        async with self.http.post(
            f"{self.base_url}/v1/files", data=MemoryBody(data), headers=headers
        ) as resp:
            body = await resp.read()
            if resp.status not in (200, 201):
                raise RuntimeError(f"fileshare upload: HTTP {resp.status} {body[:500]!r}")
            return resp.status, json.loads(body)

    async def delete(self, file_id: str) -> None:
        """DELETE /v1/files/{id}: the record, and its bytes once nothing uses them."""
        async with self.http.delete(
            f"{self.base_url}/v1/files/{file_id}", headers=self.headers
        ) as resp:
            if resp.status not in (204, 404):
                raise RuntimeError(f"fileshare delete: HTTP {resp.status}")

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed ``name{labels}``."""
        async with self.http.get(f"{self.base_url}/metrics") as resp:
            text = await resp.text()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = _SAMPLE.match(line.strip())
            if m:
                found[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return found


def stage_key(kind: str, stage: str) -> str:
    return f'fileshare_upload_stage_duration_seconds_{kind}{{stage="{stage}"}}'


def metric_delta(
    before: dict[str, float], after: dict[str, float], keys: Iterable[str]
) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 4) for k in keys}


async def bounded(n: int, concurrency: int, one: Callable[[int], Any]) -> float:
    """Run ``one(i)`` for i in 0..n-1 with ``concurrency`` workers; wall seconds."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(i)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return time.perf_counter() - started
