"""The explicit-flow baseline: FOMM (Siarohin et al. 2019), our own code, for comparison.

Per source: keypoints -> sparse motions (one per keypoint plus identity) ->
a dense-motion hourglass mixes them into one flow field and predicts an occlusion mask ->
`grid_sample` warps the source features -> features * occlusion. With k sources it warps each
and AVERAGES the warped features, exactly as the paper's multi-source baselines did; the
decoder is the same family as implicit warping's.

First-order motion (`motion="first_order"`, the default, FOMM's defining idea): each keypoint
carries a 2x2 Jacobian J and its sparse motion is the local affine map
`T(z) = p_src + J_src J_drv^-1 (z - p_drv)` (driving pixel z -> source position).
`motion="zeroth_order"` keeps translations only (`T(z) = p_src + z - p_drv`). The keypoints
also carry a strength, as in the implicit model, so both models share one detector design
(and implicit warping can start from this detector: `model.implicit.keypoints_from`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from iwarp.blocks import Decoder, FeatureEncoder, ResBlock, UNet, check_divisible, log2_int
from iwarp.implicit_warping import check_images
from iwarp.keypoints import KeypointConfig, KeypointDetector, Keypoints, coordinate_grid, gaussian_heatmaps
from iwarp.outputs import ModelOutput


@dataclass
class ExplicitFlowConfig:
    image_size: int = 256
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    motion: Literal["first_order", "zeroth_order"] = "first_order"  # Jacobians per keypoint, or translations
    motion_stride: int = 4  # dense motion, occlusion and warping at image_size / motion_stride
    motion_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256])
    # source encoder: one entry per level, strides 1, 2, ... motion_stride
    encoder_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    encoder_res_blocks: list[int] = field(default_factory=lambda: [0, 1, 1])
    bottleneck_blocks: int = 2
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32])

    @classmethod
    def tiny(cls, image_size: int = 64, **overrides) -> ExplicitFlowConfig:
        base: dict[str, Any] = dict(
            image_size=image_size,
            keypoints=KeypointConfig(num_keypoints=5, channels=[8, 16, 16]),
            motion_stride=4,
            motion_channels=[8, 16, 16],
            encoder_channels=[8, 16, 32],
            encoder_res_blocks=[0, 0, 1],
            bottleneck_blocks=1,
            decoder_channels=[24, 16, 8],
        )
        base.update(overrides)
        return cls(**base)


class FlowSourceCache(NamedTuple):
    """features (B, k, C, h, w) at motion resolution; images (B, k, 3, h, w) downscaled sources
    (dense-motion input); source_xy (B, k, N, 2); source_strength (B, k, N); source_jacobian
    (B, k, N, 2, 2) (identities for a zeroth-order model, so the cache has one layout)."""

    features: torch.Tensor
    images: torch.Tensor
    source_xy: torch.Tensor
    source_strength: torch.Tensor
    source_jacobian: torch.Tensor


def sparse_motions(src: Keypoints, drv: Keypoints, grid: torch.Tensor) -> torch.Tensor:
    """Where each driving pixel comes from in the source under keypoint n's motion:
    (B, N, h, w, 2) from keypoints (B, N, ...) and the (h, w, 2) driving grid. First order when
    both carry Jacobians (`p_src + J_src J_drv^-1 (z - p_drv)`), translations otherwise."""
    offset = grid - drv.xy[:, :, None, None, :]  # z - p_drv, (B, N, h, w, 2)
    if src.jacobian is not None and drv.jacobian is not None:
        jac = src.jacobian @ torch.linalg.inv(drv.jacobian.float()).to(drv.jacobian.dtype)  # (B, N, 2, 2)
        offset = torch.einsum("bnij,bnhwj->bnhwi", jac, offset)
    return src.xy[:, :, None, None, :] + offset


class DenseMotion(nn.Module):
    """(source, driving) keypoints + downscaled source -> backward flow (B, h, w, 2) in grid_sample
    coordinates (where each driving pixel comes from in the source) and occlusion (B, 1, h, w)."""

    def __init__(self, num_keypoints: int, channels: list[int], sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        n1 = num_keypoints + 1  # + identity (background)
        self.net = UNet(n1 + 3 * n1, n1 + 1, channels, out_level=0)

    def forward(self, source_img: torch.Tensor, src: Keypoints, drv: Keypoints) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = source_img.shape
        n = src.xy.shape[1]
        heat = gaussian_heatmaps(drv, h, self.sigma) - gaussian_heatmaps(src, h, self.sigma)  # (B, N, h, w)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)
        grid = coordinate_grid(h, w, source_img.device, source_img.dtype)  # (h, w, 2)
        sparse = torch.cat([grid.expand(b, 1, h, w, 2), sparse_motions(src, drv, grid)], dim=1)  # (B, N+1, h, w, 2)
        deformed = F.grid_sample(
            source_img.repeat_interleave(n + 1, dim=0),
            sparse.reshape(b * (n + 1), h, w, 2),
            align_corners=False,
        ).reshape(b, 3 * (n + 1), h, w)
        out = self.net(torch.cat([heat, deformed], dim=1))
        mask = torch.softmax(out[:, : n + 1], dim=1)  # (B, N+1, h, w)
        flow = (mask[..., None] * sparse).sum(1)  # (B, h, w, 2)
        occlusion = torch.sigmoid(out[:, n + 1 :])
        return flow, occlusion


class ExplicitFlowBaseline(nn.Module):
    kind = "baseline"

    def __init__(self, config: ExplicitFlowConfig | None = None) -> None:
        super().__init__()
        cfg = config or ExplicitFlowConfig()
        self.config = cfg
        levels = log2_int(cfg.motion_stride, "motion_stride")
        check_divisible(
            cfg.image_size,
            cfg.motion_stride * 2 ** (len(cfg.motion_channels) - 1),
            "motion_stride x dense-motion levels",
        )
        check_divisible(
            cfg.image_size,
            cfg.keypoints.downsample * 2 ** (len(cfg.keypoints.channels) - 1),
            "keypoint detector levels",
        )
        if len(cfg.encoder_channels) != levels + 1 or len(cfg.encoder_res_blocks) != levels + 1:
            raise ValueError(
                f"encoder_channels/encoder_res_blocks need {levels + 1} entries for motion_stride {cfg.motion_stride}"
            )
        if len(cfg.decoder_channels) != levels + 1:
            raise ValueError(f"decoder_channels needs {levels + 1} entries for motion_stride {cfg.motion_stride}")
        self.motion_size = cfg.image_size // cfg.motion_stride
        self.keypoint_detector = KeypointDetector(cfg.keypoints, jacobian=cfg.motion == "first_order")
        self.dense_motion = DenseMotion(cfg.keypoints.num_keypoints, cfg.motion_channels, cfg.keypoints.heatmap_sigma)
        self.encoder = FeatureEncoder(3, cfg.encoder_channels, cfg.encoder_res_blocks)
        c = cfg.encoder_channels[-1]
        self.bottleneck = nn.Sequential(*[ResBlock(c) for _ in range(cfg.bottleneck_blocks)])
        self.decoder = Decoder(c, cfg.decoder_channels)

    def detect_keypoints(self, images: torch.Tensor) -> Keypoints:
        check_images(images, "images", 4, self.config.image_size)
        return self.keypoint_detector(images)

    def encode_sources(self, sources: torch.Tensor) -> FlowSourceCache:
        check_images(sources, "sources", 5, self.config.image_size)
        b, k = sources.shape[:2]
        flat = sources.flatten(0, 1)
        kp = self.keypoint_detector(flat)
        feats = self.encoder(flat)
        small = F.avg_pool2d(flat, self.config.motion_stride)
        jacobian = kp.jacobian if kp.jacobian is not None else torch.eye(2).to(kp.xy).expand(*kp.xy.shape[:2], 2, 2)
        return FlowSourceCache(
            feats.unflatten(0, (b, k)),  # unflatten, not reshape(b*k): torch.export keeps k=1 valid
            small.unflatten(0, (b, k)),
            kp.xy.unflatten(0, (b, k)),
            kp.strength.unflatten(0, (b, k)),
            jacobian.unflatten(0, (b, k)),
        )

    def _source_keypoints(self, cache: FlowSourceCache) -> Keypoints:
        first = self.config.motion == "first_order"
        return Keypoints(cache.source_xy, cache.source_strength, cache.source_jacobian if first else None)

    def _warp(self, cache: FlowSourceCache, drv: Keypoints) -> tuple[torch.Tensor, torch.Tensor]:
        """Warped features (B, k, C, h, w) already multiplied by occlusion, and occlusion (B, k, 1, h, w)."""
        b, k = cache.features.shape[:2]
        # every source is paired with the same driving keypoints
        drv_flat = drv.map(lambda t: t[:, None].expand(b, k, *t.shape[1:]).flatten(0, 1))
        src_flat = self._source_keypoints(cache).map(lambda t: t.flatten(0, 1))
        flow, occ = self.dense_motion(cache.images.flatten(0, 1), src_flat, drv_flat)
        feats = cache.features.flatten(0, 1)
        warped = F.grid_sample(feats, flow, align_corners=False) * occ
        return warped.unflatten(0, (b, k)), occ.unflatten(0, (b, k))

    def animate(
        self,
        cache: FlowSourceCache,
        driving: torch.Tensor | None = None,
        driving_keypoints: Keypoints | None = None,
    ) -> ModelOutput:
        if driving_keypoints is None:
            if driving is None:
                raise ValueError("animate needs a driving image or driving_keypoints")
            driving_keypoints = self.detect_keypoints(driving)
        warped, occ = self._warp(cache, driving_keypoints)
        feat = self.bottleneck(warped.mean(1))  # the baselines' multi-source rule: average
        return ModelOutput(
            prediction=self.decoder(feat),
            driving_keypoints=driving_keypoints,
            source_keypoints=self._source_keypoints(cache),
            occlusion=occ,
        )

    def forward(self, sources: torch.Tensor, driving: torch.Tensor) -> ModelOutput:
        return self.animate(self.encode_sources(sources), driving)

    @torch.no_grad()
    def source_attention(self, sources: torch.Tensor, driving: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
        """The baseline's analogue of the attention maps, (B, k + 1, h, w) at motion resolution:
        channel i = occlusion_i / k, source i's weight in the averaged features; the last channel
        = 1 - mean occlusion, the share the decoder must fill in itself. Channels sum to 1.
        `chunk_size` is accepted for signature compatibility (nothing here grows with h*w*k^2)."""
        return self.source_mass(self.encode_sources(sources), self.detect_keypoints(driving))

    def source_mass(self, cache: FlowSourceCache, driving_keypoints: Keypoints) -> torch.Tensor:
        """`source_attention` from a cached source set, per frame (what a server exports)."""
        _, occ = self._warp(cache, driving_keypoints)
        per_source = occ[:, :, 0] / occ.shape[1]
        return torch.cat([per_source, 1 - per_source.sum(1, keepdim=True)], dim=1)
