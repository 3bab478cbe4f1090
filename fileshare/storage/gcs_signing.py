"""Signed URLs on GCS: the ``Presigner`` capability of the GCS backend, V4-signed by
google-cloud-storage (the one part of that SDK fileshare uses; uploads and downloads keep
speaking the JSON API over aiohttp, see ``gcs``).

Why a subclass, built only where something can sign: ``Presigner`` is a runtime-checkable
Protocol, and ``isinstance`` only looks for its methods. A ``GcsStorage`` that always had
them would claim a capability it lacks whenever nothing can sign; a plain ``GcsStorage``
instead is not a Presigner, so direct uploads answer 501 and downloads are streamed.

Who signs (``find_signing_credentials``):

- ``FILESHARE_GCS_SIGNING_CREDENTIALS``, a service-account JSON key: an RSA signature made
  here, CPU only (a whole presign_upload took 0.3 ms on the 2-core dev machine), so it
  runs on the event loop.
- Otherwise, against Google (no emulator), Application Default Credentials that can sign: a
  service-account key (``GOOGLE_APPLICATION_CREDENTIALS``) signs here as above; impersonated
  and Compute Engine / Workload Identity credentials sign through IAM ``signBlob``, an HTTP
  call, made in a worker thread (the service account needs
  ``roles/iam.serviceAccountTokenCreator`` on itself).
- Nothing else: an emulator without a key file (requests are anonymous there), a person's own
  gcloud login (user credentials hold no key and name no service account).

The URL addresses the XML API on the backend's own host (``storage.googleapis.com``, or the
emulator's): ``https://host/bucket/key?X-Goog-Signature=...``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.urllib3
import structlog
import urllib3
from google.cloud import storage as gcs_sdk
from google.oauth2 import service_account

from fileshare.storage.base import Presigned, StorageError
from fileshare.storage.encryption import Encryption
from fileshare.storage.gcs import GcsStorage, emulator_endpoint

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: What IAM signBlob needs of an access token (Compute Engine tokens carry the instance's
#: scopes; on GKE with Workload Identity, cloud-platform).
SIGNING_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"


class GcsSigner:
    """V4 signed requests for one GCS endpoint, made with these credentials: either
    ``google.auth.credentials.Signing`` ones (a key, or impersonation), or credentials that
    name a service account (Compute Engine), whose access token authorises IAM signBlob."""

    def __init__(
        self, credentials: Any, *, endpoint: str, encryption: Encryption | None = None
    ) -> None:
        self._credentials = credentials
        self._endpoint = endpoint.rstrip("/")
        self._encryption = encryption or Encryption()
        #: A key at hand (never anything else here: no service_account.Credentials is built
        #: around a remote signer) signs on the loop; all others ask IAM, in a thread.
        self.local = isinstance(credentials, service_account.Credentials)
        #: Credentials that cannot sign bytes themselves hand the library their service
        #: account and access token, and it calls signBlob with them.
        self._by_token = not isinstance(credentials, google.auth.credentials.Signing)
        self._lock = threading.Lock()
        self._transport: Any | None = None
        self._client: Any | None = None

    @property
    def mode(self) -> str:
        """How this signer signs, for the start-up log."""
        if self.local:
            return "service-account key"
        return "IAM signBlob"

    async def presign_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        size: int,
        sha256: str | None,
        expires: int,
    ) -> Presigned:
        """A signed PUT (XML API) binding the method, the key, Content-Type, the length
        (``x-goog-content-length-range: size,size``: GCS answers 400 to a body of any other
        size) and, with ``kms``, the key header: an uploader must send these headers as
        they are, and cannot leave one out. ``sha256`` is not bound: GCS checks only MD5
        and CRC32C on an upload, never a SHA-256, so the ingestion hashes the staged object
        itself and rejects it (``digest_mismatch``) when it is not the intent's."""
        headers = {
            "Content-Type": content_type,
            "x-goog-content-length-range": f"{size},{size}",
            # Create only: a second PUT cannot replace what an ingestion is reading.
            "x-goog-if-generation-match": "0",
            **self._encryption_headers(),
        }
        # A copy: the SDK adds Host to the dict it is given, and the client sends that itself.
        url = await self._sign(bucket, key, expires, method="PUT", headers=dict(headers))
        return Presigned("PUT", url, headers, _expiry(expires))

    async def presign_download(
        self, bucket: str, key: str, *, content_type: str, disposition: str, expires: int
    ) -> Presigned:
        """A signed GET whose answer carries this type and Content-Disposition (the signed
        ``response-content-type`` and ``response-content-disposition`` parameters)."""
        url = await self._sign(
            bucket,
            key,
            expires,
            method="GET",
            response_type=content_type,
            response_disposition=disposition,
        )
        return Presigned("GET", url, {}, _expiry(expires))

    def _encryption_headers(self) -> dict[str, str]:
        # The XML API's name for objects.insert's kmsKeyName: signed, so a holder of the
        # URL cannot write the object under the bucket's default key instead.
        params = self._encryption.gcs_upload_params()
        if "kmsKeyName" in params:
            return {"x-goog-encryption-kms-key-name": params["kmsKeyName"]}
        return {}

    async def _sign(self, bucket: str, key: str, expires: int, **options: Any) -> str:
        def sign() -> str:
            blob = self._sdk_client().bucket(bucket).blob(key)
            if self._by_token:
                options.update(self._service_account_token())
            url = blob.generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=expires),
                api_access_endpoint=self._endpoint,
                **options,
            )
            return str(url)

        what = f"GCS sign {options['method']} {bucket}/{key}"
        try:
            if self.local:
                return sign()
            return await asyncio.to_thread(sign)
        except Exception as exc:  # google.auth.exceptions.*, urllib3/requests errors...
            # The type only: an IAM reply or a key parser's message is nobody's business.
            raise StorageError(f"{what}: signing failed ({type(exc).__name__})") from exc

    def _sdk_client(self) -> Any:
        """The SDK's client, which here only carries the endpoint and the credentials: it
        makes no request of its own for a URL (project None: none is looked up). Built on
        first use, where signing runs: checking the credentials' universe domain is a
        metadata-server request for Compute Engine credentials."""
        with self._lock:
            if self._client is None:
                self._client = gcs_sdk.Client(
                    project=None,
                    credentials=self._credentials,
                    client_options={"api_endpoint": self._endpoint},
                )
            return self._client

    def _service_account_token(self) -> dict[str, str]:
        """The service account and a valid access token, for signBlob (in a worker thread;
        a Compute Engine credential names its account only once refreshed)."""
        credentials = self._credentials
        with self._lock:
            if not credentials.valid:
                if self._transport is None:
                    pool = urllib3.PoolManager()
                    self._transport = google.auth.transport.urllib3.Request(pool)  # type: ignore[no-untyped-call]
                credentials.refresh(self._transport)
            return {
                "service_account_email": str(credentials.service_account_email),
                "access_token": str(credentials.token),
            }


