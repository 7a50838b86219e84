"""MLflow implementation of the training loop's logger interface, made so that tracking
never blocks or fails a training.

Kept outside `iwarp/` so the model library never imports MLflow; `iwarp train
--tracking-uri URI` imports this module lazily.

How a logging call travels (`MLflowLogger`):
1. On the training thread it is appended to the run's journal, `<out_dir>/tracking/journal.jsonl`
   (a local file append; no network), then put on a bounded in-memory queue without waiting.
   A full queue drops nothing: the worker reads what the queue could not hold back from the
   journal. So a logging call costs a local write, never a network round trip.
2. One worker thread delivers the calls to MLflow in journal order. A failure that may pass
   (connection refused, timeout, 5xx, 429) is retried with exponential backoff (0.5 s doubling
   to 10 s) for as long as the training runs; MLflow's own HTTP retries are turned down so this
   thread alone decides. `tracking/state.json` records how far delivery got.
3. Delivery is idempotent (`MLflowTarget`): a metric step already in the run's history, a param
   already set, a stepped image already stored or a model already logged for that step is not
   sent again. A call whose response was lost in an outage is therefore never doubled.
4. `close()` waits for the backlog while the server makes progress; if it is still unreachable
   after `IWARP_TRACKING_DRAIN_S` (default 30 s) without progress, the training ends anyway and
   prints one line saying how to upload later: `iwarp track sync RUN_DIR --tracking-uri URI`.

`sync_run` (`iwarp track sync`) replays the journal (or, for a run trained without tracking,
what its folder holds) through the same idempotent delivery: a second sync adds nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iwarp.training.loggers import Logger, read_jsonl

_STEPPED_IMAGE = re.compile(r"^(?P<key>.+)-(?P<step>\d+)$")
_BATCH, _METRIC_BATCH = 100, 1000  # MLflow's limits of params / metrics per log_batch call
METRIC_STEPS_PER_CALL = 50  # a backlog of metrics goes in requests of up to this many steps
QUEUE_ENV, QUEUE_SIZE = "IWARP_TRACKING_QUEUE", 256  # calls held in memory; more wait in the journal
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0
DRAIN_ENV = "IWARP_TRACKING_DRAIN_S"  # how long close() waits for a server that makes no progress
DEFAULT_DRAIN_S = 30.0
# MLflow's client retries a refused connection for minutes by default; the worker retries instead.
# The timeout bounds one request (a checkpoint upload included), not the training: 30 s.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
JOURNAL, STATE = "journal.jsonl", "state.json"


class PredictionOnly(torch.nn.Module):
    """(sources, driving) -> prediction tensor: the form torch.export and pyfunc serve."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sources: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        return self.model(sources, driving)["prediction"]


def fast_fail_http() -> None:
    """Turn MLflow's HTTP retries down in this process (unless the user set them)."""
    for key, value in HTTP_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def few_http_retries(retries: int = 2) -> Iterator[None]:
    """MLflow calls inside fail after `retries` quick retries instead of minutes of them
    (MLflow reads these variables at each request); for one-off calls in a longer process."""
    saved = {k: os.environ.get(k) for k in HTTP_ENV}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def transient(exc: BaseException) -> bool:
    """True for failures an outage causes (worth retrying); False for a call MLflow rejects."""
    import requests
    from mlflow.exceptions import MlflowException

    from iwarp.errors import ServiceUnavailable

    if isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError, ServiceUnavailable)):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return False


def sync_hint(run_dir: Path, uri: str) -> str:
    return f"iwarp track sync {run_dir} --tracking-uri {uri}"


def recorded_run_id(run_dir: str | Path) -> str:
    """The MLflow run a run folder logs to ("" if none): a training that started while MLflow
    was down has it here, not in its checkpoint."""
    spec = Journal(Path(run_dir)).load_spec()
    return (spec.run_id or "") if spec else ""


def pending_calls(run_dir: str | Path) -> int:
    """Logging calls of a run folder that have not reached MLflow (0 for an untracked run)."""
    journal = Journal(Path(run_dir))
    spec = journal.load_spec()
    return max(len(journal.entries()) - spec.delivered, 0) if spec else 0


