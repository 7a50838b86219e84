"""Implicit warping (Mallya et al., NeurIPS 2022): one cross-modal attention layer warps the
features of a whole set of source images to the pose of a driving frame.

    Q = QueryUNet(driving keypoint heatmaps)                      per frame
    K = KeyUNet(concat(source keypoint heatmaps, source image))   per source set (cached)
    V = ValueEncoder(source image)                                per source set (cached)
    A = softmax((Q + PE)(K + PE)^T / sqrt(C))  over all k sources' tokens + extra tokens
    out = A V + MLP(concat(A concat(pixels, K), Q))               residual path
    prediction = m * P + (1 - m) * Decoder(out)                   pixel output (m: decoder's mask)

P is iwarp's addition (`pixel_output`): for each query and source, the attention-weighted mean
position of the source tokens it attends to says where its content sits in that source; the
sources are sampled there at full resolution and blended by their attention mass. The paper's
decoder renders everything from tokens at 1/token_stride resolution; a small decoder trained
briefly renders those as a blur, while P holds the sources' own sharp pixels wherever the
attention is confident, and the mask lets the decoder render what no source shows.

The three attention products A V, A pixels, A K are one fused call: V, the source pixel
patches (space-to-depth at token resolution) and K are concatenated along the value channels.
The source path is the heavy part and runs once per source set (`encode_sources`); the
per-frame path (`animate`) is keypoints + a small query UNet + attention + MLP + a light decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from iwarp.attention import CrossModalAttention
from iwarp.blocks import Decoder, FeatureEncoder, UNet, check_divisible, log2_int
from iwarp.keypoints import KeypointConfig, KeypointDetector, Keypoints, coordinate_grid, gaussian_heatmaps
from iwarp.outputs import ModelOutput
from iwarp.positional import sine_encoding_2d

PixelSampling = Literal["mean", "mode"]
SourceSelection = Literal["token", "region", "frame"]


@dataclass
class ImplicitWarpingConfig:
    image_size: int = 256
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    heatmap_stride: int = 4  # keypoint heatmaps (and the Q/K UNets' input) at image_size / heatmap_stride
    token_stride: int = 8  # attention token grid at image_size / token_stride
    qk_dim: int = 128
    query_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    key_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256])
    # value encoder: one entry per level, stride 1, 2, 4, ... token_stride. The attention's value
    # width is 320 (V) + 3*8*8 (pixels) + 128 (K) = 640 = 5 x qk_dim, so nothing is zero-padded.
    value_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 320])
    value_res_blocks: list[int] = field(default_factory=lambda: [0, 2, 3, 4])
    decoder_channels: list[int] = field(default_factory=lambda: [160, 80, 40, 20])
    decoder_res_blocks: int = 0
    extra_kv: bool = True
    num_extra_tokens: int = 4
    attention_dropout: float = 0.1
    residual: bool = True
    residual_hidden: int = 256
    pixel_output: bool = True  # blend the sources, sampled where attention points, into the output
    # where each source is sampled: "mean" = the attention-weighted mean token position (lands
    # between two places when the attention is split: ghosts); "mode" = the mean over a window of
    # `mode_window` tokens around the most attended token (one place per source)
    pixel_sampling: PixelSampling = "mean"
    mode_window: int = 1  # radius in tokens of the "mode" window (1: 3x3 tokens)
    # How the sampled sources are blended: by each token's own attention mass ("token": sources
    # whose mass is close everywhere are averaged, so their misaligned eyes and mouths overlap as
    # ghosts), or by the mass pooled over a region of `selection_window` x the token grid's side
    # ("region": one source wins each region, whole eyes and mouths come from one source), or
    # by the mass pooled over the whole frame ("frame": one source per output frame, no seams).
    source_selection: SourceSelection = "token"
    selection_window: float = 0.6  # "region": the pooling window's side / the token grid's side
    # "region" / "frame": the learned sharpness is multiplied by this. Pooling shrinks the log-mass gaps
    # between sources, so a token-trained sharpness (~4) switches to region selection as ~32.
    selection_gain: float = 8.0
    spatial_reduction: int = 1  # >1 average-pools source keys/values by this factor (cheaper, coarser)
    # Pretrained keypoints, as the paper started from AA-PCA's: a checkpoint (path or shipped name,
    # e.g. the FOMM baseline iwarp-faces-64-fomm) whose detector `iwarp train` loads at step 0.
    # The model itself never reads the file (a trained checkpoint already holds the weights).
    keypoints_from: str | None = None
    keypoints_frozen: bool = True  # False: fine-tune the pretrained detector with the rest

    @classmethod
    def tiny(cls, image_size: int = 64, **overrides) -> ImplicitWarpingConfig:
        """A few-channel model for tests and CPU smoke runs (image_size divisible by 32)."""
        base: dict[str, Any] = dict(
            image_size=image_size,
            keypoints=KeypointConfig(num_keypoints=5, channels=[8, 16, 16]),
            heatmap_stride=4,
            token_stride=8,
            qk_dim=16,
            query_channels=[8, 16],
            key_channels=[8, 16],
            value_channels=[8, 16, 16, 32],
            value_res_blocks=[0, 0, 1, 1],
            decoder_channels=[24, 16, 8, 8],
            num_extra_tokens=2,
            attention_dropout=0.0,
            residual_hidden=32,
        )
        base.update(overrides)
        return cls(**base)


class SourceCache(NamedTuple):
    """Everything the per-frame path needs from the source set; plain tensors only.

    keys: (B, S, qk_dim) with positional encoding, S = k * tokens per source (after spatial
    reduction) + the learned extra tokens, ordered source by source, extra tokens last.
    values: (B, S, D) = concat(V, pixel patches, K) (V alone when the residual path is off),
    zero-padded to a multiple of qk_dim (see `CrossModalAttention`). source_xy (B, k, N, 2) / source_strength (B, k, N):
    the sources' keypoints (for relative-motion animation). sources (B, k, 3, H, W): the images,
    which the pixel output samples. token_places (B, S, k, 3): per key token, [1, x, y] in its own
    source's slot (zeros elsewhere and for the extra tokens), so `A @ token_places` gives each
    query's attention mass and mass-weighted position per source in one product.
    """

    keys: torch.Tensor
    values: torch.Tensor
    source_xy: torch.Tensor
    source_strength: torch.Tensor
    sources: torch.Tensor
    token_places: torch.Tensor


def check_images(x: torch.Tensor, name: str, ndim: int, size: int) -> None:
    """Shape checks with messages that say what was expected (static shapes only: export-safe)."""
    shape = "(B, k, 3, H, W)" if ndim == 5 else "(B, 3, H, W)"
    if x.dim() != ndim or x.shape[-3] != 3:
        raise ValueError(f"{name} must have shape {shape} with 3 colour channels, got {tuple(x.shape)}")
    if x.shape[-1] != size or x.shape[-2] != size:
        raise ValueError(f"{name} must be {size}x{size} (the model's image_size), got {x.shape[-2]}x{x.shape[-1]}")


class ImplicitWarping(nn.Module):
    kind = "implicit"

    pos_enc: torch.Tensor  # buffers (register_buffer), declared for the type checker
    query_xy: torch.Tensor
    key_xy: torch.Tensor
    residual_mlp: nn.Sequential | None  # None without the residual path
    source_sharpness: nn.Parameter | None  # None without the pixel output

    def __init__(self, config: ImplicitWarpingConfig | None = None) -> None:
        super().__init__()
        cfg = config or ImplicitWarpingConfig()
        self.config = cfg
        hm_levels = log2_int(cfg.heatmap_stride, "heatmap_stride")
        tok_levels = log2_int(cfg.token_stride, "token_stride")
        if tok_levels < hm_levels:
            raise ValueError(f"token_stride {cfg.token_stride} must be >= heatmap_stride {cfg.heatmap_stride}")
        if len(cfg.value_channels) != tok_levels + 1:
            raise ValueError(
                f"value_channels needs {tok_levels + 1} entries (strides 1..{cfg.token_stride}), "
                f"got {cfg.value_channels}"
            )
        out_level = tok_levels - hm_levels
        size = cfg.image_size
        check_divisible(size, cfg.token_stride * cfg.spatial_reduction, "token_stride x spatial_reduction")
        check_divisible(
            size, cfg.heatmap_stride * 2 ** (len(cfg.query_channels) - 1), "heatmap_stride x query UNet levels"
        )
        check_divisible(size, cfg.heatmap_stride * 2 ** (len(cfg.key_channels) - 1), "heatmap_stride x key UNet levels")
        check_divisible(
            size, cfg.keypoints.downsample * 2 ** (len(cfg.keypoints.channels) - 1), "keypoint detector levels"
        )
        n = cfg.keypoints.num_keypoints
        self.heatmap_size = cfg.image_size // cfg.heatmap_stride
        self.grid_size = cfg.image_size // cfg.token_stride
        self.value_dim = cfg.value_channels[-1]
        self.pixel_dim = 3 * cfg.token_stride**2

        self.keypoint_detector = KeypointDetector(cfg.keypoints)
        self.query_net = UNet(n, cfg.qk_dim, cfg.query_channels, out_level=out_level)
        self.key_net = UNet(n + 3 * cfg.heatmap_stride**2, cfg.qk_dim, cfg.key_channels, out_level=out_level)
        self.value_net = FeatureEncoder(3, cfg.value_channels, cfg.value_res_blocks)
        total_value = self.value_dim + (self.pixel_dim + cfg.qk_dim if cfg.residual else 0)
        self.attention = CrossModalAttention(
            cfg.qk_dim,
            total_value,
            cfg.num_extra_tokens,
            cfg.extra_kv,
            cfg.attention_dropout,
            residual_dim=total_value - self.value_dim,
        )
        if cfg.residual:
            self.residual_mlp = nn.Sequential(
                nn.Linear(self.pixel_dim + 2 * cfg.qk_dim, cfg.residual_hidden),
                nn.GELU(),
                nn.Linear(cfg.residual_hidden, self.value_dim),
            )
        else:
            self.residual_mlp = None
        self.decoder = Decoder(
            self.value_dim, cfg.decoder_channels, cfg.decoder_res_blocks, pixel_mask=cfg.pixel_output
        )
        # log of the exponent on each source's attention mass when the pixel output blends them;
        # starts at 4: with the shipped model's weights, 4-8 trade ghosting (LPIPS) against seams (L1) best
        self.source_sharpness = nn.Parameter(torch.tensor(math.log(4.0))) if cfg.pixel_output else None
        if len(cfg.decoder_channels) != tok_levels + 1:
            raise ValueError(
                f"decoder_channels needs {tok_levels + 1} entries (one per x2 upsampling + 1), "
                f"got {cfg.decoder_channels}"
            )
        self.register_buffer("pos_enc", sine_encoding_2d(self.grid_size, self.grid_size, cfg.qk_dim), persistent=False)
        key_grid = self.grid_size // cfg.spatial_reduction
        # token centres in [-1, 1] (x, y): queries on the token grid, keys after spatial reduction
        self.register_buffer(
            "query_xy", coordinate_grid(self.grid_size, self.grid_size).reshape(-1, 2), persistent=False
        )
        self.register_buffer("key_xy", coordinate_grid(key_grid, key_grid).reshape(-1, 2), persistent=False)

    # ------------------------------------------------------------------ keypoints
    def detect_keypoints(self, images: torch.Tensor) -> Keypoints:
        """images (B, 3, H, W) in [0, 1] -> Keypoints(xy (B, N, 2) in [-1, 1], strength (B, N))."""
        check_images(images, "images", 4, self.config.image_size)
        return self.keypoint_detector(images)

    def heatmaps(self, kp: Keypoints) -> torch.Tensor:
        return gaussian_heatmaps(kp, self.heatmap_size, self.config.keypoints.heatmap_sigma)

    # ------------------------------------------------------------------ source path
    def encode_sources(self, sources: torch.Tensor) -> SourceCache:
        """sources (B, k, 3, H, W) in [0, 1] -> SourceCache (compute once per source set)."""
        cfg = self.config
        check_images(sources, "sources", 5, cfg.image_size)
        b = sources.shape[0]
        flat = sources.flatten(0, 1)  # sources are independent: fold k into the batch
        kp = self.keypoint_detector(flat)
        key_in = torch.cat([self.heatmaps(kp), F.pixel_unshuffle(flat, cfg.heatmap_stride)], dim=1)
        k_feat = self.key_net(key_in)  # (B*k, C, h, w)
        keys = k_feat + self.pos_enc.t().reshape(1, cfg.qk_dim, self.grid_size, self.grid_size)
        values = self.value_net(flat)
        if self.residual_mlp is not None:
            values = torch.cat([values, F.pixel_unshuffle(flat, cfg.token_stride), k_feat], dim=1)
        if cfg.spatial_reduction > 1:
            keys = F.avg_pool2d(keys, cfg.spatial_reduction)
            values = F.avg_pool2d(values, cfg.spatial_reduction)
        keys = keys.flatten(2).transpose(1, 2).reshape(b, -1, keys.shape[1])  # (B, k*T, C)
        values = values.flatten(2).transpose(1, 2).reshape(b, -1, values.shape[1])
        keys, values = self.attention.prepare(keys, values)  # + extra tokens, padded values
        n = kp.xy.shape[1]
        return SourceCache(
            keys,
            values,
            kp.xy.reshape(b, -1, n, 2),
            kp.strength.reshape(b, -1, n),
            sources,
            self._token_places(sources.shape[1], keys),
        )

    def _token_places(self, k: int, keys: torch.Tensor) -> torch.Tensor:
        """(B, S, k, 3) for `SourceCache.token_places`; the extra tokens (last) get zero rows."""
        places = torch.cat([torch.ones_like(self.key_xy[:, :1]), self.key_xy], dim=1)  # (T, 3)
        eye = torch.eye(k, dtype=places.dtype, device=places.device)
        grid = (eye[:, None, :, None] * places[None, :, None, :]).flatten(0, 1)  # (k*T, k, 3)
        grid = F.pad(grid, (0, 0, 0, 0, 0, self.attention.num_extra))
        return grid.expand(keys.shape[0], -1, -1, -1)

    # ------------------------------------------------------------------ per-frame path
    def _queries(self, kp: Keypoints) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.query_net(self.heatmaps(kp))  # (B, C, h, w)
        q = q.flatten(2).transpose(1, 2)  # (B, L, C)
        return q, q + self.pos_enc

    def animate(
        self,
        cache: SourceCache,
        driving: torch.Tensor | None = None,
        driving_keypoints: Keypoints | None = None,
    ) -> ModelOutput:
        """Render one driving frame per batch item from a cached source set.

        Pass either the driving image (B, 3, H, W) or its keypoints (e.g. source keypoints moved
        by the driving video's relative motion).
        """
        if driving_keypoints is None:
            if driving is None:
                raise ValueError("animate needs a driving image or driving_keypoints")
            driving_keypoints = self.detect_keypoints(driving)
        b = cache.keys.shape[0]
        q_raw, q = self._queries(driving_keypoints)
        warped = self.attention(q, cache.keys, cache.values)  # (B, L, D)
        feat = warped[..., : self.value_dim]
        if self.residual_mlp is not None:
            feat = feat + self.residual_mlp(torch.cat([warped[..., self.value_dim :], q_raw], dim=-1))
        feat = feat.transpose(1, 2).reshape(b, self.value_dim, self.grid_size, self.grid_size)
        pixels = self.sampled_sources(q, cache) if self.config.pixel_output else None
        return ModelOutput(
            prediction=self.decoder(feat, pixels),
            driving_keypoints=driving_keypoints,
            source_keypoints=Keypoints(cache.source_xy, cache.source_strength),
        )

    def sampled_sources(self, q: torch.Tensor, cache: SourceCache) -> torch.Tensor:
        """The pixel output P (B, 3, H, W): each source sampled at full resolution where the
        attention points (its mean attended token position per query token, as a displacement
        upsampled bilinearly), blended by their attention mass raised to a learned sharpness.

        Forms the (queries x keys) weights, unlike the fused attention call: L x k*T floats per
        item (64 px: 256 x 256k; 256 px at token stride 8: 1024 x 1024k)."""
        src = cache.sources
        b, k, _, h, w = src.shape
        weights = self.attention.weights(q, cache.keys)
        if self.config.pixel_sampling == "mode":
            mass, centre = self._mode_centres(weights, k)
        else:
            stats = torch.einsum("bls,bskc->blkc", weights, cache.token_places)
            mass = stats[..., 0]  # (B, L, k)
            centre = stats[..., 1:] / mass.clamp_min(1e-6)[..., None]  # (B, L, k, 2)
        g = self.grid_size
        # fold k into the batch with flatten/unflatten: a one-step reshape makes torch.export
        # specialise on k != 1
        shift = (centre - self.query_xy[:, None]).permute(0, 2, 3, 1).flatten(0, 1).unflatten(-1, (g, g))
        shift = F.interpolate(shift, size=(h, w), mode="bilinear", align_corners=False)
        grid = coordinate_grid(h, w, shift.device) + shift.permute(0, 2, 3, 1)
        warped = F.grid_sample(src.flatten(0, 1).float(), grid, align_corners=False, padding_mode="border")
        # weights ~ mass ** sharpness over the sources (mass on the extra tokens is no source's): a
        # learned sharpness > 1 picks one source per region instead of ghosting several
        assert self.source_sharpness is not None, "sampled_sources needs pixel_output=True"
        scores = self.selection_scores(mass.transpose(1, 2).unflatten(-1, (g, g)), (h, w))
        sharpness = self.source_sharpness.exp() * (
            1.0 if self.config.source_selection == "token" else self.config.selection_gain
        )
        weight = torch.softmax(sharpness * scores, dim=1)
        return (warped.reshape(b, k, 3, h, w) * weight[:, :, None]).sum(1)

    def selection_window_tokens(self) -> int:
        """The "region" pooling window in tokens: odd, so it is centred on its token."""
        side = round(self.config.selection_window * self.grid_size)
        return max(1, side - (1 - side % 2))

    def selection_scores(self, mass: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, k, g, g) attention mass per source -> (B, k, H, W) log scores the sources are
        blended by: per token, pooled over a region with `source_selection="region"` (zero
        padding excluded, so edge tokens average only real neighbours), or over the frame."""
        up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        if self.config.source_selection == "token":
            return up(mass).clamp_min(1e-6).log()
        if self.config.source_selection == "frame":
            return mass.clamp_min(1e-6).log().mean((-1, -2), keepdim=True).expand(-1, -1, *size)
        win = self.selection_window_tokens()
        pooled = F.avg_pool2d(mass.clamp_min(1e-6).log(), win, stride=1, padding=win // 2, count_include_pad=False)
        return up(pooled)

    def _mode_centres(self, weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query and source: its attention mass (B, L, k) and the mass-weighted mean position
        (B, L, k, 2) of the tokens within `mode_window` of its most attended token. A query whose
        attention is split between two places gets one of them, not the point halfway between."""
        g = self.key_xy.shape[0]
        side = math.isqrt(g)
        per_source = weights[..., : k * g].unflatten(-1, (k, side, side))  # (B, L, k, side, side)
        mass = per_source.sum((-1, -2))
        top = per_source.flatten(-2).argmax(-1)  # (B, L, k)
        axis = torch.arange(side, device=weights.device)
        r = self.config.mode_window
        near_y = (axis - torch.div(top, side, rounding_mode="floor")[..., None]).abs() <= r  # (B, L, k, side)
        near_x = (axis - top.remainder(side)[..., None]).abs() <= r
        local = per_source * (near_y[..., :, None] & near_x[..., None, :])
        local = local.flatten(-2)  # (B, L, k, T)
        centre = (local @ self.key_xy) / local.sum(-1, keepdim=True).clamp_min(1e-12)
        return mass, centre

    def forward(self, sources: torch.Tensor, driving: torch.Tensor) -> ModelOutput:
        return self.animate(self.encode_sources(sources), driving)

    # ------------------------------------------------------------------ inspection
    def source_mass(self, cache: SourceCache, driving_keypoints: Keypoints) -> torch.Tensor:
        """`source_attention` from a cached source set, per frame (what a server exports):
        (B, k + 1, h, w), channel i the attention mass on source i, the last on the extra K/V.
        Per-source sums go through `token_places` (one-hot source slots), not a reshape by k,
        so torch.export keeps k dynamic; forms the L x S weights, like `sampled_sources`."""
        _, q = self._queries(driving_keypoints)
        mass = torch.einsum("bls,bsk->blk", self.attention.weights(q, cache.keys), cache.token_places[..., 0])
        extra = (1 - mass.sum(-1, keepdim=True)).clamp_min(0)  # the extra tokens hold the rest
        return torch.cat([mass, extra], dim=-1).transpose(1, 2).unflatten(-1, (self.grid_size, self.grid_size))

    @torch.no_grad()
    def source_attention(self, sources: torch.Tensor, driving: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
        """(B, k + 1, h, w) on the token grid: for every output position, the attention mass on
        each source; the last channel is the extra K/V (zeros when off). Channels sum to 1.
        Computed `chunk_size` queries at a time (the paper's Fig. 6)."""
        cache = self.encode_sources(sources)
        _, q = self._queries(self.detect_keypoints(driving))
        k = sources.shape[1]
        mass = self.attention.attention_mass(q, cache.keys, k, chunk_size)  # (B, L, k+1)
        return mass.transpose(1, 2).reshape(q.shape[0], k + 1, self.grid_size, self.grid_size)
