"""The client: ``fileshare upload`` and ``fileshare download`` against a running fileshare.

It never imports the server (``fileshare.app``, the index, the storage SDKs): a client
machine has no server settings, and the command should start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import textwrap

from fileshare.cli import download, token, upload
from fileshare.cli.common import EXIT_CODES, ClientConfig, CliError, fail

__all__ = ["EXIT_CODES", "add_commands", "run"]

_COMMON_HELP = (
    "The server and credentials come from --url / --key / --token, or FILESHARE_URL "
    "(default http://127.0.0.1:8080) / FILESHARE_KEY / FILESHARE_TOKEN."
)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``upload`` and ``download`` on the top-level parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the fileshare base URL (FILESHARE_URL)")
    creds = common.add_mutually_exclusive_group()
    creds.add_argument("--key", help="an API key, sent as X-API-Key (FILESHARE_KEY)")
    creds.add_argument(
        "--token", help="a bearer token, sent as Authorization: Bearer (FILESHARE_TOKEN)"
    )
    epilog = f"{_wrap(_COMMON_HELP)}\n\n{EXIT_CODES}"
    formatter = argparse.RawDescriptionHelpFormatter

    up = sub.add_parser(
        "upload",
        parents=[common],
        help="upload files (streamed, with a progress bar); prints each answer as a JSON line",
        description=_wrap(
            "Stream each FILE to fileshare, in order, and print the server's answer for "
            "each as one line of JSON. The first failure stops the run; running it again is "
            "harmless (the same bytes under the same name and type come back as the same "
            "record)."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    upload.add_arguments(up)
    down = sub.add_parser(
        "download",
        parents=[common],
        help="download a file by its id (streamed, with a progress bar)",
        description=_wrap(
            "Stream a file to FILE (default: the name the server gives it, else its id, in "
            "the current directory) and print where it went. The bytes go to a temporary "
            "file beside it, are checked against the server's sha256, and only then take "
            "the final name."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    download.add_arguments(down)
    tok = sub.add_parser(
        "token",
        help="print an access token from fileshare's token endpoint (TOKEN=$(fileshare token))",
        description=_wrap(
            "Ask POST /oauth/token for a token (client credentials, HTTP Basic) and print "
            "only the token. The client is a registered client (--client-id and "
            "--client-secret) or a FILESHARE_API_KEYS principal (--key, named by --client-id, "
            f"default {token.DEFAULT_CLIENT}: the run command's development key)."
        ),
        epilog=token.EXIT_CODES,
        formatter_class=formatter,
    )
    token.add_arguments(tok)


def _wrap(text: str) -> str:
    # The help keeps its line breaks (the exit code table), so paragraphs are wrapped here.
    return textwrap.fill(text, width=88)


def run(args: argparse.Namespace) -> int:
    """Run a client command; the exit code as in ``EXIT_CODES``."""
    try:
        if args.command == "token":
            return asyncio.run(token.run(args, os.environ))
        if args.command == "upload":
            files = upload.sources(args)  # a missing file is named before missing credentials
            return asyncio.run(upload.run(ClientConfig.resolve(args, os.environ), args, files))
        return asyncio.run(download.run(ClientConfig.resolve(args, os.environ), args))
    except CliError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        return 130
