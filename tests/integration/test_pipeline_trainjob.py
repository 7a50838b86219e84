"""The train step's cluster back end (Kubeflow Trainer TrainJob through the Kubeflow SDK).

No cluster exists here, so the Kubernetes API under the real Kubeflow SDK is mocked: a fake
CustomObjectsApi serves the torch-distributed ClusterTrainingRuntime, records the TrainJob
the SDK creates, "runs" it by writing a checkpoint to the shared volume, and reports it
Complete (or Failed). Everything above the HTTP layer (the SDK's TrainJob construction, its
polling, our component code) is real, and the created TrainJob is validated against the
Trainer CRD schema the way an API server would.
"""

import copy
import dataclasses
import datetime
import json
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from components.ablation import ABLATIONS
from components.steps.train_request import TrainRequest
from components.steps.trainjob import build_trainjob, job_name, stage_dataset, train_on_cluster
from iwarp.checkpoint import load_checkpoint, save_checkpoint

RUNTIME = {  # the shape Kubeflow Trainer installs (trimmed to what the SDK reads)
    "apiVersion": "trainer.kubeflow.org/v1alpha1",
    "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {
        "mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
        "template": {
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "node",
                        "template": {
                            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                            "spec": {
                                "template": {
                                    "spec": {
                                        "containers": [
                                            {
                                                "name": "node",
                                                "image": "pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime",
                                                "command": ["torchrun", "/workspace/train.py"],
                                            }
                                        ]
                                    }
                                }
                            },
                        },
                    }
                ]
            }
        },
    },
}


class Reply:
    """What `async_req=True` calls return: `.get(timeout)` gives the value or raises."""

    def __init__(self, value):
        self.value = value

    def get(self, timeout=None):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value

    def to_dict(self):
        return self.value


class FakeCluster:
    """CustomObjectsApi + CoreV1Api stand-ins sharing one in-memory cluster."""

    def __init__(self, outcome: str = "Complete"):
        self.outcome = outcome
        self.created: list[dict] = []

    def __call__(self, *_args, **_kwargs):  # used as both API classes' constructor
        return self

    # CustomObjectsApi
    def get_namespaced_custom_object(self, group, version, namespace, plural, name, async_req=False):
        if plural == "trainingruntimes":
            return Reply(ApiException(status=404, reason="Not Found"))
        assert plural == "trainjobs"
        job = copy.deepcopy(next(j for j in self.created if j["metadata"]["name"] == name))
        job["metadata"].update(namespace=namespace, creationTimestamp=datetime.datetime.now(datetime.UTC).isoformat())
        job["status"] = {
            "conditions": [
                {
                    "type": self.outcome,
                    "status": "True",
                    "reason": "Test",
                    "message": "",
                    "lastTransitionTime": job["metadata"]["creationTimestamp"],
                }
            ]
        }
        return Reply(job)

    def get_cluster_custom_object(self, group, version, plural, name, async_req=False):
        assert (plural, name) == ("clustertrainingruntimes", "torch-distributed")
        return Reply(copy.deepcopy(RUNTIME))

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "iwarp", "trainjobs")
        self.created.append(body)
        if self.outcome == "Complete":  # the job's rank 0 writes its final checkpoint
            args = body["spec"]["trainer"]["args"]
            out_dir = next(a.split("=", 1)[1] for a in args if a.startswith("out_dir="))
            save_checkpoint(
                {"model_kind": "implicit", "tracking_run_id": "run-from-trainjob", "step": 3},
                f"{out_dir}/checkpoints/final.ckpt",
            )
        return body

    # CoreV1Api
    def read_namespaced_config_map(self, name, namespace):
        return kubernetes.client.V1ConfigMap(data={"kubeflow_trainer_version": "v2.1.0"})

    def list_namespaced_pod(self, namespace, label_selector, async_req=False):
        return Reply(Reply({"items": []}))


@pytest.fixture
def cluster(monkeypatch):
    fake = FakeCluster()
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", fake)
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", fake)
    return fake


def trainer_client():
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient

    return TrainerClient(
        KubernetesBackendConfig(namespace="iwarp", client_configuration=kubernetes.client.Configuration())
    )


def request(tmp_path, variant: dict, gpus: int = 4) -> TrainRequest:
    dataset = tmp_path / "artifact" / "dataset"
    (dataset / "train").mkdir(parents=True)
    (dataset / "manifest.csv").write_text("id,identity,split\nv0,a,train\n")
    return TrainRequest(
        dataset=str(dataset),
        ablation=variant,
        config="configs/paper-256.yaml",
        overrides=["optim.lr_generator=1e-4"],
        seed=7,
        steps=5000,
        tracking_uri="http://iwarp-mlflow.iwarp.svc:5000",
        experiment="iwarp",
        parent_run_id="parent",
        backend="trainjob",
        nproc_per_node=gpus,
        num_nodes=2,
        gpus_per_node=gpus,
        image="registry.example/iwarp:0.1.0",
        shared_dir=str(tmp_path / "shared"),
        data_version="abc123",
    )


