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
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    print(f"[dvc] dvc {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.stdout.strip():
        print(proc.stdout.rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}) in {workspace}")
    return proc


def init_workspace(workspace: Path, remote: str, endpoint_url: str) -> None:
    """A DVC project holding the repository's stages (dvc.yaml, params.yaml and the code they
    depend on), without git: its dvc.lock is what makes the next `dvc repro` skip."""
    workspace.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(project_file(name), workspace / name)
    # The stages hash their code (iwarp/data/*.py) and run `python -m iwarp.data` from here.
    shutil.copytree(project_file("iwarp"), workspace / "iwarp", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not (workspace / ".dvc").is_dir():
        dvc(workspace, "init", "--no-scm", "-q")
    dvc(workspace, "remote", "add", "--default", "--force", "pipeline", remote)
    if endpoint_url:
        dvc(workspace, "remote", "modify", "pipeline", "endpointurl", endpoint_url)


def set_params(workspace: Path, raw_input: str, image_size: int, overrides: list[str]) -> dict[str, Any]:
    """This run's params.yaml: the repository's, plus the input, size and `section.key=value`
    overrides. A key the stages do not know fails here, not halfway through `dvc repro`."""
    import yaml

    params = yaml.safe_load(project_file("params.yaml").read_text())
    params["prepare"]["input"] = raw_input
    params["prepare"]["image_size"] = int(image_size)
    params["validate"]["image_size"] = int(image_size)  # the repo's file ties them with a YAML alias
    for item in overrides:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name or section not in params or name not in params[section]:
            raise ValueError(f"data_params entries look like section.key=value with a key of params.yaml, got {item!r}")
        params[section][name] = yaml.safe_load(value)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


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


def data_version(workspace: Path, out: str = "data/prepared") -> str:
    """The DVC content hash of the prepared dataset, from dvc.lock."""
    import yaml

    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    for o in lock["stages"]["prepare"]["outs"]:
        if o["path"] == out:
            return str(o["md5"]).removesuffix(".dir")
    raise RuntimeError(f"dvc.lock in {workspace} has no output {out}")


def run_preprocess(raw_data: str, dvc_remote: str, endpoint_url: str, workspace: str, image_size: int,
                   data_params: list[str], dataset_path: str) -> tuple[str, dict[str, Any]]:
    if not dvc_remote:
        raise ValueError("dvc_remote is required (s3://bucket/prefix or a directory)")
    ws = Path(workspace) if workspace else Path(tempfile.mkdtemp(prefix="iwarp-dvc-"))
    init_workspace(ws, dvc_remote, endpoint_url)
    params = set_params(ws, stage_raw_data(raw_data, ws, endpoint_url), image_size, data_params)
    # Outputs recorded in dvc.lock but absent here (a fresh node) come back from the remote,
    # so `repro` can skip; on a first run the remote is empty and pull has nothing to fetch.
    if (ws / "dvc.lock").exists():
        dvc(ws, "pull", "--allow-missing", check=False)
    dvc(ws, "repro", "prepare")
    dvc(ws, "push")
    version = data_version(ws)
    shutil.copytree(ws / "data" / "prepared", dataset_path, dirs_exist_ok=True)
    print(f"[preprocess] data version {version} (pushed to {dvc_remote})", flush=True)
    return version, params


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
        f"<td>{html.escape(f['description'])}</td><td>{html.escape(', '.join(f['videos'][:20]) or f['observed'])}</td></tr>"
        for f in result["failures"])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>iwarp data validation: {verdict}</title></head>",
             "<body style='font-family:sans-serif'>",
             f"<h1>Data validation {verdict}</h1><p>{result['videos']} videos in {html.escape(result['data'])}</p>"]
    if rows:
        parts.append("<h2>Failed expectations</h2><table border='1' cellpadding='4'><tr><th>check</th>"
                     f"<th>expectation</th><th>what</th><th>failing videos / observed</th></tr>{rows}</table>")
    for page in sorted((site / "validations").rglob("*.html")):
        parts.append(f"<h2>{html.escape(page.parent.parent.parent.name)}</h2>"
                     f"<iframe style='width:100%;height:900px;border:1px solid #ccc' "
                     f"srcdoc=\"{html.escape(page.read_text(), quote=True)}\"></iframe>")
    parts.append("</body></html>")
    return "\n".join(parts)


def check_gate(validation_path: str) -> None:
    result = json.loads(Path(validation_path).read_text())
    if result["success"]:
        print("[gate] data validation passed", flush=True)
        return
    lines = [f"- [{f['check']}] {f['expectation']}: {f['description']}"
             + (f"; videos: {', '.join(f['videos'][:10])}" if f["videos"] else f"; {f['observed']}")
             for f in result["failures"]]
    raise RuntimeError("data validation failed, stopping the pipeline:\n" + "\n".join(lines))
