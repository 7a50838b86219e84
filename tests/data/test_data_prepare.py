"""`iwarp data prepare` on real encoded videos: crop/resize, identities, splits, manifest facts,
corrupt inputs skipped with a reason, and a face crop that follows the face."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iwarp.data.cli import main as data_main
from iwarp.data.manifest import identity_leaks, read_manifest
from iwarp.data.prepare import PrepareConfig, prepare_dataset
from iwarp.data.video import probe, read_video, write_frames, write_video
from tests.helpers.data import moving_clip


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """<identity>/<clip> layout with mp4, mov, mkv and a jpg frame folder, all 4:3."""
    root = tmp_path_factory.mktemp("raw")
    write_video(root / "alice" / "talk1.mp4", moving_clip(12, 96, 72, 1), fps=20)
    write_video(root / "alice" / "talk2.mov", moving_clip(10, 96, 72, 2), fps=30)
    write_video(root / "bob" / "interview.mkv", moving_clip(11, 96, 72, 3), fps=25)
    write_video(root / "carol" / "a.mp4", moving_clip(12, 96, 72, 4), fps=25)
    write_frames(root / "dave" / "clip", moving_clip(9, 96, 72, 5), ext=".jpg")
    (root / "notes.txt").write_text("not a video")
    return root


def test_prepare_real_videos(raw, tmp_path):
    report = prepare_dataset(
        raw, tmp_path / "out", PrepareConfig(image_size=32, crop="center", test_fraction=0.3, fps=24.0), progress=False
    )
    df = read_manifest(tmp_path / "out")
    assert report.num_ok == 5 and list(df["status"]) == ["ok"] * 5
    assert report.ignored == ["notes.txt"]
    by_id = df.set_index("id")
    assert set(by_id.index) == {"alice__talk1", "alice__talk2", "bob__interview", "carol__a", "dave__clip"}
    assert by_id.loc["alice__talk1", "identity"] == by_id.loc["alice__talk2", "identity"] == "alice"
    assert by_id.loc["alice__talk2", "fps"] == pytest.approx(30) and by_id.loc["dave__clip", "fps"] == 24.0
    assert by_id.loc["bob__interview", "num_frames"] == 11
    assert (df["width"] == 32).all() and (df["height"] == 32).all()
    assert (df[["src_width", "src_height"]].to_numpy() == [96, 72]).all()
    # identity-safe split with both splits used
    assert identity_leaks(df) == {} and set(df["split"]) == {"train", "test"}
    # facts: motion is measured, hashes differ, frames on disk are the target size
    assert (df["motion_mean"] > 1).all() and df["content_hash"].is_unique
    assert (df["contrast_mean"] > 5).all() and (df["blur_score"] > 0).all()
    assert df["face_rate"].isna().all()  # not a face crop
    for row in df.itertuples():
        frames = read_video(tmp_path / "out" / row.path)
        assert frames.shape == (row.num_frames, 32, 32, 3)
    # the output is the centre square of the input, resized
    src = read_video(raw / "carol" / "a.mp4", [5])[0]
    want = np.asarray(Image.fromarray(src[:, 12:84]).resize((32, 32), Image.LANCZOS)).astype(int)
    got = read_video(tmp_path / "out" / by_id.loc["carol__a", "path"], [5])[0].astype(int)
    assert np.abs(got - want).mean() < 3
    assert not list((tmp_path / "out").rglob(".*partial"))


def test_corrupt_inputs_are_skipped_with_a_reason(raw, tmp_path):
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(raw, bad)
    (bad / "erin").mkdir()
    (bad / "erin" / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    good = (raw / "carol" / "a.mp4").read_bytes()
    (bad / "erin" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (bad / "erin" / "empty.mov").write_bytes(b"")
    write_frames(bad / "frank" / "frames", moving_clip(4, 96, 72, 9))
    (bad / "frank" / "frames" / "000002.png").write_bytes(b"this is text, not a png")

    report = prepare_dataset(bad, tmp_path / "out", PrepareConfig(image_size=32, crop="center"), progress=False)
    df = read_manifest(tmp_path / "out").set_index("id")
    skipped = dict(report.skipped)
    assert set(skipped) == {"erin__garbage", "erin__truncated", "erin__empty", "frank__frames"}
    assert report.num_ok == 5 and len(df) == 9  # nothing vanished from the manifest
    for vid in skipped:
        assert df.loc[vid, "status"] == "skipped" and "VideoReadError" in df.loc[vid, "reason"]
    assert "cannot open video" in skipped["erin__garbage"]
    assert "000002.png" in skipped["frank__frames"] and "unreadable frame" in skipped["frank__frames"]
    # skipped videos leave nothing half-written behind, and the report says what happened
    on_disk = {p.name for p in (tmp_path / "out").glob("*/*")}
    assert not on_disk & {"erin__garbage", "erin__truncated.mp4", "frank__frames", ".frank__frames.partial"}
    text = report.summary()
    assert "SKIPPED erin__truncated" in text and "prepared 5/9" in text
    from iwarp.data import VideoDataset  # the loader reads the prepared videos, ignoring skipped rows

    loaded = VideoDataset(tmp_path / "out", "train", 32).videos + VideoDataset(tmp_path / "out", "test", 32).videos
    assert sorted(v.id for v in loaded) == sorted(df.index[df["status"] == "ok"])


def test_identities_csv_sets_identity_and_split(raw, tmp_path):
    ids = tmp_path / "ids.csv"
    pd.DataFrame(
        {"path": ["alice/talk1.mp4", "bob/interview.mkv"], "identity": ["A", "B"], "split": ["test", "train"]}
    ).to_csv(ids, index=False)
    prepare_dataset(raw, tmp_path / "out", PrepareConfig(image_size=32, crop="center"), identities=ids, progress=False)
    df = read_manifest(tmp_path / "out").set_index("id")
    assert (df.loc["alice__talk1", "identity"], df.loc["alice__talk1", "split"]) == ("A", "test")
    assert (df.loc["bob__interview", "identity"], df.loc["bob__interview", "split"]) == ("B", "train")
    assert df.loc["alice__talk2", "identity"] == "alice"  # not in the CSV: folder name


def test_dataset_layout_input_keeps_ids_identities_and_splits(tmp_path):
    from iwarp.data.synth import SynthConfig, make_synth_dataset

    src = make_synth_dataset(
        tmp_path / "synth",
        SynthConfig(num_identities=3, videos_per_identity=2, num_frames=6, image_size=48, format="mp4"),
        progress=False,
    )
    prepare_dataset(
        tmp_path / "synth", tmp_path / "out", PrepareConfig(image_size=32, crop="center", format="mp4"), progress=False
    )
    out = read_manifest(tmp_path / "out")
    merged = src.merge(out, on="id", suffixes=("_src", ""))
    assert len(merged) == 6
    assert (merged["identity_src"] == merged["identity"]).all() and (merged["split_src"] == merged["split"]).all()
    info = probe(tmp_path / "out" / merged["path"][0])
    assert (info.width, info.num_frames) == (32, 6)
    from iwarp.data import VideoDataset

    assert len(VideoDataset(tmp_path / "out", "train", 32).videos) == 4


def test_parallel_workers_give_the_same_dataset(raw, tmp_path):
    cfg = PrepareConfig(image_size=32, crop="center")
    a = prepare_dataset(raw, tmp_path / "a", cfg, progress=False).manifest
    cfg.workers = 2
    b = prepare_dataset(raw, tmp_path / "b", cfg, progress=False).manifest
    assert list(a["content_hash"]) == list(b["content_hash"]) and list(a["split"]) == list(b["split"])


def test_face_crop_follows_the_face(tmp_path):
    """The astronaut's (real) face moves around the right half of a wide frame: the face crop is
    one square box over the whole track, around the face, unlike the centre crop."""
    from iwarp.data.photos import PHOTOS, animate_photo, load_photo
    from iwarp.framing import detect_face

    cx, cy, half = PHOTOS["astronaut"]
    face = animate_photo(load_photo("astronaut"), (cx, cy), half, 8, 160, seed=2, motion=0.5)
    canvas = np.zeros((8, 240, 400, 3), np.uint8)
    canvas[..., :] = (40, 60, 90)
    canvas[:, 50:210, 220:380] = face
    write_video(tmp_path / "raw" / "astro.mp4", canvas, fps=25)

    report = prepare_dataset(
        tmp_path / "raw", tmp_path / "out", PrepareConfig(image_size=64, crop="face", face_samples=4), progress=False
    )
    row = report.manifest.iloc[0]
    assert row["status"] == "ok" and row["face_rate"] >= 0.75
    x0, y0, x1, y1 = (int(row[c]) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    assert x1 - x0 == y1 - y0  # square, one box for the clip
    box_cx = (x0 + x1) / 2
    assert 250 < box_cx < 350  # the face is at x ~ 300; a centre crop would be at x = 200
    for frame in canvas[::3]:
        fx0, fy0, fx1, fy1 = detect_face(frame)
        assert x0 <= fx0 and fx1 <= x1 and y0 <= fy0 and fy1 <= y1  # the whole track is inside
    out = read_video(tmp_path / "out" / row["path"], [0])[0]
    assert detect_face(np.asarray(Image.fromarray(out).resize((256, 256)))) is not None


def test_cli_prepare_and_bad_params(raw, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  input: ignored/by/the/cli\n  image_size: 32\n  crop: center\n")
    assert (
        data_main(
            [
                "prepare",
                "--input",
                str(raw),
                "--out",
                str(tmp_path / "o"),
                "--params",
                str(params),
                "--format",
                "mp4",
                "--max-frames",
                "6",
            ]
        )
        == 0
    )
    assert "prepared 5/5" in capsys.readouterr().out
    assert read_manifest(tmp_path / "o")["num_frames"].max() == 6
    assert probe(next((tmp_path / "o").glob("*/*.mp4"))).width == 32
    params.write_text("prepare:\n  image_sise: 32\n")  # misspelt key: fails instead of being ignored
    capsys.readouterr()
    # the CLI's error contract (iwarp.errors): one `error:` line, exit 2 for bad input
    assert data_main(["prepare", "--input", str(raw), "--out", str(tmp_path / "p"), "--params", str(params)]) == 2
    assert "image_sise" in capsys.readouterr().err
    assert data_main(["prepare", "--input", str(raw), "--out", str(tmp_path / "o"), "--image-size", "32"]) == 2
    assert "overwrite" in capsys.readouterr().err
