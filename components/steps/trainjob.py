"""The cluster back end of the train step: a Kubeflow Trainer v2 `TrainJob` on the
`torch-distributed` ClusterTrainingRuntime, submitted and awaited with the Kubeflow SDK
(`kubeflow==0.5.0`, `TrainerClient`).

Data flow: the step copies the prepared dataset onto the shared data volume (PVC
`iwarp-data` at /data, see k8s/params.yaml) once per data version; the TrainJob's pods
mount the same volume, train with `torchrun --nproc-per-node N -m iwarp train` (the
runtime supplies PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR), log to MLflow and write
checkpoints under /data/runs/<job>; the step then copies `final.ckpt` into its KFP output.
The pod settings mirror k8s/training/trainjob.yaml (service account, labels the
NetworkPolicy matches, non-root, GPU tolerations, /dev/shm, S3 credentials from `iwarp-s3`).

This path needs a cluster. Its tests (tests/integration/test_pipeline_trainjob.py) run the real SDK with
its Kubernetes API client mocked, and validate the TrainJob it creates against the Trainer
schema; nothing here has run against a live Kubeflow Trainer.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.steps.train_request import TrainRequest

TRAIN_CONTAINER = "node"  # replicated job and container name in the torch-distributed runtime
TRAIN_SERVICE_ACCOUNT = "iwarp-train"
TRAIN_POD_LABEL = {"iwarp.dev/role": "train"}  # NetworkPolicy iwarp-train-peers selects these
TRAIN_UID = 10001
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_TIMEOUT_S = 48 * 3600


def job_name(variant: str) -> str:
    """A DNS-1123 name, unique per submission, that says which variant it trains."""
    slug = re.sub(r"[^a-z0-9-]+", "-", variant.lower()).strip("-")[:30]
    return f"iwarp-{slug}-{uuid.uuid4().hex[:8]}"


def current_namespace(explicit: str) -> str | None:
    """The namespace to create the TrainJob in: the parameter, else the step's own."""
    if explicit:
        return explicit
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None  # the SDK falls back to the kube-config context


def stage_dataset(src: str | Path, shared_dir: str | Path, data_version: str) -> Path:
    """Copy the prepared dataset onto the shared volume once per data version. Four variants
    stage concurrently: each copies to a private temp name and renames; the loser discards."""
    dest = Path(shared_dir) / "datasets" / (data_version or uuid.uuid4().hex)
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copytree(src, tmp)
    (tmp / ".complete").touch()
    try:
        os.rename(tmp, dest)
    except OSError:  # another variant got there first (the target exists and is complete)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / ".complete").is_file():
            raise
    return dest


def stage_file(src: str | Path, shared_dir: str | Path, folder: str = "keypoints") -> Path:
    """Copy a file (the keypoint stage's detector, a KFP artifact local to this step) onto the
    shared volume, named by its content: four variants stage it concurrently, one copy stays."""
    import hashlib

    digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16]
    dest = Path(shared_dir) / folder / f"{digest}{Path(src).suffix or '.ckpt'}"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copy(src, tmp)
    os.replace(tmp, dest)  # same content whoever wins
    return dest


