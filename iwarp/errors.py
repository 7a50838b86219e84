"""One error contract for every `iwarp` command.

An `IwarpError` carries a one-line message and the exit code the CLI returns for it:

| code | meaning |
|---|---|
| 0 | success |
| 1 | anything else that went wrong (a failed step, a bug: with a traceback) |
| 2 | bad input or usage: a missing or corrupt file, an invalid config or option |
| 3 | a service is unreachable: MLflow, TorchServe, S3, a cluster API |

Areas subclass these (`class ConfigError(InputError, ValueError)`) and keep the builtin base
callers already catch. `run_command` is the one place that turns an exception into
`error: <message>` (one line) and an exit code; `IWARP_DEBUG=1` prints the traceback first.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

DEBUG_ENV = "IWARP_DEBUG"


class IwarpError(Exception):
    """An expected failure: its message says what to fix; `exit_code` is what the CLI returns."""

    exit_code = 1


class InputError(IwarpError):
    """Bad input or usage: a missing or corrupt file, an invalid config value or option."""

    exit_code = 2


class ServiceUnavailable(IwarpError):
    """A service (MLflow, TorchServe, S3, a cluster API) cannot be reached."""

    exit_code = 3


# Builtin errors whose message already says what to fix.
_INPUT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
_UNREACHABLE_NAMES = {
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "NewConnectionError",
    "MaxRetryError",
    "EndpointConnectionError",
}  # requests, urllib3, botocore: by name, unimported
_PROJECT_PACKAGES = {"iwarp", "serving", "pipelines", "components"}


def exit_code(exc: BaseException) -> int | None:
    """The exit code for an expected failure; None for a bug (which keeps its traceback)."""
    if isinstance(exc, IwarpError):
        return exc.exit_code
    if isinstance(exc, (ConnectionError, TimeoutError)) or {c.__name__ for c in type(exc).__mro__} & _UNREACHABLE_NAMES:
        return 3
    if isinstance(exc, _INPUT):
        return 2
    if type(exc).__module__.split(".")[0] in _PROJECT_PACKAGES:  # a project error not yet on IwarpError
        return 1
    return None


def message(exc: BaseException) -> str:
    """`error: <the message>` on one line: a multi-line message's lines are joined, not cut."""
    text = str(exc).strip() or type(exc).__name__
    return "error: " + " ".join(line.strip() for line in text.splitlines() if line.strip())


def report(exc: BaseException) -> int:
    """Print an expected failure the contract's way and return its exit code; re-raise a bug."""
    code = exit_code(exc)
    if code is None:
        raise exc
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(exc)
    print(message(exc), file=sys.stderr, flush=True)
    return code


def run_command(func: Callable[..., int | None], *args) -> int:
    """Run a CLI handler: its return code, or the contract's code for what it raised."""
    try:
        return int(func(*args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return report(exc)
