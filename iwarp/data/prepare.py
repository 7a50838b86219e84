"""`iwarp data prepare`: raw videos -> the dataset layout, cropped, resized and described.

Input: a folder searched recursively for video files (mp4, mov, mkv, avi, webm, ...) and frame
folders (a folder of png/jpg). Identities, in order of precedence: an identities CSV
(`path` or `id`, `identity`, optional `split`), the input's own manifest (e.g. `iwarp data synth`
output), the top-level folder of a nested input (`<identity>/<video>.mp4`, VoxCeleb style), else
the video itself. Splits: given ones (CSV, manifest or an input already in train/ + test/) are
kept, otherwise whole identities are assigned to train/test at random (seeded).

Output: `<out>/{train,test}/<id>/000000.png ...` frame folders by default (lossless, and a
training step reads only the k+1 frames it needs instead of decoding a clip; mp4 output is an
option for disk-bound users), plus `<out>/manifest.csv` with one row per input video, including
those skipped (status "skipped" with the reason), so nothing vanishes silently.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from iwarp.framing import CROP_SCALE, center_box, face_track

from .manifest import SPLITS, assign_splits, find_manifest, read_manifest, write_manifest
from .options import opt
from .video import (
    DEFAULT_FPS,
    OUTPUT_FORMATS,
    OutputFormat,
    VideoReadError,
    VideoWriter,
    is_frame_folder,
    is_video_file,
    iter_frames,
    probe,
    save_frame,
)

if TYPE_CHECKING:  # pandas loads in the functions that use it (a slow import)
    import pandas as pd

CropMode = Literal["face", "center"]
MIN_DECODED = 0.9  # share of the container's frame count that must decode (no_face.mp4: 95 of 98)


@dataclass
class PrepareConfig:
    image_size: int = opt(256, "output frame side (256 default, 512 supported)")
    crop: CropMode = opt("face", "face: one square box over the dlib face track; center: the largest centred square")
    crop_scale: float = opt(CROP_SCALE, "face box side / detected face size (hair and chin included)")
    face_samples: int = opt(
        32,
        "frames per clip the face detector looks at (spread evenly); with face "
        "crop, frames between a face-less sample and its neighbours are dropped",
    )
    format: OutputFormat = opt("png", "png/jpg frame folders (fast random access) or mp4 (compact)")
    test_fraction: float = opt(0.2, "share of identities drawn into test/ (when no split is given)")
    seed: int = opt(0, "seed of the identity split")
    fps: float = opt(DEFAULT_FPS, "rate recorded for frame-folder inputs (they carry none)")
    max_frames: int = opt(0, "keep at most this many frames per clip (0: all)")
    workers: int = opt(1, "parallel processes")


@dataclass
class InputEntry:
    path: Path
    id: str
    identity: str | None = None
    split: str | None = None
    split_by: str | None = None  # "clip": an explicit split of one person's clips (no leak)


@dataclass
class PrepareReport:
    out: Path
    manifest: pd.DataFrame
    seconds: float = 0.0
    ignored: list[str] = field(default_factory=list)

    @property
    def num_ok(self) -> int:
        return int((self.manifest["status"] == "ok").sum()) if len(self.manifest) else 0

    @property
    def skipped(self) -> list[tuple[str, str]]:
        bad = self.manifest[self.manifest["status"] != "ok"]
        return list(zip(bad["id"], bad["reason"]))

    def summary(self) -> str:
        df = self.manifest
        ok = df[df["status"] == "ok"]
        lines = [f"prepared {self.num_ok}/{len(df)} videos into {self.out} in {self.seconds:.1f} s"]
        for split in SPLITS:
            part = ok[ok["split"] == split]
            lines.append(
                f"  {split}: {len(part)} videos, {part['identity'].nunique()} identities, "
                f"{int(part['num_frames'].sum()) if len(part) else 0} frames"
            )
        for vid, reason in self.skipped:
            lines.append(f"  SKIPPED {vid}: {reason}")
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} non-video file(s), e.g. {self.ignored[:3]}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# discovery


def discover(input_dir: str | Path, identities_csv: str | Path | None = None) -> tuple[list[InputEntry], list[str]]:
    """Input entries (videos and frame folders) with identity/split when known, and the paths of
    files ignored as not video-like."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    layout = any((root / s).is_dir() for s in SPLITS)  # already train/ + test/
    entries: list[InputEntry] = []
    ignored: list[str] = []

    def walk(folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                if is_frame_folder(path) and not any(p.is_dir() for p in path.iterdir()):
                    entries.append(_entry(root, path, layout))
                else:
                    walk(path)
            elif is_video_file(path):
                entries.append(_entry(root, path, layout))
            elif path.name not in ("manifest.csv", "manifest.parquet") and path.suffix.lower() not in (
                ".png",
                ".jpg",
                ".jpeg",
            ):
                ignored.append(str(path.relative_to(root)))

    walk(root)
    _dedupe_ids(entries)
    known = _known_identities(root, identities_csv)
    for e in entries:
        rel = str(e.path.relative_to(root))
        info = known.get(rel) or known.get(e.id) or known.get(e.path.stem) or {}
        e.identity = info.get("identity") or e.identity
        e.split = info.get("split") or e.split
        e.split_by = info.get("split_by") or e.split_by
    return entries, ignored


def _entry(root: Path, path: Path, layout: bool) -> InputEntry:
    rel = path.relative_to(root)
    parts = list(rel.with_suffix("").parts) if path.is_file() else list(rel.parts)
    if layout and parts[0] in SPLITS:  # a dataset layout: keep ids and splits
        return InputEntry(path, "__".join(parts[1:]), identity=None, split=parts[0])
    identity = parts[0] if len(parts) > 1 else None  # <identity>/<video...>
    return InputEntry(path, "__".join(parts), identity=identity)


def _dedupe_ids(entries: list[InputEntry]) -> None:
    seen: dict[str, int] = {}
    for e in entries:
        if e.id in seen:  # clip.mp4 beside clip.mov
            seen[e.id] += 1
            e.id = f"{e.id}_{e.path.suffix.lstrip('.') or seen[e.id]}"
        seen.setdefault(e.id, 0)


def _known_identities(root: Path, identities_csv) -> dict[str, dict]:
    import pandas as pd

    known: dict[str, dict] = {}
    manifest = find_manifest(root)
    tables = []
    if manifest is not None:
        tables.append(read_manifest(manifest))
    if identities_csv is not None:
        path = Path(identities_csv)
        if not path.is_file():
            raise FileNotFoundError(f"identities file not found: {path}")
        table = pd.read_csv(path, dtype=str)
        if "identity" not in table.columns or not ({"path", "id"} & set(table.columns)):
            raise ValueError(f"{path}: needs an identity column and a path or id column, has {list(table.columns)}")
        tables.append(table)  # later tables win
    for table in tables:
        for row in table.to_dict("records"):
            info = {k: str(row[k]) for k in ("identity", "split", "split_by") if k in row and isinstance(row[k], str)}
            if info.get("split_by") not in (None, "identity", "clip"):
                raise ValueError(f"split_by must be identity or clip, got {info['split_by']!r} for {row}")
            if info.get("split") and info["split"] not in SPLITS:
                raise ValueError(f"split must be train or test, got {info['split']!r} for {row}")
            for key in ("path", "id"):
                if isinstance(row.get(key), str):
                    known[row[key]] = info
    return known


# ---------------------------------------------------------------------------------------------
# one video


def _sample_indices(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist()))


