"""Helpers of the k8s tests (a plain module: test files import it, it imports no test file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from deploy import k8s_validate as kv

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
PARAMS = yaml.safe_load((K8S / "params.yaml").read_text())


def ensure_k8s_deps() -> None:
    """kubectl and the KServe schema wheel come from scripts/k8s-deps.sh (CI runs it; run it
    here too when a developer has not)."""
    if kv.kserve_wheel_path().is_file() and shutil.which("kubectl"):
        return
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "k8s-deps.sh")],
        check=True,
        env={**os.environ, "IWARP_VENV": sys.prefix},
    )
    if not shutil.which("kubectl"):  # the fallback kubectl lands in the venv's bin
        os.environ["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}"


def with_example_secrets(dest: Path) -> Path:
    """A copy of k8s/ whose git-ignored secret files are filled from the committed examples,
    as a user does before `kubectl apply -k`."""
    copy_root = dest / "k8s"
    shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("*.env"))
    for example in copy_root.glob("overlays/*/secrets/*.example"):
        shutil.copy(example, example.with_suffix(""))
    return copy_root
