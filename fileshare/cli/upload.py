"""``fileshare upload FILE...``: stream each file as the raw body of ``POST /v1/files`` (or
``PUT /v1/files/{id}``), never holding more than one chunk of it in memory."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import mimetypes
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

import aiohttp
from tqdm import tqdm

from fileshare.cli import progress
from fileshare.cli.common import (
    MAX_ANSWER,
    NETWORK_ERRORS,
    OK,
    REFUSED,
    USAGE,
    ClientConfig,
    CliError,
    file_segment,
    network_error,
    refusal,
    session,
)

#: Read from disk and handed to aiohttp one at a time; aiohttp's writer waits for the
#: socket to drain before it asks for the next, so this (and its buffers) bounds memory.
CHUNK = 256 * 1024

#: What a compressed file's bytes are: mimetypes says "a tar, gzip-encoded" for .tar.gz,
#: but the body is sent as it is on disk (no Content-Encoding), so the type is the gzip's.
_ENCODED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="the files to upload")
    parser.add_argument("--name", help="its name on the server (one FILE; default: the base name)")
    parser.add_argument(
        "--id", dest="file_id", metavar="ID", help="upload under your own id, with PUT (one FILE)"
    )
    parser.add_argument(
        "--type",
        dest="content_type",
        metavar="MEDIA_TYPE",
        help="the Content-Type (default: guessed from the name, else application/octet-stream)",
    )
    parser.add_argument(
        "--attachment",
        action="store_true",
        help="print only the FHIR Attachment of each answer",
    )
    parser.add_argument(
        "--digest",
        action="store_true",
        help="send Content-Digest (sha-256): the server refuses bytes that do not match, and "
        "only hashes content it already has; reads each file twice",
    )


@dataclass(frozen=True)
class Source:
    """One file to send, as the user named it."""

    shown: str
    path: Path
    size: int
    name: str
    content_type: str


def guess_type(path: Path) -> str:
    media, encoding = mimetypes.guess_type(path.name, strict=False)
    if encoding is not None:
        return _ENCODED_TYPES.get(encoding, "application/octet-stream")
    return media or "application/octet-stream"


def sources(args: argparse.Namespace) -> list[Source]:
    """Every file checked before a byte is sent: a typo in the fifth name must not leave
    four uploaded and a usage error."""
    files: list[str] = args.files
    if len(files) > 1 and (args.name is not None or args.file_id is not None):
        raise CliError(USAGE, "--name and --id take exactly one FILE")
    found = []
    for shown in files:
        path = Path(shown)
        try:
            info = path.stat()
        except OSError as exc:
            raise CliError(USAGE, f"upload {shown}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise CliError(USAGE, f"upload {shown}: not a regular file")
        if not os.access(path, os.R_OK):
            raise CliError(USAGE, f"upload {shown}: permission denied")
        found.append(
            Source(
                shown=shown,
                path=path,
                size=info.st_size,
                name=args.name if args.name is not None else path.name,
                content_type=args.content_type or guess_type(path),
            )
        )
    return found


class _Reader:
    """The file as an async iterator of chunks, exactly ``size`` bytes long (the
    ``Content-Length`` sent). A local failure is kept here: aiohttp reports whatever the
    body iterator raises as a connection error, which it is not."""

    def __init__(self, source: Source, file: IO[bytes], bar: tqdm[NoReturn]) -> None:
        self._source = source
        self._file = file
        self._bar = bar
        self.error: CliError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        left = self._source.size
        while left > 0:
            try:
                chunk = await asyncio.to_thread(self._file.read, min(CHUNK, left))
            except OSError as exc:
                self.error = CliError(USAGE, f"upload {self._source.shown}: {exc.strerror}")
                raise
            if not chunk:
                self.error = CliError(
                    USAGE, f"upload {self._source.shown}: the file shrank while being sent"
                )
                raise self.error
            left -= len(chunk)
            self._bar.update(len(chunk))
            yield chunk
        # Every byte is out: what remains is the server's scan of it.
        self._bar.set_postfix_str("scanning", refresh=True)


def _sha256_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        left = size
        while left > 0 and (chunk := file.read(min(CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
    return "sha-256=:" + base64.b64encode(digest.digest()).decode() + ":"


async def _send(
    client: aiohttp.ClientSession,
    config: ClientConfig,
    source: Source,
    file_id: str | None,
    digest: bool,
) -> dict[str, object]:
    what = f"upload {source.shown}"
    if file_id is None:
        method, url = "POST", config.endpoint("v1", "files")
    else:
        method, url = "PUT", config.endpoint("v1", "files", file_segment(file_id))
    headers = {
        "Content-Type": source.content_type,
        # Declared, so that an oversized file is refused before it is sent, and a short
        # body is told from a complete one.
        "Content-Length": str(source.size),
    }
    try:
        if digest:
            headers["Content-Digest"] = await asyncio.to_thread(
                _sha256_digest, source.path, source.size
            )
        file = source.path.open("rb")
    except OSError as exc:
        raise CliError(USAGE, f"{what}: {exc.strerror}") from None
    with file, progress.bar(source.name, source.size) as bar:
        reader = _Reader(source, file, bar)
        try:
            async with client.request(
                method,
                url,
                params={"name": source.name},
                data=reader.chunks(),
                headers=headers,
            ) as response:
                if response.status >= 400:
                    raise await refusal(what, response)
                raw = await response.content.read(MAX_ANSWER)
        except NETWORK_ERRORS as exc:
            if reader.error is not None:
                raise reader.error from None
            raise network_error(what, url, exc) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CliError(REFUSED, f"{what}: {response.status}, but the answer is not a file")
    return answer


async def run(config: ClientConfig, args: argparse.Namespace, files: list[Source]) -> int:
    async with session(config) as client:
        for source in files:
            answer = await _send(client, config, source, args.file_id, args.digest)
            shown = answer.get("attachment") if args.attachment else answer
            # One JSON document a line, written as each file is done: a run stopped by a
            # failure has printed every upload before it.
            print(json.dumps(shown), flush=True)
    return OK
