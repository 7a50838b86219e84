"""Helpers of the data tests (a plain module: test files import it, it imports no test file)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        # stages run `python ...`: make it this interpreter (the project venv)
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def moving_clip(n: int, width: int, height: int, seed: int) -> np.ndarray:
    """A textured background with a bright disc travelling across it: real motion to encode."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            (x * rng.uniform(1, 3) + y * rng.uniform(0, 2)) % 256,
            (x * rng.uniform(0, 2) + y * rng.uniform(1, 3)) % 256,
            np.full_like(x, rng.integers(40, 200)),
        ],
        -1,
    ).astype(np.float32)
    frames = []
    for t in range(n):
        cx, cy = width * (0.2 + 0.6 * t / max(n - 1, 1)), height * (0.5 + 0.2 * np.sin(t))
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < (0.15 * height) ** 2
        frame = base.copy()
        frame[disc] = (250, 240, 30)
        frames.append(frame.astype(np.uint8))
    return np.stack(frames)
