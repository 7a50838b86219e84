"""Multi-scale PatchGAN discriminator with intermediate features for feature matching."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DiscriminatorConfig:
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5])  # image scales, one patch discriminator each
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
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
    `ScaleOutput` per scale in `config.scales`."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiscriminatorConfig()
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(self.config.channels, self.config.spectral_norm) for _ in self.config.scales
        )

    def forward(self, images: torch.Tensor) -> list[ScaleOutput]:
        x = images * 2 - 1
        outs = []
        for scale, disc in zip(self.config.scales, self.discriminators):
            xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=True)
            outs.append(disc(xs))
        return outs
