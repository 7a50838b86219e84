"""Training steps: the sweep's MLflow parent run, training one variant (torchrun here, a
TrainJob on a cluster: `components.steps.trainjob`), nesting its run, and evaluation."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from components.steps.train_request import TrainRequest, final_checkpoint, train_dir

PARENT_TAG = "mlflow.parentRunId"  # the tag the MLflow UI nests child runs by
RUN_KEY_TAG = "iwarp.work_dir"  # on the parent run of a local run: which attempts continue it
# The evaluation's MLflow keys start with this. MLflow's run comparison lists metric keys in
# code-point order, and "_" sorts before the lowercase letters every training key starts with
# (`d/`, `g/`, `k`, `lr/`, `samples_per_s`), so the evaluation opens the table, losses after it.
EVAL_PREFIX = "_eval/"


def mlflow_client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def start_parent_run(
    tracking_uri: str,
    experiment: str,
    data_version: str,
    validation_path: str,
    data_docs_path: str,
    params: dict[str, Any],
    pipeline_job: str = "",
    work_dir: str = "",
) -> str:
    """The sweep's parent run: created (its id is an answer every later step needs: waited for,
    `answered`), then its params and data-validation files logged through the step's journal.
    A resumed local run (`work_dir` given) continues the parent run it opened before."""
    from components.tracking import StepLog, answered, step_folder

    def open_run() -> str:
        client = mlflow_client(tracking_uri)
        exp_id = experiment_id(client, experiment)
        if work_dir:  # a run killed after creating it: the same parent, not a second one
            found = client.search_runs([exp_id], f"tags.`{RUN_KEY_TAG}` = '{work_dir}'", max_results=1)
            if found:
                return found[0].info.run_id
        tags = {"iwarp.kind": "ablation-sweep", "iwarp.data_version": data_version, "iwarp.pipeline_job": pipeline_job}
        if work_dir:
            tags[RUN_KEY_TAG] = work_dir
        run = client.create_run(exp_id, run_name=f"ablation {time.strftime('%Y-%m-%d %H:%M:%S')}", tags=tags)
        return run.info.run_id

    run_id = answered(open_run, tracking_uri, "the sweep's parent run")
    from iwarp.config import flatten

    folder = step_folder(work_dir, "parent")
    with StepLog(tracking_uri, run_id, folder) as log:
        log.log_params({"data_version": data_version, **flatten(params)})
        for src, name in ((validation_path, "validation.json"), (data_docs_path, "data_docs.html")):
            if src and Path(src).is_file():  # KFP artifact files have no extension: name them
                log.log_artifact(Path(shutil.copy(src, folder / name)), "data-validation")
    return run_id


def resolve_config(path: str) -> str:
    """A config path as given, else relative to the project (the image's /app, a checkout)."""
    if Path(path).is_file():
        return str(Path(path).resolve())
    candidate = project_dir() / path
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(f"training config {path!r} not found (looked in . and {project_dir()})")


def project_dir() -> Path:
    """The iwarp checkout: $IWARP_PROJECT_DIR (set in the image), else the source tree."""
    env = os.environ.get("IWARP_PROJECT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2]


def run_training(req: TrainRequest, checkpoint_path: str) -> tuple[str, str, str]:
    """Train, copy the final checkpoint to `checkpoint_path`, nest the run under the parent.
    Returns (run id, what init_from loaded and dropped: `init_summary`, "" or the note on a
    tracking outage: `tracking_outcome`)."""
    out_dir = train_dir(req, checkpoint_path)
    if req.backend == "torchrun":
        final = train_local(req, out_dir)
    elif req.backend == "trainjob":
        from components.steps.trainjob import train_on_cluster

        final = train_on_cluster(req, out_dir)
    else:
        raise ValueError(f"train backend must be 'torchrun' or 'trainjob', got {req.backend!r}")
    shutil.copy(final, checkpoint_path)
    run_id, tracking = tracking_outcome(req, final)
    return run_id, init_summary(out_dir), tracking


KEYPOINTS = {"variant": "keypoints"}  # the keypoint stage's run: a sweep member without ablation switches
DETECTOR_PARAM = "keypoint_detector"  # on the parent run: which detector the variants loaded


def keypoint_stage(req: TrainRequest, given: str, checkpoint_path: str) -> dict[str, str]:
    """The keypoint pretraining stage. `given` (a checkpoint path or shipped name): copy that
    checkpoint to `checkpoint_path` and train nothing. Else train `req` (the FOMM baseline, a
    keypoint config) as a child run of the sweep, like a variant. Either way the parent run
    records the detector (param `keypoint_detector`). Returns the checkpoint's metadata."""
    from iwarp.checkpoint import resolve_checkpoint

    if given:
        source = resolve_checkpoint(given)  # a one-line error when it is neither a file nor shipped
        has_detector(source)
        shutil.copy(source, checkpoint_path)
        meta = {"variant": req.name, "source": "given", "run_id": "", "init": "", "tracking": "ok"}
        detector = given
    else:
        if req.init_from:
            resolve_checkpoint(req.init_from)  # fail before training starts: a name not shipped (yet)
        run_id, init, tracking = run_training(req, checkpoint_path)
        meta = {"variant": req.name, "source": "trained", "run_id": run_id, "init": init, "tracking": tracking or "ok"}
        detector = f"trained: run {run_id} ({Path(req.config).name}, from {req.init_from or 'scratch'})"
    print(f"[keypoints] detector for every variant: {detector}", flush=True)
    from components.tracking import StepLog, step_folder

    with StepLog(req.tracking_uri, req.parent_run_id, step_folder(req.work_dir, "keypoints")) as log:
        log.log_params({DETECTOR_PARAM: detector})
        if meta["run_id"]:
            log.log_tags({"iwarp.keypoints_run_id": meta["run_id"]})
    return meta


def has_detector(path: Path) -> None:
    """Refuse a checkpoint without keypoint detector weights (one line, exit code 2)."""
    from iwarp.checkpoint import CheckpointError, load_checkpoint
    from iwarp.training.init import DETECTOR

    if not any(name.startswith(DETECTOR) for name in load_checkpoint(path).get("model", {})):
        raise CheckpointError(f"keypoints_from {path} holds no keypoint detector")


def module_name(tensor: str) -> str:
    """`residual_mlp.0.weight` -> `residual_mlp`: the module a state-dict entry belongs to."""
    parts = tensor.split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts))
    return ".".join(parts[: max(cut, 1)])


