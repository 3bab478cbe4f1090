"""Encryption at rest and in transit: the deployment half of fileshare's data protection.

Called from check_manifests.py's main (one more group of findings, same output) and kept
apart from it because it is one concern with its own inputs: the overlays' encryption
settings and the cloud documents beside the manifests that make those settings stick.

Checked, for every rendered overlay:
  * Ingress: every rule names a host, every host is covered by a ``tls`` entry with a
    secret, HTTP is redirected (``ssl-redirect`` not off, ``force-ssl-redirect`` on);
    FILESHARE_PUBLIC_BASE_URL is https on one of those hosts (fileshare then sends HSTS
    itself), FILESHARE_HSTS_MAX_AGE does not turn it off, FILESHARE_PLAINTEXT_HOSTS has no
    ``*``;
  * clamd's port (from FILESHARE_CLAMD) is reachable through no NetworkPolicy ingress rule
    that selects the fileshare pods and no Service (clamd has no TLS: it stays on loopback).
For an overlay on S3 (its bucket names, FILESHARE_STORAGE_ENCRYPTION, _KMS_KEY, _S3_BUCKET_KEY):
  * k8s/iam/s3-<unscanned|permanent>-bucket-policy.json, by evaluating the policy's Deny
    statements on the requests that matter: every request without TLS is denied, every write
    asking for another algorithm, another KMS key, no key id with aws:kms, or SSE-C is
    denied, and fileshare's own requests are not, including the multipart ones
    (UploadPart, UploadPartCopy, CompleteMultipartUpload: s3:PutObject without any
    encryption header, which a naive "deny when the header is missing" refuses);
  * k8s/iam/s3-default-encryption.json, which encrypts the writes that carry no header,
    against botocore's PutBucketEncryption model and the overlay's algorithm, key and bucket
    key setting;
  * with a KMS key: k8s/iam/s3-fileshare-policy.json grants kms:GenerateDataKey and
    kms:Decrypt on it.
For an overlay on GCS: k8s/overlays/<name>/gcs-<unscanned|permanent>-bucket.json set the
overlay's key as the bucket's default (CMEK), refuse Google-managed and customer-supplied
keys, and turn on uniform bucket-level access and public access prevention.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

Obj = dict[str, Any]

#: fileshare.storage.encryption.S3_ALGORITHMS, repeated so the lint runs without fileshare.
S3_ALGORITHMS = {"sse-s3": "AES256", "kms": "aws:kms"}
#: What S3 could be asked for instead (DSSE-KMS too).
ALL_S3_ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")
KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key/[A-Za-z0-9-]+")
GCS_KEY = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+")
BUCKETS = (("unscanned", "FILESHARE_UNSCANNED_BUCKET"), ("permanent", "FILESHARE_PERMANENT_BUCKET"))
DEFAULT_CLAMD = "tcp://127.0.0.1:3310"

SSE = "s3:x-amz-server-side-encryption"
SSE_KEY_ID = "s3:x-amz-server-side-encryption-aws-kms-key-id"
SSE_C = "s3:x-amz-server-side-encryption-customer-algorithm"

#: Writable members of a Cloud Storage bucket resource that these patches may set.
GCS_BUCKET_FIELDS = frozenset(
    {
        "encryption",
        "iamConfiguration",
        "labels",
        "lifecycle",
        "logging",
        "retentionPolicy",
        "softDeletePolicy",
        "versioning",
    }
)
GCS_ENFORCEMENT = (
    # (member of "encryption", the restrictionMode it must have, why)
    ("googleManagedEncryptionEnforcementConfig", "FullyRestricted", "no Google-managed keys"),
    ("customerSuppliedEncryptionEnforcementConfig", "FullyRestricted", "no customer-supplied"),
)


class Findings(Protocol):
    """check_manifests.Findings (typed here structurally: no import cycle)."""

    def add(self, where: str, message: str) -> None: ...

    def check(self, ok: bool, where: str, message: str) -> bool: ...


# --------------------------------------------------------------------------- settings


def truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def encryption_mode(env: dict[str, str]) -> str:
    """FILESHARE_STORAGE_ENCRYPTION, or the backend's default (fileshare.storage.encryption
    .default_mode: sse-s3 on S3, default elsewhere)."""
    mode = env.get("FILESHARE_STORAGE_ENCRYPTION", "").strip()
    if mode:
        return mode
    return "sse-s3" if env.get("FILESHARE_STORAGE") == "s3" else "default"


def load_json(f: Findings, path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        f.add(str(path), f"unreadable: {exc}")
        return None


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- IAM evaluation
#
# Enough of IAM's policy evaluation to answer "does a Deny statement of this bucket policy
# match this request?", following the IAM reference (condition operators): a missing key
# makes a positive operator false and a negated one true; ...IfExists makes a missing key
# true (so a negated ...IfExists in a Deny still denies a request without the key); Null
# tests presence; all operators and keys of a statement must hold. Anything it does not
# model is reported, not guessed.


class Unsupported(Exception):
    pass


_STRING_OPERATORS = {
    "StringEquals": (False, False, False),  # (negated, ignore case, wildcards)
    "StringNotEquals": (True, False, False),
    "StringEqualsIgnoreCase": (False, True, False),
    "StringNotEqualsIgnoreCase": (True, True, False),
    "StringLike": (False, False, True),
    "StringNotLike": (True, False, True),
    "ArnEquals": (False, False, True),
    "ArnLike": (False, False, True),
    "ArnNotEquals": (True, False, True),
    "ArnNotLike": (True, False, True),
    "Bool": (False, True, False),
}


def wildcard(pattern: str, value: str, *, ignore_case: bool) -> bool:
    """IAM's ``*`` and ``?`` (no other metacharacters)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in str(pattern))
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def condition_holds(operator: str, key: str, wanted: list[Any], context: dict[str, str]) -> bool:
    if operator.startswith(("ForAnyValue:", "ForAllValues:")):
        raise Unsupported(f"set operator {operator}")
    present = {k.lower(): v for k, v in context.items()}
    value = present.get(key.lower())
    if operator == "Null":
        return any((value is None) == (str(w).lower() == "true") for w in wanted)
    base, if_exists = operator, False
    if operator.endswith("IfExists"):
        base, if_exists = operator[: -len("IfExists")], True
    if base not in _STRING_OPERATORS:
        raise Unsupported(f"condition operator {operator}")
    negated, ignore_case, wild = _STRING_OPERATORS[base]
    if value is None:
        return if_exists or negated
    if wild:
        matched = any(wildcard(str(w), value, ignore_case=ignore_case) for w in wanted)
    elif ignore_case:
        matched = any(str(w).lower() == value.lower() for w in wanted)
    else:
        matched = any(str(w) == value for w in wanted)
    return not matched if negated else matched


