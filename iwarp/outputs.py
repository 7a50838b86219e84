"""What the generators return. Plain tensors only, so exported graphs can return them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

from iwarp.keypoints import Keypoints


@dataclass
class ModelOutput:
    """`prediction` (B, 3, H, W) in [0, 1]; keypoints of the driving frame (xy (B, N, 2),
    strength (B, N)) and of the sources (xy (B, k, N, 2), strength (B, k, N)).
    `occlusion` is the baseline's per-source occlusion map (B, k, 1, h, w); None for implicit
    warping. Both attribute and key access work: `out.prediction == out["prediction"]`.
    """

    prediction: torch.Tensor
    driving_keypoints: Keypoints
    source_keypoints: Keypoints
    occlusion: torch.Tensor | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())
