"""The step wiring on its own: params.yaml overrides, evaluation JSON, error messages passed
on from subprocesses, the validation gate and the single-page Data Docs."""

import dataclasses
import json
import sys

import pytest
import yaml

from components.steps import training as training_steps
from components.steps.data import bundle_data_docs, check_gate, check_source, set_params
from components.steps.training import (
    eval_metrics,
    init_summary,
    module_name,
    run_evaluation,
    run_streaming,
)


def test_set_params_applies_typed_overrides_and_rejects_unknown_keys(tmp_path):
    params = set_params(
        tmp_path, "videos", "/videos", 128, ["prepare.crop=face", "synth.num_frames=16", "validate.fps_min=5.5"]
    )
    written = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert written == params
    assert params["prepare"]["input"] == "/videos" and params["dataset"] == "data/prepared"
    assert params["prepare"]["image_size"] == params["validate"]["image_size"] == params["faces"]["image_size"] == 128
    assert params["prepare"]["crop"] == "face" and params["synth"]["num_frames"] == 16
    assert params["validate"]["fps_min"] == 5.5
    assert params["validate"]["face_dataset"] is True  # face-cropped videos get the face checks
    for bad in ("prepare.no_such_key=1", "nosection.x=1", "prepare.crop", "dataset.x=1"):
        with pytest.raises(ValueError, match="section.key=value"):
            set_params(tmp_path, "videos", "/videos", 64, [bad])


def test_set_params_per_data_source(tmp_path):
    faces = set_params(tmp_path, "faces", "", 64, ["faces.clips_per_photo=1"])
    assert faces["dataset"] == "data/faces/general" and faces["faces"]["clips_per_photo"] == 1
    assert faces["validate"]["face_dataset"] is True and faces["faces"]["synth_identities"] == 0
    synth = set_params(tmp_path, "synth", "data/synth", 64, [])
    assert synth["dataset"] == "data/prepared" and synth["prepare"]["input"] == "data/synth"
    assert synth["validate"]["face_dataset"] is False  # the synthetic heads are not faces
    forced = set_params(tmp_path, "synth", "data/synth", 64, ["validate.face_dataset=true"])
    assert forced["validate"]["face_dataset"] is True  # an explicit override wins


def test_data_source_and_raw_data_go_together():
    check_source("faces", "")
    check_source("synth", "")
    check_source("videos", "s3://bucket/raw")
    for source, raw in (("videos", ""), ("faces", "/videos"), ("webcam", "")):
        with pytest.raises(ValueError, match="data_source"):
            check_source(source, raw)


def test_eval_metrics_flattens_per_k_and_drops_non_measurements():
    result = {
        "per_k": {
            "1": {"l1": 0.1, "psnr": 20.0, "lpips": 0.3, "akd": None, "mkr": 1.0, "frames": 12.0},
            "4": {"l1": 0.08, "psnr": 21.0, "lpips": 0.25, "akd": 2.5, "mkr": 0.1, "frames": 12.0},
        },
        "copy_source": None,
    }
    assert eval_metrics(result) == {
        "l1_k1": 0.1,
        "psnr_k1": 20.0,
        "lpips_k1": 0.3,
        "l1_k4": 0.08,
        "psnr_k4": 21.0,
        "lpips_k4": 0.25,
        "akd_k4": 2.5,
        "mkr_k4": 0.1,
    }


def test_eval_metrics_names_the_target_and_the_copy_source_floor():
    result = {
        "per_k": {"1": {"l1": 0.2, "lpips": 0.5, "akd": None, "frames": 9.0}},
        "copy_source": {"l1": 0.12, "lpips": 0.1, "akd": None, "mkr": None, "frames": 9.0},
    }
    assert eval_metrics(result, "personal") == {
        "personal/l1_k1": 0.2,
        "personal/lpips_k1": 0.5,
        "personal/copy_source_l1": 0.12,
        "personal/copy_source_lpips": 0.1,
    }


