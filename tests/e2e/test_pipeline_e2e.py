"""`iwarp pipeline run` end to end on this machine: kfp.local's SubprocessRunner, a real
MLflow server (SQLite), a real TorchServe, real DVC with a directory remote, real Great
Expectations. The main job's path: DVC's real `faces` stage (fewer photo clips), the keypoint
stage fine-tuning a stand-in for the shipped FOMM baseline `iwarp-faces-64-fomm`
(configs/keypoints-faces-64.yaml trained a few steps here), the four variants fine-tuning a
stand-in for the shipped model `iwarp-faces-64` (configs/faces-64.yaml, likewise; both found by
name through $IWARP_MODELS_DIR) with the stage's detector frozen, evaluation on the general and
personal targets. One full run is shared by the tests below; a second run (given a detector: the
keypoint stage trains nothing) with two faults (MLflow killed for a minute mid-sweep, the driver
killed with SIGKILL and resumed), a failed training and an invalid-data run (synthetic clips,
too short) reuse its services.

Budget: each full run takes a few minutes on 2 CPU cores (few steps, one clip per photo);
everything after them takes seconds.
"""

import base64
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from PIL import Image
from rich.console import Console

from pipelines.local_run import LocalRunOptions, child_runs, compare_url, print_summary, run_local
from pipelines.services import MlflowServer, free_port
from tests.helpers.train import iwarp_cmd

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Screenshots and reports land here (git-ignored); CI can keep them as build artifacts.
ARTIFACTS = Path(os.environ.get("IWARP_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts")) / "pipeline"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
STEPS = 6  # per variant: the variants still differ (architectures differ from step 0); CI stays short
SMALL_FACES = ["faces.clips_per_photo=1", "faces.photo_frames=24"]  # the real faces, fewer photo clips
SHIPPED = "iwarp-faces-64"
SHIPPED_FOMM = "iwarp-faces-64-fomm"
VARIANTS = {"full", "no-residual", "no-extra-kv", "neither"}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Headless Chromium driven over the DevTools protocol (fresh profile, loopback only):
    load a page, wait for text, run a little JavaScript, take a screenshot."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1500):
        import websocket

        self.proc = subprocess.Popen(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"  # Chromium writes its chosen port here
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        self.ws = websocket.create_connection(
            next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"], timeout=60
        )
        self.n = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def js(self, expression: str):
        return (
            self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
            .get("result", {})
            .get("value")
        )

    def open(self, url: str, wait_for: str, timeout: float = 90) -> str:
        """Navigate and wait until the rendered text contains `wait_for`; returns that text."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.js("document.body ? document.body.innerText : ''") or ""
            if wait_for in text:
                return text
            time.sleep(0.5)
        raise AssertionError(f"{wait_for!r} never appeared on {url}")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


# On MLflow's run-comparison page: fold the visualisations and the (long) parameter table and
# close the assistant panel, so the run names and the metrics table share one screen. Run once:
# the headers toggle.
FOLD_JS = """(() => {
  const headers = [...document.querySelectorAll('.du-bois-light-collapse-header')];
  for (const name of ['Visualizations', 'Parameters']) {
    const h = headers.find(h => h.innerText.trim() === name);
    if (h) h.click();
  }
  const close = [...document.querySelectorAll('button')].find(b => b.getAttribute('aria-label') === 'Close');
  if (close) close.click();
  return true;
})()"""


@pytest.fixture(scope="module")
def shipped_model(tmp_path_factory):
    """Stand-ins for models/iwarp-faces-64.ckpt and models/iwarp-faces-64-fomm.ckpt:
    configs/faces-64.yaml and configs/keypoints-faces-64.yaml trained 3 steps on a few synthetic
    clips, put where `resolve_checkpoint` finds shipped models ($IWARP_MODELS_DIR); the
    pipeline's tasks inherit the variable."""
    from iwarp.data import SynthConfig, make_synth_dataset

    tmp = tmp_path_factory.mktemp("shipped")
    make_synth_dataset(
        tmp / "data",
        SynthConfig(num_identities=3, videos_per_identity=1, num_frames=12, image_size=64, format="png"),
        overwrite=True,
        progress=False,
    )
    models = tmp / "models"
    models.mkdir()
    for name, config in ((SHIPPED, "faces-64.yaml"), (SHIPPED_FOMM, "keypoints-faces-64.yaml")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "iwarp",
                "train",
                "--config",
                str(ROOT / "configs" / config),
                "--set",
                f"data.root={tmp / 'data'}",
                f"out_dir={tmp / name}",
                "optim.steps=3",
                "optim.warmup_steps=1",
                "data.batch_size=2",
                "logging.images_every_steps=0",
            ],
            check=True,
            capture_output=True,
        )
        shutil.copy(tmp / name / "checkpoints" / "final.ckpt", models / f"{name}.ckpt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IWARP_MODELS_DIR", str(models))
        yield models / f"{SHIPPED}.ckpt"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private state dir (its own MLflow port and TorchServe ports); services stopped after."""
    path = tmp_path_factory.mktemp("iwarp-home")
    yield path
    from pipelines.services import stop_torchserve

    MlflowServer(path).stop()
    stop_torchserve(path)


def options(home: Path, **kw) -> LocalRunOptions:
    base = dict(
        home=str(home),
        steps=STEPS,
        keypoint_steps=STEPS,
        nproc=1,  # the main job's default; two DDP processes: tests/model/test_train_ddp.py
        data="faces",
        data_params=SMALL_FACES,
        init_from=SHIPPED,
        keypoints_from="",  # run the keypoint stage (the default would keep SHIPPED's own detector)
        eval_sources=[1, 2],
        eval_frame_stride=8,
        eval_max_videos=1,
        mlflow_port=free_port(),
        torchserve_ports=(free_port(), free_port(), free_port()),
    )
    base.update(kw)
    return LocalRunOptions(**base)


@pytest.fixture(scope="module")
def full_run(home, shipped_model):
    out = io.StringIO()
    console = Console(file=out, width=160)
    result = run_local(options(home), console)
    print_summary(result, console)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "pipeline-run.txt").write_text(out.getvalue())
    assert result.ok, f"pipeline failed at {result.failed_task}: {result.error}\n{out.getvalue()[-4000:]}"
    return result


def variant_runs(result) -> list:
    """The four variants' runs under the result's parent (the keypoint stage's is a child too)."""
    _, kids = child_runs(result.mlflow_url, result.outputs["parent_run_id"])
    return [k for k in kids if k.data.tags["iwarp.variant"] in VARIANTS]


def test_four_child_runs_with_the_same_metric_keys_under_one_parent(full_run):
    _, all_kids = child_runs(full_run.mlflow_url, full_run.outputs["parent_run_id"])
    kids = variant_runs(full_run)
    assert len(kids) == 4 and len(all_kids) == 5  # + the keypoint stage's run
    assert {k.data.tags["iwarp.variant"] for k in kids} == VARIANTS
    keys = [{m for m in k.data.metrics if m.startswith("_eval/")} for k in kids]
    assert keys[0] and all(k == keys[0] for k in keys), keys
    # MLflow's compare view sorts keys by code point (JS `.sort()`): the evaluation comes first
    everything = sorted(kids[0].data.metrics)
    assert everything[: len(keys[0])] == sorted(keys[0]), everything[: len(keys[0]) + 3]
    # both targets (the unseen woman; her last third driven from her first part), each with its floor
    for target in ("general", "personal"):
        assert {
            f"_eval/{target}/l1_k1",
            f"_eval/{target}/psnr_k2",
            f"_eval/{target}/lpips_k1",
            f"_eval/{target}/lpips_k2",
            f"_eval/{target}/copy_source_l1",
        } <= keys[0]
    assert {k.info.status for k in kids} == {"FINISHED"}
    # identical data, seed, budget and starting model for all four; each trained by one torchrun process
    for p in ("seed", "optim.steps", "data.root", "init_from", "init_from.checkpoint"):
        assert len({k.data.params[p] for k in kids}) == 1, p
    assert {k.data.params["world_size"] for k in kids} == {"1"}
    by_variant = {k.data.tags["iwarp.variant"]: k.data.params for k in kids}
    assert by_variant["full"]["init_from"] == SHIPPED and by_variant["full"]["init_from.skipped"] == "0"
    for variant in ("no-residual", "no-extra-kv", "neither"):  # each drops the modules it lacks
        assert int(by_variant[variant]["init_from.skipped"]) > 0, variant
    assert by_variant["full"]["data.root"].endswith("preprocess-data/dataset")


def test_keypoint_stage_trains_the_fomm_baseline_and_every_variant_loads_its_detector_frozen(full_run):
    from mlflow.tracking import MlflowClient

    _, kids = child_runs(full_run.mlflow_url, full_run.outputs["parent_run_id"])
    (kp,) = [k for k in kids if k.data.tags["iwarp.variant"] == "keypoints"]
    assert kp.info.status == "FINISHED" and kp.info.run_name == "keypoints"
    p = kp.data.params
    assert p["model.kind"] == "baseline" and p["model.baseline.motion"] == "first_order"
    assert p["init_from"] == SHIPPED_FOMM and p["optim.steps"] == str(STEPS)  # fine-tuned on the user's data
    assert p["optim.lr_generator"] == "0.0002"  # the variants' gentle fine-tuning rule
    assert p["data.root"] == variant_runs(full_run)[0].data.params["data.root"]  # the same data
    # evaluated like a variant: the baseline users compare the variants against
    assert {"_eval/general/l1_k1", "_eval/general/lpips_k2", "_eval/personal/l1_k1"} <= set(kp.data.metrics)
    detector = next(full_run.run_dir.rglob("pretrain-keypoints/checkpoint"))
    for v in variant_runs(full_run):
        assert v.data.params["keypoints_from.checkpoint"] == str(detector), v.info.run_name
        assert v.data.params["keypoints_from.model_kind"] == "baseline"
        assert v.data.params["model.implicit.keypoints_frozen"] == "True"
    parent = MlflowClient(full_run.mlflow_url).get_run(full_run.outputs["parent_run_id"])
    assert parent.data.params["keypoint_detector"].startswith(f"trained: run {kp.info.run_id}")
    assert parent.data.params["keypoint_init_from"] == SHIPPED_FOMM
    assert parent.data.tags["iwarp.keypoints_run_id"] == kp.info.run_id


def test_parent_run_holds_the_ablation_table_and_decision(full_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(full_run.mlflow_url)
    parent = client.get_run(full_run.outputs["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["iwarp.chosen_variant"] == full_run.outputs["chosen_variant"]
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "ablation")}
    assert {"ablation/ablation.png", "ablation/ablation.md", "ablation/table.json"} <= files
    table = full_run.outputs["ablation_table"]
    for variant in ("full", "no-residual", "no-extra-kv", "neither"):
        assert f"| {variant}" in table
    assert "**Decision**" in table
    # what each variant took from the shipped model, the floor row and the floor verdict
    assert "init (from the shipped model)" in table
    no_residual = next(line for line in table.splitlines() if line.startswith("| no-residual"))
    assert "skipped" in no_residual and "residual_mlp" in no_residual
    assert "| copy-source floor |" in table and "**Floor**" in table
    assert {"floor/general/l1", "floor/personal/l1", "champion/general/l1_k1"} <= set(parent.data.metrics)
    assert parent.data.tags["iwarp.beats_floor.general"] in ("true", "false")
    assert "animation/animation.png" in {f.path for f in client.list_artifacts(parent.info.run_id, "animation")}


def test_data_is_the_real_faces_versioned_and_validated_with_face_checks(full_run):
    from iwarp.data.manifest import read_manifest

    general = next(full_run.run_dir.rglob("preprocess-data/dataset"))
    personal = next(full_run.run_dir.rglob("preprocess-data/personal"))
    g, p = read_manifest(general / "manifest.csv"), read_manifest(personal / "manifest.csv")
    assert set(g[g["split"] == "test"]["identity"]) == {"feat_woman"}  # never trained on
    assert "feat_woman" not in set(g[g["split"] == "train"]["identity"])
    # personal: the woman's recording split in time (her first part trains, her last third tests)
    assert set(p["identity"]) == {"feat_woman"} and set(p["split"]) == {"train", "test"}
    assert set(p["split_by"]) == {"clip"}
    assert (g["face_rate"].notna()).all()  # real faces only: no synthetic heads in the main job
    validation = json.loads(next(full_run.run_dir.rglob("validate-data/validation")).read_text())
    assert validation["success"] and validation["config"]["face_dataset"] is True
    log = full_run.log.read_text()
    assert "Running stage 'faces'" in log and "personal set" in log


def test_animation_picture_of_the_test_identity(full_run):
    assert full_run.animation == full_run.run_dir / "animation.png"
    with Image.open(full_run.animation) as img:  # 2 sources + a gap + 6 frames, 64 px tiles shown at 128
        assert img.format == "PNG" and img.width >= 9 * 128 and img.height >= 2 * 128
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(full_run.animation, ARTIFACTS / "animation.png")


def test_registered_version_has_the_right_alias(full_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(full_run.mlflow_url)
    version = full_run.outputs["registered_version"]
    mv = client.get_model_version("iwarp", version)
    parent = client.get_run(full_run.outputs["parent_run_id"])
    assert mv.run_id == parent.data.tags["iwarp.chosen_run_id"]  # the variant the sweep chose
    assert mv.tags["iwarp.variant"] == full_run.outputs["chosen_variant"]
    assert mv.tags["canary_verdict"] == "promote"
    # first version: nothing to beat, so after answering every canary case it is the champion;
    # `challenger` marked it during the canary and is released once the verdict is in
    aliases = client.get_registered_model("iwarp").aliases
    assert full_run.outputs["promoted"] is True
    assert aliases == {"champion": version}


def test_torchserve_default_version_answers_a_prediction(full_run, home):
    """The printed endpoint, called like a user would (token from the key file)."""
    from iwarp.data import VideoDataset
    from serving.client import encode_image
    from serving.server import ServerHandle

    endpoint = full_run.outputs["endpoint"]
    handle = ServerHandle.load(home / "serve")
    assert endpoint == f"{handle.inference_url}/predictions/iwarp"
    assert handle.client().default_version("iwarp") == f"{full_run.outputs['registered_version']}.0"

    dataset = next(full_run.run_dir.rglob("preprocess-data/dataset"))
    frames = VideoDataset(dataset, "test", image_size=64).read_frames(0, [0, 1, 6, 8])
    png = [encode_image((f.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for f in frames]
    body = {
        "sources": [base64.b64encode(b).decode() for b in png[:2]],
        "driving": [base64.b64encode(b).decode() for b in png[2:]],
    }
    key = json.loads(handle.key_file.read_text())["inference"]["key"]
    assert requests.post(endpoint, json=body, timeout=60).status_code in (400, 401)  # no token: refused
    r = requests.post(endpoint, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert len(answer["frames"]) == 2  # one animated frame per driving frame
    with Image.open(io.BytesIO(base64.b64decode(answer["frames"][0]))) as img:
        assert img.size == (64, 64)


@pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed (scripts/system-deps.sh installs it)")
def test_mlflow_compare_page_shows_the_four_child_runs(full_run, tmp_path):
    exp_id, kids = child_runs(full_run.mlflow_url, full_run.outputs["parent_run_id"])
    url = compare_url(full_run.mlflow_url, exp_id, [k.info.run_id for k in kids])
    shot = ARTIFACTS / "mlflow-compare-runs.png"
    browser = Browser(tmp_path / "chromium-profile")
    try:
        text = browser.open(url, wait_for="_eval/general/l1_k1")
        assert f"Comparing {len(kids)} Runs" in text  # the variants and the keypoint baseline
        for k in kids:
            assert k.info.run_name in text  # the four variants, side by side
        assert browser.js(FOLD_JS) is True
        time.sleep(1.0)  # let the folds settle
        # the metrics table renders only the rows in view (it is virtualised): the evaluation's
        # come first, in the first screenful
        shown = browser.js("document.body.innerText")
        for metric in ("_eval/general/l1_k1", "_eval/general/l1_k2", "_eval/general/lpips_k1"):
            assert metric in shown, metric
        # the value each run logged appears in the table, formatted as the UI does
        value = kids[0].data.metrics["_eval/general/lpips_k1"]
        assert any(f"{value:.{d}g}" in shown for d in (3, 4, 5, 6)), value
        browser.screenshot(shot)
    finally:
        browser.close()
    with Image.open(shot) as img:  # look at it: outputs/test-artifacts/pipeline/mlflow-compare-runs.png
        assert img.size == (1400, 1500)


def eval_metrics_by_variant(uri: str, parent_run_id: str) -> dict[str, dict[str, float]]:
    """{variant: {`_eval/` key: value}} of a sweep's four variants, asserting that each key was
    logged exactly once (one step in its history)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    _, kids = child_runs(uri, parent_run_id)
    out = {}
    for kid in (k for k in kids if k.data.tags["iwarp.variant"] in VARIANTS):
        keys = [m for m in kid.data.metrics if m.startswith("_eval/")]
        assert keys, kid.info.run_name
        for key in keys:
            assert len(client.get_metric_history(kid.info.run_id, key)) == 1, (kid.info.run_name, key)
        out[kid.data.tags["iwarp.variant"]] = {k: kid.data.metrics[k] for k in keys}
    assert set(out) == VARIANTS
    return out


SWEEP_TASKS = ("train-model", "evaluate-model")  # 4 of each, one after the other


def cli_options(home: Path, detector: Path) -> list[str]:
    """`options(home, keypoints_from=detector)` as `iwarp pipeline run` flags, checkpoints every
    3 steps (so a training killed part-way has one to continue from)."""
    return [
        *("--home", str(home), "--steps", str(STEPS), "--keypoint-steps", str(STEPS), "--nproc", "1"),
        *("--data", "faces", "--data-param", *SMALL_FACES, "--init-from", SHIPPED, "--keypoints-from", str(detector)),
        *("--sources", "1", "2", "--frame-stride", "8", "--eval-max-videos", "1"),
        *("--set", "checkpoint.every_steps=3"),
    ]


def task_events(text: str) -> list[tuple[str, str]]:
    """(mark, task) per progress line: ▶ started, ✓ finished, ✗ failed, ↺ reused."""
    import re

    return re.findall(r"\[\d+/\d+\] ([▶✓✗↺]) ([\w-]+)", text)


@dataclasses.dataclass
class FaultedRun:
    run_dir: Path
    outputs: dict
    killed: str  # what the killed attempt printed
    resumed: str  # what the resumed attempt printed
    detector: Path
    torchserve_pid: int


@pytest.fixture(scope="module")
def faulted_run(full_run, home) -> FaultedRun:
    """The second run: the first run's settings given its detector (the keypoint stage trains
    nothing), as `iwarp pipeline run` in a driver process, with two faults. MLflow is SIGKILLed
    when the sweep's first evaluation starts and started again 60 s later on the same store.
    The driver is SIGKILLed at a random point of the sweep (seed printed; IWARP_KILL_SEED repeats
    one), never while MLflow is down, then the same command runs again with --resume."""
    import random
    import signal

    import psutil

    from serving.server import ServerHandle
    from tests.helpers.faults import MlflowOutage

    seed = int(os.environ.get("IWARP_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    nth, delay = rng.randint(1, 8), rng.uniform(0.0, 8.0)  # the nth sweep task's start, then a delay
    print(f"kill seed {seed}: the driver dies {delay:.1f} s after sweep task {nth} of 8 starts")
    detector = next(full_run.run_dir.rglob("pretrain-keypoints/checkpoint"))
    ts_pid = ServerHandle.load(home / "serve").pid
    outage = MlflowOutage(home, "evaluate-model", seconds=60)
    outage.start()
    cmd = iwarp_cmd("pipeline", "run", *cli_options(home, detector))
    wide = {**os.environ, "COLUMNS": "400"}  # rich wraps at 80 columns off a terminal: keep each path on one line
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=wide)
    assert first.stdout is not None
    printed, started = [], 0
    for line in first.stdout:
        printed.append(line)
        started += any(f"▶ {t}" in line for t in SWEEP_TASKS)
        if started == nth:
            break
    time.sleep(delay)
    if outage.due() and outage.back is None:
        # A kill now could end the one step that met the outage before it tried to log, and the
        # resumed driver would start MLflow itself: the outage would go unseen. Kill once it is
        # back, still mid-sweep.
        outage.join(timeout=300)
        print("the kill waited for MLflow to come back")
    assert first.poll() is None, "".join(printed)[-3000:]  # killed while it ran, not after it failed
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    killed = "".join(printed) + first.stdout.read()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "pipeline-killed.txt").write_text(killed)
    run_dir = max((home / "runs").iterdir(), key=lambda p: p.name)
    deadline = time.monotonic() + 60  # the killed driver's tasks end with it
    while any(str(run_dir) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, "tasks of the killed driver are still running"
        time.sleep(0.5)
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, cwd=ROOT, env=wide, timeout=1800)
    outage.join(timeout=300)  # back already, or it went down in the resumed attempt
    assert outage.error is None and outage.killed and outage.back, outage.error
    (ARTIFACTS / "pipeline-resumed.txt").write_text(again.stdout + again.stderr)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-3000:]
    outputs = json.loads((run_dir / "result.json").read_text())["outputs"]
    return FaultedRun(run_dir, outputs, killed, again.stdout, detector, ts_pid)


def test_an_mlflow_outage_mid_sweep_changes_nothing_in_the_result(faulted_run, full_run):
    """MLflow killed mid-sweep for a minute costs the run nothing: the same champion and the
    same evaluation per variant as the run without faults, every variant's metrics in MLflow
    once, nested under one FINISHED parent; no task failed."""
    from mlflow.tracking import MlflowClient

    out = faulted_run.outputs
    assert out["chosen_variant"] == full_run.outputs["chosen_variant"]
    got = eval_metrics_by_variant(full_run.mlflow_url, out["parent_run_id"])
    want = eval_metrics_by_variant(full_run.mlflow_url, full_run.outputs["parent_run_id"])
    for variant, metrics in want.items():  # same data, seed, detector and budget: deterministic on CPU
        assert got[variant].keys() == metrics.keys(), variant
        for key, value in metrics.items():
            assert got[variant][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (variant, key)
    client = MlflowClient(full_run.mlflow_url)
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["iwarp.chosen_variant"] == out["chosen_variant"]
    _, kids = child_runs(full_run.mlflow_url, out["parent_run_id"])
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert "✗" not in faulted_run.killed + faulted_run.resumed
    log = (faulted_run.run_dir / "pipeline.log").read_text()
    assert "unreachable" in log  # the steps said so, and went on
    assert json.loads((faulted_run.run_dir / "result.json").read_text())["undelivered"] == []


def test_a_driver_killed_mid_sweep_resumes_repeating_at_most_the_interrupted_task(faulted_run, full_run):
    """`kill -9` of the driver, then --resume: every task the killed attempt finished is reused,
    the rest run once (so at most the interrupted task repeats), a training killed part-way
    continues from its checkpoint, one parent run spans both attempts and one registry version
    is added, as for a run never killed."""
    from mlflow.tracking import MlflowClient

    finished = [t for mark, t in task_events(faulted_run.killed) if mark == "✓"]
    events = task_events(faulted_run.resumed)
    reused = [t for mark, t in events if mark == "↺"]
    ran = [t for mark, t in events if mark == "▶"]
    assert sorted(reused) == sorted(finished)
    assert len(reused) + len(ran) == 18
    assert f"resuming {faulted_run.run_dir}" in faulted_run.resumed
    assert f"{len(reused)} tasks reused" in faulted_run.resumed
    if "resuming the interrupted training" in (faulted_run.run_dir / "pipeline.log").read_text():
        assert any((faulted_run.run_dir / "work" / "train").glob("*/checkpoints/step-*.ckpt"))

    client = MlflowClient(full_run.mlflow_url)
    exp = client.get_experiment_by_name("iwarp")
    parents = client.search_runs([exp.experiment_id], f"tags.`iwarp.work_dir` = '{faulted_run.run_dir / 'work'}'")
    assert [p.info.run_id for p in parents] == [faulted_run.outputs["parent_run_id"]]
    pid = parents[0].info.run_id
    versions = [v for v in client.search_model_versions("name='iwarp'") if v.tags.get("iwarp.parent_run_id") == pid]
    assert [v.version for v in versions] == [faulted_run.outputs["registered_version"]]


def test_second_run_reuses_services_and_canaries_against_the_champion(faulted_run, full_run, home):
    """DVC skips the data stages, the keypoint stage trains nothing (given the first run's
    detector), TorchServe is reused, version N+1 is registered and the canary compares it with
    the version now serving (the champion)."""
    from mlflow.tracking import MlflowClient

    from serving.server import ServerHandle

    out, run_dir = faulted_run.outputs, faulted_run.run_dir
    _, kids = child_runs(full_run.mlflow_url, out["parent_run_id"])
    assert {k.data.tags["iwarp.variant"] for k in kids} == VARIANTS  # no keypoints run: nothing trained
    copied = next(run_dir.rglob("pretrain-keypoints/checkpoint"))
    assert copied.read_bytes() == faulted_run.detector.read_bytes()
    assert {k.data.params["keypoints_from.checkpoint"] for k in kids} == {str(copied)}
    client = MlflowClient(full_run.mlflow_url)
    assert client.get_run(out["parent_run_id"]).data.params["keypoint_detector"] == str(faulted_run.detector)
    log = (run_dir / "pipeline.log").read_text()
    assert "evaluate-model-2" not in log  # the dsl.If skipped the baseline's evaluation
    assert "Stage 'faces' didn't change, skipping" in log
    assert "(reused;" in faulted_run.killed  # MLflow and TorchServe
    assert ServerHandle.load(home / "serve").pid == faulted_run.torchserve_pid

    first, second = int(full_run.outputs["registered_version"]), int(out["registered_version"])
    assert second == first + 1
    assert f"candidate {second}.0 vs {first}.0" in out["canary_verdict"]  # compared with the serving champion
    aliases = client.get_registered_model("iwarp").aliases
    ts = ServerHandle.load(home / "serve").client()
    if out["promoted"]:
        assert aliases == {"champion": str(second)}
        assert ts.default_version("iwarp") == f"{second}.0"
        assert f"{first}.0" in ts.versions("iwarp")  # kept for rollback
    else:
        assert aliases == {"champion": str(first)}
        assert ts.default_version("iwarp") == f"{first}.0"
        assert f"{second}.0" not in ts.versions("iwarp")
    assert client.get_model_version("iwarp", str(second)).tags["canary_verdict"] in ("promote", "rollback")


def test_failed_training_stops_the_run_and_fails_the_sweep_run(full_run, home):
    """A training that cannot start (an invalid override) fails the run at the train step,
    says why, leaves the sweep's MLflow parent run FAILED and registers nothing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(full_run.mlflow_url)
    versions_before = {v.version for v in client.search_model_versions("name='iwarp'")}
    # a given detector (the keypoint stage copies it): the run gets to the variants quickly
    result = run_local(
        options(home, overrides=["optim.steps=-5"], keypoints_from=SHIPPED_FOMM), Console(file=io.StringIO())
    )
    assert not result.ok and result.failed_task == "train-model"
    assert "training of variant" in result.error
    assert "optim.steps must be >= 1" in result.error  # the trainer's own message, passed on
    assert result.data_docs is None  # not a data problem
    exp = client.get_experiment_by_name("iwarp")
    (parent,) = client.search_runs(
        [exp.experiment_id],
        "tags.`iwarp.kind` = 'ablation-sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert parent.info.status == "FAILED"
    assert {v.version for v in client.search_model_versions("name='iwarp'")} == versions_before


def test_invalid_data_stops_at_validation(full_run, home, tmp_path):
    """Videos far too short for k sources + a driving frame: validation fails, the Data Docs
    are there, nothing new is registered, and the services are reused."""
    from mlflow.tracking import MlflowClient

    from iwarp.data import SynthConfig, make_synth_dataset

    bad = tmp_path / "bad-raw"  # 4-frame clips: fewer than k_max sources + a driving frame
    make_synth_dataset(
        bad,
        SynthConfig(num_identities=4, videos_per_identity=1, num_frames=4, format="mp4"),
        overwrite=True,
        progress=False,
    )
    client = MlflowClient(full_run.mlflow_url)
    versions_before = {v.version for v in client.search_model_versions("name='iwarp'")}
    mlflow_before = MlflowServer(home).running()

    result = run_local(options(home, data=str(bad)), Console(file=io.StringIO()))
    assert not result.ok
    assert result.failed_task == "data-gate"
    assert "too_short" in result.error or "data validation failed" in result.error
    assert result.data_docs is not None and result.data_docs.is_file()  # the KFP HTML artifact
    html = result.data_docs.read_text()
    assert "Data validation FAILED" in html and "too_short" in html and "expect_column_values_to_be_between" in html
    assert (result.data_docs.parent / "data_docs_site" / "index.html").is_file()  # the full GX site
    assert {v.version for v in client.search_model_versions("name='iwarp'")} == versions_before
    assert MlflowServer(home).running().pid == mlflow_before.pid  # reused, not restarted
    # nothing ran past the gate: no new parent run was opened
    assert not list(result.run_dir.rglob("open-parent-run/executor_output.json"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(result.data_docs, ARTIFACTS / "invalid-data-docs.html")
