"""Settings of issue 15: encryption at rest, TLS to every dependency, HSTS."""

from __future__ import annotations

from typing import Any

import pytest

from fileshare.config import ConfigError, Settings, load_settings
from fileshare.storage.encryption import Encryption
from fileshare.transport import postgres_hosts

KEYS = {"FILESHARE_API_KEYS": "dev:dev-key-0123456789abcdef"}
GCS_KEY = "projects/p/locations/eu/keyRings/r/cryptoKeys/k"


def settings(**env: str) -> Settings:
    return load_settings(KEYS | {f"FILESHARE_{k}": v for k, v in env.items()})


# ----------------------------------------------------------------- encryption at rest


def test_each_backend_has_its_default_mode() -> None:
    assert settings(STORAGE="s3").encryption.mode == "sse-s3"
    assert settings(STORAGE="gcs").encryption.mode == "default"
    assert settings().encryption.mode == "default"


@pytest.mark.parametrize(
    ("mode", "args", "headers"),
    [
        ("default", {}, {}),
        ("none", {}, {}),
        (
            "sse-s3",
            {"ServerSideEncryption": "AES256"},
            {"x-amz-server-side-encryption": "AES256"},
        ),
    ],
)
def test_s3_arguments_and_signed_headers(
    mode: Any, args: dict[str, Any], headers: dict[str, str]
) -> None:
    enc = Encryption(mode)
    assert enc.s3_write_args() == args
    assert enc.s3_headers() == headers


def test_s3_kms_names_its_key_and_bucket_keys() -> None:
    enc = Encryption("kms", kms_key="arn:aws:kms:eu-west-1:111122223333:key/k-1", bucket_key=False)
    assert enc.s3_write_args() == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:eu-west-1:111122223333:key/k-1",
        "BucketKeyEnabled": False,
    }
    assert enc.s3_headers() == {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:eu-west-1:111122223333:key/k-1",
        "x-amz-server-side-encryption-bucket-key-enabled": "false",
    }
    # Without a key: the AWS-managed aws/s3 key, and no key id sent.
    assert "SSEKMSKeyId" not in Encryption("kms").s3_write_args()


def test_gcs_kms_parameters() -> None:
    enc = Encryption("kms", kms_key=GCS_KEY)
    assert enc.gcs_upload_params() == {"kmsKeyName": GCS_KEY}
    assert enc.gcs_rewrite_params() == {"destinationKmsKeyName": GCS_KEY}
    assert Encryption().gcs_upload_params() == {}
    assert Encryption().gcs_rewrite_params() == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STORAGE_ENCRYPTION": "sse-c"}, "must be one of default, sse-s3, kms, none"),
        ({"STORAGE_ENCRYPTION": "kms"}, "local backend writes plain files"),
        ({"STORAGE": "gcs", "STORAGE_ENCRYPTION": "sse-s3"}, "sse-s3 is for S3"),
        ({"STORAGE": "gcs", "STORAGE_ENCRYPTION": "none"}, "none is for S3"),
        ({"STORAGE": "gcs", "STORAGE_ENCRYPTION": "kms"}, "kms on GCS needs"),
        (
            {"STORAGE": "gcs", "STORAGE_ENCRYPTION": "kms", "STORAGE_KMS_KEY": "my-key"},
            "kms on GCS needs",
        ),
        (
            {"STORAGE": "s3", "STORAGE_ENCRYPTION": "kms", "STORAGE_KMS_KEY": "bad key!"},
            "not a KMS key",
        ),
        ({"STORAGE": "s3", "STORAGE_KMS_KEY": "alias/fileshare"}, "needs kms"),
        ({"S3_BUCKET_KEY": "maybe"}, "is not true or false"),
    ],
)
def test_unusable_encryption_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**env)


def test_descriptions_name_no_key() -> None:
    for storage, enc in (
        ("s3", Encryption("kms", kms_key="arn:aws:kms:eu-west-1:1:key/secret-ish")),
        ("gcs", Encryption("kms", kms_key=GCS_KEY)),
    ):
        said = enc.describe(storage)
        assert "KMS key" in said
        assert enc.kms_key is not None
        assert enc.kms_key not in said


