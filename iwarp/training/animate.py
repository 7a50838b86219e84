"""`iwarp animate`: animate a set of source images with the motion of a driving video.

The sources are encoded once (`model.encode_sources`); each batch of driving frames then runs
only the per-frame path (`model.animate`). Output: H.264 mp4 (yuv420p, plays everywhere),
written to a temporary name and renamed when complete.

Relative motion (`relative=True`, FOMM's "relative" mode): instead of copying the driving
face's absolute keypoints (which transfers its shape and position too), the keypoints of the
FIRST source image are moved by how far the driving keypoints moved since the first driving
frame: kp = kp_source1 + (kp_driving_t - kp_driving_0), with the driving frame's strengths
(`iwarp.keypoints.relative_keypoints`; first-order models also compose the Jacobians, and
`adapt_movement_scale` scales the motion by the faces' size ratio, as FOMM does).
Give the source whose pose best matches the first driving frame first.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from iwarp.errors import InputError
from iwarp.keypoints import Keypoints, relative_keypoints

if TYPE_CHECKING:
    from iwarp.models import GeneratorModel

DEFAULT_FPS = 25.0


class AnimateError(InputError, ValueError):
    """Unreadable inputs or arguments that cannot work."""


def to_square(image: np.ndarray, size: int, what: str, warn: bool = True) -> np.ndarray:
    """Centre-crop to a square, then resize to `size` (warns: the user should know)."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
        if warn:
            warnings.warn(
                f"{what} is {w}x{h}: centre-cropped to {side}x{side} (the model needs square frames)", stacklevel=3
            )
    if image.shape[0] != size:
        if warn:
            warnings.warn(
                f"{what} is {image.shape[1]}x{image.shape[0]}: resized to the model's {size}x{size}", stacklevel=3
            )
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    return image


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """(3, size, size) float in [0, 1]; AnimateError when the file is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AnimateError(f"source image not found: {path}")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AnimateError(f"cannot read source image {path}: {exc}") from exc
    array = to_square(array, size, f"source {path.name}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


def video_fps(path: str | Path) -> float:
    from iwarp.data.video import probe

    try:
        fps = probe(path).fps
    except Exception:  # frame folders and odd containers: fall back to the default rate
        return DEFAULT_FPS
    return float(fps) if fps and fps > 0 else DEFAULT_FPS


def driving_frames(path: str | Path, size: int, max_frames: int | None = None) -> Iterator[torch.Tensor]:
    """Driving frames (3, size, size) in [0, 1], streamed (constant memory for long videos)."""
    from iwarp.data.video import VideoReadError, iter_frames

    path = Path(path)
    if not path.exists():
        raise AnimateError(f"driving video not found: {path}")
    try:
        for i, frame in enumerate(iter_frames(path)):
            if max_frames is not None and i >= max_frames:
                return
            frame = to_square(frame, size, f"driving video {path.name}", warn=i == 0)  # warn once
            yield torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div(255)
    except VideoReadError as exc:
        raise AnimateError(f"cannot read driving video: {exc}") from exc


def expand_cache(cache, n: int):
    """A batch-1 source cache viewed as batch n (no copy), for any NamedTuple of tensors."""
    return type(cache)(*(t.expand(n, *t.shape[1:]) if torch.is_tensor(t) else t for t in cache))


class AnimationSession:
    """A source set encoded once, then animated chunk by chunk: a video, or a live stream one
    frame at a time. Relative motion is anchored at the session's first frame (kept across
    calls until `reset_reference`), so a clip streamed in pieces moves as one."""

    def __init__(self, model: GeneratorModel, sources: torch.Tensor, adapt_movement_scale: bool = False):
        """`sources` (k, 3, H, W) in [0, 1]."""
        self.model, self.adapt_movement_scale = model, adapt_movement_scale
        self.device = next(model.parameters()).device
        with torch.no_grad():
            sources = sources.to(self.device)
            self.cache = model.encode_sources(sources[None])
            self.kp_source = model.detect_keypoints(sources[:1])  # the first source anchors relative motion
        self.kp_first: Keypoints | None = None

    def reset_reference(self) -> None:
        self.kp_first = None

    @torch.no_grad()
    def animate(
        self, driving: torch.Tensor, relative: bool = False, source_maps: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """driving (T, 3, H, W) -> prediction (T, 3, H, W) in [0, 1] and, with `source_maps`,
        each source's share of every output position (T, k + 1, h, w; the model's `source_mass`)."""
        driving = driving.to(self.device)
        cache = expand_cache(self.cache, driving.shape[0])
        kp = self.model.detect_keypoints(driving)
        if relative:
            if self.kp_first is None:
                self.kp_first = kp.map(lambda t: t[:1])
            kp = relative_keypoints(self.kp_source, kp, self.kp_first, self.adapt_movement_scale)
        prediction = self.model.animate(cache, driving_keypoints=kp)["prediction"].float().clamp(0, 1)
        maps = self.model.source_mass(cache, kp).float() if source_maps else None
        return prediction, maps


def animate_frames(
    model: GeneratorModel,
    sources: torch.Tensor,
    frames: Iterator[torch.Tensor],
    relative: bool = False,
    batch_size: int = 8,
    adapt_movement_scale: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (driving, prediction) pairs, (3, H, W) each; `sources` is (k, 3, H, W)."""
    session = AnimationSession(model, sources, adapt_movement_scale)  # encodes once for the whole video
    chunk: list[torch.Tensor] = []

    def run(chunk):
        driving = torch.stack(chunk)
        prediction, _ = session.animate(driving, relative)
        return zip(driving.cpu(), prediction.cpu())

    for frame in frames:
        chunk.append(frame)
        if len(chunk) == batch_size:
            yield from run(chunk)
            chunk = []
    if chunk:
        yield from run(chunk)


