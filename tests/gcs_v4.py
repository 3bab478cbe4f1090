"""A service-account key made for a test, and an independent check of GCS V4 signed URLs.

fake-gcs-server checks no signatures, so the tests check them: ``verify`` rebuilds the
canonical request and the string-to-sign of a request from its URL, as Google's V4 signing
process defines them (storage/docs/authentication/canonical-requests and .../signatures),
written here from that description and not from google-cloud-storage's code, and checks
``X-Goog-Signature`` against the key's public half.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ALGORITHM = "GOOG4-RSA-SHA256"


class BadSignature(AssertionError):
    """The request is not the one the URL was signed for."""


@dataclass(frozen=True)
class ServiceAccountKey:
    email: str = "fileshare-signer@fileshare-tests.iam.gserviceaccount.com"

    @cached_property
    def private(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def public(self) -> rsa.RSAPublicKey:
        return self.private.public_key()

    def info(self) -> dict[str, str]:
        """The JSON key file's content, as the IAM console hands it out."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": "fileshare-tests",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": self.email,
            "client_id": "1234567890",
            # Never reached: signing needs no token.
            "token_uri": "https://oauth2.googleapis.com/token",
        }

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.info()))
        return path


@dataclass(frozen=True)
class Signed:
    """What a verified URL says of itself."""

    signed_headers: list[str]
    query: dict[str, str]
    date: datetime
    expires: timedelta
    credential: str


def verify(
    url: str,
    method: str,
    headers: dict[str, str],
    public: rsa.RSAPublicKey,
) -> Signed:
    """Check that a request with this method, URL and headers (the client adds Host from
    the URL) is the one signed; raise ``BadSignature`` otherwise."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True))
    try:
        signature = bytes.fromhex(query.pop("X-Goog-Signature"))
        names = query["X-Goog-SignedHeaders"].split(";")
        credential = query["X-Goog-Credential"]
        stamp = query["X-Goog-Date"]
    except KeyError as exc:
        raise BadSignature(f"not a V4 signed URL: no {exc}") from None
    if query.get("X-Goog-Algorithm") != ALGORITHM:
        raise BadSignature("not signed with GOOG4-RSA-SHA256")
    if names != sorted(names):
        raise BadSignature("signed headers out of order")
    # Header names lower-cased, values trimmed with inner runs of spaces folded.
    sent = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    sent["host"] = parts.netloc
    if missing := [name for name in names if name not in sent]:
        raise BadSignature(f"signed headers not sent: {missing}")
    canonical_headers = "".join(f"{name}:{sent[name]}\n" for name in names)
    # Every parameter but the signature, names and values percent-encoded (only
    # unreserved characters left), sorted by name.
    canonical_query = "&".join(
        sorted(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items())
    )
    canonical_request = "\n".join(
        [
            method,
            parts.path,  # as sent: still percent-encoded
            canonical_query,
            canonical_headers,
            ";".join(names),
            "UNSIGNED-PAYLOAD",
        ]
    )
    _email, _, scope = credential.partition("/")
    string_to_sign = "\n".join(
        [ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    try:
        public.verify(signature, string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise BadSignature("X-Goog-Signature does not match the request") from None
    return Signed(
        signed_headers=names,
        query=query,
        date=datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC),
        expires=timedelta(seconds=int(query["X-Goog-Expires"])),
        credential=credential,
    )
