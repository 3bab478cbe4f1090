"""What a real ``fileshare serve`` process says when it cannot start: one line naming what
failed, exit code 2, no traceback — against real servers, or real closed ports.

Also: it waits for a clamd that is still coming up (a Kubernetes sidecar loading its
database), answering /healthz but not /readyz meanwhile, and SIGTERM ends that wait at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Clamd, FakeGcs, Postgres, SeaweedS3, free_port

ROOT = Path(__file__).resolve().parents[2]
KEYS = "dev:dev-key-0123456789abcdef"


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FILESHARE_API_KEYS": KEYS,
        "FILESHARE_DATA_DIR": str(tmp_path / "data"),
        "FILESHARE_PORT": str(free_port()),
        "FILESHARE_LOG_LEVEL": "ERROR",
        **settings,
    }


def _serve(env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fileshare", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed start prints (stderr holds nothing else at level ERROR)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fileshare: cannot start: "), lines[0]
    return lines[0].removeprefix("fileshare: cannot start: ")


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


# -- clamd ------------------------------------------------------------------------------------


def test_clamd_on_a_closed_port_is_named_after_the_start_timeout(tmp_path: Path) -> None:
    port = _closed_port()
    env = _env(
        tmp_path,
        FILESHARE_CLAMD=f"tcp://127.0.0.1:{port}",
        FILESHARE_CLAMD_START_TIMEOUT="1.5",
        FILESHARE_LOG_LEVEL="WARNING",
    )
    started = time.monotonic()
    done = _serve(env)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    *logs, last = done.stderr.strip().splitlines()
    assert last == (
        f"fileshare: cannot start: clamd at tcp://127.0.0.1:{port} does not answer: "
        "connection refused (waited 1.5 s, FILESHARE_CLAMD_START_TIMEOUT)"
    )
    # it said what it was waiting for while it waited, as JSON log lines
    events = [json.loads(line) for line in logs]
    waiting = [e for e in events if e["event"] == "clamd.waiting"]
    assert waiting, done.stderr
    assert waiting[0]["reason"] == "connection refused"
    assert took >= 1.5


def test_clamd_on_a_missing_unix_socket_is_named(tmp_path: Path) -> None:
    path = tmp_path / "clamd.sock"
    env = _env(tmp_path, FILESHARE_CLAMD=str(path), FILESHARE_CLAMD_START_TIMEOUT="0.5")
    assert _one_line(_serve(env)) == (
        f"clamd at unix://{path} does not answer: no such file or directory "
        "(waited 0.5 s, FILESHARE_CLAMD_START_TIMEOUT)"
    )


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # not listening (yet)


def _poll(check: Any, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Any]:
    """Start ``fileshare serve``; its stderr (the JSON log) goes to ``tmp_path/serve.log``."""
    procs: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "serve.log"

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fileshare", "serve"], env=env, cwd=ROOT, stderr=out
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _events(log: Path) -> list[str]:
    return [json.loads(line)["event"] for line in log.read_text().splitlines()]


def test_serve_waits_for_a_clamd_that_comes_up_late(tmp_path: Path, background: Any) -> None:
    clamd_port = _closed_port()
    env = _env(
        tmp_path,
        FILESHARE_CLAMD=f"tcp://127.0.0.1:{clamd_port}",
        FILESHARE_CLAMD_START_TIMEOUT="120",
        FILESHARE_LOG_LEVEL="INFO",
    )
    port = int(env["FILESHARE_PORT"])
    proc = background(env)
    # alive (liveness) but not ready while clamd is not there
    _poll(lambda: _get(port, "/healthz") == 200)
    assert _get(port, "/readyz") == 503
    log = tmp_path / "serve.log"
    _poll(lambda: "clamd.waiting" in _events(log))
    with Clamd(port=clamd_port, dir=tmp_path) as clamd:
        assert clamd.ping()
        _poll(lambda: "server.ready" in _events(log))
        assert _get(port, "/readyz") == 200
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    events = _events(log)
    assert events.index("clamd.waiting") < events.index("clamd.answered")
    assert events.index("clamd.answered") < events.index("server.ready")


def test_sigterm_during_the_clamd_wait_stops_at_once(tmp_path: Path, background: Any) -> None:
    env = _env(
        tmp_path,
        FILESHARE_CLAMD=f"tcp://127.0.0.1:{_closed_port()}",
        FILESHARE_CLAMD_START_TIMEOUT="600",
    )
    port = int(env["FILESHARE_PORT"])
    proc = background(env)
    _poll(lambda: _get(port, "/healthz") == 200)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - sent < 10  # not the 600 s of the wait
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_a_start_timeout_of_zero_starts_without_clamd(tmp_path: Path, background: Any) -> None:
    env = _env(
        tmp_path,
        FILESHARE_CLAMD=f"tcp://127.0.0.1:{_closed_port()}",
        FILESHARE_CLAMD_START_TIMEOUT="0",
    )
    port = int(env["FILESHARE_PORT"])
    proc = background(env)
    _poll(lambda: _get(port, "/healthz") == 200)
    assert _get(port, "/readyz") == 503  # readiness still reports it
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_a_taken_port_is_named_before_any_wait_for_clamd(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(
            tmp_path,
            FILESHARE_PORT=str(port),
            FILESHARE_CLAMD=f"tcp://127.0.0.1:{_closed_port()}",
            FILESHARE_CLAMD_START_TIMEOUT="600",
        )
        started = time.monotonic()
        line = _one_line(_serve(env))
    assert line == f"cannot listen on 127.0.0.1:{port}: the port is already in use"
    assert time.monotonic() - started < 60


# -- storage ----------------------------------------------------------------------------------


def _s3_env(tmp_path: Path, clamd: Clamd, endpoint: str, **settings: str) -> dict[str, str]:
    return _env(
        tmp_path,
        FILESHARE_CLAMD=clamd.address,
        FILESHARE_STORAGE="s3",
        FILESHARE_S3_ENDPOINT=endpoint,
        FILESHARE_UNSCANNED_BUCKET="startup-unscanned",
        FILESHARE_PERMANENT_BUCKET="startup-permanent",
        **settings,
    )


def test_an_s3_endpoint_that_refuses_is_named(tmp_path: Path, clamd: Clamd) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = _s3_env(
        tmp_path,
        clamd,
        endpoint,
        FILESHARE_S3_ACCESS_KEY="fileshare-test",
        FILESHARE_S3_SECRET_KEY="not-a-real-secret-key",
    )
    line = _one_line(_serve(env))
    assert line.startswith(f"storage (s3 at {endpoint}) is not usable: ")
    assert "Could not connect to the endpoint URL" in line
    assert "not-a-real-secret-key" not in line


def test_a_missing_s3_bucket_is_named(tmp_path: Path, clamd: Clamd, seaweed: SeaweedS3) -> None:
    seaweed.create_bucket("startup-unscanned")  # but not startup-permanent
    env = _s3_env(
        tmp_path,
        clamd,
        seaweed.endpoint,
        FILESHARE_S3_ACCESS_KEY=seaweed.access_key,
        FILESHARE_S3_SECRET_KEY=seaweed.secret_key,
    )
    line = _one_line(_serve(env))
    assert line.startswith(f"storage (s3 at {seaweed.endpoint}) is not usable: ")
    assert line.endswith("bucket startup-permanent: not found (404)")


def test_refused_s3_credentials_are_named(tmp_path: Path, clamd: Clamd, seaweed: SeaweedS3) -> None:
    seaweed.create_bucket("startup-unscanned")
    seaweed.create_bucket("startup-permanent")
    env = _s3_env(
        tmp_path,
        clamd,
        seaweed.endpoint,
        FILESHARE_S3_ACCESS_KEY=seaweed.access_key,
        FILESHARE_S3_SECRET_KEY="wrong-secret-0123456789",
    )
    line = _one_line(_serve(env))
    assert line.startswith(f"storage (s3 at {seaweed.endpoint}) is not usable: ")
    assert "403" in line
    assert "wrong-secret" not in line


def _seaweed_env(
    tmp_path: Path, clamd: Clamd, seaweed: SeaweedS3, **settings: str
) -> dict[str, str]:
    """Both start-up buckets on SeaweedFS, with credentials that work."""
    seaweed.create_bucket("startup-unscanned")
    seaweed.create_bucket("startup-permanent")
    return _s3_env(
        tmp_path,
        clamd,
        seaweed.endpoint,
        FILESHARE_S3_ACCESS_KEY=seaweed.access_key,
        FILESHARE_S3_SECRET_KEY=seaweed.secret_key,
        **settings,
    )


def _readiness_then_log(
    proc: subprocess.Popen[bytes], port: int, log: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Once ready: the /readyz answer; then SIGTERM, and the process's log lines."""
    _poll(lambda: proc.poll() is not None or _get(port, "/readyz") == 200)
    assert proc.poll() is None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
        ready = json.load(resp)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return ready, [json.loads(line) for line in log.read_text().splitlines()]


