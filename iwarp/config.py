"""Typed configuration: dataclasses, loaded from YAML with `key=value` overrides.

OmegaConf does the merging so a misspelt key or a wrong type fails loudly instead of
being ignored (a typo in a sweep must not silently train the default model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from iwarp.errors import InputError

T = TypeVar("T")


class ConfigError(InputError, ValueError):
    """A config file or override that does not fit the typed schema."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from defaults, then the YAML file at `path`, then `overrides` (`a.b=1`)."""
    try:
        merged = OmegaConf.structured(cls)
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:  # unknown key, wrong type, ...
        raise ConfigError(f"invalid config ({path or 'defaults'}): {exc}") from exc


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from `to_dict` output, validating types."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML, checkpoints, MLflow params)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the form MLflow params and `--set` overrides use."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
