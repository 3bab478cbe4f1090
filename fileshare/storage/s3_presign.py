"""Presigned requests of the S3 backend (the direct-to-bucket flows): one PUT, a form's POST
policy, a multipart plan fileshare completes itself, a GET for a redirect. A mixin of
``S3Storage``: it signs with the storage's client and encryption settings."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from fileshare.storage.base import (
    NotAsPlanned,
    ObjectNotFound,
    PartPlan,
    Presigned,
    PresignedForm,
)
from fileshare.storage.encryption import Encryption
from fileshare.storage.s3_errors import error_code, translate

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef


class S3Presigning:
    """What ``S3Storage`` signs. Needs its client, encryption, SSE arguments and the abort
    of a multipart upload."""

    encryption: Encryption
    _sse: dict[str, Any]

    @property
    def _client(self) -> S3Client:
        raise NotImplementedError

    async def _abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        raise NotImplementedError

    async def presign_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        size: int | None,
        sha256: str | None,
        expires: int,
        exclusive: bool = True,
    ) -> Presigned:
        """SigV4 query signing: Content-Type, Content-Length (unless ``size`` is None: a
        partner link's PUT, whose size nobody knows), the encryption headers and the
        checksum are signed headers, so the store refuses an upload that leaves one out
        or changes it."""
        params: dict[str, object] = {
            "Bucket": bucket,
            "Key": key,
            "ContentType": content_type,
            **self._sse,
        }
        if size is not None:
            params["ContentLength"] = size
        headers = {"Content-Type": content_type, **self.encryption.s3_headers()}
        if exclusive:
            params["IfNoneMatch"] = "*"
            headers["If-None-Match"] = "*"
        if sha256 is not None:
            checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
            params["ChecksumSHA256"] = checksum
            headers["x-amz-checksum-sha256"] = checksum
        with translate(f"presign {bucket}/{key}"):
            url = await self._client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires
            )
        return Presigned("PUT", url, headers, _expiry(expires))

    async def presign_download(
        self, bucket: str, key: str, *, content_type: str, disposition: str, expires: int
    ) -> Presigned:
        params = {
            "Bucket": bucket,
            "Key": key,
            "ResponseContentType": content_type,
            "ResponseContentDisposition": disposition,
        }
        with translate(f"presign {bucket}/{key}"):
            url = await self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires
            )
        return Presigned("GET", url, {}, _expiry(expires))

    async def presign_form(
        self, bucket: str, key: str, *, content_type: str, size: int, expires: int
    ) -> PresignedForm:
        fields = {"Content-Type": content_type, **self.encryption.s3_headers()}
        conditions: list[Any] = [
            {"bucket": bucket},
            ["eq", "$key", key],
            ["content-length-range", size, size],
            *({name: value} for name, value in fields.items()),
        ]
        with translate(f"presign form {bucket}/{key}"):
            signed = await self._client.generate_presigned_post(
                bucket, key, Fields=fields, Conditions=conditions, ExpiresIn=expires
            )
        return PresignedForm(
            signed["url"], {k: str(v) for k, v in signed["fields"].items()}, _expiry(expires)
        )

    async def presign_multipart(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        part_sizes: list[int],
        expires: int,
    ) -> tuple[str, list[PartPlan]]:
        what = f"presign multipart {bucket}/{key}"
        with translate(what):
            resp = await self._client.create_multipart_upload(
                Bucket=bucket,
                Key=key,
                ContentType=content_type,
                **self._sse,
            )
        upload_id = resp["UploadId"]
        plan: list[PartPlan] = []
        try:
            for number, size in enumerate(part_sizes, start=1):
                with translate(what):
                    url = await self._client.generate_presigned_url(
                        "upload_part",
                        Params={
                            "Bucket": bucket,
                            "Key": key,
                            "UploadId": upload_id,
                            "PartNumber": number,
                            "ContentLength": size,
                        },
                        ExpiresIn=expires,
                    )
                plan.append(PartPlan(number, size, Presigned("PUT", url, {}, _expiry(expires))))
        except BaseException:
            await self._abort_upload(bucket, key, upload_id)
            raise
        return upload_id, plan

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, part_sizes: list[int]
    ) -> bool:
        what = f"complete multipart {bucket}/{key}"
        found: dict[int, tuple[int, str]] = {}
        marker = 0
        while True:
            with translate(what):
                try:
                    page = await self._client.list_parts(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
                    )
                except ClientError as exc:
                    if error_code(exc) == "NoSuchUpload":
                        raise ObjectNotFound(f"{what}: no such upload") from None
                    raise
            for part in page.get("Parts", []):
                found[part["PartNumber"]] = (part["Size"], part["ETag"])
            if not page.get("IsTruncated"):
                break
            marker = page["NextPartNumberMarker"]
        if len(found) < len(part_sizes):
            return False
        for number, size in enumerate(part_sizes, start=1):
            if number not in found or found[number][0] != size:
                raise NotAsPlanned(f"{what}: part {number} is not as planned")
        if len(found) != len(part_sizes):
            raise NotAsPlanned(f"{what}: more parts than planned")
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": n, "ETag": found[n][1]} for n in range(1, len(part_sizes) + 1)
        ]
        with translate(what):
            await self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        return True

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self._abort_upload(bucket, key, upload_id)


def _expiry(seconds: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
