"""The README's submit command, `kfp --endpoint URL run create -e EXPERIMENT -f
iwarp_pipeline.yaml key=value` (and its deprecated alias `run submit`), run through the real
`kfp` CLI against a stand-in for the Kubeflow Pipelines API server.

There is no Kubeflow Pipelines install here, so a small HTTP server answers the four v2beta1
calls the CLI makes (healthz, experiment lookup/creation, run creation, run read) and records
what it was sent; the assertions are on that request: our compiled spec and the typed
parameter values.
"""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.pipeline import compile_pipeline


class FakeKfpApi(BaseHTTPRequestHandler):
    runs: list[dict] = []
    experiments: dict[str, dict] = {}

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/apis/v2beta1/healthz":
            return self._send({"multi_user": False})
        if path == "/apis/v2beta1/experiments":
            return self._send(
                {"experiments": list(self.experiments.values()), "total_size": len(self.experiments)}
                if "filter" not in self.path
                else {}
            )
        if path.startswith("/apis/v2beta1/runs/"):
            run = next(r for r in self.runs if r["run_id"] == path.rsplit("/", 1)[1])
            return self._send({**run, "state": "PENDING", "created_at": "2026-11-25T00:00:00Z"})
        return self._send({"error": f"unexpected GET {self.path}"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/apis/v2beta1/experiments":
            exp = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[exp["experiment_id"]] = exp
            return self._send(exp)
        if self.path == "/apis/v2beta1/runs":
            run = {**body, "run_id": f"run-{len(self.runs) + 1}"}
            self.runs.append(run)
            return self._send(run)
        return self._send({"error": f"unexpected POST {self.path}"}, 404)


@pytest.fixture
def kfp_api():
    FakeKfpApi.runs, FakeKfpApi.experiments = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeKfpApi
    server.shutdown()


def kfp_cli(*args: str) -> subprocess.CompletedProcess:
    kfp = Path(sys.executable).with_name("kfp")
    cmd = [str(kfp)] if kfp.exists() else [sys.executable, "-m", "kfp.cli.__main__"]
    env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("verb", ["create", "submit"])
def test_kfp_run_create_sends_our_spec_and_typed_parameters(tmp_path, kfp_api, verb):
    url, api = kfp_api
    package = compile_pipeline(tmp_path / "iwarp_pipeline.yaml")
    proc = kfp_cli(
        "--endpoint",
        url,
        "run",
        verb,
        "-e",
        "iwarp-ablation",
        "-f",
        str(package),
        "data_source=videos",
        "raw_data=s3://team-bucket/raw/talking-heads",
        "tracking_uri=http://iwarp-mlflow.iwarp:5000",
        "dvc_remote=s3://team-bucket/dvc",
        "num_nodes=2",
        "gpus_per_node=4",
        "nproc_per_node=4",
        "eval_sources=[1, 2, 4, 8]",
        "select_margin=0.05",
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (run,) = api.runs
    assert run["display_name"] == "iwarp-ablation"
    assert run["experiment_id"] == "exp-1" and api.experiments["exp-1"]["display_name"] == "iwarp-ablation"
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "iwarp-pipeline"
    # the platform spec (GPU placement, secrets) travels with the run
    executors = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-evaluate-model"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert any(s["secretName"] == "iwarp-s3" for s in executors["exec-train-model"]["secretAsEnv"])
    params = run["runtime_config"]["parameters"]
    assert params["raw_data"] == "s3://team-bucket/raw/talking-heads"
    assert params["num_nodes"] == 2 and params["gpus_per_node"] == 4  # numbers stay numbers
    assert params["eval_sources"] == [1, 2, 4, 8]
    assert params["select_margin"] == 0.05
    assert "run-1" in proc.stdout
