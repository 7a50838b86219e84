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

# The compact table (console, top of the report): the paper's reconstruction metrics on the
# general target, and L1 on the personal one.
CORE_METRICS = ("l1", "psnr", "lpips")
PERSONAL_CORE = ("l1",)
# Evaluation targets (metric key prefixes `<target>/`): unseen identities, and a held-out clip of a
# trained person. The selection metric is read on the first unless it names its target.
GENERAL, PERSONAL = "general", "personal"
# The copy-source floor: `<target>/copy_source_<metric>` (predict a source frame, ignore the driving one).
FLOOR_PREFIX = "copy_source_"

_K_SUFFIX = re.compile(r"^(?P<name>.+)_k(?P<k>\d+)$")


def split_key(key: str) -> tuple[str, str, int]:
    """`general/lpips_k4` -> ("general", "lpips", 4); no target -> ""; no source count -> 0."""
    target, _, rest = key.rpartition("/")
    m = _K_SUFFIX.match(rest)
    return (target, m.group("name"), int(m.group("k"))) if m else (target, rest, 0)


def variant_overrides(ablation: dict[str, Any]) -> list[str]:
    """`--set` overrides that turn the training config into this ablation variant."""
    return [
        f"model.implicit.residual={str(bool(ablation['residual'])).lower()}",
        f"model.implicit.extra_kv={str(bool(ablation['extra_kv'])).lower()}",
    ]


def higher_is_better(metric: str) -> bool:
    """Direction of an evaluation key such as `general/psnr_k4` (serving.canary decides by name)."""
    from serving.canary import higher_is_better as by_name

    base = _K_SUFFIX.match(metric)
    return by_name(base.group("name") if base else metric)


def selection_score(metrics: dict[str, float], metric: str) -> float:
    """Mean of `metric` over every source count it was measured at (`<metric>_k<k>` keys),
    or the metric itself when it has no per-k keys. A metric without a target (`lpips`) is read
    on the general target when the keys have targets. NaN when absent."""
    names = {metric} if "/" in metric else {metric, f"{GENERAL}/{metric}"}
    values = []
    for key, value in metrics.items():
        m = _K_SUFFIX.match(key)
        if (m and m.group("name") in names) or key in names:
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
        raise ValueError(
            f"metric {metric!r} is missing from the full model's evaluation: {sorted(by_name[FULL]['metrics'])}"
        )

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


def is_floor(key: str) -> bool:
    return split_key(key)[1].startswith(FLOOR_PREFIX)


def in_compact_table(key: str) -> bool:
    target, name, _ = split_key(key)
    return name in (PERSONAL_CORE if target == PERSONAL else CORE_METRICS)


def metric_columns(results: list[dict[str, Any]], compact: bool = False) -> list[str]:
    """Metric keys present in every variant's evaluation (floors aside), grouped by target, then
    metric, then source count (`compact`: the core metrics only, in the order l1, psnr, lpips)."""
    common = set.intersection(*(set(r["metrics"]) for r in results)) if results else set()
    common = {c for c in common if not is_floor(c) and (not compact or in_compact_table(c))}

    def order(key: str) -> tuple[Any, ...]:
        target, name, k = split_key(key)
        rank = CORE_METRICS.index(name) if compact and name in CORE_METRICS else 0
        return (target == PERSONAL, target, rank, name, k)

    return sorted(common, key=order)


def floors(results: list[dict[str, Any]]) -> dict[str, float]:
    """{`<target>/<metric>`: floor value}: the copy-source floor (the same data for every variant)."""
    out: dict[str, float] = {}
    for r in results:
        for key, value in r["metrics"].items():
            if is_floor(key):
                target, name, _ = split_key(key)
                out.setdefault(f"{target}/{name.removeprefix(FLOOR_PREFIX)}".lstrip("/"), float(value))
    return out


@dataclass
class FloorCheck:
    target: str
    k: int
    model: float
    floor: float

    @property
    def beats(self) -> bool:
        return self.model < self.floor


