"""Helpers of the tests that train (tests/model/test_train_*.py, tests/integration); not a test module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
# Mechanics tests swap the VGG perceptual pyramid (~1 s/step on this CPU) for pixel L1; the GAN
# (discriminator, spectral norm), equivariance (random TPS) and attention dropout stay on, so
# every RNG consumer and both optimisers take part.
CHEAP_LOSSES = ["loss.perceptual=0", "loss.reconstruction=1", "loss.feature_matching=0", "loss.gan=0.1"]


def make_synth(
    root: Path, identities: int = 4, videos: int = 2, frames: int = 16, size: int = 64, seed: int = 0
) -> Path:
    """A small procedural dataset (train/ + test/, identity-safe split) from `iwarp.data`."""
    from iwarp.data.synth import SynthConfig, make_synth_dataset

    cfg = SynthConfig(
        num_identities=identities,
        videos_per_identity=videos,
        num_frames=frames,
        image_size=size,
        seed=seed,
        test_fraction=0.25,
    )
    make_synth_dataset(root, cfg, overwrite=True)
    return root


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [e.get("PYTHONPATH")])])
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(extra)
    return e


def iwarp_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "app", *map(str, args)]  # the `iwarp` console script


def run_iwarp(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(iwarp_cmd(*args), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"iwarp {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def train_args(data: Path, out_dir: Path, *overrides: str, cheap: bool = True) -> list[str]:
    sets = [
        f"data.root={data}",
        f"out_dir={out_dir}",
        "logging.progress=false",
        *(CHEAP_LOSSES if cheap else []),
        *overrides,
    ]
    return ["train", "--config", str(TINY), "--set", *sets]


def assert_same(a, b, path: str = "") -> None:
    """Bit-identical nested checkpoint content (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"tensors differ at {path}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"keys differ at {path}: {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {path}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