# --------------------------------------------------------------------------- delivery
@dataclasses.dataclass
class RunSpec:
    """Which MLflow run a run folder logs to; saved in `tracking/state.json`."""

    tracking_uri: str
    experiment: str = "iwarp"
    run_name: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    registered_model_name: str | None = None
    delivered: int = 0  # journal entries delivered (a prefix of the journal)
    slowest_call_ms: float = 0.0  # the slowest logging call on the training thread (the last run)


class MLflowTarget:
    """Delivers journal entries to one MLflow run, each at most once.

    What the run already holds (metric steps per key, params, image names, logged models) is
    read from the server on first need and again after any failure, since a failed call may
    have landed before its response was lost.
    """

    def __init__(self, spec: RunSpec, run_dir: Path):
        from mlflow.tracking import MlflowClient

        self.spec, self.run_dir = spec, Path(run_dir)
        self.client = MlflowClient(spec.tracking_uri)
        self._known: dict[str, Any] = {}
        self._fresh = False  # True for a run created here: it holds nothing yet

    # ------------------------------------------------------------- run
    def ensure_run(self) -> str:
        """The run's id, creating the run (or a new one, if the server does not know it).
        A failure an outage does not explain (a bad URI, no permission) is an InputError."""
        from iwarp.errors import InputError

        try:
            return self._ensure_run()
        except Exception as exc:
            if transient(exc):
                raise
            raise InputError(f"tracking URI {self.spec.tracking_uri}: {str(exc).splitlines()[0][:300]}") from exc

    def _ensure_run(self) -> str:
        from mlflow.exceptions import MlflowException

        if self.spec.run_id and "run" not in self._known:
            try:
                self.client.get_run(self.spec.run_id)
                self._known["run"] = True
            except MlflowException as exc:
                if transient(exc):
                    raise
                warnings.warn(
                    f"MLflow run {self.spec.run_id} not found at {self.spec.tracking_uri}; starting a new run",
                    stacklevel=2,
                )
                self.spec.run_id = None
        if not self.spec.run_id:
            exp = self.client.get_experiment_by_name(self.spec.experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.spec.experiment)
            run = self.client.create_run(exp_id, run_name=self.spec.run_name, tags=self.spec.tags)
            self.spec.run_id, self._fresh = run.info.run_id, True
            self._known = {"run": True}
        return self.spec.run_id

    def forget(self) -> None:
        """After a failure: re-read what the run holds before the next delivery."""
        self._known = {"run": True} if "run" in self._known else {}
        self._fresh = False

    def _steps(self, key: str) -> set[int]:
        cache = self._known.setdefault("steps", {})
        if key not in cache:
            history = [] if self._fresh else self.client.get_metric_history(self.spec.run_id, key)
            cache[key] = {m.step for m in history}
        return cache[key]

    def _images(self) -> set[str]:
        if "images" not in self._known:
            names = [] if self._fresh else [a.path for a in self.client.list_artifacts(self.spec.run_id, "images")]
            self._known["images"] = {n.split("+timestamp+")[0] for n in names if "+step+" in n and n.endswith(".png")}
        return self._known["images"]

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    # ------------------------------------------------------------- ops
    def deliver(self, entries: list[dict[str, Any]]) -> None:
        """One call, or consecutive `metrics` calls (a backlog) in one request."""
        self.ensure_run()
        if entries[0]["op"] == "metrics":
            self._metrics(entries)
        else:
            (entry,) = entries
            getattr(self, f"_{entry['op']}")(entry)

    def _params(self, e: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        values = {k: str(v)[:6000] for k, v in e["params"].items()}
        existing = {} if self._fresh else self.client.get_run(self.spec.run_id).data.params
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        # Params are immutable in MLflow: a value changed on resume becomes a tag.
        changed = [RunTag(f"resume.{k}", v) for k, v in values.items() if k in existing and existing[k] != v]
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(self.spec.run_id, params=new[i : i + _BATCH])
        if changed:
            self.client.log_batch(self.spec.run_id, tags=changed)

    def _metrics(self, entries: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        rows = [
            Metric(k, float(v), int(e["time"]), int(e["step"]))
            for e in entries
            for k, v in e["metrics"].items()
            if np.isfinite(v) and int(e["step"]) not in self._steps(k)
        ]
        for i in range(0, len(rows), _METRIC_BATCH):
            self.client.log_batch(self.spec.run_id, metrics=rows[i : i + _METRIC_BATCH])
        for row in rows:
            self._steps(row.key).add(row.step)

    def _image(self, e: dict[str, Any]) -> None:
        """`samples-00000100.png` -> stepped image `samples` (UI step slider); else a file."""
        from PIL import Image

        path = self.path(e["path"])
        match = _STEPPED_IMAGE.match(path.stem)
        if not match:
            self.client.log_artifact(self.spec.run_id, str(path), "images")
            return
        key, step = match["key"], int(match["step"])
        name = f"images/{key}+step+{step}"
        if name in self._images():
            return
        with Image.open(path) as img:
            self.client.log_image(self.spec.run_id, img.convert("RGB"), key=key, step=step)
        self._images().add(name)

    def _tags(self, e: dict[str, Any]) -> None:  # setting a tag again to its value: idempotent
        from mlflow.entities import RunTag

        self.client.log_batch(self.spec.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in e["tags"].items()])

    def _artifact(self, e: dict[str, Any]) -> None:  # same path again overwrites: idempotent
        self.client.log_artifact(self.spec.run_id, str(self.path(e["path"])), e.get("artifact_path"))

    def _model(self, e: dict[str, Any]) -> None:
        """The generator of the final checkpoint as an MLflow PyTorch model with a tensor signature.

        Exported with torch.export (pt2: no pickle on load) from an example of batch 2 so the
        batch and source-count dimensions stay dynamic (a batch-1 example would freeze them).
        If export fails the model is pickled with the `iwarp` package as code. Tagged with its
        step: a model already logged for this run and step is not logged again.
        """
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from iwarp.checkpoint import load_model

        run_id, step = self.spec.run_id, str(e["info"].get("step", ""))
        exp_id = self.client.get_run(run_id).info.experiment_id
        logged = self.client.search_logged_models([exp_id], filter_string=f"source_run_id = '{run_id}'")
        if any(m.tags.get("iwarp.step") == step for m in logged):
            return
        sources, driving = torch.load(self.path(e["example"]), weights_only=True)
        if sources.shape[0] < 2:  # keep the batch dimension dynamic
            sources, driving = sources.repeat(2, 1, 1, 1, 1), driving.repeat(2, 1, 1, 1)
        wrapped = PredictionOnly(load_model(self.path(e["checkpoint"])).float().eval())
        H, W = driving.shape[-2:]
        signature = ModelSignature(
            inputs=Schema(
                [
                    TensorSpec(np.dtype(np.float32), (-1, -1, 3, H, W), "sources"),
                    TensorSpec(np.dtype(np.float32), (-1, 3, H, W), "driving"),
                ]
            ),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, H, W), "prediction")]),
        )
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
        metadata = {k: v for k, v in e["info"].items() if k != "checkpoint"}
        common = dict(
            name="model",
            signature=signature,
            pip_requirements=requirements,
            metadata=metadata,
            registered_model_name=self.spec.registered_model_name,
            tags={"iwarp.step": step},
        )
        mlflow.set_tracking_uri(self.spec.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            try:
                with torch.no_grad():
                    mlflow.pytorch.log_model(
                        wrapped, input_example=(sources.numpy(), driving.numpy()), serialization_format="pt2", **common
                    )
                self.client.set_tag(run_id, "model_format", "pt2")
            except Exception as exc:
                if transient(exc):
                    raise
                # torch.export cannot trace every model: fall back, say so
                warnings.warn(
                    f"torch.export of the model failed ({type(exc).__name__}: {exc}); logging it pickled", stacklevel=2
                )
                import iwarp

                mlflow.pytorch.log_model(
                    wrapped, serialization_format="pickle", code_paths=[list(iwarp.__path__)[0]], **common
                )
                self.client.set_tag(run_id, "model_format", "pickle")

    def _close(self, e: dict[str, Any]) -> None:
        self.client.set_terminated(self.spec.run_id, e["status"])


# --------------------------------------------------------------------------- journal
class Journal:
    """`<run_dir>/tracking/`: every logging call in order (journal.jsonl) and how far delivery
    got (state.json). The journal is the local record the queue spills to."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "tracking"
        self.path, self.state_path = self.dir / JOURNAL, self.dir / STATE

    def entries(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path) if self.path.exists() else []

    def load_spec(self) -> RunSpec | None:
        try:
            return RunSpec(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save_spec(self, spec: RunSpec) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(spec), indent=1))
        os.replace(tmp, self.state_path)


def deliver_one(target: MLflowTarget, entries: list[dict[str, Any]], give_up) -> bool:
    """Deliver one journal entry (or a run of metrics entries), retrying what an outage causes;
    `give_up(exc, delay)` waits `delay` seconds and says whether to stop trying. False when it
    gave up."""
    from iwarp.errors import IwarpError

    delay = RETRY_FIRST_S
    while True:
        try:
            target.deliver(entries)
            return True
        except IwarpError:
            raise
        except Exception as exc:
            target.forget()
            if not transient(exc):  # MLflow rejects the call itself: retrying cannot help
                warnings.warn(
                    f"tracking: MLflow rejected a {entries[0]['op']} call "
                    f"({type(exc).__name__}: {str(exc)[:200]}); skipped",
                    stacklevel=2,
                )
                return True
            if give_up(exc, delay):
                return False
            delay = min(delay * 2, RETRY_MAX_S)


# --------------------------------------------------------------------------- the logger
class MLflowLogger(Logger):
    """The training loop's MLflow logger: every call is journaled locally and delivered by one
    background thread (see the module's docstring). `run_id` continues an existing run (a
    resumed training keeps one run in the UI); `run_dir` is the training's out_dir.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "iwarp",
        run_name: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        registered_model_name: str | None = None,
        run_dir: str | Path = ".",
        resume: bool = False,
    ):
        fast_fail_http()
        self.run_dir = Path(run_dir)
        self.journal = Journal(self.run_dir)
        self.journal.dir.mkdir(parents=True, exist_ok=True)
        old = self.journal.load_spec() if resume else None
        entries = self.journal.entries() if resume else []
        same = old is not None and old.tracking_uri == tracking_uri and (run_id is None or run_id == old.run_id)
        self.spec = RunSpec(
            tracking_uri,
            experiment,
            run_name,
            run_id or (old.run_id if same else None),
            tags or {},
            registered_model_name,
            min(old.delivered, len(entries)) if same else 0,
        )
        # Rewrite the journal whole (a kill may have cut its last line) and index it for the worker.
        self._offsets: list[int] = []
        data = b""
        for entry in entries:
            self._offsets.append(len(data))
            data += (json.dumps(entry) + "\n").encode()
        self.journal.path.write_bytes(data)
        self.journal.save_spec(self.spec)
        self._file = open(self.journal.path, "ab")  # noqa: SIM115 - open for the run's lifetime
        self._written = len(entries)
        self._queue: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue(int(os.environ.get(QUEUE_ENV, QUEUE_SIZE)))
        self._ahead: dict[int, dict[str, Any]] = {}  # entries taken from the queue before their turn
        self._cv = threading.Condition()
        self._closed = False
        self._abandon = threading.Event()
        self._down_since: float | None = None
        self.spilled = 0
        self.max_call_s = 0.0  # the slowest logging call on the training thread

        self.target = MLflowTarget(self.spec, self.run_dir)
        try:  # once, up front, so the checkpoint records the run id; starting offline is fine too
            self.target.ensure_run()
            self.journal.save_spec(self.spec)
        except Exception as exc:
            if not transient(exc):  # a bad URI (InputError) stops the training before it starts
                self._file.close()
                raise
            self.target.forget()
            self._went_down(exc)
        self.run_id: str | None = self.spec.run_id
        self._worker = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------- training thread
    def _put(self, entry: dict[str, Any]) -> None:
        """Journal `entry` and queue it; never waits on the network or on the worker."""
        t0 = time.perf_counter()
        line = (json.dumps(entry, default=str) + "\n").encode()
        with self._cv:
            seq = self._written
            self._offsets.append(self._file.tell())
            self._file.write(line)
            self._file.flush()
            self._written += 1
            try:
                self._queue.put_nowait((seq, entry))
            except queue.Full:
                self.spilled += 1  # the worker reads it back from the journal
            self._cv.notify()
        self.max_call_s = max(self.max_call_s, time.perf_counter() - t0)

    def _rel(self, path: str | Path) -> str:
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.run_dir.resolve()))
        except ValueError:
            return str(path)

    def log_params(self, params: dict[str, Any]) -> None:
        self._put({"op": "params", "params": {k: str(v) for k, v in params.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._put(
            {
                "op": "metrics",
                "step": int(step),
                "time": int(time.time() * 1000),
                "metrics": {k: float(v) for k, v in metrics.items()},
            }
        )

    def log_image(self, path: Path, step: int | None = None) -> None:
        self._put({"op": "image", "path": self._rel(path)})

    def log_tags(self, tags: dict[str, Any]) -> None:
        self._put({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._put({"op": "artifact", "path": self._rel(path), "artifact_path": artifact_path})

    def log_model(
        self, model: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], info: dict[str, Any]
    ) -> None:
        """Logged from `info["checkpoint"]` (the final checkpoint, the same weights as `model`),
        so a later `track sync` can log it too; `example` is kept next to the journal."""
        step = int(info.get("step", 0))
        example_path = self.journal.dir / f"model-example-{step:08d}.pt"
        torch.save(tuple(t[:2].detach().float().cpu().clone() for t in example), example_path)
        self._put(
            {
                "op": "model",
                "checkpoint": self._rel(info["checkpoint"]),
                "example": self._rel(example_path),
                "info": {k: v for k, v in info.items() if k != "checkpoint"},
            }
        )

    def close(self, status: str | None = "FINISHED") -> None:
        """End the run with `status` (None: leave it as it is, for a pipeline step logging to a run
        it did not open). Deliver the backlog while the server answers; give up after
        `IWARP_TRACKING_DRAIN_S` seconds of it being unreachable, and say in one line how to
        upload the rest."""
        if status is not None:
            self._put({"op": "close", "status": status})
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        drain_s = float(os.environ.get(DRAIN_ENV, DEFAULT_DRAIN_S))
        closing = time.monotonic()
        while self._worker.is_alive():
            self._worker.join(timeout=0.2)
            down = self._down_since
            if down is not None and time.monotonic() - max(down, closing) > drain_s:
                self._abandon.set()
                break
        self._file.close()
        self.spec.slowest_call_ms = round(self.max_call_s * 1000, 3)
        self.journal.save_spec(self.spec)
        left = self._written - self.spec.delivered
        if left > 0:
            print(
                f"tracking: MLflow at {self.spec.tracking_uri} is unreachable; {left} logging calls are kept in "
                f"{self.journal.dir}; upload them later with: {sync_hint(self.run_dir, self.spec.tracking_uri)}",
                file=sys.stderr,
                flush=True,
            )

    # ---------------------------------------------------------- worker thread
    def _entry(self, seq: int) -> dict[str, Any]:
        """Journal entry `seq` (< written): from the queue, or from the journal when it spilled."""
        if seq in self._ahead:
            return self._ahead.pop(seq)
        try:
            queued, entry = self._queue.get_nowait()  # the queue holds increasing seqs
            if queued == seq:
                return entry
            self._ahead[queued] = entry  # a later one: the ones before it spilled
        except queue.Empty:
            pass
        with open(self.journal.path, "rb") as f:
            f.seek(self._offsets[seq])
            return json.loads(f.readline())

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            print(
                f"tracking: MLflow at {self.spec.tracking_uri} unreachable ({type(exc).__name__}); the work goes on, "
                f"logging is kept in {self.journal.dir} and delivered when it answers",
                file=sys.stderr,
                flush=True,
            )

    def _came_back(self) -> None:
        if self._down_since is not None:
            print(
                f"tracking: MLflow reachable again after {time.monotonic() - self._down_since:.0f} s; "
                f"delivering {self._written - self.spec.delivered} queued logging calls",
                file=sys.stderr,
                flush=True,
            )
            self._down_since = None

    def _give_up(self, exc: BaseException, delay: float) -> bool:
        self._went_down(exc)
        return self._abandon.wait(delay)

    def _work(self) -> None:
        while True:
            with self._cv:
                while self.spec.delivered >= self._written and not self._closed:
                    self._cv.wait()
                if self.spec.delivered >= self._written:
                    return  # closed and all delivered
                written = self._written
            seq = self.spec.delivered
            batch = [self._entry(seq)]
            while batch[0]["op"] == "metrics" and len(batch) < METRIC_STEPS_PER_CALL and seq + len(batch) < written:
                nxt = self._entry(seq + len(batch))
                if nxt["op"] != "metrics":
                    self._ahead[seq + len(batch)] = nxt
                    break
                batch.append(nxt)
            if not deliver_one(self.target, batch, self._give_up):
                return
            self._came_back()
            self.spec.delivered += len(batch)
            self.run_id = self.spec.run_id
            self.journal.save_spec(self.spec)


# --------------------------------------------------------------------------- sync
@dataclasses.dataclass
class SyncResult:
    run_id: str
    delivered: int  # journal entries sent by this sync
    total: int


def entries_from_folder(run_dir: Path) -> list[dict[str, Any]]:
    """The logging calls of a run trained without tracking, rebuilt from what its folder holds."""
    from iwarp.checkpoint import load_checkpoint

    entries: list[dict[str, Any]] = []
    if (run_dir / "params.json").is_file():
        entries.append({"op": "params", "params": json.loads((run_dir / "params.json").read_text())})
    if (run_dir / "metrics.jsonl").is_file():
        for r in read_jsonl(run_dir / "metrics.jsonl"):
            metrics = {k: v for k, v in r.items() if k not in ("step", "time")}
            entries.append(
                {"op": "metrics", "step": int(r["step"]), "time": int(r.get("time", 0) * 1000), "metrics": metrics}
            )
    for png in sorted((run_dir / "images").glob("*.png")):
        entries.append({"op": "image", "path": str(png.relative_to(run_dir))})
    for name in ("init_from.json", "config.yaml", "metrics.jsonl"):
        if (run_dir / name).is_file():
            entries.append({"op": "artifact", "path": name, "artifact_path": None})
    final = run_dir / "checkpoints" / "final.ckpt"
    if final.is_file():
        entries.append({"op": "artifact", "path": "checkpoints/final.ckpt", "artifact_path": "checkpoints"})
        ckpt = load_checkpoint(final)
        cfg = ckpt["model_config"]
        size = int(cfg.get("image_size", 64)) if isinstance(cfg, dict) else 64
        example = run_dir / "tracking" / "model-example-offline.pt"
        example.parent.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(0)  # any input of the right shape: it only fixes the signature
        torch.save(
            (torch.rand(2, 2, 3, size, size, generator=gen), torch.rand(2, 3, size, size, generator=gen)), example
        )
        entries.append(
            {
                "op": "model",
                "checkpoint": "checkpoints/final.ckpt",
                "example": str(example.relative_to(run_dir)),
                "info": {"model_kind": ckpt["model_kind"], "model_config": cfg, "step": int(ckpt.get("step", 0))},
            }
        )
    entries.append({"op": "close", "status": "FINISHED" if final.is_file() else "KILLED"})
    return entries


def sync_run(run_dir: str | Path, tracking_uri: str, attempts: int = 4) -> SyncResult:
    """Upload what a run folder logged and MLflow lacks: the rest of its journal, or, for a run
    trained without tracking, everything its folder holds. Idempotent."""
    import yaml

    from iwarp.errors import InputError, ServiceUnavailable

    fast_fail_http()
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "tracking" / JOURNAL).is_file():
        raise InputError(f"{run_dir} is not a training run folder (no metrics.jsonl or tracking/{JOURNAL})")
    journal = Journal(run_dir)
    entries = journal.entries()
    if not entries:
        entries = entries_from_folder(run_dir)
        journal.dir.mkdir(parents=True, exist_ok=True)
        journal.path.write_text("".join(json.dumps(e, default=str) + "\n" for e in entries))
    spec = journal.load_spec()
    if spec is None or spec.tracking_uri != tracking_uri:  # never tracked here: a new run
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
        spec = RunSpec(
            tracking_uri,
            cfg.get("experiment") or "iwarp",
            cfg.get("run_name") or None,
            tags=spec.tags if spec else {},
            registered_model_name=spec.registered_model_name if spec else None,
        )
    target = MLflowTarget(spec, run_dir)
    tries = {"n": 0}

    def give_up(exc: BaseException, delay: float) -> bool:
        tries["n"] += 1
        if tries["n"] >= attempts:
            raise ServiceUnavailable(
                f"MLflow at {tracking_uri} is unreachable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); nothing lost, run the sync again later"
            ) from exc
        time.sleep(delay)
        return False

    start = spec.delivered
    while spec.delivered < len(entries):
        tries["n"] = 0
        batch = entries[spec.delivered : spec.delivered + 1]
        while (
            batch[0]["op"] == "metrics"
            and len(batch) < METRIC_STEPS_PER_CALL
            and spec.delivered + len(batch) < len(entries)
            and entries[spec.delivered + len(batch)]["op"] == "metrics"
        ):
            batch.append(entries[spec.delivered + len(batch)])
        deliver_one(target, batch, give_up)
        spec.delivered += len(batch)
        journal.save_spec(spec)
    return SyncResult(spec.run_id or "", spec.delivered - start, len(entries))


# --------------------------------------------------------------------------- pipeline steps
WAIT_ENV, DEFAULT_WAIT_S = "IWARP_MLFLOW_WAIT_S", 300.0  # how long a step waits for an answer it needs
STEP_LOGS = "tracking"  # under a local run's work folder: one journal folder per step


def wait_s() -> float:
    return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))


def answered(call: Any, tracking_uri: str, what: str) -> Any:
    """`call()`: MLflow requests whose answer a step needs (a run id, a registry version, an
    alias). Retried with backoff (0.5 s doubling to 10 s) while MLflow is unreachable, for up to
    `IWARP_MLFLOW_WAIT_S` seconds (default 300); then `ServiceUnavailable` (exit code 3) naming
    the service. `call` must be safe to repeat: a request may land before its answer is lost."""
    from iwarp.errors import ServiceUnavailable

    deadline, delay, said = time.monotonic() + wait_s(), RETRY_FIRST_S, False
    while True:
        try:
            with few_http_retries(0):
                return call()
        except Exception as exc:
            if not transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise ServiceUnavailable(
                    f"MLflow at {tracking_uri} is unreachable: {what} needs its answer and it did not come back "
                    f"within {wait_s():.0f} s ({type(exc).__name__}); nothing was changed"
                ) from exc
            if not said:
                print(
                    f"[mlflow] {what}: MLflow at {tracking_uri} unreachable, waiting up to {wait_s():.0f} s", flush=True
                )
                said = True
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


class StepLog:
    """A pipeline step's logging to an existing MLflow run (a variant's, the sweep's parent),
    through the journal training uses: the step never waits on MLflow or fails because it is down.

    `folder` holds the journal. In a local run it is the run's work folder, and the driver delivers
    what is left when the pipeline ends (`deliver_pending`); in a pod it is a temporary folder,
    drained for `IWARP_TRACKING_DRAIN_S` at `close`.
    """

    def __init__(self, tracking_uri: str, run_id: str, folder: str | Path):
        if not run_id:
            raise ValueError("a step logs to an existing MLflow run: no run id given")
        self.logger = MLflowLogger(tracking_uri, run_id=run_id, run_dir=folder)
        self.folder = Path(folder)

    def __enter__(self) -> MLflowLogger:
        return self.logger

    def __exit__(self, *exc: Any) -> None:
        self.logger.close(status=None)


def step_folder(work_dir: str, name: str) -> Path:
    """Where step `name` journals: `<work_dir>/tracking/<name>`, or a new temporary folder when
    the run has no work folder (a cluster pod)."""
    import tempfile

    if not work_dir:
        return Path(tempfile.mkdtemp(prefix=f"iwarp-{name}-"))
    folder = Path(work_dir) / STEP_LOGS / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pending_folders(root: str | Path) -> list[Path]:
    """Run and step folders under `root` whose journals hold calls MLflow has not received."""
    return sorted(p.parent.parent for p in Path(root).rglob(f"tracking/{STATE}") if pending_calls(p.parent.parent))


def deliver_pending(root: str | Path, tracking_uri: str) -> tuple[int, list[Path]]:
    """Deliver what the journals under `root` hold back (a local pipeline run's steps and
    trainings, after an outage), waiting for MLflow once as `answered` does. Returns (calls
    sent, folders still pending); for those it prints how to upload them later."""
    from iwarp.errors import ServiceUnavailable

    folders, sent, left = pending_folders(root), 0, []
    for i, folder in enumerate(folders):
        try:
            sent += answered(lambda f=folder: sync_run(f, tracking_uri, attempts=1), tracking_uri, "delivery").delivered
        except ServiceUnavailable:  # still down after the wait: the rest would wait in vain
            left += folders[i:]
            break
        except Exception as exc:  # noqa: BLE001 - one folder's failure must not hide the others'
            print(f"[mlflow] {folder}: not delivered ({type(exc).__name__}: {str(exc)[:200]})", flush=True)
            left.append(folder)
    for folder in left:
        print(f"[mlflow] not in MLflow yet, upload later with: {sync_hint(folder, tracking_uri)}", flush=True)
    return sent, left
