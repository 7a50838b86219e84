"""Locating the TorchServe tools (`torchserve`, `torch-model-archiver`) the serving layer runs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_executable(name: str, error: type[Exception], hint: str) -> str:
    """The console script `name` of this interpreter's environment (the venv's bin, even when it
    is not on PATH), else the first on PATH; `error(hint)` when there is none."""
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        raise error(f"{name} not found; {hint}")
    return found