class SigningGcsStorage(GcsStorage):
    """The GCS backend with the ``Presigner`` capability, for a deployment whose
    credentials can sign (see the module doc)."""

    def __init__(self, *, signing_credentials: Any, **options: Any) -> None:
        super().__init__(**options)
        self.signer = GcsSigner(
            signing_credentials, endpoint=self.base_url, encryption=self.encryption
        )

    async def presign_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        size: int,
        sha256: str | None,
        expires: int,
    ) -> Presigned:
        return await self.signer.presign_upload(
            bucket, key, content_type=content_type, size=size, sha256=sha256, expires=expires
        )

    async def presign_download(
        self, bucket: str, key: str, *, content_type: str, disposition: str, expires: int
    ) -> Presigned:
        return await self.signer.presign_download(
            bucket, key, content_type=content_type, disposition=disposition, expires=expires
        )


async def open_gcs_storage(*, signing_key: Path | None, **options: Any) -> GcsStorage:
    """The GCS backend (``GcsStorage.create`` takes ``options``), able to sign URLs where
    ``find_signing_credentials`` finds something that signs."""
    emulated = emulator_endpoint(options.get("endpoint")) is not None
    credentials = await find_signing_credentials(signing_key, emulated=emulated)
    if credentials is None:
        log.info("gcs.signing", mode=None, detail="direct uploads and redirects unavailable")
        return await GcsStorage.create(**options)
    storage = await SigningGcsStorage.create(signing_credentials=credentials, **options)
    assert isinstance(storage, SigningGcsStorage)
    log.info("gcs.signing", mode=storage.signer.mode)
    return storage


async def find_signing_credentials(signing_key: Path | None, *, emulated: bool) -> Any | None:
    """Credentials that can sign URLs, or None: ``signing_key`` (a service-account JSON key
    file) when given, else, against Google, Application Default Credentials that can (see
    the module doc). Raises ``StorageError`` for a key file that cannot be loaded, and when
    looking for default credentials fails for another reason than there being none."""
    if signing_key is not None:
        return await _in_thread(
            lambda: service_account.Credentials.from_service_account_file(str(signing_key)),  # type: ignore[no-untyped-call]
            "FILESHARE_GCS_SIGNING_CREDENTIALS: cannot load the service-account key file",
        )
    if emulated:
        return None
    # google.auth.default() may ask the metadata server whether this is Compute Engine.
    try:
        credentials = await _in_thread(_default_credentials, "GCS signing credentials")
    except StorageError as exc:
        if isinstance(exc.__cause__, google.auth.exceptions.DefaultCredentialsError):
            return None
        raise
    return credentials if can_sign(credentials) else None


def can_sign(credentials: Any) -> bool:
    """Whether these credentials sign (a key, impersonation) or name a service account
    whose token IAM signBlob takes (Compute Engine, Workload Identity)."""
    if isinstance(credentials, google.auth.credentials.Signing):
        return True
    return bool(getattr(credentials, "service_account_email", None))


def _default_credentials() -> Any:
    credentials, _project = google.auth.default(scopes=[SIGNING_SCOPE])
    return credentials


async def _in_thread(fn: Callable[[], T], what: str) -> T:
    try:
        return await asyncio.to_thread(fn)
    except Exception as exc:
        # The exception type only: a key file's parser or google-auth may quote contents.
        raise StorageError(f"{what} ({type(exc).__name__})") from exc


def _expiry(seconds: int) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
