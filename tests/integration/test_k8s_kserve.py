"""KServe path: InferenceService rendering and canary patches (validated against KServe's schema),
the S3 model layout uploaded with boto3 to a real S3-compatible HTTP server (moto), and
`iwarp deploy kserve` driving canaryTrafficPercent from `serving.canary.decide`.

The Kubernetes cluster is mocked: a fake `kubectl` on PATH keeps the InferenceService in a JSON
file and applies merge patches to it the way the API server would; no real cluster is contacted.
Everything else (S3 over HTTP, the model archive, the canary decision) is real.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest
import yaml

from deploy import cli as deploy_cli
from deploy import k8s_validate as kv
from deploy import kserve
from iwarp.errors import run_command
from serving.canary import CanaryThresholds, VersionStats, decide
from tests.helpers.k8s import ensure_k8s_deps

URI1, URI2 = "s3://iwarp-models/iwarp/1", "s3://iwarp-models/iwarp/2"


@pytest.fixture(scope="module", autouse=True)
def _deps():
    ensure_k8s_deps()


# --------------------------------------------------------------------------- rendering and patches


def test_rendered_service_and_every_rollout_step_validate():
    base = kserve.render_inference_service(URI1)
    assert kv.validate_object(base) == []
    predictor = base["spec"]["predictor"]
    assert base["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert predictor["model"]["modelFormat"]["name"] == "pytorch"
    assert predictor["model"]["storageUri"] == URI1 and "canaryTrafficPercent" not in predictor
    assert predictor["model"]["resources"]["requests"] == predictor["model"]["resources"]["limits"]

    canary = kserve.apply_merge_patch(base, kserve.canary_patch(URI2, 10))
    assert kv.validate_object(canary) == []
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert canary["spec"]["predictor"]["model"]["storageUri"] == URI2
    # Only the two fields change: resources, runtime, format stay as they were.
    assert {**canary["spec"]["predictor"]["model"], "storageUri": URI1} == predictor["model"]
    assert canary == kserve.render_inference_service(URI2, canary_percent=10)

    half = kserve.apply_merge_patch(canary, kserve.traffic_patch(50))
    assert half["spec"]["predictor"]["canaryTrafficPercent"] == 50 and kv.validate_object(half) == []
    promoted = kserve.apply_merge_patch(canary, kserve.promote_patch())
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"] and kv.validate_object(promoted) == []
    assert kserve.traffic_patch(100) == kserve.promote_patch()
    rolled_back = kserve.apply_merge_patch(canary, kserve.rollback_patch())
    assert rolled_back["spec"]["predictor"]["canaryTrafficPercent"] == 0 and kv.validate_object(rolled_back) == []

    cpu_only = kserve.render_inference_service(URI1, kserve.KServeSettings(gpus=0))
    assert "nvidia.com/gpu" not in cpu_only["spec"]["predictor"]["model"]["resources"]["limits"]
    assert "tolerations" not in cpu_only["spec"]["predictor"] and kv.validate_object(cpu_only) == []


def test_merge_patch_follows_rfc7386():
    # Examples from RFC 7386, appendix A.
    assert kserve.apply_merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert kserve.apply_merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert kserve.apply_merge_patch({"a": "b"}, {"a": None}) == {}
    assert kserve.apply_merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert kserve.apply_merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert kserve.apply_merge_patch(["a", "b"], {"a": "b"}) == {"a": "b"}
    assert kserve.apply_merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    original = {"a": {"b": 1}}
    kserve.apply_merge_patch(original, {"a": {"b": 2}})
    assert original == {"a": {"b": 1}}, "the target must not be modified"


@pytest.mark.parametrize("bad", [-1, 101, 10.5, "10", True])
def test_bad_percent_is_refused(bad):
    with pytest.raises(ValueError, match="0..100"):
        kserve.canary_patch(URI2, bad)


@pytest.mark.parametrize("bad", ["gs://b/x", "s3:///nobucket", "/local/path", "https://b.s3.amazonaws.com/x"])
def test_non_s3_storage_uri_is_refused(bad):
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        kserve.render_inference_service(bad)


def test_cluster_torchserve_config():
    text = kserve.render_config_properties(kserve.KServeSettings(gpus=2))
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert props["inference_address"] == "http://0.0.0.0:8080"  # the ServingRuntime's containerPort
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["enable_model_api"] == "false"
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["load_models"] == "iwarp=iwarp.mar"
    assert props["number_of_gpu"] == "2" and props["metrics_mode"] == "prometheus"


# --------------------------------------------------------------------------- S3 layout (moto over HTTP)


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    bucket = f"models-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def make_mar(tmp_path: Path, name: str = "iwarp", version: str = "2.0") -> Path:
    """A real model archive, built by torch-model-archiver."""
    handler = tmp_path / "handler.py"
    handler.write_text("def handle(data, context):\n    return data\n")
    out = tmp_path / f"mar-{name}-{version}"
    out.mkdir()
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    subprocess.run(
        [
            str(archiver),
            "--model-name",
            name,
            "--version",
            version,
            "--handler",
            str(handler),
            "--export-path",
            str(out),
        ],
        check=True,
    )
    return out / f"{name}.mar"


def test_upload_writes_the_kserve_layout(tmp_path, s3):
    client, bucket = s3
    mar = make_mar(tmp_path)
    uris = kserve.upload_model_layout(mar, f"s3://{bucket}/iwarp/2", s3_client=client)
    assert uris == [f"s3://{bucket}/iwarp/2/model-store/iwarp.mar", f"s3://{bucket}/iwarp/2/config/config.properties"]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["iwarp/2/config/config.properties", "iwarp/2/model-store/iwarp.mar"]
    body = client.get_object(Bucket=bucket, Key="iwarp/2/model-store/iwarp.mar")["Body"].read()
    assert body == mar.read_bytes()
    config = client.get_object(Bucket=bucket, Key="iwarp/2/config/config.properties")["Body"].read().decode()
    assert config == kserve.render_config_properties()
    with zipfile.ZipFile(mar) as zf:
        assert json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "2.0"

    with pytest.raises(FileExistsError, match="new prefix"):
        kserve.upload_model_layout(mar, f"s3://{bucket}/iwarp/2", s3_client=client)


def test_upload_refuses_wrong_archives(tmp_path, s3):
    client, bucket = s3
    with pytest.raises(ValueError, match="serves 'iwarp'"):
        kserve.upload_model_layout(make_mar(tmp_path, name="other"), f"s3://{bucket}/x/1", s3_client=client)
    junk = tmp_path / "junk.mar"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchServe model archive"):
        kserve.upload_model_layout(junk, f"s3://{bucket}/x/2", s3_client=client)
    with pytest.raises(FileNotFoundError):
        kserve.upload_model_layout(tmp_path / "missing.mar", f"s3://{bucket}/x/3", s3_client=client)
    assert "Contents" not in client.list_objects_v2(Bucket=bucket), "nothing may be uploaded on refusal"


# --------------------------------------------------------------------------- iwarp deploy kserve (mock cluster)

FAKE_KUBECTL = r'''#!{python}
"""Mock of a cluster with one API resource, for tests: state in $FAKE_KUBE_STATE."""
import json, os, sys
args = sys.argv[1:]
if args[:1] == ["--context"]:
    args = args[2:]
state_path = os.environ["FAKE_KUBE_STATE"]
with open(os.environ["FAKE_KUBE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
def load():
    return json.load(open(state_path)) if os.path.exists(state_path) else None
def merge(target, patch):
    if not isinstance(patch, dict):
        return patch
    target = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge(target.get(k), v)
    return target
verb = args[0]
if verb == "version":
    if os.environ.get("FAKE_KUBE_DOWN"):
        sys.exit("Unable to connect to the server: dial tcp 10.0.0.1:6443: i/o timeout")
    print(json.dumps({"clientVersion": {}, "serverVersion": {"gitVersion": "v1.32.0"}}))
elif verb == "get":
    obj = load()
    if obj is None:
        sys.exit('Error from server (NotFound): inferenceservices.serving.kserve.io "%s" not found' % args[2])
    print(json.dumps(obj))
elif verb == "apply":
    obj = json.load(sys.stdin)
    obj["status"] = {"components": {"predictor": {"latestReadyRevision": "iwarp-predictor-00001",
                     "traffic": [{"revisionName": "iwarp-predictor-00001", "percent": 100, "latestRevision": True}]}}}
    json.dump(obj, open(state_path, "w"))
    print("inferenceservice.serving.kserve.io/%s created" % obj["metadata"]["name"])
elif verb == "patch":
    obj = load()
    if obj is None:
        sys.exit("Error from server (NotFound)")
    patch = json.loads(args[args.index("-p") + 1])
    assert args[args.index("--type") + 1] == "merge"
    json.dump(merge(obj, patch), open(state_path, "w"))
    print("inferenceservice.serving.kserve.io/%s patched" % args[2])
elif verb == "wait":
    print("condition met")
else:
    sys.exit("fake kubectl: unsupported %r" % args)
'''


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.replace("{python}", sys.executable))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    state, log = tmp_path / "isvc.json", tmp_path / "kubectl.log"
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBE_STATE", str(state))
    monkeypatch.setenv("FAKE_KUBE_LOG", str(log))

    class Cluster:
        def isvc(self):
            return json.loads(state.read_text()) if state.exists() else None

        def calls(self):
            return [json.loads(line) for line in log.read_text().splitlines()]

    return Cluster()


def iwarp(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="iwarp")
    deploy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return run_command(args.func, args)  # as the CLI does: errors become a line and a code


def write_report(path: Path, candidate_l1: float, errors: float = 0.0) -> Path:
    """A canary report as the local canary writes it: CanaryVerdict.to_dict()."""
    base = VersionStats("1.0", n_requests=20, error_rate=0.0, p95_latency_ms=100.0, quality={"l1": 0.100})
    cand = VersionStats("2.0", n_requests=20, error_rate=errors, p95_latency_ms=105.0, quality={"l1": candidate_l1})
    path.write_text(json.dumps(decide(base, cand, CanaryThresholds()).to_dict()))
    return path


def test_rollout_lifecycle_follows_the_canary_verdict(cluster, tmp_path, capsys):
    good = write_report(tmp_path / "good.json", candidate_l1=0.101)
    bad = write_report(tmp_path / "bad.json", candidate_l1=0.150)

    # First version: nothing to split traffic with, so it is created at 100%.
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", URI1) == 0
    live = cluster.isvc()
    assert live["spec"]["predictor"]["model"]["storageUri"] == URI1
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    assert "created it at 100%" in capsys.readouterr().out

    # Second version as a 10% canary: a merge patch of two fields.
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", URI2) == 0
    live = cluster.isvc()
    assert live["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert live["spec"]["predictor"]["model"]["storageUri"] == URI2
    assert cluster.calls()[-2][:2] == ["patch", "inferenceservice"]

    # Promotion is gated by the verdict.
    before = cluster.isvc()
    assert iwarp("deploy", "kserve", "--promote") == 2  # usage: --promote needs --report
    assert "needs --report" in capsys.readouterr().err
    assert iwarp("deploy", "kserve", "--promote", "--report", str(bad)) == 1
    assert "refusing to promote" in capsys.readouterr().err
    assert cluster.isvc() == before, "a refused promotion must not touch the cluster"

    # --advance walks the traffic steps on a passing verdict ...
    assert iwarp("deploy", "kserve", "--advance", "--report", str(good)) == 0
    assert cluster.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 50
    out = capsys.readouterr().out
    assert "CANARY VERDICT: PROMOTE" in out and "10% -> 50%" in out
    # ... and promote with a passing report drops the field (100% to the new revision).
    assert iwarp("deploy", "kserve", "--promote", "--report", str(good), "--wait", "30") == 0
    assert "canaryTrafficPercent" not in cluster.isvc()["spec"]["predictor"]
    wait = ["wait", "--for=condition=Ready", "inferenceservice/iwarp", "-n", "iwarp", "--timeout=30s"]
    assert wait in cluster.calls()
    assert iwarp("deploy", "kserve", "--promote", "--report", str(good)) == 0
    assert "nothing to promote" in capsys.readouterr().out
    assert iwarp("deploy", "kserve", "--advance", "--report", str(good)) == 0
    assert "no canary in progress" in capsys.readouterr().out
    assert "canaryTrafficPercent" not in cluster.isvc()["spec"]["predictor"]

    # Version 3 regresses: advancing on its failing verdict sends all traffic back.
    uri3 = "s3://iwarp-models/iwarp/3"
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", uri3) == 0
    assert iwarp("deploy", "kserve", "--advance", "--report", str(bad)) == 0
    assert cluster.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert "verdict rollback" in capsys.readouterr().out
    # A candidate whose local canary failed is not exposed at all.
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", uri3, "--report", str(bad)) == 1
    assert "says roll back" in capsys.readouterr().err
    # Rollback needs no report.
    assert iwarp("deploy", "kserve", "--rollback") == 0
    assert cluster.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert kv.validate_object({k: v for k, v in cluster.isvc().items() if k != "status"}) == []


def test_thresholds_file_changes_the_decision(cluster, tmp_path, capsys):
    """The report's statistics are re-decided with our thresholds, not taken on its word."""
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", URI1) == 0
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", URI2) == 0
    report = write_report(tmp_path / "r.json", candidate_l1=0.120)  # 20% worse: fails the default 5%
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(yaml.safe_dump({"max_quality_regression": {"l1": 0.5}}))
    assert iwarp("deploy", "kserve", "--promote", "--report", str(report)) == 1
    assert iwarp("deploy", "kserve", "--promote", "--report", str(report), "--thresholds", str(lenient)) == 0
    assert "the current thresholds say promote" in capsys.readouterr().err
    assert "canaryTrafficPercent" not in cluster.isvc()["spec"]["predictor"]


