"""`init_from`: a fresh run (step 0, fresh optimizers) from another checkpoint's weights.

Fine-tuning keeps every tensor whose name and shape both models share. A tensor only the
checkpoint has (the new config dropped that part, e.g. `residual: false`) is skipped, one only the
new model has is freshly initialised; both are reported. A shared name with another shape means
the architecture changed under it: refused, never loaded silently.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from iwarp.config import ConfigError
from iwarp.keypoints import KeypointDetector

REPORT_NAME = "init_from.json"


@dataclass
class InitReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the checkpoint only: not in this config
    new: list[str] = field(default_factory=list)  # in this model only: freshly initialised

    def counts(self) -> str:
        return f"{len(self.loaded)} loaded, {len(self.skipped)} skipped, {len(self.new)} new"


def shape_mismatches(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """`name (checkpoint shape) vs (model shape)` for every tensor both have with other shapes."""
    own = model.state_dict()
    return [
        f"{name} {tuple(state[name].shape)} vs {tuple(t.shape)}"
        for name, t in own.items()
        if name in state and tuple(state[name].shape) != tuple(t.shape)
    ]


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> InitReport:
    """Copy the tensors of `state` that `model` has with the same shape; report the rest.

    Raises ConfigError naming every shared tensor whose shape differs (nothing is loaded then).
    """
    mismatched = shape_mismatches(model, state)
    if mismatched:
        raise ConfigError(
            f"the config changed in a way that breaks compatibility with {source}: "
            f"{'; '.join(mismatched)} (checkpoint vs this config)"
        )
    own = model.state_dict()
    report = InitReport(
        loaded=[n for n in own if n in state],
        skipped=[n for n in state if n not in own],
        new=[n for n in own if n not in state],
    )
    model.load_state_dict({n: state[n] for n in report.loaded}, strict=False)
    return report


def init_from_checkpoint(
    name_or_path: str | Path,
    model_kind: str,
    model: torch.nn.Module,
    disc: torch.nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint's generator (and discriminator, when its shapes fit) into fresh modules;
    returns the JSON-ready report. The checkpoint is verified (`load_checkpoint`)."""
    from iwarp.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(name_or_path)
    ckpt = load_checkpoint(path, map_location)
    if "model" not in ckpt:
        raise CheckpointError(f"{path} holds no generator weights; was it written by `iwarp train`?")
    kind = ckpt.get("model_kind")
    if kind != model_kind:
        raise ConfigError(
            f"init_from {path} holds a {kind!r} model, but this config trains {model_kind!r} "
            "(model.kind): weights only carry over between models of one kind"
        )
    generator = load_matching(model, ckpt["model"], str(path))
    return {
        "checkpoint": str(path),
        "step": ckpt.get("step"),
        "generator": asdict(generator),
        "discriminator": _init_discriminator(disc, ckpt.get("discriminator"), path),
    }


# KeypointConfig fields that change what a detector's weights mean (heatmap_sigma only changes
# how a model renders the keypoints, so it may differ).
_DETECTOR_FIELDS = ("num_keypoints", "downsample", "channels", "temperature")
DETECTOR = "keypoint_detector."


def detector_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """`field theirs vs ours` for each keypoint-config field (as dicts) that changes what a
    detector's weights mean; empty when one detector's weights load into the other."""
    return [f"{f} {theirs.get(f)!r} vs {ours[f]!r}" for f in _DETECTOR_FIELDS if f in theirs and theirs[f] != ours[f]]


def keypoints_from_checkpoint(
    name_or_path: str | Path, model: torch.nn.Module, frozen: bool, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load another checkpoint's keypoint detector (either model kind) into `model`'s. A
    first-order detector's Jacobian head is skipped when `model` has none. The caller freezes."""
    from iwarp.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(name_or_path)
    ckpt = load_checkpoint(path, map_location)
    detector = model.get_submodule("keypoint_detector")
    assert isinstance(detector, KeypointDetector)
    theirs = (ckpt.get("model_config") or {}).get("keypoints", {})
    differ = detector_differences(theirs, asdict(detector.cfg))
    if differ:
        raise ConfigError(f"keypoints_from {path}: its detector differs from this config's: {'; '.join(differ)}")
    state = {n[len(DETECTOR) :]: t for n, t in ckpt.get("model", {}).items() if n.startswith(DETECTOR)}
    if not state:
        raise CheckpointError(f"keypoints_from {path} holds no keypoint detector")
    report = load_matching(detector, state, str(path))
    if report.new:
        raise ConfigError(f"keypoints_from {path} lacks detector weights: {', '.join(report.new)}")
    return {"checkpoint": str(path), "model_kind": ckpt.get("model_kind"), "frozen": frozen, **asdict(report)}


def freeze(module: torch.nn.Module) -> None:
    """No gradients, so the optimizer never updates it (Adam skips parameters without grads)."""
    module.requires_grad_(False)


def _init_discriminator(disc: torch.nn.Module | None, state: dict | None, path: Path) -> dict[str, Any]:
    """A discriminator is disposable: load it only when its shapes fit, else start it fresh."""
    if disc is None:
        return {"status": "unused"}
    if state is None:
        return {"status": "fresh", "reason": "the checkpoint has no discriminator"}
    mismatched = shape_mismatches(disc, state)
    if mismatched:
        return {"status": "fresh", "reason": f"shapes differ: {'; '.join(mismatched)}"}
    return {"status": "loaded", **asdict(load_matching(disc, state, str(path)))}


def describe(report: dict[str, Any]) -> str:
    """One summary line, then the skipped and new tensor names (the loaded ones are in the JSON)."""
    g, d = InitReport(**report["generator"]), report["discriminator"]
    disc = d["status"] + (
        f" ({InitReport(**{k: d[k] for k in ('loaded', 'skipped', 'new')}).counts()})"
        if d["status"] == "loaded"
        else f" ({d['reason']})"
        if "reason" in d
        else ""
    )
    lines = [f"init from {report['checkpoint']} (step {report['step']}): generator {g.counts()}; discriminator {disc}"]
    if g.skipped:
        lines.append(f"  skipped (not in this config): {', '.join(g.skipped)}")
    if g.new:
        lines.append(f"  new (freshly initialised): {', '.join(g.new)}")
    return "\n".join(lines)


def log_params(report: dict[str, Any], requested: str) -> dict[str, Any]:
    """Tracking params (MLflow shows them beside the config); `requested` as the user wrote it."""
    g = report["generator"]
    return {
        "init_from": requested,
        "init_from.checkpoint": report["checkpoint"],
        "init_from.loaded": len(g["loaded"]),
        "init_from.skipped": len(g["skipped"]),
        "init_from.new": len(g["new"]),
        "init_from.discriminator": report["discriminator"]["status"],
    }


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    path = Path(out_dir) / REPORT_NAME
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
