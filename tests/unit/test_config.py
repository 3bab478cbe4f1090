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
