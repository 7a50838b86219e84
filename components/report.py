"""The compare step: the sweep's table and chart (the paper's Table 4 with our numbers) to
MLflow and to KFP artifacts, and the choice of the model to register."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model, Output

from components.base import IMAGE, REPORT_PACKAGES


@dsl.component(base_image=IMAGE, packages_to_install=REPORT_PACKAGES)
def compare_ablations(
    reports: Input[list[Artifact]],
    checkpoints: Input[list[Model]],
    tracking_uri: str,
    parent_run_id: str,
    data_version: str,
    select_metric: str,
    select_margin: float,
    work_dir: str,
    table: Output[Markdown],
    chart: Output[HTML],
    chosen_model: Output[Model],
) -> NamedTuple("Choice", [("variant", str), ("run_id", str), ("reason", str)]):
    """Compare the four variants; log the table/chart to the parent run, write them as
    Markdown/HTML artifacts, and pass on the checkpoint of the variant to register: the
    full model unless an ablation beats it on `select_metric` by more than `select_margin`."""
    from collections import namedtuple

    from components.steps.report import compare

    choice = compare(
        [r.path for r in reports],
        [(dict(c.metadata), c.path) for c in checkpoints],
        tracking_uri,
        parent_run_id,
        data_version,
        select_metric,
        float(select_margin),
        table.path,
        chart.path,
        chosen_model.path,
        work_dir,
    )
    chosen_model.metadata.update({"variant": choice.variant, "run_id": choice.run_id})
    return namedtuple("Choice", ["variant", "run_id", "reason"])(choice.variant, choice.run_id, choice.reason)


@dsl.component(base_image=IMAGE, packages_to_install=REPORT_PACKAGES)
def animate_champion(
    checkpoint: Input[Model],
    dataset: Input[Dataset],
    tracking_uri: str,
    parent_run_id: str,
    work_dir: str,
    animation: Output[Artifact],
):
    """The chosen model animating the first test video (an identity never trained on): its
    sources | the driving frames | the outputs, as a PNG artifact and in the sweep's parent run
    (`animation/animation.png`)."""
    from components.steps.report import draw_animation

    draw_animation(checkpoint.path, dataset.path, animation.path, tracking_uri, parent_run_id, work_dir)
    animation.metadata.update({"variant": checkpoint.metadata.get("variant", ""), "format": "png"})
