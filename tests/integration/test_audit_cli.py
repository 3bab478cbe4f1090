"""``fileshare audit verify`` as a subprocess, on a real SQLite index (written through the
index, then tampered with by plain sqlite3 as someone with file access would) and on a real
PostgreSQL database; an index it cannot read; and proof that it never migrates or creates."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fileshare.audit import Action, AuditEvent
from fileshare.config import Settings
from fileshare.index.audit import AuditStore
from fileshare.index.factory import open_index
from tests.servers import Postgres, free_port

ROOT = Path(__file__).resolve().parents[2]
KEYS = "dev:dev-key-0123456789abcdef"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def verify(**settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FILESHARE_API_KEYS": KEYS,
        "FILESHARE_LOG_LEVEL": "ERROR",
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", "fileshare", "audit", "verify"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def write_trail(settings: Settings, rows: int) -> None:
    async with open_index(settings) as index:
        store = AuditStore(index)
        for n in range(1, rows + 1):
            event = AuditEvent(
                action=Action.FILE_UPLOAD,
                subject="alice",
                owner="alice",
                file_id=f"f{n}",
                detail={"n": n, "created": True},
            )
            await store.record(event, now=T0 + timedelta(seconds=n))


def sqlite_settings(tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    path = tmp_path / "index.sqlite3"
    settings = Settings(api_keys={"dev": "x" * 20}, data_dir=tmp_path, index_path=path)
    return settings, {"FILESHARE_DATA_DIR": str(tmp_path), "FILESHARE_INDEX_PATH": str(path)}


def tamper(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql)


async def test_an_intact_trail_then_each_kind_of_tampering(tmp_path: Path) -> None:
    settings, env = sqlite_settings(tmp_path)
    await write_trail(settings, 5)
    path = settings.sqlite_path

    done = verify(**env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "audit trail intact: 5 rows\n", "")

    tamper(path, "UPDATE audit_events SET subject = 'mallory' WHERE seq = 2")
    done = verify(**env)
    assert done.returncode == 1, done.stderr
    assert done.stdout == "audit trail broken at row 2: it was changed after it was written\n"

    tamper(path, "UPDATE audit_events SET subject = 'alice' WHERE seq = 2")
    assert verify(**env).returncode == 0  # put back exactly: intact again
    tamper(path, "DELETE FROM audit_events WHERE seq = 3")
    done = verify(**env)
    assert (done.returncode, done.stdout) == (1, "audit trail broken at row 3: row 3 is missing\n")

    tamper(path, "DELETE FROM audit_events WHERE seq > 3")
    done = verify(**env)
    assert done.returncode == 1
    assert done.stdout.startswith("audit trail broken at row 3: row 3 is missing")


async def test_an_empty_trail_is_intact(tmp_path: Path) -> None:
    settings, env = sqlite_settings(tmp_path)
    await write_trail(settings, 0)
    done = verify(**env)
    assert (done.returncode, done.stdout) == (0, "audit trail intact: 0 rows\n")


def test_it_never_creates_nor_migrates_an_index(tmp_path: Path) -> None:
    _, env = sqlite_settings(tmp_path)
    missing = Path(env["FILESHARE_INDEX_PATH"])
    done = verify(**env)
    assert done.returncode == 2
    assert done.stderr == f"fileshare: no index at {missing}\n"
    assert not missing.exists()

    # An SQLite file without the schema (a deployment not yet migrated): read, not changed.
    with sqlite3.connect(missing) as db:
        db.execute("CREATE TABLE unrelated (x INTEGER)")
    done = verify(**env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no such table: audit_" in done.stderr  # names what it could not read
    with sqlite3.connect(missing) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"unrelated"}


async def test_on_postgres(tmp_path: Path, postgres: Postgres) -> None:
    name = f"auditcli_{uuid.uuid4().hex[:12]}"
    dsn = postgres.create_database(name)
    settings = Settings(api_keys={"dev": "x" * 20}, data_dir=tmp_path, index_url=dsn)
    await write_trail(settings, 4)
    env = {"FILESHARE_DATA_DIR": str(tmp_path), "FILESHARE_INDEX_URL": dsn}
    done = verify(**env)
    assert (done.returncode, done.stdout) == (0, "audit trail intact: 4 rows\n"), done.stderr
    postgres.psql(
        'UPDATE audit_events SET detail = \'{"n": 9, "created": true}\' WHERE seq = 4',
        database=name,
    )
    done = verify(**env)
    assert (done.returncode, done.stdout) == (
        1,
        "audit trail broken at row 4: it was changed after it was written\n",
    )


def test_an_unreachable_index_is_one_line_without_the_password(tmp_path: Path) -> None:
    dsn = f"postgresql://fileshare:s3cret-pw@127.0.0.1:{free_port()}/fileshare"
    done = verify(FILESHARE_DATA_DIR=str(tmp_path), FILESHARE_INDEX_URL=dsn)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fileshare: cannot read the audit trail: postgres (")
    assert "s3cret-pw" not in done.stderr


def test_a_configuration_error_is_exit_2(tmp_path: Path) -> None:
    done = verify(FILESHARE_DATA_DIR=str(tmp_path), FILESHARE_API_KEYS="")
    assert done.returncode == 2
    assert done.stderr.startswith("fileshare: configuration error: ")