def test_run_evaluation_takes_the_personal_sources_from_its_train_split(tmp_path, monkeypatch):
    """The general target drives its test clips from their own frames; the personal target from
    frames of its train split (`--sources-from train`); each report lands under its target."""
    targets = {}
    for name in ("general", "personal"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.csv").write_text("id,identity,split\na,x,train\nb,x,test\n")
        targets[name] = str(tmp_path / name)
    calls: dict[str, dict] = {}

    def fake_evaluate(checkpoint, dataset, sources, out_json, **kw):
        calls[dataset] = kw
        report = {"per_k": {"1": {"l1": 0.1, "frames": 3.0}}, "copy_source": {"l1": 0.2, "frames": 3.0}}
        out_json.write_text(json.dumps(report))
        return report

    logged = []
    monkeypatch.setattr(training_steps, "evaluate_target", fake_evaluate)
    monkeypatch.setattr(training_steps, "log_evaluation", lambda *args: logged.append(args))
    values = run_evaluation("ckpt", targets, [1], "run", "uri", {}, str(tmp_path / "report.json"))
    ((uri, run_id, metrics, reports, step, work_dir),) = logged  # one journaled step, after both targets
    assert (uri, run_id, metrics, step) == ("uri", "run", values, "evaluate-model")
    assert [r.name for r in reports] == ["evaluate-general.json", "evaluate-personal.json"]
    sources_from = {dataset: kw["sources_from"] for dataset, kw in calls.items()}
    assert sources_from == {targets["general"]: "test", targets["personal"]: "train"}
    assert values == {
        "general/l1_k1": 0.1,
        "general/copy_source_l1": 0.2,
        "personal/l1_k1": 0.1,
        "personal/copy_source_l1": 0.2,
    }


def test_init_summary_names_the_modules_a_variant_dropped_or_added(tmp_path):
    assert init_summary(tmp_path) == "scratch"  # no init_from.json: trained from scratch
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "init_from.json").write_text(
        json.dumps(
            {
                "generator": {
                    "loaded": ["a.weight", "b.weight", "c.bias"],
                    "skipped": [
                        "residual_mlp.0.weight",
                        "residual_mlp.0.bias",
                        "residual_mlp.2.weight",
                        "attention.extra_residual_values",
                    ],
                    "new": [],
                }
            }
        )
    )
    assert init_summary(tmp_path) == "loaded 3; skipped residual_mlp, attention.extra_residual_values"
    assert module_name("attention.extra_keys") == "attention.extra_keys"
    assert module_name("value.blocks.1.conv.weight") == "value.blocks"


def test_run_streaming_passes_output_through_and_keeps_the_reason(capsys):
    code = (
        'import sys; print("step 1"); print("error: invalid training config:"); '
        'print("  optim.steps must be >= 1"); sys.exit(3)'
    )
    assert run_streaming([sys.executable, "-c", code]) == (
        3,
        "error: invalid training config: optim.steps must be >= 1",
    )
    assert "step 1" in capsys.readouterr().out
    rc, why = run_streaming([sys.executable, "-c", "raise KeyError('manifest.csv')"])
    assert rc == 1 and why == "KeyError: 'manifest.csv'"
    assert run_streaming([sys.executable, "-c", "print('fine')"]) == (0, "fine")


def validation_result(success: bool) -> dict:
    failures = (
        []
        if success
        else [
            {
                "check": "identity_leak",
                "expectation": "expect_column_values_to_be_in_set(identity_splits)",
                "suite": "iwarp_videos",
                "description": "an identity is in both train and test",
                "videos": ["a_v0", "a_v1"],
                "values": [],
                "observed": "",
            },
            {
                "check": "too_few_videos",
                "expectation": "expect_table_row_count_to_be_between",
                "suite": "iwarp_videos",
                "description": "enough videos",
                "videos": [],
                "values": [],
                "observed": "observed 1",
            },
        ]
    )
    return {"success": success, "data": "/d <script>", "videos": 3, "failures": failures}


