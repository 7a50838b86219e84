"""`iwarp` command line. Each area registers its own subcommands; heavy imports
(torch, mlflow, kfp, ...) happen inside the handlers so `iwarp --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Errors that mean "your input is wrong" (a missing file, a corrupt checkpoint, a server that is
# not up): the CLI prints their message instead of a traceback. IWARP_DEBUG=1 shows the traceback.
_INPUT_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                 FileExistsError, ConnectionError)
_PROJECT_PACKAGES = {"iwarp", "serving", "pipelines", "components"}

# Modules exposing `register(subparsers)`; each adds one or more subcommands.
COMMAND_MODULES = [
    "iwarp.data.cli",  # iwarp data synth|prepare|validate|...
    "iwarp.training.cli",  # iwarp train | evaluate | animate
    "serving.cli",  # iwarp serve package|start|stop|predict|canary
    "serving.deploy_cli",  # iwarp deploy kserve
    "pipelines.cli",  # iwarp pipeline run|compile
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iwarp", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("IWARP_DEBUG") or not is_input_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def is_input_error(exc: BaseException) -> bool:
    """True for the project's own error types and file/connection errors, whose messages
    already say what to fix; anything else is a bug and keeps its traceback."""
    return isinstance(exc, _INPUT_ERRORS) or type(exc).__module__.split(".")[0] in _PROJECT_PACKAGES


if __name__ == "__main__":
    sys.exit(main())
