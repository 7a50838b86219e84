"""The compare step: the ablation table and chart to MLflow and KFP artifacts, and the
choice of the variant to register (rules in `components.ablation`)."""

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def load_results(report_paths: list[str]) -> list[dict[str, Any]]:
    """The evaluate step's JSON reports, in the sweep's canonical variant order."""
    from components.ablation import ABLATIONS

    results = [json.loads(Path(p).read_text()) for p in report_paths]
    order = {a["variant"]: i for i, a in enumerate(ABLATIONS)}
    return sorted(results, key=lambda r: order.get(r["variant"], len(order)))


def chart_html(png_path: str, markdown: str) -> str:
    """One self-contained page (chart inlined) that the KFP UI renders as an HTML artifact."""
    import base64
    import html

    img = base64.b64encode(Path(png_path).read_bytes()).decode()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>iwarp ablation</title></head><body>"
        f"<img alt='ablation chart' src='data:image/png;base64,{img}'/>"
        f"<pre>{html.escape(markdown)}</pre></body></html>"
    )


def compare(
    report_paths: list[str],
    checkpoints: list[tuple[dict[str, Any], str]],
    tracking_uri: str,
    parent_run_id: str,
    data_version: str,
    metric: str,
    margin: float,
    table_path: str,
    chart_path: str,
    chosen_path: str,
):
    import pandas as pd
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from components.ablation import chart, choose_variant, floor_checks, floors, metric_columns, report_markdown

    results = load_results(report_paths)
    choice = choose_variant(results, metric, margin)
    markdown = report_markdown(results, choice, metric, data_version)
    Path(table_path).write_text(markdown)
    print(markdown, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        png = chart(results, str(Path(tmp) / "ablation.png"))
        Path(chart_path).write_text(chart_html(png, markdown))
        client = MlflowClient(tracking_uri)
        client.log_artifact(parent_run_id, png, "ablation")
        md = Path(tmp) / "ablation.md"
        md.write_text(markdown)
        client.log_artifact(parent_run_id, str(md), "ablation")
    cols = metric_columns(results)
    rows = [
        {
            "variant": r["variant"],
            "residual": r["residual"],
            "extra_kv": r["extra_kv"],
            "run_id": r["run_id"],
            "init": r.get("init", ""),
            **{c: r["metrics"][c] for c in cols},
        }
        for r in results
    ]
    client.log_table(parent_run_id, data=pd.DataFrame(rows), artifact_file="ablation/table.json")
    # The parent carries each variant's numbers too, so one run holds the whole Table 4.
    now = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(f"{r['variant']}/{c}", float(r["metrics"][c]), now, 0) for r in results for c in cols],
    )
    # ... and the registered variant against the copy-source floor, per target.
    chosen = next(r for r in results if r["variant"] == choice.variant)
    checks = floor_checks(chosen)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(f"floor/{k}", v, now, 0) for k, v in floors(results).items()]
        + [Metric(f"champion/{c.target}/l1_k{c.k}", c.model, now, 0) for c in checks],
    )
    tags = {
        "iwarp.chosen_variant": choice.variant,
        "iwarp.chosen_run_id": choice.run_id,
        "iwarp.choice_reason": choice.reason,
        "iwarp.chosen_init": chosen.get("init", ""),
    }
    tags.update({f"iwarp.beats_floor.{c.target}": str(c.beats).lower() for c in checks})
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    client.set_terminated(parent_run_id, "FINISHED")

    src = next((path for meta, path in checkpoints if meta.get("variant") == choice.variant), None)
    if src is None:
        raise RuntimeError(
            f"no checkpoint for the chosen variant {choice.variant!r} among "
            f"{[m.get('variant') for m, _ in checkpoints]}"
        )
    shutil.copy(src, chosen_path)
    return choice


def draw_animation(checkpoint: str, dataset: str, out_path: str, tracking_uri: str, parent_run_id: str) -> str:
    """`iwarp.training.evaluate.animation_picture` on the test split, to `out_path` and MLflow."""
    from mlflow.tracking import MlflowClient

    from iwarp.training.evaluate import animation_picture

    with tempfile.TemporaryDirectory() as tmp:  # KFP artifact paths have no extension: PIL needs one
        png = animation_picture(checkpoint, dataset, Path(tmp) / "animation.png", device="cpu")
        shutil.copy(png, out_path)
        MlflowClient(tracking_uri).log_artifact(parent_run_id, str(png), "animation")
    print(f"[animate] sources | driving | output on {dataset}/test -> {out_path}", flush=True)
    return out_path
