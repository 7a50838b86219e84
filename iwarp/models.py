"""Model registry: build a generator from its kind and config (dict or dataclass)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeAlias

from iwarp.config import from_dict
from iwarp.explicit_flow import ExplicitFlowBaseline, ExplicitFlowConfig
from iwarp.implicit_warping import ImplicitWarping, ImplicitWarpingConfig

# A registered generator: what `build_model` makes and `iwarp.checkpoint.load_model` returns, typed
# so checkers know its config / encode_sources / animate, which a plain nn.Module lacks.
GeneratorModel: TypeAlias = ImplicitWarping | ExplicitFlowBaseline

# kind -> (model class, config dataclass)
MODEL_KINDS: dict[str, tuple[type[GeneratorModel], type]] = {
    "implicit": (ImplicitWarping, ImplicitWarpingConfig),
    "baseline": (ExplicitFlowBaseline, ExplicitFlowConfig),
}


def config_class(kind: str) -> type:
    return MODEL_KINDS[_check_kind(kind)][1]


def _check_kind(kind: str) -> str:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    return kind


def build_model(kind: str, config: Any = None) -> GeneratorModel:
    """`build_model("implicit", {"image_size": 64})`; None means the default config.

    A dict is validated against the kind's config dataclass (unknown keys or wrong types raise
    `iwarp.config.ConfigError`), so checkpoints' `model_config` dicts round-trip.
    """
    model_cls, cfg_cls = MODEL_KINDS[_check_kind(kind)]
    if config is None:
        cfg = cfg_cls()
    elif isinstance(config, cfg_cls):
        cfg = config
    elif dataclasses.is_dataclass(config):
        raise TypeError(f"model kind {kind!r} needs a {cfg_cls.__name__}, got {type(config).__name__}")
    else:
        cfg = from_dict(cfg_cls, dict(config))
    return model_cls(cfg)
