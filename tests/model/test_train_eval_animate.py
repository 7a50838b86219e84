"""`iwarp evaluate` and `iwarp animate` on tiny trained checkpoints (implicit and baseline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from iwarp.checkpoint import CheckpointError, load_model, resolve_checkpoint
from iwarp.data import VideoDataset
from iwarp.data.manifest import read_manifest, write_manifest
from iwarp.data.video import read_video, write_video
from iwarp.training.animate import animate_frames
from iwarp.training.config import load_train_config
from iwarp.training.evaluate import EvalError, animation_picture, evaluate_checkpoint, frame_plan, spread_indices
from iwarp.training.loop import train
from tests.helpers.train import CHEAP_LOSSES, TINY, run_iwarp

pytestmark = pytest.mark.slow


# `data`: tests/conftest.py (one small synthetic dataset for the session).


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for kind in ("implicit", "baseline"):
        cfg = load_train_config(
            TINY,
            [
                f"data.root={data}",
                f"out_dir={tmp_path_factory.mktemp(kind)}",
                f"model.kind={kind}",
                "optim.steps=3",
                "logging.progress=false",
                "logging.images_every_steps=0",
                "threads=0",
                *CHEAP_LOSSES,
            ],
        )
        out[kind] = train(cfg).final_checkpoint
    return out


@pytest.fixture(scope="module")
def media(data, tmp_path_factory) -> dict[str, Path]:
    """Two source PNGs and a driving mp4 cut from the test split's videos."""
    folder = tmp_path_factory.mktemp("media")
    test_videos = sorted(p for p in (data / "test").iterdir())
    frames = read_video(test_videos[0])
    Image.fromarray(frames[0]).save(folder / "a.png")
    Image.fromarray(frames[8]).save(folder / "b.png")
    Image.fromarray(frames[3]).resize((100, 80)).save(folder / "wide.png")
    drive = read_video(test_videos[1])
    write_video(folder / "drive.mp4", drive, fps=25)
    (folder / "not-an-image.png").write_text("hello")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    return {
        "a": folder / "a.png",
        "b": folder / "b.png",
        "wide": folder / "wide.png",
        "drive": folder / "drive.mp4",
        "drive_frames": len(drive),
        "text": folder / "not-an-image.png",
        "broken": folder / "broken.mp4",
    }


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("kind", ["implicit", "baseline"])
def test_evaluate_reports_every_k_and_the_copy_floor(kind, checkpoints, data, tmp_path):
    out = tmp_path / "metrics.json"
    proc = run_iwarp(
        "evaluate",
        "--checkpoint",
        checkpoints[kind],
        "--data",
        data,
        "--sources",
        "1",
        "2",
        "4",
        "--out",
        out,
        "--copy-source",
        "--no-landmarks",
        "--no-fd",
        "--frame-stride",
        "4",
    )
    assert "sources k" in proc.stdout and "copy source" in proc.stdout  # the printed table
    report = json.loads(out.read_text())
    assert report["model_kind"] == kind and report["split"] == "test" and report["step"] == 3
    assert report["source_placement"] == "first" and report["driving_start"] == 4
    assert set(report["per_k"]) == {"1", "2", "4"}
    ds = VideoDataset(data, "test", 64)
    # every k is scored on the same driven frames: from frame max(k)=4 on, every 4th
    expected_frames = sum(len(range(4, v.num_frames, 4)) for v in ds.videos)
    for m in report["per_k"].values():
        assert m["frames"] == expected_frames
        assert 0 < m["l1"] < 1 and m["psnr"] > 0 and 0 <= m["lpips"] < 1.5
    # the floor, recomputed by hand: every driven frame predicted by the first frame
    diffs = []
    for i, v in enumerate(ds.videos):
        frames = ds.read_frames(i, list(range(v.num_frames)))
        diffs += [(frames[0] - frames[t]).abs().mean().item() for t in range(4, v.num_frames, 4)]
    assert report["copy_source"]["l1"] == pytest.approx(float(np.mean(diffs)), rel=1e-5)
    assert report["copy_source"]["frames"] == expected_frames


