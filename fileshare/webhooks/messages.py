"""Which audited changes are webhook messages, and what their JSON says.

A message is made from the audit row of the change it reports, in the transaction that
writes that row (``index.outbox``): a verdict, a deletion or a failed ingestion is
reported if and only if it happened. It carries what the row carries — ids, states,
codes, never a file's name, tags or metadata — so a webhook receiver learns nothing the
trail would not say, and its ``auditSeq`` leads back to the row.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any

from fileshare.audit import Action, AuditEvent, Result


class MessageType(enum.StrEnum):
    #: The bytes were scanned clean and the file is served (an upload, a direct upload).
    CLEAN = "file.clean"
    #: Refused: clamd found a signature (no file was made, or it was never served).
    INFECTED = "file.infected"
    #: Refused: clamd could not look inside (encrypted, past its limits).
    UNSCANNABLE = "file.unscannable"
    #: The upload could not be scanned or stored (scanner, store or index down) and ended.
    FAILED = "file.failed"
    #: A rescan with newer signatures changed a served file's verdict: it is served no
    #: more (``state`` says why).
    RESCANNED = "file.rescanned"
    DELETED = "file.deleted"
    #: A direct upload whose object was not what its intent declared, or never came.
    UPLOAD_REJECTED = "upload.rejected"
    UPLOAD_EXPIRED = "upload.expired"


_VERDICTS = {
    "clean": MessageType.CLEAN,
    "infected": MessageType.INFECTED,
    "unscannable": MessageType.UNSCANNABLE,
}
_FINISHED = {
    "failed": MessageType.FAILED,
    "rejected": MessageType.UPLOAD_REJECTED,
    "expired": MessageType.UPLOAD_EXPIRED,
}
#: The state of messages whose audit row names none.
_STATES = {
    MessageType.CLEAN: "clean",
    MessageType.FAILED: "failed",
    MessageType.DELETED: "deleted",
}
#: The detail members a message repeats, under their API names.
_DETAIL = {
    "state": "state",
    "signature": "signature",
    "scanner": "scanner",
    "trigger": "trigger",
    "code": "code",
    "upload_id": "uploadId",
}


def message_type(event: AuditEvent) -> MessageType | None:
    """The message an audit row is, or None (reads, refusals of a request, admin work)."""
    if event.owner is None:
        return None  # partner links, clients, keys: nobody's files
    state = event.detail.get("state")
    if event.action is Action.SCAN_VERDICT:
        if event.detail.get("trigger") == "rescan":
            # A clean rescan changes nothing anybody sees, and there is one per file of the
            # corpus after every signature update: only a verdict that changed is news (a
            # content migration 0002 left failed, served again, is).
            unchanged = state == "clean" and event.detail.get("previous_state") != "failed"
            return None if unchanged else MessageType.RESCANNED
        # A clean verdict is reported by the record it made (below): an upload of bytes
        # stored already makes a record and no verdict, and is as clean.
        return None if state == "clean" else _VERDICTS.get(str(state))
    if event.action is Action.UPLOAD_FINISH:
        return _FINISHED.get(str(state))
    if event.action in (Action.FILE_UPLOAD, Action.FILE_REPLACE):
        if event.result is Result.SUCCESS:
            return MessageType.CLEAN  # only clean content ever makes or replaces a record
        # A streamed upload that could not be done (503): the caller was told, and so is
        # every other reader of the owner's files. A refusal (4xx) made nothing to report.
        return MessageType.FAILED if event.result is Result.FAILED else None
    if event.action is Action.FILE_DELETE and event.result is Result.SUCCESS:
        return MessageType.DELETED
    return None


def body(kind: MessageType, event: AuditEvent, seq: int, at: datetime) -> str:
    """The JSON sent (Standard Webhooks' ``type``/``timestamp``/``data`` envelope), as the
    exact text every attempt signs."""
    data: dict[str, Any] = {"owner": event.owner, "auditSeq": seq}
    if event.file_id is not None:
        data["fileId"] = event.file_id
    if event.sha256 is not None:
        data["sha256"] = event.sha256
    for key, name in _DETAIL.items():
        value = event.detail.get(key)
        if value is not None:
            data[name] = value
    if kind in _STATES:
        data["state"] = _STATES[kind]
    stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    envelope = {"type": kind.value, "timestamp": stamp, "data": data}
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True)
