"""Random smooth deformations (affine + thin-plate spline) for the equivariance loss.

A transform T maps coordinates of the *transformed* image to coordinates of the original:
`transformed(p) = original(T(p))`. A keypoint detector that is equivariant finds, in the
transformed image, points x' with T(x') equal to the keypoints x found in the original. That
is what the equivariance loss checks (as in FOMM, Siarohin et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iwarp.keypoints import coordinate_grid


class RandomTPS:
    """A batch of random transforms: affine (identity + N(0, sigma_affine)) followed by a
    thin-plate spline over a `points` x `points` grid of control points with N(0, sigma_tps)
    weights. Coordinates are in [-1, 1] (x, y)."""

    def __init__(
        self,
        batch_size: int,
        sigma_affine: float = 0.05,
        sigma_tps: float = 0.005,
        points: int = 5,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        noise = torch.randn(batch_size, 2, 3, generator=generator) * sigma_affine
        self.theta = (noise + torch.eye(2, 3)).to(device)  # (B, 2, 3)
        lin = torch.linspace(-1, 1, points)
        cy, cx = torch.meshgrid(lin, lin, indexing="ij")
        self.control_points = torch.stack([cx, cy], -1).reshape(-1, 2).to(device)  # (P, 2)
        self.control_params = (torch.randn(batch_size, 1, points * points, generator=generator) * sigma_tps).to(device)

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (B, ..., 2) -> T(coords), same shape."""
        b = coords.shape[0]
        flat = coords.reshape(b, -1, 2)
        theta = self.theta.to(flat.dtype)
        out = flat @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
        dist = (flat[:, :, None, :] - self.control_points.to(flat.dtype)[None, None]).norm(dim=-1)  # (B, M, P)
        radial = dist.square() * torch.log(dist + 1e-6)  # TPS kernel U(r) = r^2 log r
        out = out + (radial * self.control_params.to(flat.dtype)).sum(-1, keepdim=True)
        return out.reshape(coords.shape)

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """frame (B, C, H, W) -> transformed frame, reflection-padded at the borders."""
        b, _, h, w = frame.shape
        grid = coordinate_grid(h, w, frame.device, frame.dtype).expand(b, h, w, 2)
        return F.grid_sample(frame, self.warp_coordinates(grid), padding_mode="reflection", align_corners=False)
