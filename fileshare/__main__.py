"""``fileshare serve`` runs the service; ``fileshare check-config`` validates settings."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from fileshare.app import create_app
from fileshare.config import ConfigError, load_settings
from fileshare.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fileshare")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service")
    sub.add_parser("check-config", help="validate the settings and print them (no secrets)")
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
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_grace,
        access_log=None,
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
