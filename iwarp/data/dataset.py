"""The dataset layout and its loader.

    root/
      manifest.csv          optional: columns id, identity, split (+ num_frames, ... from prepare)
      train/  <id>.mp4 | <id>/000000.png ...
      test/   ...

An entry is a video file (mp4 and the usual containers) or a folder of numbered png/jpg frames
(FOMM's layout). Its id is the file stem or folder name; its identity comes from the manifest
when there is one, else it is the id (one identity per video).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .manifest import SPLITS, find_manifest, identity_leaks, read_manifest
from .video import is_video_entry, is_video_file, probe, read_video


@dataclass(frozen=True)
class VideoEntry:
    id: str
    identity: str
    path: Path
    num_frames: int
    split: str

    @property
    def is_frame_folder(self) -> bool:
        return self.path.is_dir()


class VideoDataset:
    """Videos of one split, read as float tensors in [0, 1] at `image_size` x `image_size`.

    Frame folders are read frame by frame (only the files asked for). Container videos are
    decoded once and kept, resized, in a per-process LRU cache of at most `cache_bytes`
    (clips larger than the budget are decoded up to the last frame asked for on every access).
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 64, cache_bytes: int = 512 << 20):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cached = 0
        self._landmarks: dict[int, np.ndarray] = {}  # sidecars are small: kept once read
        self.videos: list[VideoEntry] = self._scan()

    # -- discovery -------------------------------------------------------------------------
    def _scan(self) -> list[VideoEntry]:
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir}: missing split folder (a dataset root holds train/ and test/)")
        rows = self._manifest_rows()
        entries = []
        for path in sorted(split_dir.iterdir()):
            if path.name.startswith(".") or not is_video_entry(path):
                continue
            vid = path.stem if is_video_file(path) else path.name
            row = rows.pop(vid, {})
            identity = str(row.get("identity") or vid)
            n = row.get("num_frames")
            n = int(n) if n is not None and not (isinstance(n, float) and math.isnan(n)) else probe(path).num_frames
            entries.append(VideoEntry(vid, identity, path, n, self.split))
        if rows:
            warnings.warn(
                f"{self.root}: manifest lists {len(rows)} {self.split} video(s) not on disk, e.g. {sorted(rows)[:3]}",
                stacklevel=3,
            )
        if not entries:
            raise ValueError(f"{split_dir}: no videos (video files or folders of png/jpg frames)")
        return entries

    def _manifest_rows(self) -> dict[str, dict]:
        path = find_manifest(self.root)
        if path is None:
            return {}
        df = read_manifest(path)
        if "identity" in df.columns and "split" in df.columns:
            leaks = identity_leaks(df)
            if leaks:
                warnings.warn(f"{path}: identities in both splits: {sorted(leaks)[:5]}", stacklevel=4)
        df = df[df["status"] == "ok"]
        if "split" in df.columns:
            df = df[df["split"] == self.split]
        return {str(r["id"]): {k: v for k, v in r.items() if not _isnan(v)} for r in df.to_dict("records")}

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.videos)

    @property
    def identities(self) -> list[str]:
        return sorted({v.identity for v in self.videos})

    def read_frames(self, video_index: int, frame_indices: Sequence[int]) -> torch.Tensor:
        """Frames (n, 3, S, S) float32 in [0, 1] of video `video_index`, in the order asked."""
        return self.read_uint8(video_index, frame_indices).float().div_(255.0)

    def read_uint8(self, video_index: int, frame_indices: Sequence[int]) -> torch.Tensor:
        """Like `read_frames` but uint8 (n, 3, S, S): a quarter of the memory for batching."""
        entry = self.videos[video_index]
        idx = [int(i) for i in frame_indices]
        bad = [i for i in idx if not 0 <= i < entry.num_frames]
        if bad:
            raise IndexError(f"{entry.path}: frame indices {bad[:5]} out of range (0..{entry.num_frames - 1})")
        if entry.is_frame_folder:
            return self._resize(read_video(entry.path, idx))
        clip = self._cache.get(video_index)
        if clip is None:
            s = self.image_size
            if entry.num_frames * 3 * s * s > self.cache_bytes:  # too big to keep: partial decode
                return self._resize(read_video(entry.path, idx))
            clip = self._resize(read_video(entry.path))
            self._remember(video_index, clip)
        else:
            self._cache.move_to_end(video_index)
        if max(idx, default=0) >= clip.shape[0]:
            raise IndexError(
                f"{entry.path}: decodes to {clip.shape[0]} frames, fewer than the {entry.num_frames} the manifest says"
            )
        return clip[idx]

    def read_landmarks(self, video_index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """Landmarks (n, 68, 2) in [-1, 1] of the asked frames from the clip's sidecar
        (`iwarp.data.landmarks`), NaN where there are none (no sidecar, no face found)."""
        from .landmarks import NUM_LANDMARKS, load_landmarks

        marks = self._landmarks.get(video_index)
        if marks is None:
            entry = self.videos[video_index]
            loaded = load_landmarks(entry.path)
            if loaded is None or len(loaded) != entry.num_frames:
                loaded = np.full((entry.num_frames, NUM_LANDMARKS, 2), np.nan, np.float32)
            marks = self._landmarks[video_index] = loaded
        return marks[[int(i) for i in frame_indices]]

    def landmark_coverage(self) -> float:
        """Share of all frames of this split with landmarks (0: no sidecars)."""
        from .landmarks import coverage

        total = sum(v.num_frames for v in self.videos)
        found = sum(
            coverage(self.read_landmarks(i, range(v.num_frames))) * v.num_frames for i, v in enumerate(self.videos)
        )
        return found / max(total, 1)

    def _remember(self, key: int, clip: torch.Tensor) -> None:
        self._cache[key] = clip
        self._cached += clip.numel()
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.numel()

    def _resize(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        return x.contiguous()

    # DataLoader workers receive a pickled copy: send it without the decoded-frame cache.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"], state["_cached"] = OrderedDict(), 0
        return state

    def __repr__(self) -> str:
        return (
            f"VideoDataset({str(self.root)!r}, split={self.split!r}, image_size={self.image_size}, "
            f"videos={len(self.videos)}, identities={len(self.identities)})"
        )


def reconstruction_pairs(
    ds: VideoDataset,
    video_index: int,
    k: int,
    *,
    driving_start: int | None = None,
    stride: int = 1,
    max_driving: int | None = None,
) -> dict:
    """Evaluation split of one video: the first `k` frames are the sources, and every frame from
    `driving_start` (default `k`, i.e. every frame that is not a source) on, each `stride`-th,
    is a driving frame to reconstruct (FOMM's reconstruction protocol).

    To compare several k on the same driving frames, pass `driving_start=max(ks)`.
    Returns {"sources": (k,3,S,S), "driving": (n,3,S,S), "source_indices": [...],
    "driving_indices": [...]}.
    """
    n = ds.videos[video_index].num_frames
    start = k if driving_start is None else driving_start
    if k < 1 or start < k:
        raise ValueError(f"need k >= 1 and driving_start >= k, got k={k}, driving_start={start}")
    driving = list(range(start, n, stride))[:max_driving]
    if not driving:
        raise ValueError(f"{ds.videos[video_index].path}: {n} frames leave no driving frame after {start} (k={k})")
    source_idx = list(range(k))
    frames = ds.read_frames(video_index, source_idx + driving)
    return {"sources": frames[:k], "driving": frames[k:], "source_indices": source_idx, "driving_indices": driving}


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)
