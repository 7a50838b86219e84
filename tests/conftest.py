"""Fixtures shared by the test files (pytest loads this file itself; nothing imports it).

The MLflow server is the project's own launcher (`pipelines.services.MlflowServer`, what
`iwarp pipeline run` starts) and ports come from `serving.server.free_port`, not copies.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.services import MlflowServer
from serving.server import free_port


def start_mlflow(root: Path, timeout: float = 180.0) -> tuple[MlflowServer, str]:
    """A real `mlflow server` (SQLite store, served artifacts) under `root` on a free port."""
    server = MlflowServer(root, port=free_port())
    record, _ = server.ensure(timeout=timeout)
    return server, record.url


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    """Tracking URL of a fresh MLflow server for one test."""
    server, url = start_mlflow(tmp_path / "mlflow-server")
    yield url
    server.stop()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    """URL of one real S3 API (a moto server in its own process) for the whole session; tests
    keep apart by bucket name."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start (see {log.name})") from None
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """A small synthetic dataset (train/ + test/) that the training tests only read; a file that
    needs another shape defines its own `data`."""
    from train_utils import make_synth

    return make_synth(tmp_path_factory.mktemp("synth") / "data")
