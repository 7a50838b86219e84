"""Helpers of the k8s tests (a plain module: test files import it, it imports no test file)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from deploy import k8s_validate as kv

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
PARAMS = yaml.safe_load((K8S / "params.yaml").read_text())


def ensure_k8s_deps() -> None:
    """kubectl and the KServe schema wheel come from scripts/k8s-deps.sh, which scripts/test.sh
    (`make test`, CI) runs before pytest; a test never installs anything itself."""
    venv_bin = Path(sys.prefix) / "bin"
    if not shutil.which("kubectl") and (venv_bin / "kubectl").is_file():  # its fallback kubectl
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
    missing = [
        what
        for what, ok in (
            ("kubectl", shutil.which("kubectl")),
            ("the KServe SDK wheel", kv.kserve_wheel_path().is_file()),
        )
        if not ok
    ]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `bash scripts/k8s-deps.sh` first", pytrace=False)


def with_example_secrets(dest: Path) -> Path:
    """A copy of k8s/ whose git-ignored secret files are filled from the committed examples,
    as a user does before `kubectl apply -k`."""
    copy_root = dest / "k8s"
    shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("*.env"))
    for example in copy_root.glob("overlays/*/secrets/*.example"):
        shutil.copy(example, example.with_suffix(""))
    return copy_root