def test_submits_a_valid_trainjob_and_returns_its_checkpoint(tmp_path, cluster):
    from deploy.k8s_validate import validate_object

    detector = tmp_path / "artifact" / "pretrain-keypoints" / "checkpoint"  # a KFP artifact, local to the step
    detector.parent.mkdir(parents=True)
    detector.write_bytes(b"keypoint stage checkpoint")
    req = dataclasses.replace(request(tmp_path, ABLATIONS[2]), keypoints_from=str(detector))  # no-extra-kv
    final = train_on_cluster(req, tmp_path / "work", client=trainer_client(), poll_s=1, timeout_s=10)
    assert load_checkpoint(final)["tracking_run_id"] == "run-from-trainjob"

    (job,) = cluster.created
    assert validate_object(job) == [], "the TrainJob must pass the Trainer CRD schema strictly"
    spec = job["spec"]
    assert spec["runtimeRef"]["name"] == "torch-distributed"
    assert spec["runtimeRef"]["kind"] == "ClusterTrainingRuntime"
    trainer = spec["trainer"]
    assert trainer["image"] == "registry.example/iwarp:0.1.0"
    assert trainer["numNodes"] == 2
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}
    assert trainer["resourcesPerNode"]["requests"] == trainer["resourcesPerNode"]["limits"]
    assert trainer["command"] == ["torchrun", "--nproc-per-node=4", "-m", "iwarp", "train"]
    args = trainer["args"]
    data_root = tmp_path / "shared" / "datasets" / "abc123"
    # identical data, seed and budget for every variant; only the two switches differ
    for expected in (
        f"data.root={data_root}",
        "seed=7",
        "optim.steps=5000",
        "optim.lr_generator=1e-4",
        "model.implicit.residual=true",
        "model.implicit.extra_kv=false",
        "run_name=no-extra-kv",
    ):
        assert expected in args
    assert args[args.index("--tracking-uri") + 1] == "http://iwarp-mlflow.iwarp.svc:5000"
    assert (data_root / ".complete").is_file() and (data_root / "manifest.csv").is_file()
    # the pods load the keypoint stage's detector from the shared volume, not the step's artifact path
    (staged,) = [a.split("=", 1)[1] for a in args if a.startswith("model.implicit.keypoints_from=")]
    assert Path(staged).parent == tmp_path / "shared" / "keypoints"
    assert Path(staged).read_bytes() == detector.read_bytes()

    replicated = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = replicated["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == {"iwarp.dev/role": "train"}
    assert pod["spec"]["serviceAccountName"] == "iwarp-train"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "iwarp-data"}} in pod["spec"]["volumes"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "iwarp-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert all("value" not in e for e in env.values()), "credentials only by reference"
    assert job["metadata"]["labels"]["iwarp.dev/variant"] == "no-extra-kv"


def test_failed_trainjob_fails_the_step(tmp_path, cluster):
    cluster.outcome = "Failed"
    with pytest.raises(RuntimeError, match="did not complete.*Failed"):
        train_on_cluster(
            request(tmp_path, ABLATIONS[0]), tmp_path / "work", client=trainer_client(), poll_s=1, timeout_s=10
        )


def test_cpu_trainjob_requests_no_gpu_and_variants_share_one_dataset_copy(tmp_path):
    reqs = [request(tmp_path / a["variant"], a, gpus=0) for a in ABLATIONS]
    shared = tmp_path / "shared"
    roots = {stage_dataset(r.dataset, shared, "v1") for r in reqs}
    assert roots == {shared / "datasets" / "v1"}
    assert sorted(p.name for p in (shared / "datasets").iterdir()) == ["v1"]  # no temp copies left
    trainer, options = build_trainjob(reqs[1], "/data/datasets/v1", "/data/runs/x", "x", "configs/tiny.yaml")
    assert "gpu" not in trainer.resources_per_node
    names = {job_name(a["variant"]) for a in ABLATIONS for _ in range(3)}
    assert len(names) == 12 and all(len(n) <= 63 and n.startswith("iwarp-") for n in names)
    assert json.dumps([type(o).__name__ for o in options]) == json.dumps(
        ["Name", "Labels", "TrainerCommand", "TrainerArgs", "RuntimePatch"]
    )
