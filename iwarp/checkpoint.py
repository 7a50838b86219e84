"""Checkpoint files that are written atomically and verified on load.

Layout: 8-byte magic, 8-byte little-endian payload length, 32-byte SHA-256 of the payload,
then the payload (`torch.save` of a dict). A truncated or bit-flipped file fails the length
or hash check with `CheckpointError` instead of loading garbage weights. Payloads hold only
tensors and plain Python values so they load with `weights_only=True` (no pickle execution).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from iwarp.errors import InputError

if TYPE_CHECKING:  # the model modules load lazily (serving imports this module)
    from iwarp.models import GeneratorModel

MAGIC = b"IWARPCK1"
_HEADER = struct.Struct("<8sQ32s")


class CheckpointError(InputError, RuntimeError):
    """The file is missing, truncated, corrupt or not an iwarp checkpoint."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous file at that
    path, and every other checkpoint, is untouched and no temp file is left behind."""

    exit_code = 1  # the machine's fault (disk full, read-only), not the input's


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write `payload` to `path` atomically (temp file in the same folder, fsync, rename).

    An OSError on the way (ENOSPC, EROFS, ...) becomes one-line `CheckpointWriteError`; the temp
    file is removed and the old `path`, if any, stays as it was."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    header = _HEADER.pack(MAGIC, len(data), hashlib.sha256(data).digest())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, header, data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {reason} (errno {exc.errno}); the previous checkpoints are untouched"
        ) from exc
    return path


def _write_atomically(path: Path, header: bytes, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    raw = path.read_bytes()
    if len(raw) < _HEADER.size:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(raw)} bytes, header needs {_HEADER.size})")
    magic, length, digest = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CheckpointError(f"{path} is not an iwarp checkpoint (bad magic {magic!r})")
    data = raw[_HEADER.size :]
    if len(data) != length:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(data)} of {length} payload bytes")
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 mismatch")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # verified bytes that still fail to unpickle: wrong writer
        raise CheckpointError(f"checkpoint {path} could not be decoded: {exc}") from exc


MODELS_ENV = "IWARP_MODELS_DIR"


def models_dir() -> Path:
    """Where shipped models live: `$IWARP_MODELS_DIR`, else `models/` at the repository root."""
    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """An existing file as is; else a bare name (`iwarp-faces-64`) as `<models dir>/<name>.ckpt`.

    A miss raises a one-line `CheckpointError` that lists the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    folder = models_dir()
    if text and "/" not in text and os.sep not in text:
        shipped = folder / (text if text.endswith(".ckpt") else f"{text}.ckpt")
        if shipped.is_file():
            return shipped
    names = sorted(p.stem for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    available = ", ".join(names) if names else "none"
    raise CheckpointError(
        f"checkpoint not found: {text} (not a file, nor a shipped model in {folder}; available: {available})"
    )


RELEASE_KEYS = (
    "format_version",
    "model_kind",
    "model_config",
    "model",
    "discriminator",
    "step",
    "train_config",
    "metrics",
    "release_overrides",
)


def save_release(src: str | Path, dst: str | Path, model_config: dict[str, Any] | None = None) -> Path:
    """A checkpoint to ship: the generator (and discriminator, for fine-tuning with a GAN) with
    its config and provenance, without optimizer, RNG and sampler state (a third of the size; it
    cannot `--resume`, it can `--init-from`). Verified on read and written like any checkpoint.

        python -c "from iwarp.checkpoint import save_release as s; s('runs/x/checkpoints/final.ckpt', 'models/x.ckpt')"

    `model_config` overrides inference-only fields of the stored model config (e.g.
    `{"source_selection": "region"}`); one that changes a tensor's shape fails to load and is refused.
    """
    payload = load_checkpoint(src)
    release = {k: payload[k] for k in RELEASE_KEYS if k in payload}
    if model_config:
        release["model_config"] = {**payload["model_config"], **model_config}
        # provenance: what differs from the trained config
        release["release_overrides"] = {**payload.get("release_overrides", {}), **model_config}
    release["model"] = {k: v.contiguous() for k, v in payload["model"].items()}  # channels_last-free
    model_from_payload(release, source=str(src))  # refuse to ship what does not load
    return save_checkpoint(release, dst)


def latest_checkpoint(directory: str | Path, pattern: str = "step-*.ckpt") -> Path | None:
    """Newest checkpoint in `directory` by step number, or None."""
    files = sorted(Path(directory).glob(pattern), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or 0))
    return files[-1] if files else None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> GeneratorModel:
    """The generator stored in a checkpoint, rebuilt from its saved config, in eval mode."""
    return model_from_payload(load_checkpoint(path, map_location), source=str(path))


def model_from_payload(ckpt: dict[str, Any], source: str = "checkpoint") -> GeneratorModel:
    """The generator of an already loaded (verified) checkpoint payload, in eval mode."""
    from iwarp.models import build_model  # deferred: keeps this module light for serving

    try:
        kind, cfg, state = ckpt["model_kind"], ckpt["model_config"], ckpt["model"]
    except KeyError as exc:
        raise CheckpointError(f"{source} lacks {exc}; was it written by `iwarp train`?") from exc
    model = build_model(kind, cfg)
    model.load_state_dict(state)
    return model.eval()
