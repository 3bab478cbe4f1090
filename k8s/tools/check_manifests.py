#!/usr/bin/env python3
"""Policy and consistency checks for fileshare's deployment artifacts.

Schema validation (kubernetes-validate) says each object is well formed; this script says
the objects fit together and keep fileshare's invariants. It reads the *rendered* output of
each overlay (``kubectl kustomize k8s/overlays/<name>``) and the JSON artifacts beside the
manifests, and prints one line per finding. Exit status: 0 clean, 1 findings, 2 bad usage.

    check_manifests.py --k8s-dir k8s --rendered s3=/tmp/s3.yaml --rendered gcs=/tmp/gcs.yaml

Checked, for every overlay:
  * security: every container (init and sidecar too) non-root, read-only root filesystem,
    no privilege escalation, all capabilities dropped, seccomp RuntimeDefault; resources;
    no host namespaces; only configMap/emptyDir/secret/projected volumes; no service
    account token; tagged images; the namespace enforces the "restricted" Pod Security
    Standard; no Secret with data in the build (no real secrets in git);
  * fileshare's own settings validation (``fileshare.config.load_settings``) accepts the
    ConfigMap, when the package is importable;
  * clamd.conf against the settings: StreamMaxLength == FILESHARE_MAX_UPLOAD_SIZE < 2 GiB,
    MaxFileSize/MaxScanSize >= it, AlertExceedsMax yes, TCP on loopback at the port of
    FILESHARE_CLAMD, MaxThreads >= FILESHARE_CLAMD_MAX_SCANS, MaxScanTime below the verdict
    timeout, TemporaryDirectory on a memory emptyDir big enough for all concurrent streams,
    clamd's memory limit above that spool, freshclam notifying the same clamd;
  * fileshare mounts no volume at all (nothing can be written locally);
  * shutdown: terminationGracePeriodSeconds > FILESHARE_SHUTDOWN_GRACE + preStop sleep;
    clamd/freshclam are native sidecars (stopped after fileshare);
  * probes: startup/readiness/liveness on fileshare and clamd;
  * wiring: Service/PDB/NetworkPolicy selectors match the pod, Service and Ingress ports
    exist, the HPA targets the Deployment, which leaves "replicas" to it;
  * Ingress: request and response buffering off, body size >= the max upload size (and at
    most 16 MiB above), read timeout above the verdict timeout; /metrics denied publicly;
  * NetworkPolicy: ingress only on the container port, egress DNS + 443;
  * cloud identity: IRSA role ARN (s3) / Workload Identity GSA (gcs) on the ServiceAccount.
Checked once: the S3 lifecycle files against botocore's PutBucketLifecycleConfiguration
model (when botocore is importable), the GCS lifecycle file's structure, the example IAM
policy against the S3 overlay's bucket names.
Encryption at rest and in transit (bucket policies, default encryption, KMS grant, GCS
bucket settings, Ingress TLS, clamd kept off the network): check_protection.py, called from
main below.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml  # type: ignore[import-untyped,unused-ignore]

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_protection  # beside this file, whatever the working directory

MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_SCANNABLE = 2 * GiB - 1  # clamd cannot scan 2 GiB; FHIR Attachment.size is an int32
#: clamd.conf / freshclam.conf options that may legitimately appear more than once
REPEATABLE_CLAMAV_OPTIONS = frozenset(
    {
        "ExcludePath",
        "DatabaseMirror",
        "PrivateMirror",
        "ExtraDatabase",
        "ExcludeDatabase",
        "OnAccessIncludePath",
        "OnAccessExcludePath",
        "OnAccessExcludeUname",
        "OnAccessExcludeUID",
    }
)
#: what FILESHARE_HOST must be in a pod (the default 127.0.0.1 is unreachable)
ALL_INTERFACES = ("0.0.0.0", "::")  # noqa: S104
DEFAULT_VERDICT_TIMEOUT = 120.0  # fileshare.config.Settings.clamd_verdict_timeout

Obj = dict[str, Any]


class Findings:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def check(self, ok: bool, where: str, message: str) -> bool:
        if not ok:
            self.add(where, message)
        return ok


# --------------------------------------------------------------------------- parsing

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
_QUANTITY_UNITS = {
    "": 1,
    "m": 0.001,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1024,
    "Mi": MiB,
    "Gi": GiB,
    "Ti": 1024 * GiB,
}


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity (``512Mi``, ``2``, ``500m``) as a number."""
    m = _QUANTITY.match(str(value).strip())
    if not m or m.group(2) not in _QUANTITY_UNITS:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _QUANTITY_UNITS[m.group(2)]


