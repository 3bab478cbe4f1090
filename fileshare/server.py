"""Running the app: listen, and drain gracefully on SIGTERM.

aiohttp's own shutdown stops reading from open connections at once, which would cut
every upload in flight. So the drain is done here: on SIGTERM stop accepting and turn
not-ready, let requests in flight finish for up to the grace period, and only then let
aiohttp cancel what is left (each cancelled upload cleans its staging up).
"""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from fileshare.api.edge import EdgeRunner
from fileshare.api.keys import DRAINING, IN_FLIGHT
from fileshare.app import READINESS, SCANNER, STORAGE, create_app
from fileshare.config import Settings
from fileshare.index.base import IndexError_
from fileshare.scan.base import ScanError
from fileshare.scan.clamd import ClamdScanner, ClamdUnreachable
from fileshare.storage.base import Storage, StorageError

log = structlog.get_logger(__name__)

#: After the grace period: how long cancelled uploads get to clean up.
CLEANUP_TIMEOUT = 10.0
#: While waiting for clamd at start-up: seconds between two PINGs, and between two log lines.
CLAMD_POLL_INTERVAL = 0.5
CLAMD_WAIT_LOG_EVERY = 10.0


class StartupError(Exception):
    """The service cannot start: the message says why in one line, naming what failed."""


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT. Raises ``StartupError`` when it cannot start."""
    app = create_app(settings)
    runner = EdgeRunner(
        app,
        base_url=settings.base_url,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=CLEANUP_TIMEOUT,
    )
    try:
        await runner.setup()  # opens storage and the index (cleanup contexts)
        await _check_storage(app[STORAGE])
        verified = await app[STORAGE].verify_encryption()
    except (StorageError, IndexError_) as exc:
        # What did open (storage, when the index fails) is closed here: left to the loop's
        # shutdown, its generator would be torn down half-run and print a traceback.
        await _cleanup_quietly(runner)
        if isinstance(exc, IndexError_):
            raise StartupError(str(exc)) from None
        raise StartupError(f"storage ({_storage_name(settings)}) is not usable: {exc}") from None
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await _cleanup_quietly(runner)
        where = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {where}: the port is already in use") from None
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    # Public (probes reach it): that it was verified, not the buckets and what they do.
    app[READINESS].protection["verified"] = True
    if settings.encryption.mode == "none":
        log.warning("storage.encryption", mode="none", found=verified)
    else:
        log.info("storage.encryption", mode=settings.encryption.mode, found=verified)
    for use in settings.plaintext_uses():
        # Allowed by FILESHARE_PLAINTEXT_HOSTS, and said on every start so nobody forgets.
        log.warning(
            "transport.plaintext",
            dependency=use.what,
            host=use.host,
            detail="reached without TLS: anybody on the path can read or change what "
            "passes (FILESHARE_PLAINTEXT_HOSTS)",
        )
    log.info(
        "server.listening",
        host=settings.host,
        port=settings.port,
        storage=settings.storage,
        clamd=str(settings.clamd),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Listening already: /healthz answers (the process is alive) while /readyz says
        # not ready until clamd does, so an orchestrator neither routes to it nor kills it.
        if settings.clamd_start_timeout > 0:
            await _unless_stopped(_wait_for_clamd(app[SCANNER], settings), stop)
        if not stop.is_set():
            log.info("server.ready")
        await stop.wait()
        app[DRAINING].set()  # /readyz answers 503 and new requests are refused
        await site.stop()
        in_flight = app[IN_FLIGHT]
        log.info(
            "server.draining", in_flight=in_flight.count, grace_seconds=settings.shutdown_grace
        )
        if not await in_flight.wait_idle(settings.shutdown_grace):
            log.warning("server.grace_expired", in_flight=in_flight.count)
            # Cancelled now: aiohttp's shutdown would first wait CLEANUP_TIMEOUT more for
            # them to end by themselves, and only then cancel them.
            await in_flight.cancel(CLEANUP_TIMEOUT)
    finally:
        await runner.cleanup()
        log.info("server.stopped")


async def _check_storage(storage: Storage) -> None:
    """Both buckets reachable with these credentials: a wrong endpoint, a missing bucket or
    a refused key is named at start (``bucket x: not found``), not at the first upload."""
    await storage.ping()


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run ``work`` until it ends or ``stop`` is set (SIGTERM: it is cancelled at once,
    even in the middle of a PING, so that a drain never waits for it)."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopping):
            pending.cancel()
        await asyncio.wait([task, stopping])
    if not task.cancelled():
        task.result()  # its StartupError, if it failed


async def _wait_for_clamd(scanner: ClamdScanner, settings: Settings) -> None:
    """Until clamd answers PING (a sidecar may still be loading its database), for at most
    ``clamd_start_timeout`` seconds. Raises ``StartupError`` naming clamd and why when the
    time is up."""
    loop_time = asyncio.get_running_loop().time
    begin = loop_time()
    deadline = begin + settings.clamd_start_timeout
    next_log = begin
    reason: str | None = None
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                await scanner.ping()
        except ScanError as exc:
            reason = exc.reason if isinstance(exc, ClamdUnreachable) else str(exc)
        except TimeoutError:  # cut off by the deadline: the last answer said more
            reason = reason or f"no answer within {settings.clamd_start_timeout:g} s"
        else:
            log.info(
                "clamd.answered", clamd=str(settings.clamd), waited=round(loop_time() - begin, 1)
            )
            return
        now = loop_time()
        if now >= deadline:
            raise StartupError(
                f"clamd at {settings.clamd} does not answer: {reason} "
                f"(waited {settings.clamd_start_timeout:g} s, FILESHARE_CLAMD_START_TIMEOUT)"
            )
        if now >= next_log:  # a line every few seconds, not one per attempt
            log.warning(
                "clamd.waiting",
                clamd=str(settings.clamd),
                reason=reason,
                waited=round(now - begin, 1),
                timeout=settings.clamd_start_timeout,
            )
            next_log = now + CLAMD_WAIT_LOG_EVERY
        await asyncio.sleep(min(deadline - now, CLAMD_POLL_INTERVAL))


def _storage_name(settings: Settings) -> str:
    if settings.storage == "s3":
        return f"s3 at {settings.s3_endpoint or 'AWS'}"
    if settings.storage == "gcs":
        return f"gcs at {settings.gcs_endpoint or 'Google'}"
    return f"local directory {settings.data_dir}"


async def _cleanup_quietly(runner: web.AppRunner) -> None:
    """Close what start-up opened; a failure here must not hide why start-up failed."""
    try:
        await runner.cleanup()
    except Exception as exc:
        log.warning("server.cleanup_failed", error=type(exc).__name__)
