"""Injection point for the layers above the library (layers point only down: `iwarp` never
imports `serving`, `components` or `pipelines`).

A higher layer provides an implementation in one of two ways:
- a Python entry point in its package metadata (`pyproject.toml`,
  `[project.entry-points."iwarp.trackers"] mlflow = "components.tracking:MLflowLogger"`), which
  also reaches subprocesses such as `torchrun -m iwarp train`;
- `register(group, name, obj)` at run time (tests, embedding applications).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from iwarp.errors import InputError

TRACKERS = "iwarp.trackers"  # name -> Logger factory(tracking_uri, *, experiment, run_name, run_id, ...)
MODEL_REGISTRIES = "iwarp.model_registries"  # name -> alias mover(tracking_uri, model_name, version, log=)

_registered: dict[tuple[str, str], Any] = {}


def register(group: str, name: str, obj: Any) -> None:
    """Provide `obj` for `(group, name)`; wins over an entry point of the same name."""
    _registered[(group, name)] = obj


def load(group: str, name: str) -> Any:
    """The object registered (or declared as an entry point) under `(group, name)`."""
    if (group, name) not in _registered:
        found = entry_points(group=group, name=name)
        if not found:
            raise InputError(
                f"no {name!r} plugin in entry point group {group!r}: install the package that "
                f"provides it (for MLflow: this project's `components`, `pip install -e .`)"
            )
        _registered[(group, name)] = next(iter(found)).load()
    return _registered[(group, name)]
