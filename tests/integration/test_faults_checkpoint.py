"""A checkpoint write that fails part-way (disk full: OSError ENOSPC after half the bytes hit the
temp file) during a real tiny training run.

Policy (iwarp/training/loop.py `_save_periodic`): a failed periodic checkpoint is one warning line
and training carries on, retrying at the next interval; a failed final checkpoint stops `iwarp
train` with one `error:` line and exit 1. Either way the previous checkpoints stay valid and
loadable, and no temp file is left or taken for a checkpoint."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import iwarp.checkpoint as checkpoint
from iwarp.checkpoint import CheckpointWriteError, latest_checkpoint, load_checkpoint, save_checkpoint
from tests.helpers.train import make_synth, train_args

SETTINGS = [
    "optim.steps=12",
    "checkpoint.every_steps=4",
    "checkpoint.keep_last=10",
    "logging.every_steps=4",
    "logging.images_every_steps=0",
    "threads=1",
]


class DiskFull:
    """os.fdopen for checkpoint temp files whose write raises ENOSPC half-way through the
    payload, for the saves whose (1-based) number is in `fail`."""

    def __init__(self, monkeypatch, fail: set[int]):
        self.fail, self.calls, self.real = fail, 0, os.fdopen
        monkeypatch.setattr(checkpoint.os, "fdopen", self)

    def __call__(self, fd, mode="r", *args, **kwargs):
        f = self.real(fd, mode, *args, **kwargs)
        self.calls += 1
        if self.calls not in self.fail:
            return f
        real_write = f.write

        def write(data):
            if len(data) > 64:
                real_write(data[: len(data) // 2])  # part of it reaches the disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(data)

        f.write = write
        return f


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_save_checkpoint_failing_part_way_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1}, tmp_path / "step-00000001.ckpt")
    DiskFull(monkeypatch, fail={1})
    with pytest.raises(CheckpointWriteError, match="No space left on device") as info:
        save_checkpoint({"step": 2}, path)  # overwriting: the old content must survive
    assert "\n" not in str(info.value) and "previous checkpoints are untouched" in str(info.value)
    assert load_checkpoint(path)["step"] == 1 and temp_files(tmp_path) == []
    # a temp file a kill left behind (the rename never happened) is never taken for a checkpoint
    (tmp_path / ".step-00000009.ckpt.abcd.tmp").write_bytes(path.read_bytes())
    assert latest_checkpoint(tmp_path) == path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data", identities=2, videos=2, frames=12)


def train(data: Path, out: Path) -> int:
    from iwarp.cli import main

    return main(train_args(data, out, *SETTINGS))


@pytest.mark.slow
def test_periodic_checkpoint_failure_warns_and_training_carries_on(data, tmp_path, monkeypatch, capsys):
    disk = DiskFull(monkeypatch, fail={2})  # saves: step 4, step 8 (fails), step 12 (final)
    assert train(data, tmp_path / "run") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "No space left" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: step 8:") and "next try at step 12" in warnings[0]
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["final.ckpt", "step-00000004.ckpt", "step-00000012.ckpt"]
    assert temp_files(ckpts) == [] and disk.calls == 3
    assert load_checkpoint(ckpts / "step-00000004.ckpt")["step"] == 4  # the previous one stayed valid
    assert load_checkpoint(ckpts / "final.ckpt")["step"] == 12  # no step lost: the run finished


@pytest.mark.slow
def test_final_checkpoint_failure_stops_with_one_error_line(data, tmp_path, monkeypatch, capsys):
    DiskFull(monkeypatch, fail={3})
    assert train(data, tmp_path / "run") == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "step-00000012.ckpt" in errors[0], err[
        -2000:
    ]
    assert "Traceback" not in err
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["step-00000004.ckpt", "step-00000008.ckpt"]
    assert temp_files(ckpts) == []
    assert load_checkpoint(latest_checkpoint(ckpts))["step"] == 8  # --resume picks up from here
