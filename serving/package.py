"""Checkpoint -> TorchServe model archive (`iwarp.mar`).

    iwarp serve package --checkpoint runs/x/step-1000.ckpt --version 1.0 --out model_store

The archive holds:
    handler.py            serving/handler.py (self-contained; entry point `handle`)
    iwarp_framing.py      iwarp/framing.py, the face framing the handler imports (self-contained too)
    model-config.yaml     TorchServe batching/workers/timeout + the handler's limits and cache
    export/               the torch.export programs and export.json (serving.export)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from iwarp import framing
from iwarp.errors import IwarpError
from serving.config import ServeConfig, load_serve_config

HANDLER = Path(__file__).with_name("handler.py")
FRAMING = Path(framing.__file__)
FRAMING_MODULE = "iwarp_framing"  # its name beside the handler (serving/handler.py `framing()`)


class PackageError(IwarpError, RuntimeError):
    pass


def _image_size(model: Any, model_config: dict[str, Any], override: tuple[int, int] | None) -> tuple[int, int]:
    if override:
        return int(override[0]), int(override[1])
    for obj in (model_config, getattr(model, "config", None)):
        for key in ("image_size", "size", "resolution"):
            value = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
            if isinstance(value, int):
                return value, value
            if isinstance(value, (list, tuple)) and len(value) == 2:
                return int(value[0]), int(value[1])
    raise PackageError("cannot tell the model's image size from its config; pass --image-size H W")


def model_config_yaml(cfg: ServeConfig) -> dict[str, Any]:
    """TorchServe's per-model YAML (camelCase keys are TorchServe's) + our handler section."""
    m = cfg.model
    return {
        "minWorkers": m.workers,
        "maxWorkers": m.workers,
        "batchSize": m.batch_size,
        "maxBatchDelay": m.max_batch_delay_ms,
        "responseTimeout": m.response_timeout_s,
        "handler": asdict(cfg.handler),
    }


def package(
    checkpoint: str | Path, version: str, out: str | Path, *, metadata: dict[str, Any] | None = None, **options: Any
) -> Path:
    """Export the checkpoint's generator and archive it as `<out>/<archive_name>.mar`
    (default archive name: the model name, `iwarp`). Returns the archive path. `options` are
    `package_model`'s (config, archive_name, force, image_size); `metadata` adds to the
    checkpoint's provenance."""
    from iwarp.checkpoint import load_checkpoint, model_from_payload, resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)  # a file, or a shipped model's name
    ckpt = load_checkpoint(checkpoint)
    meta = {
        "model_kind": ckpt.get("model_kind"),
        "model_config": ckpt.get("model_config") or {},
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "step": ckpt.get("step"),
        **(metadata or {}),
    }
    model = model_from_payload(ckpt, source=str(checkpoint))  # one read + hash check, not two
    del ckpt  # optimizer state etc. is not needed any more
    return package_model(model, version, out, metadata=meta, **options)


def package_model(
    model: Any,
    version: str,
    out: str | Path,
    *,
    config: ServeConfig | None = None,
    archive_name: str | None = None,
    force: bool = False,
    image_size: tuple[int, int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export an in-memory generator and archive it (see `package`)."""
    import torch

    from serving.export import export_generator
    from serving.tools import find_executable

    cfg = config or load_serve_config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archive_name = archive_name or cfg.model.name
    target = out / f"{archive_name}.mar"
    if target.exists() and not force:
        raise PackageError(f"{target} exists; pass --force to overwrite or choose another --archive-name")
    version = str(version)
    if not version or any(c in version for c in "/ \\?&#%"):
        raise PackageError(f"invalid version {version!r}: use something like 1.0 or 2024-06-01")
    meta = dict(metadata or {})
    size = _image_size(model, meta.get("model_config") or {}, image_size)
    meta.update(model_name=cfg.model.name, version=version)
    with tempfile.TemporaryDirectory(prefix="iwarp-package-") as tmp:
        tmp = Path(tmp)
        stage = tmp / "stage"
        with torch.no_grad():
            export_generator(model.eval(), stage / "export", size, max_sources=cfg.handler.max_sources, metadata=meta)
        shutil.copyfile(FRAMING, stage / f"{FRAMING_MODULE}.py")
        config_file = tmp / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(model_config_yaml(cfg), sort_keys=False))
        cmd = [
            find_executable("torch-model-archiver", PackageError, "install torch-model-archiver==0.12.0"),
            "--model-name", archive_name,
            "--version", version,
            "--handler", str(HANDLER),
            "--extra-files", str(stage),
            "--config-file", str(config_file),
            "--export-path", str(tmp),
            "--force",
        ]  # fmt: skip
        # The archiver stages files in $TMPDIR/<model-name> and deletes that folder first:
        # a private TMPDIR keeps two concurrent packagings from clobbering each other.
        env = {**os.environ, "TMPDIR": str(tmp)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        built = tmp / f"{archive_name}.mar"
        if proc.returncode != 0 or not built.is_file():
            detail = proc.stderr.strip() or proc.stdout.strip()
            raise PackageError(f"torch-model-archiver failed ({proc.returncode}): {detail}")
        # Move into place atomically so a running TorchServe never sees a half-written archive.
        partial = out / f".{archive_name}.mar.partial"
        shutil.copyfile(built, partial)
        os.replace(partial, target)
    return target


def read_mar(mar: str | Path) -> dict[str, Any]:
    """Model name, version and export metadata of an archive, without extracting it."""
    mar = Path(mar)
    try:
        with zipfile.ZipFile(mar) as z:
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
            export = json.loads(z.read("export/export.json"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise PackageError(f"{mar} is not an iwarp model archive: {exc}") from exc
    model = manifest.get("model", {})
    return {
        "model_name": model.get("modelName"),
        "version": str(model.get("modelVersion")),
        "handler": model.get("handler"),
        "export": export,
    }
