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

Framing (`--frame face`, the default; `iwarp.framing`): the models are trained on face crops, so
each source photo is cropped around its face (the most confident one, or `--face-index`) as
`prepare` crops training videos, and the driving video's face is followed frame by frame (dlib
detections, One-Euro smoothed, the last box held while the face is lost) and cropped the same way
before its keypoints are detected. The animated face is then pasted back into the first source
photo at the photo's own resolution (shrunk first to `max_side` if larger): the model's output
is upsampled to the crop box bicubically (Pillow) and blended with a feathered mask, so every
pixel outside the box is the photo's. `--no-paste-back` writes the model-size crops alone;
`--frame none` centre-crops and resizes whole frames instead (inputs that are face crops already).
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from iwarp.errors import InputError
from iwarp.framing import MAX_OUTPUT_SIDE, FaceFollower, FramingError, IntBox, Smoothing
from iwarp.keypoints import Keypoints, relative_keypoints

if TYPE_CHECKING:
    from iwarp.models import GeneratorModel

DEFAULT_FPS = 25.0
Frame = Literal["face", "none"]


@dataclass(frozen=True)
class FramingOptions:
    frame: Frame = "face"  # face: crop every input around its face; none: centre square, resized
    paste_back: bool = True  # face: the animated face goes back into the first source photo
    face_index: int = 0  # which face of each source photo, most confident first
    max_side: int = MAX_OUTPUT_SIDE  # pasted-back output: the photo shrunk to this longer side first
    smoothing: Smoothing = field(default_factory=Smoothing)


@dataclass(frozen=True)
class Target:
    """Where the animated face goes back: the first source photo and its crop box."""

    photo: np.ndarray  # RGB uint8, at most max_side on its longer side
    box: IntBox
    faces: int  # faces found in the photo


