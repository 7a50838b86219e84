"""MLflow tracking of `iwarp train --tracking-uri` (sqlite store; and a real `mlflow server`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iwarp.checkpoint import load_model
from tests.helpers.train import run_iwarp, train_args

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

SETTINGS = [
    "logging.every_steps=1",
    "logging.images_every_steps=2",
    "logging.num_samples=2",
    "threads=1",
    "experiment=iwarp-test",
]


# `data`: tests/conftest.py (one small synthetic dataset for the session).


def prepare_experiment(uri: str, artifacts: Path | None) -> str:
    """Create the experiment first so a file-backed store keeps artifacts under tmp, not ./mlruns."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("iwarp-test")
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment("iwarp-test", artifact_location=artifacts.as_uri() if artifacts else None)


def check_tracked_run(uri: str, out: Path, steps: int, tmp_path: Path, first_steps: int | None = None) -> None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("iwarp-test")
    (run,) = client.search_runs([exp.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    # params: the flattened config
    assert run.data.params["optim.steps"] == str(first_steps or steps)  # as the run started
    assert run.data.params["model.kind"] == "implicit" and run.data.params["world_size"] == "1"
    # per-step losses, once per step
    history = client.get_metric_history(run_id, "g/total")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, steps + 1))
    assert {"g/reconstruction", "g/equivariance", "d/total", "samples_per_s", "lr/generator"} <= set(run.data.metrics)
    # pictures: stepped sample grids and attention maps, plus the loss curves
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith("images/samples+step+2+") and p.endswith(".png") for p in images)
    assert any(p.startswith("images/attention+step+2+") and p.endswith(".png") for p in images)
    assert "images/loss-curves.png" in images
    # the checkpoint, byte for byte
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="checkpoints/final.ckpt", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    assert Path(local).read_bytes() == (out / "checkpoints" / "final.ckpt").read_bytes()
    # the model, with a signature, giving the checkpoint's predictions for any batch and k
    mlflow.set_tracking_uri(uri)
    # one model per finished training (a resumed run logs its new final model too); newest last
    logged = sorted(
        mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list"),
        key=lambda m: m.creation_timestamp,
    )[-1]
    assert logged.source_run_id == run_id
    info = mlflow.models.get_model_info(logged.model_uri)
    assert [s.name for s in info.signature.inputs.inputs] == ["sources", "driving"]
    assert info.signature.inputs.inputs[0].shape == (-1, -1, 3, 64, 64)
    served = mlflow.pytorch.load_model(logged.model_uri)
    reference = load_model(out / "checkpoints" / "final.ckpt")
    sources, driving = torch.rand(3, 3, 3, 64, 64), torch.rand(3, 3, 64, 64)  # batch 3, k 3: both dynamic
    with torch.no_grad():
        torch.testing.assert_close(
            served(sources, driving), reference(sources, driving).prediction, atol=1e-5, rtol=1e-4
        )


@pytest.mark.slow
def test_sqlite_tracking_logs_everything_and_resume_continues_the_run(data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_experiment(uri, tmp_path / "artifacts")
    out = tmp_path / "run"
    run_iwarp(*train_args(data, out, "optim.steps=2", *SETTINGS), "--tracking-uri", uri)
    run_iwarp(*train_args(data, out, "optim.steps=4", *SETTINGS), "--tracking-uri", uri, "--resume")
    check_tracked_run(uri, out, 4, tmp_path, first_steps=2)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("iwarp-test").experiment_id])
    assert run.data.tags["resume.optim.steps"] == "4"  # params are immutable: the change is a tag


# `mlflow_server`: tests/conftest.py (a real server, pipelines.services.MlflowServer).


@pytest.mark.slow
def test_tracking_through_a_real_mlflow_server(data, tmp_path, mlflow_server):
    """Everything goes over HTTP: the run, metrics, image and checkpoint uploads (proxied artifact
    store), and the pt2 model, which is then loaded back through the server."""
    out = tmp_path / "run"
    proc = run_iwarp(
        *train_args(data, out, "optim.steps=2", *SETTINGS),
        "--tracking-uri",
        mlflow_server,
        "--register-model",
        "iwarp-test-model",
    )
    assert "trained 2 steps" in proc.stdout
    check_tracked_run(mlflow_server, out, 2, tmp_path)
    versions = MlflowClient(mlflow_server).search_model_versions("name='iwarp-test-model'")
    assert [v.version for v in versions] == ["1"]
