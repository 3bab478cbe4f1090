"""The audit trail's FHIR export (``fileshare.api.audit_fhir``), checked without a FHIR server:
every resource parses as an AuditEvent (and every page as a Bundle) in fhir.resources' R4B
models (R4B left AuditEvent and Bundle as R4 had them), and every coding is one R4's value
sets for that element hold — tables copied here from the R4 specification, so that a code
the export invents is caught — and R4's invariants that the models do not check hold."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle as FhirBundle

from fileshare.api import audit_fhir
from fileshare.audit import Action, AuditEvent, AuditRecord, Result

BASE = "https://files.example.test"
AT = datetime(2024, 2, 29, 12, 0, 0, 5, tzinfo=UTC)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: R4 ValueSet audit-event-type: DICOM's event ids, and FHIR's "rest".
EVENT_TYPES = {
    DCM: {
        "110100": "Application Activity",
        "110101": "Audit Log Used",
        "110102": "Begin Transferring DICOM Instances",
        "110103": "DICOM Instances Accessed",
        "110104": "DICOM Instances Transferred",
        "110105": "DICOM Study Deleted",
        "110106": "Export",
        "110107": "Import",
        "110108": "Network Entry",
        "110109": "Order Record",
        "110110": "Patient Record",
        "110111": "Procedure Record",
        "110112": "Query",
        "110113": "Security Alert",
        "110114": "User Authentication",
    },
    "http://terminology.hl7.org/CodeSystem/audit-event-type": {"rest": "RESTful Operation"},
}
_REST = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search",
    "search-type",
    "search-system",
    "capabilities",
    "transaction",
    "batch",
    "operation",
]
#: R4 ValueSet audit-event-sub-type: DICOM's sub-types and the REST interactions.
SUBTYPES = {
    DCM: {
        "110120": "Application Start",
        "110121": "Application Stop",
        "110122": "Login",
        "110123": "Logout",
        "110124": "Attach",
        "110125": "Detach",
        "110126": "Node Authentication",
        "110127": "Emergency Override Started",
        "110128": "Network Configuration",
        "110129": "Security Configuration",
        "110130": "Hardware Configuration",
        "110131": "Software Configuration",
        "110132": "Use of Restricted Function",
        "110133": "Audit Recording Stopped",
        "110134": "Audit Recording Started",
        "110135": "Object Security Attributes Changed",
        "110136": "Security Roles Changed",
        "110137": "User Security Attributes Changed",
        "110138": "Emergency Override Stopped",
        "110139": "Remote Service Operation Started",
        "110140": "Remote Service Operation Stopped",
        "110141": "Local Service Operation Started",
        "110142": "Local Service Operation Stopped",
    },
    "http://hl7.org/fhir/restful-interaction": {code: code for code in _REST},
}
#: The DICOM part of R4's participation-role-type (agent.type).
AGENT_TYPES = {
    DCM: {
        "110150": "Application",
        "110151": "Application Launcher",
        "110152": "Destination Role ID",
        "110153": "Source Role ID",
        "110154": "Destination Media",
        "110155": "Source Media",
    }
}
ENTITY_TYPES = {
    "http://terminology.hl7.org/CodeSystem/audit-entity-type": {
        "1": "Person",
        "2": "System Object",
        "3": "Organization",
        "4": "Other",
    },
    # Extensible binding: IHE BALP's code for the request id, which R4 has none for.
    "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType": {"XrequestId": None},
}
OBJECT_ROLES = {
    "http://terminology.hl7.org/CodeSystem/object-role": {
        "1": "Patient",
        "3": "Report",
        "4": "Domain Resource",
        "13": "Security Resource",
        "24": "Query",
    }
}
SOURCE_TYPES = {
    "http://terminology.hl7.org/CodeSystem/security-source-type": {
        "1": "User Device",
        "2": "Data Interface",
        "3": "Web Server",
        "4": "Application Server",
        "5": "Database Server",
        "6": "Security Server",
        "7": "Network Device",
        "8": "Network Router",
        "9": "Other",
    }
}
ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOMES = {"0", "4", "8", "12"}
NETWORK_TYPES = {"1", "2", "3", "4", "5"}
#: FHIR R4's regular expressions for the primitive types used.
INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
URN_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def record(
    action: Action, *, seq: int = 1, result: Result = Result.SUCCESS, **fields: Any
) -> AuditRecord:
    values: dict[str, Any] = {
        "subject": "worker-7",
        "client": "worker-7",
        "role": "worker",
        "source": "192.0.2.10",
        "owner": "participant-3",
        "file_id": "f-1",
        "sha256": "a" * 64,
        "request_id": "req-1",
        "detail": {},
    }
    values.update(fields)
    event = AuditEvent(action=action, result=result, **values)
    return AuditRecord(seq=seq, at=AT, event=event, prev_hash="0" * 64, hash=f"{seq:064x}")


def check_coding(coding: dict[str, Any], table: dict[str, dict[str, str | None]]) -> None:
    assert coding["system"] in table, coding
    codes = table[coding["system"]]
    assert coding["code"] in codes, coding
    expected = codes[coding["code"]]
    if expected is not None and "display" in coding:
        assert coding["display"].lower() == expected.lower(), coding


def check_audit_event(resource: dict[str, Any]) -> None:
    """R4's rules for one AuditEvent, beyond the models' cardinalities and types."""
    parsed = FhirAuditEvent.model_validate(resource)
    assert parsed.get_resource_type() == "AuditEvent"
    assert ID.fullmatch(resource["id"])
    check_coding(resource["type"], EVENT_TYPES)
    for coding in resource.get("subtype", []):
        check_coding(coding, SUBTYPES)
    assert resource["action"] in ACTIONS
    assert INSTANT.fullmatch(resource["recorded"])
    assert resource["outcome"] in OUTCOMES
    assert resource["agent"]
    assert any(a["requestor"] for a in resource["agent"]) or resource["agent"][0]["who"] == {
        "display": "fileshare"
    }
    for agent in resource["agent"]:
        assert isinstance(agent["requestor"], bool)
        for coding in agent.get("type", {}).get("coding", []):
            check_coding(coding, AGENT_TYPES)
        if "network" in agent:
            assert agent["network"]["type"] in NETWORK_TYPES
            assert agent["network"]["address"]
    observer = resource["source"]["observer"]
    assert observer["identifier"]["value"] == BASE
    for coding in resource["source"]["type"]:
        check_coding(coding, SOURCE_TYPES)
    for entity in resource.get("entity", []):
        # sev-1: either a name or a query, not both
        assert not ("name" in entity and "query" in entity)
        check_coding(entity["type"], ENTITY_TYPES)
        if "role" in entity:
            check_coding(entity["role"], OBJECT_ROLES)
        for detail in entity.get("detail", []):
            assert detail["type"]
            assert isinstance(detail["valueString"], str)
            assert detail["valueString"]


CASES: list[tuple[str, AuditRecord]] = [
    (str(a.value), record(a, detail={"status": 401, "route": "/v1/files"}))
    for a in Action
    if a is not Action.AUTH_FAIL
] + [
    (
        "auth.fail 401, nobody",
        record(
            Action.AUTH_FAIL,
            result=Result.DENIED,
            subject=None,
            client=None,
            role=None,
            owner=None,
            file_id=None,
            sha256=None,
            detail={"status": 401, "route": "/v1/files"},
        ),
    ),
    (
        "auth.fail 403",
        record(
            Action.AUTH_FAIL,
            result=Result.DENIED,
            owner=None,
            file_id=None,
            sha256=None,
            detail={"status": 403, "route": "/v1/audit"},
        ),
    ),
    (
        "a token's subject and its client",
        record(Action.FILE_DOWNLOAD, subject="user-9", client="portal"),
    ),
    ("a failure", record(Action.FILE_UPLOAD, result=Result.FAILED, detail={"error": "store"})),
    (
        "a system row",
        record(
            Action.SCAN_VERDICT,
            subject=None,
            client=None,
            role=None,
            source=None,
            request_id=None,
            detail={"state": "infected"},
        ),
    ),
    ("an owner, no file", record(Action.FILE_LIST, file_id=None, sha256=None)),
    (
        "no request id, no owner",
        record(
            Action.TOKEN_ISSUE,
            owner=None,
            file_id=None,
            sha256=None,
            request_id=None,
            detail={"scope": "files:read"},
        ),
    ),
    ("a host name as source", record(Action.FILE_READ, source="proxy.internal")),
    ("an IPv6 source", record(Action.FILE_READ, source="2001:db8::1")),
]


@pytest.mark.parametrize(("name", "row"), CASES, ids=[c[0] for c in CASES])
def test_every_row_is_a_valid_r4_audit_event(name: str, row: AuditRecord) -> None:
    check_audit_event(audit_fhir.audit_event(row, BASE))


def test_every_action_has_a_deliberate_mapping() -> None:
    assert set(audit_fhir.KINDS) == set(Action)
    assert set(audit_fhir.OUTCOMES) == set(Result)


def test_file_actions_are_patient_record_events_with_their_rest_interaction() -> None:
    expect = {
        Action.FILE_UPLOAD: ("110110", "C", "create"),
        Action.FILE_REPLACE: ("110110", "U", "update"),
        Action.FILE_DOWNLOAD: ("110110", "R", "read"),
        Action.FILE_READ: ("110110", "R", "read"),
        Action.FILE_UPDATE: ("110110", "U", "patch"),
        Action.FILE_DELETE: ("110110", "D", "delete"),
        Action.FILE_LIST: ("110112", "E", "search-type"),
        Action.FILE_SEARCH: ("110112", "E", "search-type"),
        Action.AUDIT_READ: ("110101", "E", "search-type"),
    }
    for action, (type_code, crud, interaction) in expect.items():
        r = audit_fhir.audit_event(record(action), BASE)
        assert (r["type"]["code"], r["action"]) == (type_code, crud), action
        rest = [c["code"] for c in r["subtype"] if c["system"].endswith("restful-interaction")]
        assert rest == [interaction], action


def test_authentication_and_refusals() -> None:
    failed = audit_fhir.audit_event(
        record(
            Action.AUTH_FAIL,
            result=Result.DENIED,
            subject=None,
            client=None,
            role=None,
            detail={"status": 401, "route": "/v1/files"},
        ),
        BASE,
    )
    assert failed["type"]["code"] == "110114"
    assert [c["code"] for c in failed["subtype"]] == ["110122"]
    assert failed["outcome"] == "4"
    assert failed["outcomeDesc"] == "denied: status 401, route /v1/files"
    (agent,) = failed["agent"]
    assert agent["requestor"] is True
    assert "who" not in agent
    assert agent["network"] == {"address": "192.0.2.10", "type": "2"}
    refused = audit_fhir.audit_event(
        record(Action.AUTH_FAIL, result=Result.DENIED, detail={"status": 403}), BASE
    )
    assert refused["type"]["code"] == "110113"
    assert [c["code"] for c in refused["subtype"]] == ["110132"]
    token = audit_fhir.audit_event(record(Action.TOKEN_ISSUE), BASE)
    assert (token["type"]["code"], token["action"]) == ("110114", "E")


def test_outcomes() -> None:
    assert audit_fhir.audit_event(record(Action.FILE_READ), BASE)["outcome"] == "0"
    assert "outcomeDesc" not in audit_fhir.audit_event(record(Action.FILE_READ), BASE)
    denied = audit_fhir.audit_event(record(Action.FILE_UPLOAD, result=Result.DENIED), BASE)
    assert (denied["outcome"], denied["outcomeDesc"]) == ("4", "denied")
    failed = audit_fhir.audit_event(record(Action.FILE_UPLOAD, result=Result.FAILED), BASE)
    assert failed["outcome"] == "8"


def test_agents_name_the_subject_as_requestor_and_the_acting_client() -> None:
    own = audit_fhir.audit_event(record(Action.FILE_READ), BASE)["agent"]
    assert own == [
        {
            "who": {"identifier": {"system": f"{BASE}/v1/admin/clients", "value": "worker-7"}},
            "requestor": True,
            "role": [{"text": "worker"}],
            "type": {"coding": [audit_fhir.SOURCE_ROLE]},
            "network": {"address": "192.0.2.10", "type": "2"},
        }
    ]
    user, client = audit_fhir.audit_event(
        record(Action.FILE_READ, subject="user-9", client="portal"), BASE
    )["agent"]
    assert user["who"] == {"identifier": {"value": "user-9"}}
    assert user["requestor"] is True
    assert client["who"]["identifier"] == {"system": f"{BASE}/v1/admin/clients", "value": "portal"}
    assert client["requestor"] is False
    assert client["network"]["address"] == "192.0.2.10"


def test_the_file_its_owner_sha256_and_the_request_id_are_entities() -> None:
    r = audit_fhir.audit_event(record(Action.SCAN_VERDICT, detail={"state": "clean", "n": 2}), BASE)
    file, transaction = r["entity"]
    assert file["what"] == {"identifier": {"system": f"{BASE}/v1/files", "value": "f-1"}}
    assert {d["type"]: d["valueString"] for d in file["detail"]} == {
        "owner": "participant-3",
        "sha256": "a" * 64,
        "state": "clean",
        "n": "2",
    }
    assert transaction["type"]["code"] == "XrequestId"
    assert transaction["what"] == {"identifier": {"value": "req-1"}}
    listed = audit_fhir.audit_event(record(Action.FILE_LIST, file_id=None, sha256=None), BASE)
    assert listed["entity"][0]["what"] == {"identifier": {"value": "participant-3"}}


def test_recorded_is_an_instant_in_utc_at_microseconds() -> None:
    at = datetime(2024, 2, 29, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    row = AuditRecord(
        seq=1, at=at, event=AuditEvent(action=Action.FILE_READ), prev_hash="0" * 64, hash="1" * 64
    )
    assert audit_fhir.audit_event(row, BASE)["recorded"] == "2024-02-29T12:00:00.000005Z"


def test_a_page_is_a_searchset_bundle() -> None:
    rows = [record(a, seq=n) for n, a in enumerate(Action, start=1)]
    body = audit_fhir.bundle(
        rows, BASE, self_url=f"{BASE}/v1/audit", next_url=f"{BASE}/v1/audit?pageToken=x", now=AT
    )
    parsed = FhirBundle.model_validate(body)
    assert parsed.type == "searchset"
    assert parsed.total is None
    assert [(link["relation"], link["url"]) for link in body["link"]] == [
        ("self", f"{BASE}/v1/audit"),
        ("next", f"{BASE}/v1/audit?pageToken=x"),
    ]
    assert INSTANT.fullmatch(body["timestamp"])
    urls = [e["fullUrl"] for e in body["entry"]]
    assert all(URN_UUID.fullmatch(u) for u in urls)
    assert len(set(urls)) == len(urls)  # bdl-7: fullUrl unique in a bundle
    for entry in body["entry"]:
        assert entry["search"] == {"mode": "match"}
        check_audit_event(entry["resource"])
    again = audit_fhir.bundle(rows, BASE, self_url="x", next_url=None, now=AT)
    assert [e["fullUrl"] for e in again["entry"]] == urls  # the same row, the same urn
    assert [link["relation"] for link in again["link"]] == ["self"]


def test_the_check_catches_a_code_outside_the_value_sets() -> None:
    """The checks above can fail: an invented event type, a wrong outcome, a missing
    requestor flag."""
    good = audit_fhir.audit_event(record(Action.FILE_READ), BASE)
    for broken in (
        {**good, "type": {"system": DCM, "code": "999999"}},
        {**good, "outcome": "1"},
        {**good, "agent": [{"who": {"display": "x"}}]},
        {**good, "recorded": "2024-02-29"},
    ):
        with pytest.raises((AssertionError, ValueError)):
            check_audit_event(broken)
