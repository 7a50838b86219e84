"""Video IO: containers (mp4, mov, mkv, ...) through PyAV and folders of numbered frames.

Everything returns uint8 RGB arrays shaped (T, H, W, 3). Any file that cannot be decoded raises
`VideoReadError` naming the file and the reason, so callers (prepare, the dataset) can report
it instead of crashing on an FFmpeg traceback.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from PIL import Image

from iwarp.errors import InputError

if TYPE_CHECKING:  # only for annotations: av loads FFmpeg, so functions import it when called
    from av.container import OutputContainer
    from av.video.stream import VideoStream

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".flv", ".ts", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# What synth, photos and prepare write: png/jpg frame folders or mp4 files.
OutputFormat = Literal["png", "jpg", "mp4"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
DEFAULT_FPS = 25.0  # frame folders carry no rate; FOMM's layouts are 25 fps (VoxCeleb)


class VideoReadError(InputError, RuntimeError):
    """A video or frame folder that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    width: int
    height: int
    fps: float

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _natural_key(name: str) -> list:
    # "frame10.png" after "frame9.png": frame folders are rarely zero-padded consistently.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder in frame order (natural sort of the names)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file())


def is_video_entry(path: Path) -> bool:
    """A dataset entry: a video file or a folder of frames."""
    return is_video_file(path) or is_frame_folder(path)


# ---------------------------------------------------------------------------------------------
# reading


def _open(path: Path):
    import av  # PyAV: imported here so `import iwarp.data` does not load FFmpeg

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoReadError(f"{path}: cannot open video ({_reason(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: no video stream in the container")
    return container


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # FFmpeg messages repeat the path; keep the readable part.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text.split(":")[0].strip() or type(exc).__name__


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else DEFAULT_FPS


def probe(path: str | Path) -> VideoInfo:
    """Frame count, size and rate. Decodes the stream when the container has no frame count."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoReadError(f"{path}: frame folder holds no png/jpg frames")
        first = _read_image(files[0])
        return VideoInfo(len(files), first.shape[1], first.shape[0], DEFAULT_FPS)
    if not path.exists():
        raise VideoReadError(f"{path}: no such file")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
        fps = _stream_fps(stream)
    finally:
        container.close()
    if n <= 0 or width <= 0:  # some containers (webm, avi, gif) do not store a count
        n = 0
        for frame in iter_frames(path):
            height, width = frame.shape[:2]
            n += 1
    if n == 0:
        raise VideoReadError(f"{path}: video stream holds no frames")
    return VideoInfo(n, width, height, fps)


def iter_frames(path: str | Path) -> Generator[np.ndarray, None, None]:
    """Yield (H, W, 3) uint8 frames one at a time (constant memory for long videos)."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoReadError(f"{path}: frame folder holds no png/jpg frames")
        for f in files:
            yield _read_image(f)
        return
    import av

    container = _open(path)
    try:
        count = 0
        for frame in container.decode(video=0):
            count += 1
            yield frame.to_ndarray(format="rgb24")
        if count == 0:
            raise VideoReadError(f"{path}: video stream holds no frames")
    except av.FFmpegError as exc:
        raise VideoReadError(f"{path}: decoding failed ({_reason(exc)})") from exc
    finally:
        container.close()


