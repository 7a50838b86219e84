"""Behavioural: tiny models learn to produce a driving frame from a real source photo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data

from iwarp import ExplicitFlowConfig, ImplicitWarpingConfig
from iwarp.models import build_model

torch.set_num_threads(1)  # a shared 2-core CI box: 2 OpenMP threads under contention run 10-20x slower


def face(dx: int = 0, dy: int = 0) -> torch.Tensor:
    """64 px crop of the astronaut's face; (dx, dy) moves the camera by that many 192-px pixels."""
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    x0, y0 = 120 + dx, 40 + dy
    return F.interpolate(img[None, :, y0 : y0 + 192, x0 : x0 + 192], size=64, mode="bilinear", antialias=True)[0]


def train(model: torch.nn.Module, sources: torch.Tensor, driving: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(steps):
        loss = (model(sources, driving).prediction - driving).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["implicit", "baseline"])
def test_tiny_model_overfits_one_pair(kind: str) -> None:
    torch.manual_seed(0)
    cfg = ImplicitWarpingConfig.tiny() if kind == "implicit" else ExplicitFlowConfig.tiny()
    model = build_model(kind, cfg)
    sources, driving = face()[None, None], face(24, 12)[None]
    start = (sources[:, 0] - driving).abs().mean().item()  # copying the source: ~0.22
    history = train(model, sources, driving, 300)
    final = sum(history[-10:]) / 10
    assert final < 0.06 and final < 0.3 * start, (start, history[::50], final)


@pytest.mark.slow
def test_output_follows_the_driving_frame() -> None:
    """Two driving frames, one source: after training each prediction matches its own driving
    frame and not the other, so the model uses the driving keypoints (it cannot just memorise
    one image)."""
    torch.manual_seed(0)
    model = build_model("implicit", ImplicitWarpingConfig.tiny())
    sources = face()[None, None].expand(2, 1, 3, 64, 64)
    driving = torch.stack([face(-24, -12), face(24, 12)])
    train(model, sources, driving, 400)
    with torch.no_grad():
        pred = model.eval()(sources, driving).prediction
    own = (pred - driving).abs().flatten(1).mean(1)
    other = (pred - driving.flip(0)).abs().flatten(1).mean(1)
    assert (own < 0.07).all() and (other > 3 * own).all(), (own, other)
