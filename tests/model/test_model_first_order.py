"""The FOMM baseline's first-order motion: Jacobians per keypoint, the sparse affine motions they
give, the Jacobian equivariance term and relative animation with Jacobians."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from iwarp.explicit_flow import ExplicitFlowBaseline, ExplicitFlowConfig, sparse_motions
from iwarp.keypoints import Keypoints, coordinate_grid, relative_keypoints
from iwarp.losses import LossConfig, equivariance_loss
from iwarp.training.animate import expand_cache
from iwarp.transforms import RandomTPS


def first_order_model(seed: int = 0) -> ExplicitFlowBaseline:
    """A tiny first-order baseline whose Jacobian head is random (not its identity init), so the
    tests exercise real Jacobians."""
    torch.manual_seed(seed)
    model = ExplicitFlowBaseline(ExplicitFlowConfig.tiny()).eval()
    with torch.no_grad():
        model.keypoint_detector.jacobian.weight.normal_(0, 0.3)
    return model


def face_like(b: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(b, 3, 8, 8, generator=g), size=size, mode="bilinear", align_corners=False)


def rotation(angle_deg: float, scale: float = 1.0) -> torch.Tensor:
    a = math.radians(angle_deg)
    return scale * torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def test_fresh_detector_predicts_identity_jacobians() -> None:
    torch.manual_seed(0)
    kp = ExplicitFlowBaseline(ExplicitFlowConfig.tiny()).detect_keypoints(face_like())
    assert kp.jacobian is not None and kp.jacobian.shape == (2, 5, 2, 2)
    torch.testing.assert_close(kp.jacobian, torch.eye(2).expand(2, 5, 2, 2))


def test_same_frame_gives_identity_motion_and_zero_flow() -> None:
    """Source = driving: every keypoint's J_src J_drv^-1 is I, each sparse motion is the identity
    grid, and so is their mix, the dense flow (zero displacement), whatever the Jacobians are."""
    model = first_order_model()
    image = face_like()
    kp = model.detect_keypoints(image)
    assert not torch.allclose(kp.jacobian, torch.eye(2).expand_as(kp.jacobian), atol=1e-2)  # real Jacobians
    grid = coordinate_grid(16, 16)
    torch.testing.assert_close(sparse_motions(kp, kp, grid), grid.expand(2, 5, 16, 16, 2), atol=1e-5, rtol=0)
    small = F.avg_pool2d(image, model.config.motion_stride)
    with torch.no_grad():
        flow, _ = model.dense_motion(small, kp, kp)
    torch.testing.assert_close(flow, grid.expand_as(flow), atol=1e-5, rtol=0)


def test_first_order_motion_recovers_a_known_affine_warp() -> None:
    """Keypoints related by an affine map T(z) = M z + t (positions p_s = T(p_d), Jacobians
    J_s = M J_d): every keypoint's sparse motion is T everywhere, so warping the source with it
    gives the image that T warps, which zeroth-order motion misses."""
    m, t = rotation(12, 1.1), torch.tensor([0.05, -0.08])
    g = torch.Generator().manual_seed(3)
    p_d = torch.rand(1, 5, 2, generator=g) * 1.2 - 0.6
    j_d = torch.eye(2) + 0.2 * torch.randn(1, 5, 2, 2, generator=g)
    ones = torch.ones(1, 5)
    drv = Keypoints(p_d, ones, j_d)
    src = Keypoints(p_d @ m.T + t, ones, m @ j_d)
    grid = coordinate_grid(32, 32)
    expected = grid @ m.T + t
    motions = sparse_motions(src, drv, grid)
    torch.testing.assert_close(motions, expected.expand_as(motions), atol=1e-5, rtol=0)

    image = face_like(1, 32)
    theta = torch.cat([m, t[:, None]], dim=1)[None]  # affine_grid applies the same map
    target = F.grid_sample(image, F.affine_grid(theta, (1, 3, 32, 32), align_corners=False), align_corners=False)
    warped = F.grid_sample(image, motions[:, 0], align_corners=False)
    assert (warped - target).abs().max() < 1e-4
    zeroth = sparse_motions(Keypoints(src.xy, ones), Keypoints(drv.xy, ones), grid)
    assert (F.grid_sample(image, zeroth[:, 0], align_corners=False) - target).abs().mean() > 0.01


def test_tps_jacobian_matches_finite_differences() -> None:
    tps = RandomTPS(3, sigma_affine=0.1, sigma_tps=0.05, generator=torch.Generator().manual_seed(0))
    p = torch.rand(3, 7, 2, dtype=torch.float64) * 1.8 - 0.9
    tps.theta, tps.control_params = tps.theta.double(), tps.control_params.double()
    eps = 1e-6
    numeric = torch.stack(
        [(tps.warp_coordinates(p + eps * e) - tps.warp_coordinates(p - eps * e)) / (2 * eps) for e in torch.eye(2)],
        dim=-1,
    )  # column j = dT/dp_j
    torch.testing.assert_close(tps.jacobian(p), numeric, atol=1e-6, rtol=1e-5)


def test_jacobian_equivariance_is_zero_for_the_identity_and_positive_otherwise() -> None:
    model = first_order_model()
    image = face_like()
    kp = model.detect_keypoints(image)
    still = LossConfig(equivariance_sigma_affine=0.0, equivariance_sigma_tps=0.0)
    position, jacobian = equivariance_loss(model, image, kp, still)
    assert position.item() < 1e-5 and jacobian.item() < 1e-5
    torch.manual_seed(0)
    _, moved = equivariance_loss(model, image, kp, LossConfig(equivariance_sigma_affine=0.2))
    assert moved.item() > 1e-3


def test_jacobian_equivariance_trains_only_first_order_detectors() -> None:
    from iwarp.implicit_warping import ImplicitWarping, ImplicitWarpingConfig

    implicit = ImplicitWarping(ImplicitWarpingConfig.tiny())
    image = face_like()
    _, jacobian = equivariance_loss(implicit, image, implicit.detect_keypoints(image), LossConfig())
    assert jacobian is None  # zeroth-order keypoints: no Jacobian term


def test_relative_jacobians_compose_and_reduce_to_translation_when_identity() -> None:
    g = torch.Generator().manual_seed(0)
    rand_kp = lambda b, jac: Keypoints(  # noqa: E731
        torch.rand(b, 5, 2, generator=g) - 0.5, torch.rand(b, 5, generator=g), jac
    )
    eye = torch.eye(2).expand(1, 5, 2, 2)
    src, first, drv = rand_kp(1, eye), rand_kp(1, eye), rand_kp(3, eye.expand(3, 5, 2, 2))
    moved = relative_keypoints(src, drv, first)
    torch.testing.assert_close(moved.xy, src.xy + drv.xy - first.xy)
    torch.testing.assert_close(moved.jacobian, eye.expand(3, 5, 2, 2))
    j_src, j_first, j_drv = rotation(10), rotation(-5, 0.9), rotation(20, 1.2)
    moved = relative_keypoints(
        Keypoints(src.xy, src.strength, j_src.expand(1, 5, 2, 2)),
        Keypoints(drv.xy, drv.strength, j_drv.expand(3, 5, 2, 2)),
        Keypoints(first.xy, first.strength, j_first.expand(1, 5, 2, 2)),
    )
    torch.testing.assert_close(moved.jacobian[0, 0], j_drv @ torch.linalg.inv(j_first) @ j_src)


def test_adapt_movement_scale_scales_the_shift_by_the_face_size_ratio() -> None:
    square = torch.tensor([[[-0.2, -0.2], [0.2, -0.2], [0.2, 0.2], [-0.2, 0.2]]])
    ones = torch.ones(1, 4)
    src = Keypoints(square * 2, ones)  # twice the size: 4x the hull area
    first = Keypoints(square, ones)
    drv = Keypoints(square + 0.1, ones)
    moved = relative_keypoints(src, drv, first, adapt_movement_scale=True)
    torch.testing.assert_close(moved.xy, src.xy + 0.2)


@pytest.mark.parametrize("relative", [False, True])
def test_identity_jacobians_animate_exactly_like_zeroth_order(relative: bool) -> None:
    """With J = I everywhere (a fresh Jacobian head), the first-order baseline, with relative
    motion or without, gives the zeroth-order model's output for the same weights."""
    torch.manual_seed(0)
    first = ExplicitFlowBaseline(ExplicitFlowConfig.tiny()).eval()
    zeroth = ExplicitFlowBaseline(ExplicitFlowConfig.tiny(motion="zeroth_order")).eval()
    missing, unexpected = zeroth.load_state_dict(first.state_dict(), strict=False)
    assert missing == [] and all(n.startswith("keypoint_detector.jacobian.") for n in unexpected)
    sources, driving = face_like(1, seed=2)[:, None].expand(1, 2, 3, 64, 64), face_like(3, seed=4)
    with torch.no_grad():
        outs = []
        for model in (first, zeroth):
            cache = expand_cache(model.encode_sources(sources), 3)
            kp = model.detect_keypoints(driving)
            if relative:
                src_kp = model.detect_keypoints(sources[:, 0])
                kp = relative_keypoints(src_kp, kp, kp.map(lambda t: t[:1]))
            outs.append(model.animate(cache, driving_keypoints=kp).prediction)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
