"""``fileshare token``: ask fileshare's token endpoint for an access token and print it, and
only it, so that ``TOKEN=$(fileshare token)`` works.

The client authenticates with HTTP Basic (``client_secret_basic``, id and secret
form-urlencoded first, RFC 6749 §2.3.1): a registered client's id and secret, or a
bootstrap principal of ``FILESHARE_API_KEYS`` — its name and its key (``--key``; the name
defaults to ``dev``, the run command's development principal).
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Mapping
from urllib.parse import quote_plus

import aiohttp

from fileshare.cli.common import (
    MAX_ANSWER,
    NETWORK_ERRORS,
    OK,
    REFUSED,
    UNREACHABLE,
    USAGE,
    ClientConfig,
    CliError,
    base_url,
    network_error,
    one_line,
    refusal,
    session,
)

#: The run command's development principal (scripts/run.sh, FILESHARE_API_KEYS=dev:…).
DEFAULT_CLIENT = "dev"

EXIT_CODES = """exit codes:
  0    the token was printed
  1    the server refused (the line on stderr has its status and OAuth error code)
  2    usage or configuration error: bad flags, no credentials
  3    the server could not be reached, or the connection broke before a complete answer
  130  interrupted (Ctrl-C)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the fileshare base URL (FILESHARE_URL)")
    parser.add_argument(
        "--client-id",
        metavar="ID",
        help=f"the client (FILESHARE_CLIENT_ID; with --key, default {DEFAULT_CLIENT})",
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--client-secret", metavar="SECRET", help="its secret (FILESHARE_CLIENT_SECRET)"
    )
    secret.add_argument(
        "--key",
        help="a FILESHARE_API_KEYS key: the principal named by --client-id is the client "
        "(FILESHARE_KEY)",
    )
    parser.add_argument(
        "--scope", help='space-separated scopes to ask for, e.g. "files:read" (default: all)'
    )


def credentials(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    """(client id, secret): flags win over the environment."""
    if args.client_secret or args.key:
        secret, is_key = (args.key, True) if args.key else (args.client_secret, False)
    else:
        env_secret, env_key = environ.get("FILESHARE_CLIENT_SECRET"), environ.get("FILESHARE_KEY")
        if env_secret and env_key:
            raise CliError(USAGE, "set FILESHARE_CLIENT_SECRET or FILESHARE_KEY, not both")
        secret, is_key = (env_key, True) if env_key else (env_secret, False)
    if not secret:
        raise CliError(
            USAGE,
            "no credentials: pass --client-id and --client-secret, or --key (or set "
            "FILESHARE_CLIENT_ID and FILESHARE_CLIENT_SECRET, or FILESHARE_KEY)",
        )
    client_id = args.client_id or environ.get("FILESHARE_CLIENT_ID")
    if not client_id:
        if not is_key:
            raise CliError(USAGE, "--client-secret needs --client-id (or FILESHARE_CLIENT_ID)")
        client_id = DEFAULT_CLIENT
    return client_id, secret.strip()


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then HTTP Basic."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


async def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = base_url(args, environ) / "oauth" / "token"
    client_id, secret = credentials(args, environ)
    config = ClientConfig(url=url, headers={"Authorization": basic(client_id, secret)})
    form = {"grant_type": "client_credentials"}
    if args.scope:
        form["scope"] = args.scope
    async with session(config) as client:
        try:
            async with client.post(url, data=form) as response:
                if response.status != 200:
                    raise await _refused(response)
                raw = await response.content.read(MAX_ANSWER)
        except NETWORK_ERRORS as exc:
            raise network_error("token", url, exc) from None
    try:
        token = json.loads(raw)["access_token"]
    except (ValueError, KeyError, TypeError):
        raise CliError(UNREACHABLE, "token: the answer holds no access_token") from None
    if not isinstance(token, str):
        raise CliError(UNREACHABLE, "token: the answer holds no access_token")
    print(token, flush=True)
    return OK


async def _refused(response: aiohttp.ClientResponse) -> CliError:
    """An RFC 6749 error (``error``, ``error_description``) as one line; anything else
    (a 503 problem+json, a proxy's page) as the other commands say it."""
    if response.content_type == "application/json":
        try:
            body = json.loads(await response.content.read(MAX_ANSWER))
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            line = f"token: {response.status} {body['error']}"
            description = body.get("error_description")
            if isinstance(description, str) and description:
                line += f": {one_line(description)}"
            return CliError(REFUSED, line)
    return await refusal("token", response)
