"""The `iwarp` command line turns bad input into a one-line error, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _iwarp(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "IWARP_DEBUG"} | env
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["data", "validate", "--data", "/nonexistent-iwarp-data"], "/nonexistent-iwarp-data"),
        (["data", "prepare", "--input", "/nonexistent-iwarp-raw", "--out", "{tmp}/prepared"], "/nonexistent-iwarp-raw"),
        (
            ["serve", "package", "--checkpoint", "/nonexistent.pt", "--version", "1", "--out", "{tmp}/store"],
            "checkpoint not found",
        ),
    ],
)
def test_bad_paths_give_a_clear_error_and_no_traceback(tmp_path, args, needle):
    proc = _iwarp(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert needle in proc.stderr


def test_iwarp_debug_keeps_the_traceback():
    proc = _iwarp("data", "validate", "--data", "/nonexistent-iwarp-data", IWARP_DEBUG="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_programming_errors_are_not_hidden():
    """Only input errors are shortened: a plain bug (here a TypeError) keeps its traceback."""
    from iwarp.cli import is_input_error

    assert is_input_error(FileNotFoundError("x"))
    assert not is_input_error(TypeError("x"))
    assert not is_input_error(KeyError("x"))


def _closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    from serving.server import free_port

    return free_port()


def _fake_run(tmp: Path) -> Path:
    """A run folder as `iwarp train` leaves one (just its metrics), for `track sync`."""
    run = tmp / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "time": 1.0, "g/total": 0.5}\n')
    return run


# Each CLI's main failure modes under the one error contract (iwarp.errors): the last stderr line
# is `error: <message>`, no traceback, and the exit code says which kind: 2 bad input, 3 a service
# that cannot be reached.
CONTRACT = [
    (["data", "validate", "--data", "/nonexistent-iwarp-data"], 2, "/nonexistent-iwarp-data", {}),
    (
        ["data", "s3", "download", "s3://bucket/x", "{tmp}/dl", "--endpoint-url", "http://127.0.0.1:{port}"],
        3,
        "Could not connect to the endpoint",
        {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1"},
    ),
    (["train", "--config", "/nonexistent-iwarp.yaml"], 2, "config file not found", {}),
    (["train", "--config", "configs/tiny.yaml", "--set", "optim.stepz=3"], 2, "stepz", {}),
    (
        ["track", "sync", "/nonexistent-iwarp-run", "--tracking-uri", "http://127.0.0.1:{port}"],
        2,
        "is not a training run folder",
        {},
    ),
    (["track", "sync", "{run}", "--tracking-uri", "http://127.0.0.1:{port}"], 3, "is unreachable", {}),
    (
        ["serve", "predict", "--workdir", "{tmp}", "--sources", "a.png", "--driving", "b.png", "--out", "{tmp}/o"],
        3,
        "no TorchServe started",
        {},
    ),
    (["deploy", "validate", "/nonexistent-iwarp.yaml"], 2, "No such file", {}),
    (["deploy", "kserve", "--rollback"], 3, "no Kubernetes cluster reachable", {"KUBECONFIG": "{tmp}/no-kubeconfig"}),
    (["pipeline", "compile", "--out", "{tmp}/p.yaml", "--param", "nosuch=1"], 2, "nosuch", {}),
    (["pipeline", "compile", "--out", "{tmp}/p.yaml", "--gpu-node-selector", "novalue"], 2, "KEY=VALUE", {}),
    # a model name not shipped (yet) stops the run before any service starts
    (
        ["pipeline", "run", "--home", "{tmp}", "--keypoints-from", "", "--keypoint-init-from", "iwarp-no-such-fomm"],
        2,
        "checkpoint not found: iwarp-no-such-fomm",
        {},
    ),
    # --model carries its own recipe: a second --config is refused, an unknown model named
    (
        ["pipeline", "run", "--home", "{tmp}", "--model", "iwarp-faces-64", "--config", "configs/tiny.yaml"],
        2,
        "--model iwarp-faces-64 sets --config itself",
        {},
    ),
    (["pipeline", "run", "--home", "{tmp}", "--model", "iwarp-no-such"], 2, "checkpoint not found: iwarp-no-such", {}),
    # ... and so does a keypoint detector the variants could not load (10 keypoints vs tiny's 5)
    (
        [
            "pipeline",
            "run",
            "--home",
            "{tmp}",
            "--config",
            "configs/tiny.yaml",
            "--init-from",
            "",
            "--keypoint-init-from",
            "",
        ],
        2,
        "does not fit configs/tiny.yaml: num_keypoints 10 vs 5",
        {},
    ),
]


@pytest.mark.parametrize("args, code, needle, extra_env", CONTRACT, ids=[" ".join(c[0][:2]) for c in CONTRACT])
def test_every_cli_reports_failures_by_the_contract(tmp_path, args, code, needle, extra_env):
    fill = {"tmp": tmp_path, "port": _closed_port(), "run": _fake_run(tmp_path)}
    proc = _iwarp(*[a.format(**fill) for a in args], **{k: v.format(**fill) for k, v in extra_env.items()})
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, proc.stderr[-2000:]


def test_iwarp_debug_shows_the_traceback_and_keeps_the_code():
    proc = _iwarp("train", "--config", "/nonexistent-iwarp.yaml", IWARP_DEBUG="1")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: config file")


def test_error_classes_keep_their_builtin_bases():
    """Callers that catch ValueError / RuntimeError still catch the re-based errors."""
    from iwarp.config import ConfigError
    from iwarp.data.s3 import S3CredentialsError, S3Error, S3Unreachable
    from iwarp.errors import InputError, ServiceUnavailable, exit_code
    from pipelines.services import ServiceError
    from serving.client import ServeError

    assert issubclass(ConfigError, ValueError) and exit_code(ConfigError("x")) == 2
    assert issubclass(ServiceError, RuntimeError) and issubclass(ServiceError, ServiceUnavailable)
    assert issubclass(S3Unreachable, S3Error) and exit_code(S3Unreachable("x")) == 3
    assert issubclass(S3CredentialsError, InputError) and exit_code(S3CredentialsError("x")) == 2
    assert [exit_code(ServeError(s, "m")) for s in (0, 415, 503, 500)] == [3, 2, 3, 1]
    assert exit_code(ConnectionRefusedError()) == 3 and exit_code(FileNotFoundError()) == 2
    assert exit_code(TypeError("a bug")) is None  # keeps its traceback
