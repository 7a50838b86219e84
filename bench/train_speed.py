"""Training throughput (samples/s) for 1 vs 2 data-parallel processes on CPU.

Runs `iwarp train` (the tiny 64 px config with its full loss set) three times on the same
synthetic data: 1 process x 1 thread, 2 processes x 1 thread (`--nproc 2`: torchrun + gloo),
and, for reference, 1 process x 2 threads. Throughput is the global samples/s the trainer logs,
averaged over the logging windows after the first (start-up and the first allocations excluded).
Target: 2 processes >= 1.7x one process with the same per-process resources.

With a CUDA device it also reports samples/s of the paper-scale 256x256 config on one GPU.

    python bench/train_speed.py [--steps 30] [--out runs/bench-speed]
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


def make_data(root: Path, size: int = 64) -> Path:
    from iwarp.data.synth import SynthConfig, make_synth_dataset

    if not (root / "train").is_dir():
        make_synth_dataset(root, SynthConfig(num_identities=8, videos_per_identity=2, num_frames=32, image_size=size))
    return root


def run(name: str, out: Path, config: Path, sets: list[str], nproc: int, threads: int) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "iwarp", "train", "--config", str(config), "--set", f"out_dir={run_dir}",
           f"threads={threads}", "logging.progress=false", "logging.images_every_steps=0", *sets]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r["samples_per_s"] for r in records[1:]] or [records[-1]["samples_per_s"]]
    return {"name": name, "processes": nproc, "threads_per_process": threads, "samples_per_s": sum(steady) / len(steady),
            "windows": len(steady), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4, help="per process")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-speed")
    ap.add_argument("--set", dest="extra", nargs="*", default=[], help="extra config overrides")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    data = make_data(args.out / "data")
    log_every = max(1, args.steps // 6)
    sets = [f"data.root={data}", f"optim.steps={args.steps}", f"logging.every_steps={log_every}",
            f"checkpoint.every_steps={args.steps}", f"data.batch_size={args.batch_size}", *args.extra]
    tiny = REPO / "configs" / "tiny.yaml"
    rows = [
        run("1proc-1thread", args.out, tiny, sets, nproc=1, threads=1),
        run("2proc-1thread", args.out, tiny, sets, nproc=2, threads=1),
        run("1proc-2threads", args.out, tiny, sets, nproc=1, threads=2),
    ]
    if torch.cuda.is_available():
        gpu_sets = [f"data.root={make_data(args.out / 'data256', 256)}", "optim.steps=30", "logging.every_steps=5",
                    "checkpoint.every_steps=30", "data.num_workers=4", "device=cuda"]
        rows.append(run("gpu-256px-paper", args.out, REPO / "configs" / "paper-256.yaml", gpu_sets, nproc=1, threads=4))

    cores = os.cpu_count()
    load = os.getloadavg()[0]
    print(f"\ntraining throughput, tiny config (64 px, full losses), batch {args.batch_size}/process, {args.steps} steps")
    print(f"machine: {cores} CPU cores, load average {load:.1f} at the end; the CPU is shared with other users,")
    print("so absolute numbers are noisy and the ratio is what this bench measures (side by side, same run).\n")
    print(f"{'run':<18}{'processes':>10}{'threads/proc':>14}{'samples/s':>12}{'wall s':>9}")
    for r in rows:
        print(f"{r['name']:<18}{r['processes']:>10}{r['threads_per_process']:>14}{r['samples_per_s']:>12.2f}{r['wall_s']:>9.1f}")
    ratio = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    verdict = "PASS" if ratio >= 1.7 else "FAIL"
    print(f"\n2 processes / 1 process (1 thread each): {ratio:.2f}x  (target >= 1.7x: {verdict})")
    print(f"2 processes vs 1 process with 2 threads: {rows[1]['samples_per_s'] / rows[2]['samples_per_s']:.2f}x")
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "ratio_2p_1p": ratio, "cpu_count": cores,
                                                        "loadavg": load}, indent=2))


if __name__ == "__main__":
    main()
