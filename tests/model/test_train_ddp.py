"""Two-process DDP training on CPU (gloo) through the real torch.distributed launcher."""

from __future__ import annotations

import json

import pytest
import torch

from iwarp.checkpoint import load_checkpoint, load_model
from iwarp.config import from_dict
from iwarp.discriminator import MultiScalePatchDiscriminator
from iwarp.training.config import TrainConfig
from iwarp.training.state import param_digest
from tests.helpers.train import run_iwarp, train_args

pytestmark = pytest.mark.slow


# `data`: tests/conftest.py (one small synthetic dataset for the session).


def test_two_processes_stay_in_sync_and_resume(data, tmp_path):
    """`--nproc 2` re-launches through torch.distributed.run; every checkpoint gathers a digest of
    each rank's parameters. The real loss set (VGG perceptual pyramid, hinge GAN + feature
    matching, equivariance) runs here, so DDP is tested with what users train. The run stops
    at step 2 and a second launch resumes it on two processes to step 4."""
    out = tmp_path / "ddp"
    common = ["checkpoint.every_steps=2", "logging.every_steps=1", "logging.images_every_steps=0", "data.batch_size=2"]
    first = run_iwarp(*train_args(data, out, "optim.steps=2", *common, cheap=False), "--nproc", "2")
    assert "trained 2 steps" in first.stdout
    second = run_iwarp(*train_args(data, out, "optim.steps=4", *common, cheap=False), "--nproc", "2", "--resume")
    assert "resuming from" in second.stdout + second.stderr and "trained 4 steps" in second.stdout

    for name in ("step-00000002.ckpt", "step-00000004.ckpt"):
        ckpt = load_checkpoint(out / "checkpoints" / name)
        digests = ckpt["rank_digests"]
        assert len(digests) == 2 and digests[0] == digests[1], f"ranks diverged in {name}: {digests}"
        assert len(ckpt["rng"]) == 2
        assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"]), "ranks need their own RNG streams"
        assert ckpt["sampler"]["world_size"] == 2
    first_weights = load_checkpoint(out / "checkpoints" / "step-00000002.ckpt")["model"]
    final = load_checkpoint(out / "checkpoints" / "final.ckpt")
    assert final["step"] == 4
    assert any(not torch.equal(first_weights[k], final["model"][k]) for k in first_weights), "resumed run must train"

    cfg = from_dict(TrainConfig, final["train_config"])
    model = load_model(out / "checkpoints" / "final.ckpt")
    disc = MultiScalePatchDiscriminator(cfg.discriminator)
    disc.load_state_dict(final["discriminator"])
    # the saved weights are the weights both ranks hold
    assert param_digest(model, disc) == final["rank_digests"][0]

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"g/perceptual", "g/gan", "g/feature_matching", "g/equivariance", "d/total"} <= set(records[-1])
    params = json.loads((out / "params.json").read_text())
    assert params["world_size"] == 2 and params["global_batch_size"] == 4
