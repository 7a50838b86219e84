"""KServe path for iwarp: the InferenceService, its canary patches, and the S3 model layout.

A model version lives at an S3 prefix in the layout KServe's TorchServe runtimes read:

    s3://bucket/iwarp/<version>/config/config.properties
    s3://bucket/iwarp/<version>/model-store/iwarp.mar

and the InferenceService `iwarp` (Knative deployment mode, runtime `iwarp-torchserve` from
k8s/base/serving) points its predictor's `storageUri` at one such prefix. A rollout is three
JSON merge patches on that object, driven by the same `serving.canary.decide` verdict as the
local TorchServe canary:

    canary_patch(uri, 10)   new storageUri, canaryTrafficPercent 10: Knative keeps the last
                            rolled-out revision for the other 90%
    promote_patch()         drop canaryTrafficPercent: the new revision takes 100%
    rollback_patch()        canaryTrafficPercent 0: all traffic back on the previous revision

Defaults mirror k8s/params.yaml (a test keeps them equal); the rendered default manifests are
checked in as k8s/serving/*.yaml.
"""

from __future__ import annotations

import copy
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
# canaryTrafficPercent needs Knative revisions; KServe's default mode ("Standard", formerly
# "RawDeployment") has no traffic splitting. "Knative" was called "Serverless" before 0.15.
DEPLOYMENT_MODE = "Knative"


@dataclass
class KServeSettings:
    """What the InferenceService looks like apart from the model version it serves."""

    name: str = "iwarp"
    namespace: str = "iwarp"
    runtime: str = "iwarp-torchserve"
    service_account: str = "iwarp-serving"
    model_name: str = "iwarp"  # TorchServe model name inside the .mar
    mar_name: str = "iwarp.mar"
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    min_replicas: int = 1
    max_replicas: int = 3
    timeout_s: int = 300  # per request: long driving videos take a while
    labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/part-of": "iwarp"})


# --------------------------------------------------------------------------- manifests


def render_inference_service(
    storage_uri: str, settings: KServeSettings | None = None, canary_percent: int | None = None
) -> dict[str, Any]:
    """The whole InferenceService serving `storage_uri`; with `canary_percent`, its canary form."""
    s = settings or KServeSettings()
    parse_s3_uri(storage_uri)
    resources = {"cpu": s.cpu, "memory": s.memory}
    if s.gpus:
        resources["nvidia.com/gpu"] = str(s.gpus)  # extended resources: requests must equal limits
    predictor: dict[str, Any] = {
        "serviceAccountName": s.service_account,
        "minReplicas": s.min_replicas,
        "maxReplicas": s.max_replicas,
        "timeout": s.timeout_s,
        "model": {
            "modelFormat": {"name": "pytorch", "version": "2"},
            "runtime": s.runtime,
            "protocolVersion": "v1",
            "storageUri": storage_uri,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        },
    }
    if s.gpus:
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = check_percent(canary_percent)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": s.name,
            "namespace": s.namespace,
            "labels": dict(s.labels),
            "annotations": {
                "serving.kserve.io/deploymentMode": DEPLOYMENT_MODE,
                # Tags each revision (prev-/latest- host names) so both sides of a canary can
                # be evaluated on the same requests.
                "serving.kserve.io/enable-tag-routing": "true",
            },
        },
        "spec": {"predictor": predictor},
    }


def check_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be an integer in 0..100, got {percent!r}")
    return percent


def canary_patch(storage_uri: str, percent: int) -> dict[str, Any]:
    """Start (or move) a canary: the new model gets `percent`% of the traffic."""
    parse_s3_uri(storage_uri)
    return {
        "spec": {"predictor": {"canaryTrafficPercent": check_percent(percent), "model": {"storageUri": storage_uri}}}
    }


def traffic_patch(percent: int) -> dict[str, Any]:
    """Move an ongoing canary to `percent`% (100 promotes: the field is dropped)."""
    if check_percent(percent) == 100:
        return promote_patch()
    return {"spec": {"predictor": {"canaryTrafficPercent": percent}}}


def promote_patch() -> dict[str, Any]:
    """Without canaryTrafficPercent, KServe rolls the latest ready revision out to 100%."""
    return {"spec": {"predictor": {"canaryTrafficPercent": None}}}


