"""``fileshare audit verify``: walk the audit trail's hash chain in the index of the server's
settings (``FILESHARE_*``) and say whether it is intact.

It only reads: the index is opened without migrating (a running deployment's schema is
never changed under it, and an SQLite file that is not there is never created), and every
transaction is a read. Exit codes: 0 intact, 1 broken (the first row it concerns and why),
2 the settings are wrong or the index cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fileshare.config import Settings

# The index and settings are imported when the command runs: ``__main__`` builds every
# command's parser, and ``fileshare upload`` must not load the server to do so.

COMMANDS = ("audit",)
INTACT, BROKEN, UNREADABLE = 0, 1, 2


def add_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="check the audit trail")
    actions = audit.add_subparsers(dest="action", required=True)
    actions.add_parser(
        "verify",
        help="walk the audit trail's hash chain: exit 0 intact, 1 broken, 2 unreadable",
        description="Check every row of the audit trail against its hash and the row before "
        "it, and the chain's head against the last row, in the index named by the server's "
        "settings (FILESHARE_INDEX_URL or the SQLite file). Reads only: nothing is migrated.",
    )


async def verify(settings: Settings) -> tuple[int, str]:
    """The exit code and the line to print."""
    from fileshare.index.audit import AuditStore
    from fileshare.index.base import IndexUnavailable
    from fileshare.index.engine import POSTGRES_SCHEMES, open_sql_index

    url = settings.index_url
    postgres = url is not None and url.lower().startswith(POSTGRES_SCHEMES)
    if not postgres and not settings.sqlite_path.is_file():
        return UNREADABLE, f"fileshare: no index at {settings.sqlite_path}"
    try:
        index = await open_sql_index(url=url, sqlite_path=settings.sqlite_path, migrate=False)
    except IndexUnavailable as exc:
        return UNREADABLE, f"fileshare: cannot read the audit trail: {exc}"
    try:
        checked, broken = await AuditStore(index).verify()
    except IndexUnavailable as exc:
        return UNREADABLE, f"fileshare: cannot read the audit trail: {exc}"
    finally:
        await index.close()
    if broken is not None:
        return BROKEN, f"audit trail broken at row {broken.seq}: {broken.reason}"
    return INTACT, f"audit trail intact: {checked} rows"


def run(args: argparse.Namespace) -> int:
    from fileshare.config import settings_or_report

    settings = settings_or_report()
    if settings is None:
        return UNREADABLE
    code, line = asyncio.run(verify(settings))
    print(line, file=sys.stdout if code in (INTACT, BROKEN) else sys.stderr)
    return code
