"""Data steps: a DVC workspace (pull / repro / push, data version), Great Expectations
validation with its Data Docs bundled for KFP, and the gate."""

import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def project_file(name: str) -> Path:
    from components.steps.training import project_dir

    path = project_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found in the project directory {project_dir()} (set IWARP_PROJECT_DIR)")
    return path


def dvc(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the DVC CLI in `workspace`. Stage commands call `python`: make it this interpreter."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }
    print(f"[dvc] dvc {' '.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if proc.stdout.strip():
        print(proc.stdout.rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise RuntimeError(dvc_failure(args, proc.returncode, proc.stdout, workspace))
    return proc


def dvc_failure(args: tuple[str, ...], code: int, output: str, workspace: Path) -> str:
    """One line for a failed DVC command: DVC's own summary (its last `ERROR:` line) and the
    first cause it gave, e.g. an unreachable S3 endpoint, instead of one line per file."""
    errors = [line.removeprefix("ERROR:").strip() for line in output.splitlines() if line.startswith("ERROR")]
    detail = f": {errors[-1]}" if errors else ""
    cause = next((e.split(" - ", 1)[1] for e in errors[:-1] if " - " in e), "")
    if cause:
        detail += f" (first cause: {cause[:300]})"
    return f"`dvc {' '.join(args)}` failed (exit {code}) in {workspace}{detail}"


def init_workspace(workspace: Path, remote: str, endpoint_url: str) -> None:
    """A DVC project holding the repository's stages (dvc.yaml, params.yaml and the code they
    depend on), without git: its dvc.lock is what makes the next `dvc repro` skip."""
    workspace.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(project_file(name), workspace / name)
    # The stages hash their code (iwarp/data/*.py) and run `python -m iwarp.data` from here.
    shutil.copytree(
        project_file("iwarp"),
        workspace / "iwarp",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    if not (workspace / ".dvc").is_dir():
        dvc(workspace, "init", "--no-scm", "-q")
    dvc(workspace, "remote", "add", "--default", "--force", "pipeline", remote)
    if endpoint_url:
        dvc(workspace, "remote", "modify", "pipeline", "endpointurl", endpoint_url)


# Where the main job's data comes from (pipeline parameter `data_source`).
DATA_SOURCES = ("faces", "synth", "videos")
# The DVC stage that makes each source's training set and what it writes (dvc.yaml).
FACES_OUTS = {"dataset": "data/faces/general", "personal": "data/faces/personal"}
PREPARED = "data/prepared"


def set_params(
    workspace: Path, data_source: str, raw_input: str, image_size: int, overrides: list[str]
) -> dict[str, Any]:
    """This run's params.yaml: the repository's, plus the data source, input, size and
    `section.key=value` overrides. A key the stages do not know fails here, not halfway through
    `dvc repro`. Face checks run on face data: the real faces, or videos cropped with
    `prepare.crop=face` (the synthetic heads are not faces); an override still wins."""
    import yaml

    params = yaml.safe_load(project_file("params.yaml").read_text())
    params["dataset"] = FACES_OUTS["dataset"] if data_source == "faces" else PREPARED
    params["prepare"]["input"] = raw_input or params["prepare"]["input"]
    for section in ("faces", "prepare", "validate"):  # the repo's file ties them with a YAML alias
        params[section]["image_size"] = int(image_size)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name or not isinstance(params.get(section), dict) or name not in params[section]:
            raise ValueError(f"data_params entries look like section.key=value with a key of params.yaml, got {item!r}")
        params[section][name] = yaml.safe_load(value)
    if not any(item.startswith("validate.face_dataset=") for item in overrides):
        params["validate"]["face_dataset"] = data_source == "faces" or (
            data_source == "videos" and params["prepare"]["crop"] == "face"
        )
    if not any(item.startswith("validate.landmarks=") for item in overrides):
        params["validate"]["landmarks"] = data_source == "faces" and bool(params["faces"]["landmarks"])
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def check_source(data_source: str, raw_data: str) -> None:
    if data_source not in DATA_SOURCES:
        raise ValueError(f"data_source must be one of {', '.join(DATA_SOURCES)}, got {data_source!r}")
    if (data_source == "videos") != bool(raw_data):
        raise ValueError(
            "raw_data (a folder or s3:// prefix of videos) goes with data_source=videos, and only with it; "
            f"got data_source={data_source!r}, raw_data={raw_data!r}"
        )


def stage_raw_data(raw_data: str, workspace: Path, endpoint_url: str) -> str:
    """The `prepare.input` for this run: a local folder as is, an s3:// prefix downloaded into
    the workspace, or DVC's own `synth` stage (data/synth) when no data is given."""
    if not raw_data:
        return "data/synth"
    if raw_data.startswith("s3://"):
        from iwarp.data import s3

        local = workspace / "data" / "raw"
        shutil.rmtree(local, ignore_errors=True)
        n = s3.download_dir(raw_data, local, endpoint_url=endpoint_url or None)
        print(f"[preprocess] downloaded {n} files from {raw_data}", flush=True)
        return "data/raw"
    path = Path(raw_data).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {raw_data}")
    return str(path)


def data_version(workspace: Path, out: str = PREPARED) -> str:
    """The DVC content hash of one stage output (a dataset folder), from dvc.lock."""
    import yaml

    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for o in stage.get("outs", []):
            if o["path"] == out:
                return str(o["md5"]).removesuffix(".dir")
    raise RuntimeError(f"dvc.lock in {workspace} has no output {out}")


def run_preprocess(
    data_source: str,
    raw_data: str,
    dvc_remote: str,
    endpoint_url: str,
    workspace: str,
    image_size: int,
    data_params: list[str],
    dataset_path: str,
    personal_path: str,
) -> tuple[str, dict[str, Any], str]:
    """`dvc repro` of the source's stage, `dvc push`; copies the training set to `dataset_path`
    and, for the real faces, the personal set to `personal_path` (else that folder stays empty).
    Returns (data version of the training set, params, data version of the personal set or "")."""
    check_source(data_source, raw_data)
    if not dvc_remote:
        raise ValueError("dvc_remote is required (s3://bucket/prefix or a directory)")
    ws = Path(workspace) if workspace else Path(tempfile.mkdtemp(prefix="iwarp-dvc-"))
    init_workspace(ws, dvc_remote, endpoint_url)
    raw_input = stage_raw_data(raw_data, ws, endpoint_url) if data_source != "faces" else ""
    params = set_params(ws, data_source, raw_input, image_size, data_params)
    # Outputs recorded in dvc.lock but absent here (a fresh node) come back from the remote,
    # so `repro` can skip; on a first run the remote is empty and pull has nothing to fetch.
    if (ws / "dvc.lock").exists():
        dvc(ws, "pull", "--allow-missing", check=False)
    stage = "faces" if data_source == "faces" else "prepare"
    dvc(ws, "repro", stage)
    dvc(ws, "push", stage)
    train_out = params["dataset"]
    version = data_version(ws, train_out)
    shutil.copytree(ws / train_out, dataset_path, dirs_exist_ok=True)
    personal = ""
    Path(personal_path).mkdir(parents=True, exist_ok=True)
    if data_source == "faces":
        personal = data_version(ws, FACES_OUTS["personal"])
        shutil.copytree(ws / FACES_OUTS["personal"], personal_path, dirs_exist_ok=True)
    print(
        f"[preprocess] {data_source}: data version {version}"
        + (f", personal set {personal}" if personal else "")
        + f" (pushed to {dvc_remote})",
        flush=True,
    )
    return version, params, personal


def validation_config(params: dict[str, Any]):
    """The `validate:` section preprocessing ran with (else the project's params.yaml)."""
    import yaml

    from iwarp.config import from_dict
    from iwarp.data.validate import ValidationConfig

    if not params:
        params = yaml.safe_load(project_file("params.yaml").read_text())
    return from_dict(ValidationConfig, dict(params.get("validate") or {}))


def run_validation(dataset: str, params: dict[str, Any], docs_html: str, site_dir: str, result_path: str) -> bool:
    from iwarp.data import validate_dataset

    report = validate_dataset(dataset, validation_config(params), docs_dir=site_dir, result_path=result_path)
    print(report.summary(), flush=True)
    Path(docs_html).write_text(bundle_data_docs(Path(site_dir), json.loads(Path(result_path).read_text())))
    return report.success


def bundle_data_docs(site: Path, result: dict[str, Any]) -> str:
    """KFP shows an HTML artifact as one file: the verdict, then each Great Expectations
    validation page of the site inlined (its own styling loads from the CDN it names)."""
    verdict = "PASSED" if result["success"] else "FAILED"
    rows = "".join(
        f"<tr><td>{html.escape(f['check'])}</td><td><code>{html.escape(f['expectation'])}</code></td>"
        f"<td>{html.escape(f['description'])}</td>"
        f"<td>{html.escape(', '.join(f['videos'][:20]) or f['observed'])}</td></tr>"
        for f in result["failures"]
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>iwarp data validation: {verdict}</title></head>",
        "<body style='font-family:sans-serif'>",
        f"<h1>Data validation {verdict}</h1><p>{result['videos']} videos in {html.escape(result['data'])}</p>",
    ]
    if rows:
        parts.append(
            "<h2>Failed expectations</h2><table border='1' cellpadding='4'><tr><th>check</th>"
            f"<th>expectation</th><th>what</th><th>failing videos / observed</th></tr>{rows}</table>"
        )
    for page in sorted((site / "validations").rglob("*.html")):
        parts.append(
            f"<h2>{html.escape(page.parent.parent.parent.name)}</h2>"
            f"<iframe style='width:100%;height:900px;border:1px solid #ccc' "
            f'srcdoc="{html.escape(page.read_text(), quote=True)}"></iframe>'
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def check_gate(validation_path: str) -> None:
    result = json.loads(Path(validation_path).read_text())
    if result["success"]:
        print("[gate] data validation passed", flush=True)
        return
    lines = [
        f"- [{f['check']}] {f['expectation']}: {f['description']}"
        + (f"; videos: {', '.join(f['videos'][:10])}" if f["videos"] else f"; {f['observed']}")
        for f in result["failures"]
    ]
    raise RuntimeError("data validation failed, stopping the pipeline:\n" + "\n".join(lines))
