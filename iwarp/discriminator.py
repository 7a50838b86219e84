"""Multi-scale PatchGAN discriminator with intermediate features for feature matching."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DiscriminatorConfig:
    scales: int = 2  # pyramid levels: full, 1/2, 1/4, ... resolution, one patch discriminator each
    channels: int = 64  # first block's width; doubles per block up to max_channels
    num_blocks: int = 4
    max_channels: int = 512
    spectral_norm: bool = True

    def widths(self) -> list[int]:
        return [min(self.channels * 2**i, self.max_channels) for i in range(self.num_blocks)]


class ScaleOutput(NamedTuple):
    """One scale's intermediate feature maps (for feature matching) and patch logits (B, 1, h, w)."""

    features: list[torch.Tensor]
    logits: torch.Tensor


class PatchDiscriminator(nn.Module):
    """4x4 conv stack; every block but the last halves the resolution. InstanceNorm after the
    first block, LeakyReLU(0.2); spectral norm stabilises the hinge GAN."""

    def __init__(self, channels: list[int], spectral_norm: bool = True) -> None:
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        blocks, prev = [], 3
        for i, c in enumerate(channels):
            layers: list[nn.Module] = [wrap(nn.Conv2d(prev, c, 4, stride=2 if i < len(channels) - 1 else 1, padding=1))]
            if i > 0:
                layers.append(nn.InstanceNorm2d(c, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            blocks.append(nn.Sequential(*layers))
            prev = c
        self.blocks = nn.ModuleList(blocks)
        self.head = wrap(nn.Conv2d(prev, 1, 4, padding=1))

    def forward(self, x: torch.Tensor) -> ScaleOutput:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return ScaleOutput(feats, self.head(x))


class MultiScalePatchDiscriminator(nn.Module):
    """Patch discriminators on an image pyramid: `forward(images in [0, 1])` returns one
    `ScaleOutput` per scale (full resolution first).

    `MultiScalePatchDiscriminator(DiscriminatorConfig(...))` or with field overrides, e.g.
    `MultiScalePatchDiscriminator(scales=2, channels=32)`.
    """

    def __init__(self, config: DiscriminatorConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or DiscriminatorConfig(), **overrides)
        if cfg.scales < 1 or cfg.num_blocks < 2:
            raise ValueError(f"discriminator needs scales >= 1 and num_blocks >= 2, got {cfg}")
        self.config = cfg
        self.discriminators = nn.ModuleList(PatchDiscriminator(cfg.widths(), cfg.spectral_norm) for _ in range(cfg.scales))

    def min_size(self) -> int:
        """Smallest input side: the coarsest level must keep >= 2x2 patches after the last block."""
        return 2 ** (self.config.num_blocks + 1) * 2 ** (self.config.scales - 1)

    def forward(self, images: torch.Tensor) -> list[ScaleOutput]:
        if min(images.shape[-2:]) < self.min_size():
            raise ValueError(
                f"images of {images.shape[-2]}x{images.shape[-1]} are too small for {self.config.scales} scales x "
                f"{self.config.num_blocks} blocks (need >= {self.min_size()} px): lower discriminator scales or num_blocks"
            )
        x = images * 2 - 1
        outs = []
        for level, disc in enumerate(self.discriminators):
            if level > 0:  # each level sees the image at half the previous resolution
                x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
            outs.append(disc(x))
        return outs
