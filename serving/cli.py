"""`iwarp serve package|start|stop|status|predict|canary|canary-set|rollback` (docs/serving.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iwarp.errors import run_command


def _config(args: argparse.Namespace):
    from serving.config import load_serve_config

    return load_serve_config(args.config, args.set)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="serving YAML (default: serving/serve.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set server.inference_port=9080 (repeatable)",
    )


def _add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir", default=None, help="TorchServe working dir: key file, logs, pid (default: server.workdir)"
    )


def _cmd_package(args: argparse.Namespace) -> int:
    from serving.package import package

    meta = {}
    if args.mlflow_model_version:
        meta["mlflow_model_version"] = str(args.mlflow_model_version)
    path = package(
        args.checkpoint,
        args.version,
        args.out,
        config=_config(args),
        archive_name=args.archive_name,
        force=args.force,
        image_size=tuple(args.image_size) if args.image_size else None,
        metadata=meta,
    )
    print(f"wrote {path} (version {args.version})")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    from serving.server import start_server

    cfg = _config(args)
    h = start_server(
        args.model_store,
        config=cfg,
        workdir=args.workdir,
        inference_port=args.inference_port,
        management_port=args.management_port,
        metrics_port=args.metrics_port,
    )
    client = h.client()
    versions = client.versions(cfg.model.name)
    print(f"TorchServe pid {h.pid} (workdir {h.workdir})")
    print(f"  inference   {h.inference_url}/predictions/{cfg.model.name}")
    print(f"  management  {h.management_url}")
    print(f"  metrics     {h.metrics_url}/metrics")
    print(f"  tokens      {h.key_file}  (send 'Authorization: Bearer <inference key>')")
    if versions:
        print(f"  {cfg.model.name}: versions {versions}, default {client.default_version(cfg.model.name)}")
    else:
        print(f"  no {cfg.model.name}.mar in {h.model_store}: nothing registered yet")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from serving.server import stop_server

    workdir = args.workdir or _config(args).server.workdir
    print("TorchServe stopped" if stop_server(workdir) else f"no TorchServe running from {workdir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from serving.server import server_status

    info = server_status(args.workdir or _config(args).server.workdir)
    print(json.dumps(info, indent=2, default=str))
    return 0 if info.get("running") else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from serving.server import ServerHandle

    cfg = _config(args)
    client = ServerHandle.load(args.workdir or cfg.server.workdir).client()
    client.model_name = cfg.model.name
    result = client.predict(  # ServeError: exit 2 for a rejected request, 3 when TorchServe is away
        args.sources or None,
        args.driving or None,
        driving_video=args.driving_video,
        source_set_id=args.source_set_id,
        register=args.register,
        relative=args.relative,
        reset_reference=args.reset_reference,
        output=args.output,
        fps=args.fps,
        version=args.version,
        frame=args.frame,
        face_index=args.face_index,
    )
    out = Path(args.out)
    if args.output == "mp4":
        out = out if out.suffix == ".mp4" else out / "animation.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(result.video)
        print(f"wrote {out} ({result.latency_ms:.0f} ms)")
        return 0
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(result.frames or []):
        Image.fromarray(frame).save(out / f"frame_{i:04d}.png")
    print(json.dumps({**result.info, "latency_ms": round(result.latency_ms, 1), "out": str(out)}, indent=2))
    return 0


def _cmd_canary(args: argparse.Namespace) -> int:
    from serving.rollout import run_canary

    verdict = run_canary(
        args.mar,
        workdir=args.workdir,
        canary_set=args.canary_set,
        config=_config(args),
        mlflow_tracking_uri=args.mlflow_uri,
        mlflow_model_version=args.mlflow_model_version,
    )
    return 4 if (args.fail_on_rollback and not verdict.promote) else 0  # 3 means unreachable (iwarp.errors)


def _cmd_canary_set(args: argparse.Namespace) -> int:
    from serving.canary_set import build_from_dataset

    out = build_from_dataset(
        args.data,
        args.out,
        split=args.split,
        k=args.k,
        n_driving=args.frames,
        stride=args.stride,
        image_size=args.image_size,
        max_videos=args.max_videos,
    )
    print(f"wrote canary set {out}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from serving.rollout import rollback

    version = rollback(args.workdir, args.to, _config(args))
    print(f"default version is now {version}")
    return 0


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="TorchServe: package, start/stop, predict, canary rollout",
        description="Serve iwarp over HTTP with TorchServe. See docs/serving.md.",
    )
    sub = serve.add_subparsers(dest="serve_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("package", help="checkpoint -> MODEL_STORE/iwarp.mar (torch.export + handler + config)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a shipped model's name (models/)")
    p.add_argument("--version", required=True, help="model version, e.g. 1.0")
    p.add_argument("--out", required=True, metavar="MODEL_STORE")
    p.add_argument("--archive-name", default=None, help="file name without .mar (default: the model name, iwarp)")
    p.add_argument("--force", action="store_true", help="overwrite an existing archive")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="only if the checkpoint's config does not say",
    )
    p.add_argument(
        "--mlflow-model-version",
        default=None,
        help="MLflow registered-model version this archive was built from (the canary moves its aliases)",
    )
    _add_config(p)
    p.set_defaults(func=_cmd_package)

    p = sub.add_parser("start", help="start TorchServe in the background (token auth on, loopback)")
    p.add_argument("--model-store", required=True)
    _add_workdir(p)
    for name in ("inference", "management", "metrics"):
        p.add_argument(f"--{name}-port", type=int, default=None, help="0 = any free port")
    _add_config(p)
    p.set_defaults(func=_cmd_start)

    p = sub.add_parser("stop", help="stop the TorchServe started from --workdir")
    _add_workdir(p)
    _add_config(p)
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("status", help="running?, versions, default, workers (JSON)")
    _add_workdir(p)
    _add_config(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("predict", help="animate: send sources + driving frames, save the frames or mp4")
    p.add_argument("--sources", nargs="*", default=[], help="1 to 8 source images")
    p.add_argument("--driving", nargs="*", default=[], help="driving frames (images)")
    p.add_argument("--driving-video", default=None, help="driving video file instead of frames")
    p.add_argument("--source-set-id", default=None, help="id of a registered source set (instead of --sources)")
    p.add_argument("--register", action="store_true", help="cache the sources on the server and print their id")
    p.add_argument("--relative", action="store_true", help="relative motion (first driving frame = reference)")
    p.add_argument("--reset-reference", action="store_true")
    p.add_argument("--output", choices=("png", "mp4"), default="png")
    p.add_argument("--fps", type=float, default=None)
    p.add_argument(
        "--frame",
        choices=("face", "none"),
        default=None,
        help="face: whole photos/frames, the face framed and pasted back into the first source (the server's "
        "default); none: face crops already",
    )
    p.add_argument("--face-index", type=int, default=None, help="with --frame face: which face, most confident first")
    p.add_argument("--version", default=None, help="a specific model version (default: the default version)")
    p.add_argument("--out", default="animation", help="folder for frames, or an .mp4 path")
    _add_workdir(p)
    _add_config(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("canary", help="evaluate NEW.mar beside the default version; promote or roll back")
    p.add_argument("--mar", required=True, help="candidate archive (a new version)")
    p.add_argument("--canary-set", default=None, help="held-out canary set folder (default: canary_eval.canary_set)")
    p.add_argument(
        "--mlflow-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none = no aliases)"
    )
    p.add_argument(
        "--mlflow-model-version", default=None, help="candidate's registered-model version (default: from the archive)"
    )
    p.add_argument("--fail-on-rollback", action="store_true", help="exit 4 when the candidate is rolled back")
    _add_workdir(p)
    _add_config(p)
    p.set_defaults(func=_cmd_canary)

    p = sub.add_parser("canary-set", help="cut a held-out canary set from a prepared dataset's test split")
    p.add_argument("--data", required=True, help="dataset root (train/, test/, manifest.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--k", type=int, default=2, help="source images per case")
    p.add_argument("--frames", type=int, default=8, help="driving frames per case")
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-videos", type=int, default=0)
    p.set_defaults(func=_cmd_canary_set)

    p = sub.add_parser("rollback", help="make the previous (or --to) version the default again")
    p.add_argument("--to", default=None)
    _add_workdir(p)
    _add_config(p)
    p.set_defaults(func=_cmd_rollback)


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.cli serve ...` works without the other areas' CLIs."""
    parser = argparse.ArgumentParser(prog="iwarp")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
