"""Training state that makes a resumed run continue exactly where the killed one stopped.

RNG states are stored as tensors, ints and lists so checkpoints load with
`torch.load(weights_only=True)`; dropout and the equivariance transforms draw from them.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

CHECKPOINT_PATTERN = "step-*.ckpt"
FINAL_NAME = "final.ckpt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.ckpt"


def seed_everything(seed: int, rank: int = 0) -> None:
    """Distinct, reproducible streams per rank (ranks see different data and dropout masks)."""
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def capture_rng(device: torch.device) -> dict[str, Any]:
    # legacy=True is the default: the MT19937 tuple (numpy's stubs type the plain call as a dict)
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    name, keys, pos, has_gauss, cached = legacy
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def param_digest(*modules: torch.nn.Module | None) -> str:
    """SHA-256 over the parameters, in order: equal on every rank while DDP keeps them in sync."""
    h = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, p in module.named_parameters():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def prune_checkpoints(directory: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints."""
    files = sorted(
        directory.glob(CHECKPOINT_PATTERN), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or 0)
    )
    for old in files[:-keep_last]:
        old.unlink(missing_ok=True)


def remove_stale_temp_files(directory: Path) -> None:
    """Temp files of a save that a kill interrupted (the rename never happened)."""
    for tmp in directory.glob(".*.ckpt.*.tmp"):
        tmp.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """`final.ckpt` as a hard link to the last step file (no second copy of big weights)."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        tmp.hardlink_to(src)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    tmp.replace(dst)
