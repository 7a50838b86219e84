"""Dataset layout, loader, sampler and synthetic/photo data (issue 3, "Data")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from iwarp.data import SourceDrivingBatches, SynthConfig, VideoDataset, make_synth_dataset, reconstruction_pairs
from iwarp.data.manifest import assign_splits, identity_leaks, read_manifest
from iwarp.data.video import read_video, write_frames, write_video

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth_png(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_png")
    make_synth_dataset(
        root,
        SynthConfig(num_identities=4, videos_per_identity=2, num_frames=12, image_size=64, seed=3, format="png"),
        progress=False,
    )
    return root


@pytest.fixture(scope="module")
def synth_mp4(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_mp4")
    make_synth_dataset(
        root,
        SynthConfig(num_identities=4, videos_per_identity=2, num_frames=12, image_size=64, seed=3, format="mp4"),
        progress=False,
    )
    return root


def test_both_layouts_load_the_same_videos(synth_png, synth_mp4):
    for split in ("train", "test"):
        png, mp4 = VideoDataset(synth_png, split, 64), VideoDataset(synth_mp4, split, 64)
        assert [v.id for v in png.videos] == [v.id for v in mp4.videos]
        assert [v.identity for v in png.videos] == [v.identity for v in mp4.videos]
        assert all(v.is_frame_folder for v in png.videos)
        assert all(v.path.suffix == ".mp4" for v in mp4.videos)
        assert all(v.num_frames == 12 for v in png.videos + mp4.videos)
        a, b = png.read_frames(0, [0, 5, 11]), mp4.read_frames(0, [0, 5, 11])
        assert a.shape == b.shape == (3, 3, 64, 64) and a.dtype == torch.float32
        assert 0.0 <= a.min() and a.max() <= 1.0
        # same pictures; the mp4 is H.264 (lossy) so only close
        assert (a - b).abs().mean() < 0.03


def test_frames_come_back_in_the_order_asked_and_resized(synth_png, synth_mp4):
    for root in (synth_png, synth_mp4):
        ds = VideoDataset(root, "train", 64)
        fwd = ds.read_frames(1, [2, 7, 2])
        assert torch.equal(fwd[0], fwd[2]) and not torch.equal(fwd[0], fwd[1])
        small = VideoDataset(root, "train", 32).read_frames(1, [2, 7])
        assert small.shape == (2, 3, 32, 32)
        # antialiased downscale of the same frames
        assert (small - torch.nn.functional.avg_pool2d(fwd[:2], 2)).abs().mean() < 0.02
        with pytest.raises(IndexError, match="out of range"):
            ds.read_frames(0, [12])


def test_identity_safe_split(synth_png):
    df = read_manifest(synth_png)
    assert identity_leaks(df) == {}
    train, test = VideoDataset(synth_png, "train"), VideoDataset(synth_png, "test")
    assert set(train.identities).isdisjoint(test.identities)
    assert len(train.identities) + len(test.identities) == 4 and len(test.identities) >= 1
    # every video of one identity is in one split
    assert df.groupby("identity")["split"].nunique().max() == 1


def test_assign_splits_is_deterministic_and_keeps_both_splits():
    ids = [f"p{i}" for i in range(10)]
    a = assign_splits(ids, 0.3, seed=1)
    assert a == assign_splits(list(reversed(ids)), 0.3, seed=1)
    assert sum(v == "test" for v in a.values()) == 3
    assert assign_splits(["x", "y"], 0.01, 0) != {"x": "train", "y": "train"}  # >= 1 test identity
    with pytest.raises(ValueError):
        assign_splits(ids, 1.0)


def test_identity_from_manifest_else_entry_name(tmp_path):
    frames = (np.random.default_rng(0).random((4, 16, 16, 3)) * 255).astype(np.uint8)
    write_frames(tmp_path / "train" / "clipA", frames)
    write_video(tmp_path / "train" / "clipB.mp4", frames, fps=10)
    (tmp_path / "test").mkdir()
    write_frames(tmp_path / "test" / "clipC", frames, ext=".jpg")
    ds = VideoDataset(tmp_path, "train", 16)
    assert [(v.id, v.identity, v.num_frames) for v in ds.videos] == [("clipA", "clipA", 4), ("clipB", "clipB", 4)]
    pd.DataFrame(
        {"id": ["clipA", "clipB", "clipC"], "identity": ["anna", "anna", "carl"], "split": ["train", "train", "test"]}
    ).to_csv(tmp_path / "manifest.csv", index=False)
    ds = VideoDataset(tmp_path, "train", 16)
    assert [v.identity for v in ds.videos] == ["anna", "anna"]
    assert VideoDataset(tmp_path, "test", 16).videos[0].identity == "carl"


def test_missing_split_and_unreadable_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        VideoDataset(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no videos"):
        VideoDataset(tmp_path, "train")
    (tmp_path / "train" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    from iwarp.data import VideoReadError

    with pytest.raises(VideoReadError, match="broken.mp4"):
        VideoDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        VideoDataset(tmp_path, "val")


def test_sampler_shapes_and_same_video_distinct_frames(synth_png):
    ds = VideoDataset(synth_png, "train", 64)
    batches = SourceDrivingBatches(ds, batch_size=3, k_min=1, k_max=4, seed=7)
    ks = set()
    for step in range(12):
        b = batches[step]
        k = b["k"]
        ks.add(k)
        assert 1 <= k <= 4
        assert b["sources"].shape == (3, k, 3, 64, 64) and b["driving"].shape == (3, 3, 64, 64)
        assert b["video_index"].shape == (3,) and b["video_index"].dtype == torch.long
        for i in range(3):
            idx = b["frame_index"][i].tolist()
            assert len(set(idx)) == k + 1  # sources and driving are distinct frames
            want = ds.read_frames(int(b["video_index"][i]), idx)  # ... of the same video
            assert torch.equal(want[:k], b["sources"][i]) and torch.equal(want[k], b["driving"][i])
    assert len(ks) > 1  # k varies per step


def test_sampler_is_a_pure_function_of_seed_step_rank(synth_png):
    ds = VideoDataset(synth_png, "train", 64)
    a = SourceDrivingBatches(ds, 4, 1, 3, seed=11)
    b = SourceDrivingBatches(VideoDataset(synth_png, "train", 64), 4, 1, 3, seed=11)
    for step in (0, 5, 123456):  # resuming at a step needs nothing but the step
        x, y = a[step], b[step]
        assert x["k"] == y["k"] and torch.equal(x["sources"], y["sources"])
        assert torch.equal(x["driving"], y["driving"])
    r0 = SourceDrivingBatches(ds, 4, 1, 3, seed=11, rank=0, world_size=2)
    r1 = SourceDrivingBatches(ds, 4, 1, 3, seed=11, rank=1, world_size=2)
    same_k = [r0.k_at(s) == r1.k_at(s) == a.k_at(s) for s in range(50)]
    assert all(same_k)
    differ = [not np.array_equal(r0.indices_at(s)[2], r1.indices_at(s)[2]) for s in range(20)]
    assert sum(differ) >= 18
    assert a.k_at(0) != SourceDrivingBatches(ds, 4, 1, 3, seed=12).k_at(0) or not np.array_equal(
        a.indices_at(0)[2], SourceDrivingBatches(ds, 4, 1, 3, seed=12).indices_at(0)[2]
    )


def test_sampler_through_dataloader_workers_matches_direct_indexing(synth_mp4):
    ds = VideoDataset(synth_mp4, "train", 64)
    batches = SourceDrivingBatches(ds, 2, 1, 2, seed=5, num_steps=20)
    loader = torch.utils.data.DataLoader(batches, sampler=range(7, 10), batch_size=None, num_workers=2)
    got = list(loader)
    assert len(got) == 3 and len(batches) == 20
    for step, b in zip(range(7, 10), got):
        ref = batches[step]
        assert b["k"] == ref["k"] and torch.equal(b["sources"], ref["sources"])
    with pytest.raises(IndexError):
        batches[20]


def test_sampler_state_and_bad_arguments(synth_png):
    ds = VideoDataset(synth_png, "train", 64)
    b = SourceDrivingBatches(ds, 2, 1, 4, seed=1)
    b.load_state_dict(b.state_dict())
    with pytest.raises(ValueError, match="seed"):
        b.load_state_dict({**b.state_dict(), "seed": 2})
    with pytest.raises(ValueError, match="k_max"):
        SourceDrivingBatches(ds, 2, 1, 12)  # 12 frames cannot give 12 sources + 1 driving
    with pytest.raises(ValueError):
        SourceDrivingBatches(ds, 2, 3, 2)


def test_reconstruction_pairs(synth_png):
    ds = VideoDataset(synth_png, "test", 64)
    r = reconstruction_pairs(ds, 0, 2)
    assert r["source_indices"] == [0, 1] and r["driving_indices"] == list(range(2, 12))
    assert r["sources"].shape == (2, 3, 64, 64) and r["driving"].shape == (10, 3, 64, 64)
    assert torch.equal(r["sources"], ds.read_frames(0, [0, 1]))
    r4 = reconstruction_pairs(ds, 0, 1, driving_start=4, stride=2)
    assert r4["driving_indices"] == [4, 6, 8, 10]
    with pytest.raises(ValueError):
        reconstruction_pairs(ds, 0, 12)


def test_video_io_roundtrip_and_partial_reads(tmp_path):
    t = np.arange(10)[:, None, None, None]
    x = np.arange(32)[None, None, :, None]
    frames = np.broadcast_to(((x * 8 + t * 20) % 256), (10, 32, 32, 3)).astype(np.uint8)  # moving ramp
    path = write_video(tmp_path / "ramp.mp4", frames, fps=12.5)
    back = read_video(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6
    assert np.array_equal(read_video(path, [7, 2]), back[[7, 2]])
    with pytest.raises(IndexError):
        read_video(path, [10])
    from iwarp.data.video import probe

    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (10, 32, 32) and info.fps == pytest.approx(12.5)


_ENCODE_CLIPS = r"""
import sys
from pathlib import Path
from iwarp.data.synth import render_video
from iwarp.data.video import write_video
out, order = Path(sys.argv[1]), sys.argv[2]
clips = [(i, v, s) for s in (48, 64) for i in range(3) for v in range(2)]
for i, v, s in (clips if order == "forward" else clips[::-1]):
    write_video(out / f"{s}_{i}_{v}.mp4", render_video(0, i, v, 8, s), fps=25.0)
"""


def test_same_frames_give_the_same_mp4_bytes_in_any_process_under_load(tmp_path):
    """Issue 15: two processes (encoding the clips in opposite orders, so their memory history
    differs, as pool workers' does) under a concurrent CPU hog write byte-identical files."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for order in ("forward", "backward"):
        (tmp_path / order).mkdir()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the machine is busy
    try:
        procs = [
            subprocess.Popen([sys.executable, "-c", _ENCODE_CLIPS, str(tmp_path / order), order], env=env)
            for order in ("forward", "backward")
        ]
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
    finally:
        hog.kill()
        hog.wait()
    runs = {
        order: {f.name: f.read_bytes() for f in sorted((tmp_path / order).glob("*.mp4"))}
        for order in ("forward", "backward")
    }
    assert len(runs["forward"]) == 12 and runs["forward"].keys() == runs["backward"].keys()
    differ = [name for name in runs["forward"] if runs["forward"][name] != runs["backward"][name]]
    assert differ == []
    assert b"Lavf" not in runs["forward"]["48_0_0.mp4"]  # bitexact: no library version in the file
