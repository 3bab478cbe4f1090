"""The ``fileshare upload`` / ``download`` client, run as a subprocess against a real
``fileshare serve`` (local storage, SQLite, the test clamd)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pty
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ALICE_KEY, BOB_KEY
from tests.servers import EICAR, EICAR_SIGNATURE, MiB, free_port
from tests.sniff_files import dicom, gzip_bytes, pdf, png

CLI = [sys.executable, "-m", "fileshare"]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]


def _start(tmp: Path, clamd: Any, **settings: str) -> Server:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FILESHARE_")},
        "FILESHARE_STORAGE": "local",
        "FILESHARE_DATA_DIR": str(tmp / f"data-{port}"),
        "FILESHARE_CLAMD": clamd.address,
        "FILESHARE_PORT": str(port),
        "FILESHARE_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "FILESHARE_LOG_LEVEL": "WARNING",
        **settings,
    }
    # Its log, for a failing test to show.
    with (tmp / f"serve-{port}.log").open("wb") as log:
        proc = subprocess.Popen([*CLI, "serve"], env=env, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "fileshare serve exited"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as answer:  # noqa: S310
                if answer.status == 200:
                    return Server(url=url, proc=proc)
        except OSError:
            pass
        assert time.monotonic() < deadline, "fileshare did not start"
        time.sleep(0.05)


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, clamd: Any) -> Iterator[Server]:
    running = _start(tmp_path_factory.mktemp("cli-server"), clamd)
    yield running
    _stop(running)


def client_env(server: Server | None, **extra: str) -> dict[str, str]:
    """A client machine: no server settings, only the client's own variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    if server is not None:
        env |= {"FILESHARE_URL": server.url, "FILESHARE_KEY": ALICE_KEY}
    return env | extra


def cli(
    *args: str | Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *map(str, args)], env=env, cwd=cwd, capture_output=True, timeout=120
    )


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in lines[0]
    return lines[0]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_version_is_the_installed_package_version() -> None:
    done = cli("--version", env=client_env(None))
    assert done.returncode == 0
    assert done.stdout.decode().strip() == f"fileshare {version('fileshare')}"


def test_upload_prints_the_answer_and_the_file_downloads_back(
    server: Server, tmp_path: Path
) -> None:
    data = pdf(300_000)
    source = write(tmp_path / "report.pdf", data)
    done = cli("upload", source, env=client_env(server))
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"", "no progress bar without a terminal"
    [line] = done.stdout.decode().splitlines()
    answer = json.loads(line)
    assert answer["name"] == "report.pdf"
    assert answer["contentType"] == "application/pdf"  # guessed from the name
    assert answer["size"] == len(data)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    out = tmp_path / "back"
    out.mkdir()
    got = cli("download", answer["id"], "-o", out / "copy.pdf", env=client_env(server))
    assert got.returncode == 0, got.stderr
    assert got.stderr == b""
    assert got.stdout.decode().strip() == str(out / "copy.pdf")
    assert (out / "copy.pdf").read_bytes() == data
    assert sorted(p.name for p in out.iterdir()) == ["copy.pdf"], "no temporary file left"


def test_several_files_give_one_json_line_each(server: Server, tmp_path: Path) -> None:
    contents = [dicom(n) for n in (200, 1000, 70_000)]
    files = [write(tmp_path / f"part-{i}.bin", c) for i, c in enumerate(contents)]
    done = cli("upload", *files, "--type", "application/dicom", env=client_env(server))
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [a["name"] for a in answers] == ["part-0.bin", "part-1.bin", "part-2.bin"]
    assert {a["contentType"] for a in answers} == {"application/dicom"}
    for answer, content in zip(answers, contents, strict=True):
        got = cli("download", answer["id"], "-o", "-", env=client_env(server))
        assert got.returncode == 0, got.stderr
        assert got.stdout == content


def test_attachment_prints_only_the_fhir_attachment(server: Server, tmp_path: Path) -> None:
    data = png(5000)
    done = cli("upload", write(tmp_path / "scan.png", data), "--attachment", env=client_env(server))
    assert done.returncode == 0, done.stderr
    attachment = json.loads(done.stdout)
    assert set(attachment) == {"contentType", "url", "size", "hash", "title", "creation"}
    assert attachment["contentType"] == "image/png"
    assert attachment["size"] == len(data)
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert attachment["title"] == "scan.png"


