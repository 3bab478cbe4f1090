"""Every log line is JSON in production, the framework's too, and none quotes a secret."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import logging
import structlog
from fileshare.logging import configure_logging

configure_logging("json", "INFO")
try:
    raise ValueError("Invalid header value char: b'Authorization: Bearer sekrit-key-0123\x00'")
except ValueError:
    logging.getLogger("aiohttp.server").exception("Error handling request from %s", "10.0.0.9")
logging.getLogger("asyncio").error(
    "Task exception was never retrieved\nfuture: <Task exception=ValueError('sekrit-key-0123')>"
)
logging.getLogger("botocore.auth").debug("CanonicalRequest: x-amz-security-token:sekrit")
logging.getLogger("aiohttp.web").debug("below the level: not shown")
structlog.get_logger("fileshare").info("own.event", token="sekrit-key-0123")
"""


def test_framework_records_are_json_and_carry_no_exception_text() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["event"] for line in lines] == [
        "Error handling request from 10.0.0.9",
        "Task exception was never retrieved",
        "own.event",
    ]
    first = lines[0]
    assert first["logger"] == "aiohttp.server"
    assert first["level"] == "error"
    assert first["exception_type"] == "ValueError"
    assert "timestamp" in first
    assert "sekrit" not in done.stderr
    assert lines[2]["token"] == "[redacted]"