def face_frames(n: int, samples: list[int], found: list[bool]) -> np.ndarray:
    """(n,) bool: frames whose sampled neighbours on both sides show a face (title cards,
    cutaways and other face-less spans of a real video are dropped, and so is the stretch between
    a face sample and a face-less one: a cut can fall anywhere in it). All True when no sample
    shows a face, so a clip without any face stays whole and fails validation on its face rate
    instead of vanishing."""
    found_arr = np.asarray(found, bool)
    if not found_arr.any():
        return np.ones(n, bool)
    idx = np.asarray(samples)
    frames = np.arange(n)
    before = np.clip(np.searchsorted(idx, frames, side="right") - 1, 0, len(idx) - 1)  # last sample <= frame
    after = np.clip(np.searchsorted(idx, frames, side="left"), 0, len(idx) - 1)  # first sample >= frame
    return found_arr[before] & found_arr[after]


def process_video(entry: InputEntry, split_dir: Path, cfg: PrepareConfig) -> dict:
    """Crop/resize one video into `split_dir`; returns its manifest row (`path`: the entry's
    name in `split_dir`). Never raises for bad input: the row then has status "skipped" and
    the reason."""
    row: dict = {"id": entry.id, "identity": entry.identity, "source": str(entry.path)}
    tmp = split_dir / f".{entry.id}.partial"
    writer = None
    try:
        info = probe(entry.path)
        fps = cfg.fps if entry.path.is_dir() else info.fps
        n = min(info.num_frames, cfg.max_frames) if cfg.max_frames > 0 else info.num_frames
        row.update(src_width=info.width, src_height=info.height, fps=fps)
        # 1) the crop box (needs a first pass over sampled frames for the face track)
        face_rate = float("nan")
        keep = np.ones(n, bool)
        if cfg.crop == "face":
            want = _sample_indices(n, cfg.face_samples)
            wanted = set(want)
            sampled = [f for i, f in zip(range(n), iter_frames(entry.path)) if i in wanted]
            track = face_track(sampled, cfg.crop_scale)
            found = [d is not None for d in track.detections]
            keep = face_frames(n, want[: len(found)], found)
            kept_found = [f for i, f in zip(want, found) if keep[i]]
            face_rate = sum(kept_found) / max(len(kept_found), 1)  # over the frames kept
            box = track.box or center_box(info.width, info.height)
        elif cfg.crop == "center":
            box = center_box(info.width, info.height)
        else:
            raise ValueError(f"crop must be face or center, got {cfg.crop!r}")
        # 2) crop, resize, write and measure, streaming (constant memory for long clips)
        stats = _Stats()
        s = cfg.image_size
        shutil.rmtree(tmp, ignore_errors=True)
        if cfg.format == "mp4":
            writer = VideoWriter(split_dir / f"{entry.id}.mp4", fps=fps)
        else:
            tmp.mkdir(parents=True)
        count = decoded = 0
        for i, frame in zip(range(n), iter_frames(entry.path)):
            decoded += 1
            if frame.shape[:2] != (info.height, info.width):
                raise VideoReadError(
                    f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, the video is {info.width}x{info.height}"
                )
            if not keep[i]:
                continue
            out = np.asarray(Image.fromarray(frame).resize((s, s), Image.Resampling.LANCZOS, box=box))
            stats.add(out)
            if writer is not None:
                writer.write(out)
            else:
                save_frame(tmp / f"{count:06d}.{cfg.format}", out)
            count += 1
        if decoded < MIN_DECODED * n:  # container counts are estimates: a few frames short is normal
            raise VideoReadError(f"{entry.path}: decoded {decoded} of {n} frames")
        if writer is not None:
            final = writer.close()
        else:
            final = split_dir / entry.id
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        row.update(
            status="ok",
            reason="",
            path=final.name,
            format=cfg.format,
            num_frames=count,
            width=s,
            height=s,
            duration_s=count / fps if fps else 0.0,
            face_rate=face_rate,
            faceless_frames=int(decoded - count),
            **stats.result(),
            crop_x0=box[0],
            crop_y0=box[1],
            crop_x1=box[2],
            crop_y1=box[3],
        )
    except (VideoReadError, IndexError, OSError, ValueError, RuntimeError) as exc:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        reason = str(exc).replace(f"{entry.path}: ", "").replace(f"{entry.path}/", "").replace("\n", " ")
        row.update(status="skipped", reason=f"{type(exc).__name__}: {reason}")
    return row


