"""Validate Kubernetes manifests offline, the way an API server would, without a cluster.

* Built-in kinds (Deployment, Role, NetworkPolicy, ...) are checked with `kubernetes-validate`'s
  strict JSON schemas (unknown fields rejected) for a given Kubernetes version.
* Custom resources are checked against schemas generated from each project's own OpenAPI
  definitions, as shipped in its PyPI SDK, with unknown fields rejected at every level:
    - Kubeflow Trainer (TrainJob, TrainingRuntime, ClusterTrainingRuntime): the pydantic models
      in `kubeflow_trainer_api` (generated from Trainer's OpenAPI spec; installed with the
      Kubeflow SDK);
    - KServe (InferenceService, ServingRuntime, ClusterServingRuntime): the `openapi_types` /
      `attribute_map` tables of the models in the `kserve` wheel (generated from KServe's
      OpenAPI spec). The wheel is read as a zip file, never installed or imported: its
      dependencies conflict with ours. `scripts/k8s-deps.sh` downloads it (hash-pinned).
  Kubernetes types nested inside custom resources (Container, Volume, ResourceRequirements, ...)
  resolve to kubernetes-validate's strict definitions, so a typo inside a TrainJob's env or an
  InferenceService's resources fails exactly like it would in a Deployment.
Objects of any other custom kind are reported as unvalidated, never silently accepted.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from iwarp.errors import InputError

KSERVE_VERSION = "0.21.0"
KSERVE_WHEEL = f"kserve-{KSERVE_VERSION}-py3-none-any.whl"
# Oldest Kubernetes the stack supports (KServe's Knative mode needs 1.32) and the newest schema.
MIN_K8S_VERSION = "1.32.0"

# Types the KServe SDK references but does not generate; fields of these types accept any value.
# None of them is used by our manifests (multi-node workers, HPA tuning, metric quantities, and a
# Knative type that only appears in status).
KSERVE_UNTYPED = frozenset(
    {
        "V1alpha1WorkerSpec",
        "V1beta1MetricQuantity",
        "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior",
        "KnativeDevServingPkgApisServingV1TrafficTarget",
    }
)

TRAINER_GROUP = "trainer.kubeflow.org"
KSERVE_GROUP = "serving.kserve.io"


class ManifestError(InputError, RuntimeError):
    """A manifest could not be built or a schema source is missing."""


@dataclass(frozen=True)
class Finding:
    """One problem with one object."""

    obj: str  # kind/name
    path: str  # JSON path inside the object
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.path}: {self.message}"


# --------------------------------------------------------------------------- building manifests


def kubectl_binary() -> str:
    """kubectl from PATH (scripts/k8s-deps.sh puts one into the venv when the system lacks it)."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.prefix) / "bin"))
    if not found:
        raise ManifestError("kubectl not found on PATH; run scripts/k8s-deps.sh")
    return found


