"""`iwarp data stats`: dataset metrics for `dvc metrics`, plot tables for `dvc plots`, and a
contact sheet of sample frames (a picture says more about a dataset than its numbers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import SPLITS, read_manifest
from .options import opt


@dataclass
class StatsConfig:
    hist_bins: int = opt(10, "bins of the frames-per-video histogram")
    sample_videos: int = opt(12, "rows of the contact sheet")
    sample_frames: int = opt(6, "frames per contact-sheet row")
    thumb_size: int = opt(96, "contact-sheet cell size in pixels")


def dataset_stats(data: str | Path, out: str | Path, cfg: StatsConfig | None = None) -> dict:
    """Write metrics.json, frames_hist.csv, per_video.csv and samples.png into `out`."""
    import pandas as pd

    cfg = cfg or StatsConfig()
    root, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(root)
    ok = manifest[manifest["status"] == "ok"]
    metrics: dict = {
        "videos": int(len(ok)),
        "identities": int(ok["identity"].nunique()),
        "frames": int(ok["num_frames"].sum()),
        "skipped": int((manifest["status"] != "ok").sum()),
    }
    for split in SPLITS:
        part = ok[ok["split"] == split]
        metrics[split] = {
            "videos": int(len(part)),
            "identities": int(part["identity"].nunique()),
            "frames": int(part["num_frames"].sum()),
        }
    if len(ok):
        metrics["frames_per_video"] = {
            "min": int(ok["num_frames"].min()),
            "mean": float(ok["num_frames"].mean()),
            "max": int(ok["num_frames"].max()),
        }
    for col in ("duration_s", "brightness_mean", "contrast_mean", "blur_score", "motion_mean", "face_rate"):
        if col in ok.columns and ok[col].notna().any():
            metrics[col] = round(float(ok[col].mean()), 4)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    counts, edges = (
        np.histogram(ok["num_frames"].astype(float), bins=cfg.hist_bins) if len(ok) else (np.zeros(0, int), np.zeros(1))
    )
    pd.DataFrame(
        {
            "num_frames": [f"{edges[i]:.0f}-{edges[i + 1]:.0f}" for i in range(len(counts))],
            "videos": list(map(int, counts)),
        }
    ).to_csv(out / "frames_hist.csv", index=False)
    cols = [
        c
        for c in (
            "id",
            "identity",
            "split",
            "num_frames",
            "brightness_mean",
            "contrast_mean",
            "blur_score",
            "motion_mean",
            "face_rate",
        )
        if c in ok.columns
    ]
    ok[cols].to_csv(out / "per_video.csv", index=False)
    contact_sheet(root, ok, out / "samples.png", cfg)
    return metrics


def contact_sheet(root: Path, videos, path: Path, cfg: StatsConfig) -> Path | None:
    """Rows of frames spread over each sampled video, labelled with its id and split."""
    from PIL import Image, ImageDraw

    from .video import read_video

    rows = (
        videos.sample(n=min(cfg.sample_videos, len(videos)), random_state=0).sort_values("id")
        if len(videos)
        else videos
    )
    if not len(rows):
        return None
    t, label_h = cfg.thumb_size, 14
    sheet = Image.new("RGB", (t * cfg.sample_frames, (t + label_h) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows.to_dict("records")):
        y = r * (t + label_h)
        draw.text((2, y + 1), f"{row['id']} ({row['split']}, {int(row['num_frames'])} frames)", fill="black")
        n = int(row["num_frames"])
        picks = np.linspace(0, n - 1, num=min(cfg.sample_frames, n)).round().astype(int).tolist()
        try:
            frames = read_video(root / str(row["path"]), picks)
        except Exception as exc:  # show the problem in the picture instead of failing the stage
            draw.text((2, y + label_h + 2), f"unreadable: {exc}"[:80], fill="red")
            continue
        for c, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame).resize((t, t), Image.Resampling.BILINEAR), (c * t, y + label_h))
    sheet.save(path)
    return path
