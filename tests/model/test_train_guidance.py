"""Landmark-guided keypoints (`model.implicit.keypoints.guidance: landmarks`): the loss, and a
short training that pulls the guided keypoints toward the landmark groups of its sidecars."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iwarp.config import ConfigError
from iwarp.data import VideoDataset
from iwarp.data.landmarks import GUIDE_GROUPS, NUM_LANDMARKS, sidecar_path
from iwarp.losses import landmark_guidance_loss
from iwarp.training.loop import Trainer
from tests.helpers.train import CHEAP_LOSSES, TINY

G = len(GUIDE_GROUPS)


def test_guidance_loss_is_zero_when_the_keypoints_sit_on_their_landmarks() -> None:
    targets = torch.rand(2, 3, G, 2) * 2 - 1
    free = torch.rand(2, 3, 2, 2)  # keypoints past the guided ones are free: they never count
    keypoints = torch.cat([targets, free], dim=-2)
    assert float(landmark_guidance_loss(keypoints, targets)) == 0.0
    moved = keypoints.clone()
    moved[..., :G, 0] += 0.1
    assert float(landmark_guidance_loss(moved, targets)) == pytest.approx(0.1, abs=1e-5)


def test_frames_without_landmarks_count_for_nothing() -> None:
    targets = torch.zeros(1, 2, G, 2)
    targets[0, 1] = float("nan")  # no face found in the second frame
    targets[0, 0, 0] = 1.5  # an augmentation moved this group out of the frame
    keypoints = torch.full((1, 2, G, 2), 0.5)
    assert float(landmark_guidance_loss(keypoints, targets)) == pytest.approx(1.0)  # |0.5| + |0.5| per valid group
    assert float(landmark_guidance_loss(keypoints, torch.full_like(targets, float("nan")))) == 0.0


def _fake_sidecars(root: Path) -> None:
    """Landmarks for the synthetic heads: every group at a fixed place per clip (the test checks
    that training moves the keypoints there, not that dlib finds cartoon faces)."""
    ds = VideoDataset(root, "train", 64)
    rng = np.random.default_rng(0)
    for v in ds.videos:
        marks = np.tile(rng.uniform(-0.5, 0.5, (1, NUM_LANDMARKS, 2)), (v.num_frames, 1, 1)).astype(np.float32)
        np.save(sidecar_path(v.path), marks)


def _config(data: Path, out: Path, steps: int, *extra: str):
    from iwarp.training.config import load_train_config

    return load_train_config(
        TINY,
        [
            f"data.root={data}",
            f"out_dir={out}",
            f"optim.steps={steps}",
            "optim.warmup_steps=0",
            "checkpoint.every_steps=1000",
            "logging.every_steps=5",
            "logging.images_every_steps=0",
            "logging.progress=false",
            "threads=1",  # 2 threads on a shared 2-core box spin-wait: ~5x slower
            "model.implicit.keypoints.guidance=landmarks",
            *CHEAP_LOSSES,
            "loss.gan=0",  # no discriminator: the term under test is the keypoints'
            *extra,
        ],
    )


def test_guidance_without_sidecars_is_refused_with_the_command_to_fix_it(data, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    for f in bare.rglob("*.landmarks.npy"):
        f.unlink()
    for f in bare.rglob("landmarks.npy"):
        f.unlink()
    with pytest.raises(ConfigError, match="iwarp data landmarks"):
        Trainer(_config(bare, tmp_path / "run", 1))


def test_training_pulls_the_guided_keypoints_to_their_landmarks(data, tmp_path) -> None:
    guided = tmp_path / "guided"
    shutil.copytree(data, guided)
    _fake_sidecars(guided)

    def distance(model) -> float:
        ds = VideoDataset(guided, "train", 64)
        from iwarp.data.landmarks import group_targets

        frames = ds.read_frames(0, [0, 1, 2])
        targets = torch.from_numpy(group_targets(ds.read_landmarks(0, [0, 1, 2])))
        with torch.no_grad():
            xy = model.eval().detect_keypoints(frames).xy
        return float(landmark_guidance_loss(xy, targets))

    trainer = Trainer(_config(guided, tmp_path / "run", 15, "loss.landmark_guidance=50", "optim.lr_generator=3e-3"))
    before = distance(trainer.model)
    result = trainer.run()
    assert "g/landmark_guidance" in result.metrics  # logged like every other term
    assert distance(trainer.model) < 0.7 * before