def init_summary(train_dir: Path) -> str:
    """One line from the trainer's init_from.json: "scratch", or "loaded N" plus the modules of
    the starting checkpoint this variant lacks (dropped) and the ones it adds (fresh)."""
    from iwarp.training.init import REPORT_NAME

    found = sorted(Path(train_dir).rglob(REPORT_NAME))
    if not found:
        return "scratch"
    g = json.loads(found[0].read_text())["generator"]
    line = f"loaded {len(g['loaded'])}"
    for key, what in (("skipped", "skipped"), ("new", "new")):
        modules = list(dict.fromkeys(module_name(t) for t in g[key]))
        if modules:
            line += f"; {what} {', '.join(modules)}"
    return line


def train_command(req: TrainRequest, out_dir: Path, resume: bool) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m iwarp train ...` (gloo on CPU, NCCL on GPU),
    the same launcher the TrainJob's pods use, one process or several."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={max(1, req.nproc_per_node)}",
        "-m",
        "iwarp",
        "train",
        "--config",
        resolve_config(req.config),
        "--tracking-uri",
        req.tracking_uri,
        *(["--resume"] if resume else []),
        "--set",
        *req.train_overrides(req.dataset, str(out_dir)),
    ]


def train_local(req: TrainRequest, out_dir: Path) -> Path:
    """Train one variant in this task's own processes (see `train_command`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A training a killed run left part-way continues from its last checkpoint (and MLflow run).
    resume = any((out_dir / "checkpoints").glob("*.ckpt"))
    if resume:
        print(f"[train] {req.ablation['variant']}: resuming the interrupted training in {out_dir}", flush=True)
    cmd = train_command(req, out_dir, resume)
    print(f"[train] {req.ablation['variant']}: {' '.join(cmd)}", flush=True)
    rc, why = run_streaming(cmd)
    if rc != 0:
        raise RuntimeError(f"training of variant {req.ablation['variant']!r} failed (exit {rc}): {why}")
    return final_checkpoint(out_dir)


def run_streaming(cmd: list[str]) -> tuple[int, str]:
    """Run `cmd`, passing its output through live; return its exit code and, for the error
    message, the lines it printed as errors (`error: ...`, an exception) or its last line."""
    import collections
    import itertools

    tail: collections.deque[str] = collections.deque(maxlen=80)
    from components.steps import DRIVER_PID_ENV, die_with_parent

    linked = die_with_parent if os.environ.get(DRIVER_PID_ENV) else None  # ends with the task
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, preexec_fn=linked
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.strip():
                tail.append(line.rstrip())
    lines = list(tail)
    for i, line in enumerate(lines):  # iwarp's CLIs say `error: <what>` (+ indented details)
        if line.startswith("error:"):
            block = [line, *itertools.takewhile(lambda x: x.startswith((" ", "\t")), lines[i + 1 :])]
            return proc.returncode, " ".join(x.strip() for x in block)
    errors = [x.strip() for x in lines if re.match(r"^\s*[\w.]*(Error|Exception)\b", x)]
    return proc.returncode, (errors[-1] if errors else lines[-1].strip() if lines else "no output")


def nesting_tags(req: TrainRequest) -> dict[str, str]:
    """The tags that make a training's run a child of the sweep's parent, tagged with its variant."""
    tags = {PARENT_TAG: req.parent_run_id, "iwarp.variant": req.name}
    for switch in ("residual", "extra_kv"):  # the keypoint stage's run has none
        if switch in req.ablation:
            tags[f"iwarp.{switch}"] = str(bool(req.ablation[switch])).lower()
    return tags


def training_run_id(req: TrainRequest, final: Path) -> str:
    """The MLflow run the training of `final` (`<run_dir>/checkpoints/final.ckpt`) logged to. A
    training that started while MLflow was down has none yet: its journal is delivered first
    (the id is an answer later steps need)."""
    from components.tracking import answered, recorded_run_id, sync_run
    from iwarp.checkpoint import load_checkpoint

    run_dir = final.parent.parent
    run_id = load_checkpoint(final).get("tracking_run_id") or recorded_run_id(run_dir)
    if not run_id and (run_dir / "tracking").is_dir():
        run_id = answered(
            lambda: sync_run(run_dir, req.tracking_uri, attempts=1).run_id, req.tracking_uri, "the training's run"
        )
    if not run_id:
        raise RuntimeError(f"{run_dir} records no MLflow run: was training given --tracking-uri?")
    return run_id


def tracking_outcome(req: TrainRequest, final: Path) -> tuple[str, str]:
    """(run id, "" or a one-line note on a tracking outage). The run is nested under the sweep
    through a journal beside the training's (`<out_dir>/nest`): a training that succeeded is not
    failed because MLflow was away, and what did not arrive yet waits in its folder for
    `iwarp track sync` (a local pipeline run delivers it when it ends)."""
    from components.tracking import StepLog, pending_calls, pending_folders, sync_hint

    run_dir = final.parent.parent  # <out_dir>/checkpoints/final.ckpt
    run_id = training_run_id(req, final)
    with StepLog(req.tracking_uri, run_id, run_dir / "nest") as log:
        log.log_tags(nesting_tags(req))
    left = {folder: pending_calls(folder) for folder in pending_folders(run_dir)}
    note = ""
    if left:
        hints = "; ".join(sync_hint(folder, req.tracking_uri) for folder in left)
        note = f"tracking outage: {sum(left.values())} logging calls are not in MLflow yet, upload them with: {hints}"
        print(f"[train] {req.ablation['variant']}: {note}", flush=True)
    return run_id, note


NOT_METRICS = {"frames"}  # counts in the evaluate JSON, not measurements
FLOOR = "copy_source"  # the floor every model must beat: predict a source frame, ignore the driving one
# Where each target's sources come from (`iwarp evaluate --sources-from`): the general target's
# from its test clips; the personal target's from its train split (the person's own footage, as
# a user's photos would be), so its test clip is only driven. Others: "test".
SOURCES_FROM = {"personal": "train"}


def _measured(row: dict[str, Any]) -> dict[str, float]:
    """Null values (metrics not computed, e.g. AKD without --landmarks) are left out, and MKR
    with them: with no keypoints compared, its "all missing" is not a measurement."""
    return {
        name: float(value)
        for name, value in row.items()
        if name not in NOT_METRICS
        and not (name == "mkr" and row.get("akd") is None)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


def eval_metrics(result: dict[str, Any], target: str = "") -> dict[str, float]:
    """`iwarp evaluate` JSON -> flat floats: `<target>/<metric>_k<k>`, and the copy-source floor
    as `<target>/copy_source_<metric>` when it was measured (no prefix without a target)."""
    prefix = f"{target}/" if target else ""
    out = {f"{prefix}{name}_k{int(k)}": v for k, row in result["per_k"].items() for name, v in _measured(row).items()}
    if result.get(FLOOR):
        out.update({f"{prefix}{FLOOR}_{name}": v for name, v in _measured(result[FLOOR]).items()})
    return out


def has_test_split(dataset: str) -> bool:
    from iwarp.data.manifest import read_manifest

    manifest = Path(dataset) / "manifest.csv"
    return manifest.is_file() and bool((read_manifest(manifest)["split"] == "test").any())


def evaluate_target(checkpoint: str, dataset: str, sources: list[int], out_json: Path, **kw: Any) -> dict[str, Any]:
    """`iwarp evaluate --copy-source` in this process: its table printed, its JSON written to
    `out_json` and returned. Bad data or a bad checkpoint: a RuntimeError naming both."""
    from iwarp.errors import InputError
    from iwarp.training.evaluate import evaluate_checkpoint, report_and_write

    try:
        out = evaluate_checkpoint(checkpoint, dataset, sources, copy_source=True, **kw)
    except (InputError, FileNotFoundError) as exc:
        raise RuntimeError(f"evaluation of {checkpoint} on {dataset} failed: {exc}") from exc
    return report_and_write(out, out_json)


def run_evaluation(
    checkpoint: str,
    targets: dict[str, str],
    sources: list[int],
    run_id: str,
    tracking_uri: str,
    info: dict[str, Any],
    report_path: str,
    max_videos: int = 0,
    frechet: bool = True,
    landmarks: bool = True,
    placement: str = "spread",
    frame_stride: int = 2,
    work_dir: str = "",
) -> dict[str, float]:
    """`iwarp evaluate --copy-source` on each target's test split ({name: dataset folder};
    a target without a test split is left out), sources from where `SOURCES_FROM` says
    (the test clips themselves, or the personal target's train split), placed by `placement`,
    every `frame_stride`-th of the other frames driven. Logged to the variant's run through
    the step's journal (`log_evaluation`)."""
    values: dict[str, float] = {}
    reports: list[Path] = []
    for target, dataset in targets.items():
        if not has_test_split(dataset):
            print(f"[evaluate] {target}: {dataset} has no test split, skipped", flush=True)
            continue
        out_json = Path(report_path).parent / f"evaluate-{target}.json"
        print(f"[evaluate] {info.get('variant', '?')} on {target}: {dataset}", flush=True)
        # In this process, as `iwarp evaluate` would: a process per target paid torch's and the
        # metrics' start-up again for a few seconds of evaluation.
        scores = evaluate_target(
            checkpoint,
            dataset,
            sources,
            out_json,
            stride=frame_stride,
            max_videos=max_videos if max_videos > 0 else None,
            landmarks=landmarks,
            fd=frechet,
            source_placement=placement,
            sources_from=SOURCES_FROM.get(target, "test"),
        )
        values.update(eval_metrics(scores, target))
        reports.append(out_json)
    if not values:
        raise RuntimeError(f"nothing to evaluate: no test split in {sorted(targets.values())}")
    log_evaluation(tracking_uri, run_id, values, reports, f"evaluate-{info.get('variant', 'model')}", work_dir)
    report = {
        "variant": info.get("variant"),
        "residual": info.get("residual"),
        "extra_kv": info.get("extra_kv"),
        "init": info.get("init", ""),
        "run_id": run_id,
        "metrics": values,
    }
    Path(report_path).write_text(json.dumps(report, indent=2))
    return values


def log_evaluation(
    tracking_uri: str, run_id: str, values: dict[str, float], reports: list[Path], step: str, work_dir: str
) -> None:
    """The evaluation's metrics (`_eval/` keys, step 0) and JSON reports to the variant's run,
    through the step's journal: an outage delays them, it never fails the evaluation."""
    from components.tracking import StepLog, step_folder

    with StepLog(tracking_uri, run_id, step_folder(work_dir, step)) as log:
        for report in reports:
            log.log_artifact(report, "evaluation")
        log.log_metrics({f"{EVAL_PREFIX}{k}": v for k, v in values.items()}, step=0)
