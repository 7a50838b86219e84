"""The compiled pipeline (KFP IR YAML): parameters, the ablation ParallelFor, images and
package pins, and the Kubernetes platform config (GPU request, node placement, secrets)."""

import argparse
import re
from pathlib import Path

import pytest
import yaml

from components.ablation import ABLATIONS
from components.base import ALL_PINS, DEFAULT_IMAGE
from iwarp.errors import run_command
from pipelines import cli as pipeline_cli
from pipelines.pipeline import PlatformOptions, compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_PARAMS = {
    "data_source",
    "raw_data",
    "tracking_uri",
    "dvc_remote",
    "s3_endpoint_url",
    "image_size",
    "train_config",
    "init_from",
    "keypoints_from",
    "keypoint_config",
    "keypoint_steps",
    "keypoint_init_from",
    "train_overrides",
    "seed",
    "train_steps",
    "train_backend",
    "nproc_per_node",
    "num_nodes",
    "gpus_per_node",
    "eval_sources",
    "eval_source_placement",
    "eval_frame_stride",
    "select_metric",
    "experiment",
    "model_name",
    "serving_target",
}


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    pipeline_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pipeline", *argv])
    return run_command(args.func, args)  # as the CLI does: errors become a line and a code


def load(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "expected the pipeline spec and the platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("compile") / "iwarp_pipeline.yaml"
    assert cli("compile", "--out", str(out)) == 0
    return load(out)


def test_yaml_lists_pipeline_parameters(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert EXPECTED_PARAMS <= set(params)
    # required on a cluster (no default): where the tracking server and the data remote are
    for required in ("tracking_uri", "dvc_remote"):
        assert "defaultValue" not in params[required]
    # the main job: real faces, every variant fine-tuned from the shipped model, evaluated with spread sources
    assert params["data_source"]["defaultValue"] == "faces" and params["raw_data"]["defaultValue"] == ""
    assert params["init_from"]["defaultValue"] == "iwarp-faces-64"
    # ... with the detector of the shipped FOMM baseline, fine-tuned by the keypoint stage
    assert params["keypoints_from"]["defaultValue"] == params["init_from"]["defaultValue"]  # its own detector
    assert params["keypoint_init_from"]["defaultValue"] == "iwarp-faces-64-fomm"
    assert params["keypoint_config"]["defaultValue"] == "configs/keypoints-faces-64.yaml"
    assert params["keypoint_steps"]["defaultValue"] == 0  # the config's, as train_steps
    assert (
        params["train_config"]["defaultValue"] == "configs/faces-64.yaml" and params["image_size"]["defaultValue"] == 64
    )
    assert params["eval_source_placement"]["defaultValue"] == "spread"
    assert params["train_backend"]["defaultValue"] == "trainjob"
    assert params["eval_sources"]["defaultValue"] == [1, 2, 4]
    assert params["eval_sources"]["parameterType"] == "LIST"
    assert spec["pipelineInfo"]["name"] == "iwarp-pipeline"


def test_ablation_sweep_is_a_parallel_for_over_four_variants(compiled):
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    sweep = spec["components"][root["ablation-sweep"]["componentRef"]["name"]]["dag"]
    loops = {name: t for name, t in sweep["tasks"].items() if "parameterIterator" in t}
    assert len(loops) == 1
    (loop,) = loops.values()
    items = yaml.safe_load(loop["parameterIterator"]["items"]["raw"])
    assert items == ABLATIONS
    assert {(a["residual"], a["extra_kv"]) for a in items} == {
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    }
    assert loop["iteratorPolicy"]["parallelismLimit"] == 4
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"train-model", "evaluate-model"}
    # every variant gets the same data, seed, config and budget: only the loop item differs
    train_inputs = body["train-model"]["inputs"]
    assert train_inputs["parameters"]["ablation"]["componentInputParameter"].startswith("pipelinechannel--loop-item")
    for same in ("seed", "steps", "train_config", "train_overrides"):
        assert "loop-item" not in str(train_inputs["parameters"][same]), same
    assert "dataset" in train_inputs["artifacts"]
    assert "loop-item" not in str(train_inputs["parameters"]["init_from"])  # all four start from one model
    # ... and load one keypoint detector: the sweep's input, the keypoint stage's checkpoint
    assert "loop-item" not in str(train_inputs["artifacts"]["keypoints"])
    assert root["ablation-sweep"]["inputs"]["artifacts"]["keypoints"]["taskOutputArtifact"] == {
        "producerTask": "pretrain-keypoints",
        "outputArtifactKey": "checkpoint",
    }
    # evaluation sees both targets: the general test identity and the personal hold-out
    assert {"dataset", "personal", "checkpoint"} <= set(body["evaluate-model"]["inputs"]["artifacts"])
    # the compare step fans the four evaluations and checkpoints back in
    compare = root["compare-ablations"]
    assert "ablation-sweep" in compare["dependentTasks"]
    assert compare["inputs"]["artifacts"]["reports"]["taskOutputArtifact"]["producerTask"] == "ablation-sweep"


def test_chain_order(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert "preprocess-data" in deps["validate-data"]
    assert "validate-data" in deps["data-gate"]
    assert "data-gate" in deps["open-parent-run"]
    # the keypoint stage: a child of the parent run, on the prepared data, before the sweep
    assert {"open-parent-run", "preprocess-data"} <= deps["pretrain-keypoints"]
    assert "pretrain-keypoints" in deps["ablation-sweep"]
    assert {"compare-ablations"} <= deps["register-model"]
    assert {"register-model", "compare-ablations"} <= deps["package-model"]
    assert {"package-model", "register-model"} <= deps["deploy-canary"]
    # the champion's picture (sources | driving | output) from the chosen model and the test split
    assert {"compare-ablations", "preprocess-data"} <= deps["animate-champion"]


def test_keypoint_stage_trains_unless_a_detector_is_given(compiled):
    """The stage always runs (it hands the sweep the given checkpoint or trains one); the
    baseline's evaluation runs only when it trained, under a dsl.If on `keypoints_from`."""
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    kp = tasks["pretrain-keypoints"]
    assert "triggerPolicy" not in kp
    for name in ("keypoints_from", "keypoint_config", "keypoint_steps", "keypoint_init_from", "seed"):
        assert kp["inputs"]["parameters"][name]["componentInputParameter"] == name
    assert kp["inputs"]["parameters"]["parent_run_id"]["taskOutputParameter"]["producerTask"] == "open-parent-run"
    (cond,) = [t for t in tasks.values() if "keypoints_from" in str(t.get("triggerPolicy", {}))]
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--keypoints_from'] == ''"
    body = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    (ev,) = body.values()
    assert ev["componentRef"]["name"].startswith("comp-evaluate-model")
    assert ev["inputs"]["artifacts"]["checkpoint"]["componentInputArtifact"].endswith("pretrain-keypoints-checkpoint")


def test_every_step_uses_the_project_image_and_locked_pins(compiled):
    spec, _ = compiled
    lock = {
        line.split("==")[0].lower().replace("_", "-"): line.strip()
        for line in (ROOT / "requirements/lock.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 13  # 11 components, evaluate_model used twice (variants, keypoint baseline)
    for name, ex in executors.items():
        c = ex["container"]
        assert c["image"] == DEFAULT_IMAGE, name
        pins = re.findall(r"'([A-Za-z0-9_.-]+==[^']+)'", c["command"][2])
        assert f"kfp=={lock['kfp'].split('==')[1]}" in pins, name
    for pin in ALL_PINS:  # what components declare is exactly what the lock (and the image) holds
        pkg = pin.split("==")[0].lower().replace("_", "-")
        assert lock[pkg].lower().replace("_", "-") == pin.lower().replace("_", "-"), pin


def test_platform_config_requests_gpu_and_mounts_secrets(compiled):
    spec, platform = compiled
    ev = spec["deploymentSpec"]["executors"]["exec-evaluate-model"]["container"]["resources"]
    assert ev["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert ev["accelerator"]["resourceCount"] == "1"
    k8s = platform["exec-evaluate-model"]
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]

    def secrets(executor: str) -> dict[tuple[str, bool], set[str]]:
        """{(secret name, optional): env vars} of one step."""
        out: dict[tuple[str, bool], set[str]] = {}
        for s in platform[executor].get("secretAsEnv", []):
            out.setdefault((s["secretName"], bool(s.get("optional"))), set()).update(m["envVar"] for m in s["keyToEnv"])
        return out

    s3 = {("iwarp-s3", False): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, ("iwarp-s3", True): {"AWS_ENDPOINT_URL"}}
    mlflow = {("iwarp-mlflow-auth", True): {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}}
    assert secrets("exec-preprocess-data") == s3
    assert secrets("exec-train-model") == {**s3, **mlflow}
    assert secrets("exec-pretrain-keypoints") == {**s3, **mlflow}
    for ex in (
        "exec-open-parent-run",
        "exec-evaluate-model",
        "exec-compare-ablations",
        "exec-register-model",
        "exec-animate-champion",
    ):
        assert secrets(ex) == mlflow, ex
    assert secrets("exec-deploy-canary") == {**s3, **mlflow}
    # the train step shares the data volume with the TrainJob it submits
    assert platform["exec-train-model"]["pvcMount"][0]["mountPath"] == "/data"
    assert platform["exec-train-model"]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "iwarp-data"
    assert platform["exec-pretrain-keypoints"]["pvcMount"][0]["mountPath"] == "/data"
    # no credential value is baked into the spec, only references
    text = yaml.safe_dump(spec)
    assert "AWS_SECRET_ACCESS_KEY" not in text
    for ex in platform.values():
        assert ex["securityContext"] == {"runAsNonRoot": True, "runAsUser": "10001"}


def test_only_evaluation_holds_gpus(compiled):
    """Training GPUs belong to the TrainJob's pods, not to the step that submits it."""
    spec, _ = compiled
    with_gpu = {
        name
        for name, ex in spec["deploymentSpec"]["executors"].items()
        if "accelerator" in ex["container"].get("resources", {})
    }
    assert with_gpu == {"exec-evaluate-model", "exec-evaluate-model-2"}


def test_compile_options_image_secrets_and_defaults(tmp_path):
    out = tmp_path / "p.yaml"
    rc = cli(
        "compile",
        "--out",
        str(out),
        "--image",
        "registry.example/iwarp:1.2",
        "--eval-gpus",
        "2",
        "--s3-secret",
        "team-s3",
        "--gpu-node-selector",
        "pool=a100",
        "--param",
        "tracking_uri=http://mlflow.iwarp:5000",
        "eval_sources=[1, 8]",
        "seed=7",
    )
    assert rc == 0
    spec, platform = load(out)
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {
        "registry.example/iwarp:1.2"
    }
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["tracking_uri"]["defaultValue"] == "http://mlflow.iwarp:5000"
    assert params["eval_sources"]["defaultValue"] == [1, 8]
    assert params["seed"]["defaultValue"] == 7
    ev = spec["deploymentSpec"]["executors"]["exec-evaluate-model"]["container"]["resources"]
    assert ev["accelerator"]["resourceCount"] == "2"
    assert platform["exec-evaluate-model"]["nodeSelector"]["labels"] == {"pool": "a100"}
    assert platform["exec-preprocess-data"]["secretAsEnv"][0]["secretName"] == "team-s3"


def test_compile_rejects_unknown_parameter(tmp_path, capsys):
    assert cli("compile", "--out", str(tmp_path / "p.yaml"), "--param", "no_such_param=1") == 2
    assert "no_such_param" in capsys.readouterr().err


def test_cpu_only_compile_has_no_gpu_request(tmp_path):
    out = compile_pipeline(tmp_path / "p.yaml", PlatformOptions(eval_gpus=0))
    spec, platform = load(out)
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "accelerator" not in ex["container"].get("resources", {})
    assert "nodeSelector" not in platform["exec-evaluate-model"]
