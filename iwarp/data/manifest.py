"""The dataset manifest: one row per input video with its facts (CSV, or Parquet by extension).

Rows whose `status` is not "ok" are videos that `prepare` skipped; they stay in the manifest with
a `reason` so nothing vanishes silently, and the dataset loader ignores them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")

# Column order of the manifest `prepare` writes (synth/photos write the first block only).
COLUMNS = [
    "id",
    "identity",
    "split",
    "status",
    "reason",
    "path",
    "source",
    "format",
    "num_frames",
    "width",
    "height",
    "fps",
    "duration_s",
    "content_hash",
    "brightness_mean",
    "contrast_mean",
    "blur_score",
    "motion_mean",
    "face_rate",
    "faceless_frames",
    "split_by",
    "src_width",
    "src_height",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
]
REQUIRED_COLUMNS = ["id", "identity", "split", "num_frames", "width", "height", "fps"]
SPLITS = ("train", "test")


def find_manifest(root: str | Path) -> Path | None:
    for name in MANIFEST_NAMES:
        path = Path(root) / name
        if path.is_file():
            return path
    return None


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest file, or the manifest inside a dataset root."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        found = find_manifest(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no {' or '.join(MANIFEST_NAMES)}")
        path = found
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        # ids like "0001" must stay strings
        df = pd.read_csv(path, dtype={"id": str, "identity": str, "split": str, "reason": str})
    missing = [c for c in ("id",) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {missing}")
    if "status" not in df.columns:
        df["status"] = "ok"
    df["status"] = df["status"].fillna("ok")
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a killed run never leaves half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    df = df[ordered]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def identity_leaks(df: pd.DataFrame) -> dict[str, list[str]]:
    """Identities present in more than one split -> their splits (empty when the split is safe).

    Rows whose `split_by` is "clip" were split by clip on purpose (a personal target: new clips
    of a person trained on, e.g. from an identities CSV's split column) and are no leak."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if "split_by" in ok.columns:
        ok = ok[ok["split_by"] != "clip"]
    splits = ok.groupby("identity")["split"].agg(lambda s: sorted(set(s)))
    return {str(k): v for k, v in splits.items() if len(v) > 1}


def assign_splits(identities, test_fraction: float, seed: int = 0) -> dict[str, str]:
    """Identity -> "train"/"test". Whole identities go to one split, so no person is in both.

    Deterministic from (set of identities, seed). With two or more identities and a fraction
    above 0, each split gets at least one identity.
    """
    import numpy as np

    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ids = sorted({str(i) for i in identities})
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = int(round(test_fraction * len(ids)))
    if test_fraction > 0 and len(ids) >= 2:
        n_test = min(max(n_test, 1), len(ids) - 1)
    test = {ids[i] for i in order[:n_test]}
    return {i: ("test" if i in test else "train") for i in ids}
