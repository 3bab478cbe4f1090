"""``fileshare download ID``: stream ``GET /v1/files/{id}`` into a temporary file beside the
target, check it against the server's sha256, and only then give it the final name — an
interrupted or corrupted download never leaves a truncated file under that name."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import aiohttp

from fileshare.cli import progress
from fileshare.cli.common import (
    NETWORK_ERRORS,
    OK,
    UNREACHABLE,
    USAGE,
    ClientConfig,
    CliError,
    file_segment,
    network_error,
    refusal,
    session,
)

CHUNK = 256 * 1024
#: fileshare's ETag is the quoted hex sha256 of the bytes.
_SHA256_ETAG = re.compile(r'"([0-9a-f]{64})"')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file_id", metavar="ID", help="the file's id")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write it: a file, a directory, or - for stdout "
        "(default: the file's name, else its id, in the current directory)",
    )
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")


def safe_name(name: str | None, fallback: str) -> str:
    """The server's name for the file as a name in a directory: no path (the last segment
    only), no leading dots (no hidden file, no ``..``), nothing unprintable."""
    if not name:
        return fallback
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in last if c.isprintable()).strip().lstrip(".").strip()
    return cleaned or fallback


def _refuse_existing(what: str, path: Path) -> CliError:
    return CliError(USAGE, f"{what}: {path} exists (use --force to replace it)")


def _target(output: str | None) -> Path | None:
    """The output path when the user chose one; None: the server's name decides."""
    if output is None or Path(output).is_dir():
        return None
    return Path(output)


async def _write_all(
    response: aiohttp.ClientResponse, out: BinaryIO, what: str, total: int | None, label: str
) -> None:
    """Copy the body, hashing it, and check it against ETag (and Content-Length, which
    aiohttp enforces: a short body raises ``ClientPayloadError``)."""
    digest = hashlib.sha256()
    with progress.bar(label, total) as bar:
        async for chunk in response.content.iter_chunked(CHUNK):
            digest.update(chunk)
            try:
                await asyncio.to_thread(out.write, chunk)
            except OSError as exc:
                # Local (a full disk, a closed pipe), not the network's: nothing was kept.
                raise CliError(USAGE, f"{what}: cannot write {label}: {exc.strerror}") from None
            bar.update(len(chunk))
    etag = _SHA256_ETAG.fullmatch(response.headers.get("ETag", ""))
    if etag and digest.hexdigest() != etag.group(1):
        raise CliError(UNREACHABLE, f"{what}: the bytes received do not match their sha256")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _place(what: str, temporary: Path, final: Path, force: bool) -> None:
    """Give the finished file its name. Without --force, a hard link is the atomic
    "create only": a file that appeared meanwhile is never replaced."""
    if force:
        os.replace(temporary, final)
        return
    try:
        os.link(temporary, final)
    except FileExistsError:
        raise _refuse_existing(what, final) from None
    except OSError:
        # A file system without hard links: the check and the rename are two steps.
        if final.exists():
            raise _refuse_existing(what, final) from None
        os.replace(temporary, final)
        return
    temporary.unlink()


async def _to_file(
    response: aiohttp.ClientResponse, what: str, final: Path, force: bool, total: int | None
) -> None:
    try:
        fd, name = tempfile.mkstemp(
            dir=final.parent, prefix=f".{final.name[:200]}.", suffix=".part"
        )
    except OSError as exc:
        raise CliError(USAGE, f"{what}: cannot write in {final.parent}: {exc.strerror}") from None
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            await _write_all(response, out, what, total, final.name)
        try:
            # mkstemp makes it private (0600); the file gets what any new file would.
            os.chmod(temporary, 0o666 & ~_umask())
            _place(what, temporary, final, force)
        except OSError as exc:  # local, not the network's (which would be exit code 3)
            raise CliError(USAGE, f"{what}: cannot write {final}: {exc.strerror}") from None
    finally:
        _discard(temporary)


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def run(config: ClientConfig, args: argparse.Namespace) -> int:
    file_id: str = args.file_id
    what = f"download {file_id}"
    url = config.endpoint("v1", "files", file_segment(file_id))
    to_stdout = args.output == "-"
    chosen = None if to_stdout else _target(args.output)
    # Refused before asking the server: nothing to download for nothing.
    if chosen is not None and chosen.exists() and not args.force:
        raise _refuse_existing(what, chosen)
    async with session(config) as client:
        try:
            # The file's own bytes, never a compressed rendering of them.
            async with client.get(url, headers={"Accept-Encoding": "identity"}) as response:
                if response.status >= 400:
                    raise await refusal(what, response)
                total = response.content_length
                if to_stdout:
                    await _write_all(response, sys.stdout.buffer, what, total, file_id)
                    sys.stdout.flush()
                    return OK
                final = chosen
                if final is None:
                    disposition = response.content_disposition
                    name = safe_name(disposition.filename if disposition else None, file_id)
                    final = Path(args.output or ".") / name
                    if final.exists() and not args.force:
                        raise _refuse_existing(what, final)
                await _to_file(response, what, final, args.force, total)
        except NETWORK_ERRORS as exc:
            raise network_error(what, url, exc) from None
    # Where it went (the server may have chosen the name), for a script to pick up.
    print(final, flush=True)
    return OK
