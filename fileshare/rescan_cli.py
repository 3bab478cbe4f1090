"""``fileshare rescan``: one rescan round now, with the server's settings (``FILESHARE_*``),
beside or instead of the periodic one (``rescan.py``): content verdicted with an older
signature database than clamd's now, or more than ``FILESHARE_RESCAN_AFTER`` ago — or, with
``--all``, every clean content. Prints one JSON line of what was found. Exit codes: 0 done,
1 some content could not be rescanned (listed; a later round retries), 2 the settings are
wrong or the service's backends cannot be opened."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fileshare.config import Settings

# Imported when the command runs: ``__main__`` builds every command's parser, and
# ``fileshare upload`` must not load the server to do so.

COMMANDS = ("rescan",)
DONE, SOME_FAILED, UNAVAILABLE = 0, 1, 2


def add_commands(sub: Any) -> None:
    rescan = sub.add_parser(
        "rescan",
        help="scan stored clean content again now (exit 0 done, 1 some failed, 2 unavailable)",
        description="Rescan clean content whose verdict is older than clamd's signature "
        "database or than FILESHARE_RESCAN_AFTER, once per sha256, with the server's "
        "settings; content found infected or unscannable is never served again.",
    )
    rescan.add_argument(
        "--all", action="store_true", help="every clean content, however recent its verdict"
    )
    rescan.add_argument("--limit", type=int, default=None, help="at most this many contents")


async def rescan(settings: Settings, *, everything: bool, limit: int | None) -> int:
    from aiohttp import web

    from fileshare.app import RESCANNER, create_app

    app = create_app(settings)
    # The service's own wiring (storage, index, clamd, pipeline), without listening.
    runner = web.AppRunner(app, handle_signals=False)
    try:
        await runner.setup()
    except Exception as exc:
        print(f"fileshare: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return UNAVAILABLE
    try:
        rescanner = app[RESCANNER]
        now = rescanner.clock()
        before = now if everything else now - timedelta(seconds=settings.rescan_after)
        report = await rescanner.run(scanned_before=before, limit=limit)
    except Exception as exc:
        print(f"fileshare: rescan failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    finally:
        await runner.cleanup()
    print(
        json.dumps(
            {
                "clean": len(report.clean),
                "infected": report.infected,
                "unscannable": report.unscannable,
                "failed": report.failed,
                "filesChanged": report.files_changed,
            }
        )
    )
    return SOME_FAILED if report.failed else DONE


def run(args: argparse.Namespace) -> int:
    from fileshare.config import settings_or_report
    from fileshare.logging import configure_logging

    settings = settings_or_report()
    if settings is None:
        return UNAVAILABLE
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(rescan(settings, everything=args.all, limit=args.limit))
