"""Policy over everything k8s/ and `iwarp deploy kserve` put on a cluster: every container is
non-root, bounded (requests and limits, GPU requests == limits), read-only root filesystem,
no privilege escalation, no capabilities; and no secret value is in the repository (secrets
come from secretGenerators fed by git-ignored files; only `*.example` files are committed).

Offline: manifests are built with `kubectl kustomize`, nothing is applied to a cluster.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from deploy import k8s_validate as kv
from deploy import kserve
from tests.helpers.k8s import K8S, PARAMS, ROOT, ensure_k8s_deps, with_example_secrets

# Containers whose image cannot run with a read-only root filesystem: none today. Add
# "Kind/name/container" with a comment saying why if an image ever needs it.
WRITABLE_ROOT_ALLOWED: set[str] = set()


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> list[dict]:
    ensure_k8s_deps()
    root = with_example_secrets(tmp_path_factory.mktemp("k8s"))
    objs = []
    for name in ("overlays/dev", "overlays/prod", "training", "serving"):
        objs += kv.kustomize_build(root / name)
    # What `iwarp deploy kserve` renders, CPU-only and GPU forms.
    objs.append(kserve.render_inference_service("s3://b/iwarp/1", canary_percent=10))
    objs.append(kserve.render_inference_service("s3://b/iwarp/1", kserve.KServeSettings(gpus=0)))
    return objs


def workloads(objs):
    """(label, pod-level securityContext, containers) for every pod template we define."""
    out = []
    for o in objs:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            pod = o["spec"]["template"]["spec"]
            out.append(
                (f"{kind}/{name}", pod.get("securityContext", {}), pod["containers"] + pod.get("initContainers", []))
            )
        elif kind == "TrainJob":
            # Resources come from spec.trainer (applied to the "node" container by Trainer).
            job = o["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
            pod = job["template"]["spec"]["template"]["spec"]
            containers = [dict(c, resources=o["spec"]["trainer"]["resourcesPerNode"]) for c in pod["containers"]]
            out.append((f"{kind}/{name}", pod.get("securityContext", {}), containers))
        elif kind == "ServingRuntime":
            out.append((f"{kind}/{name}", {}, o["spec"]["containers"]))
        elif kind == "InferenceService":
            predictor = o["spec"]["predictor"]
            out.append(
                (
                    f"{kind}/{name}",
                    predictor.get("securityContext", {}),
                    [dict(predictor["model"], name="kserve-container")],
                )
            )
    return out


def test_policy_covers_every_workload(objects):
    labels = {w[0] for w in workloads(objects)}
    assert {
        "Deployment/iwarp-mlflow",
        "StatefulSet/iwarp-postgres",
        "TrainJob/iwarp-train",
        "ServingRuntime/iwarp-torchserve",
        "InferenceService/iwarp",
    } <= labels


def test_every_container_is_non_root_and_locked_down(objects):
    runtime = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServingRuntime"}
    problems = []
    for label, pod_sc, containers in workloads(objects):
        for c in containers:
            sc = c.get("securityContext", {})
            if label.startswith("InferenceService/"):
                # The predictor container is merged with its runtime's container by KServe.
                sc = {**runtime[PARAMS["serving"]["runtime"]]["spec"]["containers"][0]["securityContext"], **sc}
            where = f"{label}/{c['name']}"
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if non_root is not True or user in (None, 0):
                problems.append(f"{where}: must set runAsNonRoot: true and a non-zero runAsUser")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: must drop ALL capabilities")
            if sc.get("readOnlyRootFilesystem") is not True and where not in WRITABLE_ROOT_ALLOWED:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile RuntimeDefault required")
    assert problems == []


def test_every_container_has_requests_and_limits_and_gpus_are_whole(objects):
    problems = []
    gpu_workloads = 0
    for label, _, containers in workloads(objects):
        for c in containers:
            where = f"{label}/{c['name']}"
            res = c.get("resources", {})
            req, lim = res.get("requests", {}), res.get("limits", {})
            for key in ("cpu", "memory"):
                if key not in req or key not in lim:
                    problems.append(f"{where}: {key} request and limit required")
            gpu_keys = {k for k in {**req, **lim} if k.startswith("nvidia.com/")}
            for key in gpu_keys:
                gpu_workloads += 1
                if str(req.get(key)) != str(lim.get(key)):
                    problems.append(f"{where}: {key} requests {req.get(key)} != limits {lim.get(key)}")
    assert problems == []
    assert gpu_workloads >= 2  # TrainJob and GPU InferenceService
    # Containers the controllers inject (KFP, KServe storage initializer, queue-proxy) get defaults.
    limit_ranges = [o for o in objects if o["kind"] == "LimitRange"]
    assert limit_ranges and all(
        {"cpu", "memory"} <= set(lim["default"]) and {"cpu", "memory"} <= set(lim["defaultRequest"])
        for lr in limit_ranges
        for lim in lr["spec"]["limits"]
    )


def git_files(*args: str) -> list[str]:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines() if line]


def test_only_secret_examples_are_committed_and_real_files_are_ignored():
    tracked = git_files("ls-files", "k8s")
    secret_files = [f for f in tracked if "/secrets/" in f]
    assert secret_files and all(f.endswith(".example") for f in secret_files), secret_files
    assert not [f for f in tracked if f.endswith((".env", ".pem", ".key"))]
    for example in secret_files:
        real = example[: -len(".example")]
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", real], check=False)
        assert ignored.returncode == 0, f"{real} would not be ignored by git"
    # No Secret object is written by hand: all come from secretGenerators.
    for path in (ROOT / f for f in tracked if f.endswith((".yaml", ".yml"))):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path


def test_examples_hold_placeholders_and_define_every_referenced_key(objects):
    for example in K8S.glob("overlays/*/secrets/*.example"):
        for line in example.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                assert "CHANGE_ME" in value or key in ("POSTGRES_USER", "POSTGRES_DB"), (
                    f"{example}: {key} holds a value"
                )
    # Every non-optional secretKeyRef resolves to a key the overlay's example file defines.
    for overlay in ("dev", "prod"):
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        provided = {}
        for gen in kustomization["secretGenerator"]:
            keys = set()
            for env in gen["envs"]:
                text = (K8S / "overlays" / overlay / (env + ".example")).read_text()
                keys |= {
                    line.split("=", 1)[0]
                    for line in text.splitlines()
                    if "=" in line and not line.lstrip().startswith("#")
                }
            provided[gen["name"]] = keys
        refs = re.findall(r"\{'key': '([^']+)', 'name': '([^']+)'\}", repr(objects))
        assert refs
        for key, name in refs:
            assert key in provided.get(name, set()), f"{overlay}: secret {name} has no key {key}"


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}
# Placeholders that AWS publishes in its own documentation: not credentials.
PUBLIC_EXAMPLES = {"AKIAIOSFODNN7EXAMPLE"}
# Only in what this area owns: other areas' docs may show local throwaway URIs.
URI_CREDENTIAL = re.compile(r"://[^/\s:@'\"]+:(?!CHANGE_ME@)[^@\s/'\"]{6,}@")
K8S_OWNED = ("k8s/", "docs/cluster.md", "deploy/kserve.py", "deploy/cli.py")


def test_no_secret_value_anywhere_in_the_repository():
    problems = []
    for rel in git_files("ls-files"):
        path = ROOT / rel
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        patterns = dict(SECRET_PATTERNS)
        if rel.startswith(K8S_OWNED):
            patterns["credential in a URI"] = URI_CREDENTIAL
        for what, pattern in patterns.items():
            for match in pattern.finditer(text):
                if match.group(0) in PUBLIC_EXAMPLES:
                    continue
                problems.append(f"{rel}: {what}: {match.group(0)[:12]}...")
    assert problems == []
    # The scanners catch what they claim to (built at run time so this file does not match).
    assert URI_CREDENTIAL.search("postgresql://mlflow:" + "s3cr3tpass@db:5432/mlflow")
    assert not URI_CREDENTIAL.search("postgresql://mlflow:CHANGE_ME@db:5432/mlflow")
    assert SECRET_PATTERNS["AWS access key id"].search("AKIA" + "ABCDEFGHIJKLMNOP")


def test_kubectl_is_available_for_ci():
    ensure_k8s_deps()
    out = subprocess.run(
        [kv.kubectl_binary(), "version", "--client"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"Kustomize Version: v5\.", out), out
    assert shutil.which("kubectl")
