"""Synthetic-data generation speed: rendered frames per second per image size (one process),
and the time to write a small dataset in each format. Target: hundreds of frames/s at 64-256 px.

    PYTHONPATH=. python bench/data_synth.py [--frames 96]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from iwarp.data.synth import SynthConfig, make_synth_dataset, render_video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(f"{'size':>5} {'frames/s':>9}  (render only, best of 3 clips)")
    for size in args.sizes:
        render_video(0, 0, 0, 2, size)  # warm the per-identity texture cache and numpy
        best = 0.0
        for identity in range(3):
            t = time.perf_counter()
            render_video(0, identity, 1, args.frames, size)
            best = max(best, args.frames / (time.perf_counter() - t))
        print(f"{size:>5} {best:>9.0f}")
    print(f"\n{'format':>6} {'videos':>6} {'frames/s':>9}  (render + write, 128 px, 8 clips x 48 frames)")
    for fmt in ("png", "jpg", "mp4"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SynthConfig(num_identities=4, videos_per_identity=2, num_frames=48, image_size=128, format=fmt)
            t = time.perf_counter()
            make_synth_dataset(Path(tmp) / "d", cfg, progress=False)
            dt = time.perf_counter() - t
        print(f"{fmt:>6} {8:>6} {8 * 48 / dt:>9.0f}")
    print(f"\n{'workers':>7} {'frames/s':>9} {'vs 1':>6}  (render + write png, 256 px, 8 clips x 48 frames)")
    base = None
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SynthConfig(
                num_identities=4, videos_per_identity=2, num_frames=48, image_size=256, format="png", workers=workers
            )
            t = time.perf_counter()
            make_synth_dataset(Path(tmp) / "d", cfg, progress=False)
            fps = 8 * 48 / (time.perf_counter() - t)
        base = base or fps
        print(f"{workers:>7} {fps:>9.0f} {fps / base:>5.2f}x")


if __name__ == "__main__":
    main()