def test_spread_sources_cover_the_clip_and_every_k_drives_the_same_frames():
    assert spread_indices(16, 1) == [8] and spread_indices(16, 2) == [4, 12] and spread_indices(16, 4) == [2, 6, 10, 14]
    plan = frame_plan(16, [1, 2, 4], "spread", 1)
    union = {8, 4, 12, 2, 6, 10, 14}
    assert plan["sources"] == {1: [8], 2: [4, 12], 4: [2, 6, 10, 14]}
    # one driven list for all k: every frame that is no source of any k, none that is
    assert plan["driving"] == [t for t in range(16) if t not in union]
    assert frame_plan(16, [1, 2, 4], "spread", 2)["driving"] == [0, 3, 7, 11, 15]
    # `first` is FOMM's protocol as before: sources 0..k-1, driven frames from max(k) on
    assert frame_plan(16, [1, 2, 4], "first", 4) == {
        "sources": {1: [0], 2: [0, 1], 4: [0, 1, 2, 3]},
        "driving": [4, 8, 12],
    }
    # too short: fewer than k distinct spread sources, or nothing left to drive
    assert spread_indices(3, 4) == [0, 1, 2] and frame_plan(3, [4], "spread", 1) is None
    assert frame_plan(4, [1, 2, 4], "spread", 1) is None and frame_plan(4, [4], "first", 1) is None


def test_evaluate_with_spread_sources(checkpoints, data, tmp_path):
    out = tmp_path / "spread.json"
    proc = run_iwarp(
        "evaluate",
        "--checkpoint",
        checkpoints["implicit"],
        "--data",
        data,
        "--sources",
        "1",
        "2",
        "4",
        "--out",
        out,
        "--copy-source",
        "--no-landmarks",
        "--no-fd",
        "--source-placement",
        "spread",
    )
    assert "first source of k=1" in proc.stdout
    report = json.loads(out.read_text())
    assert report["source_placement"] == "spread" and report["driving_start"] is None
    ds = VideoDataset(data, "test", 64)
    diffs, driven = [], 0
    for i, v in enumerate(ds.videos):  # recomputed by hand from the formula in the docstring
        n = v.num_frames
        sources = {k: sorted({round(n * (2 * j + 1) / (2 * k)) for j in range(k)}) for k in (1, 2, 4)}
        assert len(sources[4]) == 4 and max(sources[4]) - min(sources[4]) >= n // 2  # spread over the clip
        taken = set().union(*sources.values())
        drive = [t for t in range(n) if t not in taken][::2]
        driven += len(drive)
        frames = ds.read_frames(i, list(range(n)))
        diffs += [(frames[sources[1][0]] - frames[t]).abs().mean().item() for t in drive]
    assert report["videos"] == len(ds.videos)
    for m in report["per_k"].values():
        assert m["frames"] == driven and 0 < m["l1"] < 1
    # the floor predicts the first source of the smallest k (the middle frame for k=1)
    assert report["copy_source"]["frames"] == driven
    assert report["copy_source"]["l1"] == pytest.approx(float(np.mean(diffs)), rel=1e-5)


def test_frame_plan_with_sources_from_another_clip():
    """`sources_from="train"`: the sources index a pool of train frames, every stride-th frame
    of the test clip is driven from frame 0, and no k may get fewer than k sources."""
    assert frame_plan(10, [1, 2, 4], "spread", 3, source_frames=16) == {
        "sources": {1: [8], 2: [4, 12], 4: [2, 6, 10, 14]},
        "driving": [0, 3, 6, 9],
    }
    assert frame_plan(5, [1, 2], "first", 1, source_frames=16) == {
        "sources": {1: [0], 2: [0, 1]},
        "driving": [0, 1, 2, 3, 4],
    }
    assert frame_plan(10, [4], "spread", 1, source_frames=3) is None  # too few train frames
    assert frame_plan(10, [4], "first", 1, source_frames=0) is None


@pytest.fixture(scope="module")
def personal_data(data, tmp_path_factory) -> Path:
    """A personal-style dataset from the synthetic one: the test identity's first clip is its
    train split, its second clip the test split (split by clip); plus a test clip of a train
    identity that has no train clip here (it must be skipped)."""
    root = tmp_path_factory.mktemp("personal")
    rows = read_manifest(data / "manifest.csv").to_dict("records")
    test_rows = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["id"])
    other = next(r for r in rows if r["split"] == "train")
    picked = [(test_rows[0], "train"), (test_rows[1], "test"), (other, "test")]
    out = []
    for row, split in picked:
        src = data / row["path"]
        dst = root / split / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        out.append({**row, "split": split, "path": f"{split}/{src.name}", "split_by": "clip"})
    import pandas as pd

    write_manifest(pd.DataFrame(out), root / "manifest.csv")
    return root


