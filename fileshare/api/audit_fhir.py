"""The audit trail as FHIR R4: each row an ``AuditEvent``, a page a ``searchset`` Bundle.

The mapping follows R4's AuditEvent (http://hl7.org/fhir/R4/auditevent.html) and, where R4
leaves a choice, IHE's Basic Audit Log Patterns (BALP, an R4 guide):

- ``type`` (Coding, from the extensible value set ``audit-event-type``): DICOM's event ids —
  110110 *Patient Record* for a file's record and bytes (they are PHI), 110112 *Query* for a
  list or search, 110107 *Import* for a scan verdict (it decides whether bytes come in),
  110106 *Export* for a URL issued to a third party, 110114 *User Authentication* for tokens
  and failed authentication, 110113 *Security Alert* for refusals after authentication (a
  scope short, an owner not granted) and changes of clients, keys and grants, 110101 *Audit
  Log Used* for reading this trail.
- ``subtype``: the FHIR REST interaction (``restful-interaction``: create, read, update,
  patch, delete, search-type) the HTTP call amounts to, and DICOM's sub-types where R4's
  ``audit-event-sub-type`` has one (110122 *Login*, 110132 *Use of Restricted Function*,
  110136/110137 security roles / attributes changed).
- ``action``: C R U D E (a list, a search and a token are E, "execute", as R4 says).
- ``outcome``: 0 success, 4 minor failure (a refusal: the HTTP 4xx kind), 8 serious failure
  (the service failed: the 5xx kind).
- ``agent``: who asked — the subject (requestor) and the acting client when it differs,
  with BALP's client role (DICOM 110153 *Source Role ID*), the role as text, and the source
  address (``network.type`` 2, an IP address). A row no one asked for (none today) names
  fileshare itself.
- ``source.observer``: this deployment, by its public base URL; ``source.type`` 4,
  *Application Server*.
- ``entity``: the file (``what.identifier``: the id under ``<base>/v1/files``; its owner and
  sha256 as ``detail``), or the owner namespace a list was about; the request id as BALP's
  ``XrequestId`` entity. The row's own ``detail`` facts follow as ``entity.detail`` strings.

Identifiers, never names: the trail holds no file names, tags or metadata, and neither does
its export.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fileshare.audit import Action, AuditRecord, Result

FHIR_JSON = "application/fhir+json"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
#: The identifier system of an absolute URI (HL7's, for "the value is a URI").
URI = "urn:ietf:rfc:3986"

Coding = dict[str, str]
Json = dict[str, Any]


def _dcm(code: str, display: str) -> Coding:
    return {"system": DCM, "code": code, "display": display}


def _rest(code: str) -> Coding:
    return {"system": REST, "code": code, "display": code}


PATIENT_RECORD = _dcm("110110", "Patient Record")
QUERY = _dcm("110112", "Query")
IMPORT = _dcm("110107", "Import")
EXPORT = _dcm("110106", "Export")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")
SECURITY_ALERT = _dcm("110113", "Security Alert")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
LOGIN = _dcm("110122", "Login")
RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_ATTRIBUTES_CHANGED = _dcm("110137", "User Security Attributes Changed")
SOURCE_ROLE = _dcm("110153", "Source Role ID")
APPLICATION = _dcm("110150", "Application")


@dataclass(frozen=True)
class Kind:
    """How one action reads in FHIR."""

    type: Coding
    action: str
    subtype: tuple[Coding, ...] = ()


KINDS: Mapping[Action, Kind] = {
    Action.FILE_UPLOAD: Kind(PATIENT_RECORD, "C", (_rest("create"),)),
    Action.FILE_REPLACE: Kind(PATIENT_RECORD, "U", (_rest("update"),)),
    Action.FILE_DOWNLOAD: Kind(PATIENT_RECORD, "R", (_rest("read"),)),
    Action.FILE_READ: Kind(PATIENT_RECORD, "R", (_rest("read"),)),
    Action.FILE_LIST: Kind(QUERY, "E", (_rest("search-type"),)),
    Action.FILE_SEARCH: Kind(QUERY, "E", (_rest("search-type"),)),
    Action.FILE_UPDATE: Kind(PATIENT_RECORD, "U", (_rest("patch"),)),
    Action.FILE_DELETE: Kind(PATIENT_RECORD, "D", (_rest("delete"),)),
    Action.FILE_TAG: Kind(PATIENT_RECORD, "U", (_rest("update"),)),
    Action.FILE_UNTAG: Kind(PATIENT_RECORD, "U", (_rest("update"),)),
    Action.TAG_CREATE: Kind(PATIENT_RECORD, "C", (_rest("create"),)),
    Action.TAG_DELETE: Kind(PATIENT_RECORD, "D", (_rest("delete"),)),
    Action.TAG_LIST: Kind(QUERY, "E", (_rest("search-type"),)),
    Action.SCAN_VERDICT: Kind(IMPORT, "E"),
    Action.TOKEN_ISSUE: Kind(USER_AUTHENTICATION, "E", (LOGIN,)),
    Action.URL_ISSUE: Kind(EXPORT, "E"),
    Action.UPLOAD_READ: Kind(PATIENT_RECORD, "R", (_rest("read"),)),
    Action.UPLOAD_COMPLETE: Kind(PATIENT_RECORD, "C", (_rest("create"),)),
    Action.UPLOAD_FINISH: Kind(IMPORT, "E"),
    Action.AUTH_FAIL: Kind(USER_AUTHENTICATION, "E", (LOGIN,)),
    Action.ACCESS_DENY: Kind(SECURITY_ALERT, "E", (RESTRICTED_FUNCTION,)),
    Action.CLIENT_CREATE: Kind(SECURITY_ALERT, "C", (USER_ATTRIBUTES_CHANGED, _rest("create"))),
    Action.CLIENT_REVOKE: Kind(SECURITY_ALERT, "D", (USER_ATTRIBUTES_CHANGED, _rest("delete"))),
    Action.CLIENT_UPDATE: Kind(SECURITY_ALERT, "U", (USER_ATTRIBUTES_CHANGED, _rest("patch"))),
    Action.KEY_CREATE: Kind(SECURITY_ALERT, "C", (USER_ATTRIBUTES_CHANGED, _rest("create"))),
    Action.KEY_REVOKE: Kind(SECURITY_ALERT, "D", (USER_ATTRIBUTES_CHANGED, _rest("delete"))),
    Action.GRANT_CREATE: Kind(SECURITY_ALERT, "C", (SECURITY_ROLES_CHANGED, _rest("update"))),
    Action.GRANT_DELETE: Kind(SECURITY_ALERT, "D", (SECURITY_ROLES_CHANGED, _rest("delete"))),
    Action.AUDIT_READ: Kind(AUDIT_LOG_USED, "E", (_rest("search-type"),)),
    Action.WEBHOOK_CREATE: Kind(APPLICATION_ACTIVITY, "C", (_rest("create"),)),
    Action.WEBHOOK_DELETE: Kind(APPLICATION_ACTIVITY, "D", (_rest("delete"),)),
    Action.WEBHOOK_RETRY: Kind(APPLICATION_ACTIVITY, "E"),
    Action.QUARANTINE_KEEP: Kind(IMPORT, "C"),
    Action.QUARANTINE_LIST: Kind(QUERY, "E", (_rest("search-type"),)),
    Action.QUARANTINE_READ: Kind(PATIENT_RECORD, "R", (_rest("read"),)),
    Action.QUARANTINE_RELEASE: Kind(PATIENT_RECORD, "C", (_rest("create"),)),
    Action.QUARANTINE_DOWNLOAD: Kind(EXPORT, "E"),
    Action.QUARANTINE_DELETE: Kind(PATIENT_RECORD, "D", (_rest("delete"),)),
}
#: A refusal after authentication (403: a scope or role short) is a security alert, as an
#: owner refused is (``access.deny``), not a failed login.
_REFUSED = KINDS[Action.ACCESS_DENY]
#: An action added later and not mapped yet (a test keeps KINDS complete).
_UNMAPPED = Kind(APPLICATION_ACTIVITY, "E")
OUTCOMES: Mapping[Result, str] = {Result.SUCCESS: "0", Result.DENIED: "4", Result.FAILED: "8"}


def kind(record: AuditRecord) -> Kind:
    e = record.event
    if e.action is Action.AUTH_FAIL and e.detail.get("status") == 403:
        return _REFUSED
    return KINDS.get(e.action, _UNMAPPED)


def instant(at: datetime) -> str:
    """A FHIR ``instant``: with seconds and a zone, here UTC at microseconds."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _network(source: str | None) -> Json | None:
    if not source:
        return None
    try:
        ipaddress.ip_address(source)
    except ValueError:
        return {"address": source, "type": "1"}  # a machine name
    return {"address": source, "type": "2"}  # an IP address


