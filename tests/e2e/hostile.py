"""A live ``fileshare serve`` to send raw bytes at, and a raw HTTP/1.1 exchange.

The hostile-input suite and the HTTP-edge tests need what an HTTP client library will not
send (NUL in a header, obs-fold, two Content-Lengths, an HTTP/2.0 request line), so they
write bytes to a socket and read the answer back as bytes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ALICE_KEY, BOB_KEY
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Answer:
    """One exchange: interim answers (``100 Continue``), then the final one."""

    raw: bytes
    interim: list[int] = field(default_factory=list)
    status: int = 0
    version: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: The server closed the connection after the answer.
    closed: bool = False

    @property
    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), (
            self.raw[:600]
        )
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


def parse_answer(raw: bytes, closed: bool) -> Answer:
    answer = Answer(raw=raw, closed=closed)
    rest = raw
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"no complete answer: {raw[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        if 100 <= int(status) < 200:
            answer.interim.append(int(status))
            continue
        answer.version, answer.status = version, int(status)
        for line in lines[1:]:
            name, _, value = line.partition(":")
            answer.headers[name.strip().lower()] = value.strip()
        length = int(answer.headers.get("content-length", len(rest)))
        answer.body = rest[:length]
        break
    return answer


def exchange(
    port: int,
    data: bytes,
    *,
    then: bytes | None = None,
    timeout: float = 10.0,
    check_close: bool = False,
) -> Answer:
    """Send ``data``; read one answer (to its Content-Length, or until the server closes).
    With ``then``: send it after the first interim answer or after 0.5 s without one, as a
    client honouring ``Expect: 100-continue`` does. With ``check_close``: wait a moment to
    see whether the server closes the connection after a complete answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        closed = False
        deadline = time.monotonic() + timeout
        sent_then = then is None
        while time.monotonic() < deadline:
            if not sent_then:
                sock.settimeout(0.5)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not sent_then and then is not None:
                    sock.sendall(then)
                    sent_then = True
                    sock.settimeout(timeout)
                    continue
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            if not sent_then and then is not None and b" 100 " in got.split(b"\r\n", 1)[0]:
                sock.sendall(then)
                sent_then = True
                sock.settimeout(timeout)
            if _complete(got):
                break
        if check_close and not closed and _complete(got):
            closed = _closes(sock)
    return parse_answer(got, closed)


def _complete(got: bytes) -> bool:
    rest = got
    while True:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return False
        status = int(head.split(b" ", 2)[1])
        if 100 <= status < 200:
            continue
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                return len(rest) >= int(line.split(b":", 1)[1])
        return False  # no length: until close


def _closes(sock: socket.socket) -> bool:
    """Whether the server closes the connection within a moment (a refused request whose
    body was not read must not be followed by another on the same connection)."""
    sock.settimeout(3.0)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


@dataclass
class Live:
    port: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self, path: str = "/healthz") -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}{path}", timeout=5) as resp:  # noqa: S310
                return int(resp.status) == 200
        except OSError:
            return False

    def stored(self) -> list[str]:
        """Every key in both buckets, and every object version and unfinished write behind
        them (the local backend: keys are links, versions live in ``.objects``, writes in
        progress in ``.partial``)."""
        found = []
        for bucket in ("unscanned", "permanent"):
            root = self.data / bucket
            assert (root / ".objects").is_dir(), f"not the local backend's layout: {root}"
            found += [
                str(p.relative_to(self.data))
                for p in root.rglob("*")
                if p.is_file() or p.is_symlink()
            ]
        return sorted(found)


def start_live(tmp: Path, clamd_address: str, **settings: str) -> Iterator[Live]:
    port = free_port()
    data = tmp / "data"
    log = tmp / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FILESHARE_")},
        "FILESHARE_STORAGE": "local",
        "FILESHARE_DATA_DIR": str(data),
        "FILESHARE_CLAMD": clamd_address,
        "FILESHARE_PORT": str(port),
        "FILESHARE_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "FILESHARE_MAX_UPLOAD_SIZE": "16MiB",
        "FILESHARE_LOG_FORMAT": "json",
        "FILESHARE_LOG_LEVEL": "DEBUG",
        "FILESHARE_SHUTDOWN_GRACE": "1",
        **settings,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fileshare", "serve"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    live = Live(port, data, log, proc)
    try:
        deadline = time.monotonic() + 60
        while not live.healthy("/readyz"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "fileshare did not start"
            time.sleep(0.05)
        yield live
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
