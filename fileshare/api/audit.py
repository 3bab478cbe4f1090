"""``GET /v1/audit``: the audit trail, newest first, as JSON or as a FHIR R4 Bundle of
AuditEvents (``Accept: application/fhir+json`` or ``?_format=fhir``). Scope ``audit:read``.

Reading the trail is audited too: each page answered leaves an ``audit.read`` row (its
filters and how many rows it returned), written before the answer goes out, so a page no
row records is never served.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import hdrs, web
from multidict import MultiMapping

from fileshare import errors
from fileshare.api import audit_fhir, params
from fileshare.api.context import PRINCIPAL, REQUEST_ID
from fileshare.api.keys import AUDIT, POLICY, SETTINGS
from fileshare.audit import Action, Actor, AuditRecord
from fileshare.auth.principal import Role
from fileshare.boundary import index_call
from fileshare.index.audit import AuditQuery
from fileshare.index.tables import OWNER_MAX

routes = web.RouteTableDef()

PARAMETERS = frozenset(
    {"since", "until", "subject", "owner", "fileId", "action", "pageSize", "pageToken", "_format"}
)
#: ``_format`` values that ask for FHIR (FHIR's own spelling, and a short one).
FHIR_FORMATS = frozenset({"fhir", audit_fhir.FHIR_JSON})
_TOKEN = re.compile(r"s([1-9][0-9]{0,18})")


def encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).rstrip(b"=").decode("ascii")


def decode_token(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        match = _TOKEN.fullmatch(raw)
        if match is None:
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise errors.InvalidParameter(
            "pageToken is not one this service gave out: pass nextPageToken as it came"
        ) from None
    return int(match.group(1))


def _subject(query: MultiMapping[str]) -> str | None:
    value = params._single(query, "subject")
    if value is not None and not (0 < len(value) <= OWNER_MAX and value.isprintable()):
        raise errors.InvalidParameter(f"subject is 1 to {OWNER_MAX} printable characters")
    return value


def _file_id(query: MultiMapping[str]) -> str | None:
    value = params._single(query, "fileId")
    if value is not None and not params.FILE_ID.fullmatch(value):
        raise errors.InvalidParameter("fileId is not a file id")
    return value


def _action(query: MultiMapping[str]) -> str | None:
    value = params._single(query, "action")
    if value is not None and value not in {a.value for a in Action}:
        raise errors.InvalidParameter(
            f"action is one of {', '.join(sorted(a.value for a in Action))}"
        )
    return value


def _when(query: MultiMapping[str], name: str) -> datetime | None:
    value = params._single(query, name)
    return None if value is None else params._timestamp(name, value)


def audit_query(query: MultiMapping[str]) -> AuditQuery:
    unknown = sorted(set(query) - PARAMETERS)
    if unknown:
        takes = ", ".join(sorted(PARAMETERS))
        raise errors.InvalidParameter(f"unknown parameter; this route takes {takes}")
    token = params._single(query, "pageToken")
    q = AuditQuery(
        since=_when(query, "since"),
        until=_when(query, "until"),
        subject=_subject(query),
        owner=params.owner(query),
        file_id=_file_id(query),
        action=_action(query),
        before=None if token is None else decode_token(token),
        limit=params.page_size(query),
    )
    if q.since is not None and q.until is not None and q.since >= q.until:
        raise errors.InvalidParameter("since must be earlier than until")
    return q


def wants_fhir(request: web.Request) -> bool:
    """``?_format`` decides; else ``Accept``: FHIR when it ranks ``application/fhir+json`` at
    least as high as ``application/json`` (wildcards match both: JSON, the default)."""
    fmt = params._single(request.query, "_format")
    if fmt is not None:
        if fmt not in FHIR_FORMATS and fmt != "json":
            raise errors.InvalidParameter("_format is fhir (a FHIR Bundle) or json")
        return fmt in FHIR_FORMATS
    ranks = {audit_fhir.FHIR_JSON: 0.0, "application/json": 0.0}
    for item in request.headers.get(hdrs.ACCEPT, "").split(","):
        media, *options = (part.strip() for part in item.split(";"))
        if media.lower() not in ranks:
            continue
        q = 1.0
        for option in options:
            name, _, value = option.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranks[media.lower()] = max(ranks[media.lower()], q)
    return ranks[audit_fhir.FHIR_JSON] > 0 and (
        ranks[audit_fhir.FHIR_JSON] >= ranks["application/json"]
    )


def _stamp(at: datetime) -> str:
    # Microseconds always: the exact value the row's hash was taken over.
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def render(record: AuditRecord) -> dict[str, object]:
    e = record.event
    return {
        "seq": record.seq,
        "at": _stamp(record.at),
        "action": e.action.value,
        "result": e.result.value,
        "subject": e.subject,
        "client": e.client,
        "role": e.role,
        "source": e.source,
        "owner": e.owner,
        "fileId": e.file_id,
        "sha256": e.sha256,
        "requestId": e.request_id,
        "detail": dict(e.detail),
        "prevHash": record.prev_hash,
        "hash": record.hash,
    }


def _page_url(request: web.Request, token: str | None) -> str:
    pairs = [(k, v) for k, v in request.query.items() if k != "pageToken"]
    if token is not None:
        pairs.append(("pageToken", token))
    base = f"{request.app[SETTINGS].base_url}/v1/audit"
    return f"{base}?{urlencode(pairs)}" if pairs else base


async def _scope(request: web.Request, q: AuditQuery) -> AuditQuery:
    """An admin reads every owner's rows. Only admins hold ``audit:read`` today; should
    another role ever hold it, it reads the rows of the owners it may reach, never more."""
    principal = request[PRINCIPAL]
    if principal.role is Role.ADMIN:
        return q
    owner = await request.app[POLICY].owner_for(principal, q.owner, write=False)
    return replace(q, owner=owner)


@routes.get("/v1/audit")
async def read_audit(request: web.Request) -> web.Response:
    fhir = wants_fhir(request)
    q = await _scope(request, audit_query(request.query))
    # One row more than the page tells whether another page follows.
    found = await index_call(request.app[AUDIT].query(replace(q, limit=q.limit + 1)))
    page, more = found[: q.limit], len(found) > q.limit
    token = encode_token(page[-1].seq) if more and page else None

    filters = {
        "since": None if q.since is None else _stamp(q.since),
        "until": None if q.until is None else _stamp(q.until),
        "subject": q.subject,
        "action": q.action,
        "before": q.before,
    }
    actor = Actor(
        request[PRINCIPAL], q.owner, source=request.remote, request_id=request[REQUEST_ID]
    )
    event = actor.event(
        Action.AUDIT_READ,
        file_id=q.file_id,
        detail={
            **{k: v for k, v in filters.items() if v is not None},
            "rows": len(page),
            "format": "fhir" if fhir else "json",
        },
    )
    await index_call(request.app[AUDIT].record(event))

    headers = {hdrs.VARY: hdrs.ACCEPT, hdrs.CACHE_CONTROL: "no-store"}
    if fhir:
        base_url = request.app[SETTINGS].base_url
        body = audit_fhir.bundle(
            page,
            base_url,
            self_url=_page_url(request, params._single(request.query, "pageToken")),
            next_url=None if token is None else _page_url(request, token),
            now=datetime.now(UTC),
        )
        return web.json_response(body, content_type=audit_fhir.FHIR_JSON, headers=headers)
    answer: dict[str, object] = {"items": [render(r) for r in page]}
    if token is not None:
        answer["nextPageToken"] = token
    return web.json_response(answer, headers=headers)
