"""`iwarp data ...` subcommands (also runnable as `python -m iwarp.data ...`).

Every option of a stage comes from its typed config dataclass: defaults, then the stage's
section of `--params params.yaml` (what `dvc.yaml` passes), then explicit flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from iwarp.errors import InputError, run_command


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per dataclass field (defaults are applied later, in order)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        origin = typing.get_origin(kind)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        help_text = f"{f.metadata.get('help', '')} (default: {default})".strip()
        choices = f.metadata.get("choices")
        if typing.get_origin(kind) is typing.Literal:  # the Literal is the one list of allowed values
            choices = list(typing.get_args(kind))
            kind = type(choices[0])
        if typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(
                _flag(f.name), dest=f.name, type=item, nargs="+", default=None, choices=choices, help=help_text
            )
        elif kind is bool:
            parser.add_argument(
                _flag(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=None, choices=choices, help=help_text)


# keys a params.yaml section may hold besides its config's fields (used by dvc.yaml itself)
STAGE_KEYS = {"prepare": {"input"}}


def config_from_args(cls, args: argparse.Namespace, section: str):
    """defaults < params file section < explicit flags, validated by OmegaConf's typed merge
    (so a misspelt key in params.yaml fails instead of being ignored)."""
    import yaml

    from iwarp.config import from_dict

    data: dict = {}
    if getattr(args, "params", None):
        path = Path(args.params)
        if not path.is_file():
            raise InputError(f"params file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        data.update(loaded.get(section) or {})
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if k not in STAGE_KEYS.get(section, set())}
    data.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    return from_dict(cls, data)  # ConfigError: exit 2


def _params_arg(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument(
        "--params", metavar="YAML", help=f"read defaults from the `{section}:` section of this file (e.g. params.yaml)"
    )


# ---------------------------------------------------------------------------------------------
# handlers (heavy imports inside)


def _cmd_synth(args) -> int:
    from .synth import SynthConfig, make_synth_dataset

    cfg = config_from_args(SynthConfig, args, "synth")
    df = make_synth_dataset(args.out, cfg, overwrite=args.overwrite)
    _print_split_summary(df, args.out)
    return 0


def _cmd_photos(args) -> int:
    from .photos import PhotoConfig, make_photo_dataset

    cfg = config_from_args(PhotoConfig, args, "photos")
    df = make_photo_dataset(args.out, cfg, overwrite=args.overwrite)
    _print_split_summary(df, args.out)
    return 0


def _cmd_faces(args) -> int:
    from .realfaces import FacesConfig, make_faces_dataset

    cfg = config_from_args(FacesConfig, args, "faces")
    frames = make_faces_dataset(args.out, cfg, overwrite=args.overwrite)
    for name, df in frames.items():
        print(f"{name}:")
        _print_split_summary(df, Path(args.out) / name)
    return 0


def _cmd_landmarks(args) -> int:
    from .landmarks import LandmarkConfig, write_sidecars

    found = write_sidecars(Path(args.data), config_from_args(LandmarkConfig, args, "landmarks"))
    low = sorted(k for k, v in found.items() if v < 0.5)
    print(f"landmarks for {len(found)} clip(s) in {args.data}; under 50% of frames covered: {low or 'none'}")
    return 0


def _cmd_prepare(args) -> int:
    from .prepare import PrepareConfig, prepare_dataset

    cfg = config_from_args(PrepareConfig, args, "prepare")
    report = prepare_dataset(args.input, args.out, cfg, identities=args.identities, overwrite=args.overwrite)
    print(report.summary())
    return 0 if report.num_ok else 1


def _cmd_validate(args) -> int:
    from .validate import ValidationConfig, validate_dataset

    cfg = config_from_args(ValidationConfig, args, "validate")
    report = validate_dataset(args.data, cfg, docs_dir=args.docs, result_path=args.result)
    print(report.summary())
    return 0 if report.success else 1


def _cmd_stats(args) -> int:
    from .stats import StatsConfig, dataset_stats

    cfg = config_from_args(StatsConfig, args, "stats")
    metrics = dataset_stats(args.data, args.out, cfg)
    for key in ("videos", "identities", "frames", "skipped"):
        print(f"{key:>11}: {metrics[key]}")
    print(f"wrote {args.out}")
    return 0


def _cmd_info(args) -> int:
    from .dataset import VideoDataset

    for split in ("train", "test"):
        try:
            ds = VideoDataset(args.data, split, image_size=args.size)
        except (FileNotFoundError, ValueError) as exc:
            print(f"{split}: {exc}")
            continue
        frames = [v.num_frames for v in ds.videos]
        print(
            f"{split}: {len(ds.videos)} videos, {len(ds.identities)} identities, "
            f"{sum(frames)} frames ({min(frames)}-{max(frames)} per video)"
        )
    return 0


def _cmd_s3(args) -> int:
    from . import s3

    if args.s3_command == "upload":  # S3Error: exit 2 (credentials), 3 (unreachable) or 1
        n = s3.upload_dir(args.local, args.url, endpoint_url=args.endpoint_url)
        print(f"uploaded {n} files to {args.url}")
    else:
        n = s3.download_dir(args.url, args.local, endpoint_url=args.endpoint_url)
        print(f"downloaded {n} files to {args.local}")
    return 0


def _print_split_summary(df, out) -> None:
    for split, group in df.groupby("split"):
        print(f"{split}: {len(group)} videos, {group['identity'].nunique()} identities")
    print(f"wrote {out}")


# ---------------------------------------------------------------------------------------------
# registration


def register(subparsers) -> None:
    # Config modules import only numpy/PIL at the top: registering stays fast.
    from .landmarks import LandmarkConfig
    from .photos import PhotoConfig
    from .prepare import PrepareConfig
    from .realfaces import FacesConfig
    from .stats import StatsConfig
    from .synth import SynthConfig
    from .validate import ValidationConfig

    data = subparsers.add_parser(
        "data",
        help="synthetic data, preparation, validation, statistics, S3",
        description="Dataset tools. See docs/data.md.",
    )
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("synth", help="procedural talking-head videos in the dataset layout")
    p.add_argument("--out", required=True, help="dataset root to write (train/, test/, manifest.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    _params_arg(p, "synth")
    add_config_args(p, SynthConfig)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("photos", help="real photos (scikit-image, public domain) animated with smooth motion")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    _params_arg(p, "photos")
    add_config_args(p, PhotoConfig)
    p.set_defaults(func=_cmd_photos)

    p = sub.add_parser("faces", help="real-face datasets (general + personal) from files inside installed packages")
    p.add_argument("--out", required=True, help="folder for general/ and personal/ (dataset layout each)")
    p.add_argument("--overwrite", action="store_true")
    _params_arg(p, "faces")
    add_config_args(p, FacesConfig)
    p.set_defaults(func=_cmd_faces)

    p = sub.add_parser("landmarks", help="68-point landmark sidecars for every real clip of a dataset (dlib)")
    p.add_argument("--data", required=True, help="dataset root (with manifest.csv)")
    _params_arg(p, "landmarks")
    add_config_args(p, LandmarkConfig)
    p.set_defaults(func=_cmd_landmarks)

    p = sub.add_parser("prepare", help="crop/resize raw videos into the dataset layout with a manifest")
    p.add_argument("--input", required=True, help="folder of raw videos / frame folders (searched recursively)")
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--identities", metavar="CSV", help="CSV with columns path (or id) and identity, optionally split")
    p.add_argument("--overwrite", action="store_true")
    _params_arg(p, "prepare")
    add_config_args(p, PrepareConfig)
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("validate", help="Great Expectations checks; non-zero exit on failure")
    p.add_argument("--data", required=True, help="prepared dataset root")
    p.add_argument("--docs", default=None, help="Data Docs folder (default: <data>/../validation/data_docs)")
    p.add_argument("--result", default=None, help="validation result JSON (default: next to the docs)")
    _params_arg(p, "validate")
    add_config_args(p, ValidationConfig)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("stats", help="dataset metrics (JSON), plot data (CSV) and a contact sheet (PNG)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="folder for metrics.json, *.csv, samples.png")
    _params_arg(p, "stats")
    add_config_args(p, StatsConfig)
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("info", help="videos, identities and frames per split")
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=64)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("s3", help="copy a folder to/from S3 with boto3 (credentials from the environment)")
    s3sub = p.add_subparsers(dest="s3_command", required=True)
    for name, helptext in (
        ("upload", "local folder -> s3://bucket/prefix"),
        ("download", "s3://bucket/prefix -> local folder"),
    ):
        q = s3sub.add_parser(name, help=helptext)
        if name == "upload":
            q.add_argument("local")
            q.add_argument("url")
        else:
            q.add_argument("url")
            q.add_argument("local")
        q.add_argument(
            "--endpoint-url",
            default=None,
            help="S3-compatible endpoint (default: $IWARP_S3_ENDPOINT_URL or $AWS_ENDPOINT_URL)",
        )
        q.set_defaults(func=_cmd_s3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iwarp")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    return run_command(args.func, args)
