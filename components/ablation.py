"""The ablation sweep of the paper's Table 4 (residual on/off x extra K/V on/off): the four
variants, the config overrides that select them, the comparison table and chart, and the
rule that picks the variant to register.

Plain functions over plain dicts so the compare component stays a wrapper and the rule is
unit-tested on its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# Order matters: the full model first (the default choice), then single ablations, then neither.
ABLATIONS: list[dict[str, Any]] = [
    {"variant": "full", "residual": True, "extra_kv": True},
    {"variant": "no-residual", "residual": False, "extra_kv": True},
    {"variant": "no-extra-kv", "residual": True, "extra_kv": False},
    {"variant": "neither", "residual": False, "extra_kv": False},
]
FULL = "full"

# Metrics where larger is better; every other evaluation metric is an error.
HIGHER_IS_BETTER = ("psnr", "ssim")
# The compact table (console, top of the report): the paper's reconstruction metrics.
CORE_METRICS = ("l1", "psnr", "lpips")

_K_SUFFIX = re.compile(r"^(?P<name>.+)_k(?P<k>\d+)$")


def variant_overrides(ablation: dict[str, Any]) -> list[str]:
    """`--set` overrides that turn the training config into this ablation variant."""
    return [
        f"model.implicit.residual={str(bool(ablation['residual'])).lower()}",
        f"model.implicit.extra_kv={str(bool(ablation['extra_kv'])).lower()}",
    ]


def higher_is_better(metric: str) -> bool:
    base = _K_SUFFIX.match(metric)
    name = (base.group("name") if base else metric).lower()
    return any(name.endswith(h) for h in HIGHER_IS_BETTER)


def selection_score(metrics: dict[str, float], metric: str) -> float:
    """Mean of `metric` over every source count it was measured at (`<metric>_k<k>` keys),
    or the metric itself when it has no per-k keys. NaN when absent."""
    values = []
    for key, value in metrics.items():
        m = _K_SUFFIX.match(key)
        if (m and m.group("name") == metric) or key == metric:
            values.append(float(value))
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass
class Choice:
    variant: str
    run_id: str
    reason: str


def choose_variant(results: list[dict[str, Any]], metric: str, margin: float) -> Choice:
    """The full model, unless another variant beats it on `metric` by more than `margin`
    (relative): the sweep then says otherwise and the best variant wins.

    `results`: one dict per variant with `variant`, `run_id` and `metrics`.
    """
    by_name = {r["variant"]: r for r in results}
    if FULL not in by_name:
        raise ValueError(f"the sweep has no {FULL!r} variant: {sorted(by_name)}")
    hib = higher_is_better(metric)
    scores = {name: selection_score(r["metrics"], metric) for name, r in by_name.items()}
    full_score = scores[FULL]
    if not math.isfinite(full_score):
        raise ValueError(f"metric {metric!r} is missing from the full model's evaluation: {sorted(by_name[FULL]['metrics'])}")

    def gain(score: float) -> float:  # relative improvement over the full model, > 0 is better
        if not math.isfinite(score):
            return -math.inf
        diff = (score - full_score) if hib else (full_score - score)
        return diff / max(abs(full_score), 1e-12)

    best = max((n for n in scores if n != FULL), key=lambda n: gain(scores[n]), default=None)
    direction = "higher" if hib else "lower"
    if best is not None and gain(scores[best]) > margin:
        reason = (
            f"registered '{best}' instead of the full model: its mean {metric} ({scores[best]:.4g}) beats "
            f"full ({full_score:.4g}) by {gain(scores[best]):.1%} ({direction} is better), more than the "
            f"{margin:.0%} margin"
        )
        return Choice(best, by_name[best]["run_id"], reason)
    runner = f"; best ablation '{best}' at {scores[best]:.4g}" if best is not None else ""
    reason = (
        f"registered the full model (residual + extra K/V): mean {metric} {full_score:.4g} ({direction} is better)"
        f"{runner}, no ablation beats it by more than {margin:.0%}"
    )
    return Choice(FULL, by_name[FULL]["run_id"], reason)


def metric_columns(results: list[dict[str, Any]], only: tuple[str, ...] | None = None) -> list[str]:
    """Metric keys present in every variant's evaluation, grouped by metric then source count
    (`only`: just these metric names, in this order)."""
    common = set.intersection(*(set(r["metrics"]) for r in results)) if results else set()
    if only is not None:
        common = {c for c in common if (_K_SUFFIX.match(c).group("name") if _K_SUFFIX.match(c) else c) in only}

    def order(key: str) -> tuple[Any, ...]:
        m = _K_SUFFIX.match(key)
        name, k = (m.group("name"), int(m.group("k"))) if m else (key, 0)
        return (only.index(name) if only and name in only else 0, name, k)

    return sorted(common, key=order)


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def markdown_table(results: list[dict[str, Any]], choice: Choice | None = None,
                   only: tuple[str, ...] | None = None) -> str:
    """The ablation table (rows: variants, columns: metrics at each source count)."""
    cols = metric_columns(results, only)
    header = ["variant", "residual", "extra K/V", *cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        mark = " **(registered)**" if choice and r["variant"] == choice.variant else ""
        row = [f"{r['variant']}{mark}", "yes" if r["residual"] else "no", "yes" if r["extra_kv"] else "no"]
        row += [_fmt(float(r["metrics"][c])) for c in cols]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


ALL_METRICS_HEADING = "## All metrics"


def report_markdown(results: list[dict[str, Any]], choice: Choice, metric: str, data_version: str = "") -> str:
    """Compact table (L1, PSNR, LPIPS per source count) and the decision, then every metric."""
    core = metric_columns(results, CORE_METRICS)
    arrows = ", ".join(f"{n} {'↑' if higher_is_better(n) else '↓'}" for n in CORE_METRICS if any(c.startswith(n + "_") for c in core))
    parts = [
        "# iwarp ablation: residual x extra K/V (paper Table 4, our numbers)",
        "",
        "Same data, seed and training budget for all four variants"
        + (f"; data version `{data_version}`." if data_version else ".")
        + f" Columns: metric_k<number of sources>; better is {arrows}.",
        "",
        markdown_table(results, choice, CORE_METRICS if core else None),
        "",
        f"**Decision** (selection metric `{metric}`): {choice.reason}.",
        "",
        ALL_METRICS_HEADING,
        "",
        markdown_table(results, choice),
        "",
    ]
    return "\n".join(parts)


def chart(results: list[dict[str, Any]], path: str) -> str:
    """Grouped bars: one panel per metric, one bar group per source count, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")  # headless: components run in pods without a display
    import matplotlib.pyplot as plt

    cols = metric_columns(results)
    groups: dict[str, list[str]] = {}
    for c in cols:
        m = _K_SUFFIX.match(c)
        groups.setdefault(m.group("name") if m else c, []).append(c)
    n = max(len(groups), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    width = 0.8 / max(len(results), 1)
    for ax, (name, keys) in zip(axes[0], groups.items(), strict=False):
        for i, r in enumerate(results):
            xs = [j + i * width for j in range(len(keys))]
            bars = ax.bar(xs, [float(r["metrics"][k]) for k in keys], width, label=r["variant"])
            ax.bar_label(bars, fmt="%.3g", fontsize=6, rotation=90, padding=2)
        ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(keys))])
        ax.set_xticklabels([k.removeprefix(name).lstrip("_") or name for k in keys])
        ax.set_title(f"{name} ({'higher' if higher_is_better(name) else 'lower'} is better)")
        ax.margins(y=0.15)  # room for the value labels
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Ablation: residual x extra K/V")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path
