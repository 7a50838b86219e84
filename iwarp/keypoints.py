"""Unsupervised keypoints with a per-keypoint strength, and their Gaussian heatmaps.

The detector is an hourglass on a downscaled image (motion needs coarse structure, not
texture, and this keeps the per-frame cost low). Each keypoint is the soft-argmax of one
heatmap channel; its strength in (0, 1) is a second map pooled under that heatmap, so a
keypoint that is not visible can switch itself off in the representation.

The FOMM baseline's detector also predicts a 2x2 Jacobian per keypoint (first-order motion:
the local affine shape of the motion around it), pooled under the same heatmap. Implicit
warping ignores Jacobians: its heatmaps are isotropic Gaussians, as in the paper, and the
attention learns local deformation from K and Q itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from iwarp.blocks import UNet


class Keypoints(NamedTuple):
    """xy: (..., N, 2) in [-1, 1] (x right, y down, `grid_sample` convention with
    align_corners=False); strength: (..., N) in (0, 1); jacobian: (..., N, 2, 2) d(xy)/d(local
    offset) for first-order detectors, None for zeroth-order ones."""

    xy: torch.Tensor
    strength: torch.Tensor
    jacobian: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Keypoints:
        """Apply `fn` to every tensor field (e.g. slicing, flattening batch dims)."""
        return Keypoints(fn(self.xy), fn(self.strength), None if self.jacobian is None else fn(self.jacobian))


KeypointGuidance = Literal["none", "landmarks"]


@dataclass
class KeypointConfig:
    num_keypoints: int = 10
    downsample: int = 4  # the detector sees the image at 1/downsample of its size
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    temperature: float = 0.1  # softmax temperature of the soft-argmax
    heatmap_sigma: float = 0.1  # std of the rendered Gaussians, in [-1, 1] units
    # "landmarks": training pulls the first len(GUIDE_GROUPS) keypoints toward landmark groups
    # precomputed beside the clips (iwarp/data/landmarks.py); inference still detects them
    guidance: KeypointGuidance = "none"


def coordinate_grid(
    h: int, w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(h, w, 2) pixel-centre coordinates in [-1, 1], x first (matches grid_sample, align_corners=False)."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def gaussian_heatmaps(kp: Keypoints, size: int, sigma: float) -> torch.Tensor:
    """Render keypoints (xy (..., N, 2), strength (..., N)) as (..., N, size, size) Gaussians
    scaled by strength."""
    grid = coordinate_grid(size, size, kp.xy.device, kp.xy.dtype)  # (S, S, 2)
    diff = grid - kp.xy[..., None, None, :]  # (..., N, S, S, 2)
    g = torch.exp(-0.5 * diff.pow(2).sum(-1) / (sigma * sigma))
    return g * kp.strength[..., None, None]


class KeypointDetector(nn.Module):
    def __init__(self, cfg: KeypointConfig, in_channels: int = 3, jacobian: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.num_keypoints
        self.net = UNet(in_channels, 2 * n, cfg.channels, out_level=0)  # n location + n strength maps
        # FOMM's Jacobian head: 4 maps per keypoint, starting at the identity (zero weights).
        # A separate head on the shared trunk, so a zeroth-order model can load a first-order
        # detector's weights (keypoints_from) and just leave this head out.
        self.jacobian = nn.Conv2d(self.net.head.in_channels, 4 * n, 1) if jacobian else None
        if self.jacobian is not None:
            nn.init.zeros_(self.jacobian.weight)
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.eye(2).flatten().repeat(n))  # type: ignore[union-attr]  # Conv2d has a bias

    def forward(self, images: torch.Tensor) -> Keypoints:
        """images (B, 3, H, W) in [0, 1] -> Keypoints(xy (B, N, 2), strength (B, N))."""
        x = F.avg_pool2d(images, self.cfg.downsample) if self.cfg.downsample > 1 else images
        feats = self.net.features(x)
        out = self.net.head(feats)
        n = self.cfg.num_keypoints
        b, _, h, w = out.shape
        logits, strength_logits = out[:, :n], out[:, n:]
        prob = torch.softmax(logits.reshape(b, n, h * w) / self.cfg.temperature, dim=-1)  # (B, N, HW)
        grid = coordinate_grid(h, w, out.device, out.dtype).reshape(h * w, 2)
        xy = prob @ grid  # soft-argmax, (B, N, 2)
        strength = torch.sigmoid((prob * strength_logits.reshape(b, n, h * w)).sum(-1))
        jacobian = None
        if self.jacobian is not None:  # pooled under the keypoint's heatmap, as FOMM does
            maps = self.jacobian(feats).reshape(b, n, 4, h * w)
            jacobian = (maps * prob[:, :, None]).sum(-1).unflatten(-1, (2, 2))
        return Keypoints(xy, strength, jacobian)


def _hull_area(xy: torch.Tensor) -> float:
    from scipy.spatial import ConvexHull  # scipy is already a dependency (metrics)

    return float(ConvexHull(xy.detach().float().cpu().numpy()).volume)  # volume of a 2-D hull = its area


def relative_keypoints(
    source: Keypoints, driving: Keypoints, driving_first: Keypoints, adapt_movement_scale: bool = False
) -> Keypoints:
    """FOMM's relative motion: the source keypoints moved by the driving video's motion since its
    first frame. Positions shift by `driving - driving_first` (scaled by sqrt(source hull area /
    first-frame hull area) with `adapt_movement_scale`, for faces of different sizes); Jacobians
    compose as `J_driving J_first^-1 J_source`. source/driving_first: batch 1; driving: batch B."""
    shift = driving.xy - driving_first.xy
    if adapt_movement_scale:
        shift = shift * (_hull_area(source.xy[0]) / _hull_area(driving_first.xy[0])) ** 0.5
    jacobian = None
    if source.jacobian is not None and driving.jacobian is not None and driving_first.jacobian is not None:
        jacobian = driving.jacobian @ torch.linalg.inv(driving_first.jacobian) @ source.jacobian
    return Keypoints(source.xy + shift, driving.strength, jacobian)
