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
BASELINE = "iwarp-faces-64-fomm"  # the FOMM reference baseline, trained with the same recipe
LARGE = "iwarp-faces-128"  # the same model one level finer, fine-tuned from NAME at 128 px
SHIPPED = {NAME: "implicit", BASELINE: "baseline", LARGE: "implicit"}


def real_face(size: int) -> torch.Tensor:
    face = Image.open(feat_data_dir() / "single_face.jpg").convert("RGB").crop((150, 60, 450, 360)).resize((size, size))
    return torch.from_numpy(np.asarray(face)).permute(2, 0, 1).float().div(255)[None]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_loads_verified_and_animates_a_real_face(name: str) -> None:
    path = resolve_checkpoint(name)
    assert path == MODELS / f"{name}.ckpt" and path.stat().st_size < 50 << 20
    payload = load_checkpoint(path)  # SHA-256 verified
    assert payload["model_kind"] == SHIPPED[name] and "optimizers" not in payload
    model = load_model(path)
    frame = real_face(model.config.image_size)
    with torch.no_grad():
        out = model(frame[None], frame)["prediction"]
    assert out.shape == (1, 3, *frame.shape[-2:]) and torch.isfinite(out).all()
    assert (out - frame).abs().mean() < 0.15  # a source driven by itself comes back close to itself


def test_shipped_baseline_is_first_order_and_animates_a_moved_face() -> None:
    """FOMM's Jacobians are live in the shipped baseline, and relative motion with them moves the
    face: a shifted driving frame gives an output that follows the shift."""
    from iwarp.keypoints import relative_keypoints

    model = load_model(resolve_checkpoint(BASELINE))
    assert model.config.motion == "first_order"
    frame = real_face(model.config.image_size)
    shifted = torch.roll(frame, shifts=4, dims=-1)
    with torch.no_grad():
        kp, kp_shifted = model.detect_keypoints(frame), model.detect_keypoints(shifted)
        assert not torch.allclose(kp.jacobian, torch.eye(2).expand_as(kp.jacobian), atol=0.05)  # trained, not identity
        moved = relative_keypoints(kp, kp_shifted, kp)
        out = model.animate(model.encode_sources(frame[None]), driving_keypoints=moved).prediction
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the rolled-in border
    assert (out - shifted)[inner].abs().mean() < (frame - shifted)[inner].abs().mean()


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
        BASELINE,
        "configs/keypoints-faces-64.yaml",
        "iwarp data faces",
        "iwarp train --config configs/faces-64.yaml",
        LARGE,
        "iwarp train --config configs/faces-128.yaml",
        "copy",
        "L1",
        "LPIPS",
        "Limits",
    ):
        assert needed in card, needed
    for name in (NAME, LARGE):
        assert (MODELS / name / "results.json").is_file()  # bench/faces_quality.py's output for the card
        for picture in ("strip.png", "attention.png"):
            assert (MODELS / name / picture).is_file() and f"{name}/{picture}" in card
    assert (MODELS / BASELINE / "strip.png").is_file() and f"{BASELINE}/strip.png" in card


def test_save_release_keeps_weights_drops_training_state(tmp_path) -> None:
    src = load_checkpoint(MODELS / f"{NAME}.ckpt")
    full = {**src, "optimizers": {"generator": {"state": {}, "param_groups": []}}, "rng": []}
    from iwarp.checkpoint import save_checkpoint

    save_checkpoint(full, tmp_path / "full.ckpt")
    release = load_checkpoint(save_release(tmp_path / "full.ckpt", tmp_path / "release.ckpt"))
    assert "optimizers" not in release and "rng" not in release
    assert all(torch.equal(release["model"][k], v) for k, v in src["model"].items())
