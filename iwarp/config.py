"""Typed configuration: dataclasses, loaded from YAML with `key=value` overrides.

OmegaConf does the merging so a misspelt key or a wrong type fails loudly instead of
being ignored (a typo in a sweep must not silently train the default model). Enumerations are
`Literal[...]` fields: OmegaConf 2.3 has no Literal, so it merges a copy of the dataclass in which
each Literal field is a plain `str` (`_schema`), and `_build` checks the values while it builds the
real dataclass (`model.kind must be one of ('implicit', 'baseline'), got 'x'`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from iwarp.errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # every config is a dataclass


class ConfigError(InputError, ValueError):
    """A config file or override that does not fit the typed schema."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from defaults, then the YAML file at `path`, then `overrides` (`a.b=1`)."""
    try:
        merged = OmegaConf.structured(_schema(cls))
        if path is not None:
            path = Path(path)
            merged = OmegaConf.merge(merged, _load_yaml(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return _build(cls, OmegaConf.to_container(merged))
    except OmegaConfBaseException as exc:  # unknown key, wrong type, ...
        raise ConfigError(f"invalid config ({path or 'defaults'}): {exc}") from exc


BASE_KEY = "base"  # `base: other.yaml` (relative to the file): start from that file's values


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """A config file merged over its `base:` chain, so a variant (e.g. the keypoint-pretraining
    config) states only what differs from the recipe it shares."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config {path}: `base:` loops back to itself")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        return node  # not a mapping: the schema merge reports it
    base = node.pop(BASE_KEY, None)
    if base is None:
        return node
    return OmegaConf.merge(_load_yaml(path.parent / str(base), (*seen, path.resolve())), node)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from `to_dict` output, validating types."""
    try:
        return _build(cls, OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(_schema(cls)), data)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def _plain(tp: Any) -> Any:
    """`tp` as OmegaConf 2.3 can type a node: Literal -> the type of its values, dataclasses via
    `_schema`, inside Optional and list too."""
    origin = get_origin(tp)
    if origin is Literal:
        return type(get_args(tp)[0])
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _schema(tp)
    if origin in (Union, types.UnionType):
        args = tuple(_plain(a) for a in get_args(tp))
        # Union[...]/list[...] of run-time values: mypy reads a subscript as a static type ("type expected").
        return tp if args == get_args(tp) else Union[args]  # type: ignore[misc]  # noqa: UP007
    if origin is list:
        (item,) = get_args(tp)
        return tp if _plain(item) is item else list[_plain(item)]  # type: ignore[misc]
    return tp


@functools.cache
def _schema(cls: type) -> type:
    """`cls` itself when it has no Literal field (nested ones included), else a copy for OmegaConf
    whose Literal fields are plain types; `_build` turns its values back into `cls`."""
    hints = get_type_hints(cls)
    plain = {f.name: _plain(hints[f.name]) for f in dataclasses.fields(cls)}
    if all(plain[f.name] is hints[f.name] for f in dataclasses.fields(cls)):
        return cls
    fields = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:  # e.g. a nested dataclass: its schema copy
            default = dataclasses.field(default_factory=_schema_factory(f.default_factory))
        else:
            default = dataclasses.field(default=f.default)
        fields.append((f.name, plain[f.name], default))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def _schema_factory(factory: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: _as_schema(factory())


def _as_schema(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        schema = _schema(type(value))
        return schema(**{f.name: _as_schema(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value


def _build(tp: Any, value: Any, where: str = "") -> Any:
    """The value of a merged config as `tp`: dataclasses rebuilt, Literal values checked."""
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        return tp(
            **{
                f.name: _build(hints[f.name], value[f.name], f"{where}.{f.name}" if where else f.name)
                for f in dataclasses.fields(tp)
                if f.init and f.name in value
            }
        )
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where} must be one of {get_args(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType) and value is not None:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _build(inner[0], value, where) if len(inner) == 1 else value
    if origin is list and value is not None:
        return [_build(get_args(tp)[0], v, where) for v in value]
    return value


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
