"""Project-wide rules that are easy to break silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE = ("mlflow", "kfp", "torchserve", "ts")


def _iwarp_modules() -> list[str]:
    mods = []
    for path in sorted((ROOT / "iwarp").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.append(".".join(parts))
    return mods


def test_iwarp_imports_no_mlops_glue():
    """Importing every iwarp module (the CLI included) must not pull in mlflow, kfp or torchserve:
    those belong in components/, pipelines/ and serving/ (lazy imports inside handlers are fine)."""
    mods = _iwarp_modules()
    assert "iwarp" in mods and len(mods) > 3
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GLUE!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"iwarp imported MLOps glue: {out.stdout.strip()}"


def test_cli_lists_every_command_group():
    """`iwarp --help` works and shows each area's commands."""
    out = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("data", "train", "evaluate", "animate", "serve", "deploy", "pipeline", "track"):
        assert cmd in out.stdout, f"`iwarp {cmd}` missing from --help"


def test_ci_runs_the_readme_test_command():
    """CI must run exactly the README's test command, and that command installs what it needs."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make test" in readme and "make test" in ci
    test_target = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "setup" in test_target.splitlines()[0], "`make test` must depend on setup"