def checked_quantity(f: Findings, where: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return quantity(value)
    except ValueError as exc:
        f.add(where, str(exc))
        return None


def clamd_size(value: str) -> int:
    """A clamd.conf size (``512M``, ``1024K``, ``2G``, bytes): binary multiples."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", value)
    if not m:
        raise ValueError(f"not a clamd size: {value!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": MiB, "g": GiB}[m.group(2).lower()]


def fileshare_size(value: str) -> int:
    """Same grammar as fileshare.config.parse_size (``512MiB``, ``8M``, bytes)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?)?\s*", value, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {value!r}")
    unit = (m.group(2) or "")[:1].lower()
    return int(m.group(1)) * {"": 1, "k": 1024, "m": MiB, "g": GiB}[unit]


def nginx_size(value: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", value)
    if not m:
        raise ValueError(f"not an nginx size: {value!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": MiB, "g": GiB}[m.group(2).lower()]


def parse_clamav_conf(text: str) -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        opts.setdefault(key, []).append(value.strip())
    return opts


def first(opts: dict[str, list[str]], key: str) -> str | None:
    values = opts.get(key)
    return values[-1] if values else None


def load_docs(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


# --------------------------------------------------------------------------- helpers


def pod_containers(pod: Obj) -> Iterator[tuple[str, Obj]]:
    for c in pod.get("initContainers") or []:
        yield "initContainer", c
    for c in pod.get("containers") or []:
        yield "container", c


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def prestop_seconds(container: Obj) -> float:
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"):
        return float(cmd[1])
    return 0.0


# --------------------------------------------------------------------------- checks


def check_security(f: Findings, where: str, pod: Obj) -> None:
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        f.check(not pod.get(key), where, f"pod sets {key}")
    f.check(
        pod.get("automountServiceAccountToken") is False,
        where,
        "pod must set automountServiceAccountToken: false (no Kubernetes API access)",
    )
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        f.check(
            kinds <= {"configMap", "emptyDir", "secret", "projected"},
            where,
            f"volume {vol['name']} is of type {sorted(kinds)}; only configMap, emptyDir, "
            "secret, projected are allowed (restricted Pod Security Standard)",
        )
        if "emptyDir" in vol:
            checked_quantity(
                f, f"{where} volume {vol['name']}", (vol["emptyDir"] or {}).get("sizeLimit")
            )
    for role, c in pod_containers(pod):
        cw = f"{where} {role} {c['name']}"
        sc = c.get("securityContext") or {}
        f.check(
            sc.get("allowPrivilegeEscalation") is False,
            cw,
            "allowPrivilegeEscalation must be false",
        )
        f.check(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem must be true")
        f.check(not sc.get("privileged"), cw, "must not be privileged")
        caps = sc.get("capabilities") or {}
        f.check("ALL" in (caps.get("drop") or []), cw, "capabilities.drop must contain ALL")
        f.check(not caps.get("add"), cw, "must not add capabilities")
        f.check(
            sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, cw, "runAsNonRoot must be true"
        )
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        f.check(uid is None or uid != 0, cw, "runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        f.check(
            seccomp in ("RuntimeDefault", "Localhost"),
            cw,
            "seccompProfile must be RuntimeDefault (container or pod level)",
        )
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for name in ("cpu", "memory") if kind == "requests" else ("memory",):
                value = (res.get(kind) or {}).get(name)
                if f.check(value is not None, cw, f"resources.{kind}.{name} missing"):
                    try:
                        quantity(value)
                    except ValueError as exc:
                        f.add(cw, f"resources.{kind}.{name}: {exc}")
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1]
        f.check(
            "@sha256:" in image or (":" in tag and not tag.endswith(":latest")),
            cw,
            f"image {image!r} must carry an explicit tag (not latest) or a digest",
        )


def check_namespace(f: Findings, where: str, objs: list[Obj]) -> None:
    for ns in find(objs, "Namespace"):
        labels = ns["metadata"].get("labels") or {}
        f.check(
            labels.get("pod-security.kubernetes.io/enforce") == "restricted",
            f"{where} Namespace {ns['metadata']['name']}",
            "should enforce the restricted Pod Security Standard",
        )
    for secret in find(objs, "Secret"):
        data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
        f.check(
            not any(data.values()),
            f"{where} Secret {secret['metadata']['name']}",
            "a rendered overlay must not carry secret values (create Secrets out of band)",
        )


def settings_from_env(f: Findings, where: str, env: dict[str, str]) -> dict[str, Any]:
    """fileshare's own validation when importable; the few values the checks need."""
    try:
        from fileshare.config import ConfigError, load_settings
    except ImportError as exc:
        print(
            f"note: fileshare not importable ({exc}); its own settings validation skipped",
            file=sys.stderr,
        )
    else:
        trial = {**env, "FILESHARE_API_KEYS": "lint:0123456789abcdef0123"}
        try:
            load_settings(trial)
        except (ConfigError, ValueError) as exc:
            f.add(where, f"fileshare rejects the ConfigMap settings: {exc}")
    out: dict[str, Any] = {}
    try:
        out["max_upload"] = fileshare_size(env.get("FILESHARE_MAX_UPLOAD_SIZE", "512MiB"))
        out["memory_budget"] = fileshare_size(env.get("FILESHARE_MEMORY_BUDGET", "512MiB"))
    except ValueError as exc:
        f.add(where, str(exc))
        out.setdefault("max_upload", 512 * MiB)
        out.setdefault("memory_budget", 512 * MiB)
    out["max_scans"] = int(env.get("FILESHARE_CLAMD_MAX_SCANS", "8"))
    out["grace"] = float(env.get("FILESHARE_SHUTDOWN_GRACE", "30"))
    out["verdict_timeout"] = float(
        env.get("FILESHARE_CLAMD_VERDICT_TIMEOUT", DEFAULT_VERDICT_TIMEOUT)
    )
    out["port"] = int(env.get("FILESHARE_PORT", "8080"))
    out["clamd"] = env.get("FILESHARE_CLAMD", "tcp://127.0.0.1:3310")
    out["storage"] = env.get("FILESHARE_STORAGE", "local")
    return out


def check_overlay(f: Findings, overlay: str, objs: list[Obj]) -> dict[str, str]:
    where = f"[{overlay}]"
    check_namespace(f, where, objs)
    deployments = find(objs, "Deployment", "fileshare")
    if not f.check(len(deployments) == 1, where, "expected one Deployment named fileshare"):
        return {}
    dep = deployments[0]
    dw = f"{where} Deployment fileshare"
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    f.check(
        selector_matches(dep["spec"]["selector"]["matchLabels"], pod_labels),
        dw,
        "selector does not match the pod template labels",
    )
    f.check(
        "replicas" not in dep["spec"],
        dw,
        "leave replicas to the HorizontalPodAutoscaler (it is reset at every apply)",
    )
    check_security(f, dw, pod)

    containers = {c["name"]: c for _, c in pod_containers(pod)}
    app = containers.get("fileshare")
    clamd = containers.get("clamd")
    fresh = containers.get("freshclam")
    if not (
        f.check(app is not None, dw, "no fileshare container")
        and f.check(clamd is not None, dw, "no clamd container")
        and f.check(fresh is not None, dw, "no freshclam container")
    ):
        return {}
    assert app is not None
    assert clamd is not None
    assert fresh is not None
    volumes = {v["name"]: v for v in pod.get("volumes") or []}

    # --- settings
    cm_refs = [e["configMapRef"]["name"] for e in app.get("envFrom") or [] if "configMapRef" in e]
    cms = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"] in cm_refs]
    if not f.check(
        len(cms) == 1,
        dw,
        f"fileshare must take its settings from one ConfigMap "
        f"present in the build (envFrom {cm_refs})",
    ):
        return {}
    env = {k: str(v) for k, v in (cms[0].get("data") or {}).items()}
    s = settings_from_env(f, f"{where} ConfigMap {cms[0]['metadata']['name']}", env)
    f.check(
        s["storage"] in ("s3", "gcs"),
        dw,
        f"FILESHARE_STORAGE={s['storage']!r}: a cluster deployment needs s3 or gcs "
        "(the local backend cannot write on a read-only root filesystem)",
    )
    f.check(
        env.get("FILESHARE_HOST") in ALL_INTERFACES,
        dw,
        "FILESHARE_HOST must be 0.0.0.0 or :: (the default 127.0.0.1 is unreachable)",
    )
    f.check(
        any(e.get("secretRef", {}).get("name") for e in app.get("envFrom") or []),
        dw,
        "fileshare must read its secrets (FILESHARE_API_KEYS) from a Secret via envFrom",
    )
    for key in env:
        f.check(
            not re.search(r"API_KEYS|SECRET|PASSWORD|TOKEN", key),
            dw,
            f"{key} looks secret and must not be in a ConfigMap",
        )

    ports = {p.get("name"): p["containerPort"] for p in app.get("ports") or []}
    f.check(
        ports.get("http") == s["port"],
        dw,
        f"container port 'http' ({ports.get('http')}) != FILESHARE_PORT ({s['port']})",
    )
    f.check(
        not app.get("volumeMounts"),
        dw,
        "fileshare must mount no volume: it writes nothing locally (invariant 2)",
    )

    # --- clamd config
    cfg_vol = next(
        (
            v
            for v in volumes.values()
            if "configMap" in v
            and any(m["name"] == v["name"] for m in clamd.get("volumeMounts") or [])
        ),
        None,
    )
    clamav_cm = None
    if cfg_vol is not None:
        clamav_cm = next(
            (
                o
                for o in find(objs, "ConfigMap")
                if o["metadata"]["name"] == cfg_vol["configMap"]["name"]
            ),
            None,
        )
    if not f.check(
        clamav_cm is not None and "clamd.conf" in (clamav_cm.get("data") or {}),
        dw,
        "clamd must mount a ConfigMap with clamd.conf that is part of the build",
    ):
        return env
    assert clamav_cm is not None
    conf = parse_clamav_conf(clamav_cm["data"]["clamd.conf"])
    fconf = parse_clamav_conf(clamav_cm["data"].get("freshclam.conf", ""))
    for fname, opts in (("clamd.conf", conf), ("freshclam.conf", fconf)):
        for key, values in opts.items():
            f.check(
                len(values) == 1 or key in REPEATABLE_CLAMAV_OPTIONS,
                f"{where} {fname}",
                f"{key} is set {len(values)} times (ambiguous)",
            )
    cw = f"{where} clamd.conf"
    try:
        stream_max = clamd_size(first(conf, "StreamMaxLength") or "25M")
        max_file = clamd_size(first(conf, "MaxFileSize") or "100M")
        max_scan = clamd_size(first(conf, "MaxScanSize") or "400M")
    except ValueError as exc:
        f.add(cw, str(exc))
        return env
    f.check(
        stream_max == s["max_upload"],
        cw,
        f"StreamMaxLength ({stream_max}) must equal FILESHARE_MAX_UPLOAD_SIZE ({s['max_upload']})",
    )
    f.check(stream_max <= MAX_SCANNABLE, cw, "StreamMaxLength must stay below 2 GiB")
    f.check(max_file >= s["max_upload"], cw, "MaxFileSize must be >= the max upload size")
    f.check(max_scan >= s["max_upload"], cw, "MaxScanSize must be >= the max upload size")
    f.check(
        (first(conf, "AlertExceedsMax") or "no").lower() in ("yes", "true", "1"),
        cw,
        "AlertExceedsMax must be yes (a file over a limit is a rejection, not a pass)",
    )
    clamd_url = urlsplit(s["clamd"])
    f.check(
        clamd_url.scheme == "tcp" and clamd_url.hostname in ("127.0.0.1", "localhost"),
        cw,
        f"FILESHARE_CLAMD ({s['clamd']}) must be tcp://127.0.0.1:<port> (the sidecar)",
    )
    f.check(
        first(conf, "TCPSocket") == str(clamd_url.port),
        cw,
        f"TCPSocket ({first(conf, 'TCPSocket')}) != FILESHARE_CLAMD port ({clamd_url.port})",
    )
    f.check(
        first(conf, "TCPAddr") in ("127.0.0.1", "localhost"),
        cw,
        "TCPAddr must be 127.0.0.1: clamd is for this pod only",
    )
    f.check(
        int(first(conf, "MaxThreads") or "10") >= s["max_scans"],
        cw,
        "MaxThreads must be >= FILESHARE_CLAMD_MAX_SCANS",
    )
    f.check(
        float(first(conf, "MaxScanTime") or "120000") / 1000 < s["verdict_timeout"],
        cw,
        "MaxScanTime must be below FILESHARE_CLAMD_VERDICT_TIMEOUT so clamd gives a verdict",
    )
    f.check((first(conf, "Foreground") or "no").lower() == "yes", cw, "Foreground must be yes")
    f.check(
        first(conf, "LocalSocket") is None,
        cw,
        "LocalSocket needs a writable socket dir; use TCP on loopback only",
    )
    tmpdir = first(conf, "TemporaryDirectory") or "/tmp"  # noqa: S108 - clamd's default
    mount = next((m for m in clamd.get("volumeMounts") or [] if m["mountPath"] == tmpdir), None)
    tmp_vol = volumes.get(mount["name"]) if mount else None
    if f.check(
        tmp_vol is not None and "emptyDir" in tmp_vol,
        cw,
        f"TemporaryDirectory {tmpdir} must be an emptyDir mounted in clamd",
    ):
        assert tmp_vol is not None
        ed = tmp_vol["emptyDir"] or {}
        f.check(
            ed.get("medium") == "Memory",
            cw,
            f"TemporaryDirectory volume {tmp_vol['name']} must be medium: Memory "
            "(INSTREAM data is spooled there: never on the node's disk)",
        )
        limit = ed.get("sizeLimit")
        spool = checked_quantity(f, cw, limit) if limit is not None else None
        if f.check(limit is not None, cw, f"volume {tmp_vol['name']} needs a sizeLimit") and (
            spool is not None
        ):
            need = s["max_scans"] * s["max_upload"]
            f.check(
                spool >= need,
                cw,
                f"volume {tmp_vol['name']} sizeLimit {limit} < FILESHARE_CLAMD_MAX_SCANS x "
                f"max upload ({need // MiB} MiB)",
            )
            mem = checked_quantity(
                f, f"{dw} clamd", (clamd.get("resources") or {}).get("limits", {}).get("memory")
            )
            if mem is not None:
                f.check(
                    mem >= spool + 2 * GiB,
                    f"{dw} clamd",
                    f"memory limit must exceed the in-memory spool ({limit}) by the "
                    "signature database (>= 2 GiB)",
                )
    db = first(conf, "DatabaseDirectory") or "/var/lib/clamav"
    f.check(
        first(fconf, "DatabaseDirectory") in (None, db),
        f"{where} freshclam.conf",
        "DatabaseDirectory differs from clamd's",
    )
    notify = first(fconf, "NotifyClamd")
    fresh_cfg = next(
        (
            m["mountPath"]
            for m in fresh.get("volumeMounts") or []
            if cfg_vol and m["name"] == cfg_vol["name"]
        ),
        None,
    )
    f.check(
        notify is not None
        and fresh_cfg is not None
        and notify == f"{fresh_cfg.rstrip('/')}/clamd.conf",
        f"{where} freshclam.conf",
        "NotifyClamd must point at clamd.conf as mounted in the freshclam container",
    )
    for name, ctr in (("clamd", clamd), ("freshclam", fresh)):
        mounts = {m["mountPath"]: m["name"] for m in ctr.get("volumeMounts") or []}
        f.check(mounts.get(db) is not None, f"{dw} {name}", f"{db} must be a shared volume")

    # --- lifecycle / shutdown
    sidecars = {
        c["name"] for c in pod.get("initContainers") or [] if c.get("restartPolicy") == "Always"
    }
    f.check(
        {"clamd", "freshclam"} <= sidecars,
        dw,
        "clamd and freshclam must be native sidecars (initContainers with restartPolicy "
        "Always) so that they outlive fileshare's drain",
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = prestop_seconds(app)
    f.check(pre > 0, dw, "fileshare needs a preStop sleep (endpoint removal before SIGTERM)")
    f.check(
        grace > s["grace"] + pre,
        dw,
        f"terminationGracePeriodSeconds ({grace}) must exceed FILESHARE_SHUTDOWN_GRACE "
        f"({s['grace']:g}) + preStop ({pre:g})",
    )
    for name, ctr, probes in (
        ("fileshare", app, ("startupProbe", "readinessProbe", "livenessProbe")),
        ("clamd", clamd, ("startupProbe", "readinessProbe", "livenessProbe")),
    ):
        for probe in probes:
            f.check(probe in ctr, f"{dw} {name}", f"{probe} missing")
    paths = {
        ctr_probe: (app.get(ctr_probe) or {}).get("httpGet", {}).get("path")
        for ctr_probe in ("readinessProbe", "livenessProbe")
    }
    f.check(paths["readinessProbe"] == "/readyz", dw, "fileshare readiness must use /readyz")
    f.check(paths["livenessProbe"] == "/healthz", dw, "fileshare liveness must use /healthz")
    mem = checked_quantity(
        f, f"{dw} fileshare", (app.get("resources") or {}).get("limits", {}).get("memory")
    )
    if mem is not None:
        f.check(
            mem >= s["memory_budget"] + 256 * MiB,
            f"{dw} fileshare",
            "memory limit must exceed FILESHARE_MEMORY_BUDGET by >= 256 MiB",
        )

    # --- wiring
    services = [
        o
        for o in find(objs, "Service")
        if selector_matches(o["spec"].get("selector") or {}, pod_labels)
    ]
    if f.check(len(services) == 1, where, "expected one Service selecting the fileshare pods"):
        svc = services[0]
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            f.check(
                tp in ports or tp in ports.values(),
                f"{where} Service",
                f"targetPort {tp!r} is not a fileshare container port",
            )
        svc_ports = {p.get("name") for p in svc["spec"]["ports"]} | {
            p["port"] for p in svc["spec"]["ports"]
        }
        check_ingresses(f, where, objs, svc["metadata"]["name"], svc_ports, s)
    pdbs = find(objs, "PodDisruptionBudget")
    f.check(
        any(
            selector_matches(p["spec"]["selector"].get("matchLabels") or {}, pod_labels)
            for p in pdbs
        ),
        where,
        "no PodDisruptionBudget selects the fileshare pods",
    )
    hpas = find(objs, "HorizontalPodAutoscaler")
    f.check(
        any(
            h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            and h["spec"]["scaleTargetRef"]["name"] == "fileshare"
            and h["spec"].get("minReplicas", 1) >= 2
            for h in hpas
        ),
        where,
        "need a HorizontalPodAutoscaler on Deployment fileshare with minReplicas >= 2",
    )
    check_network_policies(f, where, objs, pod_labels, s["port"])
    sa_name = pod.get("serviceAccountName", "default")
    sas = find(objs, "ServiceAccount", sa_name)
    if f.check(len(sas) == 1, where, f"ServiceAccount {sa_name} is not in the build"):
        ann = sas[0]["metadata"].get("annotations") or {}
        if s["storage"] == "s3":
            f.check(
                bool(
                    re.fullmatch(
                        r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+",
                        ann.get("eks.amazonaws.com/role-arn", ""),
                    )
                ),
                f"{where} ServiceAccount",
                "needs an IRSA eks.amazonaws.com/role-arn",
            )
        if s["storage"] == "gcs":
            f.check(
                bool(
                    re.fullmatch(
                        r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9-]+\."
                        r"iam\.gserviceaccount\.com",
                        ann.get("iam.gke.io/gcp-service-account", ""),
                    )
                ),
                f"{where} ServiceAccount",
                "needs a Workload Identity iam.gke.io/gcp-service-account",
            )
    return env


def check_ingresses(
    f: Findings, where: str, objs: list[Obj], svc: str, svc_ports: set[Any], s: dict[str, Any]
) -> None:
    public_root = False
    for ing in find(objs, "Ingress"):
        iw = f"{where} Ingress {ing['metadata']['name']}"
        ann = ing["metadata"].get("annotations") or {}
        paths = [p for r in ing["spec"].get("rules") or [] for p in r["http"]["paths"]]
        for p in paths:
            backend = p["backend"]["service"]
            f.check(backend["name"] == svc, iw, f"backend {backend['name']} is not {svc}")
            port = backend["port"].get("name", backend["port"].get("number"))
            f.check(port in svc_ports, iw, f"backend port {port!r} not on Service {svc}")
        f.check(bool(ing["spec"].get("tls")), iw, "no TLS section")
        if paths and all(p["path"].rstrip("/") == "/metrics" for p in paths):
            f.check(
                "0.0.0.0/0" in ann.get("nginx.ingress.kubernetes.io/denylist-source-range", ""),
                iw,
                "/metrics must be denied to everyone",
            )
            continue
        public_root = public_root or any(p["path"] == "/" for p in paths)
        prefix = "nginx.ingress.kubernetes.io/"
        f.check(
            ann.get(prefix + "proxy-request-buffering") == "off",
            iw,
            'proxy-request-buffering must be "off" (uploads stream through)',
        )
        f.check(
            ann.get(prefix + "proxy-buffering") == "off",
            iw,
            'proxy-buffering must be "off" (downloads stream through)',
        )
        body = ann.get(prefix + "proxy-body-size")
        if f.check(body is not None, iw, "proxy-body-size missing (default is 1m)"):
            try:
                size = nginx_size(str(body))
            except ValueError as exc:
                f.add(iw, str(exc))
            else:
                f.check(
                    s["max_upload"] <= size <= s["max_upload"] + 16 * MiB,
                    iw,
                    f"proxy-body-size {body} must be >= FILESHARE_MAX_UPLOAD_SIZE and at "
                    "most 16 MiB above it (multipart framing)",
                )
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = str(ann.get(prefix + key, ""))
            if f.check(value.isdigit(), iw, f"{key} must be set in seconds"):
                f.check(
                    int(value) > s["verdict_timeout"],
                    iw,
                    f"{key} ({value}) must exceed the clamd verdict timeout",
                )
    f.check(public_root, where, "no Ingress routes / to fileshare")


def check_network_policies(
    f: Findings, where: str, objs: list[Obj], pod_labels: dict[str, str], port: int
) -> None:
    pols = [
        p
        for p in find(objs, "NetworkPolicy")
        if selector_matches(p["spec"]["podSelector"].get("matchLabels") or {}, pod_labels)
    ]
    nw = f"{where} NetworkPolicy"
    if not f.check(bool(pols), nw, "none selects the fileshare pods"):
        return
    types = {t for p in pols for t in p["spec"].get("policyTypes") or []}
    f.check({"Ingress", "Egress"} <= types, nw, "must restrict both Ingress and Egress")
    egress_ports: set[tuple[str, int]] = set()
    for pol in pols:
        for rule in pol["spec"].get("ingress") or []:
            f.check(bool(rule.get("from")), nw, "an ingress rule allows every source")
            rule_ports = {p.get("port") for p in rule.get("ports") or []}
            f.check(
                rule_ports in ({port}, {"http"}),
                nw,
                f"ingress may only reach port {port}, not {sorted(map(str, rule_ports))}",
            )
        for rule in pol["spec"].get("egress") or []:
            for p in rule.get("ports") or []:
                egress_ports.add((p.get("protocol", "TCP"), p.get("port")))
            f.check(bool(rule.get("ports")), nw, "an egress rule allows every port")
    for needed in (("UDP", 53), ("TCP", 443)):
        f.check(needed in egress_ports, nw, f"egress {needed[0]}/{needed[1]} not allowed")


# --------------------------------------------------------------------------- artifacts


#: How long quarantined evidence is kept: long enough for an incident review, not forever.
QUARANTINE_DAYS = 90


def check_quarantine_retention(f: Findings, path: Path) -> None:
    """The quarantine bucket expires its evidence after ``QUARANTINE_DAYS`` (S3 or GCS
    form), and aborts unfinished uploads (an interrupted quarantine copy) after 1 day."""
    w = str(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        f.add(w, f"unreadable: {exc}")
        return
    if "Rules" in cfg:
        whole = [
            r
            for r in cfg["Rules"]
            if r.get("Status") == "Enabled" and r.get("Filter", {}) in ({}, {"Prefix": ""})
        ]
        expire = {r.get("Expiration", {}).get("Days") for r in whole}
        abort = {
            r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") for r in whole
        }
    else:
        rules = cfg.get("rule", [])
        expire = {r["condition"].get("age") for r in rules if r["action"]["type"] == "Delete"}
        abort = {
            r["condition"].get("age")
            for r in rules
            if r["action"]["type"] == "AbortIncompleteMultipartUpload"
        }
    f.check(
        QUARANTINE_DAYS in expire,
        w,
        f"needs a whole-bucket expiration after {QUARANTINE_DAYS} days",
    )
    f.check(1 in abort, w, "needs unfinished uploads aborted after 1 day")


def check_lifecycle(f: Findings, k8s: Path, s3_env: dict[str, str] | None) -> None:
    try:
        import botocore.session
        from botocore.validate import ParamValidationError, validate_parameters
    except ImportError:
        botocore = None  # type: ignore[assignment]
        print(
            "note: botocore not importable; S3 lifecycle JSON checked structurally only",
            file=sys.stderr,
        )
    for name, need_expire in (
        ("s3-unscanned-lifecycle.json", True),
        ("s3-permanent-lifecycle.json", False),
    ):
        path = k8s / "lifecycle" / name
        w = str(path)
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            f.add(w, f"unreadable: {exc}")
            continue
        if botocore is not None:
            model = botocore.session.get_session().get_service_model("s3")
            shape = model.operation_model("PutBucketLifecycleConfiguration").input_shape
            assert shape is not None
            try:
                validate_parameters({"Bucket": "example", "LifecycleConfiguration": cfg}, shape)
            except ParamValidationError as exc:
                f.add(w, f"not a valid LifecycleConfiguration: {exc}")
        rules = [r for r in cfg.get("Rules", []) if r.get("Status") == "Enabled"]
        whole = [r for r in rules if r.get("Filter", {}) in ({}, {"Prefix": ""})]
        f.check(
            any(
                r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 1
                for r in whole
            ),
            w,
            "needs an enabled whole-bucket AbortIncompleteMultipartUpload after 1 day",
        )
        expiring = any(r.get("Expiration", {}).get("Days") == 1 for r in whole)
        if need_expire:
            f.check(expiring, w, "needs an enabled whole-bucket Expiration after 1 day")
        else:
            f.check(
                not any("Expiration" in r for r in rules),
                w,
                "the permanent bucket must never expire objects",
            )
    for name in ("s3-quarantine-lifecycle.json", "gcs-quarantine-lifecycle.json"):
        check_quarantine_retention(f, k8s / "lifecycle" / name)
    path = k8s / "lifecycle" / "gcs-unscanned-lifecycle.json"
    w = str(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        f.add(w, f"unreadable: {exc}")
    else:
        gcs_rules: Any = cfg.get("rule") if isinstance(cfg, dict) else None
        if f.check(
            isinstance(gcs_rules, list) and set(cfg) == {"rule"},
            w,
            'expected {"rule": [...]} (gcloud storage buckets update --lifecycle-file)',
        ):
            known_actions = {"Delete", "SetStorageClass", "AbortIncompleteMultipartUpload"}
            known_conditions = {
                "age",
                "createdBefore",
                "customTimeBefore",
                "daysSinceCustomTime",
                "daysSinceNoncurrentTime",
                "isLive",
                "matchesStorageClass",
                "matchesPrefix",
                "matchesSuffix",
                "noncurrentTimeBefore",
                "numNewerVersions",
            }
            for i, r in enumerate(gcs_rules):
                f.check(set(r) == {"action", "condition"}, w, f"rule {i}: unexpected keys")
                f.check(
                    r.get("action", {}).get("type") in known_actions,
                    w,
                    f"rule {i}: unknown action {r.get('action')}",
                )
                f.check(
                    set(r.get("condition", {})) <= known_conditions,
                    w,
                    f"rule {i}: unknown condition keys {sorted(r.get('condition', {}))}",
                )
            for action in ("Delete", "AbortIncompleteMultipartUpload"):
                f.check(
                    any(
                        r.get("action", {}).get("type") == action
                        and r.get("condition") == {"age": 1}
                        for r in gcs_rules
                    ),
                    w,
                    f"needs {action} with condition age 1 on the whole bucket",
                )
    path = k8s / "iam" / "s3-irsa-trust-policy.json"
    try:
        trust = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        f.add(str(path), f"unreadable: {exc}")
    else:
        f.check(
            "system:serviceaccount:fileshare:fileshare" in json.dumps(trust),
            str(path),
            "must trust system:serviceaccount:fileshare:fileshare (namespace:serviceaccount)",
        )
    path = k8s / "iam" / "s3-fileshare-policy.json"
    w = str(path)
    try:
        pol = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        f.add(w, f"unreadable: {exc}")
        return
    grants: dict[str, set[str]] = {}
    for st in pol.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for r in res:
            grants.setdefault(r, set()).update(acts)
    if s3_env:
        unscanned = s3_env.get("FILESHARE_UNSCANNED_BUCKET", "")
        permanent = s3_env.get("FILESHARE_PERMANENT_BUCKET", "")
        need = {
            f"arn:aws:s3:::{unscanned}/*": {
                "s3:PutObject",
                "s3:GetObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            },
            f"arn:aws:s3:::{unscanned}": {"s3:ListBucket"},
            f"arn:aws:s3:::{permanent}/*": {
                "s3:GetObject",
                "s3:PutObject",
                "s3:AbortMultipartUpload",
            },
            f"arn:aws:s3:::{permanent}": {"s3:ListBucket"},
        }
        if quarantine := s3_env.get("FILESHARE_QUARANTINE_BUCKET", ""):
            need |= {
                f"arn:aws:s3:::{quarantine}/*": {
                    "s3:PutObject",
                    "s3:GetObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                },
                f"arn:aws:s3:::{quarantine}": {"s3:ListBucket"},
            }
        for resource, actions in need.items():
            missing = actions - grants.get(resource, set())
            f.check(
                not missing,
                w,
                f"{resource} lacks {sorted(missing)} (buckets must match "
                "k8s/overlays/s3/fileshare.env)",
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k8s-dir", type=Path, required=True)
    ap.add_argument(
        "--rendered",
        action="append",
        default=[],
        metavar="OVERLAY=FILE",
        help="rendered kustomize output of an overlay (repeatable)",
    )
    args = ap.parse_args(argv)
    f = Findings()
    envs: dict[str, dict[str, str]] = {}
    rendered: dict[str, list[Obj]] = {}
    for item in args.rendered:
        overlay, sep, file = item.partition("=")
        if not sep:
            ap.error(f"--rendered wants OVERLAY=FILE, not {item!r}")
        try:
            objs = load_docs(Path(file))
        except (OSError, yaml.YAMLError) as exc:
            f.add(f"[{overlay}]", f"cannot read {file}: {exc}")
            continue
        try:
            envs[overlay] = check_overlay(f, overlay, objs)
            rendered[overlay] = objs
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            f.add(f"[{overlay}]", f"malformed manifests, checks stopped: {exc!r}")
    check_lifecycle(f, args.k8s_dir, envs.get("s3"))
    try:
        check_protection.check(
            f, args.k8s_dir, {name: (objs, envs[name]) for name, objs in rendered.items()}
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        f.add("[protection]", f"malformed input, checks stopped: {exc!r}")
    for item in f.items:
        print(f"FINDING {item}")
    print(f"check_manifests: {len(args.rendered)} overlay(s), {len(f.items)} finding(s)")
    return 1 if f.items else 0


if __name__ == "__main__":
    sys.exit(main())
