"""Domain records: content (a blob, addressed by sha256) and files (what clients see)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime


def permanent_key(sha256_hex: str) -> str:
    """Content-addressed key of a clean blob; fanned out so no prefix grows too large."""
    return f"sha256/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"


@dataclass(frozen=True)
class Content:
    """A clean blob in the permanent bucket."""

    sha256: str  # hex
    sha1: bytes  # raw digest (FHIR wants it base64)
    size: int

    @property
    def key(self) -> str:
        return permanent_key(self.sha256)

    @property
    def sha1_b64(self) -> str:
        return base64.b64encode(self.sha1).decode("ascii")


@dataclass(frozen=True)
class FileRecord:
    """What a client uploaded: one owner's name and type for a piece of content.

    Two owners uploading the same bytes get two records sharing one blob.
    """

    id: str
    owner: str
    name: str | None
    content_type: str
    sha256: str
    sha1: bytes
    size: int
    created: datetime

    @property
    def key(self) -> str:
        return permanent_key(self.sha256)

    @property
    def sha1_b64(self) -> str:
        return base64.b64encode(self.sha1).decode("ascii")

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'