@dataclass(frozen=True)
class Request:
    what: str
    action: str
    resource: str
    context: dict[str, str]


def for_everyone(statement: Obj) -> bool:
    principal = statement.get("Principal")
    return principal == "*" or (
        isinstance(principal, dict) and principal.get("AWS") in ("*", ["*"])
    )


def statement_matches(statement: Obj, request: Request) -> bool:
    for unsupported in ("NotAction", "NotResource", "NotPrincipal"):
        if unsupported in statement:
            raise Unsupported(unsupported)
    if not any(
        wildcard(str(a), request.action, ignore_case=True) for a in as_list(statement.get("Action"))
    ):
        return False
    if not any(
        wildcard(str(r), request.resource, ignore_case=False)
        for r in as_list(statement.get("Resource"))
    ):
        return False
    conditions = statement.get("Condition") or {}
    if not isinstance(conditions, dict):
        raise Unsupported("a Condition that is not a map")
    return all(
        condition_holds(operator, key, as_list(wanted), request.context)
        for operator, keys in conditions.items()
        for key, wanted in (keys or {}).items()
    )


def denying(statements: list[Obj], request: Request, *, everyone_only: bool) -> list[str]:
    """Sids of the Deny statements that match ``request``. ``everyone_only``: count only
    statements for every principal (a request that must be denied for anybody); otherwise
    any principal might be fileshare's role, so every Deny counts."""
    return [
        str(st.get("Sid", f"statement {i}"))
        for i, st in enumerate(statements)
        if st.get("Effect") == "Deny"
        and (for_everyone(st) or not everyone_only)
        and statement_matches(st, request)
    ]