# ------------------------------------------------------------------------ transport


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"STORAGE": "s3", "S3_ENDPOINT": "http://minio.storage.svc:9000"},
            "FILESHARE_S3_ENDPOINT is plain http to minio.storage.svc",
        ),
        (
            {"STORAGE": "gcs", "GCS_ENDPOINT": "http://10.0.0.7:4443"},
            "FILESHARE_GCS_ENDPOINT is plain http to 10.0.0.7",
        ),
        (
            {"STORAGE": "s3", "S3_ENDPOINT": "https://user:pw@s3.example.org"},
            "must not hold credentials",
        ),
        ({"STORAGE": "s3", "S3_ENDPOINT": "s3.example.org"}, "absolute https URL"),
        (
            {"INDEX_URL": "postgresql://u:pw@db.internal/fileshare"},
            "names no sslmode for db.internal",
        ),
        (
            {"INDEX_URL": "postgresql://u:pw@db.internal/fileshare?sslmode=prefer"},
            "has sslmode=prefer",
        ),
        (
            {"INDEX_URL": "postgresql://u:pw@/f?host=db.internal&sslmode=disable"},
            "for db.internal",
        ),
        (
            # asyncpg connects to the authority's host; ?host= counts only without one
            {"INDEX_URL": "postgresql://u:pw@db.remote/x?host=127.0.0.1"},
            "names no sslmode for db.remote",
        ),
        ({"INDEX_URL": "postgresql://u:pw@db/x?service=prod&sslmode=require"}, "names a service"),
        (
            {"STORAGE": "gcs", "GCS_ENDPOINT": "emulator.remote:4443"},
            "FILESHARE_GCS_ENDPOINT is plain http to emulator.remote",
        ),
        ({"CLAMD": "tcp://clamd.fileshare.svc:3310"}, "clamd has no TLS"),
        (
            {
                "JWT_ISSUERS": '[{"issuer": "https://idp.example.org/", '
                '"jwks_url": "http://idp.example.org/jwks", "audience": "fileshare"}]'
            },
            "must be https",
        ),
        ({"HSTS_MAX_AGE": "-1"}, "FILESHARE_HSTS_MAX_AGE"),
    ],
)
def test_plaintext_outside_loopback_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        settings(**env)
    assert "pw" not in str(refused.value)


def test_loopback_tls_and_listed_hosts_are_accepted() -> None:
    assert settings(STORAGE="s3", S3_ENDPOINT="http://127.0.0.1:8333").plaintext_uses() == []
    assert settings(STORAGE="s3", S3_ENDPOINT="http://[::1]:8333").plaintext_uses() == []
    assert settings(STORAGE="s3", S3_ENDPOINT="https://s3.example.org").plaintext_uses() == []
    for dsn in (
        "postgresql://u:pw@localhost/f",
        "postgresql://u:pw@db.internal/f?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        "postgresql://u:pw@db.internal/f?sslmode=require",
        "postgresql:///f?host=/var/run/postgresql",
    ):
        assert settings(INDEX_URL=dsn).plaintext_uses() == []
    listed = settings(
        STORAGE="s3",
        S3_ENDPOINT="http://minio.storage.svc:9000",
        INDEX_URL="postgresql://u:pw@db.internal/f",
        CLAMD="tcp://clamd.fileshare.svc:3310",
        PLAINTEXT_HOSTS="MinIO.storage.svc, db.internal,clamd.fileshare.svc",
        JWT_ISSUERS='[{"issuer": "https://idp/", "jwks_url": "http://idp.dev/jwks", '
        '"audience": "a"}]',
        JWKS_ALLOW_HTTP="true",
    )
    assert [(p.what, p.host) for p in listed.plaintext_uses()] == [
        ("storage", "minio.storage.svc"),
        ("index", "db.internal"),
        ("clamd", "clamd.fileshare.svc"),
        ("jwks", "idp.dev"),
    ]
    anything = settings(STORAGE="s3", S3_ENDPOINT="http://s3.lab:9000", PLAINTEXT_HOSTS="*")
    assert [p.what for p in anything.plaintext_uses()] == ["storage"]


