"""`iwarp train | evaluate | animate`. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (single process, or DDP under torchrun / --nproc)",
        description="Train implicit warping or the explicit-flow baseline from a YAML config. "
        "Multi-process: `torchrun --nproc-per-node N -m iwarp train ...` or `--nproc N`.",
    )
    p.add_argument("--config", required=True, help="YAML file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set optim.steps=100 data.root=data/synth",
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in <out_dir>/checkpoints")
    p.add_argument("--resume-from", metavar="CKPT", help="continue from this checkpoint file")
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        help="fine-tune: a fresh run (step 0, fresh optimizers) from this checkpoint's weights (a file or "
        "a shipped model's name); sets init_from. With --resume, a checkpoint already in out_dir wins",
    )
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (http://..., sqlite:///..., file:...)")
    p.add_argument("--register-model", metavar="NAME", help="also register the final model under this MLflow name")
    p.add_argument(
        "--nproc",
        type=int,
        default=0,
        metavar="N",
        help="launch N local processes through torch.distributed.run (CPU: gloo, GPU: NCCL)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "evaluate",
        help="reconstruction metrics per number of sources",
        description="Test-split reconstruction: k frames of each video are the sources (the first k, "
        "or spread over the clip), the remaining frames are driven. Prints a per-k table and writes JSON.",
    )
    p.add_argument(
        "--checkpoint",
        required=False,
        help="checkpoint written by `iwarp train`, or a shipped model's name (omit with --copy-source-only)",
    )
    p.add_argument("--data", required=True, help="dataset folder holding <split>/")
    p.add_argument("--sources", nargs="+", type=int, default=[1, 2, 4], metavar="K", help="numbers of sources to test")
    p.add_argument("--out", default="metrics.json", help="JSON output path")
    p.add_argument("--split", default="test")
    p.add_argument("--image-size", type=int, help="default: the size the checkpoint was trained at")
    p.add_argument("--frame-stride", type=int, default=2, help="drive every n-th frame (default 2)")
    p.add_argument(
        "--source-placement",
        choices=["first", "spread"],
        default="first",
        help="first: the first k frames are the sources, frames from max(k) on are driven (FOMM's "
        "protocol); spread: the k sources are evenly spread over the clip (different poses, like a "
        "photo set) and every frame that is no source of any k is driven",
    )
    p.add_argument(
        "--sources-from",
        choices=["test", "train"],
        default="test",
        help="test: the sources are frames of the evaluated clip itself; train: they come from the "
        "train split's clips of the same identity (a personal target: your own photos), placed over "
        "them by --source-placement, and every --frame-stride-th frame of the test clip is driven",
    )
    p.add_argument("--max-videos", type=int, help="evaluate only the first N videos")
    p.add_argument(
        "--landmarks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="AKD/MKR from 68-point face landmarks (dlib; slow on CPU); --no-landmarks for non-face data",
    )
    p.add_argument(
        "--fd",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Frechet distance over VGG16 features (fd_vgg16; not Inception FID); --no-fd to skip",
    )
    p.add_argument("--copy-source", action="store_true", help="also report the floor that predicts the first source")
    p.add_argument("--copy-source-only", action="store_true", help="only the copy-the-source floor (no checkpoint)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "animate",
        help="animate source image(s) with a driving video",
        description="Encode the source images once, then animate each driving frame; writes an H.264 mp4.",
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint file, or a shipped model's name (e.g. iwarp-faces-64)"
    )
    p.add_argument(
        "--source", nargs="+", required=True, metavar="IMAGE", help="one or more source images of one subject"
    )
    p.add_argument("--driving", required=True, help="driving video (.mp4 etc.) or a folder of frames")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument(
        "--relative",
        action="store_true",
        help="FOMM relative motion: move the first source's keypoints by the driving keypoints' "
        "displacement from the first driving frame (keeps the source's identity and pose)",
    )
    p.add_argument(
        "--adapt-scale",
        dest="adapt_movement_scale",
        action="store_true",
        help="with --relative: scale the motion by the source/driving face-size ratio (FOMM's adapt_movement_scale)",
    )
    p.add_argument("--fps", type=float, help="output frame rate (default: the driving video's)")
    p.add_argument("--max-frames", type=int, help="animate only the first N driving frames")
    p.add_argument("--side-by-side", action="store_true", help="write driving | prediction side by side")
    p.add_argument(
        "--frame",
        choices=["face", "none"],
        default="face",
        help="face (default): crop each source photo and the driving video around the face, as training "
        "crops are framed (the driving face tracked and smoothed); none: centre-crop whole frames",
    )
    p.add_argument(
        "--paste-back",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --frame face: paste the animated face back into the first source photo (at its size, "
        "longer side at most 1024); --no-paste-back writes the model-size face crop alone",
    )
    p.add_argument("--face-index", type=int, default=0, help="which face of a photo with several, most confident first")
    p.add_argument("--batch-size", type=int, default=8, help="driving frames per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_animate)


def _plain_warnings() -> None:
    """`warning: ...` on stderr instead of Python's file:line prefix (users read these)."""
    import warnings

    warnings.showwarning = lambda message, category, *_a, **_k: print(f"warning: {message}", file=sys.stderr)


def _relaunch(args: argparse.Namespace) -> int:
    """`--nproc N`: run this same command under torch.distributed.run (standalone rendezvous)."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "iwarp",
        "train",
        "--config",
        args.config,
    ]
    if args.overrides:
        cmd += ["--set", *args.overrides]
    if args.resume:
        cmd.append("--resume")
    for flag, value in (
        ("--resume-from", args.resume_from),
        ("--init-from", args.init_from),
        ("--tracking-uri", args.tracking_uri),
        ("--register-model", args.register_model),
    ):
        if value:
            cmd += [flag, value]
    return subprocess.call(cmd)


def _train(args: argparse.Namespace) -> int:
    _plain_warnings()
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    from iwarp.training.config import load_train_config
    from iwarp.training.loop import train

    # Failures propagate to iwarp.errors.run_command: `error: ...` and the error's exit code.
    cfg = load_train_config(args.config, args.overrides)
    if args.init_from:
        cfg.init_from = args.init_from

    make_logger = None
    if args.tracking_uri:
        from iwarp import plugins

        tracker = plugins.load(plugins.TRACKERS, "mlflow")  # provided by components/ (MLflow stays outside iwarp/)

        def make_logger(trainer):
            return tracker(
                args.tracking_uri,
                experiment=cfg.experiment,
                run_name=cfg.run_name or None,
                run_id=trainer.tracking_run_id,
                registered_model_name=args.register_model,
                run_dir=trainer.out_dir,
                resume=trainer.resume,
            )

    result = train(cfg, make_logger, resume=args.resume, resume_from=args.resume_from)
    if int(os.environ.get("RANK", "0")) == 0:
        if result.stopped == "signal":
            print(
                f"stopped by SIGTERM at step {result.step}; checkpoint saved, continue with --resume", file=sys.stderr
            )
            return 143
        note = " (time budget reached)" if result.stopped == "budget" else ""
        print(f"trained {result.step} steps{note}; final checkpoint: {result.final_checkpoint}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _plain_warnings()
    from iwarp.training.evaluate import evaluate_cli

    return evaluate_cli(args)


def _animate(args: argparse.Namespace) -> int:
    _plain_warnings()
    from iwarp.training.animate import animate_cli

    return animate_cli(args)