def test_an_s3_bucket_that_would_keep_phi_unencrypted_stops_the_start(
    tmp_path: Path, clamd: Clamd, seaweed: SeaweedS3
) -> None:
    """``default`` trusts the bucket's own encryption; SeaweedFS applies none, so the probe
    object comes back plain and fileshare refuses to run (fail closed, before any upload)."""
    env = _seaweed_env(tmp_path, clamd, seaweed, FILESHARE_STORAGE_ENCRYPTION="default")
    line = _one_line(_serve(env))
    assert line.startswith(f"storage (s3 at {seaweed.endpoint}) is not usable: ")
    assert "bucket startup-unscanned keeps objects unencrypted" in line


def test_serve_verifies_and_reports_encryption_at_rest(
    tmp_path: Path, clamd: Clamd, seaweed: SeaweedS3, background: Any
) -> None:
    env = _seaweed_env(tmp_path, clamd, seaweed, FILESHARE_LOG_LEVEL="INFO")
    ready, lines = _readiness_then_log(
        background(env), int(env["FILESHARE_PORT"]), tmp_path / "serve.log"
    )
    protection = ready["protection"]
    assert protection["atRest"] == "SSE-S3 (AES256) on every write"
    assert protection["verified"] is True  # what was found is for the log, not the public
    assert protection["plaintext"] == []
    [said] = [e for e in lines if e["event"] == "storage.encryption"]
    assert said["mode"] == "sse-s3"
    assert said["found"].startswith(
        "SSE-S3 (AES256) on every write; verified on startup-unscanned; "
    )


