"""Evaluation metrics: L1, PSNR, LPIPS, a Fréchet distance over VGG16 features, AKD and MKR.

All image inputs are float tensors (B, 3, H, W) in [0, 1].

* LPIPS is the real LPIPS v0.1 (Zhang et al. 2018): ImageNet AlexNet (default) or VGG16 trunk
  plus the published linear layers, all loaded offline (see `iwarp.pretrained`).
* `fd_vgg16` is a Fréchet distance between Gaussian fits of ImageNet-VGG16 features (relu5_3,
  global average pooled, images resized to 224). It is NOT the Inception FID of published
  papers (no Inception weights ship offline); compare it only with itself. A user with their
  own feature network can pass it as `FrechetDistance(extractor=..., name=...)`.
* AKD / MKR use dlib's HOG frontal-face detector and its 68-point shape predictor
  (`face-recognition-models`). AKD: mean absolute landmark coordinate difference in pixels at
  the evaluated size, over frames where both images have a face. MKR: frames whose ground
  truth has a face but whose prediction has none, divided by frames whose ground truth has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iwarp.pretrained import AlexNetFeatures, imagenet_normalize, lpips_linear_weights, package_file, vgg16_features


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error, (B,)."""
    return (prediction - target).abs().flatten(1).mean(1)


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, (B,); identical images give +inf."""
    mse = (prediction - target).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity, v0.1 ("alex" or "vgg"); (B,) distances."""

    shift: torch.Tensor  # buffers (register_buffer), declared for the type checker
    scale: torch.Tensor

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in ("alex", "vgg"):
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.trunk = AlexNetFeatures() if net == "alex" else vgg16_features()
        self.lins = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in lpips_linear_weights(net))
        # LPIPS' own input scaling (applied to images in [-1, 1])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.eval()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.trunk(((x * 2 - 1) - self.shift) / self.scale)
        return [f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10) for f in feats]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for fx, fy, w in zip(self._features(x), self._features(y), self.lins):
            total = total + F.conv2d((fx - fy).square(), w).mean((1, 2, 3))
        return total


