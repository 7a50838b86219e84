"""Held-out canary set: the fixed requests a candidate version must answer as well as the
current default.

Layout (self-reenactment, the paper's protocol: sources and driving frames come from the same
held-out video, so the driving frames are also the ground truth):

    canary_set/
      case_000/source_0.png ... source_{k-1}.png  driving_0.png ... driving_{T-1}.png
      case_001/...

`build_from_dataset` cuts one case per test-split video of a prepared dataset
(`iwarp.data.VideoDataset`: first k frames are the sources, the next frames the driving ones).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iwarp.errors import InputError

_NUM = re.compile(r"_(\d+)\.png$")


class CanarySetError(InputError, ValueError):
    pass


@dataclass
class CanaryCase:
    name: str
    sources: list[np.ndarray]  # uint8 HxWx3
    driving: list[np.ndarray]  # uint8 HxWx3; also the ground truth

    def ground_truth(self) -> np.ndarray:
        """(T,3,H,W) float in [0,1]."""
        return np.stack(self.driving).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def _sorted(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda p: int(_NUM.search(p.name).group(1)) if _NUM.search(p.name) else 0)


def load_canary_set(root: str | Path, max_cases: int = 0) -> list[CanaryCase]:
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise CanarySetError(f"canary set {root} is not a folder (build one with `iwarp serve canary-set`)")
    cases = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        sources = _sorted(list(case_dir.glob("source_*.png")))
        driving = _sorted(list(case_dir.glob("driving_*.png")))
        if not sources or not driving:
            raise CanarySetError(f"{case_dir}: needs source_*.png and driving_*.png files")
        read = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
        cases.append(CanaryCase(case_dir.name, [read(p) for p in sources], [read(p) for p in driving]))
        if max_cases and len(cases) >= max_cases:
            break
    if not cases:
        raise CanarySetError(f"canary set {root} has no case folders")
    return cases


def write_canary_set(cases: list[CanaryCase], root: str | Path) -> Path:
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for case in cases:
        d = root / case.name
        d.mkdir(exist_ok=True)
        for i, img in enumerate(case.sources):
            Image.fromarray(img).save(d / f"source_{i}.png")
        for i, img in enumerate(case.driving):
            Image.fromarray(img).save(d / f"driving_{i}.png")
    return root


def build_from_dataset(
    data_root: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    k: int = 2,
    n_driving: int = 8,
    stride: int = 2,
    image_size: int = 64,
    max_videos: int = 0,
) -> Path:
    """One case per video of `split`: frames 0..k-1 as sources, then `n_driving` frames
    every `stride` frames as driving frames / ground truth."""
    from iwarp.data import VideoDataset, reconstruction_pairs

    ds = VideoDataset(data_root, split=split, image_size=image_size)
    cases = []
    n = len(ds) if not max_videos else min(max_videos, len(ds))
    for i in range(n):
        pair = reconstruction_pairs(ds, i, k, stride=stride, max_driving=n_driving)
        to_u8 = lambda t: (t.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
        cases.append(
            CanaryCase(f"case_{i:03d}_{ds.videos[i].id}", list(to_u8(pair["sources"])), list(to_u8(pair["driving"])))
        )
    return write_canary_set(cases, out)
