"""68-point face landmarks, computed once per frame in preprocessing and kept beside each clip.

Training's landmark guidance (`model.implicit.keypoints.guidance: landmarks`) pulls some learned
keypoints toward groups of these landmarks; the keypoint detector still runs at inference (users
give photos and video, not landmarks). The detector is dlib's (the one the AKD metric uses):
the HOG face detector on every `detect_every`-th frame, the shape predictor on every frame from
the last box found (faces move little between frames; the detector is ~20x the predictor's cost).

Sidecar: `<clip folder>/landmarks.npy` (or `<video>.landmarks.npy`), float32 (n, 68, 2), x then
y in [-1, 1] (pixel centres, as `iwarp.keypoints.coordinate_grid`), NaN where no face was found.
The manifest gets `landmark_coverage` (share of frames with landmarks) and `landmark_detector`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .options import opt

SIDECAR = "landmarks.npy"
NUM_LANDMARKS = 68
# Landmark groups the guided keypoints are pulled to (dlib's 68-point indices): eyelids and lips
# say how open the eyes and mouth are, which the sources differ in and the queries must see.
# "a"/"b" are the image's left/right side; a mirror swaps them (FLIP_GROUPS).
GUIDE_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("eye_a_upper", (37, 38)),
    ("eye_a_lower", (40, 41)),
    ("eye_b_upper", (43, 44)),
    ("eye_b_lower", (46, 47)),
    ("lip_upper", (61, 62, 63)),
    ("lip_lower", (65, 66, 67)),
    ("mouth_a", (48, 60)),
    ("mouth_b", (54, 64)),
)
FLIP_GROUPS = (2, 3, 0, 1, 4, 5, 7, 6)  # group i of a mirrored face is group FLIP_GROUPS[i] of the original


@dataclass
class LandmarkConfig:
    detect_every: int = opt(8, "run the face detector on every n-th frame (the shape predictor on all)")
    detect_size: int = opt(128, "frames are upscaled to at least this side for dlib's detector")


@functools.cache
def detector_version() -> str:
    """What computed the sidecars (recorded in the manifest)."""
    import dlib

    return f"dlib {dlib.__version__} HOG + shape_predictor_68_face_landmarks"


def sidecar_path(clip: Path) -> Path:
    return clip / SIDECAR if clip.is_dir() else clip.with_name(clip.stem + "." + SIDECAR)


@functools.cache
def _finder(detect_size: int):
    """One dlib detector + shape predictor per process: the predictor's file is ~100 MB, too
    much to load again for every clip."""
    from iwarp.metrics import FaceLandmarks

    return FaceLandmarks(detect_size=detect_size)


def track_landmarks(frames: np.ndarray, cfg: LandmarkConfig) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, 68, 2) float32 in [-1, 1], NaN rows where no face."""
    finder = _finder(cfg.detect_size)
    out = np.full((len(frames), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
    face = None
    for i, frame in enumerate(frames):
        if i % cfg.detect_every == 0:
            face = None  # detect again: the face may have moved or gone
        points, face = finder.detect(frame, face)
        if points is not None:
            h, w = frame.shape[:2]
            out[i] = (points + 0.5) / np.array([w, h]) * 2 - 1
    return out


def coverage(landmarks: np.ndarray) -> float:
    return float(np.isfinite(landmarks).all(axis=(1, 2)).mean()) if len(landmarks) else 0.0


def load_landmarks(clip: Path) -> np.ndarray | None:
    """The clip's sidecar (n, 68, 2), or None when it has none."""
    path = sidecar_path(clip)
    return np.load(path) if path.exists() else None


def group_targets(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., len(GUIDE_GROUPS), 2): the mean of each group (NaN where missing)."""
    return np.stack([landmarks[..., list(idx), :].mean(-2) for _, idx in GUIDE_GROUPS], axis=-2)


def write_sidecars(root: Path, cfg: LandmarkConfig | None = None, progress: bool = True) -> dict[str, float]:
    """Landmarks for every real clip of a dataset (synthetic heads have no human landmarks) and the
    manifest's `landmark_coverage` / `landmark_detector` columns; returns {clip id: coverage}."""
    from tqdm import tqdm

    from .manifest import read_manifest, write_manifest
    from .video import read_video

    cfg = cfg or LandmarkConfig()
    path = root / "manifest.csv"
    df = read_manifest(path)
    real = (df["status"] == "ok") & (df.get("origin", "video") != "synth")
    found: dict[str, float] = {}
    for i in tqdm(np.flatnonzero(real.to_numpy()), desc=f"landmarks {root.name}", unit="clip", disable=not progress):
        clip = root / str(df.at[i, "path"])
        marks = track_landmarks(read_video(clip), cfg)
        np.save(sidecar_path(clip), marks)
        found[str(df.at[i, "id"])] = coverage(marks)
    df["landmark_coverage"] = [found.get(str(v), np.nan) for v in df["id"]]
    df["landmark_detector"] = [detector_version() if str(v) in found else "" for v in df["id"]]
    write_manifest(df, path)
    return found
