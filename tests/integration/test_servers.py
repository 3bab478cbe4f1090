"""The real servers behave as fileshare relies on (see tests/servers.py)."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.servers import (
    CLAM_EXE_SIGNATURE,
    CLAMAV_TESTFILES,
    CLAMD_DEV_CONF,
    EICAR,
    EICAR_SIGNATURE,
    Clamd,
    FakeGcs,
    MiB,
    SeaweedS3,
    render_clamd_config,
)

# -- clamd ------------------------------------------------------------------------------------


def test_clamd_finds_eicar_inside_a_large_random_stream(clamd: Clamd) -> None:
    noise = os.urandom(5 * MiB)
    reply = clamd.instream(noise[: 3 * MiB + 17] + EICAR + noise[3 * MiB + 17 :])
    assert reply == f"stream: {EICAR_SIGNATURE}.UNOFFICIAL FOUND".encode()


def test_clamd_passes_clean_random_bytes(clamd: Clamd) -> None:
    assert clamd.instream(os.urandom(5 * MiB)) == b"stream: OK"


@pytest.mark.parametrize("name", ["clam.exe", "clam.zip", "clam.7z", "clam.tar.gz"])
def test_clamd_finds_clam_exe_in_containers(clamd: Clamd, name: str) -> None:
    reply = clamd.instream((CLAMAV_TESTFILES / name).read_bytes())
    assert reply == f"stream: {CLAM_EXE_SIGNATURE}.UNOFFICIAL FOUND".encode()


def test_clamd_rejects_a_stream_past_stream_max_length(tmp_path: Path) -> None:
    with Clamd(max_stream=1 * MiB, dir=tmp_path) as small:
        assert small.instream(os.urandom(1 * MiB)) == b"stream: OK"
        reply = small.instream(os.urandom(3 * MiB))
        assert reply == b"INSTREAM size limit exceeded. ERROR"


def test_clamd_runs_the_development_config_with_this_runs_values(tmp_path: Path) -> None:
    """config/clamd.dev.conf is the one source: rendered with the run's port, paths and
    limits (every placeholder filled), its comments kept, and overrides replacing a line."""
    template = CLAMD_DEV_CONF.read_text()
    directives = [
        line.split()[0] for line in template.splitlines() if line and not line.startswith("#")
    ]
    with Clamd(max_stream=1 * MiB, dir=tmp_path, extra_config={"MaxThreads": "3"}) as server:
        assert server.workdir is not None
        rendered = (server.workdir / "clamd.conf").read_text()
        assert server.ping()
    lines = [line for line in rendered.splitlines() if line and not line.startswith("#")]
    assert [line.split()[0] for line in lines] == directives  # same directives, same order
    assert "$" not in "\n".join(lines)
    assert f"TCPSocket {server.port}" in lines
    assert "TCPAddr 127.0.0.1" in lines
    assert "StreamMaxLength 1048576" in lines
    assert "MaxFileSize 1048576" in lines
    assert "AlertExceedsMax yes" in lines
    assert "MaxThreads 3" in lines
    assert "# Loopback only" in rendered  # the why-comments travel with it


def test_the_clamd_template_and_its_launcher_stay_in_step() -> None:
    with pytest.raises(ValueError, match="placeholders"):
        render_clamd_config({"port": "3310"})


def test_clamd_kill_and_restart(tmp_path: Path) -> None:
    with Clamd(max_stream=1 * MiB, dir=tmp_path) as server:
        port = server.port
        server.kill()
        assert not server.running
        assert not server.ping()
        server.restart()
        assert server.port == port
        assert server.ping()
        assert server.instream(EICAR).endswith(b"FOUND")


# -- SeaweedFS --------------------------------------------------------------------------------


def _client(seaweed: SeaweedS3, secret_key: str) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name=seaweed.region,
        endpoint_url=seaweed.endpoint,
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


@pytest.fixture(scope="module")
def bucket(seaweed: SeaweedS3) -> str:
    seaweed.create_bucket("servers-test")
    return "servers-test"


def test_seaweed_checks_the_secret_key(seaweed: SeaweedS3, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        _client(seaweed, "not-the-secret").list_buckets()
    assert _error_code(info.value) == "SignatureDoesNotMatch"
    names = [b["Name"] for b in _client(seaweed, seaweed.secret_key).list_buckets()["Buckets"]]
    assert bucket in names
    conn = http.client.HTTPConnection(seaweed.host, seaweed.port, timeout=10)
    conn.request("GET", f"/{bucket}")  # anonymous
    assert conn.getresponse().status == 403


def test_seaweed_multipart_upload_part_copy_and_conditional_writes(
    seaweed: SeaweedS3, bucket: str
) -> None:
    s3 = seaweed.client()
    source = os.urandom(6 * MiB)
    s3.put_object(Bucket=bucket, Key="src", Body=source)

    # If-None-Match: * on PutObject
    s3.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert _error_code(info.value) == "PreconditionFailed"

    # a multipart upload built with UploadPartCopy is invisible until completed
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    ranges = [(0, 5 * MiB - 1), (5 * MiB, len(source) - 1)]
    parts = []
    for number, (first, last) in enumerate(ranges, start=1):
        result = s3.upload_part_copy(
            Bucket=bucket,
            Key="dst",
            UploadId=upload,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": "src"},
            CopySourceRange=f"bytes={first}-{last}",
        )
        parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="dst")
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="dst",
        UploadId=upload,
        MultipartUpload={"Parts": parts},
        IfNoneMatch="*",
    )
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == source

    # If-None-Match: * on CompleteMultipartUpload when the key exists; then abort
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1, Body=b"x")
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="dst",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            IfNoneMatch="*",
        )
    assert _error_code(info.value) == "PreconditionFailed"
    s3.abort_multipart_upload(Bucket=bucket, Key="dst", UploadId=upload)
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == source
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u for u in uploads if u["Key"] == "dst"] == []


def _http(method: str, url: str, body: bytes | None = None) -> int:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", body=body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_seaweed_checks_presigned_urls(seaweed: SeaweedS3, bucket: str) -> None:
    s3 = seaweed.client()
    put = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "presigned"}, ExpiresIn=60
    )
    assert _http("PUT", put, b"via presigned url") == 200
    assert s3.get_object(Bucket=bucket, Key="presigned")["Body"].read() == b"via presigned url"
    assert _http("PUT", put.replace("/presigned?", "/elsewhere?"), b"x") == 403
    tampered = put.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert _http("PUT", tampered, b"x") == 403

    get = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "presigned"}, ExpiresIn=1
    )
    deadline = time.monotonic() + 10
    while _http("GET", get) == 200:  # valid until it expires, then refused
        assert time.monotonic() < deadline, "presigned URL never expired"
        time.sleep(0.2)
    assert _http("GET", get) == 403


def test_seaweed_kill_and_restart_keeps_data(tmp_path: Path) -> None:
    with SeaweedS3(dir=tmp_path) as server:
        server.create_bucket("restart-test")
        server.client().put_object(Bucket="restart-test", Key="k", Body=b"kept")
        port = server.port
        server.kill()
        assert not server.running
        server.restart()
        assert server.port == port
        s3 = server.client(retries={"max_attempts": 1})
        assert s3.get_object(Bucket="restart-test", Key="k")["Body"].read() == b"kept"


# -- fake-gcs-server --------------------------------------------------------------------------


def test_fake_gcs_bucket_and_object(fake_gcs: FakeGcs) -> None:
    fake_gcs.create_bucket("servers-test")
    fake_gcs.create_bucket("servers-test")  # idempotent
    status, body = fake_gcs.request(
        "POST",
        "/upload/storage/v1/b/servers-test/o?uploadType=media&name=dir%2Fhello.txt",
        b"hello gcs",
        {"Content-Type": "text/plain"},
    )
    assert status == 200, body
    assert json.loads(body)["size"] == "9"
    status, body = fake_gcs.request("GET", "/storage/v1/b/servers-test/o/dir%2Fhello.txt?alt=media")
    assert (status, body) == (200, b"hello gcs")
