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

_EPS = 1e-6  # keeps log(r) finite at a control point


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
        radial = dist.square() * torch.log(dist + _EPS)  # TPS kernel U(r) = r^2 log r
        out = out + (radial * self.control_params.to(flat.dtype)).sum(-1, keepdim=True)
        return out.reshape(coords.shape)

    def jacobian(self, coords: torch.Tensor) -> torch.Tensor:
        """dT/dp at coords (B, ..., 2) -> (B, ..., 2, 2), analytic (FOMM takes it by autograd).
        The TPS term adds the same scalar to x and y, so its gradient g fills both rows:
        dU/dp = (2 log(r + eps) + r / (r + eps)) (p - c) for U = r^2 log(r + eps)."""
        b = coords.shape[0]
        flat = coords.reshape(b, -1, 2)
        diff = flat[:, :, None, :] - self.control_points.to(flat.dtype)[None, None]  # (B, M, P, 2)
        dist = diff.norm(dim=-1, keepdim=True)
        grad_u = (2 * torch.log(dist + _EPS) + dist / (dist + _EPS)) * diff
        g = (grad_u * self.control_params.to(flat.dtype)[..., None]).sum(2)  # (B, M, 2)
        jac = self.theta[:, None, :, :2].to(flat.dtype) + g[:, :, None, :]  # rows: dT_x/dp, dT_y/dp
        return jac.reshape(*coords.shape, 2)

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """frame (B, C, H, W) -> transformed frame, reflection-padded at the borders."""
        b, _, h, w = frame.shape
        grid = coordinate_grid(h, w, frame.device, frame.dtype).expand(b, h, w, 2)
        return F.grid_sample(frame, self.warp_coordinates(grid), padding_mode="reflection", align_corners=False)