def read_video(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """All frames (or the given indices, any order, repeats allowed) as (n, H, W, 3) uint8."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoReadError(f"{path}: frame folder holds no png/jpg frames")
        wanted = range(len(files)) if indices is None else indices
        _check_indices(path, list(wanted), len(files))
        return np.stack([_read_image(files[i]) for i in wanted])
    if indices is None:
        return np.stack(list(iter_frames(path)))
    targets = {int(i) for i in indices}
    found: dict[int, np.ndarray] = {}
    n = 0
    if targets and min(targets) >= 0:
        frames = iter_frames(path)
        try:
            for n, frame in enumerate(frames, start=1):
                if n - 1 in targets:
                    found[n - 1] = frame
                if n - 1 >= max(targets):
                    break
        finally:
            frames.close()  # closes the container when we stop early
    _check_indices(path, [i for i in indices if int(i) not in found], 0, n)
    return np.stack([found[int(i)] for i in indices])


def _check_indices(path: Path, indices: Sequence[int], n: int, seen: int | None = None) -> None:
    bad = [int(i) for i in indices if not 0 <= int(i) < n]
    if bad:
        has = f"{n} readable frames" if seen is None else f"only {seen} frames were decoded"
        raise IndexError(f"{path}: frame indices {bad[:5]} out of range ({has})")


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoReadError(f"{path}: unreadable frame ({exc.__class__.__name__}: {exc})") from exc


# ---------------------------------------------------------------------------------------------
# writing


# Encoder settings under which the same frames give the same bytes, whatever the process ran
# before, the number of worker processes or the machine's load (DVC hashes depend on it):
# * one thread everywhere: libavcodec, x264's frame/slice/lookahead threads and the swscale
#   RGB->YUV conversion PyAV runs with the codec's thread count;
# * no macroblock-tree pass (`no-mbtree`): x264's SIMD mbtree code reads uninitialised stack
#   memory (valgrind: "use of uninitialised value" inside x264_encoder_encode, gone with
#   no-mbtree or asm=0), so with it on the rate control, and every frame, varied from run to
#   run. Turning it off costs ~25-35% more bytes at the same crf and encodes ~1.6x faster;
#   asm=0 would keep the size but encode ~3x slower;
# * bitexact container and codec: no library version string in the file.
# serving/handler.py (packaged alone in the .mar) repeats these; a test ties the two copies.
H264_PRESET = "veryfast"
X264_PARAMS = "threads=1:sliced-threads=0:lookahead-threads=1:no-mbtree=1"
BITEXACT_CONTAINER = {"fflags": "+bitexact"}


def add_h264_stream(container: OutputContainer, width: int, height: int, fps: float, crf: int = 18) -> VideoStream:
    """A yuv420p H.264 stream on an output container, with the reproducible settings above."""
    from fractions import Fraction

    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.thread_count = 1  # PyAV's default is 0 (= one per core)
    stream.codec_context.thread_type = "NONE"
    stream.options = {
        "crf": str(crf),
        "preset": H264_PRESET,
        "threads": "1",
        "x264-params": X264_PARAMS,
        "flags": "+bitexact",
    }
    return stream


class VideoWriter:
    """Streaming H.264 writer (yuv420p, playable everywhere); the file appears under its real
    name only on a clean `close()`, so a crash or kill never leaves a half-written video.

    Reproducible: the same frames, fps and crf always give the same bytes (same PyAV/x264 build),
    in any process, with any number of workers, under any load; see `add_h264_stream`.

        with VideoWriter("out.mp4", fps=25) as w:
            for frame in frames: w.write(frame)
    """

    def __init__(self, path: str | Path, fps: float = DEFAULT_FPS, crf: int = 18):
        self.path = Path(path)
        self.fps, self.crf = fps, crf
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self._container: OutputContainer | None = None
        self._stream: VideoStream | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        if self._container is None or self._stream is None:  # set together: the first frame opens both
            height, width = frame.shape[:2]
            if width % 2 or height % 2:
                raise ValueError(f"H.264 needs even frame sizes, got {width}x{height}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(
                str(self.tmp), "w", format=_container_format(self.path), options=BITEXACT_CONTAINER
            )
            self._stream = add_h264_stream(self._container, width, height, self.fps, self.crf)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        if self._container is None or self._stream is None:
            raise ValueError(f"{self.path}: no frames written")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float = DEFAULT_FPS, crf: int = 18
) -> Path:
    """Encode RGB uint8 frames (T, H, W, 3) as H.264 mp4 (reproducible bytes, see `VideoWriter`).
    Sizes must be even."""
    if len(frames) == 0:
        raise ValueError("write_video needs at least one frame")
    with VideoWriter(path, fps, crf) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)


def _container_format(path: Path) -> str | None:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(path.suffix.lower())


def write_frames(
    folder: str | Path, frames: np.ndarray | Sequence[np.ndarray], ext: str = ".png", start: int = 0
) -> Path:
    """Write frames as `000000.png`, `000001.png`, ... (FOMM's frame-folder layout)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start=start):
        save_frame(folder / f"{i:06d}{ext}", frame)
    return folder


def save_frame(path: Path, frame: np.ndarray) -> None:
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if path.suffix.lower() == ".png":
        image.save(path, compress_level=1)  # ~5x faster than the default level, ~20% larger
    else:
        image.save(path, quality=95)
