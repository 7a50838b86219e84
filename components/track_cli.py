"""`iwarp track sync RUN_DIR --tracking-uri URI`: upload a run that was logged offline or whose
tracking failed part-way. The work is `components.tracking.sync_run` (imported lazily: `iwarp
--help` stays fast)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "track",
        help="MLflow tracking of training runs (upload a run later)",
        description="MLflow tracking of runs written by `iwarp train`.",
    )
    verbs = p.add_subparsers(dest="track_command", required=True, metavar="VERB")
    s = verbs.add_parser(
        "sync",
        help="upload a run logged offline or whose tracking failed part-way (idempotent)",
        description="Upload what RUN_DIR logged and MLflow lacks: the rest of its tracking journal "
        "(RUN_DIR/tracking/), or, for a run trained without --tracking-uri, its params, metrics, images, "
        "checkpoint and model. Steps, params, images and models already in MLflow are not sent again, "
        "so a second sync adds nothing.",
    )
    s.add_argument("run_dir", metavar="RUN_DIR", help="the training's out_dir")
    s.add_argument("--tracking-uri", required=True, metavar="URI", help="MLflow tracking URI")
    s.set_defaults(func=_sync)


def _sync(args: argparse.Namespace) -> int:
    from components.tracking import sync_run

    result = sync_run(args.run_dir, args.tracking_uri)
    print(
        f"synced {args.run_dir} to run {result.run_id} at {args.tracking_uri}: "
        f"{result.delivered} of {result.total} logging calls sent now, the rest were already there"
    )
    return 0