def bucket_requests(
    bucket: str, algorithm: str, key: str | None
) -> tuple[list[Request], list[Request]]:
    """(requests fileshare makes, which must not be denied; requests that must be denied)."""
    bucket_arn = f"arn:aws:s3:::{bucket}"
    obj = f"{bucket_arn}/sha256/ab/cd/abcd-example"
    tls = {"aws:SecureTransport": "true"}
    plain = {"aws:SecureTransport": "false"}
    ours = {SSE: algorithm, **({SSE_KEY_ID: key} if algorithm == "aws:kms" and key else {})}
    allowed = [
        Request(
            "PutObject, CreateMultipartUpload or CopyObject with fileshare's encryption headers",
            "s3:PutObject",
            obj,
            {**tls, **ours},
        ),
        Request(
            "UploadPart, UploadPartCopy or CompleteMultipartUpload (s3:PutObject with no "
            "encryption header: parts take their upload's encryption; a deny on the missing "
            "header must also require it present, Null false, and leave the rest to the "
            "bucket default encryption)",
            "s3:PutObject",
            obj,
            dict(tls),
        ),
        Request("GetObject over TLS", "s3:GetObject", obj, dict(tls)),
        Request("DeleteObject over TLS", "s3:DeleteObject", obj, dict(tls)),
        Request("AbortMultipartUpload over TLS", "s3:AbortMultipartUpload", obj, dict(tls)),
        Request("ListBucket over TLS", "s3:ListBucket", bucket_arn, dict(tls)),
    ]
    denied = [
        Request("GetObject without TLS", "s3:GetObject", obj, dict(plain)),
        Request("PutObject without TLS", "s3:PutObject", obj, {**plain, **ours}),
        Request("DeleteObject without TLS", "s3:DeleteObject", obj, dict(plain)),
        Request("ListBucket without TLS", "s3:ListBucket", bucket_arn, dict(plain)),
        Request(
            "PutObject with a customer-provided key (SSE-C)",
            "s3:PutObject",
            obj,
            {**tls, SSE_C: "AES256"},
        ),
    ]
    for other in ALL_S3_ALGORITHMS:
        if other != algorithm:
            denied.append(
                Request(f"PutObject asking for {other}", "s3:PutObject", obj, {**tls, SSE: other})
            )
    if algorithm == "aws:kms" and key:
        m = KMS_KEY_ARN.fullmatch(key)
        region, account = m.groups() if m else ("eu-west-1", "123456789012")
        stranger = f"arn:aws:kms:{region}:{account}:key/00000000-0000-0000-0000-000000000000"
        denied += [
            Request(
                "PutObject with another KMS key",
                "s3:PutObject",
                obj,
                {**tls, SSE: "aws:kms", SSE_KEY_ID: stranger},
            ),
            Request(
                "PutObject with aws:kms and no key id (S3 would use the aws/s3 key)",
                "s3:PutObject",
                obj,
                {**tls, SSE: "aws:kms"},
            ),
        ]
    return allowed, denied


# --------------------------------------------------------------------------- S3


