"""Multi-scale PatchGAN discriminator with intermediate features for feature matching."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import nn

from iwarp.blocks import downscale


@dataclass
class DiscriminatorConfig:
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5])  # image scales, one patch discriminator each
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # one 4x4 conv block each
    spectral_norm: bool = True


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
    `MultiScalePatchDiscriminator(scales=[1.0, 0.5], channels=[32, 64, 128])`.
    """

    def __init__(self, config: DiscriminatorConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or DiscriminatorConfig(), **overrides)
        if not cfg.scales or len(cfg.channels) < 2 or any(not 0 < s <= 1 for s in cfg.scales):
            raise ValueError(f"discriminator needs scales in (0, 1] and >= 2 channel blocks, got {cfg}")
        self.config = cfg
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(list(cfg.channels), cfg.spectral_norm) for _ in cfg.scales
        )

    def min_size(self) -> int:
        """Smallest input side: the coarsest scale must keep >= 2x2 patches after the last block."""
        return math.ceil(2 ** (len(self.config.channels) + 1) / min(self.config.scales))

    def forward(self, images: torch.Tensor) -> list[ScaleOutput]:
        if min(images.shape[-2:]) < self.min_size():
            raise ValueError(
                f"images of {images.shape[-2]}x{images.shape[-1]} are too small for scales {self.config.scales} x "
                f"{len(self.config.channels)} blocks (need >= {self.min_size()} px): drop a scale or a channel block"
            )
        x = images * 2 - 1
        outs = []
        for scale, disc in zip(self.config.scales, self.discriminators):
            xs = downscale(x, scale)
            outs.append(disc(xs))
        return outs
