"""Training-time augmentation of one (k sources + driving) item, the same for all its frames.

With a handful of real identities, every extra look of a face helps the model learn to warp
instead of memorising faces: a mirrored face, other lighting and colour, another framing. The
draw is shared by the k + 1 frames of an item, so the motion between them stays real (only a
photometric or geometric change that the whole item shares), and it comes from the caller's
generator, so batches stay a pure function of (seed, step, rank) and resume stays exact.
"""

from __future__ import annotations

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


def augment_item(frames: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """frames (n, 3, S, S) float in [0, 1] -> the same frames, one shared random augmentation."""
    if cfg.flip and rng.random() < 0.5:
        frames = frames.flip(-1)
    if cfg.crop > 0:
        frames = _zoom(frames, 1.0 - cfg.crop * rng.random(), rng.random(), rng.random())
    if cfg.color > 0:
        b, c, s = (1.0 + cfg.color * rng.uniform(-1, 1, 3)).tolist()
        grey = frames.mean(1, keepdim=True)
        frames = grey + (frames - grey) * s  # saturation
        frames = (frames - frames.mean((1, 2, 3), keepdim=True)) * c + frames.mean((1, 2, 3), keepdim=True)  # contrast
        frames = (frames * b).clamp(0, 1)  # brightness
    return frames.contiguous()


def _zoom(frames: torch.Tensor, side: float, u: float, v: float) -> torch.Tensor:
    """Crop a square of `side` x the frame (position u, v in [0, 1]) and scale it back up."""
    s = frames.shape[-1]
    crop = max(2, int(round(s * side)))
    x0, y0 = int(round(u * (s - crop))), int(round(v * (s - crop)))
    patch = frames[..., y0 : y0 + crop, x0 : x0 + crop]
    return F.interpolate(patch, size=(s, s), mode="bilinear", align_corners=False)