def _agents(record: AuditRecord, base_url: str) -> list[Json]:
    e = record.event
    clients = f"{base_url}/v1/admin/clients"
    network = _network(e.source)
    agents: list[Json] = []
    if e.subject is None and e.client is None:
        if e.action is Action.AUTH_FAIL:
            # Somebody asked, and could not say who: where they asked from is all there is.
            agent: Json = {"type": {"coding": [SOURCE_ROLE]}, "requestor": True}
        else:
            agent = {
                "type": {"coding": [APPLICATION]},
                "who": {"display": "fileshare"},
                "requestor": False,
            }
        if network:
            agent["network"] = network
        return [agent]
    subject = e.subject or e.client
    first: Json = {"who": {"identifier": {"value": subject}}, "requestor": True}
    if e.role:
        first["role"] = [{"text": e.role}]
    if e.client is None or e.client == subject:
        first["type"] = {"coding": [SOURCE_ROLE]}
        first["who"]["identifier"]["system"] = clients
        if network:
            first["network"] = network
        return [first]
    agents.append(first)
    acting: Json = {
        "type": {"coding": [SOURCE_ROLE]},
        "who": {"identifier": {"system": clients, "value": e.client}},
        "requestor": False,
    }
    if network:
        acting["network"] = network
    agents.append(acting)
    return agents


