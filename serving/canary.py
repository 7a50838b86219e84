"""Canary decision: should a candidate model version replace the current default?

The decision is a pure function of per-version statistics measured on the *same* held-out
requests, so the TorchServe path (`iwarp serve canary`, see `serving.rollout`) and the
Kubernetes path (KServe `canaryTrafficPercent`, `deploy.kserve`) promote and roll back on
exactly the same rules:

    from serving.canary import CanaryThresholds, VersionStats, decide
    verdict = decide(baseline_stats, candidate_stats, thresholds)
    if verdict.promote: ...          # set-default / canaryTrafficPercent -> 100
    else: ...                        # unregister / canaryTrafficPercent -> 0
    print(verdict.summary())

This module imports nothing heavy (no torch, no HTTP client) so any process can use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Quality metrics where a larger value is better; every other metric is an error (lower is better).
# Quality metrics where larger is better; every other one is an error. The one home of metric
# direction: the canary and the ablation report (components.ablation) both ask `higher_is_better`.
HIGHER_IS_BETTER = frozenset({"psnr", "ssim"})


def higher_is_better(metric: str) -> bool:
    """`psnr`, `ssim` and names ending in them (`copy_source_psnr`); case does not matter."""
    return metric.lower().endswith(tuple(HIGHER_IS_BETTER))


@dataclass
class CanaryThresholds:
    """When a candidate may replace the baseline. Loaded from the `canary:` section of
    `serving/serve.yaml` (`serving.config.load_serve_config`) or its own YAML file
    (`serving.config.load_thresholds`)."""

    # Relative regression allowed per quality metric: for a lower-is-better metric (l1, lpips)
    # the candidate passes when cand <= base * (1 + tol) + quality_abs_tolerance; for a
    # higher-is-better one (psnr) when cand >= base * (1 - tol) - quality_abs_tolerance.
    # A metric listed here but missing from either side blocks promotion (nothing to compare).
    max_quality_regression: dict[str, float] = field(default_factory=lambda: {"l1": 0.05})
    # Absolute slack so two near-identical models don't fail on float noise around zero.
    quality_abs_tolerance: float = 1e-4
    # Candidate error rate (failed / sent) may not exceed this.
    max_error_rate: float = 0.0
    # Candidate p95 latency may be at most this multiple of the baseline's p95 ...
    max_p95_latency_ratio: float = 1.5
    # ... and at most this many milliseconds (0 = no absolute cap).
    max_p95_latency_ms: float = 0.0
    # Fewer successful canary requests than this on either side is not enough evidence.
    min_requests: int = 4


@dataclass
class VersionStats:
    """What one model version did on the canary set."""

    version: str
    n_requests: int  # requests sent
    error_rate: float  # failed / sent, in [0, 1]
    p95_latency_ms: float  # over all requests, successful or not
    quality: dict[str, float] = field(default_factory=dict)  # mean over successful requests
    p50_latency_ms: float = float("nan")

    @property
    def n_errors(self) -> int:
        return round(self.error_rate * self.n_requests)

    @classmethod
    def from_samples(
        cls,
        version: str,
        latencies_ms: Sequence[float],
        errors: int,
        quality_samples: dict[str, Sequence[float]] | None = None,
    ) -> VersionStats:
        """Aggregate raw measurements: one latency per request sent, `errors` of which failed,
        and per-metric values from the successful ones."""
        n = len(latencies_ms)
        quality = {k: sum(v) / len(v) for k, v in (quality_samples or {}).items() if len(v)}
        return cls(
            version=str(version),
            n_requests=n,
            error_rate=(errors / n) if n else 1.0,
            p95_latency_ms=percentile(latencies_ms, 95),
            p50_latency_ms=percentile(latencies_ms, 50),
            quality=quality,
        )


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class CanaryVerdict:
    promote: bool
    reasons: list[str]  # why not (when promote is False) or what passed (when True)
    checks: list[Check] = field(default_factory=list)
    baseline: VersionStats | None = None
    candidate: VersionStats | None = None

    @property
    def action(self) -> str:
        return "promote" if self.promote else "rollback"

    def summary(self) -> str:
        """Human-readable verdict, one check per line."""
        b = self.baseline.version if self.baseline else "none: first deployment"
        c = self.candidate.version if self.candidate else "?"
        head = f"CANARY VERDICT: {'PROMOTE' if self.promote else 'ROLL BACK'} candidate {c} (baseline {b})"
        lines = [head] + [f"  [{'pass' if ch.passed else 'FAIL'}] {ch.name}: {ch.detail}" for ch in self.checks]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "action": self.action,
            "reasons": list(self.reasons),
            "checks": [asdict(ch) for ch in self.checks],
            "baseline": asdict(self.baseline) if self.baseline else None,
            "candidate": asdict(self.candidate) if self.candidate else None,
        }


def evidence_repeats(n_cases: int, repeats: int, thresholds: CanaryThresholds) -> int:
    """Times to send each case so a version can reach `min_requests` successes even from a
    small canary set (at least `repeats`)."""
    return max(repeats, -(-thresholds.min_requests // max(n_cases, 1)))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) without importing numpy; NaN if empty."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def decide(baseline: VersionStats | None, candidate: VersionStats, thresholds: CanaryThresholds) -> CanaryVerdict:
    """Promote only if every check passes; each failed check is one reason.

    `baseline=None` is a first deployment (nothing serves yet): see `first_version_verdict`.
    """
    if baseline is None:
        return first_version_verdict(candidate, thresholds)
    t = thresholds
    checks: list[Check] = []

    def ok_count(s: VersionStats) -> int:
        return s.n_requests - s.n_errors

    n_b, n_c = ok_count(baseline), ok_count(candidate)
    checks.append(
        Check(
            "evidence",
            n_b >= t.min_requests and n_c >= t.min_requests,
            f"successful requests baseline={n_b} candidate={n_c} (need >= {t.min_requests} each)",
        )
    )

    checks.append(
        Check(
            "error rate",
            candidate.error_rate <= t.max_error_rate + 1e-12,
            f"candidate {candidate.error_rate:.3f} vs baseline {baseline.error_rate:.3f} "
            f"(allowed <= {t.max_error_rate:.3f})",
        )
    )

    for metric, tol in sorted(t.max_quality_regression.items()):
        b, c = baseline.quality.get(metric), candidate.quality.get(metric)
        if b is None or c is None or not (math.isfinite(b) and math.isfinite(c)):
            checks.append(Check(f"quality {metric}", False, f"missing or non-finite (baseline={b}, candidate={c})"))
            continue
        if higher_is_better(metric):
            limit = b * (1 - tol) - t.quality_abs_tolerance
            passed, rel = c >= limit, "higher is better"
            detail = f"candidate {c:.5f} vs baseline {b:.5f} ({rel}; allowed >= {limit:.5f})"
        else:
            limit = b * (1 + tol) + t.quality_abs_tolerance
            passed, rel = c <= limit, "lower is better"
            detail = f"candidate {c:.5f} vs baseline {b:.5f} ({rel}; allowed <= {limit:.5f})"
        checks.append(Check(f"quality {metric}", passed, detail))

    bp, cp = baseline.p95_latency_ms, candidate.p95_latency_ms
    if math.isfinite(bp) and math.isfinite(cp) and bp > 0:
        ratio = cp / bp
        checks.append(
            Check(
                "p95 latency",
                ratio <= t.max_p95_latency_ratio,
                f"candidate {cp:.1f} ms vs baseline {bp:.1f} ms "
                f"(ratio {ratio:.2f}, allowed <= {t.max_p95_latency_ratio:.2f})",
            )
        )
    else:
        checks.append(Check("p95 latency", False, f"not measurable (baseline={bp}, candidate={cp})"))
    if t.max_p95_latency_ms > 0:
        checks.append(
            Check(
                "p95 latency cap",
                math.isfinite(cp) and cp <= t.max_p95_latency_ms,
                f"candidate {cp:.1f} ms (cap {t.max_p95_latency_ms:.1f} ms)",
            )
        )

    failed = [f"{ch.name}: {ch.detail}" for ch in checks if not ch.passed]
    promote = not failed
    reasons = failed if failed else [f"{ch.name}: {ch.detail}" for ch in checks]
    return CanaryVerdict(promote=promote, reasons=reasons, checks=checks, baseline=baseline, candidate=candidate)


def with_failed_check(verdict: CanaryVerdict, check: Check) -> CanaryVerdict:
    """The verdict with one more, failed, check: never a promotion (e.g. evidence the numbers
    cannot show, such as a worker that died and was restarted during the canary)."""
    checks = [*verdict.checks, check]
    reasons = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    return CanaryVerdict(False, reasons, checks, verdict.baseline, verdict.candidate)


def worker_restarts(before: dict[str, list[int]], after: dict[str, list[int]], versions: Sequence[str]) -> Check:
    """TorchServe restarts a worker that dies (a crash, the OOM killer, kill -9) and requests
    queued meanwhile may still succeed, so the answers alone can hide it. Any version whose
    worker pids changed during the canary makes the evidence incomplete: not promotable."""
    changed = [f"{v} ({before.get(v)} -> {after.get(v)})" for v in versions if before.get(v) != after.get(v)]
    if changed:
        return Check(
            "worker restarts",
            False,
            "worker died and was restarted during the canary: "
            + ", ".join(changed)
            + "; the evidence is incomplete, rerun the canary",
        )
    return Check("worker restarts", True, "no worker restarted during the canary")


def first_version_verdict(candidate: VersionStats, thresholds: CanaryThresholds) -> CanaryVerdict:
    """Nothing serves yet, so nothing to compare against: the first version must answer every
    canary case (error rate 0, enough cases) and meet the absolute latency cap if one is set."""
    n_ok = candidate.n_requests - candidate.n_errors
    checks = [
        Check("baseline", True, "no version serves yet: first deployment, no comparison"),
        Check(
            "evidence",
            n_ok >= thresholds.min_requests,
            f"{n_ok} successful requests (need >= {thresholds.min_requests})",
        ),
        Check(
            "error rate",
            candidate.error_rate == 0.0,
            f"candidate {candidate.error_rate:.3f} (a first version must answer every case)",
        ),
    ]
    if thresholds.max_p95_latency_ms > 0:
        cp = candidate.p95_latency_ms
        checks.append(
            Check(
                "p95 latency cap",
                math.isfinite(cp) and cp <= thresholds.max_p95_latency_ms,
                f"candidate {cp:.1f} ms (cap {thresholds.max_p95_latency_ms:.1f} ms)",
            )
        )
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    return CanaryVerdict(not failed, failed or [f"{c.name}: {c.detail}" for c in checks], checks, None, candidate)


def next_traffic_percent(verdict: CanaryVerdict, current: int, steps: Sequence[int] = (10, 50, 100)) -> int:
    """Progressive rollout for a traffic-splitting server (KServe canaryTrafficPercent):
    a failed verdict sends all traffic back (0); a passed one moves to the next step above
    `current` (100 = the candidate takes over)."""
    if not verdict.promote:
        return 0
    for step in sorted(steps):
        if step > current:
            return int(step)
    return 100