def test_own_id_name_and_digest(server: Server, tmp_path: Path) -> None:
    data = gzip_bytes(10_000)
    source = write(tmp_path / "x.tar.gz", data)
    args = ("upload", source, "--id", "report-2024-05", "--name", "Bericht März.tgz", "--digest")
    done = cli(*args, env=client_env(server))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["id"] == "report-2024-05"
    assert answer["name"] == "Bericht März.tgz"
    assert answer["contentType"] == "application/gzip"  # the bytes' type, not "a tar"
    again = cli(*args, env=client_env(server))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sha256"] == answer["sha256"]
    # The download's default name is the file's (sanitised) name.
    got = cli("download", "report-2024-05", env=client_env(server), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "Bericht März.tgz").read_bytes() == data


def test_an_infected_file_is_one_line_and_exit_1(server: Server, tmp_path: Path) -> None:
    clean = write(tmp_path / "first.txt", os.urandom(1000))
    infected = write(tmp_path / "eicar.txt", EICAR)
    never = write(tmp_path / "never-sent.txt", os.urandom(1000))
    done = cli("upload", clean, infected, never, env=client_env(server))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith(f"fileshare: upload {infected}: 422 infected: "), line
    assert EICAR_SIGNATURE in line
    # The first went through and was printed; the run stopped at the failure.
    [printed] = done.stdout.decode().splitlines()
    assert json.loads(printed)["name"] == "first.txt"
    listed = _list(server, "never-sent.txt")
    assert listed == []


def _list(server: Server, name: str) -> list[dict[str, Any]]:
    url = f"{server.url}/v1/files?name={name}"
    request = urllib.request.Request(url, headers={"X-API-Key": ALICE_KEY})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        items: list[dict[str, Any]] = json.load(answer)["items"]
        return items