def _detail(items: Mapping[str, object]) -> list[Json]:
    return [
        {"type": key, "valueString": _text(value)}
        for key, value in items.items()
        if value is not None and _text(value) != ""
    ]


def _entities(record: AuditRecord, base_url: str) -> list[Json]:
    e = record.event
    facts = _detail(e.detail)
    entities: list[Json] = []
    if e.file_id is not None:
        entities.append(
            {
                "what": {"identifier": {"system": f"{base_url}/v1/files", "value": e.file_id}},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
                "detail": _detail({"owner": e.owner, "sha256": e.sha256}) + facts,
            }
        )
    elif e.owner is not None:
        entities.append(
            {
                "what": {"identifier": {"value": e.owner}},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "description": "the owner whose files the action concerned",
                "detail": _detail({"sha256": e.sha256}) + facts,
            }
        )
    transaction: Json = {"type": {"system": BALP_ENTITY, "code": "XrequestId"}}
    if e.request_id is not None:
        transaction["what"] = {"identifier": {"value": e.request_id}}
    if not entities and facts:
        transaction["detail"] = facts
    if "what" in transaction or "detail" in transaction:
        entities.append(transaction)
    for entity in entities:
        if not entity.get("detail"):
            entity.pop("detail", None)
    return entities


def audit_event(record: AuditRecord, base_url: str) -> Json:
    """One trail row as an R4 AuditEvent."""
    e = record.event
    k = kind(record)
    resource: Json = {
        "resourceType": "AuditEvent",
        "id": str(record.seq),
        "type": k.type,
    }
    if k.subtype:
        resource["subtype"] = list(k.subtype)
    resource["action"] = k.action
    resource["recorded"] = instant(record.at)
    resource["outcome"] = OUTCOMES[e.result]
    if e.result is not Result.SUCCESS:
        why = ", ".join(f"{key} {_text(value)}" for key, value in e.detail.items())
        resource["outcomeDesc"] = f"{e.result.value}: {why}" if why else e.result.value
    resource["agent"] = _agents(record, base_url)
    resource["source"] = {
        "observer": {"identifier": {"system": URI, "value": base_url}, "display": "fileshare"},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities = _entities(record, base_url)
    if entities:
        resource["entity"] = entities
    return resource


def bundle(
    records: Sequence[AuditRecord],
    base_url: str,
    *,
    self_url: str,
    next_url: str | None,
    now: datetime,
) -> Json:
    """A page of the trail as a ``searchset`` Bundle. ``total`` is left out: counting a
    filtered trail would cost a scan per page."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": instant(now),
        "link": links,
        "entry": [
            {
                # Stable: the same row is the same urn in every export.
                "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{base_url}#{r.hash}')}",
                "resource": audit_event(r, base_url),
                "search": {"mode": "match"},
            }
            for r in records
        ],
    }
