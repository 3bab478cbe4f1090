"""Encryption at rest on every write a backend makes (issue 15), against real servers.

S3: SeaweedFS honours SSE-S3 (``ServerSideEncryption: AES256`` comes back on HEAD) and
applies no default encryption, so an object is encrypted exactly when fileshare asked.
GCS: fake-gcs-server ignores ``kmsKeyName``, so the requests are read off the recording
proxy instead; where the answer of real GCS is needed (the key an object was encrypted
with), the proxy gives it and the test says so.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from fileshare.storage.base import PROBE_PREFIX, StorageError
from fileshare.storage.encryption import Encryption
from fileshare.storage.gcs import GcsStorage
from fileshare.storage.s3 import MIN_PART_SIZE, S3Storage
from tests.contract.test_gcs_specific import PART, Recorder, recording_proxy
from tests.servers import FakeGcs, SeaweedS3

KMS_KEY = "projects/p/locations/europe-west1/keyRings/fileshare/cryptoKeys/objects"


# ------------------------------------------------------------------------------- S3


def _buckets(seaweed: SeaweedS3) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    buckets = (f"sse-a-{tag}", f"sse-b-{tag}")
    for bucket in buckets:
        seaweed.create_bucket(bucket)
    return buckets


async def _s3(
    seaweed: SeaweedS3, buckets: tuple[str, str], encryption: Encryption, endpoint: str = ""
) -> S3Storage:
    return await S3Storage.create(
        buckets=buckets,
        endpoint=endpoint or seaweed.endpoint,
        region=seaweed.region,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        part_size=MIN_PART_SIZE,
        copy_part_size=MIN_PART_SIZE,
        timeout=30,
        encryption=encryption,
    )


async def _write_every_way(storage: S3Storage, src: str, dst: str) -> list[tuple[str, str]]:
    """One object per write path: PutObject, a single-part writer (PutObject at commit),
    a multipart writer, a small copy (CopyObject) and a large one (UploadPartCopy)."""
    big = bytes(range(256)) * (MIN_PART_SIZE // 256 * 2 + 7)  # three parts
    await storage.put(src, "put", b"small object")
    await storage.put(src, "put-if-absent", b"small object", if_absent=True)
    for key, data in (("writer-small", b"x" * 1000), ("writer-multipart", big)):
        writer = await storage.open_writer(src, key)
        for i in range(0, len(data), 1 << 20):
            await writer.write(data[i : i + (1 << 20)])
        await writer.commit()
    for key, source, size in (
        ("copy-small", "writer-small", 1000),
        ("copy-parts", "writer-multipart", len(big)),
    ):
        info = await storage.head(src, source)
        copy = await storage.begin_copy(src, source, dst, key, size=size, src_version=info.version)
        await copy.commit()
    return [
        (src, "put"),
        (src, "put-if-absent"),
        (src, "writer-small"),
        (src, "writer-multipart"),
        (dst, "copy-small"),
        (dst, "copy-parts"),
    ]


async def test_every_s3_write_is_encrypted_as_asked_and_reads_back(seaweed: SeaweedS3) -> None:
    buckets = _buckets(seaweed)
    storage = await _s3(seaweed, buckets, Encryption("sse-s3"))
    raw = seaweed.client()
    try:
        written = await _write_every_way(storage, *buckets)
        for bucket, key in written:
            head = raw.head_object(Bucket=bucket, Key=key)
            assert head.get("ServerSideEncryption") == "AES256", (bucket, key)
        # Downloads and ranges of encrypted objects (multipart and part-copied ones too).
        whole = b"".join([c async for c in storage.read(buckets[1], "copy-parts")])
        assert whole == bytes(range(256)) * (MIN_PART_SIZE // 256 * 2 + 7)
        middle = b"".join(
            [
                c
                async for c in storage.read(
                    buckets[1], "copy-parts", start=MIN_PART_SIZE - 3, end=MIN_PART_SIZE + 2
                )
            ]
        )
        assert middle == whole[MIN_PART_SIZE - 3 : MIN_PART_SIZE + 3]
    finally:
        await storage.close()


async def test_without_the_setting_seaweedfs_stores_in_the_clear(seaweed: SeaweedS3) -> None:
    """The control for the test above: the encryption is fileshare's asking, not SeaweedFS's
    default. And ``default`` mode refuses such a bucket at start (it would keep PHI plain)."""
    buckets = _buckets(seaweed)
    storage = await _s3(seaweed, buckets, Encryption("default"))
    raw = seaweed.client()
    try:
        written = await _write_every_way(storage, *buckets)
        for bucket, key in written:
            assert "ServerSideEncryption" not in raw.head_object(Bucket=bucket, Key=key)
        with pytest.raises(StorageError, match="keeps objects unencrypted"):
            await storage.verify_encryption()
        assert _probes(raw, buckets[0]) == []
    finally:
        await storage.close()


def _probes(raw: Any, bucket: str) -> list[str]:
    listed = raw.list_objects_v2(Bucket=bucket, Prefix=PROBE_PREFIX)
    return [o["Key"] for o in listed.get("Contents", [])]


async def test_the_start_up_probe_verifies_sse_s3_and_reports_the_bucket(
    seaweed: SeaweedS3,
) -> None:
    buckets = _buckets(seaweed)
    storage = await _s3(seaweed, buckets, Encryption("sse-s3"))
    try:
        found = await storage.verify_encryption()
    finally:
        await storage.close()
    assert found.startswith(f"SSE-S3 (AES256) on every write; verified on {buckets[0]}; ")
    # SeaweedFS has no default encryption: the report says unasked writes stay plain.
    assert "keeps unasked writes unencrypted" in found
    assert _probes(seaweed.client(), buckets[0]) == []


async def test_none_asks_and_checks_nothing(seaweed: SeaweedS3) -> None:
    buckets = _buckets(seaweed)
    storage = await _s3(seaweed, buckets, Encryption("none"))
    try:
        assert "none checked" in await storage.verify_encryption()
        await storage.put(buckets[0], "k", b"plain")
        assert "ServerSideEncryption" not in seaweed.client().head_object(
            Bucket=buckets[0], Key="k"
        )
    finally:
        await storage.close()


async def test_a_store_without_kms_refuses_kms_writes_and_start_fails(seaweed: SeaweedS3) -> None:
    """SeaweedFS has no KMS: asked for aws:kms it fails the write, so the probe fails and
    fileshare would not start (rather than write unencrypted)."""
    buckets = _buckets(seaweed)
    storage = await _s3(seaweed, buckets, Encryption("kms"))
    try:
        with pytest.raises(StorageError, match="encryption probe"):
            await storage.verify_encryption()
        with pytest.raises(StorageError):
            await storage.put(buckets[0], "k", b"never stored in the clear")
        assert "Contents" not in seaweed.client().list_objects_v2(Bucket=buckets[0])
    finally:
        await storage.close()


async def test_a_store_that_ignores_the_header_is_refused(seaweed: SeaweedS3) -> None:
    """SeaweedFS cannot be made to ignore the header: the proxy removes the encryption from
    its HEAD answers, as a store that silently drops SSE would answer."""
    buckets = _buckets(seaweed)
    async with recording_proxy(seaweed.endpoint) as rec:

        async def strip(request: web.Request, body: bytes) -> web.StreamResponse | None:
            if request.method != "HEAD":
                return None
            answer = await rec.forward(request, body)
            answer.headers.popall("x-amz-server-side-encryption", None)
            return answer

        rec.intercept = strip
        storage = await _s3(seaweed, buckets, Encryption("sse-s3"), endpoint=rec.url)
        try:
            with pytest.raises(
                StorageError, match="asked for AES256 encryption, the store reports none"
            ):
                await storage.verify_encryption()
        finally:
            await storage.close()
        puts = rec.requests("PUT", PROBE_PREFIX)
        assert puts
        assert all(p.headers.get("x-amz-server-side-encryption") == "AES256" for p in puts)


async def test_a_bucket_policy_refusing_unencrypted_writes_is_reported(seaweed: SeaweedS3) -> None:
    """SeaweedFS has no bucket policies: the proxy answers a PUT without the encryption
    header with S3's AccessDenied, as the k8s/iam bucket policy would. Any other refusal
    (here of the DELETE that removes the probe) is a failure, not a posture."""
    buckets = _buckets(seaweed)
    denied = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message></Error>"
    )
    async with recording_proxy(seaweed.endpoint) as rec:
        refuse = {"method": "PUT"}

        async def policy(request: web.Request, body: bytes) -> web.StreamResponse | None:
            if request.method != refuse["method"]:
                return None
            if refuse["method"] == "PUT" and "x-amz-server-side-encryption" in request.headers:
                return None
            return web.Response(status=403, body=denied, content_type="application/xml")

        rec.intercept = policy
        storage = await _s3(seaweed, buckets, Encryption("sse-s3"), endpoint=rec.url)
        try:
            found = await storage.verify_encryption()
            assert found.endswith("; the bucket refuses unencrypted writes")
            refuse["method"] = "DELETE"
            with pytest.raises(StorageError) as failed:
                await storage.verify_encryption()
            assert "refuses unencrypted" not in str(failed.value)
        finally:
            await storage.close()


@pytest.mark.parametrize(
    ("configured", "reported", "accepted"),
    [
        ("arn:aws:kms:eu-west-1:1:key/k-1", "arn:aws:kms:eu-west-1:1:key/k-1", True),
        ("k-1", "arn:aws:kms:eu-west-1:1:key/k-1", True),
        ("k-2", "arn:aws:kms:eu-west-1:1:key/k-1", False),
        ("arn:aws:kms:eu-west-1:1:key/k-2", "arn:aws:kms:eu-west-1:1:key/k-1", False),
        ("alias/fileshare", "arn:aws:kms:eu-west-1:1:key/k-1", True),
        ("arn:aws:kms:eu-west-1:1:alias/fileshare", "arn:aws:kms:eu-west-1:1:key/k-1", True),
    ],
)
def test_the_kms_key_objects_come_back_with_is_compared_by_key_id(
    configured: str, reported: str, accepted: bool
) -> None:
    """(HEAD's answer under SSE-KMS cannot come from SeaweedFS, which has no KMS: the
    comparison is checked on its own.)"""
    storage = S3Storage(encryption=Encryption("kms", kms_key=configured))
    if accepted:
        storage._check_kms_key("b", reported)
    else:
        with pytest.raises(StorageError, match="not encrypted with the configured KMS key"):
            storage._check_kms_key("b", reported)


# ------------------------------------------------------------------------------ GCS


@pytest.fixture
async def gcs_rec(fake_gcs: FakeGcs) -> AsyncIterator[Recorder]:
    async with recording_proxy(fake_gcs.endpoint) as rec:
        yield rec


async def _gcs(
    fake_gcs: FakeGcs, rec: Recorder, encryption: Encryption
) -> tuple[GcsStorage, str, str]:
    tag = uuid.uuid4().hex[:10]
    src, dst = f"kms-a-{tag}", f"kms-b-{tag}"
    for bucket in (src, dst):
        fake_gcs.create_bucket(bucket)
    storage = await GcsStorage.create(
        endpoint=rec.url, buckets=(src, dst), part_size=PART, timeout=10.0, encryption=encryption
    )
    return storage, src, dst


async def _gcs_every_way(storage: GcsStorage, src: str, dst: str) -> None:
    await storage.put(src, "put", b"small", if_absent=True)
    for key, data in (("writer-small", b"y" * 100), ("writer-resumable", b"z" * (PART * 3 + 5))):
        writer = await storage.open_writer(src, key)
        await writer.write(data)
        await writer.commit()
    info = await storage.head(src, "writer-resumable")
    copy = await storage.begin_copy(
        src, "writer-resumable", dst, "copy", size=info.size, src_version=info.version
    )
    await copy.commit()


async def test_every_gcs_write_names_the_kms_key(fake_gcs: FakeGcs, gcs_rec: Recorder) -> None:
    storage, src, dst = await _gcs(fake_gcs, gcs_rec, Encryption("kms", kms_key=KMS_KEY))
    try:
        await _gcs_every_way(storage, src, dst)
        copied = b"".join([c async for c in storage.read(dst, "copy", start=PART, end=PART + 3)])
        assert copied == b"zzzz"
    finally:
        await storage.close()
    uploads = gcs_rec.requests("POST", r"/upload/storage/v1/b/")
    kinds = sorted({u.query["uploadType"] for u in uploads})
    assert kinds == ["multipart", "resumable"]
    assert all(u.query.get("kmsKeyName") == KMS_KEY for u in uploads)
    rewrites = gcs_rec.requests("POST", r"/rewriteTo/")
    assert rewrites
    assert all(r.query.get("destinationKmsKeyName") == KMS_KEY for r in rewrites)


async def test_gcs_default_names_no_key(fake_gcs: FakeGcs, gcs_rec: Recorder) -> None:
    storage, src, dst = await _gcs(fake_gcs, gcs_rec, Encryption("default"))
    try:
        await _gcs_every_way(storage, src, dst)
        assert "bucket's default" in await storage.verify_encryption()
    finally:
        await storage.close()
    assert gcs_rec.seen
    assert not any("kmsKeyName" in s.path or "KmsKeyName" in s.path for s in gcs_rec.seen)


async def test_the_gcs_probe_checks_the_key_objects_come_back_with(
    fake_gcs: FakeGcs, gcs_rec: Recorder
) -> None:
    """fake-gcs records no key, so the probe refuses to start on it; answering for GCS (which
    reports the key version that encrypted the object), the proxy lets it pass."""
    storage, src, _ = await _gcs(fake_gcs, gcs_rec, Encryption("kms", kms_key=KMS_KEY))
    try:
        with pytest.raises(StorageError, match="not encrypted with the configured KMS key"):
            await storage.verify_encryption()

        async def as_gcs(request: web.Request, body: bytes) -> web.StreamResponse | None:
            if request.method == "GET" and request.query.get("fields") == "kmsKeyName":
                reply = {"kmsKeyName": f"{KMS_KEY}/cryptoKeyVersions/3"}
                return web.Response(body=json.dumps(reply), content_type="application/json")
            return None

        gcs_rec.intercept = as_gcs
        assert (await storage.verify_encryption()).endswith(f"verified on {src}")
        assert [k async for k in storage.list_keys(src, PROBE_PREFIX)] == []
    finally:
        await storage.close()


# --------------------------------------------------------------------- presigned PUT


async def test_a_presigned_put_must_carry_the_encryption_it_was_signed_with(
    seaweed: SeaweedS3,
) -> None:
    """The store checks the signature, which covers the encryption headers: a holder of
    the URL cannot upload without them, and what it uploads with them is encrypted."""
    import aiohttp

    buckets = _buckets(seaweed)
    storage = await _s3(seaweed, buckets, Encryption("sse-s3"))
    body = b"uploaded around fileshare"
    try:
        presigned = await storage.presign_upload(
            buckets[0],
            "staging/presigned",
            content_type="application/pdf",
            size=len(body),
            sha256=None,
            expires=900,
        )
        url, headers = presigned.url, presigned.headers
    finally:
        await storage.close()
    assert headers["x-amz-server-side-encryption"] == "AES256"
    async with aiohttp.ClientSession() as http:
        without = {k: v for k, v in headers.items() if not k.startswith("x-amz-")}
        async with http.put(url, data=body, headers=without) as refused:
            assert refused.status == 403, await refused.text()
        assert "Contents" not in seaweed.client().list_objects_v2(Bucket=buckets[0])
        async with http.put(url, data=body, headers=headers) as accepted:
            assert accepted.status == 200, await accepted.text()
    head = seaweed.client().head_object(Bucket=buckets[0], Key="staging/presigned")
    assert head["ServerSideEncryption"] == "AES256"