def rollback_patch() -> dict[str, Any]:
    """0% to the canary: KServe pins all traffic to the previously rolled-out revision."""
    return {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `kubectl patch --type merge` sends), on a copy."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def current_traffic(isvc: dict[str, Any]) -> dict[str, Any]:
    """Spec and status of a live InferenceService, as `iwarp deploy kserve` reports them."""
    predictor = isvc.get("spec", {}).get("predictor", {})
    status = isvc.get("status", {}).get("components", {}).get("predictor", {})
    return {
        "storageUri": predictor.get("model", {}).get("storageUri"),
        "canaryTrafficPercent": predictor.get("canaryTrafficPercent"),
        "latestReadyRevision": status.get("latestReadyRevision"),
        "latestRolledoutRevision": status.get("latestRolledoutRevision"),
        "previousRolledoutRevision": status.get("previousRolledoutRevision"),
        "traffic": [
            {k: t.get(k) for k in ("revisionName", "percent", "tag", "latestRevision")}
            for t in status.get("traffic", [])
        ],
        "url": isvc.get("status", {}).get("url"),
    }


# --------------------------------------------------------------------------- S3 model layout


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b'); anything else is a ValueError."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"storage URI must look like s3://bucket/prefix, got {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


def read_mar_manifest(mar: str | Path) -> dict[str, Any]:
    """MAR-INF/MANIFEST.json of a model archive (model name and version live there)."""
    try:
        with zipfile.ZipFile(mar) as zf:
            return json.loads(zf.read("MAR-INF/MANIFEST.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(f"{mar} is not a TorchServe model archive ({exc})") from exc


def render_config_properties(settings: KServeSettings | None = None, gpus: int | None = None) -> str:
    """TorchServe config for the cluster (uploaded as config/config.properties).

    Differs from the local `iwarp serve start` config on purpose: inference listens on all
    interfaces (Knative's queue-proxy forwards to it), token auth is off because the key file
    would only exist inside the pod (authenticate at the gateway), and the management API stays
    disabled on loopback. Per-model settings (batching, workers, timeouts) come from the
    model-config.yaml baked into the .mar by `iwarp serve package`.
    """
    s = settings or KServeSettings()
    lines = [
        "# Written by `iwarp deploy kserve` for the iwarp-torchserve ServingRuntime.",
        "inference_address=http://0.0.0.0:8080",
        "management_address=http://127.0.0.1:8081",
        "metrics_address=http://0.0.0.0:8082",
        "model_store=/mnt/models/model-store",
        f"load_models={s.model_name}={s.mar_name}",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "metrics_mode=prometheus",
        "enable_metrics_api=true",
        f"number_of_gpu={s.gpus if gpus is None else gpus}",
        "max_request_size=67108864",
        "max_response_size=536870912",
        "default_response_timeout=300",
    ]
    return "\n".join(lines) + "\n"


def upload_model_layout(
    mar: str | Path,
    storage_uri: str,
    settings: KServeSettings | None = None,
    s3_client: Any = None,
) -> list[str]:
    """Upload `mar` and a matching config.properties under `storage_uri`; returns the S3 URIs.

    Refuses an archive whose model name differs from the one the InferenceService serves, and
    never overwrites an existing version (a storage URI must keep meaning one model)."""
    s = settings or KServeSettings()
    mar = Path(mar)
    if not mar.is_file():
        raise FileNotFoundError(f"model archive not found: {mar}")
    manifest = read_mar_manifest(mar)
    name = manifest.get("model", {}).get("modelName")
    if name != s.model_name:
        raise ValueError(f"{mar} holds model {name!r}, the InferenceService serves {s.model_name!r}")
    bucket, prefix = parse_s3_uri(storage_uri)
    if s3_client is None:
        import boto3

        s3_client = boto3.client("s3")
    mar_key = "/".join(p for p in (prefix, "model-store", s.mar_name) if p)
    cfg_key = "/".join(p for p in (prefix, "config", "config.properties") if p)
    existing = s3_client.list_objects_v2(Bucket=bucket, Prefix=mar_key, MaxKeys=1)
    if any(obj["Key"] == mar_key for obj in existing.get("Contents", [])):
        raise FileExistsError(f"s3://{bucket}/{mar_key} exists; upload a new version to a new prefix")
    s3_client.upload_file(str(mar), bucket, mar_key)
    s3_client.put_object(Bucket=bucket, Key=cfg_key, Body=render_config_properties(s).encode())
    return [f"s3://{bucket}/{mar_key}", f"s3://{bucket}/{cfg_key}"]
