"""Killed runs resume exactly: SIGKILL mid-training + `--resume` == an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from iwarp.checkpoint import load_checkpoint
from tests.helpers.train import REPO, assert_same, env, iwarp_cmd, run_iwarp, train_args

pytestmark = pytest.mark.slow

STEPS = 24
SETTINGS = [
    "optim.steps=24",
    "checkpoint.every_steps=4",
    "checkpoint.keep_last=10",
    "logging.every_steps=1",
    "logging.images_every_steps=0",
    "threads=1",
]


# `data`: tests/conftest.py (one small synthetic dataset for the session).


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # a line being written
            pass
    return steps


def start_and_wait(data: Path, out: Path, until_step: int) -> subprocess.Popen:
    """Start training in a subprocess; return once it has logged `until_step`."""
    proc = subprocess.Popen(
        iwarp_cmd(*train_args(data, out, *SETTINGS)),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while max(logged_steps(out), default=0) < until_step:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("training made no progress")
        time.sleep(0.02)
    return proc


def test_sigkill_then_resume_matches_uninterrupted_run(data, tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_iwarp(*train_args(data, reference, *SETTINGS))

    proc = start_and_wait(data, interrupted, until_step=10)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: like an OOM kill or a lost node
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = sorted(int(p.stem.split("-")[1]) for p in (interrupted / "checkpoints").glob("step-*.ckpt"))
    progressed = max(logged_steps(interrupted))
    assert saved and saved[-1] < STEPS, "the kill must land before the end"
    assert progressed > saved[-1], "work after the last checkpoint is lost and must be redone"
    assert not (interrupted / "checkpoints" / "final.ckpt").exists()

    resumed = run_iwarp(*train_args(data, interrupted, *SETTINGS), "--resume")
    assert (
        f"resuming from {interrupted / 'checkpoints' / f'step-{saved[-1]:08d}.ckpt'}" in resumed.stdout + resumed.stderr
    )

    a = load_checkpoint(reference / "checkpoints" / "final.ckpt")
    b = load_checkpoint(interrupted / "checkpoints" / "final.ckpt")
    assert a["step"] == b["step"] == STEPS
    for key in ("model", "discriminator", "optimizers", "schedulers", "scalers", "rng", "sampler", "rank_digests"):
        assert_same(a[key], b[key], key)
    # the log shows every step once, as if never interrupted
    assert logged_steps(interrupted) == list(range(1, STEPS + 1))
    ref_log = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    int_log = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["g/total"] for r in ref_log] == [r["g/total"] for r in int_log]


def test_sigterm_checkpoints_at_the_next_step_and_resumes(data, tmp_path):
    out = tmp_path / "run"
    proc = start_and_wait(data, out, until_step=5)
    proc.send_signal(signal.SIGTERM)  # Kubernetes eviction / torchrun shutdown
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    assert "--resume" in output
    stopped_at = load_checkpoint(sorted((out / "checkpoints").glob("step-*.ckpt"))[-1])["step"]
    assert 5 <= stopped_at < STEPS
    assert max(logged_steps(out)) == stopped_at  # nothing was lost: the checkpoint is the last step
    run_iwarp(*train_args(data, out, *SETTINGS), "--resume")
    assert load_checkpoint(out / "checkpoints" / "final.ckpt")["step"] == STEPS

    # A damaged newest checkpoint stops `--resume` with a clear message naming the intact ones.
    latest = out / "checkpoints" / f"step-{STEPS:08d}.ckpt"
    latest.write_bytes(latest.read_bytes()[:-100])  # a copy cut short
    proc = run_iwarp(*train_args(data, out, *SETTINGS, "optim.steps=28"), "--resume", check=False)
    assert proc.returncode == 2  # a corrupt file: bad input
    assert "truncated" in proc.stderr and "step-00000020.ckpt" in proc.stderr and "--resume-from" in proc.stderr
    assert "Traceback" not in proc.stderr
