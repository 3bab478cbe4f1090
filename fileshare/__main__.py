"""``fileshare serve`` runs the service; ``fileshare check-config`` validates settings."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fileshare.config import ConfigError, load_settings
from fileshare.logging import configure_logging
from fileshare.server import serve


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
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