def check_s3(f: Findings, k8s: Path, overlay: str, env: dict[str, str]) -> None:
    where = f"[{overlay}]"
    mode = encryption_mode(env)
    algorithm = S3_ALGORITHMS.get(mode)
    if not f.check(
        algorithm is not None,
        where,
        f"FILESHARE_STORAGE_ENCRYPTION={mode}: an S3 deployment must ask for sse-s3 or kms on "
        "every write (so presigned URLs carry it and the bucket policy can insist on it)",
    ):
        return
    assert algorithm is not None
    key = env.get("FILESHARE_STORAGE_KMS_KEY", "").strip() or None
    if algorithm == "aws:kms" and key is not None:
        m = KMS_KEY_ARN.fullmatch(key)
        if f.check(
            m is not None,
            where,
            f"FILESHARE_STORAGE_KMS_KEY {key!r} must be a full key ARN "
            "(arn:aws:kms:REGION:ACCOUNT:key/ID): the bucket policies compare key ARNs",
        ):
            assert m is not None
            region = env.get("FILESHARE_S3_REGION", "")
            f.check(
                not region or m.group(1) == region,
                where,
                f"the KMS key is in {m.group(1)}, the buckets in FILESHARE_S3_REGION={region} "
                "(SSE-KMS needs a key in the bucket's region)",
            )
    for role, variable in BUCKETS:
        bucket = env.get(variable, "")
        if f.check(bool(bucket), where, f"{variable} is not set"):
            check_bucket_policy(
                f, k8s / "iam" / f"s3-{role}-bucket-policy.json", bucket, algorithm, key
            )
    if quarantine := env.get("FILESHARE_QUARANTINE_BUCKET", ""):
        # Optional, but once set its evidence is protected like the other buckets.
        check_bucket_policy(
            f, k8s / "iam" / "s3-quarantine-bucket-policy.json", quarantine, algorithm, key
        )
    check_default_encryption(f, k8s / "iam" / "s3-default-encryption.json", env, algorithm, key)
    if algorithm == "aws:kms" and key is not None:
        check_kms_grant(f, k8s / "iam" / "s3-fileshare-policy.json", key)


def check_bucket_policy(
    f: Findings, path: Path, bucket: str, algorithm: str, key: str | None
) -> None:
    w = str(path)
    policy = load_json(f, path)
    if policy is None:
        return
    if not f.check(
        isinstance(policy, dict) and isinstance(policy.get("Statement"), list),
        w,
        'expected {"Version": ..., "Statement": [...]}',
    ):
        return
    f.check(policy.get("Version") == "2012-10-17", w, 'Version must be "2012-10-17"')
    statements = [st for st in policy["Statement"] if isinstance(st, dict)]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    for i, st in enumerate(statements):
        sid = st.get("Sid", f"statement {i}")
        for resource in as_list(st.get("Resource")):
            f.check(
                resource == bucket_arn or str(resource).startswith(bucket_arn + "/"),
                w,
                f"{sid}: Resource {resource} is not bucket {bucket} (S3 refuses a bucket policy "
                "naming another bucket; the bucket names must match the overlay's fileshare.env)",
            )
        f.check(
            not (st.get("Effect") == "Allow" and for_everyone(st)),
            w,
            f"{sid}: allows everyone (public access)",
        )
    allowed, denied = bucket_requests(bucket, algorithm, key)
    try:
        for request in allowed:
            sids = denying(statements, request, everyone_only=False)
            f.check(not sids, w, f"denies {request.what} ({', '.join(sids)})")
        for request in denied:
            f.check(
                bool(denying(statements, request, everyone_only=True)),
                w,
                f'does not deny {request.what} (needs a Deny for "Principal": "*")',
            )
    except Unsupported as exc:
        f.add(w, f"uses {exc}, which this check cannot evaluate: keep to plain Deny statements")


