"""The README's tour runs as written against the run command's server.

``bash scripts/run.sh`` is started as a newcomer would (it sets up, starts its clamd and
serves on 127.0.0.1:8080), then every ```sh block the README marks with ``<!-- tour -->`` is
run, in order, as one bash script with ``set -euo pipefail``, in a fresh directory holding
the checkout's ``.venv`` (the README's commands run in a checkout). When port 8080 is taken
on this machine the server gets another, and the tour's URLs and ``FILESHARE_URL`` follow it:
the only change ever made to the commands.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOUR = re.compile(r"<!-- tour -->\n```sh\n(.*?)\n```", re.DOTALL)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tour_script() -> str:
    blocks = TOUR.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 4, "the README lost its tour"
    return "\n".join(blocks)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run.sh exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (our own server)
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # polling a condition with a deadline
    pytest.fail(f"run.sh did not get ready:\n{log.read_text()[-3000:]}")


@pytest.mark.timeout(600)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    port = 8080 if _free(8080) else _any_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FILESHARE_PORT": str(port),
        "FILESHARE_PUBLIC_BASE_URL": base,
        "CLAMD_PORT": str(_any_port()),
        "FILESHARE_DATA_DIR": str(tmp_path / "data"),
        "FILESHARE_LOG_FORMAT": "json",
    }
    for name in ("FILESHARE_KEY", "FILESHARE_TOKEN", "FILESHARE_URL", "FILESHARE_CONFIG"):
        env.pop(name, None)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["bash", "scripts/run.sh"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(f"{base}/readyz", server, log, time.monotonic() + 420)
        work = tmp_path / "tour"
        work.mkdir()
        (work / ".venv").symlink_to(REPO / ".venv")
        script = tour_script().replace("http://127.0.0.1:8080", base)
        shell_env = {k: v for k, v in env.items() if not k.startswith(("FILESHARE_", "CLAMD_"))}
        shell_env["FILESHARE_URL"] = base
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
        out = done.stdout
        assert "the same bytes" in out
        assert '"name": "report.pdf"' in out or '"name":"report.pdf"' in out
        # no answer of the tour is an error, apart from the refusals it shows on purpose
        assert '"code": "unauthenticated"' not in out
        assert '"code":"unauthenticated"' not in out
        assert (work / "copy.txt").read_bytes() == (work / "hello.txt").read_bytes()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
