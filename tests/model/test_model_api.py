"""Public model API: shapes, gradients, caching, keypoints, configs and input errors."""

from __future__ import annotations

import pytest
import torch

from iwarp import (
    ExplicitFlowBaseline,
    ExplicitFlowConfig,
    ImplicitWarping,
    ImplicitWarpingConfig,
    Keypoints,
    SourceCache,
)
from iwarp.config import ConfigError, load_config, to_dict
from iwarp.models import MODEL_KINDS, build_model

torch.set_num_threads(1)  # a shared 2-core CI box: 2 OpenMP threads under contention run 10-20x slower

TINY = {"implicit": ImplicitWarpingConfig.tiny, "baseline": ExplicitFlowConfig.tiny}


def tiny_model(kind: str, size: int = 64, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(kind, TINY[kind](image_size=size, **overrides))


def images(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_shapes_and_gradients_64(kind: str, k: int) -> None:
    model = tiny_model(kind).train()
    sources = images(2, k, 3, 64, 64).requires_grad_()
    driving = images(2, 3, 64, 64, seed=2)
    out = model(sources, driving)
    assert out.prediction.shape == (2, 3, 64, 64)
    assert out["prediction"] is out.prediction
    assert 0 <= out.prediction.min() and out.prediction.max() <= 1
    n = model.config.keypoints.num_keypoints
    assert out.driving_keypoints.xy.shape == (2, n, 2) and out.driving_keypoints.strength.shape == (2, n)
    assert out.source_keypoints.xy.shape == (2, k, n, 2) and out.source_keypoints.strength.shape == (2, k, n)
    out.prediction.square().mean().backward()
    assert sources.grad is not None and sources.grad.abs().sum() > 0
    # every parameter that shapes the prediction receives a finite, non-zero gradient somewhere
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]
    for part in ("keypoint_detector", "decoder"):
        assert any(g.abs().sum() > 0 for name, g in grads.items() if name.startswith(part)), part


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_shapes_and_gradients_256(kind: str, k: int) -> None:
    """The full 256x256 resolution with a tiny-width config, batch 1 (keeps CPU time low)."""
    model = tiny_model(kind, 256).train()
    sources = images(1, k, 3, 256, 256).requires_grad_()
    out = model(sources, images(1, 3, 256, 256, seed=2))
    assert out.prediction.shape == (1, 3, 256, 256)
    out.prediction.mean().backward()
    assert torch.isfinite(sources.grad).all() and sources.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_cached_sources_equal_uncached(kind: str) -> None:
    model = tiny_model(kind).eval()
    sources, driving = images(2, 3, 3, 64, 64), images(2, 3, 64, 64, seed=2)
    with torch.no_grad():
        direct = model(sources, driving).prediction
        cache = model.encode_sources(sources)
        frames = [model.animate(cache, driving[i : i + 1].expand(2, -1, -1, -1)).prediction for i in range(2)]
    torch.testing.assert_close(model.animate(cache, driving).prediction, direct)
    # animating several frames from one cache: each frame is its own, correct result
    torch.testing.assert_close(frames[0][0], direct[0])
    torch.testing.assert_close(frames[1][1], direct[1])


def test_source_cache_is_plain_tensors() -> None:
    cache = tiny_model("implicit").encode_sources(images(2, 3, 3, 64, 64))
    assert isinstance(cache, SourceCache)
    assert all(isinstance(t, torch.Tensor) for t in cache)
    assert cache.source_xy.shape[:2] == (2, 3)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_driving_keypoints_path_equals_image_path(kind: str) -> None:
    """`animate(cache, driving_keypoints=detect_keypoints(d))` is the image path; moved keypoints
    change the output (the relative-motion mode really uses them)."""
    model = tiny_model(kind).eval()
    sources, driving = images(1, 2, 3, 64, 64), images(1, 3, 64, 64, seed=2)
    with torch.no_grad():
        cache = model.encode_sources(sources)
        kp = model.detect_keypoints(driving)
        via_image = model.animate(cache, driving).prediction
        via_kp = model.animate(cache, driving_keypoints=kp).prediction
        moved = model.animate(cache, driving_keypoints=Keypoints(kp.xy + 0.3, kp.strength)).prediction
    torch.testing.assert_close(via_kp, via_image)
    assert (moved - via_image).abs().max() > 1e-4


def test_keypoints_in_range() -> None:
    model = tiny_model("implicit")
    kp = model.detect_keypoints(images(3, 3, 64, 64))
    assert isinstance(kp, Keypoints)
    assert kp.xy.shape == (3, 5, 2) and kp.xy.abs().max() <= 1
    assert ((kp.strength > 0) & (kp.strength < 1)).all()


def test_build_model_from_dict_and_dataclass_round_trip() -> None:
    cfg = ImplicitWarpingConfig.tiny()
    model = build_model("implicit", to_dict(cfg))
    assert isinstance(model, ImplicitWarping) and model.config == cfg
    base = build_model("baseline", to_dict(ExplicitFlowConfig.tiny()))
    assert isinstance(base, ExplicitFlowBaseline)
    assert set(MODEL_KINDS) == {"implicit", "baseline"}
    with pytest.raises(ConfigError):
        build_model("implicit", {"image_size": 64, "no_such_field": 1})
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("fomm", {})
    with pytest.raises(TypeError):
        build_model("implicit", ExplicitFlowConfig.tiny())


def test_configs_are_omegaconf_structured(tmp_path) -> None:
    """The training engineer nests these dataclasses in its own typed config."""
    path = tmp_path / "m.yaml"
    path.write_text("image_size: 128\nkeypoints:\n  num_keypoints: 12\n")
    cfg = load_config(ImplicitWarpingConfig, path, ["extra_kv=false", "decoder_channels=[64,32,16,8]"])
    assert cfg.image_size == 128 and cfg.keypoints.num_keypoints == 12 and cfg.extra_kv is False
    assert cfg.decoder_channels == [64, 32, 16, 8]
    assert load_config(ExplicitFlowConfig, None, ["image_size=64"]).image_size == 64


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_bad_inputs_raise_clear_errors(kind: str) -> None:
    model = tiny_model(kind)
    with pytest.raises(ValueError, match=r"\(B, k, 3, H, W\)"):
        model(images(1, 3, 64, 64), images(1, 3, 64, 64))  # forgot the k axis
    with pytest.raises(ValueError, match="64x64"):
        model(images(1, 1, 3, 32, 32), images(1, 3, 32, 32))
    with pytest.raises(ValueError, match="driving"):
        model.animate(model.encode_sources(images(1, 1, 3, 64, 64)))


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ImplicitWarping(ImplicitWarpingConfig.tiny(image_size=100))
    with pytest.raises(ValueError, match="power of two"):
        ImplicitWarping(ImplicitWarpingConfig.tiny(token_stride=6))
    assert (
        ImplicitWarping(ImplicitWarpingConfig.tiny(image_size=96))(
            images(1, 1, 3, 96, 96), images(1, 3, 96, 96)
        ).prediction.shape[-1]
        == 96
    )
    with pytest.raises(ValueError, match="value_channels"):
        ImplicitWarping(ImplicitWarpingConfig.tiny(value_channels=[8, 16]))