def test_a_plaintext_dependency_is_named_loudly_at_every_start(
    tmp_path: Path, clamd: Clamd, background: Any
) -> None:
    """A host listed in FILESHARE_PLAINTEXT_HOSTS may be reached without TLS, and each start
    says so as a warning (here the JWKS of an issuer on a name that is not loopback)."""
    env = _env(
        tmp_path,
        FILESHARE_CLAMD=clamd.address,
        FILESHARE_LOG_LEVEL="WARNING",
        FILESHARE_PLAINTEXT_HOSTS="idp.mesh.internal",
        FILESHARE_JWT_ISSUERS=json.dumps(
            [
                {
                    "issuer": "https://idp.example.org/",
                    "jwks_url": "http://idp.mesh.internal/jwks",
                    "audience": "fileshare",
                }
            ]
        ),
    )
    ready, lines = _readiness_then_log(
        background(env), int(env["FILESHARE_PORT"]), tmp_path / "serve.log"
    )
    assert ready["protection"]["plaintext"] == ["jwks"]
    warned = [e for e in lines if e["event"] == "transport.plaintext"]
    assert [(e["dependency"], e["host"], e["level"]) for e in warned] == [
        ("jwks", "idp.mesh.internal", "warning")
    ]


def test_a_missing_gcs_bucket_is_named(tmp_path: Path, clamd: Clamd, fake_gcs: FakeGcs) -> None:
    fake_gcs.create_bucket("startup-gcs-unscanned")
    env = _env(
        tmp_path,
        FILESHARE_CLAMD=clamd.address,
        FILESHARE_STORAGE="gcs",
        FILESHARE_GCS_ENDPOINT=fake_gcs.endpoint,
        FILESHARE_UNSCANNED_BUCKET="startup-gcs-unscanned",
        FILESHARE_PERMANENT_BUCKET="startup-gcs-permanent",
    )
    line = _one_line(_serve(env))
    assert line.startswith(f"storage (gcs at {fake_gcs.endpoint}) is not usable: ")
    assert line.endswith("GCS bucket startup-gcs-permanent: not found")


# -- index ------------------------------------------------------------------------------------


def test_a_postgresql_dsn_to_a_closed_port_is_named(tmp_path: Path, clamd: Clamd) -> None:
    port = _closed_port()
    env = _env(
        tmp_path,
        FILESHARE_CLAMD=clamd.address,
        FILESHARE_INDEX_URL=f"postgresql://fileshare:Sup3r-s3cret@127.0.0.1:{port}/fileshare",
    )
    line = _one_line(_serve(env))
    assert line.startswith(f"postgres (postgresql://fileshare:***@127.0.0.1:{port}/fileshare)")
    assert "refused" in line.lower()
    assert "Sup3r-s3cret" not in line


def test_a_postgresql_database_that_does_not_exist_is_named(
    tmp_path: Path, clamd: Clamd, postgres: Postgres
) -> None:
    dsn = postgres.dsn_for("no_such_database")
    env = _env(tmp_path, FILESHARE_CLAMD=clamd.address, FILESHARE_INDEX_URL=dsn)
    line = _one_line(_serve(env))
    assert line.startswith("postgres (")
    assert "no_such_database" in line
    assert "does not exist" in line


# -- the example settings file ----------------------------------------------------------------


def test_the_example_file_works_as_fileshare_config_from_the_repository_root() -> None:
    """As the README says: ``FILESHARE_CONFIG=config/fileshare.example.env fileshare
    check-config``, a path relative to the working directory."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FILESHARE_CONFIG": "config/fileshare.example.env",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fileshare", "check-config"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "storage:  local directory data;" in done.stdout
    assert "clamd:    tcp://127.0.0.1:3310" in done.stdout
    assert "1 principal(s): dev" in done.stdout
    assert "dev-key-change-me" not in done.stdout
    # a file that is not there is one line naming it
    missing = subprocess.run(
        [sys.executable, "-m", "fileshare", "check-config"],
        env=env | {"FILESHARE_CONFIG": "config/no-such.env"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "fileshare: configuration error: FILESHARE_CONFIG: cannot read config/no-such.env: "
        "No such file or directory"
    )
