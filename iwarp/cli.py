"""`iwarp` library command line: the verbs the model library answers alone (`data`, `train`,
`evaluate`, `animate`). The umbrella `iwarp` console script (`app/cli.py`) adds serving,
deploy, pipeline and tracking verbs on top of these. Heavy imports (torch, ...) happen inside the
handlers so `--help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable

from iwarp.errors import exit_code, run_command

# Modules exposing `register(subparsers)`; each adds one or more subcommands.
COMMAND_MODULES = (
    "iwarp.data.cli",  # iwarp data synth|prepare|validate|...
    "iwarp.training.cli",  # iwarp train | evaluate | animate
)


def build_parser(
    modules: Iterable[str] = COMMAND_MODULES,
    description: str = "iwarp library commands (data, training, evaluation, animation)",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iwarp", description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(
    argv: list[str] | None = None, modules: Iterable[str] = COMMAND_MODULES, description: str | None = None
) -> int:
    args = (build_parser(modules, description) if description else build_parser(modules)).parse_args(argv)
    # `error: <message>` and the error's exit code (iwarp.errors); IWARP_DEBUG=1 adds the traceback.
    return run_command(args.func, args)


def is_input_error(exc: BaseException) -> bool:
    """True for expected failures (the project's errors, missing files, unreachable services),
    whose messages say what to fix; anything else is a bug and keeps its traceback."""
    return exit_code(exc) is not None


if __name__ == "__main__":
    sys.exit(main())
