"""``fileshare serve`` runs the service; ``fileshare check-config`` validates settings."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fileshare.config import ConfigError, Settings, load_settings
from fileshare.index.base import IndexUnavailable
from fileshare.index.factory import open_index
from fileshare.logging import configure_logging
from fileshare.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fileshare")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service")
    sub.add_parser("check-config", help="validate the settings and print them (no secrets)")
    sub.add_parser(
        "migrate", help="bring the index's schema up to date (serve also does, at start-up)"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"fileshare: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(settings)
        return 0
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    asyncio.run(serve(settings))
    return 0


async def _migrate(settings: Settings) -> int:
    try:
        async with open_index(settings):
            pass
    except IndexUnavailable as exc:
        print(f"fileshare: {exc}", file=sys.stderr)
        return 1
    print("fileshare: the index schema is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
