"""`iwarp demo`: serve the demo page and print its URL.

By default the page calls TorchServe over HTTP beside `make run`'s services: the server started
from `<home>/serve` (`.iwarp/serve`, token in its key_file.json) is reused when it is up, and
started from its model store when it is not; MLflow's `champion`/`challenger` aliases label the
versions when `make run`'s MLflow server is up. With nothing packaged yet (a fresh clone), or
with `--local CKPT|NAME`, the model runs in this process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.demo.config import DemoConfig

# No telemetry or update checks: the page must work with no internet (and say nothing about it).
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="a web page (Gradio) that animates photos with a driving video or the webcam",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--local",
        metavar="CKPT|NAME",
        help="run this model in the demo's process (a checkpoint file or a shipped model name) instead of TorchServe",
    )
    p.add_argument("--workdir", help="a running TorchServe's working dir to call (default: <home>/serve, make run's)")
    p.add_argument("--home", help="state directory (default: $IWARP_HOME or ./.iwarp)")
    p.add_argument("--host", default="127.0.0.1", help="address the page listens on (default: loopback)")
    p.add_argument("--port", type=int, default=None, help="page port (default: 7860 or the next free one)")
    p.add_argument("--max-frames", type=int, default=DemoConfig.max_frames, help="longest driving video, in frames")
    p.add_argument("--no-face-check", dest="face_check", action="store_false", help="accept photos without a face")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    config = DemoConfig(
        backend="local" if args.local else "http",
        checkpoint=args.local or DemoConfig.checkpoint,
        home=args.home,
        workdir=args.workdir,
        host=args.host,
        port=args.port or 0,
        max_frames=args.max_frames,
        face_check=args.face_check,
    )
    serve(config)
    return 0


def make_animator(config: DemoConfig, home: Path) -> Any:
    """HttpAnimator on the chosen TorchServe, or LocalAnimator (asked for, or nothing packaged yet)."""
    from app.demo.backends import DemoServiceError, HttpAnimator, LocalAnimator
    from pipelines.services import ensure_torchserve, torchserve_workdir
    from serving.server import ServerHandle, ServerNotRunning

    if config.backend == "local":
        return LocalAnimator.load(config.checkpoint, config)
    if config.workdir:  # someone else's server: call it, never start it
        try:
            handle = ServerHandle.load(config.workdir)
        except ServerNotRunning as exc:
            raise DemoServiceError(str(exc)) from None
        if not handle.alive():
            raise DemoServiceError(f"TorchServe from {config.workdir} is not running (start it: `iwarp serve start`)")
        return HttpAnimator(handle, config, mlflow_aliases(home, config.model_name))
    workdir = torchserve_workdir(home)
    if not _running(workdir) and not any((workdir / "model-store").glob("*.mar")):
        print(
            f"no model packaged under {workdir} yet (`make run` packages and serves one): "
            f"running {config.checkpoint} in this process",
            file=sys.stderr,
        )
        return LocalAnimator.load(config.checkpoint, config)
    if not _running(workdir):
        print(f"starting TorchServe from {workdir} ...", file=sys.stderr, flush=True)
    handle, _ = ensure_torchserve(home, model_name=config.model_name)
    return HttpAnimator(handle, config, mlflow_aliases(home, config.model_name))


def _running(workdir: Path) -> bool:
    from serving.server import ServerError, ServerHandle

    try:
        return ServerHandle.load(workdir).alive()
    except (ServerError, OSError, ValueError):
        return False


def mlflow_aliases(home: Path, model_name: str) -> dict[str, list[str]]:
    """TorchServe version -> MLflow aliases (champion, challenger), when make run's MLflow is up."""
    import requests

    from components.steps.deploy import torchserve_version
    from pipelines.services import MlflowServer

    record = MlflowServer(home).running()  # a health check; never starts one (~30 s)
    if record is None:
        return {}
    try:
        r = requests.get(f"{record.url}/api/2.0/mlflow/registered-models/get", params={"name": model_name}, timeout=5)
        aliases = r.json()["registered_model"].get("aliases", []) if r.ok else []
    except (requests.RequestException, ValueError, KeyError):
        return {}
    out: dict[str, list[str]] = {}
    for entry in aliases:
        out.setdefault(torchserve_version(entry["version"]), []).append(entry["alias"])
    return out


def serve(config: DemoConfig) -> None:
    """Build the page, serve it, print its URL (the one line on stdout), block until Ctrl-C."""
    from app.demo.examples import example_rows
    from app.demo.ui import CSS, THEME, build_app
    from pipelines.services import iwarp_home

    home = iwarp_home(config.home)
    animator = make_animator(config, home)
    examples = example_rows(home)
    with tempfile.TemporaryDirectory(prefix="iwarp-demo-") as out:
        app = build_app(animator, config, Path(out), examples)
        app.queue(default_concurrency_limit=2)
        app.launch(
            server_name=config.host,
            server_port=config.port or None,
            prevent_thread_lock=True,
            quiet=True,
            show_error=False,
            theme=THEME,
            css=CSS,
            allowed_paths=[out, str(home / "demo")],
            footer_links=[],
        )
        # the one URL on stdout (the page names the server it calls)
        print(f"iwarp demo at {app.local_url} ({animator.kind}; Ctrl-C stops it)", flush=True)
        try:
            app.block_thread()
        finally:
            app.close()
