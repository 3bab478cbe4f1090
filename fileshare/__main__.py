"""``fileshare``: the service's commands (``serve``, ``check-config``, ``migrate``, in
``admin``) and the client's (``upload``, ``download``, in ``cli``). This module only parses
and dispatches, importing each side when it runs: the client never loads the server."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from fileshare import __version__, audit_cli, identity_cli, rescan_cli
from fileshare.cli import EXIT_CODES, add_commands, run


def _version() -> str:
    try:
        return version("fileshare")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return __version__


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="fileshare",
        description="A streaming upload proxy with an antivirus pipeline, and its client.",
        epilog=f"upload and download {EXIT_CODES}\n\nserve, check-config and migrate exit "
        "with 2 on a configuration or start-up\nerror, migrate with 1 when the index "
        "cannot be reached.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"fileshare {_version()}")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service")
    sub.add_parser("check-config", help="validate the settings and print them (no secrets)")
    sub.add_parser(
        "migrate", help="bring the index's schema up to date (serve also does, at start-up)"
    )
    add_commands(sub)
    identity_cli.add_commands(sub)
    audit_cli.add_commands(sub)
    rescan_cli.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("upload", "download", "token"):
        return run(args)
    if args.command in identity_cli.COMMANDS:
        return identity_cli.run(args)
    if args.command in audit_cli.COMMANDS:
        return audit_cli.run(args)
    if args.command in rescan_cli.COMMANDS:
        return rescan_cli.run(args)
    from fileshare import admin

    return admin.run(args.command)


if __name__ == "__main__":
    sys.exit(main())