class _Stats:
    """Running per-video statistics of the prepared frames (0-255 scale)."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.brightness, self.contrast, self.blur, self.motion = [], [], [], []
        self.prev = None

    def add(self, frame: np.ndarray) -> None:
        from scipy.ndimage import laplace

        self.hash.update(frame.tobytes())
        gray = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        self.brightness.append(float(gray.mean()))
        self.contrast.append(float(gray.std()))
        self.blur.append(float(laplace(gray).var()))  # variance of the Laplacian: low = blurry
        if self.prev is not None:
            self.motion.append(float(np.abs(gray - self.prev).mean()))  # ~0: a frozen clip
        self.prev = gray

    def result(self) -> dict:
        return {
            "content_hash": self.hash.hexdigest(),
            "brightness_mean": float(np.mean(self.brightness)),
            "contrast_mean": float(np.mean(self.contrast)),
            "blur_score": float(np.mean(self.blur)),
            "motion_mean": float(np.mean(self.motion)) if self.motion else 0.0,
        }


# ---------------------------------------------------------------------------------------------
# the whole dataset


def prepare_dataset(
    input_dir: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    identities: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    import pandas as pd
    from tqdm import tqdm

    cfg = cfg or PrepareConfig()
    if cfg.format not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {cfg.format!r}")
    if cfg.image_size < 16 or (cfg.format == "mp4" and cfg.image_size % 2):
        raise ValueError(f"image_size {cfg.image_size} too small (or odd, for mp4)")
    start = time.perf_counter()
    entries, ignored = discover(input_dir, identities)
    if not entries:
        raise ValueError(f"{input_dir}: no videos or frame folders found")
    out, src = Path(out).resolve(), Path(input_dir).resolve()
    if out == src or src in out.parents:
        raise ValueError(f"the output folder {out} must lie outside the input folder {src}")
    _clear_out(out, overwrite)
    for e in entries:
        e.identity = e.identity or e.id
    # Videos go to a staging folder first: splits are drawn over the identities that have at
    # least one readable video, so unreadable inputs cannot leave a split empty.
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    jobs = [(e, staging) for e in entries]
    bar = tqdm(total=len(jobs), desc="prepare", unit="video", disable=not progress)
    rows = []
    if cfg.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(cfg.workers) as pool:
            for row in pool.map(process_video, *zip(*jobs), [cfg] * len(jobs)):
                rows.append(row)
                bar.update()
    else:
        for e, folder in jobs:
            rows.append(process_video(e, folder, cfg))
            bar.update()
    bar.close()

    # splits: whole identities; a given split wins (validation flags the leaks it may cause)
    ok = [e for e, row in zip(entries, rows) if row["status"] == "ok"]
    given = {e.identity: e.split for e in entries if e.split}
    drawn = assign_splits([e.identity for e in ok if e.identity not in given], cfg.test_fraction, cfg.seed)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    for e, row in zip(entries, rows):
        assert e.identity is not None  # filled in for every entry above
        row["split"] = e.split or given.get(e.identity) or drawn.get(e.identity, "")
        row["split_by"] = e.split_by or "identity"
        if row["status"] == "ok":
            name = Path(row["path"]).name
            (staging / name).rename(out / row["split"] / name)
            row["path"] = f"{row['split']}/{name}"
    shutil.rmtree(staging)
    df = pd.DataFrame(rows)
    for col in ("num_frames", "width", "height", "src_width", "src_height", "crop_x0", "crop_y0", "crop_x1", "crop_y1"):
        if col in df.columns:  # skipped rows leave gaps: keep the counts integers anyway
            df[col] = df[col].astype("Int64")
    write_manifest(df, out / "manifest.csv")
    return PrepareReport(out, df, time.perf_counter() - start, ignored)


def _clear_out(out: Path, overwrite: bool) -> None:
    existing = [p.name for p in (out / "train", out / "test", out / "manifest.csv") if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset ({', '.join(existing)}); pass --overwrite")
    for name in existing:
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
