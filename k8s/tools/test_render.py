"""Tests of render.py (run: .venv/bin/pytest k8s/tools/test_render.py).

The expected output of the feature fixture below is what ``kubectl kustomize`` (kustomize
v5.5.0, kubectl 1.32) prints for it, byte for byte. scripts/lint-deploy.sh compares the
real k8s/ tree with kustomize whenever one is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import render

BASE_KUSTOMIZATION = """\
resources:
- app.yaml
labels:
- pairs:
    team: a
  includeTemplates: true
- pairs:
    tier: "1"
configMapGenerator:
- name: cfg
  envs: [app.env]
  files:
  - conf/a.conf
  - renamed.txt=conf/b.txt
"""
BASE_APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    drop-me: "x"
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.0
        envFrom:
        - configMapRef: {name: cfg}
        env:
        - name: X
          valueFrom:
            configMapKeyRef: {name: cfg, key: A}
        - name: Y
          value: "on"
      initContainers:
      - name: init
        image: docker.io/library/busybox@sha256:abcdef
      volumes:
      - name: p
        projected:
          sources:
          - configMap: {name: cfg}
      - name: c
        configMap: {name: cfg}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: job
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: j
            image: localhost:5000/nginx:2.0
            args: [yes, no, 1:20, 0x1F, 1e3, 1.0, 2.5, -0.5, "~"]
          volumes:
          - name: c
            configMap: {name: cfg}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
"""
OVERLAY_KUSTOMIZATION = """\
namespace: prod
resources:
- ../base
configMapGenerator:
- name: cfg
  behavior: merge
  envs: [ov.env]
images:
- name: nginx
  newName: registry.example.org/nginx
- name: docker.io/library/busybox
  newTag: "1.36"
- name: localhost:5000/nginx
  digest: sha256:0123
patches:
- target:
    kind: Deployment
    name: w.*
  patch: |
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: ignored
      annotations:
        drop-me: "x"
        added: "true"
    spec:
      template:
        spec:
          securityContext:
            runAsNonRoot: true
- target:
    group: batch
    kind: CronJob
  patch: |
    - op: add
      path: /spec/jobTemplate/spec/template/spec/containers/0/args/-
      value: last
    - op: remove
      path: /spec/jobTemplate/spec/template/spec/containers/0/args/0
    - op: test
      path: /spec/schedule
      value: "0 * * * *"
    - op: add
      path: /metadata/annotations
      value: {a~b/c: d}
- patch: |
    apiVersion: v1
    kind: Service
    metadata:
      name: web
      labels:
        patched: "yes"
"""
#: kubectl kustomize ov
EXPECTED_OVERLAY = """\
apiVersion: v1
data:
  A: "2"
  B: '"quoted" '
  C: x=y
  D: ""
  E: <&>
  F: new
  a.conf: "line <one> & two\\n  indented: yes\\ntrailing space \\n"
  renamed.txt: no newline at end
kind: ConfigMap
metadata:
  labels:
    team: a
    tier: "1"
  name: cfg-857dfg7d2b
  namespace: prod
---
apiVersion: v1
kind: Service
metadata:
  labels:
    patched: "yes"
    team: a
    tier: "1"
  name: web
  namespace: prod
spec:
  ports:
  - port: 80
  selector:
    app: web
---
apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    added: "true"
    drop-me: x
  labels:
    team: a
    tier: "1"
  name: web
  namespace: prod
spec:
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
        team: a
    spec:
      containers:
      - env:
        - name: X
          valueFrom:
            configMapKeyRef:
              key: A
              name: cfg-857dfg7d2b
        - name: "Y"
          value: "on"
        envFrom:
        - configMapRef:
            name: cfg-857dfg7d2b
        image: registry.example.org/nginx:1.0
        name: web
      initContainers:
      - image: docker.io/library/busybox:1.36
        name: init
      securityContext:
        runAsNonRoot: true
      volumes:
      - name: p
        projected:
          sources:
          - configMap:
              name: cfg-857dfg7d2b
      - configMap:
          name: cfg-857dfg7d2b
        name: c
---
apiVersion: batch/v1
kind: CronJob
metadata:
  annotations:
    a~b/c: d
  labels:
    team: a
    tier: "1"
  name: job
  namespace: prod
spec:
  jobTemplate:
    metadata:
      labels:
        team: a
    spec:
      template:
        metadata:
          labels:
            team: a
        spec:
          containers:
          - args:
            - "no"
            - "1:20"
            - 31
            - 1000
            - 1
            - 2.5
            - -0.5
            - "~"
            - last
            image: localhost:5000/nginx@sha256:0123
            name: j
          restartPolicy: Never
          volumes:
          - configMap:
              name: cfg-857dfg7d2b
            name: c
  schedule: 0 * * * *
"""
POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.fixture
def fixture(tmp_path: Path) -> Path:
    write(
        tmp_path,
        {
            "base/kustomization.yaml": BASE_KUSTOMIZATION,
            "base/app.yaml": BASE_APP,
            "base/app.env": b'A=1\r\n  B="quoted" \r\n# c\nC=x=y\nD=\nE=<&>\n',
            "base/conf/a.conf": "line <one> & two\n  indented: yes\ntrailing space \n",
            "base/conf/b.txt": "no newline at end",
            "ov/kustomization.yaml": OVERLAY_KUSTOMIZATION,
            "ov/ov.env": "A=2\nF=new\n",
        },
    )
    return tmp_path