class VGG16PooledFeatures(nn.Module):
    """(B, 512): ImageNet-VGG16 relu5_3, global-average-pooled, on images resized to `size`."""

    def __init__(self, size: int | None = 224) -> None:
        super().__init__()
        self.size = size
        self.net = vgg16_features()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.net(imagenet_normalize(x))[-1].mean((2, 3))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    Tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2): stable for the rank-deficient
    covariances of small evaluation sets, where a general `sqrtm` goes complex or warns.
    """
    from scipy import linalg

    # one BLAS thread: a 512x512 eigh gains nothing from threads, and on a shared CPU spinning
    # OpenBLAS threads were measured 15x slower
    with _one_blas_thread():
        w, v = linalg.eigh(sigma1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        middle = root1 @ sigma2 @ root1
        trace_sqrt = np.sqrt(np.clip(linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class FrechetDistance:
    """Accumulates features of generated and real images; `compute()` -> Fréchet distance.

    Needs at least 2 images per side (returns NaN otherwise); with fewer images than feature
    dimensions the covariances are rank-deficient and the value is biased upward, as with FID.
    """

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, name: str = "fd_vgg16") -> None:
        self.extractor = extractor if extractor is not None else VGG16PooledFeatures()
        self.name = name
        self.reset()

    def reset(self) -> None:
        self._fake: list[np.ndarray] = []
        self._real: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        self._fake.append(self.extractor(prediction).double().cpu().numpy())
        self._real.append(self.extractor(target).double().cpu().numpy())

    def compute(self) -> float:
        if not self._fake:
            return math.nan
        fake, real = np.concatenate(self._fake), np.concatenate(self._real)
        if len(fake) < 2:
            return math.nan
        return frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), real.mean(0), np.cov(real, rowvar=False))


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, contiguous (what dlib wants)."""
    return np.ascontiguousarray((image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())


class FaceLandmarks:
    """68 dlib landmarks of the largest frontal face, in pixels of the given image, or None.

    dlib's HOG detector misses faces smaller than ~80 px, so images whose short side is below
    `detect_size` are upscaled (integer factor) before detection and the landmarks scaled back.
    """

    def __init__(self, detect_size: int = 256, upsample: int = 1) -> None:
        import dlib  # lazy: only landmark metrics need it

        self.detector = dlib.get_frontal_face_detector()
        weights = package_file("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat")
        self.predictor = dlib.shape_predictor(str(weights))
        self.detect_size = detect_size
        self.upsample = upsample

    def __call__(self, image: torch.Tensor | np.ndarray) -> np.ndarray | None:
        points, _ = self.detect(image)
        return points

    def detect(self, image: torch.Tensor | np.ndarray, face: Any = None) -> tuple[np.ndarray | None, Any]:
        """(landmarks in pixels or None, the dlib face box at detection scale). Given `face` (a box
        returned before, for a frame of the same size), the detector is skipped: tracking a video,
        the shape predictor alone follows the face from a box found a few frames earlier."""
        img = to_uint8_hwc(image) if isinstance(image, torch.Tensor) else np.ascontiguousarray(image)
        factor = max(1, math.ceil(self.detect_size / min(img.shape[:2])))
        if factor > 1:
            t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
            t = F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)
            img = np.ascontiguousarray(t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
        if face is None:
            faces = self.detector(img, self.upsample)
            if len(faces) == 0:
                return None, None
            face = max(faces, key=lambda r: r.area())
        shape = self.predictor(img, face)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
        # pixel centres map as (p + 0.5) / factor - 0.5 between the two sizes
        return (pts + 0.5) / factor - 0.5, face


@dataclass
class LandmarkStats:
    """Running AKD/MKR counts."""

    distance_sum: float = 0.0
    matched: int = 0  # frames with a face in both images
    gt_faces: int = 0  # frames with a face in the ground truth
    missing: int = 0  # ... of which the prediction has none

    def add(self, pred: np.ndarray | None, gt: np.ndarray | None) -> None:
        if gt is None:
            return
        self.gt_faces += 1
        if pred is None:
            self.missing += 1
            return
        self.matched += 1
        self.distance_sum += float(np.abs(pred - gt).mean())

    @property
    def akd(self) -> float:
        return self.distance_sum / self.matched if self.matched else math.nan

    @property
    def mkr(self) -> float:
        return self.missing / self.gt_faces if self.gt_faces else math.nan


@dataclass
class MetricConfig:
    lpips_net: str = "alex"
    frechet: bool = True
    landmarks: bool = True  # AKD/MKR; turn off for non-face data
    landmark_detect_size: int = 256
    batch_size: int = 16  # chunking of the network metrics (bounds memory)


class MetricSuite:
    """Accumulates metrics over batches; `compute()` -> {"l1", "psnr", "lpips", "fd_vgg16",
    "akd", "mkr"} (the last two only with `landmarks=True`, the Fréchet one only with
    `frechet=True`). Means are over all images; PSNR averages finite per-image values (identical
    frames give +inf and are counted separately as `psnr_inf_frames` if any). NaN means "not
    measurable" (e.g. no face in any ground-truth frame, or < 2 images for the Fréchet distance).
    """

    def __init__(self, config: MetricConfig | None = None, device: str | torch.device = "cpu", **overrides) -> None:
        cfg = config or MetricConfig()
        if overrides:
            cfg = MetricConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self.device = torch.device(device)
        self.lpips = LPIPS(cfg.lpips_net).to(self.device)
        self.frechet = FrechetDistance(VGG16PooledFeatures().to(self.device)) if cfg.frechet else None
        self.landmarker = FaceLandmarks(cfg.landmark_detect_size) if cfg.landmarks else None
        self.reset()

    def reset(self) -> None:
        self._sums = {"l1": 0.0, "psnr": 0.0, "lpips": 0.0}
        self._count = 0
        self._psnr_count = 0
        self._psnr_inf = 0
        self._landmarks = LandmarkStats()
        if self.frechet is not None:
            self.frechet.reset()

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        if prediction.shape != target.shape or prediction.dim() != 4 or prediction.shape[1] != 3:
            raise ValueError(
                f"prediction and target must both be (B, 3, H, W); "
                f"got {tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        prediction = prediction.to(self.device, torch.float32).clamp(0, 1)
        target = target.to(self.device, torch.float32).clamp(0, 1)
        for start in range(0, prediction.shape[0], self.config.batch_size):
            p, t = prediction[start : start + self.config.batch_size], target[start : start + self.config.batch_size]
            self._sums["l1"] += float(l1(p, t).sum())
            values = psnr(p, t)
            finite = torch.isfinite(values)
            self._sums["psnr"] += float(values[finite].sum())
            self._psnr_count += int(finite.sum())
            self._psnr_inf += int((~finite).sum())
            self._sums["lpips"] += float(self.lpips(p, t).sum())
            if self.frechet is not None:
                self.frechet.update(p, t)
            if self.landmarker is not None:
                for pi, ti in zip(p, t):
                    self._landmarks.add(self.landmarker(pi), self.landmarker(ti))
            self._count += p.shape[0]

    def compute(self) -> dict[str, float]:
        n = max(self._count, 1)
        out = {
            "l1": self._sums["l1"] / n if self._count else math.nan,
            "psnr": self._sums["psnr"] / self._psnr_count
            if self._psnr_count
            else (math.inf if self._psnr_inf else math.nan),
            "lpips": self._sums["lpips"] / n if self._count else math.nan,
        }
        if self._psnr_inf and self._psnr_count:
            out["psnr_inf_frames"] = float(self._psnr_inf)
        if self.frechet is not None:
            out[self.frechet.name] = self.frechet.compute()
        if self.landmarker is not None:
            out["akd"] = self._landmarks.akd
            out["mkr"] = self._landmarks.mkr
        return out
