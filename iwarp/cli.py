"""`iwarp` command line. Each area registers its own subcommands; heavy imports
(torch, mlflow, kfp, ...) happen inside the handlers so `iwarp --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

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


if __name__ == "__main__":
    sys.exit(main())