def test_missing_credentials_are_a_usage_error(server: Server, tmp_path: Path) -> None:
    source = write(tmp_path / "a.txt", b"a")
    env = client_env(None, FILESHARE_URL=server.url)
    done = cli("upload", source, env=env)
    assert done.returncode == 2
    assert "no credentials" in one_line(done.stderr)
    assert cli("download", "anything", env=env).returncode == 2
    both = cli("upload", source, env=env | {"FILESHARE_KEY": "k", "FILESHARE_TOKEN": "t"})
    assert both.returncode == 2
    assert "not both" in one_line(both.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["upload", "no-such-file.txt"],
        ["upload", "."],  # a directory
        ["upload", "a.txt", "a.txt", "--name", "x"],  # --name with two files
        ["upload", "a.txt", "--key", "k", "--token", "t"],
        ["upload", "a.txt", "--url", "ftp://example.test"],
        ["download", ".."],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(server: Server, tmp_path: Path, args: list[str]) -> None:
    write(tmp_path / "a.txt", b"a")
    done = cli(*args, env=client_env(server), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == b""
    assert "Traceback" not in done.stderr.decode()


def test_a_wrong_key_is_the_servers_refusal(server: Server, tmp_path: Path) -> None:
    env = client_env(server, FILESHARE_KEY="not-the-right-key-at-all")
    done = cli("upload", write(tmp_path / "a.txt", b"a"), env=env)
    assert done.returncode == 1
    assert one_line(done.stderr).startswith(
        f"fileshare: upload {tmp_path / 'a.txt'}: 401 unauthenticated: "
    )
    # A bearer token goes the other way (Authorization) and is refused the same.
    token = cli("download", "x", "--token", "wrong-token-0123456789", env=env)
    assert token.returncode == 1
    assert "401 unauthenticated" in one_line(token.stderr)
    # And the right key as a bearer token works (today's server takes keys as tokens).
    ok = cli("upload", tmp_path / "a.txt", "--token", ALICE_KEY, env=env)
    assert ok.returncode == 0, ok.stderr


def test_an_unreachable_server_is_exit_3(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        env = client_env(None, FILESHARE_URL=f"http://127.0.0.1:{port}", FILESHARE_KEY="k")
        done = cli("upload", write(tmp_path / "a.txt", b"a"), env=env)
        got = cli("download", "abc", env=env, cwd=tmp_path)
    assert done.returncode == 3
    assert "cannot reach" in one_line(done.stderr)
    assert "Connection refused" in done.stderr.decode()
    assert got.returncode == 3
    assert list(tmp_path.iterdir()) == [tmp_path / "a.txt"]


def test_download_refuses_to_overwrite_without_force(server: Server, tmp_path: Path) -> None:
    first, second = os.urandom(2000), os.urandom(3000)
    ids = []
    for data in (first, second):
        done = cli("upload", write(tmp_path / "src.bin", data), env=client_env(server))
        assert done.returncode == 0, done.stderr
        ids.append(json.loads(done.stdout)["id"])
    out = tmp_path / "out"
    out.mkdir()
    target = out / "file.bin"
    assert cli("download", ids[0], "-o", target, env=client_env(server)).returncode == 0
    refused = cli("download", ids[1], "-o", target, env=client_env(server))
    assert refused.returncode == 2
    assert "exists" in one_line(refused.stderr)
    assert target.read_bytes() == first, "untouched"
    # The same when the name comes from the server (into a directory given as -o).
    assert cli("download", ids[0], "-o", out, env=client_env(server)).returncode == 0
    refused = cli("download", ids[1], "-o", out, env=client_env(server))
    assert refused.returncode == 2, refused.stderr
    assert (out / "src.bin").read_bytes() == first
    forced = cli("download", ids[1], "-o", target, "--force", env=client_env(server))
    assert forced.returncode == 0, forced.stderr
    assert target.read_bytes() == second
    assert sorted(p.name for p in out.iterdir()) == ["file.bin", "src.bin"]


def test_download_name_from_the_server_is_sanitised(server: Server, tmp_path: Path) -> None:
    done = cli(
        "upload", write(tmp_path / "a", b"dots"), "--name", "..profile", env=client_env(server)
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    out.mkdir()
    got = cli("download", json.loads(done.stdout)["id"], env=client_env(server), cwd=out)
    assert got.returncode == 0, got.stderr
    assert [p.name for p in out.iterdir()] == ["profile"]


def test_download_of_an_unknown_id_is_exit_1(server: Server, tmp_path: Path) -> None:
    done = cli("download", "no-such-file", env=client_env(server), cwd=tmp_path)
    assert done.returncode == 1
    assert one_line(done.stderr) == "fileshare: download no-such-file: 404 not_found: no such file"
    assert list(tmp_path.iterdir()) == []


def test_an_early_refusal_of_a_large_file_is_read(
    tmp_path_factory: pytest.TempPathFactory, clamd: Any, tmp_path: Path
) -> None:
    """The server answers 413 from Content-Length before the body is sent; the client reports
    that answer, not the connection it then closes."""
    small = _start(tmp_path_factory.mktemp("small"), clamd, FILESHARE_MAX_UPLOAD_SIZE="1MiB")
    try:
        done = cli(
            "upload", write(tmp_path / "big.bin", os.urandom(8 * MiB)), env=client_env(small)
        )
    finally:
        _stop(small)
    assert done.returncode == 1
    assert "413 payload_too_large" in one_line(done.stderr)


#: Runs a command and writes its peak RSS. A process's ru_maxrss starts at what its parent
#: had when it forked (Linux keeps the high-water mark across exec), so the CLI is started
#: from this small interpreter, not from pytest's large one.
_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def _measured(args: list[str], env: dict[str, str], tmp: Path) -> tuple[int, int]:
    """Exit code and peak RSS (bytes) of one CLI process."""
    rss = tmp / "rss"
    with (tmp / "out").open("wb") as out, (tmp / "err").open("wb") as err:
        code = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(rss), *CLI, *args],
            env=env,
            stdout=out,
            stderr=err,
            timeout=120,
        ).returncode
    return code, int(rss.read_text()) * 1024  # Linux reports KiB


def test_upload_memory_stays_bounded(server: Server, tmp_path: Path) -> None:
    small = write(tmp_path / "small.bin", os.urandom(1000))
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    code, baseline = _measured(["upload", str(small)], client_env(server), tmp_path)
    assert code == 0, (tmp_path / "err").read_text()
    code, peak = _measured(["upload", str(big)], client_env(server), tmp_path)
    assert code == 0, (tmp_path / "err").read_text()
    assert json.loads((tmp_path / "out").read_bytes())["size"] == 64 * MiB
    # Interpreter + aiohttp + tqdm is the baseline (~37 MiB here); the 64 MiB file added ~2.
    assert peak - baseline < 16 * MiB, (baseline, peak)


def _with_a_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, bytes, str]:
    """Run with stderr on a pseudo-terminal; what it wrote there, read as it comes."""
    master, slave = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the terminal closed it
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        done = subprocess.run(
            [*CLI, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, timeout=120
        )
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return done.returncode, done.stdout, seen.decode(errors="replace")


def test_the_progress_bar_shows_on_a_terminal(server: Server, tmp_path: Path) -> None:
    source = write(tmp_path / "scan.dcm", dicom(2 * MiB))
    code, out, terminal = _with_a_terminal(["upload", str(source)], client_env(server), tmp_path)
    assert code == 0, terminal
    assert "scan.dcm" in terminal
    assert "100%" in terminal
    assert "2.00M/2.00M" in terminal
    file_id = json.loads(out)["id"]
    code, out, terminal = _with_a_terminal(
        ["download", file_id, "-o", "copy.dcm"], client_env(server), tmp_path
    )
    assert code == 0, terminal
    assert "copy.dcm" in terminal
    assert "100%" in terminal
    assert (tmp_path / "copy.dcm").read_bytes() == source.read_bytes()


@pytest.fixture
def broken_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """Not fileshare: a server that sends a short body, or bytes that do not match their
    ETag. fileshare does the first only when storage fails mid-download, which no real
    store here can be made to do on cue; the second it never does."""
    behaviour: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body: bytes = behaviour["body"]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(behaviour.get("length", len(body))))
            self.send_header("ETag", behaviour["etag"])
            self.send_header("Content-Disposition", 'attachment; filename="result.bin"')
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize("fault", ["short body", "wrong sha256"])
def test_a_broken_download_leaves_no_file(
    broken_server: tuple[str, dict[str, Any]], tmp_path: Path, fault: str
) -> None:
    url, behaviour = broken_server
    data = os.urandom(200_000)
    behaviour["etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
    if fault == "short body":
        behaviour |= {"body": data[:100_000], "length": len(data)}
    else:
        behaviour["body"] = data[:-1] + bytes([data[-1] ^ 1])
    env = client_env(None, FILESHARE_URL=url, FILESHARE_KEY="k")
    (tmp_path / "result.bin").write_bytes(b"the old one")
    forced = cli("download", "some-id", "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 3, forced.stderr
    expected = "was cut short" if fault == "short body" else "do not match their sha256"
    assert expected in one_line(forced.stderr)
    assert [p.name for p in tmp_path.iterdir()] == ["result.bin"], "no temporary file left"
    assert (tmp_path / "result.bin").read_bytes() == b"the old one", "not replaced"
    # And nothing at all under a new name.
    (tmp_path / "result.bin").unlink()
    fresh = cli("download", "some-id", env=env, cwd=tmp_path)
    assert fresh.returncode == 3
    assert list(tmp_path.iterdir()) == []


def test_rescan_scans_stored_content_again_with_the_servers_settings(
    tmp_path: Path, clamd: Any
) -> None:
    """``fileshare rescan`` beside a running server, on its settings: every clean content
    once (``--all``), a JSON line of what it found; without ``--all`` nothing is due yet."""
    settings = {
        "FILESHARE_STORAGE": "local",
        "FILESHARE_DATA_DIR": str(tmp_path / "data"),
        "FILESHARE_CLAMD": clamd.address,
        "FILESHARE_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "FILESHARE_LOG_LEVEL": "WARNING",
    }
    running = _start(tmp_path, clamd, **settings)
    try:
        for n in (1000, 2000):
            source = write(tmp_path / f"f{n}.bin", os.urandom(n))
            assert cli("upload", source, env=client_env(running)).returncode == 0
        server_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FILESHARE_")},
            **settings,
        }
        done = cli("rescan", "--all", env=server_env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "clean": 2,
            "infected": [],
            "unscannable": [],
            "failed": [],
            "filesChanged": 0,
        }
        recent = cli("rescan", env=server_env)
        assert recent.returncode == 0, recent.stderr
        assert json.loads(recent.stdout)["clean"] == 0
        broken = cli("rescan", env={**server_env, "FILESHARE_STORAGE": "nowhere"})
        assert broken.returncode == 2
        assert b"configuration error" in broken.stderr
    finally:
        _stop(running)