def test_evaluate_with_sources_from_the_train_split(checkpoints, personal_data):
    """The personal protocol: sources spread over the identity's train clip, the test clip only
    driven (every 2nd frame from 0); the floor copies the first source, a train frame."""
    from iwarp.checkpoint import load_model
    from iwarp.training.evaluate import predict_video

    with pytest.warns(UserWarning, match="1 video"):  # the clip whose identity has no train clip
        out = evaluate_checkpoint(
            checkpoints["implicit"],
            personal_data,
            [1, 2],
            stride=2,
            landmarks=False,
            fd=False,
            copy_source=True,
            progress=False,
            source_placement="spread",
            sources_from="train",
        )
    report = out["json"]
    assert report["sources_from"] == "train" and report["driving_start"] == 0
    assert report["videos"] == 1 and report["skipped_videos"] == 1
    train, test = VideoDataset(personal_data, "train", 64), VideoDataset(personal_data, "test", 64)
    (i,) = [j for j, v in enumerate(test.videos) if v.identity == train.videos[0].identity]
    pool = train.read_frames(0, list(range(train.videos[0].num_frames)))
    drive_idx = list(range(0, test.videos[i].num_frames, 2))
    drive = test.read_frames(i, drive_idx)
    first = spread_indices(len(pool), 1)[0]  # the middle train frame
    assert report["copy_source"]["frames"] == len(drive_idx) == report["per_k"]["1"]["frames"]
    floor = (pool[first : first + 1] - drive).abs().mean().item()
    assert report["copy_source"]["l1"] == pytest.approx(floor, rel=1e-5)
    # the model's k=1 row: the driven test frames rendered from that train frame
    model = load_model(checkpoints["implicit"]).eval()
    pred = predict_video(model, pool[first : first + 1], drive)
    assert report["per_k"]["1"]["l1"] == pytest.approx((pred - drive).abs().mean().item(), rel=1e-4)
    with pytest.raises(EvalError, match="--split test"):
        evaluate_checkpoint(checkpoints["implicit"], personal_data, [1], split="train", sources_from="train")


def test_evaluate_sources_from_train_needs_a_train_clip_of_the_identity(checkpoints, data):
    # the synthetic set is split by identity: no test identity has a train clip to take sources from
    with pytest.warns(UserWarning), pytest.raises(EvalError, match="train frames of their identity"):
        evaluate_checkpoint(
            checkpoints["implicit"], data, [1], landmarks=False, fd=False, progress=False, sources_from="train"
        )


