"""Training batches of (k sources, 1 driving) frames, addressed by step number.

`batches[step]` is a pure function of (seed, step, rank): resuming at step s needs only s, and
a DataLoader can prefetch steps in parallel workers:

    loader = DataLoader(batches, sampler=range(start, total), batch_size=None, num_workers=n)

k is drawn per step from [k_min, k_max] using (seed, step) only, so every DDP rank uses the same
k at a step (equal tensor shapes, no rank waits on another); videos and frames are drawn with the
rank mixed in, so ranks see different data. Within an item the k sources and the driving frame
come from one video and are distinct frames.
"""

from __future__ import annotations

import numpy as np
import torch

from .augment import AugmentConfig, Draw, apply_frames, apply_points, draw
from .dataset import VideoDataset
from .landmarks import FLIP_GROUPS, group_targets

INFINITE = 2**62  # `len()` must be an int; an epoch-free stream of steps is "infinite"


class SourceDrivingBatches:
    """Map-style dataset over step numbers; `len()` is `num_steps` or practically infinite."""

    def __init__(
        self,
        ds: VideoDataset,
        batch_size: int,
        k_min: int = 1,
        k_max: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_steps: int | None = None,
        augment: AugmentConfig | None = None,
        landmarks: bool = False,
    ):
        """`landmarks`: batches also carry "landmarks" (B, k + 1, G, 2), the guide groups'
        targets (`iwarp.data.landmarks.GUIDE_GROUPS`) of every frame, augmented like the frames,
        NaN where the clip has none."""
        if not 1 <= k_min <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.ds = ds
        self.batch_size, self.k_min, self.k_max = int(batch_size), int(k_min), int(k_max)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_steps = num_steps
        self.augment = augment if augment is not None and augment.enabled else None
        self.landmarks = landmarks
        # Videos too short for k sources + 1 driving frame can only serve smaller k.
        self._frames = np.array([v.num_frames for v in ds.videos])
        if (self._frames >= self.k_max + 1).sum() == 0:
            raise ValueError(
                f"no video in {ds.root}/{ds.split} has the {self.k_max + 1} frames k_max="
                f"{self.k_max} sources + 1 driving need (longest: {self._frames.max()})"
            )

    def __len__(self) -> int:
        return INFINITE if self.num_steps is None else int(self.num_steps)

    def k_at(self, step: int) -> int:
        """The number of sources at `step` (same on every rank)."""
        rng = np.random.default_rng([self.seed, int(step), 0x6B])
        return int(rng.integers(self.k_min, self.k_max + 1))

    def indices_at(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(k, video indices (B,), frame indices (B, k+1), driving last) without reading pixels."""
        if step < 0 or step >= len(self):
            raise IndexError(f"step {step} outside [0, {len(self)})")
        k = self.k_at(step)
        rng = np.random.default_rng([self.seed, int(step), self.rank, self.world_size, 0x5D])
        eligible = np.flatnonzero(self._frames >= k + 1)
        videos = rng.choice(eligible, size=self.batch_size, replace=True)
        frames = np.stack([rng.choice(self._frames[v], size=k + 1, replace=False) for v in videos])
        return k, videos, frames

    def __getitem__(self, step: int) -> dict:
        k, videos, frames = self.indices_at(int(step))
        clips = [self.ds.read_frames(int(v), f.tolist()) for v, f in zip(videos, frames)]
        draws = [Draw()] * len(clips)
        if self.augment is not None:  # its own stream: the same videos and frames with or without it
            rng = np.random.default_rng([self.seed, int(step), self.rank, self.world_size, 0xA6])
            draws = [draw(self.augment, rng) for _ in clips]
            clips = [apply_frames(c, d) for c, d in zip(clips, draws)]
        batch = torch.stack(clips)
        item = {
            "sources": batch[:, :k].contiguous(),
            "driving": batch[:, k].contiguous(),
            "k": k,
            "video_index": torch.as_tensor(videos, dtype=torch.long),
            "frame_index": torch.as_tensor(frames, dtype=torch.long),
        }
        if self.landmarks:
            size = self.ds.image_size
            targets = [
                apply_points(group_targets(self.ds.read_landmarks(int(v), f.tolist())), d, size, FLIP_GROUPS)
                for v, f, d in zip(videos, frames, draws)
            ]
            item["landmarks"] = torch.from_numpy(np.stack(targets))
        return item

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume the same stream (the step is stored by training)."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "k_min": self.k_min,
            "k_max": self.k_max,
            "world_size": self.world_size,
            "num_videos": len(self.ds.videos),
        }

    def load_state_dict(self, state: dict) -> None:
        """Refuse to resume a stream that would differ from the checkpointed one.

        A different world size is allowed (elastic restarts): steps stay aligned, only which
        rank reads which video changes."""
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if k != "world_size" and state.get(k) != v}
        if diff:
            raise ValueError(f"sampler state differs from the checkpoint's (checkpoint, now): {diff}")
