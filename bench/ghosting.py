"""Why outputs ghost: a diagnosis picture and the pixel-sampling / source-selection variants
measured side by side on the unseen woman (spread sources, the same driven frames for every k).

    python bench/ghosting.py --checkpoint iwarp-faces-64 --data data/faces/general --out runs/ghosting

Every variant is the same weights with another inference setting (`pixel_sampling`,
`source_selection`, `selection_window` in iwarp/implicit_warping.py) set over the checkpoint's;
"as trained" is token selection, how iwarp-faces-64 was trained and first released.

The picture (k = 4), one row per driving frame:
  driving | output | P (the sources sampled where attention points, blended) | the decoder's own
  rendering | mask m (white: P is used) | source entropy (mass over the k sources, 1 = split
  evenly: the sources are blended there) | mean-vs-mode split (how far, in tokens, a source's
  attention-weighted mean position lies from its most attended token: large where the attention
  is split between two places and the mean lands between them) | winning source.

The table: L1 / LPIPS per k for each variant of the same weights, beside the copy floor.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
# (name, pixel_sampling, mode_window, source sharpness or None for the trained one)
# (name, pixel_sampling, source_selection, selection_window, source sharpness or None: the trained one)
VARIANTS = [
    ("as trained (mean, token)", "mean", "token", 0.6, None),
    ("mode 3x3", "mode", "token", 0.6, None),
    ("token, sharpness 16", "mean", "token", 0.6, 16.0),
    ("region 0.3", "mean", "region", 0.3, None),
    ("region 0.6", "mean", "region", 0.6, None),
    ("region 1.0", "mean", "region", 1.0, None),
    ("frame", "mean", "frame", 0.6, None),
]

FIX = 6  # the variant the second picture shows: one source per frame (the release's)


@torch.no_grad()
def internals(model, sources: torch.Tensor, driving: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the picture shows, for sources (B, k, 3, H, W) and driving (B, 3, H, W)."""
    cache = model.encode_sources(sources)
    kp = model.detect_keypoints(driving)
    q_raw, q = model._queries(kp)
    b, k = sources.shape[:2]
    warped = model.attention(q, cache.keys, cache.values)
    feat = warped[..., : model.value_dim]
    if model.residual_mlp is not None:
        feat = feat + model.residual_mlp(torch.cat([warped[..., model.value_dim :], q_raw], dim=-1))
    g = model.grid_size
    feat = feat.transpose(1, 2).reshape(b, model.value_dim, g, g)
    pixels = model.sampled_sources(q, cache)
    dec = model.decoder
    x = dec.stem(feat)
    for block in dec.ups:
        x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
    rendered = torch.sigmoid(dec.head(x)).float()
    mask = torch.sigmoid(dec.mask_head(x)).float()
    weights = model.attention.weights(q, cache.keys)
    stats = torch.einsum("bls,bskc->blkc", weights, cache.token_places)
    mass = stats[..., 0]
    mean_xy = stats[..., 1:] / mass.clamp_min(1e-6)[..., None]
    _, mode_xy = model._mode_centres(weights, k)
    split = ((mean_xy - mode_xy).norm(dim=-1) * (g / 2) * mass).sum(-1) / mass.sum(-1).clamp_min(1e-6)
    share = mass / mass.sum(-1, keepdim=True).clamp_min(1e-6)
    entropy = -(share * share.clamp_min(1e-9).log()).sum(-1) / math.log(max(k, 2))
    return {
        "prediction": (mask * pixels + (1 - mask) * rendered).clamp(0, 1),
        "pixels": pixels.clamp(0, 1),
        "rendered": rendered,
        "mask": mask[:, 0],
        "entropy": entropy.reshape(b, g, g),
        "split": split.reshape(b, g, g),
        "winner": model.selection_scores(mass.transpose(1, 2).unflatten(-1, (g, g)), (g, g)).argmax(1),
    }


