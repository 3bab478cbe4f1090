import pytest

from fileshare.config import MAX_SCANNABLE, ClamdAddress, ConfigError, load_settings

BASE = {"FILESHARE_API_KEYS": "dev:dev-key-0123456789abcdef"}


def test_defaults_are_valid_and_secrets_stay_out_of_repr() -> None:
    settings = load_settings(BASE)
    assert settings.storage == "local"
    assert "dev-key" not in repr(settings)
    assert settings.max_upload_size <= MAX_SCANNABLE


def test_sizes_and_addresses_parse() -> None:
    settings = load_settings(
        BASE
        | {
            "FILESHARE_MAX_UPLOAD_SIZE": "64MiB",
            "FILESHARE_PART_SIZE": "5M",
            "FILESHARE_CLAMD": "unix:///run/clamd.sock",
        }
    )
    assert settings.max_upload_size == 64 * 1024 * 1024
    assert settings.part_size == 5 * 1024 * 1024
    assert settings.clamd == ClamdAddress(path="/run/clamd.sock")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FILESHARE_MAX_UPLOAD_SIZE": "3GiB"}, "clamd cannot scan"),
        ({"FILESHARE_PART_SIZE": "1MiB"}, "at least"),
        ({"FILESHARE_STORAGE": "ftp"}, "local, s3 or gcs"),
        ({"FILESHARE_CLAMD": "localhost:3310"}, "FILESHARE_CLAMD"),
        ({"FILESHARE_API_KEYS": "dev:short"}, "shorter than 16"),
        ({"FILESHARE_API_KEYS": ""}, "at least one"),
        ({"FILESHARE_MEMORY_BUDGET": "10MiB"}, "below what one upload needs"),
        ({"FILESHARE_PORT": "eighty"}, "not an integer"),
        ({"FILESHARE_PUBLIC_BASE_URL": "files.example"}, "absolute"),
        ({"FILESHARE_UNSCANNED_BUCKET": "same", "FILESHARE_PERMANENT_BUCKET": "same"}, "differ"),
        ({"FILESHARE_PROMOTION": "move"}, "copy or single-write"),
        ({"FILESHARE_TYPE_CHECK": "strict"}, "enforce, report or off"),
        ({"FILESHARE_ALLOWED_TYPES": "application/pdf,pdf"}, "FILESHARE_ALLOWED_TYPES"),
        ({"FILESHARE_RESCAN_INTERVAL": "-1"}, "FILESHARE_RESCAN_INTERVAL"),
        ({"FILESHARE_RESCAN_AFTER": "0"}, "FILESHARE_RESCAN_AFTER"),
        ({"FILESHARE_RESCAN_AFTER": "soon"}, "not a number"),
        ({"FILESHARE_RESCAN_ON_DOWNLOAD": "-1"}, "FILESHARE_RESCAN_ON_DOWNLOAD"),
        ({"FILESHARE_RESCAN_ON_DOWNLOAD": "inf"}, "FILESHARE_RESCAN_ON_DOWNLOAD"),
        ({"FILESHARE_QUARANTINE_BUCKET": "permanent"}, "QUARANTINE_BUCKET must differ"),
        ({"FILESHARE_QUARANTINE_BUCKET": "Bad_Name"}, "FILESHARE_QUARANTINE_BUCKET"),
        (
            {"FILESHARE_QUARANTINE_BUCKET": "held", "FILESHARE_PROMOTION": "single-write"},
            "needs FILESHARE_PROMOTION=copy",
        ),
        ({"FILESHARE_UNSCANNABLE": "accept"}, "reject or quarantine"),
        ({"FILESHARE_UNSCANNABLE": "quarantine"}, "needs FILESHARE_QUARANTINE_BUCKET"),
    ],
)
def test_bad_settings_fail_fast_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(BASE | env)