def secret_env(secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": key, "valueFrom": {"secretKeyRef": ref}}


def build_trainjob(req: TrainRequest, data_root: str, out_dir: str, name: str, config: str) -> tuple[Any, list[Any]]:
    """The SDK trainer + options for one variant: same image, config, data, seed and budget
    as the other variants; only the ablation switches differ."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        Labels,
        Name,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainerArgs,
        TrainerCommand,
        TrainingRuntimeSpecPatch,
    )

    gpus = max(0, req.gpus_per_node)
    # Quantities as strings: the SDK would otherwise serialise numbers as floats ("4.0").
    resources: dict[str, Any] = {"cpu": str(4 * max(gpus, 1)), "memory": f"{16 * max(gpus, 1)}Gi"}
    if gpus:
        resources["gpu"] = str(gpus)  # requests == limits (the SDK sets both)
    trainer = CustomTrainerContainer(
        image=req.image,
        num_nodes=max(1, req.num_nodes),
        resources_per_node=resources,
        env={"HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONUNBUFFERED": "1"},
    )
    args = ["--config", config, "--tracking-uri", req.tracking_uri, "--set", *req.train_overrides(data_root, out_dir)]
    # Credentials come from Secrets, never from the pipeline's parameters.
    env = [
        secret_env("iwarp-s3", "AWS_ACCESS_KEY_ID"),
        secret_env("iwarp-s3", "AWS_SECRET_ACCESS_KEY"),
        secret_env("iwarp-s3", "AWS_ENDPOINT_URL", optional=True),
        secret_env("iwarp-mlflow-auth", "MLFLOW_TRACKING_USERNAME", optional=True),
        secret_env("iwarp-mlflow-auth", "MLFLOW_TRACKING_PASSWORD", optional=True),
    ]
    container = ContainerPatch(
        name=TRAIN_CONTAINER,
        env=env,
        volume_mounts=[
            {"name": "data", "mountPath": req.shared_dir},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        security_context={
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    )
    pod = PodSpecPatch(
        service_account_name=TRAIN_SERVICE_ACCOUNT,
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": req.data_pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
        ],
        containers=[container],
        security_context={
            "runAsNonRoot": True,
            "runAsUser": TRAIN_UID,
            "runAsGroup": TRAIN_UID,
            "fsGroup": TRAIN_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if gpus else None,
    )
    patch = RuntimePatch(
        training_runtime_spec=TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(
                spec=JobSetSpecPatch(
                    replicated_jobs=[
                        ReplicatedJobPatch(
                            name=TRAIN_CONTAINER,
                            template=JobTemplatePatch(
                                spec=JobSpecPatch(
                                    template=PodTemplatePatch(metadata={"labels": dict(TRAIN_POD_LABEL)}, spec=pod)
                                )
                            ),
                        )
                    ]
                )
            )
        )
    )
    options = [
        Name(name),
        Labels({"app.kubernetes.io/name": "iwarp-train", "iwarp.dev/variant": req.ablation["variant"]}),
        TrainerCommand(["torchrun", f"--nproc-per-node={max(1, req.nproc_per_node)}", "-m", "iwarp", "train"]),
        TrainerArgs(args),
        patch,
    ]
    return trainer, options


def train_on_cluster(
    req: TrainRequest, work_dir: Path, client: Any = None, poll_s: int = 15, timeout_s: int = DEFAULT_TIMEOUT_S
) -> Path:
    """Submit the TrainJob, wait for it, return the final checkpoint copied into `work_dir`."""
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient

    if not req.image:
        raise ValueError("the trainjob backend needs the container image of the TrainJob's pods")
    data_root = stage_dataset(req.dataset, req.shared_dir, req.data_version)
    if req.keypoints_from and Path(req.keypoints_from).is_file():  # the pods see the shared volume only
        req = dataclasses.replace(req, keypoints_from=str(stage_file(req.keypoints_from, req.shared_dir)))
    name = job_name(req.ablation["variant"])
    out_dir = Path(req.shared_dir) / "runs" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    client = client or TrainerClient(KubernetesBackendConfig(namespace=current_namespace(req.namespace)))
    trainer, options = build_trainjob(req, str(data_root), str(out_dir), name, req.config)
    created = client.train(runtime=req.trainer_runtime, trainer=trainer, options=options)
    print(
        f"[train] {req.ablation['variant']}: submitted TrainJob {created} "
        f"({req.num_nodes} node(s) x {req.nproc_per_node} process(es), {req.gpus_per_node} GPU(s)/node)",
        flush=True,
    )

    last = {"status": None}

    def report(job: Any) -> None:
        if job.status != last["status"]:
            last["status"] = job.status
            print(f"[train] TrainJob {created}: {job.status}", flush=True)

    try:
        client.wait_for_job_status(
            created, status={"Complete"}, timeout=timeout_s, polling_interval=poll_s, callbacks=[report]
        )
    except (RuntimeError, TimeoutError) as exc:
        tail = _log_tail(client, created)
        raise RuntimeError(f"TrainJob {created} did not complete: {exc}\n{tail}") from exc
    from components.steps.train_request import final_checkpoint
    from iwarp.training.init import REPORT_NAME

    final = final_checkpoint(out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for report in out_dir.rglob(REPORT_NAME):  # what init_from loaded: the sweep's table shows it
        shutil.copy(report, work_dir / REPORT_NAME)
    return Path(shutil.copy(final, work_dir / "final.ckpt"))


def _log_tail(client: Any, name: str, lines: int = 40) -> str:
    try:
        logs = list(client.get_job_logs(name))
    except Exception as exc:  # logs are a courtesy on failure; the job status is the error
        return f"(logs unavailable: {exc})"
    return "last log lines of node-0:\n" + "\n".join(logs[-lines:])
