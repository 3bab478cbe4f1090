"""Processes under measurement: fileshare as a separate server process, and /proc readings
(RSS high-water mark, CPU time) of any process on this machine."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tests.servers import HOST, free_port

REPO = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# ------------------------------------------------------------------------------ /proc


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def hwm_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM") * 1024


def reset_hwm(pid: int) -> bool:
    """Reset the RSS high-water mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by named processes between ``start`` and ``stop``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: self._read(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {
            name: round(self._read(pid) - self._before[name], 3) for name, pid in self.pids.items()
        }

    @staticmethod
    def _read(pid: int) -> float:
        try:
            return cpu_seconds(pid)
        except OSError:
            return 0.0


# ------------------------------------------------------------------------- fileshare


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class FileshareServer:
    """``python -m fileshare serve`` in its own process group, on a free port, with its
    index in a temporary directory; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, name: str, settings: Mapping[str, str], *, startup_timeout: float = 60.0):
        self.name = f"fileshare-{name}"
        self.settings = dict(settings)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "fileshare not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "fileshare.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FILESHARE_", "AWS_", "STORAGE_EMULATOR", "GOOGLE_"))
        }
        env.update(
            {
                "FILESHARE_HOST": HOST,
                "FILESHARE_PORT": str(self.port),
                "FILESHARE_PUBLIC_BASE_URL": self.url,
                "FILESHARE_DATA_DIR": str(self.workdir / "data"),
                "FILESHARE_LOG_FORMAT": "json",
                "FILESHARE_LOG_LEVEL": "WARNING",
                "FILESHARE_SHUTDOWN_GRACE": "2",
                **self.settings,
            }
        )
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [_python(), "-m", "fileshare", "serve"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"{self.name} exited with code {code}:\n{self.log_tail()}")
            if self._probe():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def _probe(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None and not os.environ.get("FILESHARE_KEEP_SERVERS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
