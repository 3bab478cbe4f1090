"""The Standard Webhooks signature: ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``), keyed by a
``whsec_`` secret. The signing is the Standard Webhooks project's own code, so a receiver
using any of its libraries verifies exactly what fileshare signs."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 (the spec's prefix, not a secret)
#: 32 random bytes: the spec allows 24 to 64.
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def headers(secret: str, message_id: str, at: datetime, body: str) -> dict[str, str]:
    """The headers of one attempt: the id stays the same on every retry (receivers
    deduplicate on it), the timestamp is the attempt's (receivers refuse old ones)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
    }
