"""Cost of the default 256x256 models on this machine: GFLOP and latency per frame for implicit
warping vs the explicit-flow baseline at k = 1, 2, 4, 8 sources, peak attention memory vs k,
and the per-frame speed-up of cached sources over re-encoding them.

    PYTHONPATH=. python bench/model_cost.py [--reps 3] [--threads 1] [--ks 1 2 4 8] [--json out.json]

Everything is measured side by side in one run (same machine, same load), random weights, fp32,
batch 1, `torch.no_grad()`. FLOPs come from `torch.utils.flop_counter.FlopCounterMode`; it does
not see PyTorch's fused CPU attention kernel, so attention FLOPs are added analytically,
2 * Lq * Lk * (dk + dv) per head, for the heads actually executed. Latency is the best of
`--reps` runs after a warm-up, re-encoding and cached calls timed alternately. One thread by
default: on this shared 2-core machine two OpenMP threads under contention swing 3-10x. Attention
memory is the peak resident-set growth of one
attention call, each measured in a fresh subprocess with glibc's mmap threshold lowered so freed
buffers leave the process (otherwise malloc reuse hides allocations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iwarp import ImplicitWarping  # noqa: E402
from iwarp.models import build_model  # noqa: E402

KS = (1, 2, 4, 8)
FOMM_GFLOP = 107.0  # FOMM vox-256 generator, measured the same way (docs/model.md)
TARGET_GFLOP = 60.0
TARGET_SPEEDUP = 3.0


def counted_gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def attention_gflop(model: torch.nn.Module, k: int) -> float:
    """FLOPs of the fused attention call the flop counter cannot see (0 for the baseline)."""
    if not isinstance(model, ImplicitWarping):
        return 0.0
    att = model.attention
    cfg = model.config
    lq = model.grid_size**2
    lk = k * (model.grid_size // cfg.spatial_reduction) ** 2 + att.num_extra
    return 2 * lq * lk * (att.qk_dim + att.qk_dim) * att.heads / 1e9


def attention_is_counted(model: torch.nn.Module, cache, driving: torch.Tensor) -> bool:
    """True if the flop counter already sees the attention (math-path fallback)."""
    if not isinstance(model, ImplicitWarping):
        return False
    _, q = model._queries(model.detect_keypoints(driving))
    return counted_gflop(lambda: model.attention(q, cache.keys, cache.values)) > 0


def paired_latency(fn_a, fn_b, reps: int) -> tuple[float, float]:
    """Best-of-`reps` seconds of two calls timed alternately, so both see the same machine load
    (on a shared CPU, interference only ever adds time: the minimum is the stable statistic)."""
    fn_a(), fn_b()  # warm-up (allocator, oneDNN primitive cache)
    a, b = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    return min(a), min(b)


def matmul_gflops() -> float:
    a = torch.rand(1024, 1024)
    a @ a
    t0 = time.perf_counter()
    for _ in range(8):
        a @ a
    return 8 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9


def memory_probe(mode: str, k: int) -> float:
    """Peak RSS growth (MiB) of one attention call with the default config's shapes (run in a
    fresh process by `attention_memory`)."""
    from iwarp.implicit_warping import ImplicitWarpingConfig

    torch.manual_seed(0)
    cfg = ImplicitWarpingConfig()
    model = ImplicitWarping(cfg).eval()
    att = model.attention
    lq, tokens = model.grid_size**2, model.grid_size**2
    q = torch.randn(1, lq, cfg.qk_dim)
    with torch.no_grad():  # the attention memory as the source cache holds it (extra tokens included)
        keys, values = att.prepare(torch.randn(1, k * tokens, cfg.qk_dim), torch.randn(1, k * tokens, att.value_dim))

    def run():
        with torch.no_grad():
            if mode == "fused":
                return att(q, keys, values)
            # the textbook formula: materialises the (Lq x k*T) weights
            return torch.softmax(q @ keys.transpose(1, 2) * cfg.qk_dim**-0.5, -1) @ values

    run()  # warm-up; its output is freed at once
    before = _proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    out = run()
    peak = _proc_status("VmHWM")
    del out
    return peak - before


def _proc_status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def attention_memory(mode: str, k: int, threads: int) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", mode, str(k), "--threads", str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure_model(kind: str, k: int, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(kind).eval()
    size = model.config.image_size
    sources = torch.rand(1, k, 3, size, size)
    driving = torch.rand(1, 3, size, size)
    with torch.no_grad():
        cache = model.encode_sources(sources)
        extra = 0.0 if attention_is_counted(model, cache, driving) else attention_gflop(model, k)
        full = counted_gflop(lambda: model(sources, driving)) + extra
        per_frame = counted_gflop(lambda: model.animate(cache, driving)) + extra
        t_full, t_frame = paired_latency(lambda: model(sources, driving), lambda: model.animate(cache, driving), reps)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflop": full,
        "gflop_cached": per_frame,
        "attention_gflop": extra,
        "latency_s": t_full,
        "latency_cached_s": t_frame,
        "speedup": t_full / t_frame,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timed runs per measurement (best of)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(memory_probe(args.memory_probe[0], int(args.memory_probe[1])))
        return

    from tqdm import tqdm

    print(f"torch {torch.__version__}, {args.threads} threads, CPU only (no GPU lent to this task: no bf16 figures)")
    speed_before = matmul_gflops()
    results: dict[str, dict] = {"implicit": {}, "baseline": {}}
    jobs = [(kind, k) for kind in results for k in args.ks]
    for kind, k in tqdm(jobs, desc="models", leave=False):
        results[kind][k] = measure_model(kind, k, args.reps)
    memory = {
        mode: {k: attention_memory(mode, k, args.threads) for k in tqdm(args.ks, desc=f"memory {mode}", leave=False)}
        for mode in ("fused", "naive")
    }
    speed_after = matmul_gflops()

    print(f"fp32 1024^2 matmul: {speed_before:.0f} GFLOP/s before, {speed_after:.0f} after (machine load varies)\n")
    imp, base = results["implicit"], results["baseline"]
    print(f"params: implicit {imp[args.ks[0]]['params_m']:.1f} M, baseline {base[args.ks[0]]['params_m']:.1f} M")
    print("Per 256x256 frame, sources re-encoded every frame (model(sources, driving)):")
    print(f"{'k':>3} | {'implicit GFLOP':>14} {'(attn)':>7} {'latency s':>9} | {'baseline GFLOP':>14} {'latency s':>9}")
    for k in args.ks:
        i, b = imp[k], base[k]
        print(
            f"{k:>3} | {i['gflop']:>14.1f} {i['attention_gflop']:>7.1f} {i['latency_s']:>9.3f} | "
            f"{b['gflop']:>14.1f} {b['latency_s']:>9.3f}"
        )
    print("\nPer frame with cached sources (animate(cache, driving)) and speed-up over re-encoding:")
    print(
        f"{'k':>3} | {'implicit GFLOP':>14} {'latency s':>9} {'speed-up':>8} | "
        f"{'baseline GFLOP':>14} {'latency s':>9} {'speed-up':>8}"
    )
    for k in args.ks:
        i, b = imp[k], base[k]
        print(
            f"{k:>3} | {i['gflop_cached']:>14.1f} {i['latency_cached_s']:>9.3f} {i['speedup']:>7.2f}x"
            f" | {b['gflop_cached']:>14.1f} {b['latency_cached_s']:>9.3f} {b['speedup']:>7.2f}x"
        )
    print("\nPeak extra memory of one attention call (default shapes: 1024 queries x k*1024 keys, dk 128, dv 640):")
    print(f"{'k':>3} | {'fused (ours) MiB':>16} | {'naive softmax(QK^T)V MiB':>24}")
    for k in args.ks:
        print(f"{k:>3} | {memory['fused'][k]:>16.1f} | {memory['naive'][k]:>24.1f}")

    k1 = args.ks[0]
    checks = {
        f"GFLOP per frame at k={k1} <= {TARGET_GFLOP:.0f} (FOMM ~{FOMM_GFLOP:.0f})": imp[k1]["gflop"] <= TARGET_GFLOP,
        f"cached sources >= {TARGET_SPEEDUP:.0f}x faster per frame at k={k1}": imp[k1]["speedup"] >= TARGET_SPEEDUP,
        "fused attention memory flat in k (max - min < 2 MiB)": max(memory["fused"].values())
        - min(memory["fused"].values())
        < 2.0,
    }
    print()
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "attention_memory_mib": memory, "checks": checks}, indent=2)
        )


if __name__ == "__main__":
    main()
