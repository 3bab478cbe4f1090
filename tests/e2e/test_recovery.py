"""Crash recovery (issue 14): a ``fileshare serve`` killed with SIGKILL in the middle of an
upload leaves an S3 multipart upload in the staging bucket (or, with single-write
promotion, under the permanent key: never an object); the next process's sweeper aborts it
once it is older than ``FILESHARE_STAGING_MAX_AGE``, and nothing is left."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ALICE_KEY
from tests.e2e.hostile import start_live
from tests.servers import SeaweedS3

MiB = 1024 * 1024


def _poll(check: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("promotion", ["copy", "single-write"])
def test_sigkill_mid_upload_then_restart_leaves_nothing(
    tmp_path: Path, clamd: Any, seaweed: SeaweedS3, promotion: str
) -> None:
    tag = uuid.uuid4().hex[:10]
    unscanned, permanent = f"crash-u-{tag}", f"crash-p-{tag}"
    s3 = seaweed.client()
    settings = {
        **seaweed.fileshare_env(unscanned, permanent),
        "FILESHARE_PART_SIZE": "5MiB",
        "FILESHARE_MAX_UPLOAD_SIZE": "64MiB",
        "FILESHARE_STAGING_MAX_AGE": "1",
        "FILESHARE_SWEEP_INTERVAL": "1",
        "FILESHARE_PROMOTION": promotion,
    }
    written = unscanned if promotion == "copy" else permanent

    def uploads() -> list[str]:
        return [u["Key"] for u in s3.list_multipart_uploads(Bucket=written).get("Uploads", [])]

    def objects(bucket: str) -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]

    first = start_live(tmp_path, clamd.address, **settings)
    live = next(first)
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (ALICE_KEY.encode(), 40 * MiB)
        )
        sock.sendall(b"c" * (16 * MiB))  # three parts: a multipart upload is under way
        _poll(lambda: uploads() != [], "the multipart upload")
        live.proc.kill()
        live.proc.wait()
    first.close()
    assert uploads() != []  # what a crash leaves: nobody aborted it

    second = start_live(tmp_path, clamd.address, **settings)
    restarted = next(second)
    try:
        _poll(lambda: uploads() == [], "the sweeper to abort the upload")
        assert objects(unscanned) == []
        assert objects(permanent) == []
        assert "recovery.swept" in restarted.log.read_text()
    finally:
        second.close()
