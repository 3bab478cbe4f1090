"""Two independent clamd clients agree: pyclamd and fileshare's own INSTREAM client
(``fileshare/scan/clamd.py``) get the same verdict from the test clamd for every item of a
corpus: EICAR, every file of Debian's clamav-testfiles, clean random data, empty input, and
streams at and over StreamMaxLength.

A bug in our framing (chunk lengths, the terminator, reading the reply) would show up as a
disagreement with a client written by someone else. pyclamd is old (0.4.0, 2017) and blocking,
so it runs in a worker thread here; what it does at the size limit is pinned down below.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pyclamd  # type: ignore[import-untyped]
import pytest

from fileshare.config import ClamdAddress
from fileshare.scan.base import ScanSizeExceeded
from fileshare.scan.clamd import MAX_FRAME, ClamdScanner
from tests.servers import (
    CLAM_EXE_SIGNATURE,
    CLAMAV_TESTFILES,
    EICAR,
    EICAR_SIGNATURE,
    Clamd,
    KiB,
    MiB,
)

#: What a client said, in terms both can express: ("clean",), ("infected", signature) or
#: ("refused", why) for a stream clamd would not scan.
Outcome = tuple[str, ...]

#: StreamMaxLength of the clamd the limit cases run against.
SMALL_LIMIT = 1 * MiB


def _testfiles() -> list[Any]:
    files = sorted(p for p in CLAMAV_TESTFILES.iterdir() if p.is_file())
    # setup.sh installs clamav-testfiles; without them this test would prove nothing
    assert len(files) >= 40, f"{CLAMAV_TESTFILES} is incomplete: run bash scripts/setup.sh"
    return [pytest.param(p.read_bytes(), id=p.name) for p in files]


def _pyclamd_outcome(client: pyclamd.ClamdNetworkSocket, data: bytes) -> Outcome:
    try:
        result = client.scan_stream(data)
    except pyclamd.BufferTooLongError:
        return ("refused", "size limit")
    except (BrokenPipeError, ConnectionResetError):
        # pyclamd sends the whole stream before it reads a byte of the answer: when clamd
        # answers "size limit exceeded" and closes early, a long stream breaks the pipe first
        # and the answer is lost. Only a stream that over-runs the limit gets here.
        return ("refused", "size limit")
    if result is None:
        return ("clean",)
    ((status, signature),) = result.values()
    assert status == "FOUND", result
    return ("infected", signature)


async def _fileshare_outcome(scanner: ClamdScanner, data: bytes) -> Outcome:
    session = await scanner.open()
    try:
        view = memoryview(data)
        # the pipeline's chunks: up to 1 MiB each, so a signature can straddle two frames
        for start in range(0, len(view), MAX_FRAME):
            await session.feed(bytes(view[start : start + MAX_FRAME]))
        verdict = await session.verdict()
    except ScanSizeExceeded:
        return ("refused", "size limit")
    finally:
        await session.cancel()
    if verdict.clean:
        return ("clean",)
    assert verdict.signature is not None
    return ("infected", verdict.signature)


async def _both(server: Clamd, data: bytes) -> tuple[Outcome, Outcome]:
    client = pyclamd.ClamdNetworkSocket(server.host, server.port, timeout=60)
    theirs = await asyncio.to_thread(_pyclamd_outcome, client, data)
    ours = await _fileshare_outcome(ClamdScanner(ClamdAddress.parse(server.address)), data)
    return theirs, ours


@pytest.fixture(scope="module")
def small_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    with Clamd(max_stream=SMALL_LIMIT, dir=tmp_path_factory.mktemp("small-clamd")) as server:
        yield server


def _infected(signature: str) -> Outcome:
    return ("infected", f"{signature}.UNOFFICIAL")


@pytest.mark.parametrize("data", _testfiles())
async def test_every_clamav_testfile(clamd: Clamd, data: bytes) -> None:
    theirs, ours = await _both(clamd, data)
    assert theirs == ours
    # and both are right: every one of these files carries clam.exe (packed, archived,
    # encoded or embedded), which the test database knows by its hash
    assert ours == _infected(CLAM_EXE_SIGNATURE)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(EICAR, id="eicar"),
        # EICAR across the boundary of fileshare's 1 MiB frames (pyclamd's are 4 KiB)
        pytest.param(
            os.urandom(MAX_FRAME - 30) + EICAR + os.urandom(2 * MiB), id="eicar-across-frames"
        ),
        pytest.param(os.urandom(3 * MiB) + EICAR, id="eicar-at-the-end"),
    ],
)
async def test_eicar(clamd: Clamd, data: bytes) -> None:
    theirs, ours = await _both(clamd, data)
    assert theirs == ours == _infected(EICAR_SIGNATURE)


@pytest.mark.parametrize(
    "size",
    [0, 1, 4 * KiB, 64 * KiB, MAX_FRAME, MAX_FRAME + 1, 5 * MiB + 3],
    ids=lambda n: f"{n}-bytes",
)
async def test_clean_random_data_and_empty_input(clamd: Clamd, size: int) -> None:
    # fresh bytes every time: clamd caches clean verdicts by hash
    theirs, ours = await _both(clamd, os.urandom(size))
    assert theirs == ours == ("clean",)


async def test_a_stream_of_exactly_stream_max_length_is_scanned(small_clamd: Clamd) -> None:
    theirs, ours = await _both(small_clamd, os.urandom(SMALL_LIMIT))
    assert theirs == ours == ("clean",)
    theirs, ours = await _both(small_clamd, os.urandom(SMALL_LIMIT - len(EICAR)) + EICAR)
    assert theirs == ours == _infected(EICAR_SIGNATURE)


@pytest.mark.parametrize(
    "size", [SMALL_LIMIT + 1, 3 * SMALL_LIMIT, 20 * SMALL_LIMIT], ids=["one-byte-over", "3x", "20x"]
)
async def test_a_stream_over_stream_max_length_is_refused_by_both(
    small_clamd: Clamd, size: int
) -> None:
    """Neither says clean. fileshare reads clamd's early answer while still sending and
    raises ScanSizeExceeded (413); pyclamd raises BufferTooLongError when the answer reaches
    it, or a bare BrokenPipeError/ConnectionResetError when clamd closed before pyclamd was
    done sending (20x here, usually)."""
    theirs, ours = await _both(small_clamd, os.urandom(size))
    assert theirs == ours == ("refused", "size limit")
    # with EICAR past the limit neither reports it as found: clamd never scanned it
    theirs, ours = await _both(small_clamd, os.urandom(size) + EICAR)
    assert theirs == ours == ("refused", "size limit")


async def test_pyclamd_still_works_on_this_python(clamd: Clamd) -> None:
    """pyclamd's last release is from 2017: its plain commands still work here."""
    client = pyclamd.ClamdNetworkSocket(clamd.host, clamd.port, timeout=10)
    assert await asyncio.to_thread(client.ping) is True
    version = await asyncio.to_thread(client.version)
    ours = await ClamdScanner(ClamdAddress.parse(clamd.address)).version()
    assert version.startswith("ClamAV ")
    assert ours == version