@dataclass(frozen=True)
class Animation:
    path: Path
    frames: int
    width: int
    height: int
    target: Target | None = None  # frame=face
    held: int = 0  # driving frames whose face was lost (the last box held)


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


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; AnimateError when the file is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AnimateError(f"source image not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AnimateError(f"cannot read source image {path}: {exc}") from exc


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div(255)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """(3, size, size) float in [0, 1], the whole image centre-cropped (frame=none)."""
    return _tensor(to_square(read_image(path), size, f"source {Path(path).name}"))


def frame_sources(paths: list[str | Path], size: int, opts: FramingOptions) -> tuple[torch.Tensor, Target]:
    """(k, 3, size, size) face crops of the source photos, and the first photo's paste-back target."""
    from iwarp.framing import crop, fit_photo, frame_photo

    crops, target = [], None
    for i, path in enumerate(paths):
        image = read_image(path)
        fitted = fit_photo(image, opts.max_side)
        if i == 0 and fitted.shape != image.shape and opts.paste_back:
            h, w = image.shape[:2]
            warnings.warn(
                f"source {Path(path).name} is {w}x{h}: the output is {fitted.shape[1]}x{fitted.shape[0]} "
                f"(longer side at most {opts.max_side})",
                stacklevel=2,
            )
        try:
            framed = frame_photo(fitted, f"source image {path}", opts.face_index)
        except FramingError as exc:
            raise AnimateError(str(exc)) from None
        crops.append(_tensor(crop(fitted, framed.box, size)))
        if target is None:
            target = Target(fitted, framed.box, framed.found)
    assert target is not None  # paths is not empty
    return torch.stack(crops), target


def video_fps(path: str | Path) -> float:
    from iwarp.data.video import probe

    try:
        fps = probe(path).fps
    except Exception:  # frame folders and odd containers: fall back to the default rate
        return DEFAULT_FPS
    return float(fps) if fps and fps > 0 else DEFAULT_FPS


def _frames(path: Path, max_frames: int | None) -> Generator[np.ndarray, None, None]:
    from iwarp.data.video import VideoReadError, iter_frames

    if not path.exists():
        raise AnimateError(f"driving video not found: {path}")
    try:
        for i, frame in enumerate(iter_frames(path)):
            if max_frames is not None and i >= max_frames:
                return
            yield frame
    except VideoReadError as exc:
        raise AnimateError(f"cannot read driving video: {exc}") from exc


def follow_driving_face(
    path: str | Path, max_frames: int | None = None, smoothing: Smoothing | None = None
) -> FaceFollower:
    """A follower started on the driving video's first face (frames before it hold its box);
    AnimateError naming the file when no frame shows a face."""
    from iwarp.framing import first_face

    path = Path(path)
    frames = _frames(path, max_frames)
    first = next(frames, None)
    if first is None:
        raise AnimateError(f"driving video {path} has no frames")
    face = first_face(itertools.chain([first], frames))  # stops at the first frame with a face
    frames.close()
    if face is None:
        raise AnimateError(f"no face found in driving video {path} (dlib's frontal face detector)")
    follower = FaceFollower(first.shape[1], first.shape[0], video_fps(path), smoothing or Smoothing())
    follower.start(face)
    return follower


def driving_frames(
    path: str | Path, size: int, max_frames: int | None = None, follower: FaceFollower | None = None
) -> Iterator[torch.Tensor]:
    """Driving frames (3, size, size) in [0, 1], streamed (constant memory for long videos):
    cropped around the face `follower` tracks, or centre-cropped without one."""
    from iwarp.framing import crop

    path = Path(path)
    for i, frame in enumerate(_frames(path, max_frames)):
        if follower is not None:
            box = follower.step(frame)
            assert box is not None  # the follower was started on a face
            yield _tensor(crop(frame, box, size))
        else:
            yield _tensor(to_square(frame, size, f"driving video {path.name}", warn=i == 0))  # warn once


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


def compose(driving: torch.Tensor, pred: torch.Tensor, target: Target | None, side_by_side: bool) -> np.ndarray:
    """One output frame: the prediction (pasted back into the photo with a target), with the
    driving crop on its left for `side_by_side` (scaled to the output's height)."""
    from PIL import Image

    from iwarp.framing import paste_back

    picture = _uint8(pred) if target is None else paste_back(target.photo, _uint8(pred), target.box)
    if not side_by_side:
        return picture
    h = picture.shape[0]
    left = Image.fromarray(_uint8(driving)).resize((h, h), Image.Resampling.BICUBIC)
    return np.concatenate([np.asarray(left), picture], axis=1)


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sides: an odd photo loses its last row or column."""
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]


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
    framing: FramingOptions | None = None,
) -> Animation:
    """Animate and write the mp4 (framing: `FramingOptions`, faces by default)."""
    from tqdm import tqdm

    from iwarp.checkpoint import load_model, resolve_checkpoint
    from iwarp.data.video import VideoWriter
    from iwarp.training.distributed import pick_device

    opts = framing or FramingOptions()
    if not source_paths:
        raise AnimateError("give at least one source image")
    if Path(out_path).suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise AnimateError(f"output must be an .mp4 file, got {out_path}")
    if opts.face_index < 0:
        raise AnimateError(f"--face-index must be >= 0, got {opts.face_index}")
    model = load_model(resolve_checkpoint(checkpoint)).to(pick_device(device))
    size = model.config.image_size
    target = follower = None
    if opts.frame == "face":
        sources, target = frame_sources(source_paths, size, opts)
        follower = follow_driving_face(driving_path, max_frames, opts.smoothing)
    else:
        sources = torch.stack([load_image(p, size) for p in source_paths])
    frames = driving_frames(driving_path, size, max_frames, follower)
    paste = target if opts.paste_back else None
    writer = None
    try:
        pairs = animate_frames(
            model, sources, frames, relative=relative, batch_size=batch_size, adapt_movement_scale=adapt_movement_scale
        )
        for driving, pred in tqdm(pairs, desc="animate", unit="frame", disable=not progress, file=sys.stderr):
            picture = _even(compose(driving, pred, paste, side_by_side))
            if writer is None:
                writer = VideoWriter(out_path, fps or video_fps(driving_path))
            writer.write(picture)
        if writer is None:
            raise AnimateError(f"driving video {driving_path} has no frames")
        h, w = picture.shape[:2]
        return Animation(writer.close(), writer.frames, w, h, target, follower.held if follower else 0)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def animate_cli(args) -> int:
    framing = FramingOptions(frame=args.frame, paste_back=args.paste_back, face_index=args.face_index)
    result = animate_file(
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
        framing=framing,
    )
    print(f"wrote {result.path} ({result.frames} frames, {result.width}x{result.height})")
    if result.target is not None:
        name = Path(args.source[0]).name
        print(
            f"face of {name}: box {list(result.target.box)} (face {args.face_index} of {result.target.faces}); "
            f"driving face lost on {result.held} of {result.frames} frames (last box held)"
        )
    return 0
