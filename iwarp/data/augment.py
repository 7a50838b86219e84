"""Training-time augmentation of one (k sources + driving) item, the same for all its frames.

With a handful of real identities, every extra look of a face helps the model learn to warp
instead of memorising faces: a mirrored face, other lighting and colour, another framing. The
draw is shared by the k + 1 frames of an item, so the motion between them stays real (only a
photometric or geometric change that the whole item shares), and it comes from the caller's
generator, so batches stay a pure function of (seed, step, rank) and resume stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    flip: bool = False  # mirror left-right with probability 1/2
    color: float = 0.0  # brightness/contrast/saturation jitter amplitude (0.1 = +-10%), hue not touched
    crop: float = 0.0  # zoom in by up to this fraction (0.1: crop 90-100% of the side), random position

    @property
    def enabled(self) -> bool:
        return self.flip or self.color > 0 or self.crop > 0


@dataclass(frozen=True)
class Draw:
    """One item's random augmentation, drawn once and applied to its frames and its landmarks."""

    flip: bool = False
    zoom: tuple[float, float, float] | None = None  # (side, u, v), see `_zoom_box`
    color: tuple[float, float, float] | None = None  # brightness, contrast, saturation factors


def draw(cfg: AugmentConfig, rng: np.random.Generator) -> Draw:
    # the draw order is part of the data stream (exact resume): flip, zoom, colour
    flip = bool(cfg.flip and rng.random() < 0.5)
    zoom = (1.0 - cfg.crop * rng.random(), rng.random(), rng.random()) if cfg.crop > 0 else None
    color = tuple((1.0 + cfg.color * rng.uniform(-1, 1, 3)).tolist()) if cfg.color > 0 else None
    return Draw(flip, zoom, color)  # type: ignore[arg-type]


def augment_item(frames: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """frames (n, 3, S, S) float in [0, 1] -> the same frames, one shared random augmentation."""
    return apply_frames(frames, draw(cfg, rng))


def apply_frames(frames: torch.Tensor, d: Draw) -> torch.Tensor:
    if d.flip:
        frames = frames.flip(-1)
    if d.zoom is not None:
        s = frames.shape[-1]
        crop, x0, y0 = _zoom_box(s, *d.zoom)
        patch = frames[..., y0 : y0 + crop, x0 : x0 + crop]
        frames = F.interpolate(patch, size=(s, s), mode="bilinear", align_corners=False)
    if d.color is not None:
        b, c, sat = d.color
        grey = frames.mean(1, keepdim=True)
        frames = grey + (frames - grey) * sat  # saturation
        frames = (frames - frames.mean((1, 2, 3), keepdim=True)) * c + frames.mean((1, 2, 3), keepdim=True)  # contrast
        frames = (frames * b).clamp(0, 1)  # brightness
    return frames.contiguous()


def apply_points(points: np.ndarray, d: Draw, size: int, flip_order: Sequence[int] | None = None) -> np.ndarray:
    """Points (..., P, 2), x then y in [-1, 1] (pixel centres) of frames of side `size` -> where
    they are in the augmented frames. A mirror also reorders them by `flip_order` (a left eye
    becomes a right eye)."""
    out = points.astype(np.float32, copy=True)
    if d.flip:
        out[..., 0] = -out[..., 0]
        if flip_order is not None:
            out = out[..., list(flip_order), :]
    if d.zoom is not None:
        crop, x0, y0 = _zoom_box(size, *d.zoom)
        pix = (out + 1) / 2 * size - np.array([x0, y0], np.float32)  # pixel-centre coordinates + 0.5
        out = (pix / crop * 2 - 1).astype(np.float32)
    return out


def _zoom_box(s: int, side: float, u: float, v: float) -> tuple[int, int, int]:
    """The square (crop side, x0, y0) that a zoom of `side` x the frame at position u, v in
    [0, 1] cuts out (and scales back up)."""
    crop = max(2, int(round(s * side)))
    return crop, int(round(u * (s - crop))), int(round(v * (s - crop)))
