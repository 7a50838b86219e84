"""Training losses, each weighted from `LossConfig` (a weight of 0 disables and skips the term).

Generator: multi-scale perceptual (VGG16 ImageNet features, VGG19 when the user supplies its
weights), GAN (hinge or least squares) with discriminator feature matching, keypoint
equivariance under random affine + thin-plate-spline transforms, and an optional pixel L1.
Discriminator: the matching GAN loss on real driving frames vs detached predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from iwarp.blocks import downscale
from iwarp.discriminator import MultiScalePatchDiscriminator, ScaleOutput
from iwarp.keypoints import Keypoints
from iwarp.outputs import ModelOutput
from iwarp.pretrained import VGGFeatures, imagenet_normalize, vgg16_features, vgg19_features
from iwarp.transforms import RandomTPS

if TYPE_CHECKING:
    from iwarp.models import GeneratorModel

GAN_MODES = ("hinge", "ls")


@dataclass
class LossConfig:
    perceptual: float = 10.0
    perceptual_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    # relu1_2 .. relu5_3 (VGG16); trailing zeros truncate the network instead of computing unused layers
    perceptual_layer_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.0])
    vgg19_weights: str | None = None  # torchvision-format VGG19 state dict; when set, replaces VGG16
    gan: float = 1.0
    gan_mode: str = "hinge"  # "hinge" | "ls"
    feature_matching: float = 10.0
    equivariance: float = 10.0
    equivariance_jacobian: float = 10.0  # FOMM's Jacobian term; only models whose keypoints carry Jacobians
    equivariance_sigma_affine: float = 0.05
    equivariance_sigma_tps: float = 0.005
    equivariance_tps_points: int = 5
    reconstruction: float = 0.0  # pixel L1; not in the paper, useful for quick CPU runs
    # with keypoints.guidance = landmarks: weight of |guided keypoint - its landmark group|
    landmark_guidance: float = 10.0


class PerceptualLoss(nn.Module):
    """sum over pyramid scales and VGG layers of w_l * mean |phi_l(x) - phi_l(y)|.

    Scales that would shrink the image below what VGG needs for its deepest layer (16 px) are
    skipped, so a 64 px model uses 64/32/16."""

    def __init__(self, scales: list[float], layer_weights: list[float], vgg19_weights: str | None = None) -> None:
        super().__init__()
        self.scales = list(scales)
        self.layer_weights = list(layer_weights)
        self.net: VGGFeatures = vgg19_features(vgg19_weights) if vgg19_weights else vgg16_features()
        if len(self.layer_weights) != len(self.net.taps):
            raise ValueError(f"perceptual_layer_weights needs {len(self.net.taps)} entries, got {self.layer_weights}")
        used = [i for i, w in enumerate(self.layer_weights) if w]
        if not used:
            raise ValueError("perceptual_layer_weights are all 0: set loss.perceptual=0 to disable the term")
        self.net.truncate(used[-1] + 1)  # trailing zero weights: stop the VGG early (at 64 px, ~2x cheaper)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = prediction.new_zeros((), dtype=torch.float32)
        for s in self.scales:
            if min(prediction.shape[-2:]) * s < self.net.min_size:
                continue
            x, y = downscale(prediction, s), downscale(target, s)
            fx = self.net(imagenet_normalize(x))
            with torch.no_grad():
                fy = self.net(imagenet_normalize(y))
            for w, a, b in zip(self.layer_weights, fx, fy):
                if w:
                    total = total + w * (a - b).abs().mean(dtype=torch.float32)  # fp32 sums under bf16 autocast
        return total


def gan_generator_loss(logits: torch.Tensor, mode: str) -> torch.Tensor:
    return -logits.mean() if mode == "hinge" else (1 - logits).square().mean()


def gan_discriminator_loss(real: torch.Tensor, fake: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return (1 - real).square().mean() + fake.square().mean()


def feature_matching_loss(fake: list[ScaleOutput], real: list[ScaleOutput]) -> torch.Tensor:
    total = fake[0].logits.new_zeros(())
    for f, r in zip(fake, real):
        for a, b in zip(f.features, r.features):
            total = total + (a - b.detach()).abs().mean()
    return total


def equivariance_loss(
    model: GeneratorModel, driving: torch.Tensor, keypoints: Keypoints, cfg: LossConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keypoints of a randomly deformed driving frame, mapped back through the deformation,
    must land on the driving frame's keypoints. With Jacobians (FOMM), the deformation's own
    Jacobian times the deformed frame's must also equal the driving frame's: the term is
    |I - J_drv^-1 (dT/dp J_t)|. Returns (position term, Jacobian term or None)."""
    tps = RandomTPS(
        driving.shape[0],
        cfg.equivariance_sigma_affine,
        cfg.equivariance_sigma_tps,
        cfg.equivariance_tps_points,
        driving.device,
    )
    transformed = tps.transform_frame(driving)
    kp_t = model.detect_keypoints(transformed)
    position = (keypoints.xy - tps.warp_coordinates(kp_t.xy)).abs().mean()
    if keypoints.jacobian is None or kp_t.jacobian is None:
        return position, None
    mapped = tps.jacobian(kp_t.xy).float() @ kp_t.jacobian.float()
    residual = torch.linalg.inv(keypoints.jacobian.float()) @ mapped
    return position, (torch.eye(2, device=residual.device) - residual).abs().mean()