def test_gate_passes_good_data_and_names_what_failed(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(validation_result(True)))
    bad.write_text(json.dumps(validation_result(False)))
    check_gate(str(good))
    with pytest.raises(RuntimeError) as err:
        check_gate(str(bad))
    msg = str(err.value)
    assert "identity_leak" in msg and "a_v0, a_v1" in msg and "too_few_videos" in msg and "observed 1" in msg


def test_data_docs_bundle_is_one_page_with_every_validation_page(tmp_path):
    site = tmp_path / "site"
    for suite in ("iwarp_videos", "iwarp_frames"):
        page = site / "validations" / suite / "__none__" / "20260101T000000Z" / f"{suite}.html"
        page.parent.mkdir(parents=True)
        page.write_text(f'<html><body><h1>{suite} result</h1><p>it\'s "quoted"</p></body></html>')
    html = bundle_data_docs(site, validation_result(False))
    assert html.startswith("<!doctype html>") and "Data validation FAILED" in html
    assert html.count("<iframe") == 2 and "iwarp_frames result" in html and "iwarp_videos result" in html
    assert "&lt;script&gt;" in html and "<script>" not in html  # paths and messages are escaped
    assert "identity_leak" in html and "a_v0, a_v1" in html


def test_the_animation_is_kept_per_run_and_in_docs_only_when_asked(tmp_path, monkeypatch):
    from pipelines.local_run import README_PICTURE, keep_animation

    monkeypatch.setenv("IWARP_PROJECT_DIR", str(tmp_path / "project"))
    src = tmp_path / "kfp" / "animation"  # KFP artifact files have no extension
    src.parent.mkdir()
    src.write_bytes(b"\x89PNG fake")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert keep_animation(src, run_dir, readme=False) == run_dir / "animation.png"
    assert (run_dir / "animation.png").read_bytes() == b"\x89PNG fake"
    assert not (tmp_path / "project" / README_PICTURE).exists()
    keep_animation(src, run_dir, readme=True)
    assert (tmp_path / "project" / "docs" / "images" / "main-job.png").read_bytes() == b"\x89PNG fake"
    assert keep_animation(None, run_dir, readme=True) is None  # a failed run has no picture


def test_fine_tuning_starts_at_a_gentle_learning_rate_that_the_user_can_override():
    from components.steps.train_request import FINETUNE_OPTIM, TrainRequest

    req = TrainRequest(
        dataset="d",
        ablation={"variant": "full", "residual": True, "extra_kv": True},
        config="c",
        overrides=["optim.lr_generator=5e-4"],
        seed=0,
        steps=100,
        tracking_uri="",
        experiment="e",
        parent_run_id="",
        init_from="iwarp-faces-64",
    )
    sets = req.train_overrides("d", "o")
    assert "init_from=iwarp-faces-64" in sets and set(FINETUNE_OPTIM) <= set(sets)
    # the last assignment wins in the config loader: the user's learning rate comes after the default
    assert sets.index("optim.lr_generator=5e-4") > sets.index(FINETUNE_OPTIM[0])
    scratch = dataclasses.replace(req, init_from="").train_overrides("d", "o")
    assert not set(FINETUNE_OPTIM) & set(scratch)  # from scratch: the config's own schedule


def test_train_step_launches_torchrun_with_the_requested_processes(tmp_path):
    """The local train step's command (what `iwarp pipeline run --nproc N` runs per variant; the
    pipeline e2e trains with the default single process, tests/model/test_train_ddp.py runs
    this launcher with two real DDP processes)."""
    from components.steps.train_request import TrainRequest
    from components.steps.training import train_command

    req = TrainRequest(
        dataset="d",
        ablation={"variant": "full", "residual": True, "extra_kv": True},
        config="configs/tiny.yaml",
        overrides=[],
        seed=0,
        steps=10,
        tracking_uri="http://127.0.0.1:5000",
        experiment="e",
        parent_run_id="",
        nproc_per_node=2,
    )
    cmd = train_command(req, tmp_path / "out", resume=False)
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:8] == ["-m", "iwarp", "train"]
    assert cmd[cmd.index("--tracking-uri") + 1] == "http://127.0.0.1:5000" and "--resume" not in cmd
    assert cmd[cmd.index("--set") + 1 :] == req.train_overrides("d", str(tmp_path / "out"))
    assert "--resume" in train_command(req, tmp_path / "out", resume=True)
    single = dataclasses.replace(req, nproc_per_node=0)  # 0 (a GPU count of none) still trains once
    assert "--nproc-per-node=1" in train_command(single, tmp_path / "out", resume=False)


