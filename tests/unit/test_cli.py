"""The client's pure parts: configuration, names and types (the commands themselves are
proven against a live server in tests/e2e/test_cli.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from fileshare.cli.common import ClientConfig, CliError, one_line
from fileshare.cli.download import safe_name
from fileshare.cli.upload import guess_type


def args(**given: str | None) -> argparse.Namespace:
    return argparse.Namespace(**({"url": None, "key": None, "token": None} | given))


def test_flags_win_over_the_environment() -> None:
    env = {"FILESHARE_URL": "http://env.test:1", "FILESHARE_KEY": "env-key"}
    config = ClientConfig.resolve(args(url="https://flag.test/base/", key="flag-key"), env)
    assert str(config.endpoint("v1", "files")) == "https://flag.test/base/v1/files"
    assert config.headers == {"X-API-Key": "flag-key"}
    from_env = ClientConfig.resolve(args(), env)
    assert str(from_env.url) == "http://env.test:1"
    assert from_env.headers == {"X-API-Key": "env-key"}
    # A flag's token replaces the environment's key, whichever kind each is.
    token = ClientConfig.resolve(args(token="tok"), env)
    assert token.headers == {"Authorization": "Bearer tok"}


def test_the_default_url_is_the_servers_default_address() -> None:
    import dataclasses

    from fileshare.config import Settings

    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    config = ClientConfig.resolve(args(key="k"), {})
    assert str(config.url) == defaults["public_base_url"]
    assert config.url.port == defaults["port"]


@pytest.mark.parametrize(
    ("given", "env", "message"),
    [
        ({}, {}, "no credentials"),
        ({}, {"FILESHARE_KEY": "k", "FILESHARE_TOKEN": "t"}, "not both"),
        ({"key": "k", "url": "ftp://x.test"}, {}, "not an http(s) base URL"),
        ({"key": "k", "url": "localhost:8080"}, {}, "not an http(s) base URL"),
        ({"key": "k", "url": "http://x.test/?a=b"}, {}, "not an http(s) base URL"),
    ],
)
def test_configuration_errors_are_usage_errors(
    given: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(CliError) as caught:
        ClientConfig.resolve(args(**given), env)
    assert caught.value.code == 2
    assert message in caught.value.message


def test_client_settings_are_not_server_settings() -> None:
    """A client's FILESHARE_URL / FILESHARE_KEY / FILESHARE_TOKEN must never be read as (or
    collide with) a setting of the server it may share a machine with."""
    from fileshare.config import VARIABLES

    assert {"FILESHARE_URL", "FILESHARE_KEY", "FILESHARE_TOKEN"}.isdisjoint(VARIABLES.values())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        (".bashrc", "bashrc"),
        ("...", "the-id"),
        ("/", "the-id"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("a\nb\x00c", "abc"),
        ("Bericht März.pdf", "Bericht März.pdf"),
        (None, "the-id"),
        ("", "the-id"),
    ],
)
def test_the_servers_name_is_made_safe_for_a_directory(name: str | None, expected: str) -> None:
    assert safe_name(name, "the-id") == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scan.pdf", "application/pdf"),
        ("IMG.PNG", "image/png"),
        ("backup.tar.gz", "application/gzip"),
        ("notes", "application/octet-stream"),
        ("weird.unknown-ext", "application/octet-stream"),
    ],
)
def test_the_media_type_is_guessed_from_the_name(name: str, expected: str) -> None:
    assert guess_type(Path(name)) == expected


def test_a_servers_words_become_one_printable_line() -> None:
    assert one_line("bad\r\nthing\x1b[31m  here") == "bad thing [31m here"


def test_the_client_never_imports_the_server() -> None:
    code = (
        "import sys; from fileshare.__main__ import main; import fileshare.cli.upload, "
        "fileshare.cli.download; "
        "print(sorted(m for m in sys.modules if m.startswith(('fileshare.app', 'fileshare.index', "
        "'fileshare.storage', 'fileshare.server', 'sqlalchemy', 'aiobotocore'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
