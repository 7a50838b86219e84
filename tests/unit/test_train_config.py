"""Training configs: shipped YAMLs load and build, typos and bad values fail loudly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from iwarp.config import ConfigError, flatten, to_dict
from iwarp.training.config import TrainConfig, load_train_config
from iwarp.training.loop import lr_factor
from tests.helpers.train import REPO, TINY, run_iwarp

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_folder_has_tiny_and_paper_scale():
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "paper-256.yaml", "paper-512.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_builds_both_models(path: Path):
    from iwarp.discriminator import MultiScalePatchDiscriminator
    from iwarp.models import build_model

    cfg = load_train_config(path)
    assert cfg.data.image_size == cfg.model_config.image_size
    for kind in ("implicit", "baseline"):
        model = build_model(kind, getattr(cfg.model, kind))
        assert model.config.image_size == cfg.data.image_size
        assert sum(p.numel() for p in model.parameters()) > 0
    MultiScalePatchDiscriminator(cfg.discriminator)


def test_paper_configs_are_paper_scale():
    assert load_train_config(REPO / "configs/paper-256.yaml").data.image_size == 256
    assert load_train_config(REPO / "configs/paper-512.yaml").data.image_size == 512


def test_overrides_apply_with_types():
    cfg = load_train_config(TINY, ["optim.steps=7", "model.kind=baseline", "optim.betas=[0.9,0.99]", "loss.gan=0"])
    assert cfg.optim.steps == 7 and cfg.model.kind == "baseline"
    assert cfg.optim.betas == [0.9, 0.99] and cfg.loss.gan == 0.0
    assert cfg.model_config.image_size == 64  # the baseline section of tiny.yaml


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.stepz=3", "stepz"),  # misspelt key
        ("optim.steps=many", "steps"),  # wrong type
        ("modle.kind=implicit", "modle"),  # misspelt section
        ("model.implicit.qk_dimm=8", "qk_dimm"),  # typo inside the model library's dataclass
    ],
)
def test_typos_fail(override: str, needle: str):
    with pytest.raises(ConfigError) as exc:
        load_train_config(TINY, [override])
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.kind=flow"], "model.kind"),
        (["data.k_min=3", "data.k_max=2"], "k_min"),
        (["data.image_size=128"], "image_size"),
        (["precision=fp8"], "precision"),
        (["optim.schedule=linear"], "schedule"),
    ],
)
def test_invalid_values_fail(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        load_train_config(TINY, overrides)
    assert needle in str(exc.value)


def test_cli_reports_typo_with_exit_code_2():
    proc = run_iwarp("train", "--config", TINY, "--set", "optim.stepz=3", check=False, timeout=120)
    assert proc.returncode == 2
    assert "stepz" in proc.stderr and "Traceback" not in proc.stderr


def test_config_round_trips_through_dict():
    from iwarp.config import from_dict

    cfg = load_train_config(TINY, ["optim.steps=11"])
    again = from_dict(TrainConfig, to_dict(cfg))
    assert again == cfg
    flat = flatten(to_dict(cfg))
    assert flat["optim.steps"] == 11 and flat["model.implicit.image_size"] == 64


def test_lr_schedule_warmup_cosine_and_step():
    cfg = load_train_config(TINY, ["optim.steps=100", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    mid = lr_factor(55, cfg)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    cfg.optim.schedule, cfg.optim.warmup_steps = "step", 0
    assert [lr_factor(s, cfg) for s in (0, 59, 60, 84, 85)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_model_kind_literal_names_every_buildable_model():
    """`model.kind`'s Literal and the model registry list the same kinds (one may not grow alone)."""
    from typing import get_args

    from iwarp.models import MODEL_KINDS
    from iwarp.training.config import ModelKind

    assert set(get_args(ModelKind)) == set(MODEL_KINDS)


def test_a_config_file_starts_from_its_base():
    """`base:` merges the named file first (relative to this one); the variant states only what differs."""
    kp = load_train_config(REPO / "configs/keypoints-faces-64.yaml")
    faces = load_train_config(REPO / "configs/faces-64.yaml")
    assert kp.model.kind == "baseline" and faces.model.kind == "implicit"
    assert kp.model.baseline.motion == "first_order"
    assert kp.data == faces.data and kp.loss.perceptual_layer_weights == faces.loss.perceptual_layer_weights
    assert kp.model.baseline.keypoints.channels == faces.model.implicit.keypoints.channels  # keypoints_from fits


def test_a_base_loop_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_train_config(tmp_path / "a.yaml")
