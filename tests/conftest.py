"""Shared fixtures: the real servers (started once per session, see tests/servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Clamd, FakeGcs, MiB, Postgres, SeaweedS3

#: StreamMaxLength of the session clamd. Tests that need another limit, or that kill clamd,
#: start their own ``Clamd(...)`` (it is ready in a few tens of milliseconds).
CLAMD_MAX_STREAM = 128 * MiB


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def clamd(servers_dir: Path) -> Iterator[Clamd]:
    with Clamd(max_stream=CLAMD_MAX_STREAM, dir=servers_dir) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed(servers_dir: Path) -> Iterator[SeaweedS3]:
    with SeaweedS3(dir=servers_dir) as server:
        yield server


@pytest.fixture(scope="session")
def fake_gcs(servers_dir: Path) -> Iterator[FakeGcs]:
    with FakeGcs(dir=servers_dir) as server:
        yield server


@pytest.fixture(scope="session")
def postgres(servers_dir: Path) -> Iterator[Postgres]:
    """One cluster per session; tests take a fresh database each (``create_database``)."""
    with Postgres(dir=servers_dir) as server:
        yield server
