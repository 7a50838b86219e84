"""`opt(...)`: a dataclass field with the help text (and choices) the CLI shows for it."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any = None, help: str = "", choices: list | tuple | None = None, factory=None) -> Any:
    meta = {"help": help, **({"choices": list(choices)} if choices else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
