"""Convolutional building blocks shared by every network in the library.

GroupNorm everywhere (not BatchNorm): a sample's output then never depends on the other
samples in the batch, so the k sources of one set (folded into the batch) stay independent,
which is what makes order invariance and duplicate-source equivalence hold in training mode too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def downscale(x: torch.Tensor, s: float) -> torch.Tensor:
    """Antialiased downscaling by `s`: exact box averaging for 1/2, 1/4, ... (works in bf16 under
    CPU autocast, where antialiased `interpolate` has no kernel), else fp32 antialiased bilinear."""
    if s == 1:
        return x
    factor = 1 / s
    if factor.is_integer():
        return F.avg_pool2d(x, int(factor))
    return F.interpolate(x.float(), scale_factor=s, mode="bilinear", align_corners=False, antialias=True).to(x.dtype)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (channel counts in configs need not be multiples of 8)."""
    groups = 8
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    """conv -> GroupNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            group_norm(cout),
            nn.ReLU(inplace=True),
        )


class ResBlock(nn.Module):
    """Pre-activation residual block (two 3x3 convs) at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UNet(nn.Module):
    """Hourglass/UNet: `len(channels)` levels, each halving the resolution; the decoder climbs
    back with skip connections and stops at `out_level` (output at input_res / 2**out_level).

    Used for the keypoint detector (out_level 0), the query and key networks (out_level =
    log2(token_stride / heatmap_stride)) and the baseline's dense-motion network.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: list[int], out_level: int = 0) -> None:
        super().__init__()
        if not 0 <= out_level < len(channels):
            raise ValueError(f"out_level {out_level} must be in [0, {len(channels)}) for channels {channels}")
        self.out_level = out_level
        self.down = nn.ModuleList()
        prev = in_channels
        for c in channels:
            self.down.append(ConvNormAct(prev, c))
            prev = c
        self.up = nn.ModuleList()
        # decoder step i goes from level i+1 to level i, concatenating level i's skip
        for level in range(len(channels) - 2, out_level - 1, -1):
            self.up.append(ConvNormAct(prev + channels[level], channels[level]))
            prev = channels[level]
        self.head = nn.Conv2d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder features, before the 1x1 head (for extra heads on the same trunk)."""
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        level = len(self.down) - 1
        for block in self.up:
            level -= 1
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skips[level]], dim=1))
        return x


class FeatureEncoder(nn.Module):
    """Image -> features at stride 2**(len(channels)-1) with residual blocks per level.

    The implicit model's value encoder (the heavy, cached part of the source path) and the
    baseline's source-feature encoder.
    """

    def __init__(self, in_channels: int, channels: list[int], res_blocks: list[int]) -> None:
        super().__init__()
        if len(res_blocks) != len(channels):
            raise ValueError(f"res_blocks {res_blocks} needs one entry per level of channels {channels}")
        layers: list[nn.Module] = [ConvNormAct(in_channels, channels[0], kernel=3)]
        layers += [ResBlock(channels[0]) for _ in range(res_blocks[0])]
        for level in range(1, len(channels)):
            layers.append(ConvNormAct(channels[level - 1], channels[level], kernel=3, stride=2))
            layers += [ResBlock(channels[level]) for _ in range(res_blocks[level])]
        self.net = nn.Sequential(*layers)
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Features at stride 2**(len(channels)-1) -> RGB in [0, 1].

    Each step upsamples x2 then convolves; the widths shrink as the resolution grows so the
    per-frame cost stays low (this runs every frame, the encoders only once per source set).

    With `pixel_mask`, `forward(x, pixels)` also predicts a mask m and returns
    m * pixels + (1 - m) * rendered (in fp32): an image the caller already has at full resolution
    (the implicit model's sources sampled where attention points) is kept where the mask trusts it.
    """

    def __init__(self, in_channels: int, channels: list[int], res_blocks: int = 1, pixel_mask: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, channels[0]), *[ResBlock(channels[0]) for _ in range(res_blocks)]
        )
        self.ups = nn.ModuleList(ConvNormAct(channels[i - 1], channels[i]) for i in range(1, len(channels)))
        self.head = nn.Conv2d(channels[-1], 3, 3, padding=1)
        self.mask_head = nn.Conv2d(channels[-1], 1, 3, padding=1) if pixel_mask else None

    def forward(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.stem(x)
        for block in self.ups:
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        rendered = torch.sigmoid(self.head(x))
        if self.mask_head is None or pixels is None:
            return rendered
        mask = torch.sigmoid(self.mask_head(x)).float()
        return mask * pixels + (1 - mask) * rendered.float()


def check_divisible(size: int, factor: int, what: str) -> None:
    """Every stride/pooling level must divide the image exactly (no silent cropping or padding)."""
    if size % factor:
        raise ValueError(f"{what}: image size {size} must be divisible by {factor}")


def log2_int(value: int, what: str) -> int:
    """log2 of a power of two, with a clear error otherwise."""
    if value < 1 or value & (value - 1):
        raise ValueError(f"{what} must be a power of two, got {value}")
    return value.bit_length() - 1
