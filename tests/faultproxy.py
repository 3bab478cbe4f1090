"""A TCP proxy that injects network faults between fileshare and a real server.

Tests put a ``FaultProxy`` between fileshare and clamd, SeaweedFS, fake-gcs-server or
PostgreSQL (point fileshare at ``proxy.address`` / ``proxy.url``) and then, on command,
make the network misbehave on the connections that are open *now*:

* ``delay(s)``: wait ``s`` seconds before forwarding each chunk (a slow link);
* ``stall()`` / ``resume()``: stop forwarding but keep both sockets open (a hung peer);
* ``cut()``: close both sides cleanly (FIN), ``reset()``: abort both with an RST;
* ``truncate(n)``: forward ``n`` more bytes one way, then cut;
* ``refuse()`` / ``admit()``: close new connections at once (the server is down);
* ``when(n, direction, action)``: run any of these at an exact byte count.

The proxy counts bytes each way and connections, and ``passed(n)`` is an ``asyncio.Event``
set once ``n`` bytes have gone upstream: a test triggers its fault at a precise stage of
the protocol (after the whole body, at the first byte of a reply) without sleeping.

"Upstream" is the direction from the client (fileshare) to the server, "downstream" the
answers. Counters and triggers are totals over every connection the proxy carried.
Everything runs on the loop of whoever started the proxy; commands are plain calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

Direction = Literal["upstream", "downstream"]
Which = Direction | Literal["both"]
DIRECTIONS: tuple[Direction, ...] = ("upstream", "downstream")

#: Bytes read from one side before they are forwarded: the unit of ``delay`` and of what
#: the proxy holds per connection and direction while stalled.
CHUNK = 64 * 1024


def _directions(which: Which) -> tuple[Direction, ...]:
    return DIRECTIONS if which == "both" else (which,)


@dataclass
class _Trigger:
    threshold: int
    direction: Direction
    action: Callable[[], None]


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's socket and the upstream's.

    Raw non-blocking sockets, not asyncio streams: a stream transport tears the whole
    connection down when a write fails, dropping what the peer had sent before it closed
    (clamd's answer to a stream past its StreamMaxLength, sent just before it resets the
    connection). A direct connection keeps that answer readable; so must the proxy."""

    client: socket.socket
    server: socket.socket
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    _closed: bool = False
    _rst: bool = False

    def alive(self) -> bool:
        # A method, not an attribute: the state changes across every ``await``.
        return not self._closed

    def close(self, *, rst: bool = False) -> None:
        """Stop forwarding and close both sides: a FIN at once (what the proxy holds is
        dropped), or an RST. Idempotent; the sockets are released by ``release``."""
        if self._closed:
            return
        self._closed = True
        self._rst = rst
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                if rst:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    sock.shutdown(socket.SHUT_RDWR)
        for pump in self.pumps:
            if pump is not asyncio.current_task():
                pump.cancel()

    def release(self) -> None:
        """Close the file descriptors, once no pump waits on them any more."""
        self.close()
        for sock in (self.client, self.server):
            sock.close()


class FaultProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``.

    Use as ``async with FaultProxy(host, port) as proxy:``, or ``await start()`` /
    ``await close()``."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        chunk: int = CHUNK,
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._chunk = chunk
        self._connect_timeout = connect_timeout
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = {d: asyncio.Event() for d in DIRECTIONS}
        for event in self._flowing.values():
            event.set()
        self._delay: dict[Direction, float] = dict.fromkeys(DIRECTIONS, 0.0)
        self._refusing = False
        self._triggers: list[_Trigger] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Event]] = []
        #: Bytes forwarded each way, over every connection.
        self.forwarded: dict[Direction, int] = dict.fromkeys(DIRECTIONS, 0)
        #: Connections accepted and joined to the upstream.
        self.connections = 0
        #: Connections closed at once because of ``refuse()``.
        self.refused = 0
        #: Connections closed because the upstream could not be reached.
        self.unreachable = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._acceptor = asyncio.create_task(self._accept_forever(listener))
        return self

    async def close(self) -> None:
        """Stop listening, close every connection (FIN), wait for the handlers."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.wait([self._acceptor])
        if self._listener is not None:
            self._listener.close()
        for link in list(self._links):
            link.close()
        if self._handlers:
            await asyncio.wait(set(self._handlers))

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._listener is not None, "start() first"
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, for settings that take a host and port (clamd)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, for endpoints (S3, GCS)."""
        return f"http://{self.address}"

    # ------------------------------------------------------------------ counters

    @property
    def bytes_up(self) -> int:
        return self.forwarded["upstream"]

    @property
    def bytes_down(self) -> int:
        return self.forwarded["downstream"]

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def passed(self, n: int, direction: Direction = "upstream") -> asyncio.Event:
        """An event set once ``n`` bytes in total have been forwarded ``direction``
        (at once if they already have)."""
        return self.until(lambda: self.forwarded[direction] >= n)

    def until(self, condition: Callable[[], bool]) -> asyncio.Event:
        """An event set once ``condition()`` (of this proxy's counters) holds; it is
        evaluated now and after every forwarded chunk and connection change."""
        event = asyncio.Event()
        if condition():
            event.set()
        else:
            self._waiters.append((condition, event))
        return event

    async def wait_passed(self, n: int, direction: Direction = "upstream") -> None:
        await self.passed(n, direction).wait()

    def _changed(self) -> None:
        for waiter in list(self._waiters):
            condition, event = waiter
            if condition():
                event.set()
                self._waiters.remove(waiter)

    # ------------------------------------------------------------------ commands

    def delay(self, seconds: float, direction: Which = "both") -> None:
        """Wait ``seconds`` before forwarding each chunk (0: no delay)."""
        for d in _directions(direction):
            self._delay[d] = seconds

    def stall(self, direction: Which = "both") -> None:
        """Stop forwarding; sockets stay open, the peers see silence and, as buffers
        fill, back-pressure. New connections are accepted and stall too."""
        for d in _directions(direction):
            self._flowing[d].clear()

    def resume(self, direction: Which = "both") -> None:
        """Undo ``stall``: what was held is forwarded."""
        for d in _directions(direction):
            self._flowing[d].set()

    def cut(self) -> None:
        """Close every open connection cleanly on both sides (what is held is dropped)."""
        for link in list(self._links):
            link.close()

    def reset(self) -> None:
        """Abort every open connection on both sides with an RST."""
        for link in list(self._links):
            link.close(rst=True)

    def truncate(self, after_bytes: int, direction: Direction = "upstream") -> None:
        """Forward ``after_bytes`` more bytes ``direction`` (over all connections), then
        cut every connection before the next byte passes. ``truncate(0, "downstream")``
        cuts at the first byte of the next answer."""
        self.when(self.forwarded[direction] + after_bytes, direction, self.cut)

    def when(self, passed: int, direction: Direction, action: Callable[[], None]) -> None:
        """Run ``action`` (``stall``, ``cut``, ``reset``, ``refuse``...) once ``passed``
        bytes in total have been forwarded ``direction``, before any further byte goes
        that way: the fault lands at an exact offset of the stream."""
        self._triggers.append(_Trigger(passed, direction, action))

    def refuse(self) -> None:
        """Close new connections as soon as they are accepted (open ones carry on)."""
        self._refusing = True

    def admit(self) -> None:
        """Undo ``refuse``."""
        self._refusing = False

    def heal(self) -> None:
        """Back to a plain proxy: no delay, flowing, admitting, no pending triggers."""
        self._triggers.clear()
        self.delay(0.0)
        self.admit()
        self.resume()

    # ------------------------------------------------------------------ forwarding

    async def _accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _address = await loop.sock_accept(listener)
            client.setblocking(False)
            handler = asyncio.create_task(self._serve(client))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    async def _serve(self, client: socket.socket) -> None:
        if self._refusing:
            self.refused += 1
            client.close()
            return
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setblocking(False)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.sock_connect(server, self.upstream)
        except (OSError, TimeoutError):
            self.unreachable += 1
            server.close()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        link = _Link(client=client, server=server)
        self._links.add(link)
        self.connections += 1
        self._changed()
        link.pumps = [
            asyncio.create_task(self._pump(link, "upstream", client, server)),
            asyncio.create_task(self._pump(link, "downstream", server, client)),
        ]
        try:
            await asyncio.wait(link.pumps)
        finally:
            self._links.discard(link)
            link.release()
            self._changed()

    async def _pump(
        self, link: _Link, direction: Direction, source: socket.socket, sink: socket.socket
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while link.alive():
                data = await loop.sock_recv(source, self._chunk)
                if not data:
                    break
                await self._forward(link, direction, data, sink)
        except OSError:
            # One side broke this direction (its peer reset, or stopped reading). The
            # other direction still delivers what was sent before it broke.
            pass
        # Half-close: the other direction may still be answering.
        if link.alive():
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    async def _forward(
        self, link: _Link, direction: Direction, data: bytes, sink: socket.socket
    ) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view.nbytes and link.alive():
            await self._flowing[direction].wait()
            if self._delay[direction]:
                await asyncio.sleep(self._delay[direction])
            if not link.alive():
                return
            sent = self.forwarded[direction]
            due = [t for t in self._triggers if t.direction == direction and t.threshold <= sent]
            if due:
                for trigger in due:
                    self._triggers.remove(trigger)
                    trigger.action()
                continue  # the action may have stalled or closed this link
            limits = [t.threshold for t in self._triggers if t.direction == direction]
            n = min([view.nbytes, *(limit - sent for limit in limits)])
            await loop.sock_sendall(sink, view[:n])
            view = view[n:]
            self.forwarded[direction] += n
            self._changed()
