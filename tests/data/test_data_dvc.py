"""The project's real dvc.yaml/params.yaml run by real `dvc` commands in a throwaway git repo:
repro runs every stage once, a second repro skips them all, a param change reruns only its
stage, metrics/plots work, a failed validation stops the pipeline, and push/pull through the
default local remote restores identical data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.data import REPO, dvc, tree_digest

STAGES = ("synth", "prepare", "validate", "stats")  # the synthetic path; the faces stage runs in test_pipeline_e2e


def set_param(repo: Path, section: str, key: str, value) -> None:
    """Edit params.yaml as text (keeps its comments and YAML anchors, like a person would)."""
    path = repo / "params.yaml"
    text = path.read_text()
    block = re.search(rf"(?ms)^{section}:[^\n]*\n(.*?)(?=^\S|\Z)", text)
    body = re.sub(
        rf"(?m)^(\s+{key}:\s*)(&\S+\s+)?[^\s#]+",
        lambda m: f"{m.group(1)}{m.group(2) or ''}{value}",
        block.group(1),
        count=1,
    )
    assert body != block.group(1), f"{section}.{key} not found"
    path.write_text(text[: block.start(1)] + body + text[block.end(1) :])


@pytest.fixture
def project(tmp_path):
    """A copy of this project's DVC files and the iwarp package in a fresh git repo."""
    repo = tmp_path / "proj"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "iwarp", repo / "iwarp", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".gitignore").write_text("/.iwarp/\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # our remotes, analytics off
    # tiny sizes: 3 identities x 2 clips x 10 frames
    for key, value in (("num_identities", 3), ("num_frames", 10), ("image_size", 48)):
        set_param(repo, "synth", key, value)
    set_param(repo, "prepare", "image_size", 32)
    # the fallback path: validate/stats check the synthetic heads (no faces, so no face checks)
    params = repo / "params.yaml"
    params.write_text(re.sub(r"(?m)^dataset: \S+", "dataset: data/prepared", params.read_text(), count=1))
    set_param(repo, "validate", "face_dataset", "false")
    set_param(repo, "validate", "landmarks", "false")  # nor human landmarks
    return repo


@pytest.mark.slow
def test_dvc_pipeline_repro_skip_params_metrics_gate_and_remote(project):
    """One repo, one story (each `dvc repro` from scratch costs ~20 s, so the steps share it)."""
    # 1) the first repro runs every stage
    first = dvc(project, "repro", *STAGES)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    result = json.loads((project / "reports/validation/result.json").read_text())
    assert result["success"] is True and result["config"]["image_size"] == 32  # the YAML alias followed
    assert (project / "reports/validation/data_docs/index.html").is_file()
    assert (project / "reports/data_stats/samples.png").stat().st_size > 1000

    # 2) the second skips every stage
    second = dvc(project, "repro", *STAGES)
    assert "Running stage" not in second.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second.stdout

    # 3) a stage's param reruns that stage only
    set_param(project, "stats", "hist_bins", 4)
    third = dvc(project, "repro", *STAGES)
    assert re.findall(r"Running stage '(\w+)'", third.stdout) == ["stats"]

    # 4) metrics and plots
    metrics = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    values = next(iter(metrics.values()))["data"]["reports/data_stats/metrics.json"]["data"]
    assert values["videos"] == 6 and values["frames"] == 60 and values["skipped"] == 0
    dvc(project, "plots", "show", "-o", "plots_html")
    assert (project / "plots_html" / "index.html").is_file()

    # 5) push to the default (local directory) remote, wipe cache and data, pull: identical
    before = tree_digest(project / "data/prepared")
    dvc(project, "push", *STAGES)
    remote = project / ".iwarp" / "dvc-remote"
    assert sum(1 for p in remote.rglob("*") if p.is_file()) >= len(before)
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    dvc(project, "pull", *STAGES)
    assert tree_digest(project / "data/prepared") == before
    assert "up to date" in dvc(project, "status", *STAGES).stdout

    # 6) a failing validation stops the pipeline with the expectation named
    set_param(project, "validate", "min_frames", 50)  # the clips have 10 frames
    proc = dvc(project, "repro", *STAGES, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "too_short" in out and "expect_column_values_to_be_between(num_frames)" in out
    assert "failed to reproduce 'validate'" in out
