"""Synthetic talking heads and animated photos: deterministic, varied, and built so that
several source frames see more of the subject than one."""

from __future__ import annotations

import numpy as np
import pytest

from iwarp.data.photos import PhotoConfig, make_photo_dataset
from iwarp.data.synth import (
    SynthConfig,
    _Atlas,
    head_surface,
    identity_params,
    make_synth_dataset,
    render_video,
    video_params,
)


def test_render_is_deterministic_and_varies_by_identity_and_video():
    a = render_video(0, 1, 0, 6, 64)
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_video(0, 1, 0, 6, 64))
    assert np.abs(a.astype(int) - render_video(0, 2, 0, 6, 64)).mean() > 10
    assert np.abs(a.astype(int) - render_video(0, 1, 1, 6, 64)).mean() > 10
    assert np.abs(a.astype(int) - render_video(1, 1, 0, 6, 64)).mean() > 10
    # it moves: consecutive frames differ, but smoothly
    diffs = np.abs(np.diff(a.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (diffs > 0.2).all() and (diffs < 25).all()


def _visible_texels(seed, identity, video, n, size):
    """Per frame, the set of head-texture cells drawn (opaque) in that frame."""
    ip, vp = identity_params(seed, identity), video_params(seed, identity, video, n, size)
    atlas = _Atlas(seed, identity, size)
    seen = []
    for t in range(n):
        _, _, _, lon, lat, alpha = head_surface(ip, vp, t, size)
        keep = alpha > 0.99
        cells = np.floor((lat[keep] + np.pi / 2) / np.pi * 32).astype(int) * 64 + np.floor(
            (lon[keep] + np.pi) / (2 * np.pi) * 64
        ).astype(int)
        seen.append(set(cells.tolist()))
    return seen, vp, atlas


@pytest.mark.parametrize("identity", [0, 1, 2])
def test_several_frames_show_more_of_the_head_than_one(identity):
    seen, vp, _ = _visible_texels(0, identity, 0, 48, 64)
    best_single = max(len(s) for s in seen)
    four = set().union(*[seen[t] for t in (0, 16, 32, 47)])
    union_all = set().union(*seen)
    # turning reveals surface (cheek marks, ears) that no single frame shows
    assert len(four) > 1.15 * best_single
    assert len(union_all) > 1.3 * best_single
    # the motion covers looking both ways, talking and blinking
    assert vp["yaw"].max() - vp["yaw"].min() > 0.5
    assert vp["mouth"].max() > 0.6 and vp["mouth"].min() < 0.15
    assert vp["blink"].max() == 1.0 and (vp["blink"] == 0).mean() > 0.5


def test_mouth_interior_only_visible_when_open():
    vp = video_params(0, 0, 0, 48, 64)
    frames = render_video(0, 0, 0, 48, 64).astype(int)
    open_t, closed_t = int(np.argmax(vp["mouth"])), int(np.argmin(vp["mouth"]))
    # teeth are near white: an open mouth shows more bright pixels low on the face than a closed one
    # (compared on texture, independent of where the head is in the frame)
    atlas = _Atlas(0, 0, 64)
    atlas.update(1.0, 0.0, (0, 0))
    opened = atlas.chw.copy()
    atlas.update(0.0, 0.0, (0, 0))
    closed = atlas.chw.copy()
    assert np.abs(opened - closed).max() > 0.5
    atlas.update(0.0, 1.0, (0, 0))  # blinking changes the eyes only
    assert np.abs(atlas.chw - closed).max() > 0.5
    assert frames[open_t].mean() != frames[closed_t].mean()


def test_synth_dataset_layout_and_formats(tmp_path):
    cfg = SynthConfig(num_identities=3, videos_per_identity=2, num_frames=5, image_size=48, format="jpg")
    df = make_synth_dataset(tmp_path / "d", cfg, progress=False)
    assert len(df) == 6 and set(df["split"]) == {"train", "test"}
    for row in df.itertuples():
        files = sorted((tmp_path / "d" / row.path).iterdir())
        assert [f.name for f in files] == [f"{i:06d}.jpg" for i in range(5)]
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synth_dataset(tmp_path / "d", cfg, progress=False)
    cfg.format = "mp4"
    df = make_synth_dataset(tmp_path / "d", cfg, overwrite=True, progress=False)
    assert all((tmp_path / "d" / p).suffix == ".mp4" for p in df["path"])
    cfg.workers = 2  # parallel processes write the very same files
    df2 = make_synth_dataset(tmp_path / "d2", cfg, progress=False)
    assert df2.equals(df)
    assert all((tmp_path / "d" / p).read_bytes() == (tmp_path / "d2" / p).read_bytes() for p in df["path"])
    assert not any((tmp_path / "d").glob("*/*.jpg")) and not any((tmp_path / "d").glob("*/*/*.jpg"))


def test_photo_dataset_is_real_photo_motion(tmp_path):
    cfg = PhotoConfig(photos=["astronaut", "chelsea"], videos_per_photo=1, num_frames=24, image_size=64)
    df = make_photo_dataset(tmp_path / "p", cfg, progress=False)
    assert list(df["identity"]) == ["astronaut", "chelsea"] and set(df["split"]) == {"test"}
    from iwarp.data import VideoDataset

    ds = VideoDataset(tmp_path / "p", "test", 64)
    clip = ds.read_frames(0, range(24))
    steps = (clip[1:] - clip[:-1]).abs().mean(dim=(1, 2, 3))
    assert (steps > 0.002).all() and (steps < 0.08).all()  # smooth, non-zero motion
    assert (clip[0] - clip[12]).abs().mean() > steps.mean()  # it drifts beyond one step
    assert clip[0].std() > 0.1  # a real photo, not a blank
    with pytest.raises(ValueError, match="unknown photo"):
        make_photo_dataset(tmp_path / "q", PhotoConfig(photos=["lena"]), progress=False)


def test_cli_synth_and_photos(tmp_path, capsys):
    from iwarp.data.cli import main as data_main
    from iwarp.data.manifest import read_manifest

    assert (
        data_main(
            [
                "synth",
                "--out",
                str(tmp_path / "s"),
                "--num-identities",
                "2",
                "--videos-per-identity",
                "1",
                "--num-frames",
                "3",
                "--image-size",
                "32",
                "--format",
                "mp4",
            ]
        )
        == 0
    )
    df = read_manifest(tmp_path / "s")
    assert len(df) == 2 and (df["format"] == "mp4").all() and (df["width"] == 32).all()
    assert (
        data_main(
            [
                "photos",
                "--out",
                str(tmp_path / "p"),
                "--photos",
                "camera",
                "--videos-per-photo",
                "1",
                "--num-frames",
                "3",
                "--split",
                "auto",
            ]
        )
        == 0
    )
    assert list(read_manifest(tmp_path / "p")["identity"]) == ["camera"]
    assert data_main(["info", "--data", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "train: 1 videos, 1 identities, 3 frames" in out
    with pytest.raises(SystemExit):  # argparse rejects a format that does not exist
        data_main(["synth", "--out", str(tmp_path / "x"), "--format", "gif"])
