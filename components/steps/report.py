"""The compare step: the ablation table and chart to MLflow and KFP artifacts, and the
choice of the variant to register (rules in `components.ablation`)."""

import json
import shutil
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
    work_dir: str = "",
):
    """The choice, the table and chart to KFP artifacts and, through the step's journal, to the
    parent run (which it ends: the sweep is complete)."""
    from components.ablation import chart, choose_variant, report_markdown
    from components.tracking import step_folder

    results = load_results(report_paths)
    choice = choose_variant(results, metric, margin)
    markdown = report_markdown(results, choice, metric, data_version)
    Path(table_path).write_text(markdown)
    print(markdown, flush=True)

    src = next((path for meta, path in checkpoints if meta.get("variant") == choice.variant), None)
    if src is None:
        raise RuntimeError(
            f"no checkpoint for the chosen variant {choice.variant!r} among "
            f"{[m.get('variant') for m, _ in checkpoints]}"
        )
    folder = step_folder(work_dir, "compare")
    png = chart(results, str(folder / "ablation.png"))
    Path(chart_path).write_text(chart_html(png, markdown))
    log_comparison(tracking_uri, parent_run_id, results, choice, markdown, folder)
    shutil.copy(src, chosen_path)
    return choice


def log_comparison(
    tracking_uri: str, parent_run_id: str, results: list[dict[str, Any]], choice: Any, markdown: str, folder: Path
) -> None:
    """To the parent run: the chart, the Markdown and the table (`ablation/`), each variant's
    numbers (so one run holds the whole Table 4), the champion against the copy-source floor,
    the choice as tags; then the run ends FINISHED."""
    from components.ablation import floor_checks, floors, metric_columns
    from components.tracking import StepLog

    cols = metric_columns(results)
    rows = [
        [r["variant"], r["residual"], r["extra_kv"], r["run_id"], r.get("init", "")] + [r["metrics"][c] for c in cols]
        for r in results
    ]
    # The layout MLflow's log_table writes (pandas "split" without the index): the UI reads it.
    table = {"columns": ["variant", "residual", "extra_kv", "run_id", "init", *cols], "data": rows}
    (folder / "table.json").write_text(json.dumps(table))
    (folder / "ablation.md").write_text(markdown)
    chosen = next(r for r in results if r["variant"] == choice.variant)
    checks = floor_checks(chosen)
    metrics = {f"{r['variant']}/{c}": float(r["metrics"][c]) for r in results for c in cols}
    metrics.update({f"floor/{k}": v for k, v in floors(results).items()})
    metrics.update({f"champion/{c.target}/l1_k{c.k}": c.model for c in checks})
    tags = {
        "iwarp.chosen_variant": choice.variant,
        "iwarp.chosen_run_id": choice.run_id,
        "iwarp.choice_reason": choice.reason,
        "iwarp.chosen_init": chosen.get("init", ""),
    }
    tags.update({f"iwarp.beats_floor.{c.target}": str(c.beats).lower() for c in checks})
    log = StepLog(tracking_uri, parent_run_id, folder).logger
    for name in ("ablation.png", "ablation.md", "table.json"):
        log.log_artifact(folder / name, "ablation")
    log.log_metrics(metrics, step=0)
    log.log_tags(tags)
    log.close("FINISHED")


def draw_animation(
    checkpoint: str, dataset: str, out_path: str, tracking_uri: str, parent_run_id: str, work_dir: str = ""
) -> str:
    """`iwarp.training.evaluate.animation_picture` on the test split, to `out_path` and, through
    the step's journal, to the parent run (`animation/animation.png`)."""
    from components.tracking import StepLog, step_folder
    from iwarp.training.evaluate import animation_picture

    folder = step_folder(work_dir, "animate")  # KFP artifact paths have no extension: PIL needs one
    png = animation_picture(checkpoint, dataset, folder / "animation.png", device="cpu")
    shutil.copy(png, out_path)
    with StepLog(tracking_uri, parent_run_id, folder) as log:
        log.log_artifact(Path(png), "animation")
    print(f"[animate] sources | driving | output on {dataset}/test -> {out_path}", flush=True)
    return out_path