def test_animation_picture_shows_sources_driving_and_output(checkpoints, data, tmp_path):
    """The README picture: k sources, a gap, then driving frames over the model's outputs."""
    path = animation_picture(checkpoints["implicit"], data, tmp_path / "anim.png", k=2, frames=4)
    ds = VideoDataset(data, "test", 64)
    n = ds.videos[0].num_frames
    sources = ds.read_frames(0, spread_indices(n, 2))
    with Image.open(path) as img:
        picture = np.asarray(img.convert("RGB"))
    tile, pad, label = 128, 2, 12  # 64 px frames drawn at 2x, 2 px gaps, a 12 px header
    assert picture.shape == (label + 2 * (tile + pad), 7 * (tile + pad), 3)
    first = (sources[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).repeat(2, 0).repeat(2, 1)
    assert np.abs(picture[label : label + tile, :tile].astype(int) - first).max() <= 1  # source 1, top left
    assert (picture[label + tile + pad :, :tile] == 255).all()  # nothing under the sources
    output = picture[label + tile + pad : label + 2 * tile + pad, 3 * (tile + pad) : 3 * (tile + pad) + tile]
    assert output.std() > 0  # the model drew something under the first driving frame
    with pytest.raises(EvalError, match="no test videos|cannot draw"):
        animation_picture(checkpoints["implicit"], tmp_path / "nowhere", tmp_path / "x.png")


def test_shipped_models_resolve_by_name(checkpoints, data, media, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    shipped = models / "iwarp-tiny-64.ckpt"
    shipped.write_bytes(Path(checkpoints["implicit"]).read_bytes())
    monkeypatch.setenv("IWARP_MODELS_DIR", str(models))  # the subprocesses inherit it
    assert resolve_checkpoint("iwarp-tiny-64") == shipped
    assert resolve_checkpoint(checkpoints["baseline"]) == checkpoints["baseline"]  # a file wins, as is
    with pytest.raises(CheckpointError, match=r"checkpoint not found: iwarp-faces-64 .*available: iwarp-tiny-64\)"):
        resolve_checkpoint("iwarp-faces-64")
    run_iwarp(
        "animate",
        "--frame",
        "none",  # synthetic heads: no face for dlib, frames are crops already
        "--checkpoint",
        "iwarp-tiny-64",
        "--source",
        media["a"],
        "--driving",
        media["drive"],
        "--out",
        tmp_path / "named.mp4",
        "--max-frames",
        "2",
    )
    assert len(decode(tmp_path / "named.mp4")) == 2
    run_iwarp(
        "evaluate",
        "--checkpoint",
        "iwarp-tiny-64",
        "--data",
        data,
        "--sources",
        "1",
        "--out",
        tmp_path / "m.json",
        "--no-landmarks",
        "--no-fd",
        "--max-videos",
        "1",
        "--frame-stride",
        "8",
    )
    assert json.loads((tmp_path / "m.json").read_text())["checkpoint"] == str(shipped)
    for cmd in (
        [
            "animate",
            "--frame",
            "none",
            "--source",
            media["a"],
            "--driving",
            media["drive"],
            "--out",
            tmp_path / "x.mp4",
        ],
        ["serve", "package", "--version", "1.0", "--out", tmp_path / "store"],
    ):
        proc = run_iwarp(*cmd, "--checkpoint", "nope", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr  # bad input
        assert "checkpoint not found: nope" in proc.stderr and "available: iwarp-tiny-64" in proc.stderr


def test_evaluate_all_metrics_on_the_floor(data, tmp_path):
    """Landmarks (AKD/MKR via dlib) and the VGG16 Frechet distance, without a checkpoint."""
    out = tmp_path / "floor.json"
    run_iwarp(
        "evaluate",
        "--copy-source-only",
        "--image-size",
        "64",
        "--data",
        data,
        "--sources",
        "1",
        "--out",
        out,
        "--max-videos",
        "1",
        "--frame-stride",
        "6",
    )
    floor = json.loads(out.read_text())["copy_source"]
    assert {"l1", "psnr", "lpips", "fd_vgg16", "akd", "mkr"} <= set(floor)
    assert floor["fd_vgg16"] is not None and floor["fd_vgg16"] >= 0
    assert floor["mkr"] is None or 0 <= floor["mkr"] <= 1


def test_evaluate_errors_are_clear(checkpoints, data, tmp_path):
    proc = run_iwarp(
        "evaluate",
        "--checkpoint",
        checkpoints["implicit"],
        "--data",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "m.json",
        check=False,
    )
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr  # bad input
    proc = run_iwarp(
        "evaluate", "--checkpoint", tmp_path / "missing.ckpt", "--data", data, "--out", tmp_path / "m.json", check=False
    )
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr


@pytest.mark.parametrize("kind", ["implicit", "baseline"])
def test_animate_writes_a_playable_mp4_of_the_driving_length(kind, checkpoints, media, tmp_path):
    out = tmp_path / "out.mp4"
    proc = run_iwarp(
        "animate",
        "--frame",
        "none",  # synthetic heads: no face for dlib, frames are crops already
        "--checkpoint",
        checkpoints[kind],
        "--source",
        media["a"],
        media["b"],
        "--driving",
        media["drive"],
        "--out",
        out,
    )
    assert f"({media['drive_frames']} frames, 64x64)" in proc.stdout
    frames = decode(out)
    assert len(frames) == media["drive_frames"] and frames[0].shape == (64, 64, 3)
    assert not list(tmp_path.glob(".*.partial"))


def test_animate_relative_side_by_side_and_frame_limit(checkpoints, media, tmp_path):
    out = tmp_path / "rel.mp4"
    run_iwarp(
        "animate",
        "--frame",
        "none",  # synthetic heads: no face for dlib, frames are crops already
        "--checkpoint",
        checkpoints["implicit"],
        "--source",
        media["a"],
        "--driving",
        media["drive"],
        "--out",
        out,
        "--relative",
        "--side-by-side",
        "--max-frames",
        "5",
        "--fps",
        "10",
    )
    frames = decode(out)
    assert len(frames) == 5 and frames[0].shape == (64, 128, 3)
    with av.open(str(out)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(10)


def test_animate_resizes_mismatched_sources_with_a_warning(checkpoints, media, tmp_path):
    proc = run_iwarp(
        "animate",
        "--frame",
        "none",  # synthetic heads: no face for dlib, frames are crops already
        "--checkpoint",
        checkpoints["implicit"],
        "--source",
        media["wide"],
        "--driving",
        media["drive"],
        "--out",
        tmp_path / "w.mp4",
        "--max-frames",
        "2",
    )
    assert "warning: source wide.png is 100x80: centre-cropped to 80x80" in proc.stderr
    assert "resized to the model's 64x64" in proc.stderr
    assert len(decode(tmp_path / "w.mp4")) == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        ("text", "cannot read source image"),
        ("missing-source", "source image not found"),
        ("broken", "cannot read driving video"),
        ("missing-driving", "driving video not found"),
    ],
)
def test_animate_rejects_unreadable_inputs(bad, message, checkpoints, media, tmp_path):
    source = {"text": media["text"], "missing-source": tmp_path / "nope.png"}.get(bad, media["a"])
    driving = {"broken": media["broken"], "missing-driving": tmp_path / "nope.mp4"}.get(bad, media["drive"])
    out = tmp_path / "x.mp4"
    proc = run_iwarp(
        "animate",
        "--frame",
        "none",  # synthetic heads: no face for dlib, frames are crops already
        "--checkpoint",
        checkpoints["implicit"],
        "--source",
        source,
        "--driving",
        driving,
        "--out",
        out,
        check=False,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr  # bad input
    assert not out.exists() and not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("kind", ["implicit", "baseline"])
def test_cached_sources_give_the_same_frames_as_full_forward(kind, checkpoints, data):
    model = load_model(checkpoints[kind])
    ds = VideoDataset(data, "test", 64)
    frames = ds.read_frames(0, list(range(6)))
    sources, driving = frames[:2], frames[2:]
    got = torch.stack([pred for _, pred in animate_frames(model, sources, iter(driving), batch_size=3)])
    with torch.no_grad():
        want = model(sources[None].expand(len(driving), -1, -1, -1, -1), driving).prediction
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["implicit", "baseline"])
def test_a_live_session_frame_by_frame_is_the_whole_clip(kind, checkpoints, data):
    """What `iwarp demo` streams: one frame per call against the session's cached sources, relative
    motion anchored at the session's first frame, gives the frames of the whole clip at once;
    `reset_reference` re-anchors; the source maps are the model's `source_attention`."""
    from iwarp.training.animate import AnimationSession

    model = load_model(checkpoints[kind])
    frames = VideoDataset(data, "test", 64).read_frames(0, list(range(6)))
    sources, driving = frames[:2], frames[2:]
    whole = torch.stack([p for _, p in animate_frames(model, sources, iter(driving), relative=True, batch_size=4)])
    session = AnimationSession(model, sources)
    live = [session.animate(frame[None], relative=True)[0] for frame in driving]
    torch.testing.assert_close(torch.cat(live), whole, atol=1e-5, rtol=1e-4)
    _, maps = AnimationSession(model, sources).animate(driving, source_maps=True)  # absolute motion
    expected = model.source_attention(sources[None].expand(len(driving), -1, -1, -1, -1), driving)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)
    session.reset_reference()  # the next frame is the new anchor: it maps to the source's own pose
    again, _ = session.animate(driving[2:3], relative=True)
    first, _ = AnimationSession(model, sources).animate(driving[2:3], relative=True)
    torch.testing.assert_close(again, first, atol=1e-6, rtol=0)
