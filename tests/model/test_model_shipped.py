"""The shipped pretrained model (models/, with its model card): it loads by name through the
checkpoint integrity check, animates a real face frame at its size, and its card states what it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iwarp.checkpoint import CheckpointError, load_checkpoint, load_model, resolve_checkpoint, save_release
from iwarp.data.realfaces import feat_data_dir

MODELS = Path(__file__).resolve().parents[2] / "models"
NAME = "iwarp-faces-64"


def test_shipped_model_loads_verified_and_animates_a_real_face() -> None:
    path = resolve_checkpoint(NAME)
    assert path == MODELS / f"{NAME}.ckpt" and path.stat().st_size < 50 << 20
    payload = load_checkpoint(path)  # SHA-256 verified
    assert payload["model_kind"] == "implicit" and "optimizers" not in payload
    model = load_model(path)
    size = model.config.image_size
    face = Image.open(feat_data_dir() / "single_face.jpg").convert("RGB").crop((150, 60, 450, 360)).resize((size, size))
    frame = torch.from_numpy(np.asarray(face)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        out = model(frame[None], frame)["prediction"]
    assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()
    assert (out - frame).abs().mean() < 0.15  # a source driven by itself comes back close to itself


def test_a_damaged_copy_of_the_shipped_model_is_refused(tmp_path) -> None:
    data = bytearray((MODELS / f"{NAME}.ckpt").read_bytes())
    data[-100] ^= 0xFF
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)


def test_model_card_describes_the_shipped_model() -> None:
    card = (MODELS / "README.md").read_text()
    for needed in (
        NAME,
        "iwarp data faces",
        "iwarp train --config configs/faces-64.yaml",
        "copy",
        "L1",
        "LPIPS",
        "Limits",
    ):
        assert needed in card, needed
    for picture in ("strip.png", "attention.png"):
        assert (MODELS / NAME / picture).is_file() and f"{NAME}/{picture}" in card


def test_save_release_keeps_weights_drops_training_state(tmp_path) -> None:
    src = load_checkpoint(MODELS / f"{NAME}.ckpt")
    full = {**src, "optimizers": {"generator": {"state": {}, "param_groups": []}}, "rng": []}
    from iwarp.checkpoint import save_checkpoint

    save_checkpoint(full, tmp_path / "full.ckpt")
    release = load_checkpoint(save_release(tmp_path / "full.ckpt", tmp_path / "release.ckpt"))
    assert "optimizers" not in release and "rng" not in release
    assert all(torch.equal(release["model"][k], v) for k, v in src["model"].items())