def test_unreachable_cluster_and_bad_reports_fail_clearly(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_KUBE_DOWN", "1")
    assert iwarp("deploy", "kserve", "--rollback") == 3  # an unreachable service
    err = capsys.readouterr().err
    assert "no Kubernetes cluster reachable" in err and "--dry-run" in err
    monkeypatch.delenv("FAKE_KUBE_DOWN")
    assert iwarp("deploy", "kserve", "--rollback") == 1
    assert "no InferenceService iwarp/iwarp" in capsys.readouterr().err
    junk = tmp_path / "junk.json"
    junk.write_text('{"promote": true}')
    assert iwarp("deploy", "kserve", "--promote", "--report", str(junk), "--dry-run") == 2  # bad input
    assert "not a canary report" in capsys.readouterr().err
    assert iwarp("deploy", "kserve", "--canary", "10", "--dry-run") == 2  # usage
    assert "needs --storage-uri" in capsys.readouterr().err


def test_dry_run_writes_manifests_and_contacts_nothing(cluster, tmp_path, capsys):
    out = tmp_path / "out"
    mar = make_mar(tmp_path)
    assert (
        iwarp(
            "deploy",
            "kserve",
            "--canary",
            "25",
            "--storage-uri",
            URI2,
            "--mar",
            str(mar),
            "--dry-run",
            "--out",
            str(out),
        )
        == 0
    )
    assert cluster.calls() == []
    manifest = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert manifest == kserve.render_inference_service(URI2, canary_percent=25)
    assert json.loads((out / "patch.json").read_text()) == kserve.canary_patch(URI2, 25)
    assert (out / "config.properties").read_text() == kserve.render_config_properties()
    assert "would upload" in capsys.readouterr().out
    assert (
        iwarp("deploy", "kserve", "--gpus", "0", "--canary", "5", "--storage-uri", URI2, "--dry-run", "--out", str(out))
        == 0
    )
    cpu = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert "nvidia.com/gpu" not in cpu["spec"]["predictor"]["model"]["resources"]["limits"]


def test_live_canary_uploads_then_patches(cluster, tmp_path, s3):
    client, bucket = s3
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", URI1) == 0
    uri = f"s3://{bucket}/iwarp/2"
    assert iwarp("deploy", "kserve", "--canary", "10", "--storage-uri", uri, "--mar", str(make_mar(tmp_path))) == 0
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["iwarp/2/config/config.properties", "iwarp/2/model-store/iwarp.mar"]
    assert cluster.isvc()["spec"]["predictor"]["model"]["storageUri"] == uri
