"""`iwarp evaluate`: reconstruction quality on the test split, per number of sources k.

Two source placements; in both, every k is scored on the same driven frames, so the per-k rows
of one run are comparable:

* `first` (FOMM's reconstruction protocol, extended to k sources; the default): in every test
  video the first k frames are the sources, and every `stride`-th frame from frame max(ks) on is
  driven and compared with the real frame. The "copy the source" floor predicts frame 0.
* `spread` (a user's photo set: different poses and expressions): the k sources are evenly spread
  over the clip, frames round(n*(2i+1)/(2k)) for i < k; every `stride`-th frame that is no source
  of any evaluated k is driven. The floor predicts the first source of the smallest k.

Where the sources come from (`sources_from`):

* `test` (the default): from the evaluated clip itself, as above;
* `train` (a personal target: sources from a user's own photos of a person the model was
  fine-tuned on, driven frames from a new clip of them): the sources are frames of the train
  split's clips of the same identity, taken together in order as one pool, and placed over that
  pool (`first`: its first k frames; `spread`: evenly spread over it); every `stride`-th frame of
  the test clip is driven, from frame 0. A test video whose identity has no train clip is
  skipped. The floor predicts the first source of the smallest k (a train frame).

The floor is what a model must beat to have learnt any motion.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from iwarp.errors import InputError

if TYPE_CHECKING:
    from iwarp.models import GeneratorModel

SourcePlacement = Literal["first", "spread"]
SOURCE_PLACEMENTS: tuple[str, ...] = get_args(SourcePlacement)
SourcesFrom = Literal["test", "train"]
SOURCES_FROM: tuple[str, ...] = get_args(SourcesFrom)


class EvalError(InputError, ValueError):
    """Arguments or data that cannot be evaluated."""


def spread_indices(n: int, k: int) -> list[int]:
    """k frame indices evenly spread over n frames (the middle of k equal slices), clamped to
    the clip and de-duplicated: fewer than k only when the clip is too short (n < k or so)."""
    picked = (min(n - 1, max(0, round(n * (2 * i + 1) / (2 * k)))) for i in range(k))
    return list(dict.fromkeys(picked))


def frame_plan(
    n: int, ks: list[int], placement: SourcePlacement, stride: int, source_frames: int | None = None
) -> dict[str, Any] | None:
    """Which frames of an n-frame video are the sources of each k, and the driven frames that
    every k shares: {"sources": {k: [...]}, "driving": [...]}; None when the video is too short
    (some k gets fewer than k distinct sources, or no frame is left to drive).

    With `source_frames` the sources index a separate pool of that many frames (`sources_from`
    train, see the module docstring) and every `stride`-th of the n frames is driven."""
    if placement not in SOURCE_PLACEMENTS:
        raise EvalError(f"--source-placement must be one of {SOURCE_PLACEMENTS}, got {placement!r}")
    if source_frames is not None:
        pool = int(source_frames)
        if placement == "first":
            sources = {k: list(range(min(k, pool))) for k in ks}
        else:
            sources = {k: spread_indices(pool, k) if pool > 0 else [] for k in ks}
        driving = list(range(0, n, stride))
    elif placement == "first":
        sources = {k: list(range(k)) for k in ks}
        driving = list(range(max(ks), n, stride))
    elif placement == "spread":
        sources = {k: spread_indices(n, k) for k in ks}
        taken = {i for idx in sources.values() for i in idx}
        driving = [t for t in range(n) if t not in taken][::stride]
    if not driving or any(len(idx) != k for k, idx in sources.items()):
        return None
    return {"sources": sources, "driving": driving}


@torch.no_grad()
def predict_video(
    model: GeneratorModel, sources: torch.Tensor, driving: torch.Tensor, batch_size: int = 8
) -> torch.Tensor:
    """Predictions (n, 3, H, W) for driving frames (n, 3, H, W) from one source set (k, 3, H, W);
    the sources are encoded once."""
    from iwarp.training.animate import expand_cache

    device = next(model.parameters()).device
    cache = model.encode_sources(sources[None].to(device))
    out = []
    for start in range(0, driving.shape[0], batch_size):
        chunk = driving[start : start + batch_size].to(device)
        out.append(model.animate(expand_cache(cache, chunk.shape[0]), chunk)["prediction"].float().clamp(0, 1))
    return torch.cat(out)


def evaluate(
    model: GeneratorModel | None,
    dataset,
    ks: list[int],
    suite,
    stride: int = 2,
    max_videos: int | None = None,
    batch_size: int = 8,
    copy_source: bool = False,
    progress: bool = True,
    source_placement: SourcePlacement = "first",
    sources_from: SourcesFrom = "test",
    source_dataset=None,
) -> dict[str, Any]:
    """{"per_k": {k: metrics}, "copy_source": metrics | None, "videos": n, "frames": n, ...}.

    `model=None` evaluates only the copy-the-source floor (it predicts the first source of the
    smallest k: frame 0 with `first`, see the module docstring). `sources_from="train"` takes
    the sources from `source_dataset` (the train split's videos) instead of the test clip.
    """
    from tqdm import tqdm

    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise EvalError(f"--sources needs numbers >= 1, got {ks}")
    if stride < 1:
        raise EvalError("--frame-stride must be >= 1")
    if sources_from not in SOURCES_FROM:
        raise EvalError(f"--sources-from must be one of {SOURCES_FROM}, got {sources_from!r}")
    if (sources_from == "train") != (source_dataset is not None):
        raise EvalError("sources_from='train' needs the train split as source_dataset, and only it")
    pools = (
        {i: source_pool(source_dataset, v.identity) for i, v in enumerate(dataset.videos)}
        if source_dataset is not None
        else {}
    )
    all_plans = {
        i: frame_plan(v.num_frames, ks, source_placement, stride, len(pools[i]) if source_dataset is not None else None)
        for i, v in enumerate(dataset.videos)
    }
    plans = {i: plan for i, plan in all_plans.items() if plan is not None}
    usable = list(plans)
    skipped = len(dataset.videos) - len(usable)
    if sources_from == "train":
        start: int | None = 0  # sources from other clips: every stride-th frame from 0 is driven
        too_short = f"fewer than {ks[-1]} train frames of their identity to take sources from"
    else:
        start = ks[-1] if source_placement == "first" else None  # `first`: driven frames start after max(ks)
        too_short = (
            f"<= {start} frames (nothing left to drive after {start} sources)"
            if start is not None
            else f"too few frames for {ks[-1]} distinct spread sources plus a driven frame"
        )
    if skipped:
        warnings.warn(f"{skipped} video(s) have {too_short}; skipped", stacklevel=2)
    if max_videos is not None:
        usable = usable[:max_videos]
    if not usable:
        raise EvalError(f"no video in {dataset.root}/{dataset.split} is long enough: all have {too_short}")
    if model is not None:
        model.eval()

    def run(k: int | None) -> dict[str, float]:
        suite.reset()
        frames = 0
        what = "copy-source" if k is None else f"k={k}"
        for i in tqdm(
            usable, desc=f"evaluate {what}", unit="video", disable=not progress, file=sys.stderr, leave=False
        ):
            plan = plans[i]
            source_idx = plan["sources"][ks[0]][:1] if k is None else plan["sources"][k]
            if source_dataset is not None:
                sources = read_pool(source_dataset, [pools[i][j] for j in source_idx])
                driving = dataset.read_frames(i, plan["driving"])
            else:
                frames_read = dataset.read_frames(i, source_idx + plan["driving"])
                sources, driving = frames_read[: len(source_idx)], frames_read[len(source_idx) :]
            if k is None:
                pred = sources.expand_as(driving)
            else:
                assert model is not None  # run(k) is only called with a model
                pred = predict_video(model, sources, driving, batch_size)
            suite.update(pred, driving)
            frames += driving.shape[0]
        return {**suite.compute(), "frames": float(frames)}

    result: dict[str, Any] = {
        "per_k": {},
        "copy_source": None,
        "ks": list(ks),
        "videos": len(usable),
        "skipped_videos": skipped,
        "source_placement": source_placement,
        "sources_from": sources_from,
        "driving_start": start,
        "frame_stride": stride,
    }
    if model is not None:
        for k in ks:
            result["per_k"][k] = run(k)
    if copy_source or model is None:
        result["copy_source"] = run(None)
    return result


def source_pool(source_dataset, identity: str) -> list[tuple[int, int]]:
    """(video, frame) of every frame of `identity` in `source_dataset`, its videos in order."""
    return [(i, t) for i, v in enumerate(source_dataset.videos) if v.identity == identity for t in range(v.num_frames)]


def read_pool(source_dataset, picks: list[tuple[int, int]]) -> torch.Tensor:
    """Frames (n, 3, H, W) at (video, frame) positions, in the order given."""
    return torch.cat([source_dataset.read_frames(i, [t]) for i, t in picks])


def _finite_or_none(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def to_json(result: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: keys as strings, NaN/inf as null (strict JSON parsers reject NaN)."""
    clean = lambda m: {k: _finite_or_none(v) for k, v in m.items()}  # noqa: E731
    return {
        **meta,
        "ks": result["ks"],
        "videos": result["videos"],
        "skipped_videos": result["skipped_videos"],
        "source_placement": result["source_placement"],
        "sources_from": result["sources_from"],
        "driving_start": result["driving_start"],
        "frame_stride": result["frame_stride"],
        "per_k": {str(k): clean(m) for k, m in result["per_k"].items()},
        "copy_source": clean(result["copy_source"]) if result["copy_source"] else None,
    }


def print_table(result: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [(str(k), m) for k, m in result["per_k"].items()]
    if result["copy_source"]:
        rows.append(("copy source", result["copy_source"]))
    keys = [k for k in ("l1", "psnr", "lpips", "fd_vgg16", "akd", "mkr") if any(k in m for _, m in rows)]
    table = Table(title=title)
    table.add_column("sources k")
    table.add_column("frames", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for name, m in rows:
        table.add_row(name, str(int(m["frames"])), *(f"{m[key]:.4f}" if key in m else "-" for key in keys))
    Console(file=sys.stdout).print(table)


def evaluate_checkpoint(
    checkpoint: str | Path | None,
    data: str | Path,
    ks: list[int],
    split: str = "test",
    image_size: int | None = None,
    stride: int = 2,
    max_videos: int | None = None,
    landmarks: bool = False,
    fd: bool = True,
    copy_source: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
    source_placement: SourcePlacement = "first",
    sources_from: SourcesFrom = "test",
) -> dict[str, Any]:
    """Load, evaluate and return the JSON-ready result (also what pipelines call).
    `checkpoint` is a file or a shipped model's name (`iwarp.checkpoint.resolve_checkpoint`);
    `sources_from="train"` takes the sources from `data`'s train split (module docstring)."""
    from iwarp.checkpoint import load_checkpoint, load_model, resolve_checkpoint
    from iwarp.data import VideoDataset
    from iwarp.metrics import MetricSuite
    from iwarp.training.distributed import pick_device

    dev = pick_device(device)
    model: GeneratorModel | None = None
    meta: dict[str, Any] = {"checkpoint": None, "model_kind": "copy_source"}
    if checkpoint is not None:
        checkpoint = resolve_checkpoint(checkpoint)
        model = load_model(checkpoint).to(dev)
        ckpt_size = model.config.image_size
        if image_size is not None and image_size != ckpt_size:
            raise EvalError(f"--image-size {image_size} differs from the checkpoint's {ckpt_size}")
        image_size = ckpt_size
        step = load_checkpoint(checkpoint).get("step")  # small models: reading twice is cheap
        meta = {"checkpoint": str(checkpoint), "model_kind": getattr(model, "kind", "?"), "step": step}
    elif image_size is None:
        raise EvalError("--image-size is required without --checkpoint")
    if sources_from == "train" and split == "train":
        raise EvalError("--sources-from train drives another split's frames: pick --split test")
    try:
        dataset = VideoDataset(data, split, image_size)
        source_dataset = VideoDataset(data, "train", image_size) if sources_from == "train" else None
    except (FileNotFoundError, ValueError) as exc:
        raise EvalError(f"cannot evaluate on {data}: {exc}") from exc
    suite = MetricSuite(device=dev, landmarks=landmarks, frechet=fd)
    result = evaluate(
        model,
        dataset,
        ks,
        suite,
        stride=stride,
        max_videos=max_videos,
        batch_size=batch_size,
        copy_source=copy_source,
        progress=progress,
        source_placement=source_placement,
        sources_from=sources_from,
        source_dataset=source_dataset,
    )
    meta.update({"data": str(data), "split": split, "image_size": image_size})
    return {"result": result, "json": to_json(result, meta)}


def animation_picture(
    checkpoint: str | Path,
    data: str | Path,
    path: str | Path,
    split: str = "test",
    k: int = 2,
    frames: int = 6,
    device: str = "auto",
) -> Path:
    """sources | driving | output for the first video of `split` (the README's picture): k
    sources spread over the clip, `frames` driving frames spread between them."""
    from iwarp.checkpoint import load_model, resolve_checkpoint
    from iwarp.data import VideoDataset
    from iwarp.training.distributed import pick_device
    from iwarp.training.visuals import animation_strip

    model = load_model(resolve_checkpoint(checkpoint)).to(pick_device(device)).eval()
    try:
        dataset = VideoDataset(data, split, model.config.image_size)
    except (FileNotFoundError, ValueError) as exc:
        raise EvalError(f"cannot draw an animation from {data}: {exc}") from exc
    if not len(dataset):
        raise EvalError(f"{data} has no {split} videos to animate")
    n = dataset.videos[0].num_frames
    src = spread_indices(n, k)
    driving = [i for i in spread_indices(n, frames + len(src)) if i not in src][:frames]
    if not driving:
        raise EvalError(f"{dataset.videos[0].path}: {n} frames are too few for {k} sources and a driving frame")
    sources, drive = dataset.read_frames(0, src), dataset.read_frames(0, driving)
    return animation_strip(sources, drive, predict_video(model, sources, drive).cpu(), path)


def report_and_write(out: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Print `evaluate_checkpoint`'s table and write its JSON to `path` (atomically: a reader
    never sees half a file); returns the JSON. What `iwarp evaluate` and the pipeline's
    evaluation step both print and write."""
    report = out["json"]
    title = f"{report['model_kind']} on {report['data']}/{report['split']} ({report['videos']} videos)"
    where = "each clip" if report["sources_from"] == "test" else "the identity's train clips"
    if report["source_placement"] == "spread":
        title += f"; sources spread over {where}, copy source = first source of k={min(report['ks'])}"
    elif report["sources_from"] == "train":
        title += f"; sources: the first frames of {where}"
    print_table(out["result"], title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return report


def evaluate_cli(args) -> int:
    if args.checkpoint is None and not args.copy_source_only:
        raise EvalError("--checkpoint is required (or --copy-source-only for the floor alone)")
    out = evaluate_checkpoint(
        None if args.copy_source_only else args.checkpoint,
        args.data,
        args.sources,
        split=args.split,
        image_size=args.image_size,
        stride=args.frame_stride,
        max_videos=args.max_videos,
        landmarks=args.landmarks,
        fd=args.fd,
        copy_source=args.copy_source,
        batch_size=args.batch_size,
        device=args.device,
        source_placement=args.source_placement,
        sources_from=args.sources_from,
    )
    report_and_write(out, args.out)
    return 0
