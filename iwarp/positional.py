"""2-D sinusoidal positional encoding added to queries and keys.

Fixed (not learned) and defined on normalised coordinates, so it exists for any token grid
(a model trained at 64^2 has a consistent encoding at 256^2), and nothing in it depends on
which source a token came from (no per-source embedding), which keeps attention invariant to
the order of the sources.
"""

from __future__ import annotations

import math

import torch


def sine_encoding_2d(
    h: int,
    w: int,
    dim: int,
    max_cycles: float = 16.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(h*w, dim) encoding: half the channels encode y, half x, as sin/cos at frequencies from
    0.5 to `max_cycles` periods per image side (geometric spacing)."""
    if dim % 4:
        raise ValueError(f"positional encoding dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    steps = torch.arange(quarter, device=device, dtype=dtype) / max(quarter - 1, 1)
    cycles = 0.5 * (2.0 * max_cycles) ** steps  # 0.5 ... max_cycles
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    ay = 2 * math.pi * ys[:, None] * cycles[None, :]  # (h, q)
    ax = 2 * math.pi * xs[:, None] * cycles[None, :]  # (w, q)
    ey = torch.cat([ay.sin(), ay.cos()], dim=-1)  # (h, 2q)
    ex = torch.cat([ax.sin(), ax.cos()], dim=-1)  # (w, 2q)
    enc = torch.cat([ey[:, None, :].expand(h, w, 2 * quarter), ex[None, :, :].expand(h, w, 2 * quarter)], dim=-1)
    return enc.reshape(h * w, dim)