def check_default_encryption(
    f: Findings, path: Path, env: dict[str, str], algorithm: str, key: str | None
) -> None:
    w = str(path)
    cfg = load_json(f, path)
    if cfg is None:
        return
    try:
        import botocore.session
        from botocore.validate import ParamValidationError, validate_parameters
    except ImportError:
        print(
            "note: botocore not importable; S3 default encryption checked structurally only",
            file=sys.stderr,
        )
    else:
        model = botocore.session.get_session().get_service_model("s3")
        shape = model.operation_model("PutBucketEncryption").input_shape
        assert shape is not None
        try:
            validate_parameters(
                {"Bucket": "example", "ServerSideEncryptionConfiguration": cfg}, shape
            )
        except ParamValidationError as exc:
            f.add(w, f"not a valid ServerSideEncryptionConfiguration: {exc}")
            return
    rules = cfg.get("Rules") if isinstance(cfg, dict) else None
    if not f.check(isinstance(rules, list) and len(rules) == 1, w, "expected exactly one rule"):
        return
    assert isinstance(rules, list)
    rule = rules[0]
    default = rule.get("ApplyServerSideEncryptionByDefault") or {}
    f.check(
        default.get("SSEAlgorithm") == algorithm,
        w,
        f"SSEAlgorithm {default.get('SSEAlgorithm')!r} != {algorithm!r} "
        f"(FILESHARE_STORAGE_ENCRYPTION={encryption_mode(env)}): writes without a header "
        "would get another encryption than fileshare's",
    )
    if algorithm == "aws:kms":
        f.check(
            default.get("KMSMasterKeyID") == key,
            w,
            f"KMSMasterKeyID {default.get('KMSMasterKeyID')!r} != FILESHARE_STORAGE_KMS_KEY "
            f"{key!r}",
        )
        want = truthy(env.get("FILESHARE_S3_BUCKET_KEY", "true"))
        f.check(
            rule.get("BucketKeyEnabled", False) is want,
            w,
            f"BucketKeyEnabled must be {str(want).lower()} like FILESHARE_S3_BUCKET_KEY",
        )
    else:
        f.check("KMSMasterKeyID" not in default, w, "KMSMasterKeyID without aws:kms")


def check_kms_grant(f: Findings, path: Path, key: str) -> None:
    w = str(path)
    policy = load_json(f, path)
    if not isinstance(policy, dict):
        return
    granted: set[str] = set()
    for st in as_list(policy.get("Statement")):
        if not isinstance(st, dict) or st.get("Effect") != "Allow":
            continue
        if any(wildcard(str(r), key, ignore_case=False) for r in as_list(st.get("Resource"))):
            for needed in ("kms:GenerateDataKey", "kms:Decrypt"):
                if any(
                    wildcard(str(a), needed, ignore_case=True) for a in as_list(st.get("Action"))
                ):
                    granted.add(needed)
    missing = sorted({"kms:GenerateDataKey", "kms:Decrypt"} - granted)
    f.check(
        not missing,
        w,
        f"lacks {missing} on {key} (FILESHARE_STORAGE_KMS_KEY): SSE-KMS writes need "
        "GenerateDataKey, reads, copies and multipart uploads Decrypt",
    )


# --------------------------------------------------------------------------- GCS


