"""Encryption at rest: what fileshare asks the store for on every write it makes.

One setting, ``FILESHARE_STORAGE_ENCRYPTION``, says it for every backend:

- ``default``: ask for nothing; the store's own default applies (an S3 bucket's default
  encryption, which AWS applies to every new object since 2023 — the start-up probe
  refuses an S3 bucket whose objects come back unencrypted; Google's keys or a GCS
  bucket's default key; for the local backend, whatever encrypts its volume).
- ``none`` (S3): ask for nothing and check nothing, for S3-compatible stores that encrypt
  below the S3 API (encrypted disks) and so report no encryption; logged as a warning at
  every start.
- ``sse-s3`` (S3): ``x-amz-server-side-encryption: AES256`` on every PutObject,
  CreateMultipartUpload and CopyObject: keys managed by the store. The S3 default,
  because a bucket policy can then insist on it (``k8s/iam``) and the start-up probe can
  see it honoured.
- ``kms``: S3 SSE-KMS (``aws:kms``, with ``FILESHARE_STORAGE_KMS_KEY`` or, without it,
  the account's AWS-managed ``aws/s3`` key; Bucket Keys on unless
  ``FILESHARE_S3_BUCKET_KEY=false``, which cuts KMS calls to one per bucket key instead
  of one per object); GCS customer-managed keys (``kmsKeyName`` on uploads and resumable
  sessions, ``destinationKmsKeyName`` on rewrites; the key is required there).

UploadPart and UploadPartCopy carry no encryption header: S3 encrypts every part with the
settings of the CreateMultipartUpload it belongs to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

EncryptionMode = Literal["default", "sse-s3", "kms", "none"]
MODES: tuple[EncryptionMode, ...] = ("default", "sse-s3", "kms", "none")


def default_mode(storage: str) -> EncryptionMode:
    """The mode of a backend whose settings name none."""
    return "sse-s3" if storage == "s3" else "default"


#: A GCS key name, as ``kmsKeyName`` takes it.
GCS_KEY = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+")
#: What S3 accepts as an SSE-KMS key: a key id, an alias or their ARNs.
S3_KEY = re.compile(r"[A-Za-z0-9:/_.+=,@-]{1,2048}")

#: S3's names of the two server-side encryptions fileshare may ask for.
S3_ALGORITHMS: dict[EncryptionMode, str] = {"sse-s3": "AES256", "kms": "aws:kms"}


@dataclass(frozen=True)
class Encryption:
    mode: EncryptionMode = "default"
    #: The KMS key (S3 id/ARN/alias, GCS ``projects/.../cryptoKeys/...``), or None.
    kms_key: str | None = None
    #: S3 Bucket Keys with SSE-KMS.
    bucket_key: bool = True

    def problem(self, storage: str) -> str | None:
        """What makes this unusable on ``storage`` (local, s3, gcs), or None."""
        if self.mode not in MODES:
            return f"must be one of {', '.join(MODES)}"
        if storage == "local" and self.mode != "default":
            return "the local backend writes plain files: only default (the volume's encryption)"
        if storage == "gcs" and self.mode in ("sse-s3", "none"):
            return f"{self.mode} is for S3; on GCS use default (GCS encrypts everything) or kms"
        if self.mode != "kms":
            return None if self.kms_key is None else "FILESHARE_STORAGE_KMS_KEY needs kms"
        if storage == "gcs":
            if self.kms_key is None or not GCS_KEY.fullmatch(self.kms_key):
                return (
                    "kms on GCS needs FILESHARE_STORAGE_KMS_KEY="
                    "projects/P/locations/L/keyRings/R/cryptoKeys/K"
                )
        elif self.kms_key is not None and not S3_KEY.fullmatch(self.kms_key):
            return "FILESHARE_STORAGE_KMS_KEY is not a KMS key id, alias or ARN"
        return None

    # --- S3 ------------------------------------------------------------------------------

    @property
    def s3_algorithm(self) -> str | None:
        """What ``ServerSideEncryption`` a HEAD of an object fileshare wrote must say."""
        return S3_ALGORITHMS.get(self.mode)

    def s3_write_args(self) -> dict[str, str | bool]:
        """botocore arguments for PutObject, CreateMultipartUpload and CopyObject."""
        if self.mode not in S3_ALGORITHMS:  # default, none: nothing asked
            return {}
        args: dict[str, str | bool] = {"ServerSideEncryption": S3_ALGORITHMS[self.mode]}
        if self.mode == "kms":
            if self.kms_key is not None:
                args["SSEKMSKeyId"] = self.kms_key
            args["BucketKeyEnabled"] = self.bucket_key
        return args

    def s3_headers(self) -> dict[str, str]:
        """The same as HTTP headers, for a presigned request to sign: an uploader holding
        the URL must send them (and cannot leave them out)."""
        names = {
            "ServerSideEncryption": "x-amz-server-side-encryption",
            "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
            "BucketKeyEnabled": "x-amz-server-side-encryption-bucket-key-enabled",
        }
        return {
            names[k]: (str(v).lower() if isinstance(v, bool) else v)
            for k, v in self.s3_write_args().items()
        }

    # --- GCS -----------------------------------------------------------------------------

    def gcs_upload_params(self) -> dict[str, str]:
        """Query parameters of objects.insert (media, multipart and resumable)."""
        return {"kmsKeyName": self.kms_key} if self.mode == "kms" and self.kms_key else {}

    def gcs_rewrite_params(self) -> dict[str, str]:
        """Query parameters of objects.rewrite: without one, a rewrite takes the
        destination bucket's default key, not the source's."""
        if self.mode == "kms" and self.kms_key:
            return {"destinationKmsKeyName": self.kms_key}
        return {}

    def describe(self, storage: str) -> str:
        """One line for ``check-config``, the start-up log and ``/readyz``; names no key."""
        if storage == "local":
            return "the local volume's own encryption (fileshare adds none: encrypt the volume)"
        if self.mode == "sse-s3":
            return "SSE-S3 (AES256) on every write"
        if self.mode == "kms":
            if storage == "gcs":
                return "customer-managed KMS key on every write"
            which = "the configured KMS key" if self.kms_key else "the AWS-managed aws/s3 key"
            keys = ", bucket keys" if self.bucket_key else ""
            return f"SSE-KMS with {which}{keys} on every write"
        if self.mode == "none":
            return "none asked and none checked (the store must encrypt below the S3 API)"
        if storage == "gcs":
            return "the bucket's default (Google-managed or its default KMS key)"
        return "the bucket's default encryption (nothing asked per write)"
