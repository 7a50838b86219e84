"""k8s/: every kustomization builds with `kubectl kustomize`, and every object validates offline
and strictly, built-in kinds against Kubernetes 1.32 and the newest schema kubernetes-validate
ships, custom resources (TrainJob, ServingRuntime, InferenceService) against the Trainer and
KServe SDKs' generated schemas. Deliberately broken copies must fail.

No cluster is involved: nothing is applied; `kubectl kustomize` runs offline.
"""

from __future__ import annotations

import argparse
import copy
import shutil

import pytest
import yaml

from deploy import k8s_validate as kv
from tests.helpers.k8s import K8S, PARAMS, ensure_k8s_deps, with_example_secrets

LATEST = kv.latest_k8s_version()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, list[dict]]:
    ensure_k8s_deps()
    root = with_example_secrets(tmp_path_factory.mktemp("k8s"))
    return {
        name: kv.kustomize_build(root / name)
        for name in ("overlays/dev", "overlays/prod", "training", "serving", "base")
    }


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind, name=None):
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def test_every_kustomization_builds(built):
    dev, prod = built["overlays/dev"], built["overlays/prod"]
    for objs in (dev, prod):
        kinds = {o["kind"] for o in objs}
        assert {
            "Namespace",
            "Deployment",
            "Service",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "NetworkPolicy",
            "Secret",
            "ConfigMap",
            "PersistentVolumeClaim",
            "LimitRange",
            "ServingRuntime",
        } <= kinds
        assert all(
            o["metadata"].get("namespace") == PARAMS["namespace"]
            for o in objs
            if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")
        )
    # Dev runs its own PostgreSQL; prod uses an external database.
    assert one(dev, "StatefulSet", "iwarp-postgres")
    assert not by_kind(prod, "StatefulSet")
    assert one(prod, "PodDisruptionBudget") and one(prod, "ResourceQuota")
    assert one(built["training"], "TrainJob")["metadata"]["namespace"] == PARAMS["namespace"]
    assert one(built["serving"], "InferenceService")


@pytest.mark.parametrize("version", [kv.MIN_K8S_VERSION, LATEST])
def test_builtin_kinds_validate_strictly(built, version):
    objs = [o for name in ("overlays/dev", "overlays/prod") for o in built[name] if kv._is_builtin(o["apiVersion"])]
    assert len(objs) > 40
    assert kv.validate_objects(objs, version) == []


def test_custom_resources_validate_against_their_schemas(built):
    crs = [o for objs in built.values() for o in objs if not kv._is_builtin(o["apiVersion"])]
    crs += kv.load_objects((K8S / "serving" / "inferenceservice-canary.yaml").read_text())
    assert {o["kind"] for o in crs} == {"TrainJob", "ServingRuntime", "InferenceService"}
    assert kv.validate_objects(crs) == []


def _trainjob(built):
    return one(built["training"], "TrainJob")


def _node_pod_spec(trainjob):
    job = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    return job["template"]["spec"]["template"]


