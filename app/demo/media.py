"""What a person gives the demo, checked, and what it shows back.

Inputs are refused with one sentence that says what to change (`DemoInputError`), before any
request is sent, in both backends: more than 8 photos, a file that is not an image, photos of
different sizes (the server refuses those too: the model matches sources by position), a photo
without a face, a driving video that does not decode or runs longer than the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from iwarp.errors import InputError

# Source i's colour in the selection map; the last channel (the learned extra tokens: no
# source) is grey. Tableau-10 hues: distinct for the at most 8 sources.
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (188, 189, 34),
    ],
    dtype=np.float32,
)
NO_SOURCE = np.array([128, 128, 128], dtype=np.float32)


class DemoInputError(InputError, ValueError):
    """Something given to the demo cannot be used; the message says what to change."""


def _name(path: str | Path) -> str:
    return Path(path).name


# ----------------------------------------------------------------------------- inputs


def read_photo(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise DemoInputError(
            f"{_name(path)} is not an image this demo can read: use PNG, JPEG or WebP photos."
        ) from None


def load_photos(paths: Sequence[str | Path] | None, max_sources: int = 8, face_check: bool = True) -> list[np.ndarray]:
    """The source photos, checked: 1 to `max_sources`, readable, one size, a face in each."""
    paths = list(paths or [])
    if not paths:
        raise DemoInputError(f"Add 1 to {max_sources} source photos of one person.")
    if len(paths) > max_sources:
        raise DemoInputError(
            f"{len(paths)} photos given: the model takes 1 to {max_sources} photos of one person; "
            f"remove {len(paths) - max_sources}."
        )
    photos = [read_photo(p) for p in paths]
    sizes = {p.shape[:2] for p in photos}
    if len(sizes) > 1:
        listed = ", ".join(f"{_name(p)} {a.shape[1]}x{a.shape[0]}" for p, a in zip(paths, photos))
        raise DemoInputError(
            f"The photos have different sizes ({listed}): give photos of one size, framed alike "
            "(the model matches the sources by position)."
        )
    if face_check:
        from iwarp.framing import detect_face

        for i, (path, photo) in enumerate(zip(paths, photos), start=1):
            if detect_face(photo) is None:
                raise DemoInputError(
                    f"No face found in photo {i} ({_name(path)}): use photos in which the face is "
                    "clearly visible and turned to the camera."
                )
    return photos


def load_driving(path: str | Path | None, max_frames: int) -> tuple[list[np.ndarray], float]:
    """The driving video's frames (at most `max_frames`) and its frame rate."""
    from iwarp.data.video import VideoReadError, iter_frames
    from iwarp.training.animate import video_fps

    if not path:
        raise DemoInputError("Add a driving video: upload one or record it with the webcam.")
    frames: list[np.ndarray] = []
    try:
        for frame in iter_frames(path):
            if len(frames) == max_frames:
                fps = video_fps(path)
                raise DemoInputError(
                    f"The driving video is longer than {max_frames} frames ({max_frames / fps:.1f} s at "
                    f"{fps:g} fps): trim it or use a shorter clip."
                )
            frames.append(frame)
    except VideoReadError as exc:
        why = str(exc).split(": ", 1)[-1]
        raise DemoInputError(
            f"The driving video {_name(path)} cannot be decoded ({why}): it may be corrupt or truncated."
        ) from None
    return frames, video_fps(path)


def to_model(frames: Sequence[np.ndarray], side: int) -> list[np.ndarray]:
    """Centre squares at `side` px (the model's frames are square)."""
    from iwarp.training.animate import to_square

    return [to_square(f, side, "frame", warn=False) for f in frames]


# ----------------------------------------------------------------------------- outputs


def colours(n_sources: int) -> np.ndarray:
    """(k + 1, 3) float RGB: one per source, then grey for no source."""
    return np.concatenate([PALETTE[np.arange(n_sources) % len(PALETTE)], NO_SOURCE[None]])


def selection_map(maps: np.ndarray, side: int) -> np.ndarray:
    """Source maps (T, k+1, h, w), channels summing to 1 -> (T, side, side, 3) uint8: every pixel
    in the colour of the source it came from most (grey: no source), paler where that source's
    share is small (a blend of several)."""
    k1 = maps.shape[1]
    top = maps.argmax(1)  # (T, h, w)
    share = np.take_along_axis(maps, top[:, None], 1)[:, 0]
    confidence = np.sqrt(np.clip((share - 1 / k1) / (1 - 1 / k1), 0, 1))[..., None]  # 0: all alike, 1: one
    rgb = 255 + (colours(k1 - 1)[top] - 255) * (0.25 + 0.75 * confidence)
    small = np.clip(rgb, 0, 255).round().astype(np.uint8)
    # nearest: the map is the attention's token grid, its cells should stay visible
    return np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.NEAREST)) for f in small])


def legend(photos: Sequence[np.ndarray], side: int = 96) -> np.ndarray:
    """The sources in a row, each over a band of its map colour, then the grey of 'no source'."""
    band = max(8, side // 6)
    tiles = []
    for photo, colour in zip(to_model(photos, side), colours(len(photos))):
        tile = np.empty((side + band, side, 3), dtype=np.uint8)
        tile[:side], tile[side:] = photo, colour.astype(np.uint8)
        tiles.append(tile)
    none = np.full((side + band, side // 2, 3), 255, dtype=np.uint8)
    none[side:] = NO_SOURCE.astype(np.uint8)
    gap = np.full((side + band, 4, 3), 255, dtype=np.uint8)
    return np.concatenate([x for tile in [*tiles, none] for x in (tile, gap)][:-1], axis=1)


def upscale(frames: np.ndarray, side: int) -> np.ndarray:
    """(T, h, w, 3) -> (T, side, side, 3) for display (the model renders 64 px)."""
    if frames.shape[1] >= side:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.LANCZOS)) for f in frames])


def write_mp4(frames: np.ndarray, fps: float, path: Path) -> Path:
    """H.264 mp4 (iwarp's writer: yuv420p, plays in browsers)."""
    from iwarp.data.video import write_video

    return write_video(path, frames, fps=fps)
