"""`iwarp` console script: the library's verbs plus every layer above it. Each module registers
its own subcommands; heavy imports (torch, mlflow, kfp, ...) happen inside the handlers so
`iwarp --help` stays fast."""

from __future__ import annotations

import argparse
import sys

from iwarp import cli as library_cli

COMMAND_MODULES = (
    *library_cli.COMMAND_MODULES,  # iwarp data ... | train | evaluate | animate
    "serving.cli",  # iwarp serve package|start|stop|predict|canary
    "deploy.cli",  # iwarp deploy kserve
    "pipelines.cli",  # iwarp pipeline run|compile
    "components.track_cli",  # iwarp track sync (MLflow glue lives in components/)
    "app.demo.cli",  # iwarp demo (Gradio page over the TorchServe endpoint)
)


DESCRIPTION = "iwarp: implicit warping, from data to a served, canaried model"


def build_parser() -> argparse.ArgumentParser:
    return library_cli.build_parser(COMMAND_MODULES, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return library_cli.main(argv, COMMAND_MODULES, DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
