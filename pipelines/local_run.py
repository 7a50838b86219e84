"""`iwarp pipeline run`: the whole pipeline on this machine with `kfp.local`'s
SubprocessRunner, against local services (MLflow server with SQLite, TorchServe, a DVC
directory remote), on the real-face dataset (DVC's `faces` stage) unless `--data` says
`synth` or names a folder of videos; the keypoint stage fine-tunes the shipped FOMM baseline
(`iwarp-faces-64-fomm`), then the four variants fine-tune from the shipped model with its
detector frozen.

The pipeline is the very one `iwarp pipeline compile` writes for a cluster; only its
parameters differ (torchrun instead of a TrainJob, TorchServe instead of KServe, local
paths instead of S3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from pipelines.services import MlflowServer, dvc_remote_dir, ensure_torchserve, iwarp_home

# preprocess, validate, gate, parent, keypoints (+ its evaluation when it trains), 4 x (train, evaluate),
# compare, animate, register, package, canary
TASKS_PER_RUN = 19
README_PICTURE = Path("docs/images/main-job.png")  # in the project; written only when asked
DEFAULT_STEPS = 100  # fine-tuning steps per variant (and the keypoint stage): within 20 min on 2 shared cores
DEFAULT_FRAME_STRIDE = 4  # evaluation drives every 4th frame: ~115 of the test woman's frames per k


@dataclasses.dataclass
class LocalRunOptions:
    data: str = "faces"  # faces (DVC's `faces` stage) | synth (synthetic heads) | a folder of raw videos
    data_params: list[str] = dataclasses.field(default_factory=list)  # params.yaml overrides (faces.clips_per_photo=2)
    config: str = "configs/faces-64.yaml"
    init_from: str = "iwarp-faces-64"  # shipped model (name or path) every variant fine-tunes from; "": scratch
    # A pretrained detector (name or path): the keypoint stage trains nothing. None: the detector of
    # init_from (a fine-tuned model keeps the detector it was trained with; swapping it under a
    # trained model costs more than 100 steps can repair), or the stage trains one when init_from
    # is "". "" always runs the stage.
    keypoints_from: str | None = None
    keypoint_config: str = "configs/keypoints-faces-64.yaml"
    keypoint_init_from: str = "iwarp-faces-64-fomm"  # shipped FOMM baseline the stage fine-tunes; "": scratch
    keypoint_steps: int = DEFAULT_STEPS  # 0: the keypoint config's optim.steps
    overrides: list[str] = dataclasses.field(default_factory=list)
    steps: int = DEFAULT_STEPS  # 0: the config's optim.steps
    nproc: int = 1  # training processes per variant (torchrun)
    seed: int = 0
    image_size: int = 64
    experiment: str = "iwarp"
    model_name: str = "iwarp"
    eval_sources: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4])
    eval_source_placement: str = "spread"
    eval_frame_stride: int = DEFAULT_FRAME_STRIDE
    eval_max_videos: int = 0
    eval_fd: bool = False  # VGG16 Frechet distance: slow on CPU, noise over a small test split
    eval_landmarks: bool = False  # AKD/MKR: dlib landmarks, slow on CPU
    select_metric: str = "lpips"
    select_margin: float = 0.02
    mlflow_port: int = 5000
    torchserve_ports: tuple[int, int, int] = (8080, 8081, 8082)  # inference, management, metrics
    home: str | None = None
    verbose: bool = False
    readme_picture: bool = False  # also copy the champion's animation to docs/images/main-job.png
    resume: bool = False  # continue the newest run under <home>/runs that did not finish (same options)

    def __post_init__(self) -> None:
        if self.keypoints_from is None:
            self.keypoints_from = self.init_from


@dataclasses.dataclass
class LocalRunResult:
    ok: bool
    run_dir: Path
    log: Path
    mlflow_url: str
    failed_task: str = ""
    error: str = ""
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_docs: Path | None = None
    animation: Path | None = None  # <run_dir>/animation.png: sources | driving | output
    seconds: float = 0.0
    reused: list[str] = dataclasses.field(default_factory=list)  # tasks an earlier attempt had finished
    executed: list[str] = dataclasses.field(default_factory=list)  # tasks this attempt ran
    undelivered: list[str] = dataclasses.field(default_factory=list)  # journals MLflow still lacks

    @property
    def exit_code(self) -> int:
        """0, 3 when a step failed because a service stayed unreachable (iwarp.errors), else 1."""
        if self.ok:
            return 0
        return 3 if "ServiceUnavailable" in self.error else 1


def data_source(data: str) -> tuple[str, str]:
    """`--data` -> (data_source, raw_data): faces, synth, or a folder of videos."""
    if data in ("faces", "synth"):
        return data, ""
    if not Path(data).expanduser().is_dir():
        raise FileNotFoundError(f"--data {data}: not 'faces', 'synth' or a folder of videos")
    return "videos", str(Path(data).expanduser().resolve())


def shipped_recipe(model: str) -> tuple[str, int]:
    """`--model NAME`: a shipped model's training config (`configs/<NAME without iwarp->.yaml`,
    the recipe its card names) and the frame size it was trained at (its stored config)."""
    from iwarp.checkpoint import load_checkpoint, resolve_checkpoint

    stored = load_checkpoint(resolve_checkpoint(model)).get("model_config") or {}
    config = Path("configs") / f"{Path(model).stem.removeprefix('iwarp-')}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"--model {model}: its training config {config} does not exist (give --config)")
    return str(config), int(stored.get("image_size", 64))


def check_models(opts: LocalRunOptions) -> None:
    """The checkpoints the run starts from exist (a shipped name or a file): a one-line
    CheckpointError before any task runs, not after the data stages."""
    from iwarp.checkpoint import resolve_checkpoint

    stage = [opts.keypoints_from] if opts.keypoints_from else [opts.keypoint_init_from]
    for name in (opts.init_from, *stage):
        if name:
            resolve_checkpoint(name)


def check_detectors(opts: LocalRunOptions) -> None:
    """The variants can load the keypoint stage's detector (same keypoints, channels, ...):
    compared on the configs (or the given checkpoint) before anything trains."""
    from dataclasses import asdict

    from components.steps.training import resolve_config
    from iwarp.checkpoint import load_checkpoint, resolve_checkpoint
    from iwarp.config import ConfigError, load_config
    from iwarp.training.config import TrainConfig
    from iwarp.training.init import detector_differences

    # Parsed, not validated: the trainer says what else is wrong with the overrides, in its step.
    variants = load_config(TrainConfig, resolve_config(opts.config), list(opts.overrides))
    ours = asdict(variants.model.implicit.keypoints)
    if opts.keypoints_from:
        source = opts.keypoints_from
        theirs = (load_checkpoint(resolve_checkpoint(source)).get("model_config") or {}).get("keypoints", {})
    else:
        source = opts.keypoint_config
        model = load_config(TrainConfig, resolve_config(source)).model
        theirs = asdict(getattr(model, model.kind).keypoints)
    differ = detector_differences(theirs, ours)
    if differ:
        raise ConfigError(
            f"the keypoint detector of {source} does not fit {opts.config}: {'; '.join(differ)} "
            "(give a keypoint config with `base:` your config, e.g. configs/keypoints-tiny.yaml for tiny.yaml)"
        )


def tasks_per_run(opts: LocalRunOptions) -> int:
    return TASKS_PER_RUN - (1 if opts.keypoints_from else 0)  # a given detector is not evaluated


def pipeline_arguments(
    opts: LocalRunOptions, *, tracking_uri: str, home: Path, serving: dict[str, str]
) -> dict[str, Any]:
    source, raw = data_source(opts.data)
    return {
        "data_source": source,
        "raw_data": raw,
        "tracking_uri": tracking_uri,
        "dvc_remote": str(dvc_remote_dir(home)),
        "dvc_workspace": str(home / "dvc-workspace"),
        "image_size": opts.image_size,
        "data_params": list(opts.data_params),
        "train_config": opts.config,
        "init_from": opts.init_from,
        "keypoints_from": opts.keypoints_from,
        "keypoint_config": opts.keypoint_config,
        "keypoint_steps": opts.keypoint_steps,
        "keypoint_init_from": opts.keypoint_init_from,
        "train_overrides": list(opts.overrides),
        "seed": opts.seed,
        "train_steps": opts.steps,
        "train_backend": "torchrun",
        "nproc_per_node": opts.nproc,
        "gpus_per_node": 0,
        "eval_sources": list(opts.eval_sources),
        "eval_source_placement": opts.eval_source_placement,
        "eval_frame_stride": opts.eval_frame_stride,
        "eval_max_videos": opts.eval_max_videos,
        "eval_fd": opts.eval_fd,
        "eval_landmarks": opts.eval_landmarks,
        "select_metric": opts.select_metric,
        "select_margin": opts.select_margin,
        "experiment": opts.experiment,
        "model_name": opts.model_name,
        "serving_target": "torchserve",
        "serving_workdir": serving["workdir"],
    }


RUNS = "runs"  # <home>/runs/<YYYYmmdd-HHMMSS>: one folder per run, kept by its attempts
DRIVER, RESULT, WORK = "driver.json", "result.json", "work"


def resume_target(home: Path, args: dict[str, Any]) -> Path:
    """`--resume`: the newest run folder, if it did not finish, no driver is running it, and it
    was given the same arguments; otherwise a one-line InputError saying which of these failed."""
    from iwarp.errors import InputError

    runs = sorted(p for p in (home / RUNS).glob("*") if (p / "arguments.json").is_file())
    if not runs:
        raise InputError(f"--resume: no earlier run under {home / RUNS}")
    run_dir = runs[-1]
    if (run_dir / RESULT).is_file() and json.loads((run_dir / RESULT).read_text()).get("ok"):
        raise InputError(f"--resume: the newest run {run_dir} finished; run without --resume for a new one")
    pid = driver_pid(run_dir)
    if pid:
        raise InputError(f"--resume: run {run_dir} is still running (driver pid {pid})")
    before = json.loads((run_dir / "arguments.json").read_text())
    before.pop("work_dir", None)
    differ = sorted(k for k in set(before) | set(args) if before.get(k) != args.get(k))
    if differ:
        shown = "; ".join(f"{k}: {before.get(k)!r} then, {args.get(k)!r} now" for k in differ)
        raise InputError(f"--resume: give the options run {run_dir.name} was started with ({shown})")
    return run_dir


def driver_pid(run_dir: Path) -> int | None:
    """The pid of a live driver of `run_dir` (its `driver.json`), else None."""
    try:
        pid = int(json.loads((run_dir / DRIVER).read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError):
        return None
    return pid if pid != os.getpid() else None


@contextlib.contextmanager
def task_environment() -> Iterator[None]:
    """What the tasks inherit: they end with this driver (components.steps), and their journals
    drain briefly, since the driver delivers what an outage held back when the run ends."""
    from components.steps import DRIVER_PID_ENV
    from components.tracking import DRAIN_ENV

    saved = {k: os.environ.get(k) for k in (DRIVER_PID_ENV, DRAIN_ENV)}
    os.environ[DRIVER_PID_ENV] = str(os.getpid())
    os.environ.setdefault(DRAIN_ENV, "5")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_local(opts: LocalRunOptions, console: Console | None = None) -> LocalRunResult:
    from kfp import local

    from components.tracking import deliver_pending
    from pipelines.pipeline import PlatformOptions, build_pipeline

    console = console or Console()
    data_source(opts.data)  # a bad --data fails before any service starts or task runs
    check_models(opts)  # ... and so does a model name that is not shipped (yet)
    check_detectors(opts)  # ... and a keypoint detector the variants could not load
    t0 = time.monotonic()
    home = iwarp_home(opts.home)

    mlflow = MlflowServer(home, port=opts.mlflow_port)
    with console.status("MLflow: starting or reusing the tracking server (first start ~30 s) ..."):
        rec, started = mlflow.ensure()
    console.print(f"MLflow: {rec.url} ({'started' if started else 'reused'}; SQLite store {mlflow.db})")
    with console.status("TorchServe: starting or reusing the local server ..."):
        ts, ts_started = ensure_torchserve(home, opts.torchserve_ports, opts.model_name)
    serving = {"workdir": ts.workdir, "inference_url": ts.inference_url}
    console.print(
        f"TorchServe: {ts.inference_url} ({'started' if ts_started else 'reused'}; "
        f"management {ts.management_url}, token auth on: {ts.key_file})"
    )
    args = pipeline_arguments(opts, tracking_uri=rec.url, home=home, serving=serving)
    if opts.resume:
        run_dir = resume_target(home, args)
        console.print(f"pipeline: resuming {run_dir} (tasks it finished are reused)")
    else:
        run_dir = home / RUNS / time.strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "pipeline.log"
    args["work_dir"] = str(run_dir / WORK)
    (run_dir / "arguments.json").write_text(json.dumps(args, indent=2))
    (run_dir / RESULT).unlink(missing_ok=True)
    (run_dir / DRIVER).write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))

    # The runner would otherwise warn that our image name lacks "python": tasks run in this
    # interpreter, which has exactly the image's packages.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    # Resource requests, GPUs and Kubernetes settings only matter on a cluster; said once in the docs.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir / "kfp"),
        raise_on_error=True,
        enable_caching=True,  # what makes --resume reuse finished tasks (keyed by work_dir)
        cache_root=str(run_dir / "kfp-cache"),
    )
    # 2 cores: one variant at a time
    pipeline = build_pipeline(PlatformOptions(sweep_parallelism=1, resumable=True))

    result = LocalRunResult(ok=False, run_dir=run_dir, log=log, mlflow_url=rec.url)
    console.print(f"pipeline: running {tasks_per_run(opts)} tasks; full log {log}")
    started_ms = int(time.time() * 1000)
    from pipelines.progress import RunProgress, failure_message

    with RunProgress(log, console, tasks_per_run(opts), verbose=opts.verbose) as progress:
        try:
            with contextlib.redirect_stdout(progress), task_environment():
                task = pipeline(**args)
            result.ok = True
            result.outputs = read_outputs(task)
            result.animation = keep_animation(result.outputs.get("animation"), run_dir, opts.readme_picture)
        except Exception as exc:  # a failed task: kfp raises RuntimeError naming it; the why is in its log
            failed = progress.failed_tasks()
            result.failed_task = failed[-1].name if failed else ""
            result.error = failure_message(failed[-1]) if failed else (str(exc).strip() or type(exc).__name__)
        result.reused, result.executed = progress.reused(), progress.executed()
        if result.reused:
            progress.note(f"pipeline: {len(result.reused)} tasks reused from the interrupted attempt")
        # What an outage held back in the steps' journals, now that the server may be back.
        sent, left = deliver_pending(run_dir / WORK, rec.url)
        result.undelivered = [str(p) for p in left]
        if sent:
            progress.note(f"MLflow: delivered {sent} logging calls an outage had held back")
    result.seconds = time.monotonic() - t0
    if not result.ok and result.failed_task in ("validate-data", "data-gate"):
        result.data_docs = next(iter(sorted((run_dir / "kfp").rglob("validate-data/data_docs"))), None)
    if not result.ok:
        with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints a "View run" line per run it ends
            mark_failed_runs(rec.url, opts.experiment, started_ms)
    (run_dir / RESULT).write_text(json.dumps(result_json(result), indent=2, default=str))
    (run_dir / DRIVER).unlink(missing_ok=True)
    return result


TEXT_OUTPUTS = ("ablation_table", "canary_verdict")  # Markdown artifacts; other artifacts stay paths


def read_outputs(task: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (getattr(task, "outputs", None) or {}).items():
        path = getattr(value, "path", None)
        if path and Path(path).is_file():
            out[key] = Path(path).read_text() if key in TEXT_OUTPUTS else Path(path)
        else:
            out[key] = value
    return out


def keep_animation(src: Any, run_dir: Path, readme: bool) -> Path | None:
    """The champion's picture at a stable place, `<run_dir>/animation.png`; with `readme`, also
    the README's `docs/images/main-job.png` (of the project this runs from)."""
    if not isinstance(src, Path):
        return None
    dest = Path(shutil.copy(src, run_dir / "animation.png"))
    if readme:
        from components.steps.training import project_dir

        target = project_dir() / README_PICTURE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dest, target)
    return dest


