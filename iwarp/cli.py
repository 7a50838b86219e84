"""`iwarp` command line. Each area registers its own subcommands; heavy imports
(torch, mlflow, kfp, ...) happen inside the handlers so `iwarp --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from iwarp.errors import exit_code, run_command

# Modules exposing `register(subparsers)`; each adds one or more subcommands.
COMMAND_MODULES = [
    "iwarp.data.cli",  # iwarp data synth|prepare|validate|...
    "iwarp.training.cli",  # iwarp train | evaluate | animate
    "serving.cli",  # iwarp serve package|start|stop|predict|canary
    "serving.deploy_cli",  # iwarp deploy kserve
    "pipelines.cli",  # iwarp pipeline run|compile
    "components.track_cli",  # iwarp track sync (MLflow glue lives in components/)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iwarp", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `error: <message>` and the error's exit code (iwarp.errors); IWARP_DEBUG=1 adds the traceback.
    return run_command(args.func, args)


def is_input_error(exc: BaseException) -> bool:
    """True for expected failures (the project's errors, missing files, unreachable services),
    whose messages say what to fix; anything else is a bug and keeps its traceback."""
    return exit_code(exc) is not None


if __name__ == "__main__":
    sys.exit(main())
