#!/usr/bin/env python3
"""Render a kustomization like ``kustomize build``, for the features fileshare's k8s/ uses.

scripts/lint-deploy.sh renders k8s/base and k8s/overlays/* with ``kustomize build`` or
``kubectl kustomize`` when one is installed, and with this script otherwise (a fresh Debian
machine has neither: kubectl comes from the Google Cloud SDK apt repository). When a real
kustomize is available, lint-deploy.sh also checks that this renderer's output equals it.

    render.py k8s/overlays/s3 > s3.yaml
    render.py k8s/overlays/s3 --compare s3-from-kubectl.yaml

Implemented, following kustomize v5 (the one in kubectl >= 1.27):
  * ``resources``: local YAML files (several documents each) and local kustomization
    directories (bases), recursively;
  * ``configMapGenerator`` with ``envs`` and ``files`` (``key=path`` too), ``behavior``
    ``create`` or ``merge``; the generated name gets kustomize's content-hash suffix (the same
    hash: sha256 over the JSON of kind, an empty name and data, first 10 hex digits with
    0/1/3/a/e mapped to g/h/k/m/t), and references from pod specs (volumes, projected
    volumes, envFrom, env valueFrom) are rewritten to it;
  * ``patches`` from ``path`` or inline ``patch``: JSON 6902 (a list of operations: add,
    remove, replace, test) with a ``target`` (group, version, kind, name, namespace); or a
    strategic merge patch of maps (no lists, nulls or $-directives), with or without a target;
  * ``namespace``; ``labels`` (``pairs``, ``includeTemplates``); ``images`` (``name``,
    ``newName``, ``newTag``, ``digest``);
  * kustomize's default ("legacy") output order, keys sorted, YAML as kustomize writes it.

Anything else (other kustomization fields, other options, kinds whose namespace scope or
name references it does not know) is refused with an error, exit status 2, rather than
rendered differently from kustomize. Exit status 1: ``--compare`` found a difference.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "labels",
        "configMapGenerator",
        "images",
        "patches",
    }
)
#: kind -> path from the object to its pod spec
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
#: kind -> metadata of its templates (``labels`` with includeTemplates)
TEMPLATE_METADATA_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (("spec", "template", "metadata"),),
    "StatefulSet": (("spec", "template", "metadata"),),
    "DaemonSet": (("spec", "template", "metadata"),),
    "ReplicaSet": (("spec", "template", "metadata"),),
    "Job": (("spec", "template", "metadata"),),
    "CronJob": (
        ("spec", "jobTemplate", "metadata"),
        ("spec", "jobTemplate", "spec", "template", "metadata"),
    ),
}
CLUSTER_SCOPED_KINDS = frozenset({"Namespace"})
#: Namespaced kinds whose only cross-object references (if any) are the pod spec's, which
#: this renderer rewrites. RoleBinding & co. are left out on purpose (subjects' namespaces).
NAMESPACED_KINDS = frozenset(
    {
        *POD_SPEC_PATHS,
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
    }
)
# kustomize's legacy sort order (plugin/builtin/sortordertransformer): these kinds first, in
# this order, then every other kind, then the webhook configurations; ties by GVK, then id.
ORDER_FIRST = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)
ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
ENV_VAR_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
CONFIG_MAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")


class RenderError(Exception):
    """The kustomization is invalid or uses a feature this renderer does not implement."""


# ----------------------------------------------------------------------------- YAML
class Loader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    """YAML 1.2 core schema, as kustomize (go-yaml v3) reads it: ``yes``/``on``/``1:20``
    stay strings. Unquoted dates, ``<<`` merge keys and duplicate keys are refused."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key == "<<":
                raise RenderError(f"YAML merge keys (<<) are not supported{_mark(key_node)}")
            if key in seen:
                raise RenderError(f"duplicate key {key!r}{_mark(key_node)}")
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _mark(node: Any) -> str:
    mark = getattr(node, "start_mark", None)
    return f" ({mark.name}, line {mark.line + 1})" if mark is not None else ""


