"""Training-side components: the MLflow parent run of the sweep, the keypoint stage (the FOMM
baseline whose detector every variant loads), distributed training of one ablation variant, and
its evaluation.

Training has two back ends behind one component:
- `torchrun` (local runs, CPU or a GPU node): `iwarp train --nproc N` inside the task,
  which relaunches itself under `torch.distributed.run`.
- `trainjob` (a cluster): a Kubeflow Trainer `TrainJob` on the torch-distributed runtime,
  submitted with the Kubeflow SDK (`kubeflow==0.5.0`) and awaited; dataset and checkpoints
  pass through the shared data volume (k8s/params.yaml `data:`). See `components.steps.trainjob`.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.base import EVAL_PACKAGES, IMAGE, REGISTRY_PACKAGES, TRAIN_PACKAGES


@dsl.component(base_image=IMAGE, packages_to_install=REGISTRY_PACKAGES)
def open_parent_run(
    tracking_uri: str,
    experiment: str,
    data_version: str,
    validation: Input[Artifact],
    data_docs: Input[HTML],
    train_config: str,
    train_overrides: list,
    seed: int,
    train_steps: int,
    nproc_per_node: int,
    num_nodes: int,
    select_metric: str,
    init_from: str,
    data_source: str,
    keypoints_from: str,
    keypoint_config: str,
    keypoint_steps: int,
    keypoint_init_from: str,
    pipeline_job: str,
    work_dir: str,
) -> str:
    """Create the sweep's MLflow parent run (data version, validation result and Data Docs,
    sweep parameters); the four training runs become its children. Returns its run id.
    `work_dir`: a local run's work folder: a resumed run continues its parent run."""
    from components.steps.training import start_parent_run

    # Typed parameters, not one dict argument: KFP splices runtime values into a dict literal as
    # text, which breaks on strings with quotes (train_overrides).
    params = {
        "train_config": train_config,
        "train_overrides": list(train_overrides),
        "seed": seed,
        "train_steps": train_steps,
        "nproc_per_node": nproc_per_node,
        "num_nodes": num_nodes,
        "select_metric": select_metric,
        "init_from": init_from,
        "data_source": data_source,
        # the keypoint stage: a given detector, or what trains one (the stage adds `keypoint_detector`)
        "keypoints_from": keypoints_from,
        "keypoint_config": keypoint_config if not keypoints_from else "",
        "keypoint_steps": keypoint_steps if not keypoints_from else "",
        "keypoint_init_from": keypoint_init_from if not keypoints_from else "",
    }
    return start_parent_run(
        tracking_uri, experiment, data_version, validation.path, data_docs.path, params, pipeline_job, work_dir
    )


@dsl.component(base_image=IMAGE, packages_to_install=TRAIN_PACKAGES)
def train_model(
    dataset: Input[Dataset],
    ablation: dict,
    train_config: str,
    train_overrides: list,
    seed: int,
    steps: int,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    backend: str,
    nproc_per_node: int,
    num_nodes: int,
    gpus_per_node: int,
    trainer_runtime: str,
    namespace: str,
    image: str,
    shared_dir: str,
    data_pvc: str,
    init_from: str,
    keypoints: Input[Model],
    work_dir: str,
    checkpoint: Output[Model],
) -> str:
    """Train one ablation variant with the same data, seed and step budget as the others,
    as an MLflow child run of `parent_run_id`. Returns the child run id.

    backend="torchrun": `nproc_per_node` local processes (gloo on CPU, NCCL on GPU).
    backend="trainjob": a Kubeflow Trainer TrainJob of `num_nodes` x `nproc_per_node`
    processes with `gpus_per_node` GPUs each (needs a cluster; tested with the SDK client
    mocked only).
    `init_from`: fine-tune from this checkpoint (a shipped model's name such as `iwarp-faces-64`,
    or a path); a module the variant lacks is dropped, one it adds starts fresh (checkpoint
    metadata `init` says which). Empty: train from scratch.
    `work_dir`: a local run's work folder, where the training's folder is stable so that a
    resumed run continues it from its last checkpoint; "" on a cluster.
    `keypoints`: the keypoint stage's checkpoint; its detector is loaded frozen at step 0 (after
    init_from: it wins), `model.implicit.keypoints_from`.
    """
    from components.steps.train_request import TrainRequest
    from components.steps.training import run_training

    req = TrainRequest(
        dataset=dataset.path,
        ablation=ablation,
        config=train_config,
        overrides=list(train_overrides),
        seed=seed,
        steps=steps,
        tracking_uri=tracking_uri,
        experiment=experiment,
        parent_run_id=parent_run_id,
        backend=backend,
        nproc_per_node=nproc_per_node,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        trainer_runtime=trainer_runtime,
        namespace=namespace,
        image=image,
        shared_dir=shared_dir,
        data_pvc=data_pvc,
        data_version=dataset.metadata.get("data_version", ""),
        init_from=init_from,
        keypoints_from=keypoints.path,
        work_dir=work_dir,
    )
    run_id, init, tracking = run_training(req, checkpoint.path)  # tracking: "" or the outage, not a failure
    checkpoint.metadata.update(
        {
            "variant": ablation["variant"],
            "run_id": run_id,
            "init": init,
            "tracking": tracking or "ok",
            "residual": bool(ablation["residual"]),
            "extra_kv": bool(ablation["extra_kv"]),
        }
    )
    return run_id


