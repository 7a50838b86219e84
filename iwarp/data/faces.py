"""Face track -> one stable crop box per clip (offline dlib HOG detector, no model download).

As in TalkingHead-1KH / VoxCeleb preprocessing, the crop is a single square box that covers the
face over the whole clip (the union of the per-frame detections, enlarged to include hair and
chin), not a per-frame box: a per-frame box would jitter and bake fake camera shake into the
data. Clips whose head travels far should be cut into shorter clips before preparing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

DETECT_SIDE = 480  # frames are scaled to this longer side: dlib's HOG finds faces >= ~80 px there


@dataclass(frozen=True)
class FaceTrack:
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (square, inside the frame) or None
    detections: list[tuple[float, float, float, float] | None]  # per sampled frame

    @property
    def rate(self) -> float:
        """Fraction of the sampled frames in which a face was found."""
        return sum(d is not None for d in self.detections) / max(len(self.detections), 1)


@functools.lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


def detect_face(frame: np.ndarray) -> tuple[float, float, float, float] | None:
    """The largest face in an RGB frame as (x0, y0, x1, y1) in frame pixels, or None."""
    h, w = frame.shape[:2]
    scale = DETECT_SIDE / max(h, w)
    small = np.asarray(
        Image.fromarray(frame)
        .convert("L")
        .resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    )
    detector = _detector()
    rects = detector(small, 0)
    if len(rects) == 0:
        rects = detector(small, 1)  # small faces: upsample once (4x slower, so only when needed)
    if len(rects) == 0:
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    return (r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale)


def track_box(
    detections: Sequence[tuple[float, float, float, float] | None], width: int, height: int, scale: float = 1.9
) -> tuple[int, int, int, int] | None:
    """One square box over the whole track.

    Union of the detections (10th/90th percentiles of the edges, so one false detection does
    not blow the box up), grown by (scale - 1) x the median face size, moved up a little (dlib's
    box stops at the eyebrows) and shifted/shrunk to stay inside the frame."""
    found = np.array([d for d in detections if d is not None], dtype=np.float64)
    if len(found) == 0:
        return None
    x0, y0 = np.percentile(found[:, 0], 10), np.percentile(found[:, 1], 10)
    x1, y1 = np.percentile(found[:, 2], 90), np.percentile(found[:, 3], 90)
    face = float(np.median(np.maximum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1])))
    side = max(x1 - x0, y1 - y0) + (scale - 1.0) * face
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * face
    return square_in_frame(cx, cy, side, width, height)


def square_in_frame(cx: float, cy: float, side: float, width: int, height: int) -> tuple[int, int, int, int]:
    side = int(round(min(side, width, height)))
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, x0 + side, y0 + side


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square (crop for non-face data)."""
    return square_in_frame(width / 2, height / 2, min(width, height), width, height)


def face_track(frames: Sequence[np.ndarray], scale: float = 1.9) -> FaceTrack:
    """Detect on the given (sampled) frames and fit one box over the track."""
    detections = [detect_face(f) for f in frames]
    h, w = frames[0].shape[:2]
    return FaceTrack(track_box(detections, w, h, scale), detections)
