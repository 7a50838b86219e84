"""The `iwarp` command line turns bad input into a one-line error, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _iwarp(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "IWARP_DEBUG"} | env
    return subprocess.run([sys.executable, "-m", "iwarp", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["data", "validate", "--data", "/nonexistent-iwarp-data"], "/nonexistent-iwarp-data"),
    (["data", "prepare", "--input", "/nonexistent-iwarp-raw", "--out", "{tmp}/prepared"], "/nonexistent-iwarp-raw"),
    (["serve", "package", "--checkpoint", "/nonexistent.pt", "--version", "1", "--out", "{tmp}/store"],
     "checkpoint not found"),
])
def test_bad_paths_give_a_clear_error_and_no_traceback(tmp_path, args, needle):
    proc = _iwarp(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert needle in proc.stderr


def test_iwarp_debug_keeps_the_traceback():
    proc = _iwarp("data", "validate", "--data", "/nonexistent-iwarp-data", IWARP_DEBUG="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_programming_errors_are_not_hidden():
    """Only input errors are shortened: a plain bug (here a TypeError) keeps its traceback."""
    from iwarp.cli import is_input_error

    assert is_input_error(FileNotFoundError("x"))
    assert not is_input_error(TypeError("x"))
    assert not is_input_error(KeyError("x"))
