"""Training-batch loading speed from the two dataset layouts, side by side in one run: frame
folders (png, what `iwarp data prepare` writes by default, and jpg) vs mp4 with the decoded-clip cache vs
mp4 without it (decode per access). Prints batches/s and the ratio to the png layout; this is
why prepare writes frame folders.

    PYTHONPATH=. python bench/data_loading.py [--size 256] [--frames 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from iwarp.data import SourceDrivingBatches, VideoDataset
from iwarp.data.synth import SynthConfig, make_synth_dataset


def rate(ds: VideoDataset, steps: int, batch: int, warm: bool) -> float:
    batches = SourceDrivingBatches(ds, batch, 1, 4, seed=0)
    if warm:  # fill the cache: steady state of a long run
        for i in range(len(ds.videos)):
            ds.read_frames(i, [0])
    t = time.perf_counter()
    for step in range(steps):
        batches[step]
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=100, help="frames per clip")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for fmt in ("png", "jpg", "mp4"):
            cfg = SynthConfig(
                num_identities=6,
                videos_per_identity=2,
                num_frames=args.frames,
                image_size=args.size,
                format=fmt,
                test_fraction=0.2,
            )
            roots[fmt] = make_synth_dataset(Path(tmp) / fmt, cfg, progress=False) is not None and Path(tmp) / fmt
        s = args.size
        results = {
            "png frame folders": rate(VideoDataset(roots["png"], "train", s), args.steps, args.batch, False),
            "jpg frame folders": rate(VideoDataset(roots["jpg"], "train", s), args.steps, args.batch, False),
            "mp4, cached clips (warm)": rate(VideoDataset(roots["mp4"], "train", s), args.steps, args.batch, True),
            "mp4, no cache": rate(
                VideoDataset(roots["mp4"], "train", s, cache_bytes=0), max(args.steps // 4, 2), args.batch, False
            ),
        }
    base = results["png frame folders"]
    print(f"{args.size} px, {args.frames}-frame clips, batch {args.batch}, k in 1..4, one thread")
    print(f"{'layout':<26} {'batches/s':>9} {'vs png':>7}")
    for name, r in results.items():
        print(f"{name:<26} {r:>9.2f} {r / base:>6.2f}x")


if __name__ == "__main__":
    main()
