"""`iwarp pipeline run | compile | services`. Heavy imports (kfp, mlflow) happen inside
the handlers so `iwarp --help` stays fast."""

from __future__ import annotations

import argparse
import json

from iwarp.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.local_run import (  # light: rich + the standard library
        DEFAULT_FRAME_STRIDE,
        DEFAULT_STEPS,
    )

    p = sub.add_parser(
        "pipeline",
        help="run the Kubeflow pipeline locally, or compile it for a cluster",
        description="The iwarp Kubeflow pipeline (see docs/pipeline.md).",
    )
    psub = p.add_subparsers(dest="pipeline_command", required=True, metavar="SUBCOMMAND")

    r = psub.add_parser(
        "run",
        help="run the whole pipeline locally (kfp.local + local MLflow, TorchServe, DVC)",
        description="Run preprocess -> validate -> keypoints (fine-tune the shipped FOMM baseline) -> ablation "
        "sweep (4 fine-tunings of the shipped model, its detector frozen) -> "
        "compare -> animate + register -> package -> canary with kfp.local's SubprocessRunner. Starts or "
        "reuses a local MLflow server (SQLite) and TorchServe under the state directory (.iwarp/ or $IWARP_HOME).",
    )
    r.add_argument(
        "--data",
        default="faces",
        metavar="faces|synth|DIR",
        help="faces: real faces (DVC's faces stage, the default); synth: synthetic heads; or a folder of raw videos",
    )
    r.add_argument(
        "--data-param",
        dest="data_params",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="params.yaml overrides for the data stages, e.g. faces.clips_per_photo=2 prepare.crop=face",
    )
    r.add_argument(
        "--model",
        metavar="NAME",
        help="a shipped model to fine-tune and serve, with its own recipe: sets --init-from NAME, --config "
        "configs/<NAME without iwarp->.yaml and --image-size to the model's (e.g. iwarp-faces-128)",
    )
    r.add_argument("--config", default="configs/faces-64.yaml", help="training config (default: %(default)s)")
    r.add_argument(
        "--init-from",
        default="iwarp-faces-64",
        metavar="NAME|CKPT",
        help="shipped model (models/ or $IWARP_MODELS_DIR) or checkpoint every variant fine-tunes from; "
        "'' trains from scratch (default: %(default)s)",
    )
    r.add_argument(
        "--keypoints-from",
        default=None,
        metavar="NAME|CKPT",
        help="a pretrained keypoint detector (shipped name or checkpoint) every variant loads frozen; "
        "skips the keypoint stage. Default: --init-from's own detector (the stage runs when --init-from is ''); "
        "'' always runs the stage",
    )
    r.add_argument(
        "--keypoint-config",
        default="configs/keypoints-faces-64.yaml",
        help="the keypoint stage's config, the FOMM baseline (default: %(default)s)",
    )
    r.add_argument(
        "--keypoint-init-from",
        default="iwarp-faces-64-fomm",
        metavar="NAME|CKPT",
        help="shipped FOMM baseline (or checkpoint) the keypoint stage fine-tunes; '' trains from scratch "
        "(default: %(default)s)",
    )
    r.add_argument(
        "--keypoint-steps",
        type=int,
        default=DEFAULT_STEPS,
        help="training steps of the keypoint stage (default: %(default)s; 0: the config's)",
    )
    r.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="training config overrides applied to all four variants",
    )
    r.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help="training steps per variant (default: %(default)s; 0: the config's)",
    )
    r.add_argument("--nproc", type=int, default=1, help="training processes per variant (torchrun; default 1)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--image-size", type=int, default=64, help="prepared frame size (default: %(default)s)")
    r.add_argument("--sources", type=int, nargs="+", default=[1, 2, 4], metavar="K", help="evaluate with K sources")
    r.add_argument(
        "--source-placement",
        choices=["first", "spread"],
        default="spread",
        help="evaluation sources: spread over each test clip (default) or its first frames",
    )
    r.add_argument(
        "--frame-stride",
        type=int,
        default=DEFAULT_FRAME_STRIDE,
        help="evaluation drives every n-th of the other frames (default: %(default)s)",
    )
    r.add_argument("--eval-max-videos", type=int, default=0, help="evaluate on at most N test videos (0: all)")
    r.add_argument("--fd", action="store_true", help="also the VGG16 Frechet distance (slow on CPU; needs many frames)")
    r.add_argument("--landmarks", action="store_true", help="also AKD/MKR (dlib face landmarks, slow on CPU)")
    r.add_argument("--select-metric", default="lpips", help="metric that may overrule the full model (default: lpips)")
    r.add_argument("--experiment", default="iwarp", help="MLflow experiment (default: %(default)s)")
    r.add_argument("--model-name", default="iwarp", help="MLflow registered model / TorchServe model name")
    r.add_argument("--mlflow-port", type=int, default=5000, help="port for a newly started MLflow server")
    r.add_argument("--home", help="state directory (default: $IWARP_HOME or ./.iwarp)")
    r.add_argument("--verbose", "-v", action="store_true", help="stream every task's log instead of the progress view")
    r.add_argument("--json", metavar="PATH", help="also write the run's result as JSON")
    r.add_argument(
        "--readme-picture",
        action="store_true",
        help="also copy the champion's animation (sources | driving | output) to docs/images/main-job.png",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest run under the state directory that did not finish (killed, or failed on "
        "an outage), given the same options: finished tasks are reused, an interrupted training continues "
        "from its last checkpoint, the MLflow parent run is continued",
    )
    r.set_defaults(func=_run, recipe_defaults={k: r.get_default(k) for k in ("init_from", "config", "image_size")})

    c = psub.add_parser(
        "compile",
        help="write the pipeline IR YAML for `kfp run create`",
        description="Compile the pipeline (with its Kubernetes platform config) to KFP IR YAML.",
    )
    c.add_argument("--out", default="iwarp_pipeline.yaml", help="output YAML (default: %(default)s)")
    c.add_argument(
        "--image", help="container image for every step (default: $IWARP_IMAGE or ghcr.io/iwarp/iwarp:0.1.0)"
    )
    c.add_argument("--eval-gpus", type=int, help="GPUs per evaluation task (default 1; 0 = CPU)")
    c.add_argument("--accelerator", help="GPU resource name (default nvidia.com/gpu)")
    c.add_argument("--gpu-node-selector", nargs="*", metavar="KEY=VALUE", help="node labels for GPU tasks")
    c.add_argument("--s3-secret", help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default iwarp-s3)")
    c.add_argument("--mlflow-secret", help="Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD (default iwarp-mlflow)")
    c.add_argument(
        "--param",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="new defaults for pipeline parameters (e.g. tracking_uri=http://mlflow:5000)",
    )
    c.set_defaults(func=_compile)

    s = psub.add_parser("services", help="status or stop of the local MLflow / TorchServe servers")
    s.add_argument("action", choices=["status", "stop"])
    s.add_argument("--home", help="state directory (default: $IWARP_HOME or ./.iwarp)")
    s.set_defaults(func=_services)


def _apply_model(args: argparse.Namespace) -> None:
    """--model NAME fills --init-from, --config and --image-size; giving one of them too is ambiguous."""
    from pipelines.local_run import shipped_recipe

    given = [f"--{k.replace('_', '-')}" for k, v in args.recipe_defaults.items() if getattr(args, k) != v]
    if given:
        raise InputError(f"--model {args.model} sets {', '.join(given)} itself: give one or the other")
    args.config, args.image_size = shipped_recipe(args.model)
    args.init_from = args.model


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipelines.local_run import (
        LocalRunOptions,
        print_summary,
        result_json,
        run_local,
    )

    console = Console()
    if args.model:
        _apply_model(args)
    opts = LocalRunOptions(
        data=args.data,
        data_params=args.data_params,
        config=args.config,
        init_from=args.init_from,
        keypoints_from=args.keypoints_from,
        keypoint_config=args.keypoint_config,
        keypoint_init_from=args.keypoint_init_from,
        keypoint_steps=args.keypoint_steps,
        overrides=args.overrides,
        steps=args.steps,
        nproc=args.nproc,
        seed=args.seed,
        image_size=args.image_size,
        eval_sources=args.sources,
        eval_source_placement=args.source_placement,
        eval_frame_stride=args.frame_stride,
        eval_max_videos=args.eval_max_videos,
        eval_fd=args.fd,
        eval_landmarks=args.landmarks,
        select_metric=args.select_metric,
        experiment=args.experiment,
        model_name=args.model_name,
        mlflow_port=args.mlflow_port,
        home=args.home,
        verbose=args.verbose,
        readme_picture=args.readme_picture,
        resume=args.resume,
    )
    result = run_local(opts, console)  # ServiceError: exit 3, a missing file: 2 (iwarp.errors)
    print_summary(result, console)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result_json(result), f, indent=2, default=str)
    return result.exit_code


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"{what} must look like KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _compile(args: argparse.Namespace) -> int:
    import yaml

    from pipelines.pipeline import PlatformOptions, Secret, compile_pipeline

    opts = PlatformOptions()
    if args.image:
        opts.image = args.image
    if args.eval_gpus is not None:
        opts.eval_gpus = args.eval_gpus
    if args.accelerator:
        opts.accelerator_type = args.accelerator
    if args.gpu_node_selector is not None:
        opts.gpu_node_selector = _kv(args.gpu_node_selector, "--gpu-node-selector")
    if args.s3_secret:
        opts.s3 = Secret(args.s3_secret, opts.s3.keys, opts.s3.optional)
    if args.mlflow_secret:
        opts.mlflow = Secret(args.mlflow_secret, opts.mlflow.keys, opts.mlflow.optional)
    # Values parse as YAML so numbers, booleans and lists keep their types (eval_sources=[1,2]).
    defaults = {k: yaml.safe_load(v) for k, v in _kv(args.param, "--param").items()}
    try:
        out = compile_pipeline(args.out, opts, defaults)
    except (ValueError, TypeError) as exc:  # unknown parameter name or wrong type
        raise InputError(str(exc)) from exc
    print(f"wrote {out}")
    print(
        f"submit: kfp --endpoint URL run create -e EXPERIMENT -f {out} "
        "tracking_uri=http://iwarp-mlflow.iwarp.svc.cluster.local:5000 dvc_remote=s3://BUCKET/dvc"
    )
    return 0


def _services(args: argparse.Namespace) -> int:
    from pipelines.services import (
        MlflowServer,
        iwarp_home,
        stop_torchserve,
        torchserve_status,
    )

    home = iwarp_home(args.home)
    mlflow = MlflowServer(home)
    if args.action == "status":
        rec = mlflow.running()
        print(f"mlflow: {'running at ' + rec.url + f' (pid {rec.pid})' if rec else 'not running'}")
        print(f"torchserve: {torchserve_status(home)}")
        return 0
    print(f"mlflow: {'stopped' if mlflow.stop() else 'was not running'}")  # ServiceError: exit 3
    print(f"torchserve: {'stopped' if stop_torchserve(home) else 'was not running'}")
    return 0
