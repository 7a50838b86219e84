"""`iwarp evaluate` and `iwarp animate` on tiny trained checkpoints (implicit and baseline)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from iwarp.checkpoint import load_model
from iwarp.data import VideoDataset
from iwarp.data.video import read_video, write_video
from iwarp.training.animate import animate_frames
from iwarp.training.config import load_train_config
from iwarp.training.loop import train

from train_utils import CHEAP_LOSSES, TINY, make_synth, run_iwarp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for kind in ("implicit", "baseline"):
        cfg = load_train_config(TINY, [
            f"data.root={data}", f"out_dir={tmp_path_factory.mktemp(kind)}", f"model.kind={kind}", "optim.steps=3",
            "logging.progress=false", "logging.images_every_steps=0", "threads=0", *CHEAP_LOSSES,
        ])
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
    return {"a": folder / "a.png", "b": folder / "b.png", "wide": folder / "wide.png", "drive": folder / "drive.mp4",
            "drive_frames": len(drive), "text": folder / "not-an-image.png", "broken": folder / "broken.mp4"}


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("kind", ["implicit", "baseline"])
def test_evaluate_reports_every_k_and_the_copy_floor(kind, checkpoints, data, tmp_path):
    out = tmp_path / "metrics.json"
    proc = run_iwarp("evaluate", "--checkpoint", checkpoints[kind], "--data", data, "--sources", "1", "2", "4",
                     "--out", out, "--copy-source", "--no-landmarks", "--no-fd", "--frame-stride", "4")
    assert "sources k" in proc.stdout and "copy source" in proc.stdout  # the printed table
    report = json.loads(out.read_text())
    assert report["model_kind"] == kind and report["split"] == "test" and report["step"] == 3
    assert set(report["per_k"]) == {"1", "2", "4"}
    ds = VideoDataset(data, "test", 64)
    # every k is scored on the same driven frames: from frame max(k)=4 on, every 4th
    expected_frames = sum(len(range(4, v.num_frames, 4)) for v in ds.videos)
    for k, m in report["per_k"].items():
        assert m["frames"] == expected_frames
        assert 0 < m["l1"] < 1 and m["psnr"] > 0 and 0 <= m["lpips"] < 1.5
    # the floor, recomputed by hand: every driven frame predicted by the first frame
    diffs = []
    for i, v in enumerate(ds.videos):
        frames = ds.read_frames(i, list(range(v.num_frames)))
        diffs += [(frames[0] - frames[t]).abs().mean().item() for t in range(4, v.num_frames, 4)]
    assert report["copy_source"]["l1"] == pytest.approx(float(np.mean(diffs)), rel=1e-5)
    assert report["copy_source"]["frames"] == expected_frames


def test_evaluate_all_metrics_on_the_floor(data, tmp_path):
    """Landmarks (AKD/MKR via dlib) and the VGG16 Frechet distance, without a checkpoint."""
    out = tmp_path / "floor.json"
    run_iwarp("evaluate", "--copy-source-only", "--image-size", "64", "--data", data, "--sources", "1",
              "--out", out, "--max-videos", "1", "--frame-stride", "6")
    floor = json.loads(out.read_text())["copy_source"]
    assert {"l1", "psnr", "lpips", "fd_vgg16", "akd", "mkr"} <= set(floor)
    assert floor["fd_vgg16"] is not None and floor["fd_vgg16"] >= 0
    assert floor["mkr"] is None or 0 <= floor["mkr"] <= 1


def test_evaluate_errors_are_clear(checkpoints, data, tmp_path):
    proc = run_iwarp("evaluate", "--checkpoint", checkpoints["implicit"], "--data", tmp_path / "nowhere",
                     "--out", tmp_path / "m.json", check=False)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_iwarp("evaluate", "--checkpoint", tmp_path / "missing.ckpt", "--data", data,
                     "--out", tmp_path / "m.json", check=False)
    assert proc.returncode == 1 and "checkpoint not found" in proc.stderr


@pytest.mark.parametrize("kind", ["implicit", "baseline"])
def test_animate_writes_a_playable_mp4_of_the_driving_length(kind, checkpoints, media, tmp_path):
    out = tmp_path / "out.mp4"
    proc = run_iwarp("animate", "--checkpoint", checkpoints[kind], "--source", media["a"], media["b"],
                     "--driving", media["drive"], "--out", out)
    assert f"({media['drive_frames']} frames)" in proc.stdout
    frames = decode(out)
    assert len(frames) == media["drive_frames"] and frames[0].shape == (64, 64, 3)
    assert not list(tmp_path.glob(".*.partial"))


def test_animate_relative_side_by_side_and_frame_limit(checkpoints, media, tmp_path):
    out = tmp_path / "rel.mp4"
    run_iwarp("animate", "--checkpoint", checkpoints["implicit"], "--source", media["a"], "--driving", media["drive"],
              "--out", out, "--relative", "--side-by-side", "--max-frames", "5", "--fps", "10")
    frames = decode(out)
    assert len(frames) == 5 and frames[0].shape == (64, 128, 3)
    with av.open(str(out)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(10)


def test_animate_resizes_mismatched_sources_with_a_warning(checkpoints, media, tmp_path):
    proc = run_iwarp("animate", "--checkpoint", checkpoints["implicit"], "--source", media["wide"],
                     "--driving", media["drive"], "--out", tmp_path / "w.mp4", "--max-frames", "2")
    assert "warning: source wide.png is 100x80: centre-cropped to 80x80" in proc.stderr
    assert "resized to the model's 64x64" in proc.stderr
    assert len(decode(tmp_path / "w.mp4")) == 2


@pytest.mark.parametrize("bad, message", [
    ("text", "cannot read source image"), ("missing-source", "source image not found"),
    ("broken", "cannot read driving video"), ("missing-driving", "driving video not found"),
])
def test_animate_rejects_unreadable_inputs(bad, message, checkpoints, media, tmp_path):
    source = {"text": media["text"], "missing-source": tmp_path / "nope.png"}.get(bad, media["a"])
    driving = {"broken": media["broken"], "missing-driving": tmp_path / "nope.mp4"}.get(bad, media["drive"])
    out = tmp_path / "x.mp4"
    proc = run_iwarp("animate", "--checkpoint", checkpoints["implicit"], "--source", source, "--driving", driving,
                     "--out", out, check=False)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
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