@dsl.component(base_image=IMAGE, packages_to_install=TRAIN_PACKAGES)
def pretrain_keypoints(
    dataset: Input[Dataset],
    keypoints_from: str,
    keypoint_config: str,
    keypoint_steps: int,
    keypoint_init_from: str,
    seed: int,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    backend: str,
    nproc_per_node: int,
    num_nodes: int,
    gpus_per_node: int,
    trainer_runtime: str,
    namespace: str,
    image: str,
    shared_dir: str,
    data_pvc: str,
    work_dir: str,
    checkpoint: Output[Model],
) -> str:
    """The keypoint stage, before the sweep: the paper trains implicit warping from pretrained
    keypoints. `keypoints_from` given (a checkpoint path or shipped name): that checkpoint is the
    output and nothing trains. Else the FOMM baseline (`keypoint_config`, model.kind baseline)
    trains on the same data and seed as the variants, fine-tuned from `keypoint_init_from`
    (shipped `iwarp-faces-64-fomm`; empty = scratch), as the sweep's child run `keypoints`.
    Returns that run's id ("" when given)."""
    from components.steps.train_request import TrainRequest
    from components.steps.training import KEYPOINTS, keypoint_stage

    req = TrainRequest(
        dataset=dataset.path,
        ablation=dict(KEYPOINTS),
        config=keypoint_config,
        overrides=[],
        seed=seed,
        steps=keypoint_steps,
        tracking_uri=tracking_uri,
        experiment=experiment,
        parent_run_id=parent_run_id,
        backend=backend,
        nproc_per_node=nproc_per_node,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        trainer_runtime=trainer_runtime,
        namespace=namespace,
        image=image,
        shared_dir=shared_dir,
        data_pvc=data_pvc,
        data_version=dataset.metadata.get("data_version", ""),
        init_from=keypoint_init_from,
        work_dir=work_dir,
    )
    meta = keypoint_stage(req, keypoints_from, checkpoint.path)
    checkpoint.metadata.update(meta)
    return meta["run_id"]


@dsl.component(base_image=IMAGE, packages_to_install=EVAL_PACKAGES)
def evaluate_model(
    checkpoint: Input[Model],
    dataset: Input[Dataset],
    personal: Input[Dataset],
    run_id: str,
    tracking_uri: str,
    sources: list,
    source_placement: str,
    frame_stride: int,
    max_videos: int,
    frechet: bool,
    landmarks: bool,
    work_dir: str,
    metrics: Output[Metrics],
    report: Output[Artifact],
):
    """`iwarp evaluate --copy-source` for each number of sources on two targets: `general` (the
    dataset's test split: identities never trained on) and `personal` (a held-out clip of a
    person, driven from sources of that dataset's train split; skipped when it is empty). Keys
    `<target>/<metric>_k<k>` and the copy-source floor `<target>/copy_source_<metric>` go to the
    variant's MLflow run (`_eval/` prefix, first in MLflow's run comparison), to a KFP Metrics
    artifact and, with the variant and run id, to the JSON `report` the compare step reads.
    `source_placement`: first | spread (sources spread over the clip, or over the personal train
    split); `frame_stride`: drive every n-th of the other frames.
    `frechet`: the VGG16 Frechet distance (meaningful over many frames); `landmarks`: AKD/MKR."""
    from components.steps.training import run_evaluation

    targets = {"general": dataset.path, "personal": personal.path}
    values = run_evaluation(
        checkpoint.path,
        targets,
        [int(k) for k in sources],
        run_id,
        tracking_uri,
        dict(checkpoint.metadata),
        report.path,
        max_videos,
        frechet,
        landmarks,
        source_placement,
        int(frame_stride),
        work_dir,
    )
    for key, value in values.items():
        metrics.log_metric(key, value)
    import json
    from pathlib import Path

    # The values as the artifact's file too: kfp.local's cache treats an artifact without a file as
    # missing, and would evaluate again on resume what an earlier attempt had evaluated.
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=1))