def test_variants_load_the_keypoint_detector_and_the_stage_has_no_ablation_switches():
    from components.ablation import ABLATIONS
    from components.steps.train_request import FINETUNE_OPTIM, TrainRequest
    from components.steps.training import KEYPOINTS
    from iwarp.training.config import load_train_config

    variant = TrainRequest(
        dataset="d",
        ablation=ABLATIONS[1],
        config="configs/tiny.yaml",
        overrides=["model.implicit.keypoints_frozen=false"],
        seed=0,
        steps=100,
        tracking_uri="",
        experiment="e",
        parent_run_id="",
        init_from="iwarp-faces-64",
        keypoints_from="/kfp/pretrain-keypoints/checkpoint",
    )
    sets = variant.train_overrides("d", "o")
    kp = "model.implicit.keypoints_from=/kfp/pretrain-keypoints/checkpoint"
    # the user's overrides come last (here: fine-tune the detector instead of freezing it)
    assert sets.index("init_from=iwarp-faces-64") < sets.index(kp) < sets.index("model.implicit.keypoints_frozen=false")
    cfg = load_train_config("configs/tiny.yaml", sets)
    assert cfg.model.implicit.keypoints_from == "/kfp/pretrain-keypoints/checkpoint"
    assert cfg.model.implicit.residual is False  # the variant's switch still applies
    plain = dataclasses.replace(variant, overrides=[])
    frozen = load_train_config("configs/tiny.yaml", plain.train_overrides("d", "o"))
    assert frozen.model.implicit.keypoints_frozen is True  # the default: the detector stays as pretrained

    stage = dataclasses.replace(
        variant, ablation=dict(KEYPOINTS), init_from="iwarp-faces-64-fomm", keypoints_from="", overrides=[]
    )
    stage_sets = stage.train_overrides("d", "o")
    assert "run_name=keypoints" in stage_sets and set(FINETUNE_OPTIM) <= set(stage_sets)  # fine-tuned gently
    assert not [s for s in stage_sets if s.startswith("model.implicit.")]  # no switches, no detector to load
    cfg = load_train_config("configs/keypoints-faces-64.yaml", stage_sets)
    assert cfg.model.kind == "baseline" and cfg.optim.steps == 100


def test_keypoint_stage_given_a_detector_copies_it_and_trains_nothing(tmp_path, mlflow_server):
    from components.steps.train_request import TrainRequest
    from components.steps.training import DETECTOR_PARAM, KEYPOINTS, keypoint_stage, mlflow_client, start_parent_run
    from iwarp.checkpoint import CheckpointError, resolve_checkpoint

    parent = start_parent_run(mlflow_server, "kp", "v1", "", "", {"keypoints_from": "iwarp-faces-64"})
    req = TrainRequest(
        dataset=str(tmp_path / "no-dataset"),
        ablation=dict(KEYPOINTS),
        config="configs/keypoints-faces-64.yaml",
        overrides=[],
        seed=0,
        steps=1,
        tracking_uri=mlflow_server,
        experiment="kp",
        parent_run_id=parent,
        backend="no-such-backend",  # any training would fail
        init_from="iwarp-faces-64-fomm",
    )
    out = tmp_path / "checkpoint"
    meta = keypoint_stage(req, "iwarp-faces-64", str(out))
    assert out.read_bytes() == resolve_checkpoint("iwarp-faces-64").read_bytes()
    assert meta["source"] == "given" and meta["run_id"] == "" and meta["variant"] == "keypoints"
    client = mlflow_client(mlflow_server)
    assert client.get_run(parent).data.params[DETECTOR_PARAM] == "iwarp-faces-64"
    exp = client.get_experiment_by_name("kp")
    assert client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'") == []  # no child run

    # names that resolve to nothing fail in one line, before any training
    with pytest.raises(CheckpointError, match=r"checkpoint not found: no-such-detector .*available: .*iwarp-faces-64"):
        keypoint_stage(req, "no-such-detector", str(tmp_path / "c2"))
    with pytest.raises(CheckpointError, match="checkpoint not found: iwarp-no-such-fomm"):
        keypoint_stage(dataclasses.replace(req, init_from="iwarp-no-such-fomm"), "", str(tmp_path / "c3"))