def test_a_jwks_host_listed_as_plaintext_needs_no_allow_http() -> None:
    listed = settings(
        JWT_ISSUERS='[{"issuer": "https://idp/", "jwks_url": "http://idp.mesh/jwks", '
        '"audience": "a"}]',
        PLAINTEXT_HOSTS="idp.mesh",
    )
    assert listed.jwks_plain_http("http://idp.mesh/jwks")
    assert not listed.jwks_plain_http("http://other.mesh/jwks")


def test_postgres_hosts_are_what_the_driver_connects_to() -> None:
    assert postgres_hosts("postgresql://u:p@db:5432/f") == ["db"]
    assert postgres_hosts("postgresql://u@a/f?host=b") == ["a"]
    assert postgres_hosts("postgresql://u@/f?host=b") == ["b"]
    assert postgres_hosts("postgresql://u@db1:5432,[::1]:5433,DB3/f") == ["db1", "::1", "db3"]
    assert postgres_hosts("postgresql:///f?host=/run/pg") == []
    # a second host in the clear is refused like the first
    with pytest.raises(ConfigError, match="for db2"):
        settings(INDEX_URL="postgresql://u:pw@localhost,db2/f")


def test_the_pg_environment_asyncpg_falls_back_to_is_checked_too() -> None:
    def load(**env: str) -> Settings:
        return load_settings(KEYS | {"FILESHARE_INDEX_URL": "postgresql://u:pw@/f"} | env)

    with pytest.raises(ConfigError, match=r"for db\.remote"):
        load(PGHOST="db.remote")
    assert load(PGHOST="db.remote", PGSSLMODE="verify-full").plaintext_uses() == []
    assert load(PGHOST="/run/postgresql").plaintext_uses() == []
    with pytest.raises(ConfigError, match="PGSERVICE"):
        load(PGSERVICE="prod")
    with pytest.raises(ConfigError, match="has sslmode=prefer"):
        load_settings(
            KEYS | {"FILESHARE_INDEX_URL": "postgresql://u:pw@db.remote/f", "PGSSLMODE": "prefer"}
        )


def test_the_storage_emulator_variable_is_checked_like_the_setting() -> None:
    base = KEYS | {"FILESHARE_STORAGE": "gcs"}
    assert load_settings(base | {"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"}).gcs_endpoint == (
        "127.0.0.1:4443"
    )
    with pytest.raises(ConfigError, match=r"plain http to emu\.remote"):
        load_settings(base | {"STORAGE_EMULATOR_HOST": "http://emu.remote:4443"})


def test_loopback_spellings_and_listing_forms() -> None:
    for host in ("localhost.", "LOCALHOST", "[::ffff:127.0.0.1]", "[::1]", "127.8.9.10"):
        assert settings(STORAGE="s3", S3_ENDPOINT=f"http://{host}:8333").plaintext_uses() == []
    listed = settings(
        STORAGE="s3",
        S3_ENDPOINT="http://[fd00::1]:9000",
        INDEX_URL="postgresql://u:pw@db.lab:5432/f",
        PLAINTEXT_HOSTS="[fd00::1], db.lab:5432",
    )
    assert {p.what for p in listed.plaintext_uses()} == {"storage", "index"}


def test_hsts_only_over_https() -> None:
    assert settings().hsts_header is None  # http://127.0.0.1:8080
    secure = settings(PUBLIC_BASE_URL="https://files.example.org")
    assert secure.hsts_header == "max-age=31536000"
    assert settings(PUBLIC_BASE_URL="HTTPS://files.example.org").hsts_header is not None
    assert settings(PUBLIC_BASE_URL="https://f.example.org", HSTS_MAX_AGE="0").hsts_header is None