def check_gcs(f: Findings, k8s: Path, overlay: str, env: dict[str, str]) -> None:
    where = f"[{overlay}]"
    key = env.get("FILESHARE_STORAGE_KMS_KEY", "").strip()
    f.check(
        encryption_mode(env) == "kms" and bool(GCS_KEY.fullmatch(key)),
        where,
        "set FILESHARE_STORAGE_ENCRYPTION=kms and FILESHARE_STORAGE_KMS_KEY="
        "projects/P/locations/L/keyRings/R/cryptoKeys/K (the buckets' default key), so every "
        "write names the key",
    )
    for role, _variable in BUCKETS:
        path = k8s / "overlays" / overlay / f"gcs-{role}-bucket.json"
        w = str(path)
        doc = load_json(f, path)
        if doc is None:
            continue
        if not f.check(isinstance(doc, dict), w, "expected a bucket resource (a JSON object)"):
            continue
        unknown = sorted(set(doc) - GCS_BUCKET_FIELDS)
        f.check(not unknown, w, f"not bucket resource fields: {unknown}")
        enc = doc.get("encryption") or {}
        iam = doc.get("iamConfiguration") or {}
        f.check(
            enc.get("defaultKmsKeyName") == key,
            w,
            f"encryption.defaultKmsKeyName {enc.get('defaultKmsKeyName')!r} != "
            f"FILESHARE_STORAGE_KMS_KEY {key!r}",
        )
        for member, mode, why in GCS_ENFORCEMENT:
            f.check(
                (enc.get(member) or {}).get("restrictionMode") == mode,
                w,
                f"encryption.{member}.restrictionMode must be {mode} ({why})",
            )
        f.check(
            (enc.get("customerManagedEncryptionEnforcementConfig") or {}).get("restrictionMode")
            != "FullyRestricted",
            w,
            "customer-managed keys must stay allowed (they are the only ones left)",
        )
        f.check(
            (iam.get("uniformBucketLevelAccess") or {}).get("enabled") is True,
            w,
            "iamConfiguration.uniformBucketLevelAccess.enabled must be true (IAM only, no ACLs)",
        )
        f.check(
            iam.get("publicAccessPrevention") == "enforced",
            w,
            'iamConfiguration.publicAccessPrevention must be "enforced"',
        )


# --------------------------------------------------------------------------- in transit


def host_covered(host: str, tls_hosts: Iterable[str]) -> bool:
    """Whether a TLS host entry covers ``host``; ``*.example.org`` covers exactly one more
    label (a.example.org, not example.org or a.b.example.org), as certificates do."""
    for pattern in tls_hosts:
        if pattern == host:
            return True
        suffix = pattern[1:]
        if pattern.startswith("*.") and host.endswith(suffix):
            label = host[: -len(suffix)]
            if label and "." not in label:
                return True
    return False


def check_ingress_tls(f: Findings, where: str, objs: list[Obj], env: dict[str, str]) -> None:
    covered: set[str] = set()
    prefix = "nginx.ingress.kubernetes.io/"
    for ing in (o for o in objs if o.get("kind") == "Ingress"):
        iw = f"{where} Ingress {ing['metadata']['name']}"
        spec = ing.get("spec") or {}
        ann = ing["metadata"].get("annotations") or {}
        tls_hosts: list[str] = []
        for entry in spec.get("tls") or []:
            f.check(bool(entry.get("secretName")), iw, "a tls entry without secretName")
            tls_hosts += entry.get("hosts") or []
        for rule in spec.get("rules") or []:
            host = rule.get("host")
            if not f.check(bool(host), iw, "a rule without host: TLS cannot cover it"):
                continue
            if f.check(host_covered(host, tls_hosts), iw, f"host {host} is not in spec.tls"):
                covered.add(host)
        f.check(
            str(ann.get(prefix + "ssl-redirect", "true")).lower() != "false",
            iw,
            "ssl-redirect must not be off (plain HTTP must be redirected to https)",
        )
        f.check(
            str(ann.get(prefix + "force-ssl-redirect", "")).lower() == "true",
            iw,
            'force-ssl-redirect must be "true" (redirect also behind a TLS-terminating LB)',
        )
    url = urlsplit(env.get("FILESHARE_PUBLIC_BASE_URL", ""))
    f.check(
        url.scheme == "https" and url.hostname in covered,
        where,
        f"FILESHARE_PUBLIC_BASE_URL must be https on an Ingress TLS host ({sorted(covered)}); "
        "fileshare sends HSTS only for an https public URL",
    )
    hsts = env.get("FILESHARE_HSTS_MAX_AGE", "").strip()
    f.check(
        not hsts or (hsts.isdigit() and int(hsts) > 0),
        where,
        f"FILESHARE_HSTS_MAX_AGE={hsts} turns HSTS off",
    )
    plaintext = {h.strip() for h in env.get("FILESHARE_PLAINTEXT_HOSTS", "").split(",")}
    f.check(
        "*" not in plaintext,
        where,
        "FILESHARE_PLAINTEXT_HOSTS=* lets fileshare reach anything without TLS (development only)",
    )


