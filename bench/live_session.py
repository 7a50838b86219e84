"""Latency of the demo's live session: a cached source set driven one frame per request.

    python bench/live_session.py                      # the shipped iwarp-faces-64 (64 px), ~1-2 min
    python bench/live_session.py --frames 100 --checkpoint runs/x/final.ckpt

It packages the model, starts a private TorchServe on loopback (token auth on, the default
serving settings but a small source-set cache), and drives the demo's own backends
(`app.demo.backends`) with real face frames (the test identity, the demo's example cut):

  A. one session, the four ways side by side, interleaved frame by frame (machine noise hits
     all alike): HTTP against the cached `source_set_id` (what the live tab does), in-process
     on a cached source set (`--local`), and re-encoding the sources every frame, over HTTP
     (sources in every request) and in-process (`model(sources, driving)`). Per-frame p50/p95
     and frames/s; where the HTTP time goes: the client's PNG + base64 of the frame, the
     worker's decode and model time (it reports them), and the rest (TorchServe's frontend, the
     batching wait `model.max_batch_delay_ms`, the response's PNG + base64 + JSON, the hop).
  B. 1, 2 and 4 concurrent sessions over HTTP, each its own source set, frames back to back:
     total frames/s and p95.
  C. the cache after the sessions end: nothing is freed when a session ends; the worker keeps
     the `handler.cache_size` most recently used sets (LRU, and a TTL), so later sets push the
     oldest out, and a stale `source_set_id` is answered 404 with the reason.

The CPU is shared: compare figures of one run, not across runs.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CACHE_SIZE = 8  # small, so part C sees evictions: part B registers 14 sets


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def frames_of_the_test_identity(home: Path, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(photos, driving frames) at `size` px: the demo's example cut of the woman."""
    from PIL import Image

    from app.demo.examples import example_rows
    from iwarp.data.video import read_video

    photos, driving = example_rows(home)[0]

    def small(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS))

    return [small(np.asarray(Image.open(p).convert("RGB"))) for p in photos], [small(f) for f in read_video(driving)]


def start(checkpoint: str, tmp: Path):
    from serving.config import load_serve_config
    from serving.package import package
    from serving.server import start_server

    overrides = [f"handler.cache_size={CACHE_SIZE}"]
    cfg = load_serve_config(overrides=overrides)
    t0 = time.perf_counter()
    package(checkpoint, "1.0", tmp / "store", config=cfg)
    handle = start_server(
        tmp / "store", config=cfg, workdir=tmp / "work", inference_port=0, management_port=0, metrics_port=0
    )
    print(f"packaged and started TorchServe in {time.perf_counter() - t0:.0f} s ({handle.inference_url})", flush=True)
    return handle, cfg


def one_session(http, local, model, photos, driving, n: int) -> dict[str, list[float]]:
    """Part A: per-frame wall ms for each way, interleaved; plus the HTTP breakdown."""
    from serving.client import decode_png, encode_image

    src = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float().div(255)[None]
    sets = {"http": http.register(photos, None), "local": local.register(photos, None)}
    client = http.client
    times: dict[str, list[float]] = {k: [] for k in ("http", "local", "http_reencode", "local_reencode")}
    parts: dict[str, list[float]] = {k: [] for k in ("client_encode", "server", "client_decode")}

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    def full_forward(frame: np.ndarray) -> None:
        with torch.no_grad():
            model(src, torch.from_numpy(frame.copy()).permute(2, 0, 1).float().div(255)[None])

    for i in range(-3, n):  # 3 warm-up frames
        frame = driving[(i + 3) % len(driving)]
        reset = i == -3
        got = {
            "http": http.animate(sets["http"], [frame], relative=True, reset_reference=reset),
            "local": local.animate(sets["local"], [frame], relative=True, reset_reference=reset),
        }
        ms = {k: v.wall_ms for k, v in got.items()}
        ms["http_reencode"] = timed(lambda: client.predict(photos, [frame], relative=True))  # noqa: B023
        ms["local_reencode"] = timed(lambda: full_forward(frame))  # noqa: B023
        if i < 0:
            continue
        for k, v in ms.items():
            times[k].append(v)
        parts["server"].append(got["http"].model_ms)
        parts["client_encode"].append(timed(lambda: base64.b64encode(encode_image(frame))))  # noqa: B023
        answer = base64.b64encode(encode_image(got["http"].frames[0])).decode()  # as the worker sends it
        parts["client_decode"].append(timed(lambda: decode_png(answer)))  # noqa: B023
    return {**times, **parts}


