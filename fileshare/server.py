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

import structlog
from aiohttp import web

from fileshare.api.keys import DRAINING, IN_FLIGHT
from fileshare.app import create_app
from fileshare.config import Settings
from fileshare.index.base import IndexError_
from fileshare.storage.base import StorageError

log = structlog.get_logger(__name__)

#: After the grace period: how long cancelled uploads get to clean up.
CLEANUP_TIMEOUT = 10.0


class StartupError(Exception):
    """The service cannot start: the message says why in one line, naming what failed."""


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT. Raises ``StartupError`` when it cannot start."""
    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=CLEANUP_TIMEOUT
    )
    try:
        await runner.setup()  # opens storage and the index (cleanup contexts)
    except StorageError as exc:
        raise StartupError(f"storage ({settings.storage}) is not usable: {exc}") from None
    except IndexError_ as exc:
        raise StartupError(str(exc)) from None
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        where = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {where}: the port is already in use") from None
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
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
        await stop.wait()
        app[DRAINING].set()  # /readyz answers 503 and new requests are refused
        await site.stop()
        in_flight = app[IN_FLIGHT]
        log.info(
            "server.draining", in_flight=in_flight.count, grace_seconds=settings.shutdown_grace
        )
        if not await in_flight.wait_idle(settings.shutdown_grace):
            log.warning("server.grace_expired", in_flight=in_flight.count)
    finally:
        await runner.cleanup()
        log.info("server.stopped")