def clamd_port(env: dict[str, str]) -> int | None:
    """The TCP port of FILESHARE_CLAMD, or None for a unix socket."""
    parts = urlsplit(env.get("FILESHARE_CLAMD", DEFAULT_CLAMD))
    if parts.scheme != "tcp":
        return None
    return parts.port or 3310


def fileshare_pod(objs: list[Obj]) -> tuple[dict[str, str], Obj] | None:
    for o in objs:
        if o.get("kind") == "Deployment" and o["metadata"]["name"] == "fileshare":
            template = o["spec"]["template"]
            return template["metadata"].get("labels") or {}, template["spec"]
    return None


def container_ports(pod: Obj) -> Iterator[tuple[str, str | None, int]]:
    for group in ("initContainers", "containers"):
        for c in pod.get(group) or []:
            for p in c.get("ports") or []:
                yield c["name"], p.get("name"), int(p["containerPort"])


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A NetworkPolicy podSelector (matchLabels only; {} selects every pod)."""
    if selector.get("matchExpressions"):
        return True  # not evaluated: assume it selects the pod (the stricter reading)
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def port_reaches(entry: Obj, port: int, names: dict[str, int]) -> bool:
    value = entry.get("port")
    if value is None:
        return True  # no port: every port of the protocol
    if isinstance(value, str) and not value.isdigit():
        return names.get(value) == port
    start = int(value)
    return start <= port <= int(entry.get("endPort", start))


def check_clamd_closed(f: Findings, where: str, objs: list[Obj], env: dict[str, str]) -> None:
    port = clamd_port(env)
    pod = fileshare_pod(objs)
    if port is None or pod is None:
        return
    labels, pod_spec = pod
    host = urlsplit(env.get("FILESHARE_CLAMD", DEFAULT_CLAMD)).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    f.check(loopback, where, f"FILESHARE_CLAMD must be on loopback (clamd has no TLS), not {host}")
    names = {name: number for _c, name, number in container_ports(pod_spec) if name}
    for np in (o for o in objs if o.get("kind") == "NetworkPolicy"):
        spec = np.get("spec") or {}
        if not selects(spec.get("podSelector") or {}, labels):
            continue
        nw = f"{where} NetworkPolicy {np['metadata']['name']}"
        for rule in spec.get("ingress") or []:
            entries = rule.get("ports") or [{}]
            f.check(
                not any(
                    e.get("protocol", "TCP") == "TCP" and port_reaches(e, port, names)
                    for e in entries
                ),
                nw,
                f"an ingress rule lets traffic reach clamd's port {port}: clamd has no TLS and "
                "no authentication; it must stay on the pod's loopback",
            )
    for svc in (o for o in objs if o.get("kind") == "Service"):
        for p in (svc.get("spec") or {}).get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            number = names.get(target) if isinstance(target, str) else target
            f.check(
                number != port,
                f"{where} Service {svc['metadata']['name']}",
                f"targets clamd's port {port}: clamd must stay on the pod's loopback",
            )


# --------------------------------------------------------------------------- entry point


def check(f: Findings, k8s: Path, overlays: dict[str, tuple[list[Obj], dict[str, str]]]) -> None:
    """All of the above for each rendered overlay: name -> (objects, ConfigMap data)."""
    for overlay, (objs, env) in sorted(overlays.items()):
        if not env:
            continue  # check_manifests already reported why it has no settings
        where = f"[{overlay}]"
        check_ingress_tls(f, where, objs, env)
        check_clamd_closed(f, where, objs, env)
        storage = env.get("FILESHARE_STORAGE")
        if storage == "s3":
            check_s3(f, k8s, overlay, env)
        elif storage == "gcs":
            check_gcs(f, k8s, overlay, env)
