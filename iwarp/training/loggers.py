"""The small logger interface the training loop talks to.

The loop never imports a tracking library: it calls these methods on whatever logger it is
given. `components/tracking.py` implements the same interface on MLflow; here are the console
and file loggers that always run on rank 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


class Logger:
    """No-op base: override what a backend supports. All methods are called on rank 0 only."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Flattened config (`{"optim.lr_generator": 2e-4, ...}`), once per run."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars at a training step (losses averaged over ranks and the logging window)."""

    def log_image(self, path: Path, step: int | None = None) -> None:
        """A PNG already written under the run's `images/` folder."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Any file (checkpoint, config, metrics) to keep with the run."""

    def log_model(
        self, model: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], info: dict[str, Any]
    ) -> None:
        """The trained generator; `example` = (sources, driving) of a real batch; `info` has
        `model_kind`, `model_config`, `checkpoint` (path)."""

    def close(self, status: str = "FINISHED") -> None:
        """`FINISHED`, `FAILED` or `KILLED`."""


class MultiLogger(Logger):
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def log_params(self, params):
        for lg in self.loggers:
            lg.log_params(params)

    def log_metrics(self, metrics, step):
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def log_image(self, path, step=None):
        for lg in self.loggers:
            lg.log_image(path, step)

    def log_artifact(self, path, artifact_path=None):
        for lg in self.loggers:
            lg.log_artifact(path, artifact_path)

    def log_model(self, model, example, info):
        for lg in self.loggers:
            lg.log_model(model, example, info)

    def close(self, status="FINISHED"):
        for lg in self.loggers:
            lg.close(status)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ConsoleLogger(Logger):
    """One line per logging step; `tqdm.write` keeps the progress bar intact."""

    def log_metrics(self, metrics, step):
        from tqdm import tqdm

        tqdm.write(f"step {step:>7d}  " + "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items())))


class JSONLLogger(Logger):
    """`metrics.jsonl` (one JSON object per logging step) and `params.json` in the run folder.

    On resume, records after the resumed step (written by the killed run) are dropped so the
    file, and the loss curves drawn from it, show each step once.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log_params(self, params):
        (self.run_dir / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True, default=str))

    def log_metrics(self, metrics, step):
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def history(self) -> list[dict[str, float]]:
        return read_jsonl(self.path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a last line cut by a kill is skipped, not fatal."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