def kustomize_build(path: str | Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`, parsed into objects (offline: no cluster is contacted)."""
    proc = subprocess.run([kubectl_binary(), "kustomize", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {path} failed:\n{proc.stderr.strip()}")
    return load_objects(proc.stdout)


def load_objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def object_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('name') or meta.get('generateName') or '?'}"


# --------------------------------------------------------------------------- kubernetes schemas


def _kv_schema_dir(version: str) -> Path:
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    want = tuple(int(x) for x in version.split(".")[:2])
    candidates = sorted(
        (tuple(int(x) for x in p.name[1:].split("-")[0].split(".")[:2]), p)
        for p in root.iterdir()
        if p.name.endswith("-local-strict")
    )
    usable = [p for v, p in candidates if v <= want]
    if not usable:
        raise ManifestError(f"kubernetes-validate has no schema for Kubernetes {version}")
    return usable[-1]


def latest_k8s_version() -> str:
    import kubernetes_validate

    return kubernetes_validate.latest_version()


@functools.cache
def k8s_definitions(version: str) -> dict[str, Any]:
    """kubernetes-validate's strict `$defs` (additionalProperties: false on every object)."""
    return json.loads((_kv_schema_dir(version) / "_definitions.json").read_text())["$defs"]


def _k8s_def_index(version: str) -> dict[str, str]:
    """'v1container' / 'iok8sapicorev1container' -> 'io.k8s.api.core.v1.Container'.

    SDK generators name Kubernetes types either by their full definition name (pydantic:
    IoK8sApiCoreV1Container) or by version+kind (openapi-generator: V1Container,
    K8sIoApiAppsV1DeploymentStrategy); core/meta win where a short name is ambiguous.
    """
    index: dict[str, str] = {}
    preference = ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.")
    for name in sorted(k8s_definitions(version), key=lambda n: not n.startswith(preference)):
        parts = name.split(".")
        index.setdefault(name.replace(".", "").lower(), name)
        index.setdefault("k8sio" + name.replace(".", "").lower()[len("iok8s") :], name)
        index.setdefault((parts[-2] + parts[-1]).lower(), name)
    index["resourcequantity"] = "io.k8s.apimachinery.pkg.api.resource.Quantity"
    return index


# --------------------------------------------------------------------------- CRD schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


class _SchemaBuilder:
    """Collects `$defs` for one custom-resource family plus the Kubernetes types it uses."""

    def __init__(self, k8s_version: str):
        self.k8s_version = k8s_version
        self.k8s_index = _k8s_def_index(k8s_version)
        self.defs: dict[str, Any] = {}
        self.unresolved: set[str] = set()

    def k8s_ref(self, type_name: str) -> dict[str, Any] | None:
        full = self.k8s_index.get(type_name.lower())
        if full is None:
            return None
        self._copy_k8s_def(full)
        return _ref(full)

    def _copy_k8s_def(self, full: str) -> None:
        if full in self.defs:
            return
        source = k8s_definitions(self.k8s_version)
        self.defs[full] = source[full]
        for ref in re.findall(r'"#/\$defs/([^"]+)"', json.dumps(source[full])):
            self._copy_k8s_def(ref)

    def schema(self, root: str, api_version: str, kind: str) -> dict[str, Any]:
        top = copy.deepcopy(self.defs[root])
        props = top.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [api_version]}
        props["kind"] = {"type": "string", "enum": [kind]}
        top["required"] = sorted(set(top.get("required", [])) | {"apiVersion", "kind", "metadata"})
        top["additionalProperties"] = False
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **top,
            "$defs": self.defs,
        }


def _trainer_schemas(k8s_version: str) -> dict[tuple[str, str], dict[str, Any]]:
    """JSON schemas from the Kubeflow Trainer SDK's pydantic models, strict at every level."""
    from kubeflow_trainer_api import models

    builder = _SchemaBuilder(k8s_version)
    kinds = {
        "TrainJob": models.TrainerV1alpha1TrainJob,
        "TrainingRuntime": models.TrainerV1alpha1TrainingRuntime,
        "ClusterTrainingRuntime": models.TrainerV1alpha1ClusterTrainingRuntime,
    }
    out = {}
    for kind, cls in kinds.items():
        raw = cls.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        local = raw.pop("$defs", {})
        local[cls.__name__] = raw
        for name, schema in local.items():
            if name.startswith(("IoK8s", "K8sIo")):
                continue  # replaced by kubernetes-validate's definition below
            builder.defs[name] = _strict_pydantic(schema)
        # Point every Kubernetes type at kubernetes-validate's strict definition.
        text = json.dumps(builder.defs)
        for name in set(re.findall(r'"#/\$defs/((?:IoK8s|K8sIo)[A-Za-z0-9]+)"', text)):
            ref = builder.k8s_ref(name)
            if ref is None:
                builder.unresolved.add(name)
                continue
            text = text.replace(f'"#/$defs/{name}"', f'"{ref["$ref"]}"')
        builder.defs = json.loads(text)
        out[(f"{TRAINER_GROUP}/v1alpha1", kind)] = builder.schema(cls.__name__, f"{TRAINER_GROUP}/v1alpha1", kind)
    if builder.unresolved:
        raise ManifestError(f"Trainer types with no Kubernetes schema: {sorted(builder.unresolved)}")
    return out


def _strict_pydantic(schema: Any) -> Any:
    """pydantic ignores unknown keys by default; an API server's structural schema does not.

    Also unwraps pydantic's `anyOf: [X, {type: null}]` for Optional fields into X, so errors
    point at the offending field instead of "not valid under any of the given schemas" at the
    top (an explicit null is then rejected; manifests omit unset fields instead).
    """
    if isinstance(schema, list):
        return [_strict_pydantic(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _strict_pydantic(v) for k, v in schema.items() if k not in ("title", "default")}
    options = schema.get("anyOf")
    if isinstance(options, list):
        non_null = [o for o in options if o != {"type": "null"}]
        if len(non_null) == 1 and len(non_null) < len(options):
            del schema["anyOf"]
            schema.update(non_null[0])
    if schema.get("type") == "object" and "properties" in schema:
        schema["additionalProperties"] = False
    return schema


def kserve_wheel_path() -> Path:
    """Where scripts/k8s-deps.sh put the KServe SDK wheel (or $IWARP_KSERVE_WHEEL)."""
    env = os.environ.get("IWARP_KSERVE_WHEEL")
    if env:
        return Path(env)
    return Path(sys.prefix) / "share" / "iwarp-k8s" / KSERVE_WHEEL


def _kserve_models(wheel: Path) -> dict[str, dict[str, Any]]:
    """Class name -> {types, names, required} parsed (never executed) from the wheel's models."""
    if not wheel.is_file():
        raise ManifestError(
            f"KServe schema source {wheel} is missing; run scripts/k8s-deps.sh "
            f"(downloads kserve=={KSERVE_VERSION} from PyPI without installing it)"
        )
    models: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if not (member.startswith("kserve/models/") and member.endswith(".py")):
                continue
            source = zf.read(member).decode()
            tree = ast.parse(source)
            for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
                tables: dict[str, Any] = {}
                required: set[str] = set()
                for node in cls.body:
                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                        if node.targets[0].id in ("openapi_types", "attribute_map"):
                            tables[node.targets[0].id] = ast.literal_eval(node.value)
                    # Setters of required fields raise "Invalid value for `x`, must not be `None`".
                    if isinstance(node, ast.FunctionDef):
                        if any(
                            isinstance(c, ast.Constant) and "must not be `None`" in str(c.value) for c in ast.walk(node)
                        ):
                            required.add(node.name)
                if "openapi_types" in tables:
                    models[cls.name] = {
                        "types": tables["openapi_types"],
                        "names": tables["attribute_map"],
                        "required": required,
                    }
    return models


def _kserve_schemas(k8s_version: str, wheel: Path) -> dict[tuple[str, str], dict[str, Any]]:
    models = _kserve_models(wheel)
    builder = _SchemaBuilder(k8s_version)

    def type_schema(t: str) -> dict[str, Any]:
        t = t.strip()
        scalar = {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}
        if t in scalar:
            return {"type": scalar[t]}
        if t in ("object", "dict"):
            return {}
        if t in ("datetime", "date"):
            return {"type": "string"}
        if t.startswith("list[") and t.endswith("]"):
            return {"type": "array", "items": type_schema(t[5:-1])}
        if t.startswith("dict(") and t.endswith(")"):
            return {"type": "object", "additionalProperties": type_schema(t[5:-1].split(",", 1)[1])}
        if t in models:
            add_model(t)
            return _ref(t)
        ref = builder.k8s_ref(t)
        if ref is None:
            builder.unresolved.add(t)
            return {}
        return ref

    def add_model(name: str) -> None:
        if name in builder.defs:
            return
        builder.defs[name] = {}  # placeholder: breaks recursion
        model = models[name]
        props = {model["names"][attr]: type_schema(t) for attr, t in model["types"].items()}
        schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        required = sorted(model["names"][a] for a in model["required"] if a in model["names"])
        if required:
            schema["required"] = required
        builder.defs[name] = schema

    kinds = {
        "InferenceService": ("v1beta1", "V1beta1InferenceService"),
        "ServingRuntime": ("v1alpha1", "V1alpha1ServingRuntime"),
        "ClusterServingRuntime": ("v1alpha1", "V1alpha1ClusterServingRuntime"),
    }
    out = {}
    for kind, (version, cls) in kinds.items():
        add_model(cls)
        out[(f"{KSERVE_GROUP}/{version}", kind)] = builder.schema(cls, f"{KSERVE_GROUP}/{version}", kind)
    unexpected = builder.unresolved - KSERVE_UNTYPED
    if unexpected:
        raise ManifestError(f"KServe types with no schema: {sorted(unexpected)}")
    return out


@functools.cache
def crd_schemas(k8s_version: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON schema for every custom kind we deploy."""
    version = k8s_version or latest_k8s_version()
    schemas = _trainer_schemas(version)
    schemas.update(_kserve_schemas(version, kserve_wheel_path()))
    return schemas


# --------------------------------------------------------------------------- validation


def _is_builtin(api_version: str) -> bool:
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group == "" or group.endswith(".k8s.io") and not group.endswith(".x-k8s.io") or "." not in group


def validate_object(obj: dict[str, Any], k8s_version: str = MIN_K8S_VERSION) -> list[Finding]:
    """Every schema violation in `obj` (empty list: valid)."""
    import jsonschema
    import kubernetes_validate

    name = object_name(obj)
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if not api_version or not kind:
        return [Finding(name, "$", "apiVersion and kind are required")]
    group = api_version.split("/")[0] if "/" in api_version else ""
    schema = crd_schemas().get((api_version, kind)) if group in (TRAINER_GROUP, KSERVE_GROUP) else None
    if schema is None:
        if not _is_builtin(api_version):
            return [Finding(name, "$", f"no schema known for {api_version} {kind}")]
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "$" + "".join(f"[{p!r}]" for p in exc.path)
            return [Finding(name, path, exc.message)]
        except kubernetes_validate.SchemaNotFoundError as exc:
            return [Finding(name, "$", exc.message)]
        return []
    validator = jsonschema.Draft202012Validator(schema)
    findings = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = "$" + "".join(f"[{p!r}]" for p in err.absolute_path)
        findings.append(Finding(name, path, err.message))
    return findings


def validate_objects(objs: Iterable[dict[str, Any]], k8s_version: str = MIN_K8S_VERSION) -> list[Finding]:
    findings: list[Finding] = []
    for obj in objs:
        findings.extend(validate_object(obj, k8s_version))
    return findings


def validate_paths(paths: Iterable[str | Path], k8s_versions: Iterable[str]) -> list[Finding]:
    """Validate kustomization directories (built with kubectl) and YAML files."""
    findings: list[Finding] = []
    for path in paths:
        path = Path(path)
        objs = kustomize_build(path) if path.is_dir() else load_objects(path.read_text())
        for version in k8s_versions:
            findings.extend(
                Finding(f"{path}: {f.obj}", f.path, f"{f.message} (Kubernetes {version})")
                for f in validate_objects(objs, version)
            )
    return findings