def concurrent_sessions(
    http, photos, driving, sessions: int, n: int, first: int
) -> tuple[float, list[float], list[str]]:
    """Part B: `sessions` threads, each its own source set (the photos shifted by 2 px per set,
    numbered from `first`: every session of the run has its own), n frames each."""
    sets = [http.register([np.roll(p, 2 * (first + s), axis=1) for p in photos], None) for s in range(sessions)]
    latencies: list[float] = []
    lock = threading.Lock()

    def run(s: int) -> None:
        for i in range(n):
            result = http.animate(sets[s], [driving[(i + 7 * s) % len(driving)]], relative=True, reset_reference=i == 0)
            with lock:
                latencies.append(result.wall_ms)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sessions * n / (time.perf_counter() - t0), latencies, [s.id for s in sets]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="iwarp-faces-64")
    ap.add_argument("--frames", type=int, default=40, help="frames per way in part A")
    ap.add_argument("--session-frames", type=int, default=12, help="frames per session in part B (each round)")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from app.demo.backends import HttpAnimator, LocalAnimator
    from app.demo.config import DemoConfig
    from iwarp.checkpoint import load_model, resolve_checkpoint
    from serving.client import ServeError
    from serving.server import stop_server

    with tempfile.TemporaryDirectory(prefix="iwarp-live-") as tmp_name:
        tmp = Path(tmp_name)
        handle, cfg = start(args.checkpoint, tmp)
        try:
            config = DemoConfig(source_side=64)
            model = load_model(resolve_checkpoint(args.checkpoint))
            size = int(model.config.image_size)
            photos, driving = frames_of_the_test_identity(tmp / "home", size)
            photos = photos[:2]
            http, local = HttpAnimator(handle, config), LocalAnimator(model, args.checkpoint, config)
            print(f"\nA. one live session, {len(photos)} sources, {size} px, {args.frames} frames each, interleaved")
            a = one_session(http, local, model, photos, driving, args.frames)
            rows = [
                ("HTTP, cached source_set_id (the demo)", "http"),
                ("in-process, cached sources (--local)", "local"),
                ("HTTP, sources re-encoded every frame", "http_reencode"),
                ("in-process, re-encoded every frame", "local_reencode"),
            ]
            print(f"{'':<40}{'p50 ms':>9}{'p95 ms':>9}{'frames/s':>10}")
            for name, key in rows:
                xs = a[key]
                print(f"{name:<40}{pct(xs, 50):9.1f}{pct(xs, 95):9.1f}{1000 / statistics.mean(xs):10.1f}")
            http_p50, local_p50 = pct(a["http"], 50), pct(a["local"], 50)
            enc, srv, dec = (pct(a[k], 50) for k in ("client_encode", "server", "client_decode"))
            print(
                f"HTTP / in-process p50: {http_p50 / local_p50:.2f}x (+{http_p50 - local_p50:.1f} ms). Of the HTTP "
                f"frame's p50 {http_p50:.1f} ms: worker decode + model {srv:.1f} ms, client PNG+base64 encode "
                f"{enc:.1f} ms, client decode {dec:.1f} ms, the rest {http_p50 - srv - enc - dec:.1f} ms "
                f"(frontend, batching wait up to {cfg.model.max_batch_delay_ms} ms, response PNG+JSON, the hop)"
            )
            print(f"\nB. concurrent live sessions over HTTP, {args.session_frames} frames each, two rounds of 1, 2, 4")
            print(f"{'sessions':<10}{'frames/s':>10}{'p50 ms':>9}{'p95 ms':>9}")
            ids: list[str] = []
            by_level: dict[int, tuple[list[float], list[float]]] = {n: ([], []) for n in (1, 2, 4)}
            for sessions in (1, 2, 4) * 2:  # interleaved rounds: a load change on the machine hits every level
                fps, lat, sids = concurrent_sessions(http, photos, driving, sessions, args.session_frames, len(ids) + 1)
                ids += sids
                by_level[sessions][0].append(fps)
                by_level[sessions][1].extend(lat)
            for sessions, (rates, lat) in by_level.items():
                print(f"{sessions:<10}{statistics.mean(rates):10.1f}{pct(lat, 50):9.1f}{pct(lat, 95):9.1f}")
            print(f"\nC. the worker's source-set cache after the sessions ended (handler.cache_size={CACHE_SIZE})")
            client = handle.client()
            cached, stale = [], []
            for i, sid in enumerate(ids, start=1):  # oldest first (a hit refreshes it, a miss changes nothing)
                try:
                    client.predict(source_set_id=sid, driving=driving[:1])
                    cached.append(i)
                except ServeError as exc:
                    stale.append((i, exc))
            print(f"  still cached: sets {cached} ({len(cached)} of {len(ids)}; at most {CACHE_SIZE})")
            if stale:
                i, exc = stale[0]
                print(f"  evicted: sets {[j for j, _ in stale]}; set {i} answers HTTP {exc.status}: {exc.message}")
            again = http.register([np.roll(p, 2, axis=1) for p in photos], None).id  # set 1's photos
            print(f"  registering set 1's photos again gives the same id: {again == ids[0]}")
        finally:
            stop_server(tmp / "work")


if __name__ == "__main__":
    main()
