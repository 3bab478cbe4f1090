"""An asyncio client for clamd's INSTREAM protocol.

Framing: ``zINSTREAM\\0``, then chunks each prefixed by a 4-byte big-endian length, then a
zero-length chunk; clamd answers one ``\\0``-terminated line. clamd spools the stream and
scans only after the terminator, so the verdict arrives about size / scan speed after the
last byte. When a stream passes StreamMaxLength clamd answers *early* and closes: the reply
is read concurrently with sending, or it would be lost as a broken pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

import structlog

from fileshare.config import ClamdAddress
from fileshare.scan.base import ScanError, ScanSizeExceeded, Verdict

log = structlog.get_logger(__name__)

_TERMINATOR = struct.pack(">I", 0)
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded"
#: clamd reads a frame of at most its own buffer; large frames are fine, but keeping them
#: around 1 MiB bounds what sits in the socket buffer per scan.
MAX_FRAME = 1024 * 1024


def parse_reply(raw: bytes) -> Verdict:
    """Turn one clamd INSTREAM reply into a verdict; anything unexpected is an error."""
    text = raw.rstrip(b"\0\n").decode("utf-8", "replace").strip()
    if text.startswith("stream: "):
        text = text[len("stream: ") :]
    if text == "OK":
        return Verdict(clean=True)
    if text.endswith(" FOUND"):
        signature = text[: -len(" FOUND")].strip()
        if signature:
            return Verdict(clean=False, signature=signature)
    if _SIZE_LIMIT_REPLY in text:
        raise ScanSizeExceeded(text)
    if text.endswith("ERROR"):
        raise ScanError(f"clamd error: {text}")
    raise ScanError(f"unexpected clamd reply: {text[:200]!r}")


class ClamdScanner:
    """Scans through one clamd; the number of concurrent streams is bounded so that
    uploads queue here rather than in clamd's own (MaxThreads) queue."""

    def __init__(
        self,
        address: ClamdAddress,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        verdict_timeout: float = 120.0,
        max_scans: int = 8,
    ) -> None:
        self._address = address
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._verdict_timeout = verdict_timeout
        self._slots = asyncio.Semaphore(max_scans)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._address.path is not None:
                    return await asyncio.open_unix_connection(self._address.path)
                return await asyncio.open_connection(self._address.host, self._address.port)
        except (OSError, TimeoutError) as exc:
            raise ScanError(f"cannot connect to clamd at {self._address}: {exc!r}") from None

    async def _command(self, command: bytes) -> str:
        reader, writer = await self._connect()
        try:
            async with asyncio.timeout(self._connect_timeout):
                writer.write(b"z" + command + b"\0")
                await writer.drain()
                raw = await reader.readuntil(b"\0")
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise ScanError(f"clamd {command.decode()} failed: {exc!r}") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return raw.rstrip(b"\0").decode("utf-8", "replace").strip()

    async def ping(self) -> None:
        reply = await self._command(b"PING")
        if reply != "PONG":
            raise ScanError(f"clamd PING answered {reply[:100]!r}")

    async def version(self) -> str:
        return await self._command(b"VERSION")

    async def open(self) -> ClamdSession:
        await self._slots.acquire()
        try:
            reader, writer = await self._connect()
            try:
                writer.write(b"zINSTREAM\0")
            except OSError as exc:
                writer.close()
                raise ScanError(f"clamd INSTREAM failed: {exc!r}") from None
        except BaseException:
            self._slots.release()
            raise
        return ClamdSession(
            reader,
            writer,
            release=self._slots.release,
            idle_timeout=self._idle_timeout,
            verdict_timeout=self._verdict_timeout,
        )


class ClamdSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        release: Callable[[], None],
        idle_timeout: float,
        verdict_timeout: float,
    ) -> None:
        self._writer = writer
        self._release = release
        self._idle_timeout = idle_timeout
        self._verdict_timeout = verdict_timeout
        self._closed = False
        # Reading starts now: an early answer (size limit) must not be lost.
        self._reply: asyncio.Task[bytes] = asyncio.create_task(self._read_reply(reader))

    @staticmethod
    async def _read_reply(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                return exc.partial
            raise ScanError("clamd closed the connection without a verdict") from None
        except OSError as exc:
            raise ScanError(f"clamd connection failed: {exc!r}") from None

    def _early_reply_error(self) -> ScanError:
        """The reply task finished before the stream did: say why."""
        try:
            raw = self._reply.result()
        except ScanError as exc:
            return exc
        except BaseException as exc:  # cancelled or unexpected
            return ScanError(f"clamd reply failed: {exc!r}")
        try:
            verdict = parse_reply(raw)
        except ScanError as exc:
            return exc
        return ScanError(f"clamd answered before the end of the stream: {verdict}")

    async def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        for start in range(0, len(view), MAX_FRAME):
            if self._reply.done():
                raise self._early_reply_error()
            frame = view[start : start + MAX_FRAME]
            try:
                self._writer.writelines((struct.pack(">I", len(frame)), frame))
                async with asyncio.timeout(self._idle_timeout):
                    await self._writer.drain()
            except TimeoutError:
                raise ScanError("clamd stopped reading the stream (idle timeout)") from None
            except OSError as exc:
                # A broken pipe usually means clamd answered and closed: prefer its words.
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(self._reply), 1.0)
                if self._reply.done():
                    raise self._early_reply_error() from None
                raise ScanError(f"sending to clamd failed: {exc!r}") from None

    async def verdict(self) -> Verdict:
        try:
            if self._reply.done():
                raise self._early_reply_error()
            try:
                self._writer.write(_TERMINATOR)
                async with asyncio.timeout(self._idle_timeout):
                    await self._writer.drain()
            except (OSError, TimeoutError):
                pass  # the reply (or its absence) tells what happened
            try:
                async with asyncio.timeout(self._verdict_timeout):
                    raw = await asyncio.shield(self._reply)
            except TimeoutError:
                raise ScanError("clamd gave no verdict in time") from None
            return parse_reply(raw)
        finally:
            await self.cancel()

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reply.cancel()
        self._writer.close()
        # wait() never raises, so a cancellation of our own caller is not swallowed here.
        await asyncio.wait([self._reply])
        if not self._reply.cancelled():
            self._reply.exception()  # retrieved: an early error was already reported
        self._release()