def floor_checks(result: dict[str, Any], metric: str = "l1") -> list[FloorCheck]:
    """Per target: the variant's `metric` at its fewest sources against the copy-source floor."""
    fl = floors([result])
    checks = []
    for key in sorted(fl):
        target, _, name = key.rpartition("/")
        if name != metric:
            continue
        ks = sorted(k for t, n, k in map(split_key, result["metrics"]) if t == target and n == metric and k)
        if ks:
            model = result["metrics"][f"{target}/{metric}_k{ks[0]}" if target else f"{metric}_k{ks[0]}"]
            checks.append(FloorCheck(target or GENERAL, ks[0], float(model), fl[key]))
    return checks


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def markdown_table(results: list[dict[str, Any]], choice: Choice | None = None, compact: bool = False) -> str:
    """The ablation table (rows: variants, then the copy-source floor; columns: metrics at each
    source count, then how each variant started when any was fine-tuned)."""
    cols = metric_columns(results, compact)
    with_init = any(r.get("init") for r in results)
    header = ["variant", "residual", "extra K/V", *cols, *(["init (from the shipped model)"] if with_init else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        mark = " **(registered)**" if choice and r["variant"] == choice.variant else ""
        row = [f"{r['variant']}{mark}", "yes" if r["residual"] else "no", "yes" if r["extra_kv"] else "no"]
        row += [_fmt(float(r["metrics"][c])) for c in cols]
        lines.append("| " + " | ".join(row + ([r.get("init") or "-"] if with_init else [])) + " |")
    fl = floors(results)
    if fl:
        row = ["copy-source floor", "-", "-"]
        for c in cols:
            target, name, _ = split_key(c)
            value = fl.get(f"{target}/{name}".lstrip("/"))
            row.append(_fmt(value) if value is not None else "")
        lines.append("| " + " | ".join(row + (["-"] if with_init else [])) + " |")
    return "\n".join(lines)


ALL_METRICS_HEADING = "## All metrics"


def floor_sentence(result: dict[str, Any]) -> str:
    """Whether the registered variant beats the copy-source floor on L1, per target."""
    checks = floor_checks(result)
    if not checks:
        return ""
    parts = [
        f"{c.target} {_fmt(c.model)} at k={c.k} vs floor {_fmt(c.floor)}: "
        + ("beats it" if c.beats else "does NOT beat it")
        for c in checks
    ]
    verdict = (
        "beats the copy-source floor on L1"
        if all(c.beats for c in checks)
        else "does NOT beat the copy-source floor on L1 everywhere"
    )
    return f"**Floor** (L1 of copying a source frame): the registered model {verdict} ({'; '.join(parts)})."


def report_markdown(results: list[dict[str, Any]], choice: Choice, metric: str, data_version: str = "") -> str:
    """Compact table (L1, PSNR, LPIPS per source count; personal L1), the floor check and the
    decision, then every metric."""
    core = metric_columns(results, compact=True)
    names = {split_key(c)[1] for c in core}
    arrows = ", ".join(f"{n} {'↑' if higher_is_better(n) else '↓'}" for n in CORE_METRICS if n in names)
    targets = sorted({split_key(c)[0] for c in core} - {""})
    chosen = next((r for r in results if r["variant"] == choice.variant), None)
    parts = [
        "# iwarp ablation: residual x extra K/V (paper Table 4, our numbers)",
        "",
        "Same data, seed and training budget for all four variants"
        + (f"; data version `{data_version}`." if data_version else ".")
        + (f" Targets: {', '.join(targets)}." if targets else "")
        + f" Columns: [target/]metric_k<number of sources>; better is {arrows}.",
        "",
        markdown_table(results, choice, compact=bool(core)),
        "",
        f"**Decision** (selection metric `{metric}`): {choice.reason}.",
    ]
    floor = floor_sentence(chosen) if chosen else ""
    if floor:
        parts += ["", floor]
    parts += ["", ALL_METRICS_HEADING, "", markdown_table(results, choice), ""]
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
