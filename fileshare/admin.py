"""The service's own commands: ``serve`` runs it, ``check-config`` validates the settings,
``migrate`` brings the index's schema up to date. (The client's commands are in ``cli/``;
``__main__`` only dispatches, so that ``fileshare upload`` never loads the server.)"""

from __future__ import annotations

import asyncio
import sys

from fileshare.config import GiB, MiB, Settings, settings_or_report
from fileshare.index.base import IndexUnavailable
from fileshare.index.engine import redact_dsn
from fileshare.index.factory import open_index
from fileshare.logging import configure_logging
from fileshare.server import StartupError, serve


def run(command: str) -> int:
    settings = settings_or_report()
    if settings is None:
        return 2
    if command == "check-config":
        print(summary(settings))
        return 0
    configure_logging(settings.log_format, settings.log_level)
    if command == "migrate":
        return asyncio.run(_migrate(settings))
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"fileshare: cannot start: {exc}", file=sys.stderr)
        return 2
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


def summary(settings: Settings) -> str:
    """What ``check-config`` prints: readable, and without a secret."""
    if settings.storage == "s3":
        where = f"s3 at {settings.s3_endpoint or 'AWS'} ({settings.s3_region})"
    elif settings.storage == "gcs":
        where = f"gcs at {settings.gcs_endpoint or 'Google'}"
    else:
        where = f"local directory {settings.data_dir}"
    index = (
        f"postgresql {redact_dsn(settings.index_url)}"
        if settings.index_url
        else f"sqlite {settings.sqlite_path}"
    )
    lines = [
        f"storage:  {where}; buckets {settings.unscanned_bucket} (unscanned), "
        f"{settings.permanent_bucket} (permanent)",
        f"index:    {index}",
        f"clamd:    {settings.clamd} (at most {settings.clamd_max_scans} scans at once)",
        f"limits:   uploads up to {_human(settings.max_upload_size)}, memory budget "
        f"{_human(settings.memory_budget)} ({_human(settings.per_upload_memory)} per upload), "
        f"parts of {_human(settings.part_size)}",
        f"http:     {settings.host}:{settings.port}, public URLs {settings.base_url}",
        f"api keys: {len(settings.api_keys)} principal(s): {', '.join(sorted(settings.api_keys))}",
        f"tokens:   {len(settings.jwt_issuers)} external issuer(s)"
        + "".join(f"; {i.issuer} (keys {i.jwks_url})" for i in settings.jwt_issuers)
        + ("; JWKS over plain http allowed (development)" if settings.jwks_allow_http else ""),
        f"at rest:  {settings.encryption.describe(settings.storage)}",
        _transport(settings),
        f"logs:     {settings.log_format}, {settings.log_level.upper()}",
    ]
    return "\n".join(lines)


def _transport(settings: Settings) -> str:
    plain = settings.plaintext_uses()
    if not plain:
        return "transport: TLS to every dependency outside loopback"
    return "transport: WARNING plaintext to " + ", ".join(f"{p.what} ({p.host})" for p in plain)


def _human(size: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
