"""What both client commands share: configuration, exit codes, the HTTP session, and turning
every failure into one line on stderr."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

OK = 0
#: The server answered, and refused (any 4xx or 5xx answer).
REFUSED = 1
#: Nothing was asked of the server, or its answer was not kept: bad flags, no credentials,
#: a missing or unreadable file, an output file that exists (without --force).
USAGE = 2
#: The server could not be reached, or the connection failed before a complete answer.
UNREACHABLE = 3
INTERRUPTED = 130

EXIT_CODES = """exit codes:
  0    every file was uploaded / the file was downloaded
  1    the server refused (a 4xx or 5xx answer; the line on stderr has its status and code)
  2    usage or configuration error: bad flags, no credentials, a missing or unreadable
       file, an output file that exists (without --force); nothing was kept
  3    the server could not be reached, or the connection broke before a complete answer
  130  interrupted (Ctrl-C); a download leaves no partial file"""

DEFAULT_URL = "http://127.0.0.1:8080"
#: Seconds to open a connection, and to wait for the next bytes of an answer. The wait for
#: the answer to an upload starts after its last byte (aiohttp starts sock_read then), and
#: covers the scan: the server waits at most FILESHARE_CLAMD_VERDICT_TIMEOUT (120 s).
CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 300.0
#: Answers other than a download are small JSON documents; more is not a fileshare.
MAX_ANSWER = 1024 * 1024


class CliError(Exception):
    """A failure of one command: the exit code and the one line that explains it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fail(exc: CliError) -> int:
    print(f"fileshare: {one_line(exc.message)}", file=sys.stderr)
    return exc.code


def one_line(text: str) -> str:
    """Whatever a server or the OS said, as one printable line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def base_url(args: argparse.Namespace, environ: Mapping[str, str]) -> URL:
    """The server: ``--url``, else ``FILESHARE_URL``, else the run command's address."""
    raw = args.url or environ.get("FILESHARE_URL") or DEFAULT_URL
    try:
        url = URL(raw)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host or url.query_string:
        raise CliError(USAGE, f"--url / FILESHARE_URL: {raw!r} is not an http(s) base URL")
    return url


@dataclass(frozen=True)
class ClientConfig:
    url: URL
    headers: Mapping[str, str] = field(repr=False)

    @classmethod
    def resolve(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> ClientConfig:
        """Flags win over the environment. Never the server's settings: those are for the
        machine that runs ``fileshare serve``, not for its clients."""
        url = base_url(args, environ)
        if args.key or args.token:
            key, token = args.key, args.token
        else:
            key, token = environ.get("FILESHARE_KEY"), environ.get("FILESHARE_TOKEN")
            if key and token:
                raise CliError(USAGE, "set FILESHARE_KEY or FILESHARE_TOKEN, not both")
        if token:
            headers = {"Authorization": f"Bearer {token.strip()}"}
        elif key:
            headers = {"X-API-Key": key.strip()}
        else:
            raise CliError(USAGE, "no credentials: pass --key (or --token), or set FILESHARE_KEY")
        return cls(url=url, headers=headers)

    def endpoint(self, *segments: str) -> URL:
        url = self.url
        for segment in segments:
            url = url / segment
        return url


def file_segment(file_id: str) -> str:
    """An id as one path segment: yarl would treat ``/`` as a separator and drop ``.``/``..``,
    sending the request somewhere else entirely."""
    if not file_id or "/" in file_id or file_id in (".", ".."):
        raise CliError(USAGE, f"{file_id!r} is not a file id")
    return file_id


@asynccontextmanager
async def session(config: ClientConfig) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
    )
    async with aiohttp.ClientSession(
        headers=dict(config.headers), timeout=timeout, auto_decompress=False
    ) as client:
        yield client


async def refusal(what: str, response: aiohttp.ClientResponse) -> CliError:
    """The server's refusal as one line: ``<what>: 422 infected: <detail>`` from its
    problem+json answer, or the status and reason of an answer that is not one (a proxy)."""
    status = f"{response.status}"
    try:
        raw = await response.content.read(MAX_ANSWER)
        problem = json.loads(raw) if response.content_type.endswith("json") else None
    except (TimeoutError, aiohttp.ClientError, ValueError):
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("code"), str):
        text = problem.get("detail") or problem.get("title") or ""
        line = f"{what}: {status} {problem['code']}"
        return CliError(REFUSED, f"{line}: {text}" if text else line)
    return CliError(REFUSED, f"{what}: {status} {response.reason or 'error'}")


def network_error(what: str, url: URL, exc: BaseException) -> CliError:
    """A failure to reach the server, or a connection that broke: exit code 3."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        # asyncio's message repeats the address; the errno's text says what happened.
        reason = os.strerror(error.errno) if error.errno else str(error) or "no answer"
        if isinstance(error, socket.gaierror):
            reason = error.strerror or str(error)
        return CliError(UNREACHABLE, f"{what}: cannot reach {url.origin()}: {reason}")
    if isinstance(exc, asyncio.TimeoutError):
        return CliError(UNREACHABLE, f"{what}: {url.origin()} did not answer in time")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return CliError(UNREACHABLE, f"{what}: the answer from {url.origin()} was cut short")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return CliError(UNREACHABLE, f"{what}: {url.origin()} closed the connection")
    if isinstance(exc, aiohttp.InvalidURL):
        return CliError(USAGE, f"{what}: {url} is not a valid URL")
    detail = str(exc) or type(exc).__name__
    return CliError(UNREACHABLE, f"{what}: the connection to {url.origin()} failed: {detail}")


#: What ``network_error`` takes: every way an aiohttp exchange fails short of an answer.
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
