"""`iwarp data validate` (Great Expectations 1.x): a good dataset passes and gets Data Docs and a
result JSON; identity leaks, wrong sizes, too-short, blank/frozen videos, low face rates and
skipped inputs each fail with the expectation named, and the failing videos listed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iwarp.data.cli import main as data_main
from iwarp.data.manifest import read_manifest, write_manifest
from iwarp.data.prepare import PrepareConfig, prepare_dataset
from iwarp.data.validate import ValidationConfig, validate_dataset
from iwarp.data.video import write_video
from tests.helpers.data import moving_clip

SIZE = 32


def _raw(root, clips):
    for rel, frames in clips.items():
        write_video(root / rel, frames, fps=25)
    return root


def _prepare(raw, out, identities=None):
    prepare_dataset(
        raw,
        out,
        PrepareConfig(image_size=SIZE, crop="center", test_fraction=0.34, seed=1),
        identities=identities,
        progress=False,
    )
    return out


def _cfg(**kw):
    return ValidationConfig(**{"image_size": SIZE, "min_frames": 9, **kw})


def _checks(report):
    return {f.check for f in report.failures}


@pytest.fixture(scope="module")
def raw_good(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_good")
    return _raw(
        root,
        {
            f"{who}/clip{i}.mp4": moving_clip(10, 48, 48, seed=10 * j + i)
            for j, who in enumerate(["ann", "ben", "cat"])
            for i in range(2)
        },
    )


@pytest.fixture(scope="module")
def good(raw_good, tmp_path_factory):
    return _prepare(raw_good, tmp_path_factory.mktemp("good") / "data")


def test_good_dataset_passes_writes_docs_and_result(good, tmp_path, capsys):
    docs, result = tmp_path / "docs", tmp_path / "result.json"
    rc = data_main(
        [
            "validate",
            "--data",
            str(good),
            "--docs",
            str(docs),
            "--result",
            str(result),
            "--image-size",
            str(SIZE),
            "--min-frames",
            "9",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "validation PASSED" in out
    payload = json.loads(result.read_text())
    assert payload["success"] is True and payload["failures"] == [] and payload["videos"] == 6
    assert set(payload["suites"]) == {"iwarp_videos", "iwarp_inputs", "iwarp_frames"}
    assert all(s["success"] for s in payload["suites"].values())
    index = (docs / "index.html").read_text()
    for suite in ("iwarp_videos", "iwarp_inputs", "iwarp_frames"):
        assert suite in index
    pages = list((docs / "validations").rglob("*.html"))
    assert len(pages) == 3
    assert "identity_splits" in (docs / "expectations" / "iwarp_videos.html").read_text()


def test_identity_leak_fails(raw_good, tmp_path, capsys):
    ids = tmp_path / "ids.csv"  # ann's two clips forced into different splits
    pd.DataFrame(
        {"path": ["ann/clip0.mp4", "ann/clip1.mp4"], "identity": ["ann", "ann"], "split": ["train", "test"]}
    ).to_csv(ids, index=False)
    data = _prepare(raw_good, tmp_path / "data", identities=ids)
    rc = data_main(["validate", "--data", str(data), "--image-size", str(SIZE)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "[identity_leak] expect_column_values_to_be_in_set(identity_splits)" in out
    assert "ann__clip0" in out and "ann__clip1" in out
    payload = json.loads((tmp_path / "data_validation" / "validation.json").read_text())
    assert payload["success"] is False
    (leak,) = payload["failures"]
    assert leak["check"] == "identity_leak" and sorted(leak["videos"]) == ["ann__clip0", "ann__clip1"]
    assert (tmp_path / "data_validation" / "data_docs" / "index.html").is_file()  # docs on failure too


def test_wrong_size_fails(good, tmp_path):
    report = validate_dataset(good, _cfg(image_size=48), docs_dir=tmp_path / "d1")
    assert not report.success and _checks(report) == {"wrong_size"}
    assert {f.expectation for f in report.failures} == {
        "expect_column_values_to_be_in_set(width)",
        "expect_column_values_to_be_in_set(height)",
    }
    assert all(len(f.videos) == 6 and set(f.values) == {SIZE} for f in report.failures)
    # a frame replaced on disk by a wrong-sized one is caught by the frames read back
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    victim = read_manifest(bad).iloc[0]
    Image.new("RGB", (20, 20)).save(bad / victim["path"] / "000000.png")
    report = validate_dataset(bad, _cfg(), docs_dir=tmp_path / "d2")
    assert _checks(report) == {"wrong_size"}
    assert all(f.suite == "iwarp_frames" and f.videos == [victim["id"]] for f in report.failures)


def test_too_short_fails(tmp_path):
    raw = _raw(
        tmp_path / "raw",
        {
            "ann/a.mp4": moving_clip(12, 48, 48, 1),
            "ben/b.mp4": moving_clip(5, 48, 48, 2),
            "cat/c.mp4": moving_clip(12, 48, 48, 3),
        },
    )
    data = _prepare(raw, tmp_path / "data")
    report = validate_dataset(data, _cfg())
    assert _checks(report) == {"too_short"}
    (short,) = report.failures
    assert short.expectation == "expect_column_values_to_be_between(num_frames)"
    assert short.videos == ["ben__b"] and short.values == [5]
    assert "[too_short]" in report.summary() and "ben__b=5" in report.summary()


@pytest.mark.slow
def test_blank_and_frozen_videos_fail(tmp_path):
    still = moving_clip(1, 48, 48, 7)
    raw = _raw(
        tmp_path / "raw",
        {
            "ann/a.mp4": moving_clip(10, 48, 48, 1),
            "ben/grey.mp4": np.full((10, 48, 48, 3), 128, np.uint8),
            "cat/still.mp4": np.repeat(still, 10, axis=0),
        },
    )
    report = validate_dataset(_prepare(raw, tmp_path / "data"), _cfg())
    failures = {f.check: f for f in report.failures}
    assert set(failures) == {"blank_video", "frozen_video"}
    assert failures["blank_video"].videos == ["ben__grey"]
    assert sorted(failures["frozen_video"].videos) == ["ben__grey", "cat__still"]


@pytest.mark.slow
def test_face_rate_is_checked_only_for_face_datasets(good, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(good, data)
    df = read_manifest(data)
    df["face_rate"] = [0.1, 1.0, 0.9, 0.95, 1.0, 0.85]
    write_manifest(df, data / "manifest.csv")
    assert validate_dataset(data, _cfg(face_dataset=False)).success
    report = validate_dataset(data, _cfg(face_dataset=True, min_face_rate=0.8))
    assert _checks(report) == {"low_face_rate"}
    assert report.failures[0].videos == [df["id"][0]]


@pytest.mark.slow
def test_skipped_inputs_are_reported_and_gated(raw_good, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_good, raw)
    (raw / "dan").mkdir()
    (raw / "dan" / "broken.mp4").write_bytes(b"\x00" * 4000)
    data = _prepare(raw, tmp_path / "data")
    report = validate_dataset(data, _cfg(max_skipped_fraction=0.1))  # 1 of 7 = 14% > 10%
    assert _checks(report) == {"skipped_inputs"}
    assert report.failures[0].videos == ["dan__broken"]
    assert report.skipped_inputs[0][0] == "dan__broken" and "cannot open" in report.skipped_inputs[0][1]
    assert validate_dataset(data, _cfg(max_skipped_fraction=0.2)).success
    payload = json.loads(report.result_path.read_text())
    assert payload["skipped_inputs"][0]["id"] == "dan__broken"


def test_unprepared_dataset_fails_on_required_columns(tmp_path):
    from iwarp.data.synth import SynthConfig, make_synth_dataset

    make_synth_dataset(
        tmp_path / "synth",
        SynthConfig(num_identities=2, videos_per_identity=1, num_frames=9, image_size=SIZE),
        progress=False,
    )
    report = validate_dataset(tmp_path / "synth", _cfg())
    failures = {f.check: f for f in report.failures}
    assert "missing columns ['content_hash', 'contrast_mean', 'motion_mean']" in failures["required_columns"].observed
    assert "does not exist" in failures["blank_video"].observed
    assert "iwarp data prepare" in report.summary()
