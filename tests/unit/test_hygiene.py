"""Project-wide rules that are easy to break silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Which layer may import which (function-level imports included) is tests/unit/test_architecture.py.


def test_cli_lists_every_command_group():
    """`iwarp --help` (the umbrella, `app.cli`) works and shows each area's commands."""
    out = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("data", "train", "evaluate", "animate", "serve", "deploy", "pipeline", "track", "demo"):
        assert cmd in out.stdout, f"`iwarp {cmd}` missing from --help"


def test_library_cli_has_only_library_verbs():
    """`python -m iwarp` (what torchrun runs) needs nothing above the library."""
    out = subprocess.run(
        [sys.executable, "-m", "iwarp", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    usage = out.stdout.split("positional arguments:", 1)[1]
    assert {"data", "train", "evaluate", "animate"} <= set(usage.split())
    assert not {"serve", "deploy", "pipeline", "track"} & set(usage.split())


def test_ci_runs_the_readme_test_command():
    """CI must run exactly the README's test command, and that command installs what it needs."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make test" in readme and "make test" in ci
    test_target = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "setup" in test_target.splitlines()[0], "`make test` must depend on setup"