def _construct_int(loader: Any, node: Any) -> int:
    text: str = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


Loader.yaml_implicit_resolvers = {}  # none of SafeLoader's YAML 1.1 ones
for _tag, _pattern, _first in (
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("null", r"~|null|Null|NULL|", "~nN"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+.0123456789",
    ),
):
    Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first)
    )
Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile("^$"), [""])
Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
# kustomize turns an unquoted date into "2024-01-01T00:00:00Z": refuse rather than guess
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:timestamp",
    re.compile(r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt \t].*)?$"),
    list("0123456789"),
)


def _refuse_timestamp(loader: Any, node: Any) -> None:
    raise RenderError(
        f"unquoted date {node.value!r}{_mark(node)}: quote it (kustomize would rewrite it)"
    )


Loader.add_constructor("tag:yaml.org,2002:timestamp", _refuse_timestamp)


class Dumper(yaml.SafeDumper):  # type: ignore[misc,unused-ignore]
    """Writes YAML the way kustomize does: multi-line strings as literal blocks, strings that
    would read as another type double-quoted, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def choose_scalar_style(self) -> str:
        style: str = super().choose_scalar_style()
        event: Any = self.event
        # go-yaml double-quotes strings that would read as another type, and single-quotes
        # those that cannot be plain for other reasons (leading quote, trailing blank, ...)
        if style == "'" and not event.implicit[0]:
            return '"'
        return style


def _represent_str(dumper: Any, data: str) -> Any:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _represent_float(dumper: Any, data: float) -> Any:
    # kustomize's JSON round trip writes 1e3 or 1000.0 as 1000
    if data.is_integer() and abs(data) < 1e21:
        return dumper.represent_int(int(data))
    return dumper.represent_float(data)


Dumper.add_representer(str, _represent_str)
Dumper.add_representer(float, _represent_float)
# go-yaml also quotes YAML 1.1's one-letter booleans
Dumper.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile("^(?:y|Y|n|N)$"), list("yYnN"))


def load_documents(text: str, source: str) -> list[Any]:
    try:
        return [doc for doc in yaml.load_all(text, Loader=Loader) if doc is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"{source}: not valid YAML: {exc}") from exc


def dump_documents(objects: list[dict[str, Any]]) -> str:
    return "---\n".join(
        yaml.dump(
            obj,
            Dumper=Dumper,
            sort_keys=True,
            default_flow_style=False,
            allow_unicode=True,
            width=1 << 30,
            indent=2,
        )
        for obj in objects
    )


# ----------------------------------------------------------------------------- resources
@dataclass
class Resource:
    obj: dict[str, Any]
    source: str
    #: configMapGenerator output: the name gets the content hash at the end of the build
    generated: bool = False
    original_namespace: str = ""

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace") or "")

    @property
    def group_version(self) -> tuple[str, str]:
        api_version = str(self.obj["apiVersion"])
        group, _, version = api_version.rpartition("/")
        return group, version

    def gvk_sort_string(self) -> str:
        group, version = self.group_version
        return f"{group or '~G'}_{version or '~V'}_{self.kind}"

    def id_sort_string(self) -> str:
        group, version = self.group_version
        gvk = f"{self.kind}.{version or '[noVer]'}.{group or '[noGrp]'}"
        return f"{gvk}|{self.namespace or '~X'}|{self.name}"

    def describe(self) -> str:
        namespace = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {namespace}{self.name}"


def effective_namespace(kind: str, namespace: str) -> str:
    if kind in CLUSTER_SCOPED_KINDS:
        return ""
    return namespace or "default"


def same_id(a: Resource, b: Resource) -> bool:
    return (
        a.group_version == b.group_version
        and a.kind == b.kind
        and a.name == b.name
        and effective_namespace(a.kind, a.namespace) == effective_namespace(b.kind, b.namespace)
    )


def check_object(obj: Any, source: str) -> Resource:
    if not isinstance(obj, dict):
        raise RenderError(f"{source}: a resource must be a mapping, got {type(obj).__name__}")
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise RenderError(f"{source}: resource without {key}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise RenderError(f"{source}: {obj['kind']} without metadata.name")
    kind = obj["kind"]
    if kind not in CLUSTER_SCOPED_KINDS and kind not in NAMESPACED_KINDS:
        raise RenderError(
            f"{source}: kind {kind} is not supported by render.py (its namespace scope and "
            "name references are unknown to it); extend render.py or use kustomize"
        )
    if kind == "Namespace" and "namespace" in metadata:
        raise RenderError(f"{source}: a Namespace has no metadata.namespace")
    return Resource(obj, source, original_namespace=str(metadata.get("namespace") or ""))


def add_resource(resources: list[Resource], new: Resource) -> None:
    for existing in resources:
        if same_id(existing, new):
            raise RenderError(
                f"{new.source}: {new.describe()} is already defined (by {existing.source})"
            )
    resources.append(new)


# ----------------------------------------------------------------------------- kustomization
@dataclass
class Kustomization:
    directory: Path
    path: Path
    spec: dict[str, Any]
    resources: list[Resource] = field(default_factory=list)

    def list_field(self, name: str) -> list[Any]:
        value = self.spec.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise RenderError(f"{self.path}: {name} must be a list")
        return value

    def local_file(self, relative: Any, what: str) -> Path:
        if not isinstance(relative, str) or not relative:
            raise RenderError(f"{self.path}: {what}: expected a file path, got {relative!r}")
        if "://" in relative or relative.startswith(("github.com/", "git@")):
            raise RenderError(f"{self.path}: {what} {relative}: remote files are not supported")
        path = (self.directory / relative).resolve()
        # kustomize's default load restrictor: files only from inside the kustomization
        if not path.is_relative_to(self.directory.resolve()):
            raise RenderError(
                f"{self.path}: {what} {relative} is outside the kustomization directory"
            )
        if not path.is_file():
            raise RenderError(f"{self.path}: {what} {relative}: no such file")
        return path


def only_keys(mapping: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise RenderError(f"{where}: expected a mapping, got {mapping!r}")
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        raise RenderError(
            f"{where}: {', '.join(unknown)} not supported by render.py "
            f"(supported here: {', '.join(sorted(allowed))}); extend it or use kustomize"
        )
    return mapping


def read_kustomization(directory: Path) -> Kustomization:
    found = [directory / name for name in KUSTOMIZATION_FILES if (directory / name).is_file()]
    if not found:
        raise RenderError(f"{directory}: no kustomization.yaml")
    if len(found) > 1:
        raise RenderError(f"{directory}: more than one kustomization file: {found}")
    path = found[0]
    docs = load_documents(path.read_text(encoding="utf-8"), str(path))
    if len(docs) != 1:
        raise RenderError(f"{path}: expected exactly one YAML document")
    spec = only_keys(docs[0], set(KUSTOMIZATION_FIELDS), str(path))
    api_version = spec.get("apiVersion", "kustomize.config.k8s.io/v1beta1")
    if api_version != "kustomize.config.k8s.io/v1beta1" or spec.get("kind") not in (
        None,
        "Kustomization",
    ):
        raise RenderError(f"{path}: expected kustomize.config.k8s.io/v1beta1 Kustomization")
    return Kustomization(directory, path, spec)


def build(directory: Path, stack: tuple[Path, ...] = ()) -> list[Resource]:
    """The resources of one kustomization, transformed, generated names not yet hashed."""
    directory = directory.resolve()
    if directory in stack:
        raise RenderError(f"{directory}: cycle in resources")
    k = read_kustomization(directory)
    for entry in k.list_field("resources"):
        if not isinstance(entry, str):
            raise RenderError(f"{k.path}: resources: expected a path, got {entry!r}")
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            raise RenderError(f"{k.path}: resources: {entry}: remote bases are not supported")
        target = k.directory / entry
        if target.is_dir():
            for resource in build(target, (*stack, directory)):
                add_resource(k.resources, resource)
            continue
        path = k.local_file(entry, "resources")
        for doc in load_documents(path.read_text(encoding="utf-8"), str(path)):
            add_resource(k.resources, check_object(doc, str(path)))
    for index, generator in enumerate(k.list_field("configMapGenerator")):
        generate_config_map(k, generator, f"{k.path}: configMapGenerator[{index}]")
    for index, patch in enumerate(k.list_field("patches")):
        apply_patch(k, patch, f"{k.path}: patches[{index}]")
    if "namespace" in k.spec:
        set_namespace(k, k.spec["namespace"])
    for index, labels in enumerate(k.list_field("labels")):
        add_labels(k, labels, f"{k.path}: labels[{index}]")
    for index, image in enumerate(k.list_field("images")):
        set_image(k, image, f"{k.path}: images[{index}]")
    return k.resources


def render(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build directory``: the objects, in kustomize's output order."""
    resources = build(directory)
    hash_generated_names(resources)
    resources.sort(key=sort_key)
    return [resource.obj for resource in resources]


