"""Bounded load test of the iwarp TorchServe endpoint on loopback.

    python bench/serve_load.py                       # random-weight default model, 256 px
    python bench/serve_load.py --checkpoint runs/x/step-1000.ckpt --clients 4 --requests 80

It packages the model, starts a private TorchServe (token auth on, free ports), then:

  A. latency: one client; each step times the bare in-process forward `model(sources, driving)`
     and then the same input served over HTTP, side by side, so machine noise hits both alike.
     Also the cached path: a registered source set + driving frame vs in-process `animate`.
     Target: served p50 / bare p50 <= 1.2.
  B. load: `--clients` concurrent clients send `--requests` good requests with `--malformed`
     bad ones mixed in. Target: zero errors on good requests, only 4xx on bad ones, and no
     worker restart (same worker pid before and after).

Prints p50/p95/p99 latency, throughput, error counts and the ratios. The CPU here is shared
with other work: compare ratios measured in the same run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def row(name: str, xs: list[float]) -> str:
    return f"{name:<34} n={len(xs):<4} p50={pct(xs, 50):8.1f}  p95={pct(xs, 95):8.1f}  p99={pct(xs, 99):8.1f}  ms"


def png_b64(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def photo(size: int, seed: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    img = data.astronaut()
    y, x = 40 + 7 * seed, 130 + 5 * seed
    return np.asarray(Image.fromarray(img[y : y + 260, x : x + 260]).resize((size, size), Image.BILINEAR))


def malformed_payloads(good_src: str, size: int) -> list[tuple[str, dict]]:
    """(name, requests kwargs) of bad requests; each must come back 4xx."""
    from PIL import Image

    def png(w: int, h: int) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    j = lambda body: {"json": body}  # noqa: E731
    return [
        ("non-image", j({"sources": [base64.b64encode(b"not an image at all").decode()], "driving": [good_src]})),
        ("9 sources", j({"sources": [good_src] * 9, "driving": [good_src]})),
        ("0 sources", j({"sources": [], "driving": [good_src]})),
        ("missing driving", j({"sources": [good_src]})),
        ("bad base64", j({"sources": ["@@@"], "driving": [good_src]})),
        ("unknown set", j({"source_set_id": "0" * 24, "driving": [good_src]})),
        ("mismatched", j({"sources": [good_src], "driving": [png(size + 8, size)], "frame": "none"})),
        ("oversized image", j({"sources": [png(2000, 40)], "driving": [png(2000, 40)]})),
        (
            "corrupt video",
            j(
                {
                    "sources": [good_src],
                    "driving_video": base64.b64encode(b"\x00\x00\x00\x18ftypmp42" + b"\x07" * 300).decode(),
                }
            ),
        ),
        ("invalid JSON", {"data": b"{oops", "headers": {"Content-Type": "application/json"}}),
        ("unknown field", j({"sources": [good_src], "driving": [good_src], "colour": "red"})),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: random weights of --kind at --image-size")
    p.add_argument("--kind", default="implicit")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--sources", type=int, default=2, help="source images per request")
    p.add_argument("--pairs", type=int, default=15, help="latency phase: interleaved bare/served pairs")
    p.add_argument("--requests", type=int, default=40, help="load phase: good requests")
    p.add_argument("--malformed", type=int, default=200, help="load phase: bad requests mixed in")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads, in-process and per worker")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from serving.config import load_serve_config
    from serving.package import package, package_model
    from serving.server import start_server, stop_server

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="iwarp-serve-bench-"))
    cfg = load_serve_config(
        overrides=[f"handler.num_threads={args.threads}", "model.batch_size=4", "model.max_batch_delay_ms=5"]
    )
    if args.checkpoint:
        from iwarp.checkpoint import load_model

        model = load_model(args.checkpoint)
        mar = package(args.checkpoint, "bench", tmp / "store", config=cfg)
    else:
        from iwarp.models import build_model

        torch.manual_seed(0)
        model = build_model(args.kind, {"image_size": args.image_size}).eval()
        mar = package_model(model, "bench", tmp / "store", config=cfg, metadata={"model_kind": args.kind})
    size = int(model.config.image_size)
    print(
        f"model {type(model).__name__} {size}px, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params; "
        f"archive {mar}"
    )

    handle = start_server(
        tmp / "store", config=cfg, workdir=tmp / "work", inference_port=0, management_port=0, metrics_port=0
    )
    results: dict = {"image_size": size, "sources": args.sources, "threads": args.threads, "clients": args.clients}
    try:
        client = handle.client()
        key = json.loads(handle.key_file.read_text())["inference"]["key"]
        url = f"{handle.inference_url}/predictions/{cfg.model.name}"
        headers = {"Authorization": f"Bearer {key}"}
        src_imgs = [photo(size, i) for i in range(args.sources)]
        drv_img = photo(size, args.sources + 1)
        src_b64, drv_b64 = [png_b64(x) for x in src_imgs], png_b64(drv_img)
        # model-size photo crops: the model path without face framing (frame=none), as bare calls have
        full_payload = {"sources": src_b64, "driving": [drv_b64], "frame": "none"}
        sid = client.register_sources(src_imgs, frame="none")
        cached_payload = {"source_set_id": sid, "driving": [drv_b64]}
        sources = torch.from_numpy(np.stack(src_imgs).copy()).permute(0, 3, 1, 2).float().div(255)[None]
        driving = torch.from_numpy(drv_img.copy()).permute(2, 0, 1).float().div(255)[None]
        session = requests.Session()

        model_ms: dict[str, list[float]] = {"full": [], "cached": []}
        overhead_ms: dict[str, list[float]] = {"full": [], "cached": []}  # HTTP, JSON, PNG, queueing

        def served(payload: dict, kind: str | None = None) -> float:
            t0 = time.perf_counter()
            r = session.post(url, json=payload, headers=headers, timeout=600)
            info = r.json()
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
            ms = (time.perf_counter() - t0) * 1000
            if kind:
                model_ms[kind].append(info["model_ms"])
                overhead_ms[kind].append(ms - info["model_ms"])
            return ms

        def bare(fn) -> float:
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            return (time.perf_counter() - t0) * 1000

        with torch.no_grad():
            cache = model.encode_sources(sources)
        full_fn = lambda: model(sources, driving)  # noqa: E731
        anim_fn = lambda: model.animate(cache, driving)  # noqa: E731
        for _ in range(2):  # warm-up: first calls allocate and pick kernels
            bare(full_fn), served(full_payload), bare(anim_fn), served(cached_payload)

        # A. latency, interleaved
        lat = {"bare_full": [], "served_full": [], "bare_animate": [], "served_cached": []}
        for _ in range(args.pairs):
            lat["bare_full"].append(bare(full_fn))
            lat["served_full"].append(served(full_payload, "full"))
            lat["bare_animate"].append(bare(anim_fn))
            lat["served_cached"].append(served(cached_payload, "cached"))
        ratio_full = pct(lat["served_full"], 50) / pct(lat["bare_full"], 50)
        ratio_cached = pct(lat["served_cached"], 50) / pct(lat["bare_animate"], 50)
        print(f"\nA. latency, 1 client, {args.sources} sources + 1 driving frame, {size}px (interleaved)")
        print(row("in-process model(sources, driving)", lat["bare_full"]))
        print(row("served, sources in the request", lat["served_full"]))
        print(row("in-process animate(cache, driving)", lat["bare_animate"]))
        print(row("served, cached source set", lat["served_cached"]))
        print(f"ratio served p50 / bare p50: full {ratio_full:.3f}  cached {ratio_cached:.3f}   (target <= 1.2)")
        print(
            f"  model time inside the worker p50: full {pct(model_ms['full'], 50):.1f} ms, "
            f"cached {pct(model_ms['cached'], 50):.1f} ms; "
            f"serving overhead (served - model) p50: full {pct(overhead_ms['full'], 50):.1f} ms, "
            f"cached {pct(overhead_ms['cached'], 50):.1f} ms"
        )
        est_full = (pct(lat["bare_full"], 50) + pct(overhead_ms["full"], 50)) / pct(lat["bare_full"], 50)
        est_cached = (pct(lat["bare_animate"], 50) + pct(overhead_ms["cached"], 50)) / pct(lat["bare_animate"], 50)
        print(
            f"  noise-robust ratio (bare p50 + overhead p50) / bare p50: full {est_full:.3f}  cached {est_cached:.3f}"
        )
        print(f"cached vs uncached served p50: {pct(lat['served_cached'], 50) / pct(lat['served_full'], 50):.3f}")
        results.update(
            latency_ms={k: {q: pct(v, q) for q in (50, 95, 99)} for k, v in lat.items()},
            ratio_full=ratio_full,
            ratio_cached=ratio_cached,
            overhead_p50_ms={k: pct(v, 50) for k, v in overhead_ms.items()},
            ratio_full_overhead_based=est_full,
            ratio_cached_overhead_based=est_cached,
        )

        # B. load with malformed requests mixed in
        pids_before = client.worker_pids()
        bad = malformed_payloads(src_b64[0], size)
        jobs = [("good", None)] * args.requests + [bad[i % len(bad)] for i in range(args.malformed)]
        random.Random(0).shuffle(jobs)
        lock = threading.Lock()
        good_ms: list[float] = []
        good_errors: list[str] = []
        bad_codes: Counter = Counter()
        bad_wrong: list[str] = []
        queue = list(enumerate(jobs))

        def worker() -> None:
            s = requests.Session()
            while True:
                with lock:
                    if not queue:
                        return
                    _, (name, kwargs) = queue.pop()
                t0 = time.perf_counter()
                try:
                    if name == "good":
                        r = s.post(url, json=full_payload, headers=headers, timeout=600)
                    else:
                        kw = dict(kwargs)
                        r = s.post(url, headers={**headers, **kw.pop("headers", {})}, timeout=600, **kw)
                    code = r.status_code
                except requests.RequestException as exc:
                    code, r = -1, exc
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    if name == "good":
                        if code == 200:
                            good_ms.append(ms)
                        else:
                            good_errors.append(f"{code}: {getattr(r, 'text', r)}"[:200])
                    else:
                        bad_codes[code] += 1
                        if not 400 <= code < 500:
                            bad_wrong.append(f"{name} -> {code}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        pids_after = client.worker_pids()
        restarted = pids_before != pids_after
        print(f"\nB. load, {args.clients} clients, {args.requests} good + {args.malformed} malformed requests mixed")
        print(row("served, sources in the request", good_ms))
        print(
            f"throughput: {len(good_ms) / wall:.2f} good req/s, {len(jobs) / wall:.2f} req/s overall "
            f"({wall:.1f} s wall)"
        )
        print(f"errors on good requests: {len(good_errors)}" + (f"  e.g. {good_errors[:3]}" if good_errors else ""))
        print(
            f"malformed: {sum(bad_codes.values())} answered {dict(sorted(bad_codes.items()))}; "
            f"non-4xx: {len(bad_wrong)}" + (f" e.g. {bad_wrong[:3]}" if bad_wrong else "")
        )
        print(f"worker restarted: {restarted} (pids before {pids_before}, after {pids_after})")
        results.update(
            load_ms={q: pct(good_ms, q) for q in (50, 95, 99)},
            throughput_rps=len(good_ms) / wall,
            good_errors=len(good_errors),
            malformed_codes=dict(bad_codes),
            malformed_non_4xx=len(bad_wrong),
            worker_restarted=restarted,
        )
    finally:
        stop_server(tmp / "work")
    ok = (
        results.get("ratio_full", 9) <= 1.2
        and results.get("good_errors", 1) == 0
        and results.get("malformed_non_4xx", 1) == 0
        and not results.get("worker_restarted", True)
    )
    print(
        f"\nverdict: {'PASS' if ok else 'MISS'} (ratio <= 1.2, zero errors, only 4xx for malformed, no worker restart)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
