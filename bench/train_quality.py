"""Implicit warping vs the averaging explicit-flow baseline, same CPU budget, synthetic data.

Both models (the tiny 64 px configs) train for `--minutes` of wall-clock each on the same
procedural talking-head data (`iwarp data synth`: parts of the head and background are visible
only in some frames, so extra sources carry information), then `iwarp evaluate` scores the test
split for k = 1, 2, 4 sources plus the copy-the-source floor.

Targets (the paper's claims): implicit warping beats the baseline at every k, and its 4-source
error is below its 1-source error (more sources help; averaging baselines do not gain).

    python bench/train_quality.py --minutes 20        # the issue's budget
    python bench/train_quality.py --minutes 8         # a shorter run on a shared CPU

Training uses a constant learning rate (the budget, not a step count, ends it), pixel L1 and
keypoint equivariance only: on a shared 2-core CPU the VGG perceptual pyramid costs ~10x a
step and the GAN only adds noise in minutes of training, so both would leave too few steps to
learn motion. Everything else is `configs/tiny.yaml`.
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
BENCH_SETTINGS = [
    "optim.steps=1000000",
    "optim.schedule=constant",
    "optim.warmup_steps=20",
    "optim.lr_generator=1e-3",
    "loss.gan=0",
    "loss.feature_matching=0",
    "loss.reconstruction=10",
    "loss.perceptual=0",
    "loss.equivariance=10",
    "data.k_min=1",
    "data.k_max=4",
    "data.batch_size=4",
    # a little more capacity than tiny.yaml, the same for both: 16x16 attention tokens (tiny has
    # 8x8: too coarse at 64 px), and the matching 16x16 motion grid and widths for the baseline
    "model.implicit.token_stride=4",
    "model.implicit.value_channels=[16,32,64]",
    "model.implicit.value_res_blocks=[0,1,1]",
    "model.implicit.decoder_channels=[48,32,16]",
    "model.implicit.qk_dim=32",
    "model.implicit.query_channels=[16,32]",
    "model.implicit.key_channels=[16,32]",
    "model.implicit.residual_hidden=64",
    "model.baseline.motion_channels=[16,32,32]",
    "model.baseline.encoder_channels=[16,32,64]",
    "model.baseline.encoder_res_blocks=[0,1,1]",
    "model.baseline.decoder_channels=[48,32,16]",
    "checkpoint.every_steps=200",
    "logging.every_steps=20",
    "logging.images_every_steps=0",
]


def sh(cmd: list[str], threads: int) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per model (wall-clock)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-quality")
    ap.add_argument("--identities", type=int, default=64, help="3/4 train, 1/4 test (unseen identities)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a busy shared CPU more threads only wait on each other)",
    )
    ap.add_argument("--sources", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--frame-stride", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="extra", nargs="*", default=[], help="extra overrides for both models")
    ap.add_argument("--eval-only", action="store_true", help="re-evaluate existing checkpoints")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    py = sys.executable
    data = args.out / "data"
    if not (data / "train").is_dir():
        print(f"[bench] synthetic data -> {data}", flush=True)
        sh(
            [
                py,
                "-m",
                "iwarp",
                "data",
                "synth",
                "--out",
                str(data),
                "--num-identities",
                str(args.identities),
                "--videos-per-identity",
                "2",
                "--num-frames",
                str(args.frames),
                "--image-size",
                "64",
                "--seed",
                str(args.seed),
            ],
            args.threads,
        )

    results: dict[str, dict] = {}
    for kind in ("implicit", "baseline"):
        run_dir = args.out / kind
        if not args.eval_only:
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"[bench] training {kind} for {args.minutes:g} min ...", flush=True)
            start = time.perf_counter()
            sh(
                [
                    py,
                    "-m",
                    "iwarp",
                    "train",
                    "--config",
                    str(REPO / "configs" / "tiny.yaml"),
                    "--set",
                    f"model.kind={kind}",
                    f"data.root={data}",
                    f"out_dir={run_dir}",
                    f"seed={args.seed}",
                    f"threads={args.threads}",
                    f"optim.budget_minutes={args.minutes}",
                    "logging.progress=false",
                    *BENCH_SETTINGS,
                    *args.extra,
                ],
                args.threads,
            )
            print(f"[bench]   done in {time.perf_counter() - start:.0f} s", flush=True)
        from iwarp.checkpoint import load_checkpoint

        steps = load_checkpoint(run_dir / "checkpoints" / "final.ckpt")["step"]
        metrics_path = run_dir / "metrics-eval.json"
        print(f"[bench] evaluating {kind} ({steps} steps) ...", flush=True)
        sh(
            [
                py,
                "-m",
                "iwarp",
                "evaluate",
                "--checkpoint",
                str(run_dir / "checkpoints" / "final.ckpt"),
                "--data",
                str(data),
                "--sources",
                *map(str, args.sources),
                "--out",
                str(metrics_path),
                "--frame-stride",
                str(args.frame_stride),
                "--no-landmarks",
                "--no-fd",
                *(["--copy-source"] if kind == "implicit" else []),
            ],
            args.threads,
        )
        results[kind] = {"steps": steps, **json.loads(metrics_path.read_text())}

    floor = results["implicit"]["copy_source"]
    ks = [str(k) for k in sorted(args.sources)]
    print(
        f"\nTest reconstruction, synthetic talking heads (64 px), {results['implicit']['videos']} test videos, "
        f"{int(floor['frames'])} driven frames per row"
    )
    print(
        f"budget {args.minutes:g} min per model on a shared {os.cpu_count()}-core CPU "
        f"(load average now {os.getloadavg()[0]:.1f}: step counts and so the numbers are noisy)\n"
    )
    print(f"{'model':<10}{'steps':>7}{'k':>4}{'L1':>9}{'LPIPS':>9}{'PSNR':>8}")
    for kind in ("implicit", "baseline"):
        for k in ks:
            m = results[kind]["per_k"][k]
            print(f"{kind:<10}{results[kind]['steps']:>7}{k:>4}{m['l1']:>9.4f}{m['lpips']:>9.4f}{m['psnr']:>8.2f}")
    print(f"{'copy-src':<10}{'-':>7}{'-':>4}{floor['l1']:>9.4f}{floor['lpips']:>9.4f}{floor['psnr']:>8.2f}")

    imp, base = results["implicit"]["per_k"], results["baseline"]["per_k"]
    checks = {
        "implicit L1 < baseline L1 at every k": all(imp[k]["l1"] < base[k]["l1"] for k in ks),
        "implicit LPIPS < baseline LPIPS at every k": all(imp[k]["lpips"] < base[k]["lpips"] for k in ks),
        f"implicit L1 with {ks[-1]} sources < with {ks[0]}": imp[ks[-1]]["l1"] < imp[ks[0]]["l1"],
        f"implicit LPIPS with {ks[-1]} sources < with {ks[0]}": imp[ks[-1]]["lpips"] < imp[ks[0]]["lpips"],
        "implicit beats the copy-the-source floor (L1, k=1)": imp[ks[0]]["l1"] < floor["l1"],
    }
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    (args.out / "results.json").write_text(
        json.dumps({"results": results, "checks": checks, "minutes": args.minutes}, indent=2)
    )


if __name__ == "__main__":
    main()