@pytest.mark.parametrize(
    "variants, keypoints",
    [
        ("faces-64.yaml", "keypoints-faces-64.yaml"),
        ("tiny.yaml", "keypoints-tiny.yaml"),
        ("paper-256.yaml", "keypoints-paper-256.yaml"),
    ],
)
def test_keypoint_configs_train_a_detector_their_variants_can_load(variants, keypoints):
    from iwarp.training.config import load_train_config
    from iwarp.training.init import detector_differences

    implicit = load_train_config(f"configs/{variants}").model.implicit.keypoints
    fomm = load_train_config(f"configs/{keypoints}")
    assert fomm.model.kind == "baseline" and fomm.model.baseline.motion == "first_order"
    assert detector_differences(dataclasses.asdict(fomm.model.baseline.keypoints), dataclasses.asdict(implicit)) == []


def test_local_run_checks_that_the_variants_can_load_the_detector():
    from iwarp.config import ConfigError
    from pipelines.local_run import LocalRunOptions, check_detectors

    check_detectors(LocalRunOptions())  # the main job: iwarp-faces-64's own detector
    check_detectors(LocalRunOptions(keypoints_from=""))  # faces-64 variants, keypoints-faces-64 stage
    tiny = dict(config="configs/tiny.yaml", keypoint_config="configs/keypoints-tiny.yaml", init_from="")
    check_detectors(LocalRunOptions(**tiny))
    with pytest.raises(ConfigError, match="detector of iwarp-faces-64 does not fit configs/tiny.yaml"):
        check_detectors(LocalRunOptions(**{**tiny, "init_from": "iwarp-faces-64"}))
    with pytest.raises(
        ConfigError, match="keypoints-tiny.yaml does not fit configs/faces-64.yaml: num_keypoints 5 vs 10"
    ):
        check_detectors(LocalRunOptions(keypoints_from="", keypoint_config="configs/keypoints-tiny.yaml"))
    with pytest.raises(ConfigError, match="channels"):  # the variants' overrides count
        check_detectors(LocalRunOptions(overrides=["model.implicit.keypoints.channels=[8,16,16]"]))
    check_detectors(LocalRunOptions(overrides=["optim.steps=-5"]))  # the rest is the trainer's to refuse


def test_a_fine_tuned_model_keeps_its_own_detector_by_default():
    """The main job fine-tunes iwarp-faces-64: its variants load that model's own detector and the
    keypoint stage trains nothing; from scratch (init_from "") the stage trains one; "" forces it."""
    from pipelines.local_run import LocalRunOptions

    assert LocalRunOptions().keypoints_from == LocalRunOptions().init_from == "iwarp-faces-64"
    assert LocalRunOptions(init_from="runs/x.ckpt").keypoints_from == "runs/x.ckpt"
    assert LocalRunOptions(init_from="").keypoints_from == ""
    assert LocalRunOptions(keypoints_from="").keypoints_from == ""


@pytest.mark.parametrize("name, size", [("iwarp-faces-64", 64), ("iwarp-faces-128", 128)])
def test_model_option_takes_the_shipped_models_recipe_and_size(name, size):
    """`iwarp pipeline run --model NAME`: the config its card names and the size it was trained at."""
    from iwarp.config import load_config
    from iwarp.training.config import TrainConfig
    from pipelines.local_run import shipped_recipe

    config, image_size = shipped_recipe(name)
    assert image_size == size
    assert load_config(TrainConfig, config).model.implicit.image_size == size
