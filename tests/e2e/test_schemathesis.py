"""schemathesis against a live ``fileshare serve`` (S3 on SeaweedFS, SQLite, the test clamd).

schemathesis reads the document the server serves at ``/openapi.json`` and sends every
operation generated requests — examples, boundary values of every documented constraint,
random valid ones, and ones that break the document on purpose — with an API key, then
checks each answer: never a 5xx, and status, content type, headers and body as documented.
The budget is bounded (a fixed number of examples per operation, a fixed seed,
deterministic generation, no example database), so a run is the same every time.

It runs schemathesis's own command line (``schemathesis run``), the interface its
documentation leads with: its pytest integration's fixture-loaded schemas do not work with
pytest 9.2 (``LazySchema`` reads ``Function._nodeid``, which pytest no longer has).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ALICE_KEY, BOB_KEY
from tests.servers import SeaweedS3, free_port

#: Examples per operation and phase: each is a request (an upload, a scan too). About twenty
#: operations times this keeps the run within the suite's budget on 2 cores.
MAX_EXAMPLES = 15
SEED = 11
#: Generated upload bodies are small; a larger limit would only slow the run down.
MAX_UPLOAD = "1m"

#: ``positive_data_acceptance`` by default wants a request that fits the document answered
#: 2xx/3xx (or 401, 403, 404, 409, 429). These operations have rules no schema can state, so
#: their refusals of such requests are right and named here; every other check applies.
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]
#: ``negative_data_rejection``'s default: a request that breaks the document is refused so.
_REJECTED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]

#: Per-operation exceptions to schemathesis's checks, each with the reason it does not apply.
CONFIG = f"""
seed = {SEED}
# alice, a participant, on her files and tags; bob, an administrator, where that is needed.
headers = {{ Authorization = "Bearer {ALICE_KEY}" }}

[cache]
enabled = false  # nothing written next to the checkout

# Any other owner is 404 for alice (as it must be: e2e tests prove it), which would stop most
# generated requests before the code they are meant to reach.
[parameters]
"query.owner" = "alice"

[[operations]]
include-path-regex = "^/v1/(admin|audit)"
headers = {{ Authorization = "Bearer {BOB_KEY}" }}

[generation]
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"

# offsetKey and pageToken are opaque (only one the server gave out is one), `from` must be
# before `to`, and a time next to year 1 or 9999 cannot be moved to UTC: 400.
[[operations]]
include-name = [
    "GET /v1/files", "GET /v1/search/files", "GET /v1/tags", "GET /v1/audit", "GET /v1/uploads"
]
checks.positive_data_acceptance.expected-statuses = {[*_ACCEPTED, "400"]}

# DELETE revokes: the client and its keys stay listed, `revoked` set, as the audit trail
# wants them; it is not a deletion that use_after_free could check.
[[operations]]
include-path-regex = "^/v1/admin/"
checks.use_after_free.enabled = false

# A JWK must be a real public key (its curve, its coordinates), which no schema generates.
[[operations]]
include-name = "POST /v1/admin/clients"
checks.positive_data_acceptance.expected-statuses = {[*_ACCEPTED, "422"]}

# A well-formed Content-Digest that does not match the generated body is refused (400), a
# media type picked for */* may be a form encoding (415), and on PUT If-Match / If-None-Match
# may not hold (412).
[[operations]]
include-name = ["POST /v1/files", "PUT /v1/files/{{fileId}}"]
checks.positive_data_acceptance.expected-statuses = {[*_ACCEPTED, "400", "412", "415"]}

# Preconditions are evaluated before a byte of the body is read (RFC 9110 section 13.2.1):
# a malformed form under an If-None-Match: * that fails is 412, not 400.
[[operations]]
include-name = "PUT /v1/files/{{fileId}}"
checks.negative_data_rejection.expected-statuses = {[*_REJECTED, "412"]}

# A Range that starts past the end of the file is not satisfiable (416).
[[operations]]
include-name = ["GET /v1/files/{{fileId}}", "HEAD /v1/files/{{fileId}}"]
checks.positive_data_acceptance.expected-statuses = {[*_ACCEPTED, "416"]}

# A direct upload larger than the deployment's limit is 413; the type must not be a form
# encoding (422).
[[operations]]
include-name = "POST /v1/uploads"
checks.positive_data_acceptance.expected-statuses = {[*_ACCEPTED, "413", "422"]}

# Client authentication is one method at a time (RFC 6749 §2.3): the run's Authorization
# header and credentials in the generated body make two (400 invalid_request), and the
# grant, scope and assertion rules (unsupported_grant_type, invalid_scope) are no schema's.
[[operations]]
include-name = "POST /oauth/token"
checks.positive_data_acceptance.expected-statuses = {[*_ACCEPTED, "400"]}
"""


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture
def live_server(tmp_path: Path, clamd: Any, seaweed: SeaweedS3) -> Iterator[str]:
    """A real ``fileshare serve`` process whose public base URL is its own address, so the
    document's ``servers`` entry is where schemathesis sends its requests. On S3
    (SeaweedFS), where every route works: direct uploads and redirects need a store that
    signs URLs (the local backend answers them 501, tested in ``test_direct_uploads``)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:10]
    unscanned, permanent = f"fuzz-u-{tag}", f"fuzz-p-{tag}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FILESHARE_")},
        **seaweed.fileshare_env(unscanned, permanent),
        "FILESHARE_DATA_DIR": str(tmp_path / "data"),
        "FILESHARE_CLAMD": clamd.address,
        "FILESHARE_PORT": str(port),
        "FILESHARE_PUBLIC_BASE_URL": base,
        "FILESHARE_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "FILESHARE_ADMINS": "bob",
        "FILESHARE_MAX_UPLOAD_SIZE": MAX_UPLOAD,
        "FILESHARE_LOG_FORMAT": "json",
        "FILESHARE_SHUTDOWN_GRACE": "1",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fileshare", "serve"], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while _status(f"{base}/readyz") != 200:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "fileshare did not become ready"
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # The server's own account of answers it could not give: shown with a failure.
        crashes = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if "request.crashed" in line
        ]
        if crashes:
            print("server crashes:\n" + "\n".join(crashes))


def test_the_live_server_keeps_its_document(live_server: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    reports = tmp_path / "reports"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{live_server}/openapi.json",
            "--checks",
            "all",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(reports),
            "--no-color",
        ],
        cwd=tmp_path,  # whatever it writes stays in the test's directory
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
