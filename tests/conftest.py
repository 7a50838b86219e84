"""Session fixtures shared by every tier (pytest loads this file itself; nothing imports it).

Tests live in tiers, one folder each, and each folder's conftest.py marks its tests with the tier
name (`pytest -m unit`, `pytest tests/e2e`): unit, data, model, integration, e2e. Helper
functions are plain modules in tests/helpers/; no test module imports another.

The MLflow server is the project's own launcher (`pipelines.services.MlflowServer`, what
`iwarp pipeline run` starts) and ports come from `serving.server.free_port`, not copies. One
TorchServe (`served`) serves the tiny checkpoint to every test that only calls it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from pipelines.services import MlflowServer
from serving.server import free_port

if TYPE_CHECKING:
    import torch


# The longest modules first: with two xdist workers (scripts/test.sh) the pipeline's runs overlap
# everything else instead of finishing alone at the end.
LONGEST_FIRST = ("tests/e2e/test_pipeline_e2e.py", "tests/integration/test_faults_tracking.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each module and among the rest is kept


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    """Tracking URL of a fresh, real `mlflow server` (SQLite store, served artifacts) for one test."""
    server = MlflowServer(tmp_path / "mlflow-server", port=free_port())
    record, _ = server.ensure(timeout=180.0)
    yield record.url
    server.stop()


@pytest.fixture(scope="session")
def background_mlflow() -> Callable[[Path], object]:
    """`background_mlflow(root)` starts a real MLflow server under `root` on a background thread,
    so a module fixture can package models while it boots (its `wait()` gives the URL; the
    caller stops it)."""
    from tests.helpers.serve import BackgroundMlflow

    return BackgroundMlflow


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
    from tests.helpers.train import make_synth

    return make_synth(tmp_path_factory.mktemp("synth") / "data")


class TinyCheckpoint(NamedTuple):
    model: torch.nn.Module  # eval mode; tests must not change its weights (deepcopy first)
    path: Path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> TinyCheckpoint:
    """The serving tests' model: the tiny ImplicitWarping with seed-0 weights, and its checkpoint
    as training writes it (`tests.helpers.serve.write_checkpoint`)."""
    from tests.helpers.serve import tiny_model, write_checkpoint

    model = tiny_model(seed=0)
    return TinyCheckpoint(model, write_checkpoint(model, tmp_path_factory.mktemp("tiny") / "step-0.ckpt"))


@pytest.fixture(scope="session")
def served(tmp_path_factory, tiny_checkpoint) -> Iterator[tuple]:
    """(ServerHandle, model, ServeConfig): one real TorchServe for the session (token auth on,
    loopback, free ports, `tests.helpers.serve.TEST_OVERRIDES`) serving the tiny checkpoint as
    version 1.0, packaged by the real `iwarp serve package`. Shared by the HTTP tests and the demo's
    browser test: they must not change what it serves (their own servers do that)."""
    from serving.config import load_serve_config
    from serving.package import read_mar
    from serving.server import start_server, stop_server
    from tests.helpers.serve import TEST_OVERRIDES, serve_cli

    tmp = tmp_path_factory.mktemp("serve")
    model, ckpt = tiny_checkpoint
    store = tmp / "model_store"
    sets = [a for o in TEST_OVERRIDES for a in ("--set", o)]
    proc = serve_cli("package", "--checkpoint", str(ckpt), "--version", "1.0", "--out", str(store), *sets)
    assert proc.returncode == 0, proc.stderr
    mar = store / "iwarp.mar"
    assert read_mar(mar)["version"] == "1.0" and read_mar(mar)["export"]["model_kind"] == "implicit"
    # packaging twice without --force is refused instead of silently replacing a served archive
    again = serve_cli("package", "--checkpoint", str(ckpt), "--version", "1.0", "--out", str(store), *sets)
    assert again.returncode != 0 and "--force" in again.stderr

    cfg = load_serve_config(overrides=TEST_OVERRIDES)
    workdir = tmp / "work"
    handle = start_server(store, config=cfg, workdir=workdir, inference_port=0, management_port=0, metrics_port=0)
    try:
        yield handle, model, cfg
    finally:
        assert stop_server(workdir)
        assert not handle.alive() and not (workdir / "key_file.json").exists()