def test_config_file_is_read_and_env_wins(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "fileshare.env"
    path.write_text("# comment\nFILESHARE_PORT=9000\nFILESHARE_HOST=0.0.0.0\n")
    settings = load_settings(BASE | {"FILESHARE_CONFIG": str(path), "FILESHARE_PORT": "9100"})
    assert (settings.host, settings.port) == ("0.0.0.0", 9100)  # noqa: S104


def test_each_upload_reserves_at_least_three_parts() -> None:
    one_in_flight = load_settings(BASE | {"FILESHARE_PARTS_IN_FLIGHT": "1"})
    assert one_in_flight.per_upload_memory == 3 * one_in_flight.part_size + 1024 * 1024
    four = load_settings(BASE | {"FILESHARE_PARTS_IN_FLIGHT": "4"})
    assert four.per_upload_memory == 5 * four.part_size + 1024 * 1024


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FILESHARE_PORT": "99999"}, "FILESHARE_PORT must be from 1 to 65535"),
        ({"FILESHARE_PORT": "0"}, "FILESHARE_PORT must be from 1 to 65535"),
        ({"FILESHARE_LOG_LEVEL": "verbose"}, "FILESHARE_LOG_LEVEL must be one of"),
        ({"FILESHARE_SHUTDOWN_GRACE": "-1"}, "FILESHARE_SHUTDOWN_GRACE must be"),
        ({"FILESHARE_STORAGE_TIMEOUT": "0"}, "FILESHARE_STORAGE_TIMEOUT must be"),
        ({"FILESHARE_CLAMD_VERDICT_TIMEOUT": "nan"}, "FILESHARE_CLAMD_VERDICT_TIMEOUT must be"),
        ({"FILESHARE_BUDGET_WAIT": "inf"}, "FILESHARE_BUDGET_WAIT must be"),
        ({"FILESHARE_STORAGE": "s3", "FILESHARE_UNSCANNED_BUCKET": "my_bucket"}, "S3 bucket"),
        ({"FILESHARE_STORAGE": "s3", "FILESHARE_UNSCANNED_BUCKET": "my..bucket"}, "two dots"),
        ({"FILESHARE_STORAGE": "s3", "FILESHARE_UNSCANNED_BUCKET": "192.168.1.1"}, "IP address"),
        ({"FILESHARE_STORAGE": "s3", "FILESHARE_UNSCANNED_BUCKET": "xn--abc"}, "reserved"),
        ({"FILESHARE_STORAGE": "gcs", "FILESHARE_PERMANENT_BUCKET": "google-files"}, "google"),
        ({"FILESHARE_STORAGE": "gcs", "FILESHARE_PERMANENT_BUCKET": "a" * 64}, "63 characters"),
        ({"FILESHARE_UNSCANNED_BUCKET": "Upper"}, "FILESHARE_UNSCANNED_BUCKET"),
    ],
)
def test_check_config_catches_what_serve_would_trip_on(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(BASE | env)


def test_backends_have_their_own_bucket_rules() -> None:
    # "my_bucket" is a GCS name, not an S3 one
    gcs = load_settings(
        BASE | {"FILESHARE_STORAGE": "gcs", "FILESHARE_UNSCANNED_BUCKET": "my_bucket"}
    )
    assert gcs.unscanned_bucket == "my_bucket"
    dotted = "a" * 60 + "." + "b" * 60
    assert (
        load_settings(
            BASE | {"FILESHARE_STORAGE": "gcs", "FILESHARE_PERMANENT_BUCKET": dotted}
        ).permanent_bucket
        == dotted
    )
    assert load_settings(BASE | {"FILESHARE_LOG_LEVEL": "debug"}).log_level == "debug"


def test_a_taken_port_is_one_clear_line_and_exit_2(tmp_path: object) -> None:
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "fileshare", "serve"],
            env={
                "FILESHARE_API_KEYS": "dev:dev-key-0123456789abcdef",
                "FILESHARE_DATA_DIR": str(Path(str(tmp_path)) / "data"),
                "FILESHARE_PORT": str(port),
                "FILESHARE_LOG_LEVEL": "ERROR",
                "PATH": "/usr/bin:/bin",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_check_config_prints_a_readable_summary_without_secrets() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fileshare", "check-config"],
        env={
            "FILESHARE_API_KEYS": "dev:dev-key-0123456789abcdef",
            "FILESHARE_INDEX_URL": (
                "postgresql://fileshare:Sup3r-s3cret@db.internal/fileshare?sslmode=verify-full"
            ),
            "FILESHARE_STORAGE": "s3",
            "FILESHARE_S3_ACCESS_KEY": "AKIAEXAMPLE",
            "FILESHARE_S3_SECRET_KEY": "s3-secret-key-value",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Settings(" not in out
    for secret in ("Sup3r-s3cret", "dev-key-0123456789abcdef", "s3-secret-key-value"):
        assert secret not in out
    assert "postgresql postgresql://fileshare:***@db.internal/fileshare" in out
    assert "at rest:  SSE-S3 (AES256) on every write" in out
    assert "transport: TLS to every dependency outside loopback" in out
    assert "storage:  s3 at AWS (us-east-1)" in out
    assert "1 principal(s): dev" in out
    bad = subprocess.run(
        [sys.executable, "-m", "fileshare", "check-config"],
        env={"FILESHARE_API_KEYS": "dev:dev-key-0123456789abcdef", "FILESHARE_PORT": "99999"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "fileshare: configuration error: FILESHARE_PORT must be from 1 to 65535, not 99999"
    )


def test_the_example_file_lists_every_setting_with_its_default() -> None:
    import dataclasses
    import re
    from pathlib import Path

    from fileshare.config import VARIABLES, Settings

    root = Path(__file__).resolve().parents[2]
    example = root / "config" / "fileshare.example.env"
    text = example.read_text()
    listed = re.findall(r"^#? ?(FILESHARE_[A-Z0-9_]+)=(.*)$", text, re.MULTILINE)
    names = [name for name, _ in listed]
    assert sorted(names) == sorted(set(names)), "a setting is listed twice"
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(VARIABLES) == fields, "every Settings field has its variable"
    assert set(names) == set(VARIABLES.values())
    # the defaults shown are the defaults
    defaults = load_settings(BASE)
    shown = load_settings(
        {name: value for name, value in listed if value}
        | {"FILESHARE_API_KEYS": BASE["FILESHARE_API_KEYS"]}
    )
    assert shown == defaults
    # it works as FILESHARE_CONFIG, as the README says, and every variable is in the README
    assert load_settings({"FILESHARE_CONFIG": str(example)}).api_keys == {
        "dev": "dev-key-change-me-0123456789"
    }
    readme = (root / "README.md").read_text()
    for name in VARIABLES.values():
        assert f"`{name}`" in readme, name


def test_unscannable_uploads_are_kept_by_default_only_where_there_is_a_quarantine() -> None:
    from fileshare.upload_policy import Unscannable

    assert load_settings(BASE).unscannable_policy is Unscannable.REJECT
    held = BASE | {"FILESHARE_QUARANTINE_BUCKET": "held"}
    assert load_settings(held).unscannable_policy is Unscannable.QUARANTINE
    chosen = load_settings(held | {"FILESHARE_UNSCANNABLE": "reject"})
    assert chosen.unscannable_policy is Unscannable.REJECT
