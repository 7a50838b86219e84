"""`iwarp train --init-from`: fine-tuning from another checkpoint's weights (matching,
partial and refused loads), and how it meets --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iwarp.checkpoint import load_checkpoint
from iwarp.config import ConfigError
from iwarp.models import build_model
from iwarp.training.config import TrainConfig, load_train_config
from iwarp.training.init import load_matching
from iwarp.training.loop import Trainer, train
from tests.helpers.train import CHEAP_LOSSES, TINY, make_synth, run_iwarp, train_args

pytestmark = pytest.mark.slow


def tiny_config(data: Path, out: Path, *extra: str) -> TrainConfig:
    return load_train_config(
        TINY,
        [
            f"data.root={data}",
            f"out_dir={out}",
            "optim.steps=2",
            "logging.progress=false",
            "logging.images_every_steps=0",
            "threads=0",
            *CHEAP_LOSSES,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data", identities=4, videos=1, frames=10)


@pytest.fixture(scope="module")
def parent(data, tmp_path_factory) -> Path:
    """A tiny implicit model with the residual path and extra K/V on (the tiny.yaml defaults)."""
    return train(tiny_config(data, tmp_path_factory.mktemp("parent"))).final_checkpoint


def assert_equal_to(module: torch.nn.Module, state: dict[str, torch.Tensor], names: list[str]) -> None:
    own = module.state_dict()
    for name in names:
        assert torch.equal(own[name].cpu(), state[name].cpu()), name


def test_matching_init_loads_every_weight_and_starts_fresh(parent, data, tmp_path):
    ckpt = load_checkpoint(parent)
    trainer = Trainer(tiny_config(data, tmp_path / "ft", f"init_from={parent}"))
    g = trainer.init_report["generator"]
    assert g["skipped"] == [] and g["new"] == [] and set(g["loaded"]) == set(ckpt["model"])
    assert_equal_to(trainer.model, ckpt["model"], g["loaded"])
    d = trainer.init_report["discriminator"]
    assert d["status"] == "loaded" and set(d["loaded"]) == set(ckpt["discriminator"])
    assert_equal_to(trainer.disc, ckpt["discriminator"], d["loaded"])
    assert trainer.start_step == 0 and trainer.opt_g.state_dict()["state"] == {}  # fresh optimizers


def test_partial_init_skips_and_reports_what_the_new_config_dropped(parent, data, tmp_path):
    out = tmp_path / "ft"
    # residual off: the residual MLP and the extra tokens' residual values (pixels, K) go
    result = train(tiny_config(data, out, f"init_from={parent}", "model.implicit.residual=false", "optim.steps=1"))
    assert result.step == 1
    report = json.loads((out / "init_from.json").read_text())
    g = report["generator"]
    assert g["skipped"] and all(
        n.startswith(("residual_mlp.", "attention.extra_residual_values")) for n in g["skipped"]
    )
    assert "attention.extra_residual_values" in g["skipped"] and "attention.extra_values" in g["loaded"]
    assert any(n.startswith("residual_mlp.") for n in g["skipped"]) and g["new"] == []
    assert report["checkpoint"] == str(parent) and report["step"] == 2
    params = json.loads((out / "params.json").read_text())  # what MLflow receives too
    assert params["init_from"] == str(parent) and params["init_from.loaded"] == len(g["loaded"])
    assert params["init_from.skipped"] == len(g["skipped"]) and params["init_from.new"] == 0
    # the kept weights are the parent's (checked before any step, on a fresh trainer)
    trainer = Trainer(tiny_config(data, tmp_path / "again", f"init_from={parent}", "model.implicit.residual=false"))
    assert_equal_to(trainer.model, load_checkpoint(parent)["model"], g["loaded"])


def test_new_weights_are_reported_as_freshly_initialised(parent):
    state = load_checkpoint(parent)["model"]
    target = build_model("implicit", load_train_config(TINY, []).model_config)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    partial = {k: v for k, v in state.items() if not k.startswith("residual_mlp.")}
    report = load_matching(target, partial)
    assert report.new and all(n.startswith("residual_mlp.") for n in report.new) and report.skipped == []
    assert_equal_to(target, fresh, report.new)  # left as initialised
    assert_equal_to(target, state, report.loaded)


def test_a_changed_shape_is_refused_naming_the_parameter(parent, data, tmp_path):
    # narrower value features: the extra value tokens (and the decoder) change width
    with pytest.raises(
        ConfigError, match=r"breaks compatibility with .*attention\.extra_values \(2, 32\) vs \(2, 24\)"
    ):
        Trainer(tiny_config(data, tmp_path / "a", f"init_from={parent}", "model.implicit.value_channels=[8,16,16,24]"))
    with pytest.raises(ConfigError, match=r"breaks compatibility .*query_net"):
        Trainer(tiny_config(data, tmp_path / "b", f"init_from={parent}", "model.implicit.qk_dim=8"))


def test_another_model_kind_is_refused(parent, data, tmp_path):
    with pytest.raises(ConfigError, match="holds a 'implicit' model, but this config trains 'baseline'"):
        Trainer(tiny_config(data, tmp_path / "b", f"init_from={parent}", "model.kind=baseline"))


def test_cli_init_from_prints_the_report_and_resume_wins(parent, data, tmp_path):
    out = tmp_path / "ft"
    args = train_args(
        data, out, "optim.steps=2", "checkpoint.every_steps=1", "logging.images_every_steps=0", "threads=1"
    )
    proc = run_iwarp(*args, "--init-from", parent)
    assert f"init from {parent} (step 2): generator" in proc.stdout + proc.stderr
    assert (out / "init_from.json").is_file()
    # a retried step with more steps continues its own checkpoint instead of restarting from the parent
    args[args.index("optim.steps=2")] = "optim.steps=3"
    proc = run_iwarp(*args, "--init-from", parent, "--resume")
    text = proc.stdout + proc.stderr
    assert "ignored: resuming" in text and "resuming from" in text and "trained 3 steps" in text
    bad = run_iwarp(*train_args(data, tmp_path / "other"), "--init-from", tmp_path / "missing.ckpt", check=False)
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------ keypoints_from (pretrained keypoints)
@pytest.fixture(scope="module")
def keypoint_parent(data, tmp_path_factory) -> Path:
    """The keypoint pretraining stage in miniature: a tiny first-order FOMM baseline."""
    return train(tiny_config(data, tmp_path_factory.mktemp("kp"), "model.kind=baseline")).final_checkpoint


def detector_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t for n, t in state.items() if n.startswith("keypoint_detector.net.")}


def test_frozen_pretrained_detector_is_unchanged_by_implicit_training(keypoint_parent, data, tmp_path):
    parent = load_checkpoint(keypoint_parent)["model"]
    pretrained = detector_state(parent)
    assert pretrained and any(n.startswith("keypoint_detector.jacobian.") for n in parent)
    trainer = Trainer(tiny_config(data, tmp_path / "kp-frozen", f"model.implicit.keypoints_from={keypoint_parent}"))
    start = {n: t.clone() for n, t in trainer.model.state_dict().items()}
    trainer.run()
    trained = load_checkpoint(trainer.ckpt_dir / "final.ckpt")["model"]
    detector = detector_state(trained)
    assert set(detector) == set(pretrained)  # the baseline's Jacobian head stays behind
    for name, t in pretrained.items():
        assert torch.equal(detector[name], t), name
    assert any(not torch.equal(trained[n], start[n]) for n in trained if n.startswith("attention."))  # the rest trained


def test_unfrozen_pretrained_detector_is_fine_tuned(keypoint_parent, data, tmp_path):
    pretrained = detector_state(load_checkpoint(keypoint_parent)["model"])
    trainer = Trainer(
        tiny_config(
            data,
            tmp_path / "kp-ft",
            f"model.implicit.keypoints_from={keypoint_parent}",
            "model.implicit.keypoints_frozen=false",
            "loss.equivariance=10",
        )
    )
    assert trainer.keypoints_report["frozen"] is False and trainer.keypoints_report["model_kind"] == "baseline"
    assert_equal_to(trainer.model, pretrained, list(pretrained))  # loaded at step 0
    trainer.run()
    own = trainer.model.state_dict()
    assert any(not torch.equal(own[n].cpu(), t.cpu()) for n, t in pretrained.items())


def test_keypoints_from_refuses_a_detector_of_another_shape(keypoint_parent, data, tmp_path):
    with pytest.raises(ConfigError, match="num_keypoints 5 vs 6"):
        Trainer(
            tiny_config(
                data,
                tmp_path / "kp-bad",
                f"model.implicit.keypoints_from={keypoint_parent}",
                "model.implicit.keypoints.num_keypoints=6",
            )
        )
