"""Signed URLs on GCS (``storage.gcs_signing``): the signatures checked by recomputing them
(fake-gcs-server checks none), the requests they sign made against a real fake-gcs-server,
and which credentials make the backend a ``Presigner`` at all."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from google.auth import credentials as ga_credentials

from fileshare.storage.base import DIRECT_PREFIX, Presigner, StorageError
from fileshare.storage.encryption import Encryption
from fileshare.storage.gcs import GcsStorage
from fileshare.storage.gcs_signing import (
    GcsSigner,
    SigningGcsStorage,
    find_signing_credentials,
    open_gcs_storage,
)
from tests.gcs_v4 import BadSignature, ServiceAccountKey, verify
from tests.servers import FakeGcs

PDF = "application/pdf"
BUCKETS = ("signing-unscanned", "signing-permanent")
DISPOSITION = "attachment; filename*=UTF-8''R%C3%B6ntgen%201.pdf"


@pytest.fixture(scope="module")
def key() -> ServiceAccountKey:
    return ServiceAccountKey()


@pytest.fixture
def key_file(key: ServiceAccountKey, tmp_path: Path) -> Path:
    return key.write(tmp_path / "signer.json")


@pytest.fixture
async def signing(fake_gcs: FakeGcs, key_file: Path) -> AsyncIterator[GcsStorage]:
    for bucket in BUCKETS:
        fake_gcs.create_bucket(bucket)
    storage = await open_gcs_storage(
        signing_key=key_file, endpoint=fake_gcs.endpoint, buckets=BUCKETS, timeout=30
    )
    try:
        yield storage
    finally:
        await storage.close()


def staging_key() -> str:
    return f"{DIRECT_PREFIX}{uuid.uuid4().hex}"


# ------------------------------------------------------------------ the signatures


async def test_a_signed_put_binds_method_key_type_and_length(
    signing: GcsStorage, key: ServiceAccountKey, fake_gcs: FakeGcs
) -> None:
    assert isinstance(signing, Presigner)
    object_key = staging_key()
    before = datetime.now(UTC).replace(microsecond=0)
    issued = await signing.presign_upload(
        BUCKETS[0], object_key, content_type=PDF, size=1234, sha256="ab" * 32, expires=900
    )
    assert issued.method == "PUT"
    # Exactly what the uploader must send; Host comes from the URL.
    assert issued.headers == {
        "Content-Type": PDF,
        "x-goog-content-length-range": "1234,1234",
        "x-goog-if-generation-match": "0",  # create only: nobody replaces what is read
    }
    parts = urlsplit(issued.url)
    assert f"{parts.scheme}://{parts.netloc}" == fake_gcs.endpoint  # the emulator's host
    assert parts.path == f"/{BUCKETS[0]}/{object_key}"  # the XML API's object path

    signed = verify(issued.url, "PUT", issued.headers, key.public)
    assert signed.signed_headers == [
        "content-type",
        "host",
        "x-goog-content-length-range",
        "x-goog-if-generation-match",
    ]
    assert signed.expires == timedelta(seconds=900)
    assert before - timedelta(seconds=5) <= signed.date <= datetime.now(UTC)
    assert signed.credential == f"{key.email}/{signed.date:%Y%m%d}/auto/storage/goog4_request"
    assert abs(issued.expires - (signed.date + signed.expires)) < timedelta(seconds=5)

    # Anything else than what was signed fails.
    for method, url, headers in [
        ("GET", issued.url, issued.headers),
        ("POST", issued.url, issued.headers),
        ("PUT", issued.url, {**issued.headers, "Content-Type": "text/html"}),
        ("PUT", issued.url, {**issued.headers, "x-goog-if-generation-match": "1"}),
        ("PUT", issued.url, {**issued.headers, "x-goog-content-length-range": "0,99999999"}),
        ("PUT", issued.url.replace(object_key, staging_key()), issued.headers),
        ("PUT", issued.url.replace(BUCKETS[0], BUCKETS[1]), issued.headers),
        ("PUT", issued.url.replace("X-Goog-Expires=900", "X-Goog-Expires=9000"), issued.headers),
    ]:
        with pytest.raises(BadSignature):
            verify(url, method, headers, key.public)
    # Leaving a signed header out is no way around it.
    with pytest.raises(BadSignature, match="not sent"):
        verify(issued.url, "PUT", {"Content-Type": PDF}, key.public)
    # And another key did not sign it.
    with pytest.raises(BadSignature):
        verify(issued.url, "PUT", issued.headers, ServiceAccountKey().public)


async def test_a_signed_get_carries_the_answers_type_and_disposition(
    signing: GcsStorage, key: ServiceAccountKey
) -> None:
    assert isinstance(signing, Presigner)
    issued = await signing.presign_download(
        BUCKETS[1],
        "sha256/ab/cd/" + "ab" * 32,
        content_type=PDF,
        disposition=DISPOSITION,
        expires=300,
    )
    assert (issued.method, issued.headers) == ("GET", {})
    signed = verify(issued.url, "GET", {}, key.public)
    assert signed.signed_headers == ["host"]
    assert signed.query["response-content-type"] == PDF
    assert signed.query["response-content-disposition"] == DISPOSITION
    assert signed.expires == timedelta(seconds=300)
    # The answer's headers are signed: another disposition is another request.
    other = issued.url.replace("attachment", "inline")
    with pytest.raises(BadSignature):
        verify(other, "GET", {}, key.public)
    with pytest.raises(BadSignature):
        verify(issued.url, "PUT", {}, key.public)


async def test_with_kms_the_upload_must_name_the_key(key: ServiceAccountKey) -> None:
    kms = "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/fileshare"
    signer = GcsSigner(
        _service_account(key),
        endpoint="https://storage.googleapis.com",
        encryption=Encryption(mode="kms", kms_key=kms),
    )
    issued = await signer.presign_upload(
        "bucket", "staging/direct/x", content_type=PDF, size=5, sha256=None, expires=60
    )
    assert issued.url.startswith("https://storage.googleapis.com/bucket/staging/direct/x?")
    assert issued.headers["x-goog-encryption-kms-key-name"] == kms
    signed = verify(issued.url, "PUT", issued.headers, key.public)
    assert "x-goog-encryption-kms-key-name" in signed.signed_headers
    without = {k: v for k, v in issued.headers.items() if not k.startswith("x-goog-encryption")}
    with pytest.raises(BadSignature):
        verify(issued.url, "PUT", without, key.public)


# ------------------------------------------------------------------ against fake-gcs-server


async def test_the_signed_put_writes_the_object_and_the_signed_get_reads_it(
    signing: GcsStorage,
) -> None:
    assert isinstance(signing, Presigner)
    object_key = staging_key()
    data = b"%PDF-1.4 direct " * 100
    up = await signing.presign_upload(
        BUCKETS[0], object_key, content_type=PDF, size=len(data), sha256=None, expires=60
    )
    async with aiohttp.ClientSession() as plain:
        async with plain.put(up.url, data=data, headers=up.headers) as resp:
            assert resp.status == 200, await resp.text()
        info = await signing.head(BUCKETS[0], object_key)
        assert (info.size, info.content_type) == (len(data), PDF)

        down = await signing.presign_download(
            BUCKETS[0], object_key, content_type=PDF, disposition=DISPOSITION, expires=60
        )
        async with plain.get(down.url) as resp:
            assert resp.status == 200
            assert await resp.read() == data
    await signing.delete(BUCKETS[0], object_key)


# ------------------------------------------------------------------ who signs


async def test_without_anything_that_signs_the_backend_is_no_presigner(
    fake_gcs: FakeGcs,
) -> None:
    storage = await open_gcs_storage(signing_key=None, endpoint=fake_gcs.endpoint, buckets=BUCKETS)
    try:
        assert type(storage) is GcsStorage
        assert not isinstance(storage, Presigner)
        await storage.ping()  # and it still stores
    finally:
        await storage.close()


async def test_a_key_file_that_does_not_load_fails_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "service_account", "private_key": "-----BEGIN nothing"}))
    with pytest.raises(StorageError, match="FILESHARE_GCS_SIGNING_CREDENTIALS") as caught:
        await find_signing_credentials(bad, emulated=True)
    assert "BEGIN" not in str(caught.value)
    with pytest.raises(StorageError):
        await find_signing_credentials(tmp_path / "missing.json", emulated=False)


async def test_default_credentials_sign_only_when_they_can(
    key: ServiceAccountKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GOOGLE_APPLICATION_CREDENTIALS is the first place google.auth.default() looks: no
    # metadata server is asked.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key.write(tmp_path / "adc.json")))
    found = await find_signing_credentials(None, emulated=False)
    assert found is not None
    assert found.service_account_email == key.email
    # An emulator's requests are anonymous: its backend signs only with a key file given.
    assert await find_signing_credentials(None, emulated=True) is None

    user = tmp_path / "user.json"
    user.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "c",
                "client_secret": "s",
                "refresh_token": "r",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user))
    # A person's gcloud login holds no key and names no service account.
    assert await find_signing_credentials(None, emulated=False) is None


async def test_a_remote_signer_signs_in_a_worker_thread(key: ServiceAccountKey) -> None:
    """Credentials that sign elsewhere (impersonation: IAM signBlob, an HTTP call) never
    block the event loop; a key at hand signs on it."""
    remote = _RemoteSigning(key)
    signer = GcsSigner(remote, endpoint="https://storage.googleapis.com")
    assert not signer.local
    issued = await signer.presign_download(
        "b", "k", content_type=PDF, disposition="inline", expires=60
    )
    verify(issued.url, "GET", {}, key.public)
    assert remote.threads
    assert threading.get_ident() not in remote.threads

    local = GcsSigner(_service_account(key), endpoint="https://storage.googleapis.com")
    assert local.local


async def test_a_signing_failure_is_a_storage_error_naming_no_detail(
    key: ServiceAccountKey,
) -> None:
    remote = _RemoteSigning(key, fail=True)
    signer = GcsSigner(remote, endpoint="https://storage.googleapis.com")
    with pytest.raises(StorageError, match=r"signing failed \(RuntimeError\)") as caught:
        await signer.presign_upload("b", "k", content_type=PDF, size=1, sha256=None, expires=60)
    assert "token=" not in str(caught.value)


async def test_the_factory_builds_a_presigner_from_the_setting(
    fake_gcs: FakeGcs, key_file: Path, key: ServiceAccountKey
) -> None:
    from fileshare.config import Settings
    from fileshare.storage.factory import open_storage

    for bucket in BUCKETS:
        fake_gcs.create_bucket(bucket)
    common: dict[str, Any] = {
        "storage": "gcs",
        "gcs_endpoint": fake_gcs.endpoint,
        "unscanned_bucket": BUCKETS[0],
        "permanent_bucket": BUCKETS[1],
        "api_keys": {"a": "a" * 16},
    }
    async with open_storage(Settings(**common, gcs_signing_credentials=key_file)) as storage:
        assert isinstance(storage, SigningGcsStorage)
        assert isinstance(storage, Presigner)
        issued = await storage.presign_download(
            BUCKETS[1], "x", content_type=PDF, disposition="inline", expires=5
        )
        verify(issued.url, "GET", {}, key.public)
    async with open_storage(Settings(**common)) as storage:
        assert not isinstance(storage, Presigner)


# ------------------------------------------------------------------ helpers


def _service_account(key: ServiceAccountKey) -> Any:
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_info(key.info())  # type: ignore[no-untyped-call]


class _RemoteSigning(ga_credentials.Credentials, ga_credentials.Signing):
    """Credentials that sign the way impersonated ones do, as far as fileshare can tell
    (``Signing`` but no key of fileshare's own); here with the test's key, recording the
    thread each signature is made in."""

    def __init__(self, key: ServiceAccountKey, *, fail: bool = False) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._key = key
        self._fail = fail
        self.threads: list[int] = []

    def refresh(self, request: Any) -> None:
        raise AssertionError("signing needs no token")

    def sign_bytes(self, message: bytes) -> bytes:
        self.threads.append(threading.get_ident())
        if self._fail:
            raise RuntimeError("signBlob answered 403 with token=secret")
        return self._key.private.sign(message, padding.PKCS1v15(), hashes.SHA256())

    @property
    def signer_email(self) -> str:
        return self._key.email

    @property
    def signer(self) -> Any:
        return None


def test_the_setting_names_a_key_file(key_file: Path, tmp_path: Path) -> None:
    from fileshare.config import ConfigError, load_settings

    env = {
        "FILESHARE_STORAGE": "gcs",
        "FILESHARE_API_KEYS": "a:" + "a" * 16,
        "FILESHARE_GCS_SIGNING_CREDENTIALS": str(key_file),
    }
    assert load_settings(env).gcs_signing_credentials == key_file
    missing = {**env, "FILESHARE_GCS_SIGNING_CREDENTIALS": str(tmp_path / "nope.json")}
    with pytest.raises(ConfigError, match="FILESHARE_GCS_SIGNING_CREDENTIALS"):
        load_settings(missing)
    # Unset (or empty): default credentials, where they can sign.
    assert (
        load_settings({**env, "FILESHARE_GCS_SIGNING_CREDENTIALS": ""}).gcs_signing_credentials
        is None
    )
