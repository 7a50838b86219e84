"""One source of truth: where a setting has to live twice, the copies are tied here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from iwarp.implicit_warping import ImplicitWarpingConfig
from iwarp.training.config import load_train_config

ROOT = Path(__file__).resolve().parents[2]


def test_torchserve_handler_ships_the_serving_config_defaults():
    """serving/handler.py ships alone in the .mar (no `serving` import), so its DEFAULTS copy
    HandlerSettings; serving/serve.yaml spells the same values out for users. All three agree."""
    from serving import handler
    from serving.config import HandlerSettings, load_serve_config

    settings = dataclasses.asdict(HandlerSettings())
    assert handler.DEFAULTS == settings
    assert yaml.safe_load((ROOT / "serving" / "serve.yaml").read_text())["handler"] == settings
    assert load_serve_config().handler == HandlerSettings()


def test_tiny_yaml_is_the_tiny_model():
    """configs/tiny.yaml trains the architecture that `ImplicitWarpingConfig.tiny()` builds for the
    tests, field for field, except attention dropout: the YAML trains with the library's default
    (as faces-64 and the paper configs do), `tiny()` switches it off for deterministic tests."""
    trained = load_train_config(ROOT / "configs" / "tiny.yaml", []).model_config
    assert isinstance(trained, ImplicitWarpingConfig)
    assert trained.attention_dropout == ImplicitWarpingConfig().attention_dropout > 0
    assert dataclasses.replace(ImplicitWarpingConfig.tiny(), attention_dropout=trained.attention_dropout) == trained
