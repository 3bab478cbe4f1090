"""Independent views of what the server left behind: the stores through their own clients
(botocore for SeaweedFS, the JSON API for fake-gcs-server, the directory itself for local
storage) and the index through the database (psql, sqlite3) — never through fileshare's
own storage or index code, whose bugs they are there to catch."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from tests.servers import FakeGcs, Postgres, SeaweedS3


class StoreProbe(Protocol):
    kind: str

    def keys(self, bucket: str) -> list[str]:
        """Every committed object key in ``bucket``."""

    def unfinished(self, bucket: str) -> list[str] | None:
        """Writes begun and never finished or aborted (S3 multipart uploads, local partial
        writes); None where the store cannot list them (GCS resumable sessions)."""

    def plant(self, bucket: str, key: str) -> None:
        """Write a small object (the smoke test plants a leak to prove the check sees it)."""


class IndexProbe(Protocol):
    kind: str

    def files(self) -> list[tuple[str, str, str, str]]:
        """(owner, id, sha256, name) of every file record."""

    def contents(self) -> list[tuple[str, str, str]]:
        """(sha256, state, object key or "") of every content row."""

    def doomed(self) -> list[str]:
        """Object keys listed for removal."""


# ------------------------------------------------------------------------------ stores


class S3Probe:
    kind = "s3"

    def __init__(self, seaweed: SeaweedS3) -> None:
        self.client: Any = seaweed.client()

    def keys(self, bucket: str) -> list[str]:
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            found += [o["Key"] for o in page.get("Contents", [])]
        return found

    def unfinished(self, bucket: str) -> list[str]:
        found: list[str] = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            found += [f"{u['Key']} (upload {u['UploadId']})" for u in page.get("Uploads", [])]
        return found

    def plant(self, bucket: str, key: str) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=b"planted by the soak test")

    def plant_unfinished(self, bucket: str, key: str) -> str:
        return str(self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)


class GcsProbe:
    kind = "gcs"

    def __init__(self, gcs: FakeGcs) -> None:
        self.gcs = gcs

    def keys(self, bucket: str) -> list[str]:
        found: list[str] = []
        token: str | None = None
        while True:
            query = {"maxResults": "1000"} | ({"pageToken": token} if token else {})
            status, raw = self.gcs.request(
                "GET", f"/storage/v1/b/{quote(bucket, safe='')}/o?{urlencode(query)}"
            )
            if status != 200:
                raise RuntimeError(f"GCS list {bucket}: HTTP {status} {raw[:200]!r}")
            doc = json.loads(raw)
            found += [item["name"] for item in doc.get("items", [])]
            token = doc.get("nextPageToken")
            if not token:
                return found

    def unfinished(self, bucket: str) -> None:
        return None  # resumable sessions are not listable (they expire on their own)

    def plant(self, bucket: str, key: str) -> None:
        status, raw = self.gcs.request(
            "POST",
            f"/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=media&name={quote(key)}",
            b"planted by the soak test",
            {"Content-Type": "application/octet-stream"},
        )
        if status != 200:
            raise RuntimeError(f"GCS plant: HTTP {status} {raw[:200]!r}")


class LocalProbe:
    """``storage.local``'s layout: ``<bucket>/<key>`` symlinks into ``.objects``, writes in
    progress under ``.partial``."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def keys(self, bucket: str) -> list[str]:
        base = self.root / bucket
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(base)
            if rel == Path("."):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                if (Path(dirpath) / name).is_symlink():
                    found.append(str(rel / name) if rel != Path(".") else name)
        return found

    def unfinished(self, bucket: str) -> list[str]:
        base = self.root / bucket
        found = [f".partial/{e.name}" for e in _entries(base / ".partial")]
        linked = set()
        for key in self.keys(bucket):
            with contextlib.suppress(OSError):
                linked.add((base / key).resolve().name)
        found += [
            f".objects/{e.name} (no key links to it)"
            for e in _entries(base / ".objects")
            if e.name not in linked
        ]
        return found

    def plant(self, bucket: str, key: str) -> None:
        target = self.root / bucket / ".objects" / "planted"
        target.mkdir(parents=True, exist_ok=True)
        (target / "data").write_bytes(b"planted by the soak test")
        link = self.root / bucket / key
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))


def _entries(path: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(path))
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------------------- index


class PostgresProbe:
    kind = "postgres"

    def __init__(self, pg: Postgres, database: str) -> None:
        self.pg = pg
        self.database = database

    def _rows(self, sql: str) -> list[list[str]]:
        out = self.pg.psql(sql, database=self.database)
        return [line.split("|") for line in out.splitlines() if line]

    def files(self) -> list[tuple[str, str, str, str]]:
        rows = self._rows("SELECT owner, id, sha256, coalesce(name, '') FROM files")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def contents(self) -> list[tuple[str, str, str]]:
        rows = self._rows("SELECT sha256, state, coalesce(object_key, '') FROM contents")
        return [(r[0], r[1], r[2]) for r in rows]

    def doomed(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT object_key FROM doomed_objects")]


class SqliteProbe:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
            return db.execute(sql).fetchall()

    def files(self) -> list[tuple[str, str, str, str]]:
        rows = self._rows("SELECT owner, id, sha256, coalesce(name, '') FROM files")
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def contents(self) -> list[tuple[str, str, str]]:
        rows = self._rows("SELECT sha256, state, coalesce(object_key, '') FROM contents")
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def doomed(self) -> list[str]:
        return [str(k) for (k,) in self._rows("SELECT object_key FROM doomed_objects")]
