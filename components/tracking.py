"""MLflow implementation of the training loop's logger interface.

Kept outside `iwarp/` so the model library never imports MLflow; `iwarp train
--tracking-uri URI` imports this module lazily. Everything goes through `MlflowClient` with an
explicit run id (no process-global active run), except `log_model`, which MLflow ties to an
active run.
"""

from __future__ import annotations

import copy
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iwarp.training.loggers import Logger

_STEPPED_IMAGE = re.compile(r"^(?P<key>.+)-(?P<step>\d+)$")
_BATCH = 100  # MLflow's limit of params / metrics per log_batch call


class PredictionOnly(torch.nn.Module):
    """(sources, driving) -> prediction tensor: the form torch.export and pyfunc serve."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sources: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        return self.model(sources, driving)["prediction"]


class MLflowLogger(Logger):
    """Params, per-step metrics, stepped images, artifacts and the final model of one run.

    `run_id` continues an existing run (a resumed training keeps one run in the UI).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "iwarp",
        run_name: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        registered_model_name: str | None = None,
    ):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.registered_model_name = registered_model_name
        self.resumed = False
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                self.resumed = True
            except mlflow.exceptions.MlflowException:
                warnings.warn(f"MLflow run {run_id} not found at {tracking_uri}; starting a new run", stacklevel=2)
                run_id = None
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags or {})
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id

    # ---------------------------------------------------------------- interface
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        values = {k: str(v) for k, v in params.items()}
        existing = self.client.get_run(self.run_id).data.params if self.resumed else {}
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        # Params are immutable in MLflow: a value changed on resume becomes a tag.
        changed = [RunTag(f"resume.{k}", v) for k, v in values.items() if k in existing and existing[k] != v]
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + _BATCH])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        for i in range(0, len(rows), _BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i : i + _BATCH])

    def log_image(self, path: Path, step: int | None = None) -> None:
        """`samples-00000100.png` -> stepped image `samples` (UI step slider); else a file."""
        from PIL import Image

        path = Path(path)
        match = _STEPPED_IMAGE.match(path.stem)
        if match:
            with Image.open(path) as img:
                self.client.log_image(self.run_id, img.convert("RGB"), key=match["key"], step=int(match["step"]))
        else:
            self.client.log_artifact(self.run_id, str(path), "images")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, model: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], info: dict[str, Any]) -> None:
        """The generator as an MLflow PyTorch model with a tensor signature.

        Exported with torch.export (pt2: no pickle on load) from an example of batch 2 so the
        batch and source-count dimensions stay dynamic (a batch-1 example would freeze them).
        If export fails the model is pickled with the `iwarp` package as code.
        """
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        sources, driving = (t.detach().float().cpu() for t in example)
        if sources.shape[0] < 2:  # keep the batch dimension dynamic
            sources, driving = sources.repeat(2, 1, 1, 1, 1), driving.repeat(2, 1, 1, 1)
        wrapped = PredictionOnly(copy.deepcopy(model).float().cpu().eval())  # leave the caller's model alone
        H, W = driving.shape[-2:]
        signature = ModelSignature(
            inputs=Schema([
                TensorSpec(np.dtype(np.float32), (-1, -1, 3, H, W), "sources"),
                TensorSpec(np.dtype(np.float32), (-1, 3, H, W), "driving"),
            ]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, H, W), "prediction")]),
        )
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
        metadata = {k: v for k, v in info.items() if k != "checkpoint"}
        common = dict(name="model", signature=signature, pip_requirements=requirements, metadata=metadata,
                      registered_model_name=self.registered_model_name)
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            try:
                with torch.no_grad():
                    mlflow.pytorch.log_model(wrapped, input_example=(sources.numpy(), driving.numpy()),
                                             serialization_format="pt2", **common)
                self.client.set_tag(self.run_id, "model_format", "pt2")
            except Exception as exc:  # torch.export cannot trace every model: fall back, say so
                warnings.warn(f"torch.export of the model failed ({type(exc).__name__}: {exc}); logging it pickled", stacklevel=2)
                import iwarp

                mlflow.pytorch.log_model(wrapped, serialization_format="pickle",
                                         code_paths=[list(iwarp.__path__)[0]], **common)
                self.client.set_tag(self.run_id, "model_format", "pickle")

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
