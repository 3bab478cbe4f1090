"""An asyncio client for clamd's INSTREAM protocol.

Framing: ``zINSTREAM\\0``, then chunks each prefixed by a 4-byte big-endian length, then a
zero-length chunk; clamd answers one ``\\0``-terminated line. clamd spools the stream and
scans only after the terminator, so the verdict arrives about size / scan speed after the
last byte.

When a stream passes StreamMaxLength clamd answers *early* and closes, and our next send
fails with a broken pipe. The reply is read by a task of its own from the start, on a
raw non-blocking socket rather than asyncio streams: a stream transport tears the whole
connection down on a failed write, losing a reply still waiting in the receive buffer,
whereas a raw socket can still be read after its send side broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable

import structlog

from fileshare.config import ClamdAddress
from fileshare.scan.base import ScanError, ScannerBusy, ScanSizeExceeded, Verdict

log = structlog.get_logger(__name__)

_TERMINATOR = struct.pack(">I", 0)
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded"
#: Frames of at most 1 MiB bound what sits in the socket per scan.
MAX_FRAME = 1024 * 1024
#: A reply is one short line; anything longer is not clamd.
MAX_REPLY = 64 * 1024
#: How long a VERSION answer is taken as the signatures verdicts are made with.
PROVENANCE_TTL = 30.0


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


class ClamdUnreachable(ScanError):
    """No connection to clamd could be made; ``reason`` says why in a few words
    (``connection refused``, ``no such file or directory``...)."""

    def __init__(self, address: ClamdAddress, reason: str) -> None:
        super().__init__(f"cannot connect to clamd at {address}: {reason}")
        self.address = address
        self.reason = reason


def _reason(exc: BaseException, timeout: float) -> str:
    """A failed socket operation in words, for messages a person reads (not a repr)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror or exc}"
    if isinstance(exc, OSError) and (exc.errno or exc.strerror):
        # asyncio's own strerror ("Connect call failed ('127.0.0.1', 1)") hides the errno's
        text = os.strerror(exc.errno) if exc.errno else str(exc.strerror)
        return text[:1].lower() + text[1:]
    if isinstance(exc, IndexError):
        return "the host name has no address"
    return repr(exc)


async def _read_reply(sock: socket.socket) -> bytes:
    """Read up to the ``\\0`` that ends a reply. Data already received is returned even
    if the connection then breaks; an empty read is a ScanError."""
    loop = asyncio.get_running_loop()
    reply = bytearray()
    while b"\0" not in reply and len(reply) < MAX_REPLY:
        try:
            data = await loop.sock_recv(sock, 4096)
        except OSError as exc:
            if reply:
                break
            raise ScanError(f"clamd connection failed: {exc!r}") from None
        if not data:
            break
        reply += data
    if not reply:
        raise ScanError("clamd closed the connection without a verdict")
    return bytes(reply.split(b"\0", 1)[0])


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
        self._provenance: tuple[float, str] | None = None
        self._provenance_lock = asyncio.Lock()

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._address.path is not None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, self._address.path)
                    return sock
                infos = await loop.getaddrinfo(
                    self._address.host, self._address.port, type=socket.SOCK_STREAM
                )
                family, type_, proto, _name, addr = infos[0]
                sock = socket.socket(family, type_, proto)
                sock.setblocking(False)
                await loop.sock_connect(sock, addr)
                return sock
        except (OSError, TimeoutError, IndexError) as exc:
            if sock is not None:
                sock.close()
            raise ClamdUnreachable(self._address, _reason(exc, self._connect_timeout)) from None

    async def _command(self, command: bytes) -> str:
        sock = await self._connect()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.get_running_loop().sock_sendall(sock, b"z" + command + b"\0")
                raw = await _read_reply(sock)
        except (OSError, TimeoutError) as exc:
            reason = _reason(exc, self._connect_timeout)
            raise ScanError(f"clamd {command.decode()} failed: {reason}") from None
        finally:
            sock.close()
        return raw.decode("utf-8", "replace").strip()

    async def ping(self) -> None:
        reply = await self._command(b"PING")
        if reply != "PONG":
            raise ScanError(f"clamd PING answered {reply[:100]!r}")

    async def version(self) -> str:
        return await self._command(b"VERSION")

    async def provenance(self) -> str | None:
        # One VERSION round trip per upload would cost more than the index write it
        # annotates; a signature update is seen within PROVENANCE_TTL.
        async with self._provenance_lock:  # one VERSION at a time, whoever waits for it
            now = time.monotonic()
            if self._provenance is None or now - self._provenance[0] > PROVENANCE_TTL:
                try:
                    self._provenance = (now, await self.version())
                except ScanError:
                    return None if self._provenance is None else self._provenance[1]
            return self._provenance[1]

    async def open(self) -> ClamdSession:
        # A slot is held for at most one transfer plus one verdict; waiting longer than a
        # verdict may take means the scanner is saturated.
        try:
            async with asyncio.timeout(self._verdict_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise ScannerBusy("every clamd scan slot is busy") from None
        try:
            sock = await self._connect()
            try:
                async with asyncio.timeout(self._idle_timeout):
                    await asyncio.get_running_loop().sock_sendall(sock, b"zINSTREAM\0")
            except (OSError, TimeoutError) as exc:
                sock.close()
                raise ScanError(f"clamd INSTREAM failed: {exc!r}") from None
            except BaseException:
                sock.close()
                raise
        except BaseException:
            self._slots.release()
            raise
        return ClamdSession(
            sock,
            release=self._slots.release,
            idle_timeout=self._idle_timeout,
            verdict_timeout=self._verdict_timeout,
        )


class ClamdSession:
    def __init__(
        self,
        sock: socket.socket,
        *,
        release: Callable[[], None],
        idle_timeout: float,
        verdict_timeout: float,
    ) -> None:
        self._sock = sock
        self._release = release
        self._idle_timeout = idle_timeout
        self._verdict_timeout = verdict_timeout
        self._closed = False
        # Reading starts now: an early answer (size limit) must not be lost.
        self._reply: asyncio.Task[bytes] = asyncio.create_task(_read_reply(sock))

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

    async def _send(self, data: bytes | memoryview) -> None:
        async with asyncio.timeout(self._idle_timeout):
            await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        for start in range(0, len(view), MAX_FRAME):
            if self._reply.done():
                raise self._early_reply_error()
            frame = view[start : start + MAX_FRAME]
            try:
                await self._send(struct.pack(">I", len(frame)))
                await self._send(frame)
            except TimeoutError:
                raise ScanError("clamd stopped reading the stream (idle timeout)") from None
            except OSError as exc:
                # Usually clamd answered and closed: its reply says why.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_timeout):
                        await asyncio.wait([self._reply])
                if self._reply.done():
                    raise self._early_reply_error() from None
                raise ScanError(f"sending to clamd failed: {exc!r}") from None

    async def verdict(self) -> Verdict:
        try:
            if self._reply.done():
                raise self._early_reply_error()
            with contextlib.suppress(OSError, TimeoutError):
                await self._send(_TERMINATOR)  # if this fails, the reply tells why
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
        try:
            # wait() never raises, so a cancellation of our own caller is not swallowed.
            await asyncio.wait([self._reply])
            if not self._reply.cancelled():
                self._reply.exception()  # retrieved: an early error was already reported
        finally:
            # Even if cancelled again above: closing without the terminator makes clamd
            # discard the stream unscanned, and the slot must come back.
            self._sock.close()
            self._release()
