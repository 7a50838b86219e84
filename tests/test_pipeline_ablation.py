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
        out.append({**a, "run_id": f"run-{a['variant']}",
                    "metrics": {"lpips_k1": v, "lpips_k4": v * 0.9, "psnr_k1": psnr, "l1_k1": 0.1, "l1_k4": 0.09}})
    return out


def test_variant_overrides_switch_only_the_two_ablation_flags():
    assert variant_overrides(ABLATIONS[0]) == ["model.implicit.residual=true", "model.implicit.extra_kv=true"]
    assert variant_overrides({"variant": "neither", "residual": False, "extra_kv": False}) == [
        "model.implicit.residual=false", "model.implicit.extra_kv=false"]
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
