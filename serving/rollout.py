"""Gated canary rollout on a running TorchServe.

    verdict = run_canary("model_store_new/iwarp.mar", workdir=".iwarp/serve", canary_set="canary/")

1. Register the candidate archive as a new version of `iwarp` beside the current default
   (TorchServe keeps the first-registered version as default; nothing reaches users yet).
   With no version serving yet, the candidate is a first deployment: it must answer every
   case without an error (nothing to compare against) to become the default.
2. Send every held-out case to both versions (`POST /predictions/iwarp/<version>`),
   interleaved so machine noise hits both alike, and measure error rate, latency and quality
   (mean L1 and PSNR of the frames against the ground truth). A worker of either version that
   died meanwhile (its pid changed: TorchServe restarted it) vetoes promotion, even when the
   requests queued behind the restart all succeeded: the evidence is incomplete.
3. `serving.canary.decide` -> promote (`set-default`, the old version stays registered for
   `iwarp serve rollback`) or roll back (unregister the candidate).
4. With an MLflow tracking URI, move registry aliases: the candidate's model version is
   `challenger` during the canary, becomes `champion` on promotion; a rolled-back candidate
   loses `challenger`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iwarp.errors import IwarpError
from serving.canary import CanaryVerdict, VersionStats, decide
from serving.config import ServeConfig, load_serve_config
from serving.server import ServerHandle, read_state, write_state


class CanaryError(IwarpError, RuntimeError):
    pass


@dataclass
class _Samples:
    latencies_ms: list[float]
    errors: int
    l1: list[float]
    psnr: list[float]
    messages: list[str]

    def stats(self, version: str) -> VersionStats:
        return VersionStats.from_samples(version, self.latencies_ms, self.errors, {"l1": self.l1, "psnr": self.psnr})


def quality(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean L1 and PSNR (dB) of (T,3,H,W) frames in [0,1]."""
    diff = pred.astype(np.float64) - target.astype(np.float64)
    l1 = float(np.abs(diff).mean())
    mse = float((diff**2).mean())
    return l1, (10 * math.log10(1.0 / mse) if mse > 0 else 100.0)


def predict_crops(client: Any, case: Any, version: str, legacy: set[str]) -> Any:
    """A canary case is frames of a prepared dataset, face crops already: `frame=none`. A version
    packaged before the field existed answers 400 `unknown field` and took every input as a
    crop anyway, so it is asked without the field from then on (`legacy` remembers it)."""
    from serving.client import ServeError

    if version not in legacy:
        try:
            return client.predict(case.sources, case.driving, version=version, frame="none")
        except ServeError as exc:
            if exc.status != 400 or "unknown field `frame`" not in exc.message:
                raise
            legacy.add(version)
    return client.predict(case.sources, case.driving, version=version)


def evaluate_versions(
    client: Any, cases: list, versions: list[str], *, repeats: int = 1, warmup: int = 1, progress: bool = True
) -> dict[str, _Samples]:
    """Send every case to every version; alternate which version goes first per case."""
    from tqdm import tqdm

    samples = {v: _Samples([], 0, [], [], []) for v in versions}
    legacy: set[str] = set()  # versions that predate the `frame` field
    for v in versions:
        for case in cases[:warmup]:
            try:
                predict_crops(client, case, v, legacy)
            except Exception:  # noqa: BLE001 - warm-up failures show up in the timed pass
                pass
    jobs = [(case, r) for r in range(max(1, repeats)) for case in cases]
    bar = tqdm(jobs, desc="canary", unit="case", disable=not progress)
    for i, (case, _) in enumerate(bar):
        order = versions if i % 2 == 0 else list(reversed(versions))
        truth = case.ground_truth()
        for v in order:
            s = samples[v]
            t0 = time.perf_counter()
            try:
                result = predict_crops(client, case, v, legacy)
            except Exception as exc:  # noqa: BLE001 - every failure is an error sample
                s.latencies_ms.append((time.perf_counter() - t0) * 1000)
                s.errors += 1
                s.messages.append(f"{case.name}: {exc}")
                continue
            s.latencies_ms.append(result.latency_ms)
            pred = result.as_float()
            if pred.shape != truth.shape:
                s.errors += 1
                s.messages.append(f"{case.name}: answer shape {pred.shape} != ground truth {truth.shape}")
                continue
            l1, psnr = quality(pred, truth)
            s.l1.append(l1)
            s.psnr.append(psnr)
    return samples


def evaluate_and_decide(
    client: Any,
    cases: list,
    candidate: str,
    baseline: str | None,
    thresholds: Any,
    *,
    repeats: int = 1,
    warmup: int = 1,
    progress: bool = True,
    labels: dict[str, str] | None = None,
) -> tuple[CanaryVerdict, dict[str, _Samples]]:
    """The canary's comparison, whatever serves the versions (TorchServe versions here, KServe
    revisions in components.steps.kserve): send the cases to the candidate and, when one
    serves, the baseline (`client.predict(..., version=...)` routes), then `decide`. With no
    baseline the candidate is a first deployment and must answer every case. `labels` names
    the routing keys in the verdict (KServe routes by revision tag, the verdict names versions)."""
    versions = [baseline, candidate] if baseline else [candidate]
    samples = evaluate_versions(client, cases, versions, repeats=repeats, warmup=warmup, progress=progress)
    name = (labels or {}).get
    verdict = decide(
        samples[baseline].stats(name(baseline, baseline)) if baseline else None,
        samples[candidate].stats(name(candidate, candidate)),
        thresholds,
    )
    return verdict, samples


def store_copy(store: Path, name: str, version: str) -> Path:
    """Where `copy_into_store` puts a candidate archive that is not in the store already."""
    return store / f"{name}-{version}.mar"


