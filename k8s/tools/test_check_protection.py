"""Tests of check_protection.py (run: .venv/bin/pytest k8s/tools/test_check_protection.py).

The real k8s/ tree must pass. Every check must then fail on a copy of it broken in exactly
one place: a cloud document beside the manifests, an overlay setting, or a rendered object.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_manifests
import check_protection
import render

K8S = Path(__file__).resolve().parents[1]
SSE = check_protection.SSE
KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
Overlays = dict[str, tuple[list[dict[str, Any]], dict[str, str]]]


def rendered(k8s: Path) -> Overlays:
    out: Overlays = {}
    for name in ("s3", "gcs"):
        objs = render.render(k8s / "overlays" / name)
        (cm,) = [
            o
            for o in objs
            if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fileshare-config")
        ]
        out[name] = (objs, {k: str(v) for k, v in cm["data"].items()})
    return out


def findings(k8s: Path, overlays: Overlays) -> list[str]:
    f = check_manifests.Findings()
    check_protection.check(f, k8s, overlays)
    return f.items


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "k8s"


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc = change(doc) or doc
    path.write_text(json.dumps(doc), encoding="utf-8")


def policy(k8s: Path, role: str) -> Path:
    return k8s / "iam" / f"s3-{role}-bucket-policy.json"


def drop_statement(sid: str) -> Callable[[Any], None]:
    def change(doc: Any) -> None:
        before = len(doc["Statement"])
        doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != sid]
        assert len(doc["Statement"]) == before - 1, f"no statement {sid}"

    return change


def statement(doc: Any, sid: str) -> Any:
    return next(s for s in doc["Statement"] if s.get("Sid") == sid)


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def test_the_real_tree_is_clean() -> None:
    assert findings(K8S, rendered(K8S)) == []


# ----------------------------------------------------------------------- cloud documents

FileBreak = Callable[[Path], None]


def _naive_null_deny(k8s: Path) -> None:
    edit_json(
        policy(k8s, "unscanned"),
        lambda d: d["Statement"].append(
            {
                "Sid": "DenyUnencrypted",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": "arn:aws:s3:::example-fileshare-unscanned/*",
                "Condition": {"Null": {SSE: "true"}},
            }
        ),
    )


def _if_exists_alone(k8s: Path) -> None:
    def change(doc: Any) -> None:
        statement(doc, "DenyOtherEncryption")["Condition"] = {
            "StringNotEqualsIfExists": {SSE: "aws:kms"}
        }

    edit_json(policy(k8s, "permanent"), change)


def _tls_deny_for_one_role(k8s: Path) -> None:
    def change(doc: Any) -> None:
        statement(doc, "DenyInsecureTransport")["Principal"] = {
            "AWS": "arn:aws:iam::123456789012:role/fileshare"
        }

    edit_json(policy(k8s, "unscanned"), change)


def _tls_deny_objects_only(k8s: Path) -> None:
    def change(doc: Any) -> None:
        statement(doc, "DenyInsecureTransport")["Resource"] = (
            "arn:aws:s3:::example-fileshare-permanent/*"
        )

    edit_json(policy(k8s, "permanent"), change)


def _public_allow(k8s: Path) -> None:
    edit_json(
        policy(k8s, "permanent"),
        lambda d: d["Statement"].append(
            {
                "Sid": "PublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::example-fileshare-permanent/*",
            }
        ),
    )


def _not_action(k8s: Path) -> None:
    def change(doc: Any) -> None:
        st = statement(doc, "DenyInsecureTransport")
        st["NotAction"] = "s3:GetObject"
        del st["Action"]

    edit_json(policy(k8s, "unscanned"), change)


def _gcs(role: str, change: Callable[[Any], None]) -> FileBreak:
    return lambda k8s: edit_json(k8s / "overlays" / "gcs" / f"gcs-{role}-bucket.json", change)


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[Any], None]:
    def change(doc: Any) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


DEFAULT_ENCRYPTION = ("Rules", 0)


@pytest.mark.parametrize(
    ("brk", "message"),
    [
        pytest.param(
            lambda k: edit_json(policy(k, "unscanned"), drop_statement("DenyInsecureTransport")),
            "does not deny GetObject without TLS",
            id="no-tls-deny",
        ),
        pytest.param(_tls_deny_for_one_role, "does not deny PutObject without TLS", id="tls-role"),
        pytest.param(_tls_deny_objects_only, "does not deny ListBucket without TLS", id="tls-obj"),
        pytest.param(
            lambda k: edit_json(policy(k, "permanent"), drop_statement("DenyOtherEncryption")),
            "does not deny PutObject asking for AES256",
            id="no-algorithm-deny",
        ),
        pytest.param(_naive_null_deny, "denies UploadPart", id="naive-null-deny"),
        pytest.param(_if_exists_alone, "denies UploadPart", id="ifexists-without-null"),
        pytest.param(
            lambda k: edit_json(policy(k, "unscanned"), drop_statement("DenyOtherKmsKey")),
            "does not deny PutObject with another KMS key",
            id="no-key-pin",
        ),
        pytest.param(
            lambda k: edit_json(policy(k, "permanent"), drop_statement("DenyKmsWithoutKeyId")),
            "does not deny PutObject with aws:kms and no key id",
            id="no-key-id-deny",
        ),
        pytest.param(
            lambda k: edit_json(policy(k, "unscanned"), drop_statement("DenyCustomerProvidedKeys")),
            "does not deny PutObject with a customer-provided key",
            id="no-sse-c-deny",
        ),
        pytest.param(
            lambda k: shutil.copy(policy(k, "unscanned"), policy(k, "permanent")),
            "is not bucket example-fileshare-permanent",
            id="policy-of-the-other-bucket",
        ),
        pytest.param(_public_allow, "PublicRead: allows everyone", id="public-allow"),
        pytest.param(_not_action, "uses NotAction", id="not-action"),
        pytest.param(
            lambda k: policy(k, "permanent").unlink(), "unreadable", id="no-permanent-policy"
        ),
        pytest.param(
            lambda k: edit_json(
                k / "iam" / "s3-default-encryption.json",
                _set(
                    (*DEFAULT_ENCRYPTION, "ApplyServerSideEncryptionByDefault"),
                    {"SSEAlgorithm": "AES256"},
                ),
            ),
            "SSEAlgorithm 'AES256' != 'aws:kms'",
            id="default-sse-s3",
        ),
        pytest.param(
            lambda k: edit_json(
                k / "iam" / "s3-default-encryption.json",
                _set(
                    (*DEFAULT_ENCRYPTION, "ApplyServerSideEncryptionByDefault", "KMSMasterKeyID"),
                    "alias/aws/s3",
                ),
            ),
            "KMSMasterKeyID 'alias/aws/s3' != FILESHARE_STORAGE_KMS_KEY",
            id="default-other-key",
        ),
        pytest.param(
            lambda k: edit_json(
                k / "iam" / "s3-default-encryption.json",
                _set((*DEFAULT_ENCRYPTION, "BucketKeyEnabled"), False),
            ),
            "BucketKeyEnabled must be true",
            id="default-no-bucket-key",
        ),
        pytest.param(
            lambda k: edit_json(
                k / "iam" / "s3-default-encryption.json",
                _set((*DEFAULT_ENCRYPTION, "BucketKeyEnable"), True),
            ),
            "not a valid ServerSideEncryptionConfiguration",
            id="default-botocore-model",
        ),
        pytest.param(
            lambda k: edit_json(
                k / "iam" / "s3-fileshare-policy.json", drop_statement("StorageKmsKey")
            ),
            "lacks ['kms:Decrypt', 'kms:GenerateDataKey']",
            id="no-kms-grant",
        ),
        pytest.param(
            _gcs(
                "unscanned",
                _set(
                    ("encryption", "defaultKmsKeyName"),
                    "projects/x/locations/y/keyRings/r/cryptoKeys/k",
                ),
            ),
            "encryption.defaultKmsKeyName",
            id="gcs-other-key",
        ),
        pytest.param(
            _gcs(
                "permanent",
                _set(("iamConfiguration", "uniformBucketLevelAccess", "enabled"), False),
            ),
            "uniformBucketLevelAccess.enabled must be true",
            id="gcs-acls",
        ),
        pytest.param(
            _gcs("permanent", _set(("iamConfiguration", "publicAccessPrevention"), "inherited")),
            "publicAccessPrevention must be",
            id="gcs-public",
        ),
        pytest.param(
            _gcs(
                "unscanned",
                _set(
                    ("encryption", "googleManagedEncryptionEnforcementConfig", "restrictionMode"),
                    "NotRestricted",
                ),
            ),
            "googleManagedEncryptionEnforcementConfig.restrictionMode must be FullyRestricted",
            id="gcs-google-keys",
        ),
        pytest.param(
            _gcs(
                "unscanned",
                _set(
                    ("encryption", "customerManagedEncryptionEnforcementConfig", "restrictionMode"),
                    "FullyRestricted",
                ),
            ),
            "customer-managed keys must stay allowed",
            id="gcs-nothing-writable",
        ),
        pytest.param(
            _gcs("permanent", _set(("iamConfigurations",), {})),
            "not bucket resource fields: ['iamConfigurations']",
            id="gcs-typo",
        ),
    ],
)
def test_a_broken_document_is_reported(tree: Path, brk: FileBreak, message: str) -> None:
    overlays = rendered(tree)
    brk(tree)
    found = findings(tree, overlays)
    assert any(message in item for item in found), found


# ----------------------------------------------------------------------- overlay settings


@pytest.mark.parametrize(
    ("overlay", "variable", "value", "message"),
    [
        ("s3", "FILESHARE_STORAGE_ENCRYPTION", "sse-s3", "denies PutObject, CreateMultipart"),
        ("s3", "FILESHARE_STORAGE_ENCRYPTION", "default", "must ask for sse-s3 or kms"),
        ("s3", "FILESHARE_STORAGE_KMS_KEY", "1234abcd-12ab-34cd-56ef-1234567890ab", "full key ARN"),
        ("s3", "FILESHARE_STORAGE_KMS_KEY", KEY.replace("eu-west-1", "us-east-1"), "region"),
        ("s3", "FILESHARE_S3_BUCKET_KEY", "false", "BucketKeyEnabled must be false"),
        ("s3", "FILESHARE_PERMANENT_BUCKET", "renamed-permanent", "is not bucket renamed"),
        (
            "gcs",
            "FILESHARE_STORAGE_KMS_KEY",
            "projects/p/locations/l/keyRings/r/cryptoKeys/k2",
            "defaultKmsKeyName",
        ),
        ("gcs", "FILESHARE_STORAGE_ENCRYPTION", "default", "set FILESHARE_STORAGE_ENCRYPTION=kms"),
        ("s3", "FILESHARE_PUBLIC_BASE_URL", "http://fileshare.example.org", "must be https"),
        ("gcs", "FILESHARE_PUBLIC_BASE_URL", "https://other.example.org", "must be https on an"),
        ("s3", "FILESHARE_HSTS_MAX_AGE", "0", "turns HSTS off"),
        ("gcs", "FILESHARE_PLAINTEXT_HOSTS", "db.internal,*", "FILESHARE_PLAINTEXT_HOSTS=*"),
        ("s3", "FILESHARE_CLAMD", "tcp://clamd.fileshare.svc:3310", "must be on loopback"),
    ],
)
def test_a_setting_out_of_step_is_reported(
    overlay: str, variable: str, value: str, message: str
) -> None:
    overlays = rendered(K8S)
    overlays[overlay][1][variable] = value
    found = findings(K8S, overlays)
    assert any(message in item for item in found), found


# ----------------------------------------------------------------------- rendered objects

ObjectBreak = Callable[[list[dict[str, Any]]], None]


def _ingress(name: str, change: Callable[[dict[str, Any]], None]) -> ObjectBreak:
    return lambda objs: change(find(objs, "Ingress", name))


def _annotate(key: str, value: str | None) -> Callable[[dict[str, Any]], None]:
    def change(ing: dict[str, Any]) -> None:
        ann = ing["metadata"]["annotations"]
        if value is None:
            del ann["nginx.ingress.kubernetes.io/" + key]
        else:
            ann["nginx.ingress.kubernetes.io/" + key] = value

    return change


def _np_ingress(rule: dict[str, Any]) -> ObjectBreak:
    return lambda objs: find(objs, "NetworkPolicy", "fileshare")["spec"]["ingress"].append(rule)


def _named_clamd_port(objs: list[dict[str, Any]]) -> None:
    pod = find(objs, "Deployment", "fileshare")["spec"]["template"]["spec"]
    clamd = next(c for c in pod["initContainers"] if c["name"] == "clamd")
    clamd["ports"] = [{"name": "clamd", "containerPort": 3310}]
    _np_ingress({"from": [{"podSelector": {}}], "ports": [{"port": "clamd"}]})(objs)


def _open_everything(objs: list[dict[str, Any]]) -> None:
    objs.append(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-namespace"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]},
        }
    )


def _service_to_clamd(objs: list[dict[str, Any]]) -> None:
    find(objs, "Service", "fileshare")["spec"]["ports"].append(
        {"name": "clamd", "port": 3310, "targetPort": 3310}
    )


@pytest.mark.parametrize(
    ("brk", "message"),
    [
        pytest.param(
            _ingress(
                "fileshare", lambda i: i["spec"]["tls"][0].update(hosts=["other.example.org"])
            ),
            "host fileshare.example.org is not in spec.tls",
            id="tls-other-host",
        ),
        pytest.param(
            _ingress("fileshare-internal-paths", lambda i: i["spec"]["rules"][0].pop("host")),
            "a rule without host",
            id="rule-without-host",
        ),
        pytest.param(
            _ingress("fileshare", lambda i: i["spec"]["tls"][0].pop("secretName")),
            "without secretName",
            id="tls-no-secret",
        ),
        pytest.param(
            _ingress("fileshare", _annotate("force-ssl-redirect", None)),
            "force-ssl-redirect must be",
            id="no-force-redirect",
        ),
        pytest.param(
            _ingress("fileshare-internal-paths", _annotate("ssl-redirect", "false")),
            "ssl-redirect must not be off",
            id="redirect-off",
        ),
        pytest.param(
            _np_ingress({"from": [{"podSelector": {}}], "ports": [{"port": 3310}]}),
            "clamd's port 3310",
            id="np-port",
        ),
        pytest.param(
            _np_ingress({"from": [{"podSelector": {}}]}), "clamd's port 3310", id="np-all-ports"
        ),
        pytest.param(
            _np_ingress(
                {"from": [{"podSelector": {}}], "ports": [{"port": 3000, "endPort": 4000}]}
            ),
            "clamd's port 3310",
            id="np-range",
        ),
        pytest.param(_named_clamd_port, "clamd's port 3310", id="np-named-port"),
        pytest.param(_open_everything, "NetworkPolicy allow-namespace", id="np-other-policy"),
        pytest.param(_service_to_clamd, "targets clamd's port 3310", id="service"),
    ],
)
@pytest.mark.parametrize("overlay", ["s3", "gcs"])
def test_a_broken_object_is_reported(overlay: str, brk: ObjectBreak, message: str) -> None:
    overlays = rendered(K8S)
    brk(overlays[overlay][0])
    found = findings(K8S, overlays)
    assert any(message in item and f"[{overlay}]" in item for item in found), found


# ----------------------------------------------------------------------- the pieces


@pytest.mark.parametrize(
    ("operator", "context", "holds"),
    [
        ("StringNotEquals", {}, True),  # negated, key missing: true
        ("StringNotEqualsIfExists", {}, True),  # ...IfExists, key missing: true (still denies)
        ("StringEquals", {}, False),
        ("StringEqualsIfExists", {}, True),
        ("StringNotEquals", {SSE: "aws:kms"}, False),
        ("StringNotEquals", {SSE: "AES256"}, True),
        ("StringLike", {SSE: "aws:kms:dsse"}, True),
    ],
)
def test_condition_semantics(operator: str, context: dict[str, str], holds: bool) -> None:
    wanted = ["aws:kms*"] if operator == "StringLike" else ["aws:kms"]
    assert check_protection.condition_holds(operator, SSE, wanted, context) is holds


def test_null_and_unsupported_operators() -> None:
    assert check_protection.condition_holds("Null", SSE, ["true"], {})
    assert not check_protection.condition_holds("Null", SSE, ["false"], {})
    with pytest.raises(check_protection.Unsupported):
        check_protection.condition_holds("ForAnyValue:StringEquals", SSE, ["x"], {SSE: "x"})
    with pytest.raises(check_protection.Unsupported):
        check_protection.condition_holds("NumericLessThan", "s3:TlsVersion", ["1.2"], {})


def test_wildcard_tls_hosts() -> None:
    covered = check_protection.host_covered
    assert covered("a.example.org", ["*.example.org"])
    assert not covered("example.org", ["*.example.org"])
    assert not covered("a.b.example.org", ["*.example.org"])
    assert not covered("a.example.org.evil", ["*.example.org"])


def test_check_manifests_runs_these_checks(tree: Path, tmp_path: Path) -> None:
    args = ["--k8s-dir", str(tree)]
    for name, (objs, _env) in rendered(tree).items():
        out = tmp_path / f"{name}.yaml"
        out.write_text(render.dump_documents(objs), encoding="utf-8")
        args += ["--rendered", f"{name}={out}"]
    assert check_manifests.main(args) == 0
    edit_json(policy(tree, "unscanned"), drop_statement("DenyInsecureTransport"))
    assert check_manifests.main(args) == 1