BROKEN = {
    # (what, object chooser, mutation, expected text in a finding)
    "trainjob unknown field": (
        "training",
        "TrainJob",
        lambda o: o["spec"]["trainer"].__setitem__("gpus", 4),
        "'gpus' was unexpected",
    ),
    "trainjob wrong type": (
        "training",
        "TrainJob",
        lambda o: o["spec"]["trainer"].__setitem__("numNodes", "2"),
        "is not of type 'integer'",
    ),
    "trainjob missing runtimeRef": (
        "training",
        "TrainJob",
        lambda o: o["spec"].pop("runtimeRef"),
        "'runtimeRef' is a required property",
    ),
    "trainjob typo in nested k8s type": (
        "training",
        "TrainJob",
        lambda o: _node_pod_spec(o)["spec"]["containers"][0]["volumeMounts"][0].__setitem__("readonly", True),
        "'readonly' was unexpected",
    ),
    "trainjob bad quantity": (
        "training",
        "TrainJob",
        lambda o: o["spec"]["trainer"]["resourcesPerNode"]["limits"].__setitem__("nvidia.com/gpu", [4]),
        "is not valid under any of the given schemas",
    ),
    "isvc unknown field": (
        "serving",
        "InferenceService",
        lambda o: o["spec"]["predictor"].__setitem__("canaryPercent", 10),
        "'canaryPercent' was unexpected",
    ),
    "isvc wrong type": (
        "serving",
        "InferenceService",
        lambda o: o["spec"]["predictor"].__setitem__("canaryTrafficPercent", "10"),
        "is not of type 'integer'",
    ),
    "isvc typo in model": (
        "serving",
        "InferenceService",
        lambda o: o["spec"]["predictor"]["model"].__setitem__("storageURI", "s3://x/y"),
        "'storageURI' was unexpected",
    ),
    "isvc missing predictor": (
        "serving",
        "InferenceService",
        lambda o: o["spec"].pop("predictor"),
        "'predictor' is a required property",
    ),
    "isvc wrong apiVersion": (
        "serving",
        "InferenceService",
        lambda o: o.__setitem__("apiVersion", "serving.kserve.io/v1alpha1"),
        "no schema known",
    ),
    "servingruntime unknown field": (
        "overlays/prod",
        "ServingRuntime",
        lambda o: o["spec"]["supportedModelFormats"][0].__setitem__("autoselect", True),
        "'autoselect' was unexpected",
    ),
    "servingruntime probe without port": (
        "overlays/prod",
        "ServingRuntime",
        lambda o: o["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port"),
        "'port' is a required property",
    ),
    "deployment unknown field": (
        "overlays/prod",
        "Deployment",
        lambda o: o["spec"]["template"]["spec"]["containers"][0].__setitem__("imagePullPolicyy", "Always"),
        "imagePullPolicyy",
    ),
    "deployment wrong type": (
        "overlays/prod",
        "Deployment",
        lambda o: o["spec"].__setitem__("replicas", "2"),
        "is not of type",
    ),
    "networkpolicy unknown field": (
        "overlays/dev",
        "NetworkPolicy",
        lambda o: o["spec"].__setitem__("podselector", {}),
        "podselector",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copies_fail(built, case):
    source, kind, mutate, expected = BROKEN[case]
    obj = copy.deepcopy(by_kind(built[source], kind)[0])
    assert kv.validate_object(obj) == [], "the unbroken object must be valid"
    mutate(obj)
    findings = kv.validate_object(obj)
    assert findings, f"{case}: broken copy was accepted"
    assert any(expected in str(f) for f in findings), [str(f) for f in findings]


def test_unknown_custom_kind_is_reported_not_skipped():
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    [finding] = kv.validate_object(obj)
    assert "no schema known" in finding.message


def test_missing_secret_file_fails_the_build(tmp_path):
    """Secrets come only from the git-ignored files: without them nothing builds."""
    ensure_k8s_deps()
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("*.env"))
    with pytest.raises(kv.ManifestError, match=r"s3\.env|mlflow-db\.env"):
        kv.kustomize_build(root / "overlays" / "prod")


def test_mlflow_server_is_postgres_backed_with_s3_artifacts_and_allowed_hosts(built):
    for overlay in ("overlays/dev", "overlays/prod"):
        objs = built[overlay]
        deploy = one(objs, "Deployment", "iwarp-mlflow")
        c = deploy["spec"]["template"]["spec"]["containers"][0]
        args = c["args"]
        assert c["command"] == ["mlflow", "server"]
        assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
        assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
        assert "--allowed-hosts=$(MLFLOW_ALLOWED_HOSTS)" in args
        assert "--serve-artifacts" in args
        assert not any("disable-security-middleware" in a for a in args)
        env = {e["name"]: e for e in c["env"]}
        assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "iwarp-mlflow-db"
        # The $(VAR)s resolve: every one is defined by env or the (hash-suffixed) ConfigMap.
        config_name = c["envFrom"][0]["configMapRef"]["name"]
        config = one(objs, "ConfigMap", config_name)["data"]
        for var in (
            "MLFLOW_ARTIFACTS_DESTINATION",
            "MLFLOW_ALLOWED_HOSTS",
            "MLFLOW_WORKERS",
            "MLFLOW_CORS_ALLOWED_ORIGINS",
        ):
            assert var in config
        assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
        hosts = config["MLFLOW_ALLOWED_HOSTS"].split(",")
        assert "iwarp-mlflow.iwarp.svc.cluster.local:5000" in hosts and "*" not in hosts
        svc = one(objs, "Service", "iwarp-mlflow")
        assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
        assert svc["spec"]["ports"][0]["port"] == PARAMS["mlflow"]["port"]
        assert (
            PARAMS["mlflow"]["trackingUri"]
            == f"http://{svc['metadata']['name']}.{PARAMS['namespace']}.svc.cluster.local:5000"
        )
    # Dev: the URI in the example points at the in-cluster StatefulSet's service.
    example = (K8S / "overlays/dev/secrets/mlflow-db.env.example").read_text()
    assert "@iwarp-postgres:5432/" in example
    pg = one(built["overlays/dev"], "StatefulSet", "iwarp-postgres")
    assert pg["spec"]["serviceName"] == one(built["overlays/dev"], "Service", "iwarp-postgres")["metadata"]["name"]
    assert "sslmode=require" in (K8S / "overlays/prod/secrets/mlflow-db.env.example").read_text()


def test_trainjob_carries_the_shared_parameters(built):
    tj = _trainjob(built)
    t, p = tj["spec"]["trainer"], PARAMS["training"]
    assert tj["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": p["runtimeKind"],
        "name": p["runtime"],
    }
    assert t["image"] == PARAMS["image"]
    assert t["numNodes"] == p["numNodes"] and t["numProcPerNode"] == p["numProcPerNode"]
    res = t["resourcesPerNode"]
    assert res["requests"] == res["limits"]
    assert res["limits"]["nvidia.com/gpu"] == str(p["gpusPerNode"]) and p["numProcPerNode"] == p["gpusPerNode"]
    assert res["limits"]["cpu"] == p["cpuPerNode"] and res["limits"]["memory"] == p["memoryPerNode"]
    assert t["command"][0] == "torchrun"
    env = {e["name"]: e for e in t["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == PARAMS["mlflow"]["trackingUri"]
    for key in PARAMS["secrets"]["s3"]["keys"]:
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": PARAMS["secrets"]["s3"]["name"], "key": key}
    pod = _node_pod_spec(tj)
    assert (
        tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["name"]
        == p["container"]
    )
    assert pod["metadata"]["labels"] == p["podLabel"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == PARAMS["serviceAccounts"]["train"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == PARAMS["data"]["pvc"]
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": p["shmSize"]}
    [container] = spec["containers"]
    assert container["name"] == p["container"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"data": PARAMS["data"]["mountPath"], "dshm": "/dev/shm", "tmp": "/tmp"}
    assert one(built["overlays/prod"], "PersistentVolumeClaim", PARAMS["data"]["pvc"])["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]


def test_kserve_defaults_and_checked_in_manifests_match(built):
    from deploy import kserve

    s, p = kserve.KServeSettings(), PARAMS["serving"]
    assert (s.name, s.namespace, s.runtime, s.service_account, s.model_name, s.mar_name) == (
        p["inferenceService"],
        PARAMS["namespace"],
        p["runtime"],
        PARAMS["serviceAccounts"]["serving"],
        p["modelName"],
        p["marName"],
    )
    assert (s.gpus, s.cpu, s.memory, s.min_replicas, s.max_replicas) == (
        p["gpus"],
        p["cpu"],
        p["memory"],
        p["minReplicas"],
        p["maxReplicas"],
    )
    for path, uri, percent in (
        ("inferenceservice.yaml", "s3://iwarp-models/iwarp/1", None),
        ("inferenceservice-canary.yaml", "s3://iwarp-models/iwarp/2", 10),
    ):
        assert yaml.safe_load((K8S / "serving" / path).read_text()) == kserve.render_inference_service(
            uri, canary_percent=percent
        )
    runtime = one(built["overlays/prod"], "ServingRuntime", p["runtime"])
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "pytorch"
    args = runtime["spec"]["containers"][0]["args"]
    assert (
        "--model-store=/mnt/models/model-store" in args and "--ts-config=/mnt/models/config/config.properties" in args
    )
    sa = one(built["overlays/prod"], "ServiceAccount", s.service_account)
    assert sa["secrets"] == [{"name": PARAMS["secrets"]["s3"]["name"]}]
    secret = one(built["overlays/prod"], "Secret", PARAMS["secrets"]["s3"]["name"])
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]


def test_rbac_is_least_privilege(built):
    objs = built["overlays/prod"]
    role = one(objs, "Role", PARAMS["serviceAccounts"]["pipeline"])
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {
        ("trainer.kubeflow.org", "trainjobs"): {"get", "list", "watch", "create", "delete"},
        ("trainer.kubeflow.org", "trainingruntimes"): {"get"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "events"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("serving.kserve.io", "inferenceservices"): {"get", "list", "watch", "create", "patch"},
    }
    every_rule = [r for o in by_kind(objs, "Role") + by_kind(objs, "ClusterRole") for r in o["rules"]]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"] for r in every_rule)
    assert not any(res in ("secrets", "pods/exec") for r in every_rule for res in r["resources"])
    [cluster_rule] = one(objs, "ClusterRole")["rules"]
    assert cluster_rule == {
        "apiGroups": ["trainer.kubeflow.org"],
        "resources": ["clustertrainingruntimes"],
        "resourceNames": [PARAMS["training"]["runtime"]],
        "verbs": ["get"],
    }
    runner = PARAMS["serviceAccounts"]["kfpRunner"]
    for binding in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding"):
        assert {"kind": "ServiceAccount", "name": runner["name"], "namespace": runner["namespace"]} in binding[
            "subjects"
        ]
    # Only the pipeline's identity may talk to the API server.
    for sa in by_kind(objs, "ServiceAccount"):
        if sa["metadata"]["name"] != PARAMS["serviceAccounts"]["pipeline"]:
            assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "Exists" and expr["key"] not in labels:
            return False
    return True


def test_network_policies_close_ingress_and_open_only_the_needed_paths(built):
    objs = built["overlays/dev"]
    policies = by_kind(objs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]

    def allowed_from(pod_labels):
        return [p for p in policies if p["spec"].get("ingress") and _selects(p["spec"]["podSelector"], pod_labels)]

    mlflow = one(objs, "Deployment", "iwarp-mlflow")["spec"]["template"]["metadata"]["labels"]
    postgres = one(objs, "StatefulSet", "iwarp-postgres")["spec"]["template"]["metadata"]["labels"]
    train = _node_pod_spec(_trainjob(built))["metadata"]["labels"]
    predictor = {"serving.kserve.io/inferenceservice": "iwarp"}  # label KServe puts on predictor pods
    [pg_policy] = allowed_from(postgres)
    assert pg_policy["spec"]["ingress"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert [_selects(src["podSelector"], mlflow) for src in pg_policy["spec"]["ingress"][0]["from"]] == [True]
    [ml_policy] = allowed_from(mlflow)
    assert any(
        "podSelector" in src and _selects(src["podSelector"], train) for src in ml_policy["spec"]["ingress"][0]["from"]
    )
    [peer_policy] = allowed_from(train)
    assert _selects(peer_policy["spec"]["ingress"][0]["from"][0]["podSelector"], train)
    assert allowed_from(predictor)
    assert not allowed_from({"app": "something-else"})


def test_validate_cli(tmp_path, built, capsys):
    from deploy import cli as deploy_cli

    parser = argparse.ArgumentParser(prog="iwarp")
    deploy_cli.register(parser.add_subparsers(dest="command", required=True))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(built["serving"] + built["training"]))
    args = parser.parse_args(["deploy", "validate", str(good)])
    assert args.func(args) == 0
    broken = copy.deepcopy(built["training"][0])
    broken["spec"]["trainer"]["numProcPerNode"] = "four"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken))
    args = parser.parse_args(["deploy", "validate", str(bad), "--k8s-version", "1.33.0"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "numProcPerNode" in out and "'four' is not of type 'integer'" in out