def mark_failed_runs(tracking_uri: str, experiment: str, since_ms: int) -> None:
    """The sweep's parent run this pipeline opened is FAILED when a later task failed (the
    training runs close themselves; other pipelines' runs are left alone)."""
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):  # best effort: the failure itself is what matters
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return
        runs = client.search_runs(
            [exp.experiment_id],
            "attributes.status = 'RUNNING' and "
            f"attributes.start_time >= {since_ms} and tags.`iwarp.kind` = 'ablation-sweep'",
        )
        for r in runs:
            client.set_terminated(r.info.run_id, "FAILED")


def print_link(console: Console, label: str, url: str) -> None:
    """`label url` on one line whatever the width: a link hard-wrapped at 80 columns (logs, CI)
    is broken when copied ("URI malformed"). No markup either: URLs hold brackets."""
    console.print(f"{label} {url}", soft_wrap=True, markup=False, highlight=False)


def compare_url(mlflow_url: str, experiment_id: str, run_ids: list[str]) -> str:
    q = urllib.parse.quote
    return f"{mlflow_url}/#/compare-runs?runs={q(json.dumps(run_ids))}&experiments={q(json.dumps([experiment_id]))}"


def child_runs(tracking_uri: str, parent_run_id: str) -> tuple[str, list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    exp_id = parent.info.experiment_id
    kids = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return exp_id, kids


def print_summary(result: LocalRunResult, console: Console) -> None:
    from components.ablation import ALL_METRICS_HEADING

    minutes = f"{result.seconds / 60:.1f} min"
    if not result.ok:
        console.print(
            Panel.fit(
                f"[red]pipeline FAILED[/] at task [bold]{result.failed_task or '?'}[/] after {minutes}\n"
                f"{result.error}\nfull log: {result.log}\n"
                "continue it: the same command with --resume (finished tasks are reused)",
                title="iwarp pipeline",
            )
        )
        if result.data_docs:
            site = result.data_docs.parent / "data_docs_site" / "index.html"
            console.print(f"Data Docs (open in a browser): {result.data_docs}\n  full site: {site}")
        return
    o = result.outputs
    exp_id, kids = child_runs(result.mlflow_url, o["parent_run_id"])
    console.rule("[bold]iwarp pipeline: done")
    console.print(f"finished in {minutes}; log {result.log}")
    print_link(console, "MLflow UI:       ", f"{result.mlflow_url}/#/experiments/{exp_id}")
    print_link(console, "  sweep (parent):", f"{result.mlflow_url}/#/experiments/{exp_id}/runs/{o['parent_run_id']}")
    print_link(console, "  compare runs:  ", compare_url(result.mlflow_url, exp_id, [r.info.run_id for r in kids]))
    for kp in (k for k in kids if k.data.tags.get("iwarp.variant") == "keypoints"):  # absent when a detector was given
        print_link(console, "  keypoints run: ", f"{result.mlflow_url}/#/experiments/{exp_id}/runs/{kp.info.run_id}")
    # The Markdown as text: readable in any terminal and in CI logs, pastes into docs.
    console.print(Text(o["ablation_table"].split(ALL_METRICS_HEADING)[0].strip()))
    console.print(Panel(Text(o["canary_verdict"].strip()), title="canary verdict"))
    console.print(f"registered: models:/{o['model_name']}/{o['registered_version']} ({o['chosen_variant']})")
    if result.animation:
        console.print(f"animation (sources | driving | output, test identity): {result.animation}")
    console.print(f"endpoint serving the champion: [bold]POST {o['endpoint']}[/]")


def result_json(result: LocalRunResult) -> dict[str, Any]:
    d = dataclasses.asdict(result)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