def sort_key(resource: Resource) -> tuple[int, str, str]:
    kind = resource.kind
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind) - len(ORDER_FIRST)
    elif kind in ORDER_LAST:
        rank = 1 + ORDER_LAST.index(kind)
    else:
        rank = 0
    return rank, resource.gvk_sort_string(), resource.id_sort_string()


# ----------------------------------------------------------------------------- generator
def env_file_pairs(path: Path) -> Iterator[tuple[str, str]]:
    """kustomize's env-file syntax (api/kv): KEY=VALUE lines, the value verbatim (quotes
    and trailing blanks included), blank lines and lines starting with # skipped."""
    raw = path.read_bytes()
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if line_bytes.endswith(b"\r"):
            line_bytes = line_bytes[:-1]
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RenderError(f"{path}:{number}: not valid UTF-8") from exc
        if number == 1:
            line = line.removeprefix("\ufeff")
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not ENV_VAR_NAME.fullmatch(key):
            raise RenderError(f"{path}:{number}: {key!r} is not a valid key name")
        if not sep:
            raise RenderError(
                f"{path}:{number}: {key} has no '=': kustomize would read its value from the "
                "environment, which render.py does not do"
            )
        yield key, value


def file_pairs(k: Kustomization, sources: list[Any], where: str) -> Iterator[tuple[str, str]]:
    for source in sources:
        if not isinstance(source, str):
            raise RenderError(f"{where}: files: expected a path, got {source!r}")
        if source.count("=") > 1:
            raise RenderError(f"{where}: files: {source}: at most one '=' (key=path)")
        key, sep, relative = source.partition("=")
        if not sep:
            key, relative = Path(source).name, source
        if not key or not relative:
            raise RenderError(f"{where}: files: {source}: empty key or path")
        path = k.local_file(relative, "configMapGenerator files")
        try:
            yield key, path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RenderError(
                f"{where}: {relative} is not UTF-8 (binaryData is not supported)"
            ) from exc


