"""The canary step's cluster target (KServe), end to end through `iwarp deploy kserve`.

No Kubernetes cluster exists here, so three things stand in for it (everything else is the
real code: our step, the deploy CLI, the canary rule, boto3):
- `kubectl`: a small script on PATH keeping one InferenceService in a JSON file and giving
  each new storageUri a revision with its own tagged URL, as Knative does;
- the predictor revisions: HTTP servers answering `POST /predictions/iwarp` like the iwarp
  handler, one returning the driving frames (a perfect model), one returning noise;
- S3: a moto server (a real S3 HTTP API on loopback).
"""

import base64
import io
import json
import os
import sys
import textwrap
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.steps.deploy import CanaryRequest, run_canary_step

FAKE_KUBECTL = textwrap.dedent('''\
    #!{python}
    """Stand-in kubectl for one InferenceService (state in $FAKE_KUBE_STATE)."""
    import json, os, sys
    from deploy.kserve import apply_merge_patch
    state_file = os.environ["FAKE_KUBE_STATE"]
    revisions = json.loads(os.environ["FAKE_REVISION_URLS"])  # URL of the n-th revision created
    args = sys.argv[1:]
    state = json.load(open(state_file)) if os.path.exists(state_file) else {{"isvc": None, "revs": []}}

    def save(isvc):
        pred = isvc["spec"]["predictor"]
        uri = pred["model"]["storageUri"]
        if not state["revs"] or state["revs"][-1]["uri"] != uri:
            state["revs"].append({{"uri": uri, "url": revisions[len(state["revs"])]}})
        pct = pred.get("canaryTrafficPercent")
        latest = state["revs"][-1]
        traffic = [{{"tag": "latest", "url": latest["url"], "percent": 100 if pct is None else pct,
                     "latestRevision": True}}]
        if pct is not None and len(state["revs"]) > 1:
            traffic.append({{"tag": "prev", "url": state["revs"][-2]["url"], "percent": 100 - pct,
                            "latestRevision": False}})
        isvc["status"] = {{"url": "http://iwarp.iwarp.example.com",
                           "components": {{"predictor": {{"traffic": traffic}}}}}}
        state["isvc"] = isvc
        json.dump(state, open(state_file, "w"))

    if args[0] == "version":
        print(json.dumps({{"serverVersion": {{"gitVersion": "v1.32.0"}}}}))
    elif args[0] == "get":
        if state["isvc"] is None:
            sys.stderr.write('Error from server (NotFound): inferenceservices "iwarp" not found\\n'); sys.exit(1)
        print(json.dumps(state["isvc"]))
    elif args[0] == "apply":
        save(json.loads(sys.stdin.read()))
    elif args[0] == "patch":
        save(apply_merge_patch(state["isvc"], json.loads(args[args.index("-p") + 1])))
    elif args[0] == "wait":
        pass
    else:
        sys.stderr.write(f"unexpected kubectl {{args}}\\n"); sys.exit(2)
''')


def predictor(mode: str) -> ThreadingHTTPServer:
    """A revision: 'good' reconstructs the driving frames exactly, 'bad' answers noise."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            assert self.path == "/predictions/iwarp", self.path
            assert "Authorization" not in self.headers or self.headers["Authorization"] in ("", "Bearer ")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            frames = []
            for b64 in body["driving"]:
                img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
                if mode == "bad":
                    img = np.random.default_rng(0).integers(0, 255, img.shape, dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                frames.append(base64.b64encode(buf.getvalue()).decode())
            data = json.dumps({"frames": frames}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def mar(path: Path, version: str) -> str:
    with zipfile.ZipFile(path, "w") as zf:  # what upload_model_layout checks: the model name inside
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "iwarp", "modelVersion": version}}))
    return str(path)


@pytest.fixture
def cluster(tmp_path, monkeypatch, moto_endpoint):
    servers = [predictor(m) for m in ("good", "good", "bad")]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text(FAKE_KUBECTL.format(python=sys.executable))
    (bindir / "kubectl").chmod(0o755)
    root = Path(__file__).resolve().parents[2]
    for key, value in {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "FAKE_KUBE_STATE": str(tmp_path / "kube.json"),
        "FAKE_REVISION_URLS": json.dumps([f"http://127.0.0.1:{s.server_address[1]}" for s in servers]),
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="models")
    yield tmp_path
    for s in servers:
        s.shutdown()


def test_kserve_canary_first_version_then_promote_then_rollback(cluster, tmp_path):
    import boto3

    from iwarp.data import SynthConfig, make_synth_dataset

    data = tmp_path / "data"
    make_synth_dataset(
        data,
        SynthConfig(num_identities=4, videos_per_identity=1, num_frames=12, image_size=64),
        overwrite=True,
        progress=False,
    )

    def step(version: str) -> tuple[bool, str, str, str]:
        req = CanaryRequest(
            mar=mar(tmp_path / f"v{version}", f"{version}.0"),
            dataset=str(data),
            model_name="iwarp",
            version=version,
            tracking_uri="",
            target="kserve",
            image_size=64,
            namespace="iwarp",
            storage_uri="s3://models/iwarp",
        )
        out = tmp_path / f"verdict-{version}.md"
        promoted, default, endpoint = run_canary_step(req, str(out))
        return promoted, default, endpoint, out.read_text()

    def isvc() -> dict:
        return json.loads((tmp_path / "kube.json").read_text())["isvc"]

    # 1. nothing serves yet: created at 100%, the revision answers every case
    promoted, default, endpoint, verdict = step("1")
    assert promoted and default == "1" and endpoint == "http://iwarp.iwarp.example.com/predictions/iwarp"
    assert "first deployment" in verdict
    assert isvc()["spec"]["predictor"]["model"]["storageUri"] == "s3://models/iwarp/1"
    assert "canaryTrafficPercent" not in isvc()["spec"]["predictor"]
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="models")["Contents"]}
    assert {"iwarp/1/model-store/iwarp.mar", "iwarp/1/config/config.properties"} <= keys

    # 2. an equally good version: canary at 10%, compared on the same cases, promoted to 100%
    promoted, _, _, verdict = step("2")
    assert promoted and "PROMOTED" in verdict and "[pass] quality l1" in verdict
    assert isvc()["spec"]["predictor"]["model"]["storageUri"] == "s3://models/iwarp/2"
    assert "canaryTrafficPercent" not in isvc()["spec"]["predictor"]  # promote_patch dropped it

    # 3. a version answering noise: the canary fails on quality and traffic goes back
    promoted, _, _, verdict = step("3")
    assert not promoted and "ROLLED BACK" in verdict and "[FAIL] quality l1" in verdict
    assert isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0  # rollback_patch
