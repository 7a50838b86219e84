"""The paper's three claims, measured on real faces with an equal training budget.

(a) single source: implicit warping vs the FOMM baseline vs copying the source;
(b) error vs the number of sources k: implicit warping (one softmax over every source's tokens)
    vs FOMM (warp each source, average the warped features), the paper's multi-source table;
(c) the ablation, the paper's Table 4: residual on/off x extra K/V on/off.

Budget: every model trains FROM SCRATCH on `iwarp data faces`' general/train with the faces-64
recipe (configs/faces-64.yaml: 64 px, batch 8, L1 + VGG perceptual + equivariance, cosine lr
1e-3) for `--steps` steps on one CPU thread. The FOMM run (configs/keypoints-faces-64.yaml) is
also the keypoint pretraining: the four implicit runs start from its detector, frozen, as the
paper started from AA-PCA's keypoints. Evaluation: the unseen woman (general/test), sources
spread over her clip (different poses), the same driven frames for every k.

    python bench/paper_claims.py --steps 2000 --jobs 2        # trains 5 models, then evaluates
    python bench/paper_claims.py --fomm iwarp-faces-64-fomm --implicit iwarp-faces-64 --no-ablation
        # (a) and (b) from the shipped models, no training (their budgets differ: see models/README.md)

Runs resume (`iwarp train --resume`) and finished ones are reused, so an interrupted bench
continues. Writes results.json and claims.png (error vs k) to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.faces_quality import evaluate as faces_evaluate  # noqa: E402
from components.ablation import ABLATIONS, FULL, variant_overrides  # noqa: E402

KEYS = ("l1", "psnr", "lpips", "akd")
FOMM = "fomm"
IMPLICIT_CONFIG = REPO / "configs" / "faces-64.yaml"
KEYPOINT_CONFIG = REPO / "configs" / "keypoints-faces-64.yaml"


def train(name: str, config: Path, overrides: list[str], out: Path, steps: int) -> dict:
    """`iwarp train` in a subprocess (its own log); skipped when the run already finished."""
    run_dir = out / name
    final = run_dir / "checkpoints" / "final.ckpt"
    info_path = run_dir / "bench.json"
    if final.is_file():
        return json.loads(info_path.read_text()) if info_path.is_file() else {"checkpoint": str(final)}
    run_dir.mkdir(parents=True, exist_ok=True)
    sets = [f"out_dir={run_dir}", f"optim.steps={steps}", "data.root=" + str(REPO / "data/faces/general"), *overrides]
    cmd = [sys.executable, "-m", "app", "train", "--config", str(config), "--resume", "--set", *sets]
    print(f"[{time.strftime('%H:%M:%S')}] train {name}: {steps} steps (log: {run_dir / 'train.log'})", flush=True)
    started = time.monotonic()
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"error: training {name} failed (exit {proc.returncode}); see {run_dir / 'train.log'}")
    info = {"checkpoint": str(final), "steps": steps, "train_seconds": round(time.monotonic() - started, 1)}
    info_path.write_text(json.dumps(info, indent=2))
    print(f"[{time.strftime('%H:%M:%S')}] {name} done in {info['train_seconds'] / 60:.1f} min", flush=True)
    return info


def evaluate(checkpoint: str, data: Path, ks: list[int], stride: int, copy_source: bool = False) -> dict:
    report = faces_evaluate(checkpoint, data, ks, stride, landmarks=True, copy_source=copy_source)
    return {"per_k": {int(k): m for k, m in report["per_k"].items()}, "copy_source": report.get("copy_source")}


def fmt(value: float | None) -> str:
    return f"{value:>9.4f}" if value is not None else f"{'-':>9}"


def table_single(results: dict, floor: dict) -> list[str]:
    lines = ["(a) one source (k = 1)", f"{'model':<26}" + "".join(f"{k:>9}" for k in KEYS)]
    for name, label in ((FULL, "implicit warping"), (FOMM, "FOMM (first order)")):
        if name in results:
            lines.append(f"{label:<26}" + "".join(fmt(results[name]["per_k"][1].get(k)) for k in KEYS))
    lines.append(f"{'copy the source':<26}" + "".join(fmt(floor.get(k)) for k in KEYS))
    return lines


def table_sources(results: dict, ks: list[int]) -> list[str]:
    names = [(n, label) for n, label in ((FULL, "implicit"), (FOMM, "FOMM avg")) if n in results]
    head = f"{'k':<6}" + "".join(f"{label + ' ' + m:>18}" for _, label in names for m in ("L1", "LPIPS"))
    lines = ["(b) error vs number of sources (spread: different poses)", head]
    for k in ks:
        cells = "".join(
            f"{results[n]['per_k'][k]['l1']:>18.4f}{results[n]['per_k'][k]['lpips']:>18.4f}" for n, _ in names
        )
        lines.append(f"{k:<6}" + cells)
    return lines


def table_ablation(results: dict, ks: list[int]) -> list[str]:
    lines = [
        "(c) ablation (the paper's Table 4): L1 / LPIPS per k",
        f"{'variant':<14}{'residual':>9}{'extra K/V':>10}" + "".join(f"{'k=' + str(k):>16}" for k in ks),
    ]
    for a in ABLATIONS:
        if a["variant"] not in results:
            continue
        per_k = results[a["variant"]]["per_k"]
        cells = "".join(f"{per_k[k]['l1']:>8.4f}/{per_k[k]['lpips']:<7.4f}" for k in ks)
        lines.append(
            f"{a['variant']:<14}{'yes' if a['residual'] else 'no':>9}{'yes' if a['extra_kv'] else 'no':>10} {cells}"
        )
    return lines


def expectations(results: dict, floor: dict, ks: list[int]) -> dict[str, bool]:
    """What the paper reports, as checks on what was measured here."""
    checks: dict[str, bool] = {}
    lo, hi = ks[0], ks[-1]
    if FULL in results and FOMM in results:
        imp, fomm = results[FULL]["per_k"], results[FOMM]["per_k"]
        checks["(a) implicit beats FOMM with one source (L1 and LPIPS)"] = (
            imp[lo]["l1"] < fomm[lo]["l1"] and imp[lo]["lpips"] < fomm[lo]["lpips"]
        )
        checks[f"(b) implicit improves from k = {lo} to k = {hi} (L1)"] = imp[hi]["l1"] < imp[lo]["l1"]
        checks[f"(b) FOMM averaging does not improve from k = {lo} to k = {hi} (L1)"] = fomm[hi]["l1"] >= fomm[lo]["l1"]
        checks[f"(b) implicit beats FOMM at k = {hi} (L1 and LPIPS)"] = (
            imp[hi]["l1"] < fomm[hi]["l1"] and imp[hi]["lpips"] < fomm[hi]["lpips"]
        )
    if all(a["variant"] in results for a in ABLATIONS):

        def mean_l1(v: str) -> float:
            return sum(results[v]["per_k"][k]["l1"] for k in ks) / len(ks)

        checks["(c) removing the residual hurts (mean L1 over k)"] = mean_l1("no-residual") > mean_l1(FULL)
        checks["(c) removing the extra K/V hurts (mean L1 over k)"] = mean_l1("no-extra-kv") > mean_l1(FULL)
    return checks


def chart(results: dict, floor: dict, ks: list[int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("l1", "lpips")):
        for name, r in results.items():
            style = {"lw": 2.5} if name in (FULL, FOMM) else {"lw": 1, "ls": "--"}
            ax.plot(ks, [r["per_k"][k][metric] for k in ks], marker="o", label=name, **style)
        ax.axhline(floor[metric], color="grey", lw=1, ls=":", label="copy the source")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("sources k (spread poses)")
        ax.set_title(f"{metric.upper()} (lower is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Implicit warping vs FOMM averaging on an unseen face")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plan_runs(args) -> list[tuple[str, Path, list[str]]]:
    """(name, config, overrides) of every run to train; the FOMM run comes first (its detector
    feeds the others)."""
    fomm_ckpt = args.fomm or str(args.out / FOMM / "checkpoints" / "final.ckpt")
    runs = [] if args.fomm else [(FOMM, KEYPOINT_CONFIG, [])]
    variants = ABLATIONS if args.ablation else [a for a in ABLATIONS if a["variant"] == FULL]
    for a in variants:
        if a["variant"] == FULL and args.implicit:
            continue
        runs.append(
            (a["variant"], IMPLICIT_CONFIG, [*variant_overrides(a), f"model.implicit.keypoints_from={fomm_ckpt}"])
        )
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="training steps per model (batch 8), the equal budget")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once after the FOMM run (1 thread each)")
    ap.add_argument("--fomm", help="use this FOMM checkpoint (file or shipped name) instead of training one")
    ap.add_argument("--implicit", help="use this implicit checkpoint for (a)/(b) instead of training `full`")
    ap.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip (c): train 2 models, not 5")
    ap.add_argument("--sources", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--frame-stride", type=int, default=4)
    ap.add_argument("--data", type=Path, default=REPO / "data" / "faces" / "general")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "paper-claims")
    args = ap.parse_args()
    ks = sorted(args.sources)

    runs = plan_runs(args)
    trained: dict[str, dict] = {}
    if runs and runs[0][0] == FOMM:
        trained[FOMM] = train(*runs.pop(0), args.out, args.steps)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for name, info in zip([r[0] for r in runs], pool.map(lambda r: train(*r, args.out, args.steps), runs)):
            trained[name] = info
    checkpoints = {name: info["checkpoint"] for name, info in trained.items()}
    if args.fomm:
        checkpoints[FOMM] = args.fomm
    if args.implicit:
        checkpoints[FULL] = args.implicit

    print(f"[{time.strftime('%H:%M:%S')}] evaluating {len(checkpoints)} models at k = {ks}", flush=True)
    results = {
        name: evaluate(ckpt, args.data, ks, args.frame_stride, copy_source=i == 0)
        for i, (name, ckpt) in enumerate(checkpoints.items())
    }
    floor = next(iter(results.values()))["copy_source"]  # the same frames for every model
    budget = {n: {k: v for k, v in info.items() if k != "checkpoint"} for n, info in trained.items()}
    reused = sorted(set(checkpoints) - set(trained))
    print(f"\nbudget: {args.steps} steps x batch 8 from scratch per model trained here: {json.dumps(budget)}")
    if reused:
        print(f"given, not trained here (their own budgets): {', '.join(f'{n}={checkpoints[n]}' for n in reused)}")
    print(f"evaluation: {args.data} test split, spread sources, {int(floor['frames'])} driven frames per k\n")
    blocks = [table_single(results, floor), table_sources(results, ks)]
    if args.ablation:
        blocks.append(table_ablation(results, ks))
    for block in blocks:
        print("\n".join(block) + "\n")
    checks = expectations(results, floor, ks)
    for name, ok in checks.items():
        print(f"{'AS PAPER ' if ok else 'DIFFERS  '} {name}")
    print(f"\nwrote {chart(results, floor, ks, args.out / 'claims.png')}")
    summary = {
        "steps": args.steps,
        "checkpoints": checkpoints,
        "budget": budget,
        "copy_source": floor,
        "results": results,
        "checks": checks,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