def generate_config_map(k: Kustomization, generator: Any, where: str) -> None:
    spec = only_keys(generator, {"name", "behavior", "envs", "files"}, where)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise RenderError(f"{where}: name is required")
    data: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for env in spec.get("envs") or []:
        pairs.extend(env_file_pairs(k.local_file(env, "configMapGenerator envs")))
    pairs.extend(file_pairs(k, list(spec.get("files") or []), where))
    for key, value in pairs:
        if not CONFIG_MAP_KEY.fullmatch(key):
            raise RenderError(f"{where}: {key!r} is not a valid ConfigMap key")
        if key in data:
            raise RenderError(f"{where}: ConfigMap {name} repeats the key {key}")
        data[key] = value
    behavior = spec.get("behavior", "create")
    if behavior == "create":
        obj: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": data,
        }
        add_resource(k.resources, Resource(obj, where, generated=True))
    elif behavior == "merge":
        matches = [
            r
            for r in k.resources
            if r.kind == "ConfigMap" and r.group_version == ("", "v1") and r.name == name
        ]
        if len(matches) != 1:
            raise RenderError(
                f"{where}: behavior merge needs exactly one ConfigMap {name} from the "
                f"resources, found {len(matches)}"
            )
        target = matches[0]
        if not target.generated:
            raise RenderError(f"{where}: merging into a non-generated ConfigMap is not supported")
        target_data = target.obj.setdefault("data", {})
        target_data.update(data)
    else:
        raise RenderError(f"{where}: behavior {behavior!r} not supported (create, merge)")


