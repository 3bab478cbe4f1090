"""What the audit trail records: one ``AuditEvent`` per audited action.

Events are written to the index (``index.audit``), in the same transaction as the change
they record where there is one, and also logged as structlog events named by their action.
They hold ids, never names, tags or metadata: the trail must not become a second copy of
the PHI it guards.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fileshare.auth.principal import Principal


class Action(enum.StrEnum):
    FILE_UPLOAD = "file.upload"
    FILE_REPLACE = "file.replace"
    FILE_DOWNLOAD = "file.download"
    FILE_READ = "file.read"
    FILE_LIST = "file.list"
    FILE_SEARCH = "file.search"
    FILE_UPDATE = "file.update"
    FILE_DELETE = "file.delete"
    FILE_TAG = "file.tag"
    FILE_UNTAG = "file.untag"
    TAG_CREATE = "tag.create"
    TAG_DELETE = "tag.delete"
    TAG_LIST = "tag.list"
    SCAN_VERDICT = "scan.verdict"
    TOKEN_ISSUE = "token.issue"  # noqa: S105 (an action name, not a secret)
    URL_ISSUE = "url.issue"
    #: A direct upload's status read, its completion call, and how its ingestion ended
    #: when that made no file (rejected, expired, failed; a verdict is ``scan.verdict``).
    UPLOAD_READ = "upload.read"
    UPLOAD_COMPLETE = "upload.complete"
    UPLOAD_FINISH = "upload.finish"
    AUTH_FAIL = "auth.fail"
    #: Authenticated, but refused the owner it named (no grant, a read-only grant).
    ACCESS_DENY = "access.deny"
    CLIENT_CREATE = "client.create"
    CLIENT_REVOKE = "client.revoke"
    #: Its upload policy changed.
    CLIENT_UPDATE = "client.update"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"
    GRANT_CREATE = "grant.create"
    GRANT_DELETE = "grant.delete"
    AUDIT_READ = "audit.read"
    #: A webhook endpoint registered or removed; a dead message sent again.
    WEBHOOK_CREATE = "webhook.create"
    WEBHOOK_DELETE = "webhook.delete"
    WEBHOOK_RETRY = "webhook.retry"
    #: Quarantine: refused bytes kept as evidence; an admin's list, read, release (a rescan
    #: that promotes), forced download (with its reason) and delete.
    QUARANTINE_KEEP = "quarantine.keep"
    QUARANTINE_LIST = "quarantine.list"
    QUARANTINE_READ = "quarantine.read"
    QUARANTINE_RELEASE = "quarantine.release"
    QUARANTINE_DOWNLOAD = "quarantine.download"
    QUARANTINE_DELETE = "quarantine.delete"


class Result(enum.StrEnum):
    SUCCESS = "success"
    #: Refused: authentication failed, not allowed, or the answer was a rejection
    #: (an infected upload).
    DENIED = "denied"
    #: Could not be done: a store, the index or the scanner failed.
    FAILED = "failed"


@dataclass(frozen=True)
class Actor:
    """Who acts, from where, in which request; and for which owner (``owner`` is the
    namespace the request was authorised for, not necessarily the principal's own)."""

    principal: Principal | None
    owner: str | None
    source: str | None = None
    request_id: str | None = None

    def event(self, action: Action, result: Result = Result.SUCCESS, **fields: Any) -> AuditEvent:
        p = self.principal
        return AuditEvent(
            action=action,
            result=result,
            subject=p.subject if p else None,
            client=p.client if p else None,
            role=p.role.value if p else None,
            source=self.source,
            owner=fields.pop("owner", self.owner),
            request_id=self.request_id,
            **fields,
        )


@dataclass(frozen=True)
class AuditEvent:
    action: Action
    result: Result = Result.SUCCESS
    subject: str | None = None
    client: str | None = None
    role: str | None = None
    source: str | None = None
    owner: str | None = None
    file_id: str | None = None
    sha256: str | None = None
    request_id: str | None = None
    #: Small, PHI-free facts: a verdict's state, a scope list, a reason code.
    detail: dict[str, Any] = field(default_factory=dict)

    def but(self, **changes: Any) -> AuditEvent:
        return replace(self, **changes)


@dataclass(frozen=True)
class AuditRecord:
    """An event as the trail holds it: its place in the chain and its time."""

    seq: int
    at: datetime
    event: AuditEvent
    prev_hash: str
    hash: str
