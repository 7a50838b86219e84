"""What the canary step is asked to do, and the pieces both of its targets (TorchServe:
`components.steps.deploy`, KServe: `components.steps.kserve`) share: the serving config, the
held-out canary set and the written verdict."""

import dataclasses
import json
from pathlib import Path
from typing import Any


def serve_config(model_name: str):
    from serving.config import load_serve_config

    return load_serve_config(overrides=[f"model.name={model_name}", f"canary_eval.mlflow_model_name={model_name}"])


@dataclasses.dataclass
class CanaryRequest:
    mar: str
    dataset: str
    model_name: str
    version: str  # MLflow registry version of the candidate
    tracking_uri: str
    target: str  # torchserve | kserve
    serving_workdir: str = ""  # torchserve: the folder `iwarp serve start` runs from
    image_size: int = 64
    max_cases: int = 4
    namespace: str = ""
    storage_uri: str = ""
    s3_endpoint_url: str = ""


def build_canary_set(req: CanaryRequest, out: Path) -> Path:
    """Held-out self-reenactment cases from the test split (the same cases for both versions)."""
    from serving.canary_set import build_from_dataset

    return build_from_dataset(
        req.dataset, out, split="test", k=2, n_driving=8, stride=2, image_size=req.image_size, max_videos=req.max_cases
    )


def write_verdict(path: str, verdict: Any, default: str, endpoint: str) -> None:
    """The verdict as Markdown (KFP artifact; the local run prints it)."""
    d = verdict.to_dict()
    lines = [
        f"**{'PROMOTED' if verdict.promote else 'ROLLED BACK'}**: candidate "
        f"{d['candidate']['version'] if d['candidate'] else '?'} vs "
        f"{d['baseline']['version'] if d['baseline'] else 'none (first deployment)'}",
        "",
    ]
    lines += [f"- [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in d["checks"]]
    lines += ["", f"Default version now: {default}; endpoint: `POST {endpoint}`"]
    Path(path).write_text("\n".join(lines) + "\n")
    Path(path).with_name("verdict.json").write_text(json.dumps(d, indent=2, default=str))