def picture(parts: dict[str, torch.Tensor], driving: torch.Tensor, path: Path) -> Path:
    from iwarp.training import visuals

    size = driving.shape[-2:]
    split_scale = max(float(parts["split"].max()), 1e-6)
    rows = []
    for i in range(driving.shape[0]):
        heat = lambda m: visuals._resize(visuals._heat(m.cpu().numpy()), size)  # noqa: E731
        winner = visuals._PALETTE[parts["winner"][i].cpu().numpy() % len(visuals._PALETTE)]
        rows.append(
            [
                visuals.to_uint8(driving[i]),
                visuals.to_uint8(parts["prediction"][i]),
                visuals.to_uint8(parts["pixels"][i]),
                visuals.to_uint8(parts["rendered"][i]),
                heat(parts["mask"][i]),
                heat(parts["entropy"][i]),
                heat(parts["split"][i] / split_scale),
                visuals._resize(winner, size, nearest=True),
            ]
        )
    labels = ["driving", "output", "P", "rendered", "mask", "src entropy", "mean-mode", "winner"]
    return visuals._save(visuals._compose(rows, labels, tuple(size)), path)


def variant_model(checkpoint: str, sampling: str, selection: str, window: float, sharpness: float | None):
    from iwarp.checkpoint import load_model, resolve_checkpoint

    model = load_model(resolve_checkpoint(checkpoint)).eval()
    model.config.pixel_sampling = sampling
    model.config.source_selection = selection
    model.config.selection_window = window
    if sharpness is not None:  # the effective exponent: region selection multiplies by selection_gain
        gain = model.config.selection_gain if selection == "region" else 1.0
        model.source_sharpness.data.fill_(math.log(sharpness / gain))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="iwarp-faces-64")
    parser.add_argument("--data", type=Path, default=REPO / "data/faces/general")
    parser.add_argument("--out", type=Path, default=REPO / "runs/ghosting")
    parser.add_argument("--frame-stride", type=int, default=4)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    torch.set_num_threads(1)
    from iwarp.data import VideoDataset
    from iwarp.metrics import MetricSuite
    from iwarp.training.evaluate import evaluate, frame_plan

    size = variant_model(args.checkpoint, *VARIANTS[0][1:]).config.image_size
    test = VideoDataset(args.data, "test", size)
    plan = frame_plan(test.videos[0].num_frames, [4], "spread", args.frame_stride)
    sources = test.read_frames(0, plan["sources"][4])
    picks = plan["driving"][:: max(1, len(plan["driving"]) // 5)][:5]
    driving = test.read_frames(0, picks)
    for name, variant in (("ghosting.png", VARIANTS[0]), ("ghosting-fixed.png", VARIANTS[FIX])):
        parts = internals(
            variant_model(args.checkpoint, *variant[1:]), sources[None].expand(len(picks), -1, -1, -1, -1), driving
        )
        print(f"diagnosis picture ({variant[0]}): {picture(parts, driving, args.out / name)}")

    suite = MetricSuite(landmarks=False, frechet=False)
    print(f"\n{'variant':<26}" + "".join(f"{f'k={k} L1':>10}{f'k={k} LPIPS':>11}" for k in (1, 2, 4)))
    for i, (name, *variant) in enumerate(VARIANTS):
        m = variant_model(args.checkpoint, *variant)
        r = evaluate(
            m,
            test,
            [1, 2, 4],
            suite,
            stride=args.frame_stride,
            progress=False,
            source_placement="spread",
            copy_source=i == 0,
        )
        cells = "".join(f"{r['per_k'][k]['l1']:>10.4f}{r['per_k'][k]['lpips']:>11.4f}" for k in (1, 2, 4))
        print(f"{name:<26}{cells}")
        if r["copy_source"]:
            floor = r["copy_source"]
    print(f"{'copy the source (floor)':<26}" + f"{floor['l1']:>10.4f}{floor['lpips']:>11.4f}" * 3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