def _uint8(image: torch.Tensor) -> np.ndarray:
    return image.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def animate_file(
    checkpoint: str | Path,
    source_paths: list[str | Path],
    driving_path: str | Path,
    out_path: str | Path,
    relative: bool = False,
    adapt_movement_scale: bool = False,
    fps: float | None = None,
    max_frames: int | None = None,
    side_by_side: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, int]:
    """Animate and write the mp4; returns (path, number of frames)."""
    from tqdm import tqdm

    from iwarp.checkpoint import load_model, resolve_checkpoint
    from iwarp.data.video import VideoWriter
    from iwarp.training.distributed import pick_device

    if not source_paths:
        raise AnimateError("give at least one source image")
    if Path(out_path).suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise AnimateError(f"output must be an .mp4 file, got {out_path}")
    model = load_model(resolve_checkpoint(checkpoint)).to(pick_device(device))
    size = model.config.image_size
    sources = torch.stack([load_image(p, size) for p in source_paths])
    frames = driving_frames(driving_path, size, max_frames)
    writer = None
    try:
        pairs = animate_frames(
            model, sources, frames, relative=relative, batch_size=batch_size, adapt_movement_scale=adapt_movement_scale
        )
        for driving, pred in tqdm(pairs, desc="animate", unit="frame", disable=not progress, file=sys.stderr):
            picture = torch.cat([driving, pred], dim=-1) if side_by_side else pred
            if writer is None:
                writer = VideoWriter(out_path, fps or video_fps(driving_path))
            writer.write(_uint8(picture))
        if writer is None:
            raise AnimateError(f"driving video {driving_path} has no frames")
        return writer.close(), writer.frames
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def animate_cli(args) -> int:
    path, n = animate_file(
        args.checkpoint,
        args.source,
        args.driving,
        args.out,
        relative=args.relative,
        adapt_movement_scale=args.adapt_movement_scale,
        fps=args.fps,
        max_frames=args.max_frames,
        side_by_side=args.side_by_side,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"wrote {path} ({n} frames)")
    return 0
