"""A short in-process training run: checkpoint payload, logs, pictures, refusal paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from iwarp.checkpoint import CheckpointError, load_checkpoint, load_model
from iwarp.config import ConfigError, from_dict
from iwarp.training.config import TrainConfig, load_train_config
from iwarp.training.loop import Trainer, train
from iwarp.training.state import param_digest
from tests.helpers.train import CHEAP_LOSSES, TINY

STEPS = 6


def tiny_config(data: Path, out: Path, *extra: str) -> TrainConfig:
    # threads=0: leave this pytest process's torch thread count alone
    return load_train_config(
        TINY,
        [
            f"data.root={data}",
            f"out_dir={out}",
            f"optim.steps={STEPS}",
            "checkpoint.every_steps=2",
            "checkpoint.keep_last=2",
            "logging.every_steps=2",
            "logging.images_every_steps=3",
            "logging.num_samples=2",
            "logging.progress=false",
            "threads=0",
            *CHEAP_LOSSES,
            *extra,
        ],
    )


# `data`: tests/conftest.py (one small synthetic dataset for the session).


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = train(tiny_config(data, out))
    return out, result


def test_training_finishes_with_final_checkpoint(run):
    out, result = run
    assert result.step == STEPS and result.stopped == ""
    assert result.final_checkpoint == out / "checkpoints" / "final.ckpt"
    assert result.final_checkpoint.is_file()
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())


def test_checkpoint_payload_is_complete_and_weights_only(run):
    out, _ = run
    ckpt = load_checkpoint(out / "checkpoints" / "final.ckpt")  # torch.load(weights_only=True) inside
    for key in (
        "model_kind",
        "model_config",
        "model",
        "discriminator",
        "optimizers",
        "schedulers",
        "step",
        "rng",
        "sampler",
        "train_config",
        "rank_digests",
    ):
        assert key in ckpt, key
    assert ckpt["model_kind"] == "implicit" and ckpt["step"] == STEPS
    assert set(ckpt["optimizers"]) == {"generator", "discriminator"}
    assert ckpt["optimizers"]["generator"]["state"], "Adam moments must be saved"
    assert ckpt["schedulers"]["generator"]["last_epoch"] == STEPS
    (rng,) = ckpt["rng"]  # one entry per rank
    assert isinstance(rng["torch"], torch.Tensor) and rng["numpy"]["keys"].numel() == 624
    assert len(rng["python"]["state"]) == 625
    assert ckpt["sampler"]["next_step"] == STEPS and ckpt["sampler"]["seed"] == 0
    cfg = from_dict(TrainConfig, ckpt["train_config"])
    assert cfg.optim.steps == STEPS
    # the generator rebuilds from the payload alone, in eval mode, and animates
    model = load_model(out / "checkpoints" / "final.ckpt")
    assert not model.training
    from iwarp.discriminator import MultiScalePatchDiscriminator

    disc = MultiScalePatchDiscriminator(cfg.discriminator)
    disc.load_state_dict(ckpt["discriminator"])
    assert ckpt["rank_digests"] == [param_digest(model, disc)]
    with torch.no_grad():
        pred = model(torch.rand(1, 2, 3, 64, 64), torch.rand(1, 3, 64, 64)).prediction
    assert pred.shape == (1, 3, 64, 64)


def test_only_newest_checkpoints_are_kept(run):
    out, _ = run
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["final.ckpt", "step-00000004.ckpt", "step-00000006.ckpt"]
    assert (out / "checkpoints" / "final.ckpt").read_bytes() == (
        out / "checkpoints" / "step-00000006.ckpt"
    ).read_bytes()


def test_metrics_params_and_config_written(run):
    out, _ = run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert {
            "g/total",
            "g/reconstruction",
            "g/equivariance",
            "g/gan",
            "d/total",
            "samples_per_s",
            "lr/generator",
        } <= set(r)
    params = json.loads((out / "params.json").read_text())
    assert params["optim.steps"] == STEPS and params["world_size"] == 1
    assert load_train_config(out / "config.yaml").optim.steps == STEPS  # the saved config reloads


def test_pictures_written(run):
    out, _ = run
    images = out / "images"
    for name in (
        "samples-00000003.png",
        "attention-00000003.png",
        "samples-00000006.png",
        "attention-00000006.png",
        "loss-curves.png",
    ):
        with Image.open(images / name) as img:
            assert img.width > 200 and img.height > 100, name
    with Image.open(images / "samples-00000006.png") as img:
        # 2 sample rows; columns: k_max=4 sources + driving + prediction + error, 128 px tiles
        assert img.width == 7 * (128 + 2) and img.height == 12 + 2 * (128 + 2)


def test_fresh_run_refuses_a_folder_with_checkpoints(run, data):
    out, _ = run
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(tiny_config(data, out))


def test_resume_of_a_finished_run_does_nothing_more(run, data):
    out, _ = run
    before = (out / "checkpoints" / "final.ckpt").read_bytes()
    trainer = Trainer(tiny_config(data, out), resume=True)
    assert trainer.start_step == STEPS
    assert load_checkpoint(out / "checkpoints" / "final.ckpt")["step"] == STEPS
    assert before == (out / "checkpoints" / "final.ckpt").read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_checkpoint_is_refused_not_loaded(run, data, tmp_path, damage):
    src, _ = run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    latest = out / "checkpoints" / "step-00000006.ckpt"
    raw = bytearray(latest.read_bytes())
    if damage == "truncate":
        latest.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        latest.write_bytes(raw)
    else:
        latest.write_bytes(b"")
    with pytest.raises(CheckpointError) as exc:
        Trainer(tiny_config(data, out, "optim.steps=8"), resume=True)
    message = str(exc.value)
    assert "step-00000006.ckpt" in message
    assert {"truncate": "truncated", "flip": "SHA-256", "empty": "truncated"}[damage] in message
    assert "step-00000004.ckpt" in message  # points at the older, intact checkpoint


def test_resume_with_another_model_is_refused(run, data, tmp_path):
    src, _ = run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    with pytest.raises(ConfigError, match="model"):
        Trainer(tiny_config(data, out, "optim.steps=8", "model.implicit.qk_dim=8"), resume=True)
    with pytest.raises(ConfigError, match="sampler"):
        Trainer(tiny_config(data, out, "optim.steps=8", "data.batch_size=3"), resume=True)


def test_a_run_written_before_a_new_model_option_still_resumes(run, data, tmp_path):
    """Checkpoints of a run started before a model option existed (here: the landmark guidance and
    the source selection, removed from its stored config) resume with the option at its default."""
    from iwarp.checkpoint import save_checkpoint

    src, _ = run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    for path in (out / "checkpoints").glob("*.ckpt"):
        payload = load_checkpoint(path)
        payload["model_config"].pop("source_selection")
        payload["model_config"]["keypoints"].pop("guidance")
        save_checkpoint(payload, path)
    assert Trainer(tiny_config(data, out, "optim.steps=8"), resume=True).start_step == STEPS


def test_baseline_trains_too(data, tmp_path):
    result = train(
        tiny_config(data, tmp_path / "b", "model.kind=baseline", "optim.steps=2", "logging.images_every_steps=0")
    )
    ckpt = load_checkpoint(result.final_checkpoint)
    assert ckpt["model_kind"] == "baseline" and ckpt["step"] == 2
    assert (tmp_path / "b" / "images" / "samples-00000002.png").is_file()