def kustomize_hash(obj: dict[str, Any]) -> str:
    """The suffix kustomize appends to a generated ConfigMap's name (api/hasher). kustomize
    hashes the node before it names it, so the name in the hashed JSON is empty."""
    if obj.get("binaryData"):
        raise RenderError("binaryData is not supported")
    encoded = json.dumps(
        {"data": obj.get("data") or {}, "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # Go's encoding/json escapes these for HTML safety; Python's json does not.
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(char, escaped)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def hash_generated_names(resources: list[Resource]) -> None:
    for generated in resources:
        if not generated.generated:
            continue
        old = generated.name
        new = f"{old}-{kustomize_hash(generated.obj)}"
        generated.obj["metadata"]["name"] = new
        for referrer in resources:
            if referrer.namespace == generated.namespace:
                rename_config_map_references(referrer, old, new)


def rename_config_map_references(resource: Resource, old: str, new: str) -> None:
    pod_spec = get_path(resource.obj, POD_SPEC_PATHS.get(resource.kind))
    if not isinstance(pod_spec, dict):
        return

    def rename(holder: Any, key: str) -> None:
        if isinstance(holder, dict) and holder.get(key) == old:
            holder[key] = new

    for volume in pod_spec.get("volumes") or []:
        rename(volume.get("configMap"), "name")
        for source in (volume.get("projected") or {}).get("sources") or []:
            rename(source.get("configMap"), "name")
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(group) or []:
            for env_from in container.get("envFrom") or []:
                rename(env_from.get("configMapRef"), "name")
            for env in container.get("env") or []:
                rename((env.get("valueFrom") or {}).get("configMapKeyRef"), "name")


def get_path(obj: Any, path: tuple[str, ...] | None) -> Any:
    if path is None:
        return None
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


# ----------------------------------------------------------------------------- patches
def apply_patch(k: Kustomization, entry: Any, where: str) -> None:
    spec = only_keys(entry, {"path", "patch", "target"}, where)
    if ("path" in spec) == ("patch" in spec):
        raise RenderError(f"{where}: exactly one of path and patch")
    if "path" in spec:
        path = k.local_file(spec["path"], "patches path")
        text, source = path.read_text(encoding="utf-8"), f"{where} ({spec['path']})"
    else:
        text, source = str(spec["patch"]), where
    docs = load_documents(text, source)
    if len(docs) != 1:
        raise RenderError(f"{source}: expected exactly one patch document, got {len(docs)}")
    patch = docs[0]
    if "target" in spec:
        targets = select(k.resources, spec["target"], f"{where}: target")
    elif isinstance(patch, dict):
        targets = [r for r in k.resources if patch_selects(patch, r, source)]
        if len(targets) != 1:
            raise RenderError(f"{source}: the patch matches {len(targets)} resources, not 1")
    else:
        raise RenderError(f"{source}: a JSON 6902 patch needs a target")
    for resource in targets:
        before = (resource.obj["apiVersion"], resource.kind, resource.name, resource.namespace)
        if isinstance(patch, list):
            resource.obj = json_patch(resource.obj, patch, f"{source} on {resource.describe()}")
        elif isinstance(patch, dict):
            body = copy.deepcopy(patch)
            for key in ("apiVersion", "kind"):
                body.pop(key, None)
            metadata = body.get("metadata")
            if isinstance(metadata, dict):
                metadata.pop("name", None)
                metadata.pop("namespace", None)
            strategic_merge(resource.obj, body, f"{source} on {resource.describe()}")
        else:
            raise RenderError(f"{source}: a patch is a mapping or a list of operations")
        after = check_object(resource.obj, f"{source} (result)")
        if (after.obj["apiVersion"], after.kind, after.name, after.namespace) != before:
            raise RenderError(
                f"{source}: changes the apiVersion, kind, name or namespace of "
                f"{resource.describe()}: not supported"
            )


def patch_selects(patch: dict[str, Any], resource: Resource, source: str) -> bool:
    metadata = patch.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise RenderError(f"{source}: a patch without a target needs metadata.name")
    if patch.get("apiVersion") != resource.obj["apiVersion"] or patch.get("kind") != (
        resource.kind
    ):
        return False
    namespace = str(metadata.get("namespace") or "")
    return metadata["name"] == resource.name and any(
        effective_namespace(resource.kind, namespace) == effective_namespace(resource.kind, ns)
        for ns in (resource.namespace, resource.original_namespace)
    )


def select(resources: list[Resource], target: Any, where: str) -> list[Resource]:
    spec = only_keys(target, {"group", "version", "kind", "name", "namespace"}, where)
    for key, value in spec.items():
        if not isinstance(value, str):
            raise RenderError(f"{where}: {key} must be a string")

    def matches(pattern: str | None, *values: str) -> bool:
        return not pattern or any(re.fullmatch(pattern, value) for value in values)

    selected = [
        r
        for r in resources
        if ("group" not in spec or r.group_version[0] == spec["group"])
        and ("version" not in spec or r.group_version[1] == spec["version"])
        and ("kind" not in spec or r.kind == spec["kind"])
        and matches(spec.get("name"), r.name)
        and matches(
            spec.get("namespace"),
            effective_namespace(r.kind, r.namespace),
            effective_namespace(r.kind, r.original_namespace),
        )
    ]
    if not selected:
        raise RenderError(f"{where}: selects no resource")
    return selected


def strategic_merge(target: dict[str, Any], patch: dict[str, Any], where: str) -> None:
    """Strategic merge restricted to maps: recursive merge. Lists would need the per-field
    merge keys and strategies of the OpenAPI schema, and null (delete) is inconsistent in
    kustomize: both refused."""
    for key, value in patch.items():
        if str(key).startswith("$"):
            raise RenderError(f"{where}: strategic merge directive {key} not supported")
        if value is None:
            # kustomize deletes the key, or for labels/annotations writes the string "null"
            raise RenderError(
                f"{where}: {key}: null (delete) in a strategic merge patch is not supported"
            )
        if isinstance(value, list):
            raise RenderError(
                f"{where}: {key}: lists in strategic merge patches are not supported "
                "(merge keys); use a JSON 6902 patch"
            )
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value, f"{where}: {key}")
        elif isinstance(value, dict):
            if key in target:
                raise RenderError(f"{where}: {key}: replaces a non-map with a map")
            merged: dict[str, Any] = {}
            strategic_merge(merged, value, f"{where}: {key}")
            target[key] = merged
        else:
            target[key] = value


def json_patch(obj: dict[str, Any], operations: list[Any], where: str) -> dict[str, Any]:
    """RFC 6902 add, remove, replace and test (move and copy are not implemented)."""
    result = copy.deepcopy(obj)
    for index, operation in enumerate(operations):
        at = f"{where}: operation {index}"
        spec = only_keys(operation, {"op", "path", "value"}, at)
        op, pointer = spec.get("op"), spec.get("path")
        if op not in ("add", "remove", "replace", "test"):
            raise RenderError(f"{at}: op {op!r} not supported (add, remove, replace, test)")
        if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
            raise RenderError(f"{at}: path must be a JSON pointer, got {pointer!r}")
        if op != "remove" and "value" not in spec:
            raise RenderError(f"{at}: {op} needs a value")
        if not pointer:
            raise RenderError(f"{at}: operations on the whole document are not supported")
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
        parent: Any = result
        for token in tokens[:-1]:
            parent = _child(parent, token, f"{at}: {pointer}")
        last = tokens[-1]
        value = copy.deepcopy(spec.get("value"))
        if isinstance(parent, dict):
            if op != "add" and last not in parent:
                raise RenderError(f"{at}: {pointer} does not exist")
            if op == "test":
                if parent[last] != value:
                    raise RenderError(f"{at}: test failed: {pointer} is {parent[last]!r}")
            elif op == "remove":
                del parent[last]
            else:
                parent[last] = value
        elif isinstance(parent, list):
            if op == "add" and last == "-":
                parent.append(value)
                continue
            position = _index(last, len(parent) + (1 if op == "add" else 0), f"{at}: {pointer}")
            if op == "add":
                parent.insert(position, value)
            elif op == "remove":
                del parent[position]
            elif op == "replace":
                parent[position] = value
            elif parent[position] != value:
                raise RenderError(f"{at}: test failed: {pointer} is {parent[position]!r}")
        else:
            raise RenderError(f"{at}: {pointer}: parent is not a map or a list")
    return result


def _child(node: Any, token: str, where: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise RenderError(f"{where}: {token} does not exist")
        return node[token]
    if isinstance(node, list):
        return node[_index(token, len(node), where)]
    raise RenderError(f"{where}: {token}: not inside a map or a list")


def _index(token: str, size: int, where: str) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= size:
        raise RenderError(f"{where}: {token}: no such list index")
    return int(token)


# ----------------------------------------------------------------------------- transformers
def set_namespace(k: Kustomization, namespace: Any) -> None:
    if not isinstance(namespace, str) or not namespace:
        raise RenderError(f"{k.path}: namespace must be a non-empty string")
    for resource in k.resources:
        if resource.kind == "Namespace":
            if resource.name != namespace:
                raise RenderError(
                    f"{k.path}: namespace {namespace} with a Namespace object named "
                    f"{resource.name}: not supported (kustomize may rename it)"
                )
        else:
            resource.obj["metadata"]["namespace"] = namespace


def add_labels(k: Kustomization, entry: Any, where: str) -> None:
    spec = only_keys(entry, {"pairs", "includeTemplates", "includeSelectors"}, where)
    if spec.get("includeSelectors", False) is not False:
        raise RenderError(f"{where}: includeSelectors true is not supported")
    include_templates = spec.get("includeTemplates", False)
    if not isinstance(include_templates, bool):
        raise RenderError(f"{where}: includeTemplates must be true or false")
    pairs = spec.get("pairs") or {}
    if not isinstance(pairs, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in pairs.items()
    ):
        raise RenderError(f"{where}: pairs must map strings to strings")
    for resource in k.resources:
        holders = [resource.obj["metadata"]]
        if include_templates:
            for path in TEMPLATE_METADATA_PATHS.get(resource.kind, ()):
                holders.append(ensure_path(resource.obj, path))
        for holder in holders:
            labels = holder.get("labels")
            if labels is None:
                labels = holder["labels"] = {}
            labels.update(pairs)


def ensure_path(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        child = obj.get(key)
        if child is None:
            child = obj[key] = {}
        if not isinstance(child, dict):
            raise RenderError(f"{'.'.join(path)}: {key} is not a map")
        obj = child
    return obj


def split_image(image: str) -> tuple[str, str, str]:
    """name, tag, digest, like kustomize's image.Split."""
    slash = image.find("/")
    start = slash if slash > 0 else 0
    at, colon = image.find("@", start), image.find(":", start)
    if at < 0 and colon < 0:
        return image, "", ""
    if at >= 0 and (colon < 0 or at < colon):
        return image[:at], "", image[at + 1 :]
    if at >= 0:
        return image[:colon], image[colon + 1 : at], image[at + 1 :]
    return image[:colon], image[colon + 1 :], ""


def set_image(k: Kustomization, entry: Any, where: str) -> None:
    spec = only_keys(entry, {"name", "newName", "newTag", "digest"}, where)
    for key, value in spec.items():
        if not isinstance(value, str):
            raise RenderError(f"{where}: {key} must be a string (quote it), got {value!r}")
    if not spec.get("name"):
        raise RenderError(f"{where}: name is required")

    def update(image: str) -> str:
        name, tag, digest = split_image(image)
        name = spec.get("newName") or name
        if spec.get("newTag") or spec.get("digest"):
            tag, digest = spec.get("newTag", ""), spec.get("digest", "")
        return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    for resource in k.resources:
        for_each_container(resource, spec["name"], update)


def for_each_container(resource: Resource, name: str, update: Callable[[str], str]) -> None:
    pod_spec = get_path(resource.obj, POD_SPEC_PATHS.get(resource.kind))
    if not isinstance(pod_spec, dict):
        return
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(group) or []:
            image = container.get("image")
            if isinstance(image, str) and split_image(image)[0] == name:
                container["image"] = update(image)


# ----------------------------------------------------------------------------- compare
def object_key(obj: Any) -> tuple[str, str, str, str]:
    if not isinstance(obj, dict):
        return ("", "", "", repr(obj))
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    return (
        str(obj.get("apiVersion")),
        str(obj.get("kind")),
        str(metadata.get("namespace") or ""),
        str(metadata.get("name")),
    )


def compare(ours: list[dict[str, Any]], reference_text: str, reference_name: str) -> list[str]:
    """Differences between our objects and the reference rendering, both parsed."""
    theirs = load_documents(reference_text, reference_name)
    mine = {object_key(obj): obj for obj in ours}
    other = {object_key(obj): obj for obj in theirs}
    problems = []
    if len(other) != len(theirs):
        problems.append(f"{reference_name}: duplicate objects")
    for key in sorted(mine.keys() - other.keys()):
        problems.append(f"only in render.py: {'/'.join(key)}")
    for key in sorted(other.keys() - mine.keys()):
        problems.append(f"only in {reference_name}: {'/'.join(key)}")
    for key in sorted(mine.keys() & other.keys()):
        if mine[key] != other[key]:
            diff = difflib.unified_diff(
                dump_documents([other[key]]).splitlines(),
                dump_documents([mine[key]]).splitlines(),
                reference_name,
                "render.py",
                lineterm="",
            )
            problems.append(f"{'/'.join(key)} differs:\n" + "\n".join(diff))
    if problems and hash_normalised(ours) == hash_normalised(theirs):
        problems.append(
            "(the objects differ only in the hash suffixes of generated names: this "
            "kustomize hashes differently from the one render.py follows)"
        )
    return problems


def hash_normalised(objects: list[Any]) -> list[str]:
    text = dump_documents(sorted(objects, key=object_key))
    return sorted(re.sub(r"-[2-9bcdfghkmt]{10}\b", "-HASH", text).split("---\n"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a directory with a kustomization.yaml")
    parser.add_argument(
        "--compare",
        metavar="FILE",
        type=Path,
        help="instead of printing, compare with FILE (the output of kustomize build)",
    )
    args = parser.parse_args(argv)
    try:
        objects = render(args.directory)
        if args.compare is None:
            sys.stdout.write(dump_documents(objects))
            return 0
        reference = args.compare.read_text(encoding="utf-8")
        problems = compare(objects, reference, str(args.compare))
    except (RenderError, OSError) as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    identical = "identical text" if dump_documents(objects) == reference else "same objects"
    print(f"render.py {args.directory}: {len(objects)} objects, {identical} as {args.compare}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
