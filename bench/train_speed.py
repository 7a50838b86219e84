"""CPU training throughput (samples/s) of the old vs the new training settings, with a quality check.

Default run: `iwarp train` with the tiny config and its full loss set (VGG16 perceptual pyramid,
GAN + feature matching, keypoint equivariance), 1 process x 1 thread, at 64 px and at 128 px
(`model.implicit.image_size=128` on synthetic data made at 128 px), once per setting:

    old = precision=fp32, channels_last=false, all five VGG16 taps (relu1_2 .. relu5_3)
    new = precision=auto (bf16 autocast on CPUs with AVX512-BF16/AMX), channels_last=true,
          VGG16 truncated after relu3_3 (loss.perceptual_layer_weights=[1,1,1,0,0])

Throughput is the samples/s the trainer logs, averaged over the logging windows after the first
(start-up and the first allocations excluded). Target: new >= 2x old at both sizes.

Quality at equal steps: both settings train the same number of steps from the same seed on the
same data; each final checkpoint is then scored by `iwarp evaluate` (L1/LPIPS on the test split,
1 and 2 sources). The logged g/perceptual uses each run's own VGG layers, so only the evaluation
is comparable. With a few dozen steps this is a smoke check of quality parity, not a proof.

`--ddp` instead runs the older comparison: 1 process vs 2 data-parallel processes (torchrun +
gloo) vs 1 process x 2 threads (target: 2 processes >= 1.7x one), plus a 256 px figure on one
GPU when CUDA is present.

    python bench/train_speed.py [--steps 40] [--sizes 64 128] [--out runs/bench-speed]
    python bench/train_speed.py --ddp [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SETTINGS = {
    "old": ["precision=fp32", "channels_last=false", "loss.perceptual_layer_weights=[1,1,1,1,1]"],
    "new": ["precision=auto", "channels_last=true", "loss.perceptual_layer_weights=[1,1,1,0,0]"],
}
SPEED_TARGET = 2.0  # new / old samples/s
QUALITY_SLACK = 1.05  # smoke check: new's test L1 and LPIPS at most 5% above old's
EVAL_SOURCES = ("1", "2")


def make_data(root: Path, size: int = 64) -> Path:
    from iwarp.data.synth import SynthConfig, make_synth_dataset

    if not (root / "train").is_dir():
        make_synth_dataset(root, SynthConfig(num_identities=8, videos_per_identity=2, num_frames=32, image_size=size))
    return root


def subprocess_env(threads: int) -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )


def sh(name: str, cmd: list[str], threads: int) -> None:
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=subprocess_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def run(name: str, out: Path, config: Path, sets: list[str], nproc: int, threads: int) -> dict:
    """Train once; the steady-state throughput and the last logged losses."""
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "iwarp",
        "train",
        "--config",
        str(config),
        "--set",
        f"out_dir={run_dir}",
        f"threads={threads}",
        "logging.progress=false",
        "logging.images_every_steps=0",
        *sets,
    ]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    print(f"[bench] training {name} ...", flush=True)
    start = time.perf_counter()
    sh(name, cmd, threads)
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:] or records[-1:]
    return {
        "name": name,
        "run_dir": str(run_dir),
        "processes": nproc,
        "threads_per_process": threads,
        "samples_per_s": mean(steady, "samples_per_s"),
        "samples_per_cpu_s": mean(steady, "samples_per_cpu_s"),
        "windows": len(steady),
        "wall_s": wall,
        "last_logged": records[-1],
    }


def evaluate(run_dir: Path, data: Path) -> dict:
    """Test-split L1/LPIPS of the final checkpoint (the same metric for every setting)."""
    out = run_dir / "metrics-eval.json"
    print(f"[bench] evaluating {run_dir.name} ...", flush=True)
    sh(
        f"evaluate {run_dir.name}",
        [
            sys.executable,
            "-m",
            "iwarp",
            "evaluate",
            "--checkpoint",
            str(run_dir / "checkpoints" / "final.ckpt"),
            "--data",
            str(data),
            "--sources",
            *EVAL_SOURCES,
            "--out",
            str(out),
            "--frame-stride",
            "4",
            "--no-landmarks",
            "--no-fd",
            "--copy-source",
        ],
        threads=1,
    )
    return json.loads(out.read_text())


def common_sets(data: Path, steps: int, log_every: int, batch_size: int, extra: list[str]) -> list[str]:
    return [
        f"data.root={data}",
        f"optim.steps={steps}",
        f"logging.every_steps={log_every}",
        f"checkpoint.every_steps={steps}",
        f"data.batch_size={batch_size}",
        *extra,
    ]


def old_vs_new(args: argparse.Namespace) -> list[dict]:
    """Train and evaluate old and new at every size; one row per (size, setting)."""
    log_every = max(1, args.steps // 5)  # 5 windows ending at the last step; the first is dropped
    rows = []
    for size in args.sizes:
        data = make_data(args.out / f"data{size}", size)
        size_sets = [f"model.implicit.image_size={size}", f"data.image_size={size}", "seed=0"]
        for setting, sets in SETTINGS.items():
            row = run(
                f"{size}px-{setting}",
                args.out,
                TINY,
                [*common_sets(data, args.steps, log_every, args.batch_size, args.extra), *size_sets, *sets],
                nproc=1,
                threads=1,
            )
            row.update(size=size, setting=setting, eval=evaluate(Path(row["run_dir"]), data))
            rows.append(row)
    return rows


def speed_checks(rows: list[dict]) -> dict[int, float]:
    """new/old samples/s per size."""
    by = {(r["size"], r["setting"]): r for r in rows}
    return {size: by[size, "new"]["samples_per_s"] / by[size, "old"]["samples_per_s"] for size, _ in by}


def quality_ok(old: dict, new: dict) -> bool:
    return all(new["per_k"][k][m] <= QUALITY_SLACK * old["per_k"][k][m] for k in EVAL_SOURCES for m in ("l1", "lpips"))


def print_old_vs_new(rows: list[dict], args: argparse.Namespace, load_before: float) -> dict:
    from iwarp.training.loop import cpu_has_native_bf16

    ratios = speed_checks(rows)
    print(
        f"\ntraining throughput, old vs new settings: tiny config, full losses (VGG16 perceptual pyramid, GAN + "
        f"feature matching, equivariance), batch {args.batch_size}, 1 process x 1 thread, {args.steps} steps"
    )
    print(f"old: {' '.join(SETTINGS['old'])}\nnew: {' '.join(SETTINGS['new'])}")
    print(
        f"this CPU has native bf16 (AVX512-BF16/AMX): {cpu_has_native_bf16()} -> new precision=auto runs "
        f"{'bf16 autocast' if cpu_has_native_bf16() else 'fp32'}"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} "
        "after; shared with other users, so absolute numbers are noisy (the ratio is measured side by side)\n"
    )
    print(
        f"{'size':>5}  {'setting':<8}{'samples/s':>10}{'new/old':>9}{'samples/CPU-s':>15}{'new/old':>9}"
        f"{'wall s':>8}  {'result':<6}"
    )
    by = {(r["size"], r["setting"]): r for r in rows}
    for r in rows:
        ratio = ratios[r["size"]] if r["setting"] == "new" else None
        cpu_ratio = r["samples_per_cpu_s"] / by[r["size"], "old"]["samples_per_cpu_s"] if ratio else None
        verdict = "" if ratio is None else "PASS" if ratio >= SPEED_TARGET else "FAIL"
        print(
            f"{r['size']:>5}  {r['setting']:<8}{r['samples_per_s']:>10.2f}{'' if ratio is None else f'{ratio:.2f}x':>9}"
            f"{r['samples_per_cpu_s']:>15.2f}{'' if cpu_ratio is None else f'{cpu_ratio:.2f}x':>9}"
            f"{r['wall_s']:>8.0f}  {verdict:<6}"
        )
    print(
        f"target: new >= {SPEED_TARGET:g}x old samples/s (wall clock) at every size; samples/CPU-s (the process's own"
    )
    print("CPU time) is less sensitive to other users' load and shows whether a miss is the machine or the code")

    print(f"\nquality at equal steps ({args.steps} steps each, same seed and data) - a SMOKE CHECK of parity only:")
    print("last logged window (g/perceptual uses each run's own VGG layers: not comparable between settings):")
    for r in rows:
        last = r["last_logged"]
        terms = "  ".join(f"{k}={last[k]:.4f}" for k in sorted(last) if k.startswith("g/") and k != "g/grad_norm")
        print(f"  {r['size']:>4}px {r['setting']:<4} step {int(last['step'])}: {terms}")
    print("test split, `iwarp evaluate` (same metric for both; copy = the copy-the-source floor):")
    print(f"{'size':>5}  {'setting':<8}{'k':>3}{'L1':>9}{'LPIPS':>9}{'PSNR':>8}")
    for r in rows:
        for k in EVAL_SOURCES:
            m = r["eval"]["per_k"][k]
            print(f"{r['size']:>5}  {r['setting']:<8}{k:>3}{m['l1']:>9.4f}{m['lpips']:>9.4f}{m['psnr']:>8.2f}")
        if r["setting"] == "old":
            m = r["eval"]["copy_source"]
            print(f"{r['size']:>5}  {'copy':<8}{'-':>3}{m['l1']:>9.4f}{m['lpips']:>9.4f}{m['psnr']:>8.2f}")
    quality = {size: quality_ok(by[size, "old"]["eval"], by[size, "new"]["eval"]) for size in ratios}
    print()
    for size, ratio in ratios.items():
        print(
            f"{'PASS' if ratio >= SPEED_TARGET else 'FAIL'}  {size} px: new {ratio:.2f}x old samples/s "
            f"(>= {SPEED_TARGET:g}x)"
        )
    for size, ok in quality.items():
        print(
            f"{'PASS' if ok else 'FAIL'}  {size} px: new test L1 and LPIPS <= {QUALITY_SLACK:g}x old at k = "
            f"{', '.join(EVAL_SOURCES)} ({args.steps} steps: smoke check)"
        )
    return {"speed_ratio_new_old": ratios, "quality_parity": quality, "native_bf16": cpu_has_native_bf16()}


def ddp_comparison(args: argparse.Namespace, load_before: float) -> dict:
    """1 vs 2 data-parallel processes (and 1 process x 2 threads) at 64 px; GPU 256 px if present."""
    import torch

    data = make_data(args.out / "data64")
    sets = common_sets(data, args.steps, max(1, args.steps // 6), args.batch_size, args.extra)
    rows = [
        run("1proc-1thread", args.out, TINY, sets, nproc=1, threads=1),
        run("2proc-1thread", args.out, TINY, sets, nproc=2, threads=1),
        run("1proc-2threads", args.out, TINY, sets, nproc=1, threads=2),
    ]
    if torch.cuda.is_available():
        gpu_sets = [
            f"data.root={make_data(args.out / 'data256', 256)}",
            "optim.steps=30",
            "logging.every_steps=5",
            "checkpoint.every_steps=30",
            "data.num_workers=4",
            "device=cuda",
        ]
        rows.append(run("gpu-256px-paper", args.out, REPO / "configs" / "paper-256.yaml", gpu_sets, nproc=1, threads=4))

    print(
        f"\ntraining throughput, tiny config (64 px, full losses), batch {args.batch_size}/process, {args.steps} steps"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after "
        "the runs; shared with other users,"
    )
    print("so absolute numbers are noisy and the ratio is what this bench measures (side by side, same run).\n")
    print(f"{'run':<18}{'processes':>10}{'threads/proc':>14}{'samples/s':>12}{'samples/CPU-s/proc':>20}{'wall s':>9}")
    for r in rows:
        print(
            f"{r['name']:<18}{r['processes']:>10}{r['threads_per_process']:>14}{r['samples_per_s']:>12.2f}"
            f"{r['samples_per_cpu_s']:>20.2f}{r['wall_s']:>9.1f}"
        )
    one, two = rows[0], rows[1]
    ratio = two["samples_per_s"] / one["samples_per_s"]
    # DDP's own cost: CPU seconds per sample of each of the 2 processes vs the single process.
    # With two otherwise idle cores, the wall-clock ratio would be 2 x this efficiency.
    efficiency = two["samples_per_cpu_s"] / one["samples_per_cpu_s"]
    print(
        f"\n2 processes / 1 process (1 thread each), wall clock: {ratio:.2f}x  "
        f"(target >= 1.7x: {'PASS' if ratio >= 1.7 else 'FAIL'})"
    )
    print(f"per-process CPU efficiency of DDP (2 proc vs 1): {efficiency:.2f} -> {2 * efficiency:.2f}x on 2 idle cores")
    if ratio < 1.7 and load_before > 0.5:
        print("  (the wall-clock ratio needs two free cores; other users' load took part of the second one)")
    print(f"2 processes vs 1 process with 2 threads: {two['samples_per_s'] / rows[2]['samples_per_s']:.2f}x")
    return {"rows": rows, "ratio_2p_1p": ratio, "ddp_cpu_efficiency": efficiency}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4, help="per process")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes (old vs new)")
    ap.add_argument("--ddp", action="store_true", help="instead: 1 vs 2 data-parallel processes (64 px)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-speed")
    ap.add_argument("--set", dest="extra", nargs="*", default=[], help="extra config overrides")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))

    load_before = os.getloadavg()[0]  # other users' load (1-min average) before we start
    if args.ddp:
        summary = ddp_comparison(args, load_before)
    else:
        rows = old_vs_new(args)
        summary = {"rows": rows, **print_old_vs_new(rows, args, load_before), "steps": args.steps}
    summary.update(cpu_count=os.cpu_count(), loadavg_before=load_before, loadavg_after=os.getloadavg()[0])
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
