"""The compare step's rules: which variant gets registered, and the table/chart it writes."""

import math

import pytest
from PIL import Image

from components.ablation import (
    ABLATIONS,
    chart,
    choose_variant,
    higher_is_better,
    markdown_table,
    metric_columns,
    report_markdown,
    selection_score,
    variant_overrides,
)


def results(lpips: dict[str, float], psnr: float = 20.0) -> list[dict]:
    out = []
    for a in ABLATIONS:
        v = lpips[a["variant"]]
        out.append(
            {
                **a,
                "run_id": f"run-{a['variant']}",
                "metrics": {"lpips_k1": v, "lpips_k4": v * 0.9, "psnr_k1": psnr, "l1_k1": 0.1, "l1_k4": 0.09},
            }
        )
    return out


def test_variant_overrides_switch_only_the_two_ablation_flags():
    assert variant_overrides(ABLATIONS[0]) == ["model.implicit.residual=true", "model.implicit.extra_kv=true"]
    assert variant_overrides({"variant": "neither", "residual": False, "extra_kv": False}) == [
        "model.implicit.residual=false",
        "model.implicit.extra_kv=false",
    ]
    assert len({tuple(variant_overrides(a)) for a in ABLATIONS}) == 4


def test_selection_score_averages_over_source_counts():
    m = {"lpips_k1": 0.3, "lpips_k2": 0.2, "lpips_k4": 0.1, "l1_k1": 5.0}
    assert selection_score(m, "lpips") == pytest.approx(0.2)
    assert selection_score(m, "l1") == pytest.approx(5.0)
    assert math.isnan(selection_score(m, "psnr"))
    assert higher_is_better("psnr_k4") and not higher_is_better("lpips_k4") and not higher_is_better("l1")


def test_full_model_is_kept_when_no_ablation_clearly_beats_it():
    r = results({"full": 0.200, "no-residual": 0.199, "no-extra-kv": 0.25, "neither": 0.3})
    choice = choose_variant(r, "lpips", margin=0.02)
    assert choice.variant == "full" and choice.run_id == "run-full"
    assert "full model" in choice.reason and "no-residual" in choice.reason  # names the runner-up


def test_sweep_overrules_the_full_model_beyond_the_margin():
    r = results({"full": 0.200, "no-residual": 0.21, "no-extra-kv": 0.150, "neither": 0.17})
    choice = choose_variant(r, "lpips", margin=0.02)
    assert choice.variant == "no-extra-kv" and choice.run_id == "run-no-extra-kv"
    assert "instead of the full model" in choice.reason and "25.0%" in choice.reason


def test_higher_is_better_metrics_are_compared_the_right_way():
    r = results({a["variant"]: 0.2 for a in ABLATIONS})
    r[3]["metrics"]["psnr_k1"] = 30.0  # 'neither' has a much higher PSNR
    assert choose_variant(r, "psnr", margin=0.02).variant == "neither"
    r[3]["metrics"]["psnr_k1"] = 10.0
    assert choose_variant(r, "psnr", margin=0.02).variant == "full"


def test_missing_metric_or_full_variant_is_a_clear_error():
    r = results({a["variant"]: 0.2 for a in ABLATIONS})
    with pytest.raises(ValueError, match="fid"):
        choose_variant(r, "fid", margin=0.02)
    with pytest.raises(ValueError, match="full"):
        choose_variant(r[1:], "lpips", margin=0.02)


def test_table_lists_every_variant_and_shared_metric(tmp_path):
    r = results({"full": 0.2, "no-residual": 0.21, "no-extra-kv": 0.22, "neither": 0.23})
    r[1]["metrics"]["extra_only_here"] = 1.0
    cols = metric_columns(r)
    assert cols == ["l1_k1", "l1_k4", "lpips_k1", "lpips_k4", "psnr_k1"]  # shared keys, grouped by metric then k
    choice = choose_variant(r, "lpips", 0.02)
    table = markdown_table(r, choice)
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| full **(registered)** | yes | yes | 0.1 | 0.09 | 0.2 |")
    assert lines[5].startswith("| neither | no | no |")
    md = report_markdown(r, choice, "lpips", data_version="abc123")
    assert "abc123" in md and "**Decision**" in md and "psnr ↑" in md and "lpips ↓" in md
    compact, full = md.split("## All metrics")
    # compact table: the paper's metrics in the order l1, psnr, lpips; the full one has the rest
    assert "| variant | residual | extra K/V | l1_k1 | l1_k4 | psnr_k1 | lpips_k1 | lpips_k4 |" in compact
    assert "extra_only_here" not in md  # not shared by every variant
    assert full.count("| neither |") == 1

    png = chart(r, str(tmp_path / "chart.png"))
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 200


def target_results(general_l1: dict[str, float], personal_l1: float = 0.05) -> list[dict]:
    """The main job's reports: general and personal targets, their copy-source floors, init notes."""
    out = []
    for a in ABLATIONS:
        g = general_l1[a["variant"]]
        metrics = {
            "general/l1_k1": g,
            "general/l1_k2": g * 0.9,
            "general/psnr_k1": 20.0,
            "general/lpips_k1": g * 2,
            "general/copy_source_l1": 0.12,
            "general/copy_source_lpips": 0.3,
            "personal/l1_k1": personal_l1,
            "personal/lpips_k1": 0.2,
            "personal/copy_source_l1": 0.08,
        }
        init = "loaded 90" + ("" if a["residual"] else "; skipped residual_mlp")
        out.append({**a, "run_id": f"run-{a['variant']}", "init": init, "metrics": metrics})
    return out


def test_targets_floors_and_init_in_the_report():
    r = target_results({"full": 0.10, "no-residual": 0.11, "no-extra-kv": 0.12, "neither": 0.13})
    choice = choose_variant(r, "lpips", 0.02)  # read on the general target
    assert choice.variant == "full" and "mean lpips 0.2 " in choice.reason
    assert selection_score(r[0]["metrics"], "lpips") == pytest.approx(0.2)
    assert selection_score(r[0]["metrics"], "personal/lpips") == pytest.approx(0.2)
    assert metric_columns(r, compact=True) == [
        "general/l1_k1",
        "general/l1_k2",
        "general/psnr_k1",
        "general/lpips_k1",
        "personal/l1_k1",
    ]
    md = report_markdown(r, choice, "lpips")
    compact = md.split("## All metrics")[0]
    assert "| init (from the shipped model) |" in compact and "| loaded 90; skipped residual_mlp |" in compact
    # the floor is a row of its own, under the metric it bounds, never a column
    assert "| copy-source floor | - | - | 0.12 | 0.12 |  | 0.3 | 0.08 | - |" in compact
    assert "copy_source" not in compact
    assert "the registered model beats the copy-source floor on L1" in compact
    assert "general 0.1 at k=1 vs floor 0.12: beats it; personal 0.05 at k=1 vs floor 0.08: beats it" in compact


def test_a_champion_above_the_floor_is_said_so():
    r = target_results({a["variant"]: 0.2 for a in ABLATIONS}, personal_l1=0.05)
    md = report_markdown(r, choose_variant(r, "l1", 0.02), "l1")
    assert "does NOT beat the copy-source floor on L1 everywhere" in md
    assert "general 0.2 at k=1 vs floor 0.12: does NOT beat it; personal 0.05 at k=1 vs floor 0.08: beats it" in md
