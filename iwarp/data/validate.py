"""`iwarp data validate`: Great Expectations (1.x) gates over a prepared dataset.

Three suites run against in-memory pandas batches:

* `iwarp_videos`  one row per prepared video (manifest rows with status "ok", plus columns
  derived here: how many splits the video's identity is in, whether the entry is on disk);
* `iwarp_inputs`  every input row, skipped ones included (how many were skipped);
* `iwarp_frames`  a few frames sampled from each video and read back from disk (readable, and
  really the target size).

Every expectation carries `meta.check`, a short name (`identity_leak`, `too_short`,
`wrong_size`, ...) that reports use next to the GE expectation type. The Data Docs site (HTML)
is rebuilt on every run; the result JSON is written on success and on failure (its `success`
field and the exit code say which).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .manifest import REQUIRED_COLUMNS, SPLITS, read_manifest
from .options import opt

STAT_COLUMNS = ["content_hash", "contrast_mean", "motion_mean"]


@dataclass
class ValidationConfig:
    image_size: int = opt(256, "every frame must be exactly this size")
    min_frames: int = opt(9, "fewest frames a video may have: k_max sources + 1 driving (k up to 8)")
    fps_min: float = opt(10.0, "lowest allowed frame rate")
    fps_max: float = opt(120.0, "highest allowed frame rate")
    min_contrast: float = opt(5.0, "mean per-frame grey std (0-255) below this: a blank video")
    min_motion: float = opt(0.2, "mean |frame difference| (0-255) below this: a frozen video")
    face_dataset: bool = opt(False, "check the face-detection rate (face videos only)")
    min_face_rate: float = opt(0.8, "lowest allowed face-detection rate (with --face-dataset)")
    max_skipped_fraction: float = opt(0.1, "largest share of input videos prepare may have skipped as unreadable")
    landmarks: bool = opt(False, "check the landmark sidecars of real clips (iwarp data landmarks)")
    min_landmark_coverage: float = opt(0.5, "a real clip is well covered with landmarks in this share of its frames")
    landmark_clip_share: float = opt(0.85, "lowest share of real clips that must be well covered (with --landmarks)")
    frames_per_video: int = opt(3, "frames read back from disk per video (first, middle, last, ...)")
    require_both_splits: bool = opt(True, "train/ and test/ must both hold videos")


@dataclass
class Failure:
    check: str  # short name, e.g. "identity_leak"
    expectation: str  # GE type and its column, e.g. "expect_column_values_to_be_in_set(identity_splits)"
    suite: str
    description: str
    videos: list[str] = field(default_factory=list)  # ids of the failing videos (when row-level)
    values: list = field(default_factory=list)  # their offending values, in the same order
    observed: str = ""  # for table-level expectations

    def line(self) -> str:
        if not self.videos:
            return f"[{self.check}] {self.expectation}: {self.description}; {self.observed}"
        shown = [f"{v}={x}" if x is not None else v for v, x in zip(self.videos[:10], self.values[:10])]
        more = f" (+{len(self.videos) - 10} more)" if len(self.videos) > 10 else ""
        return (
            f"[{self.check}] {self.expectation}: {self.description}; failing {len(self.videos)} "
            f"video(s): {', '.join(shown)}{more}"
        )


@dataclass
class ValidationReport:
    success: bool
    failures: list[Failure]
    evaluated: int
    docs_index: Path
    result_path: Path
    skipped_inputs: list[tuple[str, str]]
    seconds: float

    def summary(self) -> str:
        head = "PASSED" if self.success else "FAILED"
        lines = [
            f"validation {head}: {self.evaluated - len(self.failures)}/{self.evaluated} expectations met "
            f"({self.seconds:.1f} s)"
        ]
        lines += ["  " + f.line() for f in self.failures]
        if any(f.check == "required_columns" for f in self.failures):
            lines.append(
                "  hint: validate a dataset written by `iwarp data prepare`: its manifest carries the "
                "statistics the checks need"
            )
        for vid, reason in self.skipped_inputs:
            lines.append(f"  note: input {vid} was skipped by prepare: {reason}")
        lines.append(f"  Data Docs: {self.docs_index}")
        lines.append(f"  result:    {self.result_path}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the tables validated


def video_table(root: Path, manifest):
    """Prepared videos with the derived columns the expectations need."""
    ok = manifest[manifest["status"] == "ok"].copy()
    if "identity" in ok.columns and "split" in ok.columns:
        ok["identity_splits"] = ok.groupby("identity")["split"].transform("nunique")
        if "split_by" in ok.columns:  # an explicit split by clip (personal target) is no leak
            ok.loc[ok["split_by"] == "clip", "identity_splits"] = 1
    if "path" in ok.columns:
        ok["on_disk"] = [isinstance(p, str) and (root / p).exists() for p in ok["path"]]
        sidecars = [_sidecar(root, r) for r in ok.to_dict("records")]
        ok["landmark_sidecar"] = [None if s is None else s[0] for s in sidecars]
        ok["landmark_coverage_on_disk"] = [None if s is None else s[1] for s in sidecars]
    return ok.reset_index(drop=True)


def _sidecar(root: Path, row: dict) -> tuple[bool, float | None] | None:
    """(a sidecar for every frame exists, the share of frames with landmarks in it) of a real
    clip; None for synthetic heads, which have no human landmarks to find."""
    from .landmarks import coverage, load_landmarks

    if row.get("origin") == "synth" or not isinstance(row.get("path"), str):
        return None
    marks = load_landmarks(root / row["path"])
    if marks is None or len(marks) != row.get("num_frames", len(marks)):
        return False, None
    return True, coverage(marks)


def frame_table(root: Path, videos, per_video: int):
    """A few frames per video read back from disk: readable? real size?"""
    import numpy as np
    import pandas as pd

    from .video import read_video

    rows = []
    for row in videos.to_dict("records"):
        path = root / str(row.get("path", ""))
        n = row.get("num_frames")
        n = int(n) if isinstance(n, (int, float)) and not math.isnan(n) and n > 0 else 1
        picks = sorted(set(np.linspace(0, n - 1, num=min(per_video, n)).round().astype(int).tolist()))
        # frame folders one file at a time (frames may differ in size); containers in one pass
        groups = [[i] for i in picks] if path.is_dir() else [picks]
        for group in groups:
            try:
                for i, f in zip(group, read_video(path, group)):
                    rows.append(
                        {
                            "id": row["id"],
                            "frame": i,
                            "readable": True,
                            "width": f.shape[1],
                            "height": f.shape[0],
                            "error": "",
                        }
                    )
            except Exception as exc:  # any failure to read is what this table records
                rows.append(
                    {
                        "id": row["id"],
                        "frame": group[-1],
                        "readable": False,
                        "width": None,
                        "height": None,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
    return pd.DataFrame(rows, columns=["id", "frame", "readable", "width", "height", "error"])


# ---------------------------------------------------------------------------------------------
# suites


def _suites(cfg: ValidationConfig) -> dict[str, list]:
    import great_expectations.expectations as gxe

    def e(cls, check: str, description: str, **kwargs):
        return cls(meta={"check": check}, description=description, **kwargs)

    required = REQUIRED_COLUMNS + STAT_COLUMNS + ["path"]
    videos = [
        e(
            gxe.ExpectTableColumnsToMatchSet,
            "required_columns",
            "manifest has every required column",
            column_set=required,
            exact_match=False,
        ),
        e(gxe.ExpectTableRowCountToBeBetween, "not_empty", "at least one prepared video", min_value=1),
        *[
            e(gxe.ExpectColumnValuesToNotBeNull, "missing_values", f"{c} is filled in for every video", column=c)
            for c in ("id", "identity", "split", "num_frames", "width", "height", "fps")
        ],
        e(gxe.ExpectColumnValuesToBeUnique, "duplicate_id", "video ids are unique", column="id"),
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "bad_split",
            "split is train or test",
            column="split",
            value_set=list(SPLITS),
        ),
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "identity_leak",
            "no identity in both train and test",
            column="identity_splits",
            value_set=[1],
        ),
        e(gxe.ExpectColumnValuesToBeUnique, "duplicate_video", "no video content appears twice", column="content_hash"),
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "missing_on_disk",
            "every listed video exists on disk",
            column="on_disk",
            value_set=[True],
        ),
        e(
            gxe.ExpectColumnValuesToBeBetween,
            "too_short",
            f"at least {cfg.min_frames} frames (k sources + 1 driving)",
            column="num_frames",
            min_value=cfg.min_frames,
        ),
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "wrong_size",
            f"width is {cfg.image_size}",
            column="width",
            value_set=[cfg.image_size],
        ),
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "wrong_size",
            f"height is {cfg.image_size}",
            column="height",
            value_set=[cfg.image_size],
        ),
        e(
            gxe.ExpectColumnValuesToBeBetween,
            "fps_out_of_range",
            f"fps in [{cfg.fps_min}, {cfg.fps_max}]",
            column="fps",
            min_value=cfg.fps_min,
            max_value=cfg.fps_max,
        ),
        e(
            gxe.ExpectColumnValuesToBeBetween,
            "blank_video",
            f"contrast (grey std) >= {cfg.min_contrast}",
            column="contrast_mean",
            min_value=cfg.min_contrast,
        ),
        e(
            gxe.ExpectColumnValuesToBeBetween,
            "frozen_video",
            f"motion (mean |frame diff|) >= {cfg.min_motion}",
            column="motion_mean",
            min_value=cfg.min_motion,
        ),
    ]
    if cfg.require_both_splits:
        videos.append(
            e(
                gxe.ExpectColumnDistinctValuesToContainSet,
                "missing_split",
                "both train and test hold videos",
                column="split",
                value_set=list(SPLITS),
            )
        )
    if cfg.face_dataset:
        videos.append(
            e(
                gxe.ExpectColumnValuesToNotBeNull,
                "low_face_rate",
                "face rate measured (prepare --crop face)",
                column="face_rate",
            )
        )
        videos.append(
            e(
                gxe.ExpectColumnValuesToBeBetween,
                "low_face_rate",
                f"a face in >= {cfg.min_face_rate:.0%} of sampled frames",
                column="face_rate",
                min_value=cfg.min_face_rate,
            )
        )
    if cfg.landmarks:
        videos.append(
            e(
                gxe.ExpectColumnValuesToBeInSet,
                "missing_landmarks",
                "every real clip has a landmark sidecar for all its frames (run `iwarp data landmarks --data DIR`)",
                column="landmark_sidecar",
                value_set=[True],
            )
        )
        # dlib's frontal detector misses profiles and small faces, so single clips may be
        # sparse (the cameraman at 64 px); most clips must be well covered
        videos.append(
            e(
                gxe.ExpectColumnValuesToBeBetween,
                "low_landmark_coverage",
                f"at least {cfg.landmark_clip_share:.0%} of real clips have landmarks in >= "
                f"{cfg.min_landmark_coverage:.0%} of their frames",
                column="landmark_coverage_on_disk",
                min_value=cfg.min_landmark_coverage,
                mostly=cfg.landmark_clip_share,
            )
        )
    inputs = [
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "skipped_inputs",
            f"at most {cfg.max_skipped_fraction:.0%} of input videos skipped as unreadable",
            column="status",
            value_set=["ok"],
            mostly=max(1.0 - cfg.max_skipped_fraction, 1e-9),
        ),
    ]
    frames = [
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "unreadable_frames",
            "sampled frames decode",
            column="readable",
            value_set=[True],
        ),
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "wrong_size",
            f"frames on disk are {cfg.image_size} wide",
            column="width",
            value_set=[cfg.image_size],
        ),
        e(
            gxe.ExpectColumnValuesToBeInSet,
            "wrong_size",
            f"frames on disk are {cfg.image_size} high",
            column="height",
            value_set=[cfg.image_size],
        ),
    ]
    return {"iwarp_videos": videos, "iwarp_inputs": inputs, "iwarp_frames": frames}


def _context(docs_dir: Path):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network here; no telemetry anyway
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"iwarp": site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


# ---------------------------------------------------------------------------------------------
# running


def validate_dataset(
    data: str | Path,
    cfg: ValidationConfig | None = None,
    docs_dir: str | Path | None = None,
    result_path: str | Path | None = None,
) -> ValidationReport:
    """Validate the prepared dataset at `data`; write Data Docs and the result JSON."""
    cfg = cfg or ValidationConfig()
    start = time.perf_counter()
    root = Path(data)
    default_dir = root.parent / f"{root.name}_validation"  # outside the dataset: DVC tracks that
    docs_dir = Path(docs_dir) if docs_dir else default_dir / "data_docs"
    result_path = Path(result_path) if result_path else docs_dir.parent / "validation.json"
    manifest = read_manifest(root)
    videos = video_table(root, manifest)
    tables = {
        "iwarp_videos": videos,
        "iwarp_inputs": manifest[["id", "status"]].copy(),
        "iwarp_frames": frame_table(root, videos, cfg.frames_per_video),
    }

    for stale in ("validations", "expectations"):  # pages of earlier runs; the index is rebuilt
        shutil.rmtree(docs_dir / stale, ignore_errors=True)
    ctx = _context(docs_dir.resolve())
    import great_expectations as gx

    source = ctx.data_sources.add_pandas("dataset")
    results = {}
    for suite_name, expectations in _suites(cfg).items():
        suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch = source.add_dataframe_asset(suite_name.removeprefix("iwarp_")).add_batch_definition_whole_dataframe(
            "all"
        )
        definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
        results[suite_name] = definition.run(  # results land in the context's store, for the docs
            batch_parameters={"dataframe": tables[suite_name]},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]},
        )
    ctx.build_data_docs(site_names=["iwarp"])  # once, for all three suites (rendering is the slow part)

    failures, evaluated = [], 0
    for suite_name, result in results.items():
        for r in result.results:
            evaluated += 1
            if not r.success:
                failures.append(_failure(suite_name, r))
    success = not failures
    skipped = [
        (str(r["id"]), str(r.get("reason", ""))) for r in manifest[manifest["status"] != "ok"].to_dict("records")
    ]
    docs_index = docs_dir / "index.html"
    payload = {
        "success": success,
        "data": str(root),
        "config": asdict(cfg),
        "videos": int(len(videos)),
        "failures": [asdict(f) for f in failures],
        "skipped_inputs": [{"id": i, "reason": r} for i, r in skipped],
        "data_docs": str(docs_index),
        "suites": {name: result.to_json_dict() for name, result in results.items()},
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = result_path.with_name(f".{result_path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(result_path)
    return ValidationReport(success, failures, evaluated, docs_index, result_path, skipped, time.perf_counter() - start)


def _failure(suite: str, r) -> Failure:
    config = r.expectation_config
    meta = config.meta or {}
    column = config.kwargs.get("column")
    expectation = f"{config.type}({column})" if column else config.type
    result = r.result or {}
    ids, values = [], []
    for row in result.get("unexpected_index_list") or []:
        if isinstance(row, dict) and "id" in row and str(row["id"]) not in ids:  # frames: once per video
            ids.append(str(row["id"]))
            values.append(_plain(row.get(column)) if column and column != "id" else None)
    missing = ((result.get("details") or {}).get("mismatched") or {}).get("missing")
    errors = _exception_messages(r.exception_info)
    if errors:
        observed = f"could not evaluate: {errors[0]}"
    elif missing:
        observed = f"missing columns {missing}"
    elif result.get("partial_missing_list"):
        observed = f"missing {result['partial_missing_list']}"
    else:
        observed = f"observed {_plain(result.get('observed_value'))}"
    return Failure(
        check=str(meta.get("check", config.type)),
        expectation=expectation,
        suite=suite,
        description=str(config.description or ""),
        videos=ids,
        values=values,
        observed=observed,
    )


def _exception_messages(info) -> list[str]:
    """GE reports errors either flat or keyed by metric; e.g. a column the table lacks."""
    if not info:
        return []
    found = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    return [str(e.get("exception_message")) for e in found if e.get("raised_exception")]


def _plain(value):
    """numpy scalars -> Python, so reports and JSON show 0.75, not np.float64(0.75)."""
    return value.item() if hasattr(value, "item") else value
