"""The fault-injection proxy itself (tests/faultproxy.py), against a small echo server:
each command does what the matrix relies on, at the byte it is told to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.faultproxy import FaultProxy


@pytest.fixture
def received() -> bytearray:
    """Everything the echo server was sent."""
    return bytearray()


@pytest.fixture
async def echo(received: bytearray) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                received.extend(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.fixture
async def proxy(echo: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo) as p:
        yield p


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_forwards_and_counts(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    assert (proxy.bytes_up, proxy.bytes_down, proxy.connections) == (5, 5, 1)
    writer.close()
    await proxy.until(lambda: proxy.open_connections == 0).wait()


async def test_stall_holds_bytes_until_resume(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.stall()
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await reader.readexactly(4)
    assert proxy.bytes_up == 0
    proxy.resume()
    assert await reader.readexactly(4) == b"held"
    writer.close()


async def test_when_stalls_at_an_exact_offset(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.when(3, "upstream", lambda: proxy.stall("upstream"))
    writer.write(b"abcdef")
    await proxy.wait_passed(3)
    assert await reader.readexactly(3) == b"abc"
    assert proxy.bytes_up == 3  # nothing beyond the offset went through
    proxy.resume()
    assert await reader.readexactly(3) == b"def"
    writer.close()


async def test_truncate_forwards_n_bytes_then_cuts(proxy: FaultProxy, received: bytearray) -> None:
    reader, writer = await _connect(proxy)
    proxy.truncate(4)
    writer.write(b"0123456789")
    # The cut comes right after the 4th byte: the echo of those may or may not be back.
    assert (await reader.read()) in (b"", b"0123")
    await proxy.until(lambda: proxy.open_connections == 0).wait()
    assert proxy.bytes_up == 4
    assert received == b"0123"
    writer.close()


async def test_truncate_zero_downstream_cuts_at_the_first_answer_byte(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.truncate(0, "downstream")
    writer.write(b"ping")
    assert await reader.read() == b""
    assert (proxy.bytes_up, proxy.bytes_down) == (4, 0)


async def test_reset_sends_an_rst(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    writer.write(b"x")
    await reader.readexactly(1)
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        await reader.read()


async def test_cut_closes_cleanly(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    writer.write(b"x")
    await reader.readexactly(1)
    proxy.cut()
    assert await reader.read() == b""


async def test_refuse_closes_new_connections_and_admit_undoes_it(proxy: FaultProxy) -> None:
    proxy.refuse()
    reader, writer = await _connect(proxy)
    assert await reader.read() == b""
    assert proxy.refused == 1
    writer.close()
    proxy.admit()
    reader, writer = await _connect(proxy)
    writer.write(b"ok")
    assert await reader.readexactly(2) == b"ok"
    writer.close()


async def test_delay_slows_each_chunk(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.delay(0.1, "upstream")
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"slow")
    assert await reader.readexactly(4) == b"slow"
    assert loop.time() - started >= 0.1
    writer.close()
