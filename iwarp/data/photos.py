"""Real photos animated with smooth random motion: extra evaluation data with real texture.

No real face video ships in any installable package, but scikit-image bundles public-domain
photos. Each photo becomes clips whose frames are the photo under a smooth random affine motion
(rotation, zoom, translation) plus a smooth non-rigid warp (a sum of Gaussian radial bumps, a
thin-plate-like deformation). Deterministic from the seed.

    astronaut  Eileen Collins, NASA portrait (a real human face, frontal)
    camera     "cameraman" (a real person in profile, greyscale)
    chelsea    a cat's face
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

from .manifest import assign_splits, write_manifest
from .options import opt
from .synth import _prepare_out, _trajectory, write_entry
from .video import OUTPUT_FORMATS, OutputFormat

# photo -> (centre x, centre y, half side) of the square around the face, in source pixels
PHOTOS = {
    "astronaut": (220, 125, 100),
    "camera": (215, 140, 95),
    "chelsea": (225, 150, 140),
}
PhotoSplit = Literal["test", "train", "auto"]  # auto: whole photos split by test_fraction


@dataclass
class PhotoConfig:
    photos: list[str] = opt(None, "scikit-image photos to animate", list(PHOTOS), factory=lambda: list(PHOTOS))
    videos_per_photo: int = opt(2, "clips per photo (each with its own motion)")
    num_frames: int = opt(48, "frames per clip")
    image_size: int = opt(64, "frame side in pixels")
    fps: float = opt(25.0, "frame rate recorded")
    motion: float = opt(1.0, "scales every motion amplitude")
    split: PhotoSplit = opt("test", "where the clips go: test, train, or auto (whole photos split by --test-fraction)")
    test_fraction: float = opt(0.34, "share of photos in test/ with --split auto")
    seed: int = opt(0, "motion seed")
    format: OutputFormat = opt("png", "png/jpg frame folders or mp4 files")


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 photo from scikit-image's bundled data (no download)."""
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {sorted(PHOTOS)}")
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return np.ascontiguousarray(image[..., :3])


def animate_photo(
    image: np.ndarray,
    centre: tuple[float, float],
    half: float,
    num_frames: int,
    image_size: int,
    seed: int,
    motion: float = 1.0,
) -> np.ndarray:
    """(T, S, S, 3) uint8 clip of `image` around `centre` (x, y) +- `half` under smooth motion."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng([seed, 3])
    s = image_size
    # Work on a copy resampled so one output pixel ~ one working pixel (no aliasing), with a
    # margin so moving never samples outside the photo.
    margin = 1.6
    scale = s / (2 * half)
    pad = int(np.ceil(margin * half))  # mirror the photo so the margin never leaves it
    image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    cx, cy = centre[0] + pad, centre[1] + pad
    box = (cx - margin * half, cy - margin * half, cx + margin * half, cy + margin * half)
    side = int(round(2 * margin * half * scale))
    work = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.LANCZOS, box=box), np.float32)
    centre_w = (side - 1) / 2.0

    n = num_frames
    angle = _trajectory(rng, n, 0.15 * motion)
    zoom = 1.0 + _trajectory(rng, n, 0.08 * motion)
    shift = np.stack([_trajectory(rng, n, 0.08 * motion), _trajectory(rng, n, 0.06 * motion)], -1)
    bumps = 6
    centres = rng.uniform(-0.7, 0.7, (bumps, 2)).astype(np.float32)
    sigmas = rng.uniform(0.25, 0.5, bumps).astype(np.float32)
    amps = np.stack(
        [np.stack([_trajectory(rng, n, 0.05 * motion) for _ in range(2)], -1) for _ in range(bumps)], 1
    )  # (T, bumps, 2)

    g = (np.arange(s, dtype=np.float32) + 0.5) / s * 2 - 1
    x, y = np.meshgrid(g, g)
    weights = np.exp(
        -((x[..., None] - centres[:, 0]) ** 2 + (y[..., None] - centres[:, 1]) ** 2) / (2 * sigmas**2)
    )  # (S, S, bumps)
    frames = np.empty((n, s, s, 3), np.uint8)
    for t in range(n):
        c, si = np.cos(angle[t]) / zoom[t], np.sin(angle[t]) / zoom[t]
        u = c * x - si * y + shift[t, 0] + weights @ amps[t, :, 0]
        v = si * x + c * y + shift[t, 1] + weights @ amps[t, :, 1]
        coords = [centre_w + v * s / 2, centre_w + u * s / 2]  # (row, col) in the working image
        for ch in range(3):
            out = map_coordinates(work[..., ch], coords, order=1, mode="reflect")
            frames[t, ..., ch] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return frames


def make_photo_dataset(out: str | Path, cfg: PhotoConfig, overwrite: bool = False, progress: bool = True):
    """Write the animated photos in the dataset layout (+ manifest.csv); returns the manifest."""
    import pandas as pd
    from tqdm import tqdm

    if cfg.format not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {cfg.format!r}")
    if cfg.split not in get_args(PhotoSplit):
        raise ValueError(f"split must be train, test or auto, got {cfg.split!r}")
    unknown = sorted(set(cfg.photos) - set(PHOTOS))
    if unknown or not cfg.photos:
        raise ValueError(f"unknown photo(s) {unknown}; choose from {sorted(PHOTOS)}")
    out = Path(out)
    _prepare_out(out, overwrite)
    splits = (
        assign_splits(cfg.photos, cfg.test_fraction, cfg.seed)
        if cfg.split == "auto"
        else {p: cfg.split for p in cfg.photos}
    )
    rows = []
    jobs = [(i, name, v) for i, name in enumerate(cfg.photos) for v in range(cfg.videos_per_photo)]
    for i, name, v in tqdm(jobs, desc="photos", unit="video", disable=not progress):
        cx, cy, half = PHOTOS[name]
        frames = animate_photo(
            load_photo(name),
            (cx, cy),
            half,
            cfg.num_frames,
            cfg.image_size,
            seed=cfg.seed * 1000 + i * 100 + v,
            motion=cfg.motion,
        )
        vid, split = f"{name}_v{v:02d}", splits[name]
        rel = write_entry(out / split, vid, frames, cfg.format, cfg.fps).relative_to(out)
        rows.append(
            {
                "id": vid,
                "identity": name,
                "split": split,
                "status": "ok",
                "path": str(rel),
                "source": f"skimage.data.{name}:seed={cfg.seed}:video={v}",
                "format": cfg.format,
                "num_frames": cfg.num_frames,
                "width": cfg.image_size,
                "height": cfg.image_size,
                "fps": cfg.fps,
                "duration_s": cfg.num_frames / cfg.fps,
            }
        )
    df = pd.DataFrame(rows)
    write_manifest(df, out / "manifest.csv")
    return df
