"""Pictures people would rather see than read: sample grids, attention / source-selection
maps and loss curves, written as PNG (the tracking logger uploads the same files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

# Distinct colours for "which source won" maps; the last one marks the extra (learned) K/V.
_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [255, 225, 25],
        [145, 30, 180],
        [70, 240, 240],
        [245, 130, 48],
        [240, 50, 230],
        [210, 245, 60],
        [0, 128, 128],
    ],
    dtype=np.uint8,
)
_EXTRA_COLOR = np.array([40, 40, 40], dtype=np.uint8)
_LABEL_H = 12


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(array)


def _heat(values: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8 with matplotlib's magma colour map."""
    from matplotlib import colormaps  # lazy: only the picture helpers need matplotlib

    return (colormaps["magma"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def _compose(
    rows: Sequence[Sequence[np.ndarray | None]], labels: list[str], tile: tuple[int, int], pad: int = 2
) -> Image.Image:
    """Tiles (H, W, 3) in a grid with a header row of column labels; None leaves a gap.
    Small tiles are enlarged (nearest) to >= 128 px so 64 px runs stay readable."""
    scale = max(1, 128 // max(tile))
    if scale > 1:
        tile = (tile[0] * scale, tile[1] * scale)
        rows = [[None if t is None else t.repeat(scale, 0).repeat(scale, 1) for t in row] for row in rows]
    h, w = tile
    cols = max(len(r) for r in rows)
    canvas = np.full((_LABEL_H + len(rows) * (h + pad), cols * (w + pad), 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            if img is not None:
                y, x = _LABEL_H + r * (h + pad), c * (w + pad)
                canvas[y : y + h, x : x + w] = img
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for c, label in enumerate(labels):
        draw.text((c * (w + pad) + 1, 0), label, fill=(0, 0, 0))
    return picture


def sample_grid(sources: torch.Tensor, driving: torch.Tensor, prediction: torch.Tensor, path: str | Path) -> Path:
    """One row per sample: source 1..k | driving | prediction | |error| (x4 for visibility)."""
    k = sources.shape[1]
    rows = []
    for b in range(sources.shape[0]):
        error = (prediction[b] - driving[b]).abs().mul(4)
        rows.append(
            [to_uint8(s) for s in sources[b]] + [to_uint8(driving[b]), to_uint8(prediction[b]), to_uint8(error)]
        )
    labels = [f"src{i + 1}" for i in range(k)] + ["driving", "pred", "|err|x4"]
    return _save(_compose(rows, labels, (driving.shape[-2], driving.shape[-1])), path)


def animation_strip(
    sources: torch.Tensor,
    driving: torch.Tensor,
    prediction: torch.Tensor,
    path: str | Path,
    copy: torch.Tensor | None = None,
) -> Path:
    """The picture of what the model does (README, model card): the k sources, then the driving
    frames over the animated outputs (and, given `copy`, over the copy-the-source floor).
    sources (k, 3, H, W); driving, prediction, copy (n, 3, H, W)."""
    k, n = sources.shape[0], driving.shape[0]
    rows = [[to_uint8(s) for s in sources] + [None] + [to_uint8(d) for d in driving]]
    names = ["driving ->", "output ->"] + (["copy src 1 ->"] if copy is not None else [])
    for frames in [prediction] + ([copy] if copy is not None else []):
        rows.append([None] * (k + 1) + [to_uint8(p) for p in frames])
    labels = [f"source {i + 1}" for i in range(k)] + [""] + [f"frame {j + 1}" for j in range(n)]
    picture = _compose(rows, labels, (driving.shape[-2], driving.shape[-1]))
    draw = ImageDraw.Draw(picture)  # row names in the gap between the sources and the frames
    tile_w = (picture.width + 2) // (k + 1 + n)  # _compose's tile width + its 2 px pad
    tile_h = (picture.height - _LABEL_H) // len(rows)
    for row, name in enumerate(names):
        draw.text((k * tile_w + 4, _LABEL_H + row * tile_h + tile_h // 2 - 5), name, fill=(0, 0, 0))
    return _save(picture, path)


def attention_grid(
    sources: torch.Tensor,
    driving: torch.Tensor,
    prediction: torch.Tensor,
    maps: torch.Tensor,
    path: str | Path,
    last_label: str = "extraKV",
) -> Path:
    """The paper's Fig. 6: where each output pixel took its appearance from.

    `maps` (B, k+1, h, w) is the attention mass per source plus the extra K/V (last channel).
    Columns: each source with its attention mass blended over it, the extra-K/V mass, the
    arg-max "source selection" map (colour i = source i, dark = extra K/V), driving, prediction.
    For the explicit-flow baseline the maps are each source's weight in its average and the last
    channel is the occluded share the decoder fills in (`last_label="occluded"`).
    """
    B, k = sources.shape[:2]
    H, W = driving.shape[-2:]
    maps = maps.detach().float().cpu()
    rows = []
    for b in range(B):
        row = []
        for i in range(k):
            heat = _resize(_heat(maps[b, i].numpy()), (H, W))
            row.append((0.45 * to_uint8(sources[b, i]) + 0.55 * heat).astype(np.uint8))
        row.append(_resize(_heat(maps[b, k].numpy()), (H, W)))
        winner = maps[b].argmax(0).numpy()
        colors = np.concatenate([_PALETTE[np.arange(k) % len(_PALETTE)], _EXTRA_COLOR[None]], 0)
        row.append(_resize(colors[winner], (H, W), nearest=True))
        row += [to_uint8(driving[b]), to_uint8(prediction[b])]
        rows.append(row)
    labels = [f"attn{i + 1}" for i in range(k)] + [last_label, "select", "driving", "pred"]
    return _save(_compose(rows, labels, (H, W)), path)


def loss_curves(
    history: list[dict[str, Any]], path: str | Path, skip: tuple[str, ...] = ("step", "time")
) -> Path | None:
    """One panel per logged scalar against step (lr, throughput and norms included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in history for k in r if k not in skip})
    if not keys:
        return None
    cols = min(4, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _save(picture: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