def landmark_guidance_loss(keypoints: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean |keypoint - target| over the guided keypoints of frames that have landmarks.

    keypoints (..., N, 2) and targets (..., G, 2) in [-1, 1]: keypoint g < min(N, G) is pulled
    to landmark group g (`iwarp.data.landmarks.GUIDE_GROUPS`); the others stay free, as in
    LivePortrait's landmark-guided loss. Targets that are NaN (no face found) or that an
    augmentation moved out of the frame count for nothing; none valid gives 0."""
    g = min(keypoints.shape[-2], targets.shape[-2])
    guided, targets = keypoints[..., :g, :].float(), targets[..., :g, :]
    valid = torch.isfinite(targets).all(-1) & (targets.abs() <= 1).all(-1)  # (..., G)
    diff = (guided - torch.nan_to_num(targets.float())).abs().sum(-1)
    return (diff * valid).sum() / valid.sum().clamp_min(1)


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    """sum(terms) for a non-empty list, without the int 0 start (so it stays typed as a Tensor)."""
    return sum(terms[1:], terms[0])


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class Losses(nn.Module):
    """Holds the frozen perceptual network; call `generator_losses` / `discriminator_losses`.

    Both return weighted named terms plus "total" (the sum to backpropagate). Disabled terms
    (weight 0) are neither computed nor returned. The frozen VGG lives here, not in the model,
    so checkpoints of the generator do not carry it.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        cfg = config or LossConfig()
        if cfg.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {cfg.gan_mode!r}")
        self.config = cfg
        self.perceptual = (
            PerceptualLoss(cfg.perceptual_scales, cfg.perceptual_layer_weights, cfg.vgg19_weights)
            if cfg.perceptual > 0
            else None
        )

    @property
    def uses_discriminator(self) -> bool:
        return self.config.gan > 0 or self.config.feature_matching > 0

    def _need_discriminator(self, discriminator: MultiScalePatchDiscriminator | None) -> MultiScalePatchDiscriminator:
        if discriminator is None:
            raise ValueError(
                "gan / feature_matching weights are > 0 but no discriminator was given "
                "(set them to 0 to train without one)"
            )
        return discriminator

    def generator_losses(
        self,
        driving: torch.Tensor,
        out: ModelOutput,
        model: GeneratorModel,
        discriminator: MultiScalePatchDiscriminator | None = None,
        adversarial: bool = True,
        landmarks: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`adversarial=False` skips the GAN and feature-matching terms (e.g. a warm-up phase).
        `landmarks` (B, k + 1, G, 2), the sources' then the driving frame's landmark-group
        targets, adds the landmark-guidance term."""
        cfg = self.config
        pred = out.prediction
        terms: dict[str, torch.Tensor] = {}
        if cfg.reconstruction > 0:
            terms["reconstruction"] = cfg.reconstruction * (pred - driving).abs().mean()
        if self.perceptual is not None:
            terms["perceptual"] = cfg.perceptual * self.perceptual(pred, driving)
        if self.uses_discriminator and adversarial:
            disc = self._need_discriminator(discriminator)
            fake = disc(pred)
            if cfg.gan > 0:
                terms["gan"] = cfg.gan * _total([gan_generator_loss(s.logits, cfg.gan_mode) for s in fake])
            if cfg.feature_matching > 0:
                with torch.no_grad():
                    real = disc(driving)
                terms["feature_matching"] = cfg.feature_matching * feature_matching_loss(fake, real)
        if cfg.equivariance > 0 and _trainable(model.keypoint_detector):  # a frozen detector learns nothing
            position, jacobian = equivariance_loss(model, driving, out.driving_keypoints, cfg)
            terms["equivariance"] = cfg.equivariance * position
            if jacobian is not None and cfg.equivariance_jacobian > 0:
                terms["equivariance_jacobian"] = cfg.equivariance_jacobian * jacobian
        if landmarks is not None and cfg.landmark_guidance > 0:
            src = out.source_keypoints.xy  # (B, k, N, 2)
            kp = torch.cat([src, out.driving_keypoints.xy[:, None]], dim=1)
            terms["landmark_guidance"] = cfg.landmark_guidance * landmark_guidance_loss(kp, landmarks.to(kp.device))
        terms = {k: v.float() for k, v in terms.items()}  # logged and summed in fp32 even under bf16 autocast
        terms["total"] = _total(list(terms.values())) if terms else pred.new_zeros((), dtype=torch.float32)
        return terms

    def discriminator_losses(
        self,
        driving: torch.Tensor,
        prediction_detached: torch.Tensor,
        discriminator: nn.Module,
    ) -> dict[str, torch.Tensor]:
        """`discriminator`: a MultiScalePatchDiscriminator, or its DDP wrapper in distributed training."""
        cfg = self.config
        if cfg.gan <= 0:
            zero = driving.new_zeros(())
            return {"total": zero}
        real = discriminator(driving)
        fake = discriminator(prediction_detached.detach())
        loss = cfg.gan * _total(
            [gan_discriminator_loss(r.logits, f.logits, cfg.gan_mode).float() for r, f in zip(real, fake)]
        )
        return {"discriminator_gan": loss, "total": loss}