def copy_into_store(mar: Path, store: Path, name: str, version: str) -> Path:
    """The archive's path inside the model store (copied there as `<name>-<version>.mar`
    unless it already is there): TorchServe registers archives from its store only."""
    if mar.resolve().parent == store.resolve():
        return mar
    target = store_copy(store, name, version)
    if target.exists():
        raise CanaryError(f"{target} already exists in the model store; remove it or choose another version")
    partial = store / f".{target.name}.partial"
    shutil.copyfile(mar, partial)
    os.replace(partial, target)
    return target


def run_canary(
    mar: str | Path,
    *,
    workdir: str | Path | None = None,
    handle: ServerHandle | None = None,
    canary_set: str | Path | None = None,
    config: ServeConfig | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_model_version: str | None = None,
    progress: bool = True,
    log: Any = print,
) -> CanaryVerdict:
    """Register `mar` beside the default version, evaluate both, then promote or roll back."""
    from serving.canary import with_failed_check, worker_restarts
    from serving.canary_set import load_canary_set
    from serving.package import read_mar

    cfg = config or load_serve_config()
    name = cfg.model.name
    handle = handle or ServerHandle.load(workdir or cfg.server.workdir)
    if not handle.alive():
        raise CanaryError(f"TorchServe from {handle.workdir} is not running; `iwarp serve start` first")
    client = handle.client(timeout=cfg.canary_eval.timeout_s)
    mar = Path(mar)
    info = read_mar(mar)
    candidate = info["version"]
    baseline = client.default_version(name)
    store = Path(handle.model_store)
    kept = (read_state(store) or {}).get("versions", {})
    registered = client.versions(name)
    if candidate in registered and candidate != baseline and candidate not in kept:
        # registered, never promoted nor recorded: a canary killed mid-evaluation left it
        log(f"canary: removing {name} {candidate}, left half-evaluated by an interrupted canary")
        client.unregister_model(candidate, name)
        left = store_copy(store, name, candidate)
        if left.resolve() != mar.resolve():
            left.unlink(missing_ok=True)  # its copy in the store, which copy_into_store would refuse
    elif candidate in registered:
        raise CanaryError(
            f"version {candidate} of {name!r} is already registered; package the candidate with a new --version"
        )
    set_path = canary_set or cfg.canary_eval.canary_set
    if not set_path:
        raise CanaryError("no canary set: pass --canary-set DIR (build one with `iwarp serve canary-set`)")
    cases = load_canary_set(set_path, cfg.canary_eval.max_cases)

    tracking_uri = mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    mlflow_version = mlflow_model_version or info["export"].get("mlflow_model_version")
    registry = None
    if tracking_uri:
        from iwarp import plugins

        # MLflow alias moves come from components/ (entry point), never imported by serving/.
        registry = plugins.load(plugins.MODEL_REGISTRIES, "mlflow")(
            tracking_uri, cfg.canary_eval.mlflow_model_name, mlflow_version, log=log
        )
        registry.mark_challenger()

    target = copy_into_store(mar, store, name, candidate)
    log(
        f"canary: registering {name} {candidate} ({target.name}) "
        + (f"beside default {baseline}" if baseline else "(first version)")
    )
    client.register_model(target.name, name, workers=cfg.model.workers)
    try:
        versions = [baseline, candidate] if baseline else [candidate]
        pids = client.worker_pids(name)
        log(f"canary: {len(cases)} held-out case(s) x {cfg.canary_eval.repeats} to {' and '.join(versions)}")
        verdict, samples = evaluate_and_decide(
            client,
            cases,
            candidate,
            baseline,
            cfg.canary,
            repeats=cfg.canary_eval.repeats,
            warmup=cfg.canary_eval.warmup,
            progress=progress,
        )
        restarts = worker_restarts(pids, client.worker_pids(name), versions)
        if restarts.passed:
            verdict.checks.append(restarts)
        else:
            verdict = with_failed_check(verdict, restarts)
    except BaseException:
        client.unregister_model(candidate, name)  # never leave a half-evaluated candidate behind
        raise

    state = read_state(store) or {"model_name": name, "default": baseline, "versions": {}}
    state.setdefault("versions", {})
    if verdict.promote:
        client.set_default(name, candidate)
        state["versions"][candidate] = target.name
        if baseline:
            state["history"] = [*state.get("history", []), baseline]
        state["default"] = candidate
    else:
        client.unregister_model(candidate, name)
        if target != mar:
            target.unlink(missing_ok=True)  # our copy; the candidate's own file stays where it was
    write_state(store, state)
    if registry is not None:
        registry.finish(verdict)

    errors = samples[candidate].messages[:5]
    report = {**verdict.to_dict(), "candidate_errors": errors, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(handle.workdir) / "canary" / f"{candidate}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    log(verdict.summary())
    if errors:
        log("  candidate errors: " + "; ".join(errors))
    log(f"  default is now {client.default_version(name)}; report: {out}")
    return verdict


def rollback(workdir: str | Path | None = None, to: str | None = None, config: ServeConfig | None = None) -> str:
    """Make an earlier version the default again (the previous default unless `to` is given)."""
    cfg = config or load_serve_config()
    name = cfg.model.name
    handle = ServerHandle.load(workdir or cfg.server.workdir)
    client = handle.client()
    store = Path(handle.model_store)
    state = read_state(store) or {}
    history = list(state.get("history", []))
    target = to or (history[-1] if history else None)
    if target is None:
        raise CanaryError("no earlier default version recorded; pass --to VERSION")
    if target not in client.versions(name):
        raise CanaryError(f"version {target} is not registered (registered: {client.versions(name)})")
    client.set_default(name, target)
    if state:
        if history and history[-1] == target:
            history.pop()
        state.update(default=target, history=history)
        write_state(store, state)
    return target
