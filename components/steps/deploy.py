"""Serving steps: package the chosen checkpoint as a `.mar` (`serving.package`), then roll it
out on TorchServe through `serving.rollout.run_canary` against a canary set cut from the
dataset's held-out split (`serving.canary_set`). Registry aliases move with the verdict
(`components.steps.registry`): `champion` only on a pass."""

import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.steps.canary_request import CanaryRequest, build_canary_set, serve_config, write_verdict


def torchserve_version(registry_version: str) -> str:
    """TorchServe version of MLflow registry version N: `N.0` (so the two always line up)."""
    return f"{int(registry_version)}.0"


def package_mar(checkpoint: str, model_name: str, registry_version: str, mar_path: str) -> dict[str, Any]:
    from serving.package import package, read_mar

    with tempfile.TemporaryDirectory(prefix="iwarp-mar-") as tmp:
        built = package(
            checkpoint,
            torchserve_version(registry_version),
            tmp,
            config=serve_config(model_name),
            archive_name=model_name,
            metadata={"mlflow_model_version": str(registry_version)},
        )
        shutil.copyfile(built, mar_path)
    info = read_mar(mar_path)
    print(
        f"[package] {model_name}.mar version {info['version']} ({Path(mar_path).stat().st_size / 1e6:.1f} MB)",
        flush=True,
    )
    return info


def run_canary_step(req: CanaryRequest, verdict_path: str) -> tuple[bool, str, str]:
    """Returns (promoted, default TorchServe version, endpoint URL serving the champion)."""
    if req.target == "torchserve":
        return canary_on_torchserve(req, verdict_path)
    if req.target == "kserve":
        from components.steps.kserve import canary_on_kserve

        return canary_on_kserve(req, verdict_path)
    raise ValueError(f"serving_target must be 'torchserve' or 'kserve', got {req.target!r}")


def canary_on_torchserve(req: CanaryRequest, verdict_path: str) -> tuple[bool, str, str]:
    """`serving.rollout.run_canary` against the held-out split: a first deployment on an empty
    server, or the candidate beside the serving champion."""
    from serving.canary import evidence_repeats
    from serving.canary_set import load_canary_set
    from serving.rollout import run_canary
    from serving.server import ServerHandle

    cfg = serve_config(req.model_name)
    if not req.serving_workdir:
        raise ValueError("serving_target=torchserve needs serving_workdir (the folder TorchServe was started from)")
    handle = ServerHandle.load(req.serving_workdir)
    if not handle.alive():
        raise RuntimeError(f"TorchServe from {req.serving_workdir} is not running (`iwarp serve start` it first)")
    client = handle.client(timeout=cfg.canary_eval.timeout_s)
    endpoint = f"{handle.inference_url}/predictions/{req.model_name}"
    with tempfile.TemporaryDirectory(prefix="iwarp-canary-") as tmp:
        cases_dir = build_canary_set(req, Path(tmp) / "canary-set")
        n_cases = len(load_canary_set(cases_dir, cfg.canary_eval.max_cases))
        # A small test split gives few cases: send each often enough that both versions reach
        # the evidence threshold (min_requests) instead of failing on too little data.
        cfg.canary_eval.repeats = evidence_repeats(n_cases, cfg.canary_eval.repeats, cfg.canary)
        print(
            f"[canary] {n_cases} held-out case(s) from the test split, each sent {cfg.canary_eval.repeats}x "
            "to both versions",
            flush=True,
        )
        verdict = run_canary(
            req.mar,
            handle=handle,
            canary_set=cases_dir,
            config=cfg,
            mlflow_tracking_uri=req.tracking_uri,
            mlflow_model_version=req.version,
        )
    default = client.default_version(req.model_name) or ""
    write_verdict(verdict_path, verdict, default, endpoint)
    return verdict.promote, default, endpoint