def test_matches_kustomize(fixture: Path) -> None:
    assert render.dump_documents(render.render(fixture / "ov")) == EXPECTED_OVERLAY
    assert render.compare(render.render(fixture / "ov"), EXPECTED_OVERLAY, "expected") == []


def test_compare_reports_differences(fixture: Path) -> None:
    changed = EXPECTED_OVERLAY.replace("runAsNonRoot: true", "runAsNonRoot: false")
    problems = render.compare(render.render(fixture / "ov"), changed, "expected")
    assert len(problems) == 1
    assert problems[0].startswith("apps/v1/Deployment/prod/web differs")
    rehashed = EXPECTED_OVERLAY.replace("cfg-857dfg7d2b", "cfg-2222222222")
    problems = render.compare(render.render(fixture / "ov"), rehashed, "expected")
    assert "differ only in the hash suffixes" in problems[-1]


def test_hash_of_a_literal() -> None:
    # kubectl kustomize: configMapGenerator [{name: x, literals: [a=b]}] -> x-4h2mbtbbt6
    assert render.kustomize_hash({"data": {"a": "b"}}) == "4h2mbtbbt6"


@pytest.mark.parametrize(
    ("kustomization", "extra", "message"),
    [
        ("namePrefix: x-\n", {}, "namePrefix not supported"),
        ("configMapGenerator:\n- name: c\n  literals: [a=b]\n", {}, "literals not supported"),
        ("resources: [https://example.org/x.yaml]\n", {}, "remote"),
        ("resources: [../outside.yaml]\n", {"outside.yaml": POD}, "outside the kustomization"),
        (
            "resources: [r.yaml]\n",
            {"k/r.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: p, x: 2024-01-01}\n"},
            "unquoted date",
        ),
        (
            "resources: [r.yaml]\n",
            {
                "k/r.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n"
                "metadata: {name: r}\n"
            },
            "kind RoleBinding is not supported",
        ),
        (
            "configMapGenerator:\n- name: c\n  envs: [e.env]\n",
            {"k/e.env": "FROM_ENVIRONMENT\n"},
            "has no '='",
        ),
        (
            "resources: [r.yaml]\npatches:\n- patch: |\n    apiVersion: v1\n    kind: Pod\n"
            "    metadata: {name: p}\n    spec: {containers: []}\n",
            {"k/r.yaml": POD},
            "lists in strategic merge patches are not supported",
        ),
        (
            "resources: [r.yaml]\npatches:\n- patch: |\n    apiVersion: v1\n    kind: Pod\n"
            "    metadata: {name: p, labels: {a: null}}\n",
            {"k/r.yaml": POD},
            "null \\(delete\\)",
        ),
        (
            "resources: [r.yaml]\npatches:\n- target: {kind: Pod}\n  patch: |\n"
            "    - {op: move, from: /a, path: /b}\n",
            {"k/r.yaml": POD},
            "from not supported",
        ),
        (
            "resources: [r.yaml]\npatches:\n- target: {kind: Pod}\n  patch: |\n"
            "    - {op: replace, path: /metadata/name, value: q}\n",
            {"k/r.yaml": POD},
            "changes the apiVersion, kind, name or namespace",
        ),
    ],
)
def test_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: str, extra: dict[str, str], message: str
) -> None:
    write(tmp_path, {"k/kustomization.yaml": kustomization, **extra})
    with pytest.raises(render.RenderError, match=message):
        render.render(tmp_path / "k")


def test_main_exit_status(
    fixture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render.main([str(fixture / "ov")]) == 0
    assert capsys.readouterr().out == EXPECTED_OVERLAY
    reference = tmp_path / "expected.yaml"
    reference.write_text(EXPECTED_OVERLAY, encoding="utf-8")
    assert render.main([str(fixture / "ov"), "--compare", str(reference)]) == 0
    assert "identical text" in capsys.readouterr().out
    reference.write_text(EXPECTED_OVERLAY.replace("team: a", "team: b"), encoding="utf-8")
    assert render.main([str(fixture / "ov"), "--compare", str(reference)]) == 1
    assert render.main([str(tmp_path / "missing")]) == 2
