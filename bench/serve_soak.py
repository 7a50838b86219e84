"""Bounded soak of the iwarp TorchServe endpoint on loopback: does it stay up, small and correct?

    python bench/serve_soak.py                           # 10 minutes, 4 clients, the shipped iwarp-faces-64
    python bench/serve_soak.py --minutes 1 --clients 2   # a quick look

It packages the model and starts a private TorchServe as `bench/live_session.py` does (token auth
on, free ports, the default settings but a source-set cache of 8), then `--clients` clients send,
back to back, a seeded mix of the following (`--warmup-s` of it first, not counted):

  fresh      animate new sources (2 photos never sent before) with 2 driving frames
  cached     animate a source set registered earlier, by `source_set_id` (an evicted one is
             answered 404, as the API says, and registered again)
  register   register a new source set, so the cache keeps evicting
  malformed  `bench/serve_load.py`'s bad bodies: bad JSON, non-image bytes, mismatched and
             oversized images, bad base64, unknown fields, ...

It reports requests answered, HTTP codes (good and malformed apart), p50/p95 latency per
minute, the worker's RSS (the python model_service_worker under the TorchServe java process)
after warm-up and at the end, and the source-set cache size over time (from the answers'
`cache` field) against its bound. Targets: no 5xx for good requests, worker RSS growth
< 10 % after warm-up, cache never above its bound. Printed as a table and written to
bench/results/serve_soak.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.live_session import CACHE_SIZE, start  # noqa: E402
from bench.serve_load import malformed_payloads, pct, photo, png_b64  # noqa: E402

MIX = {"fresh": 0.35, "cached": 0.35, "register": 0.15, "malformed": 0.15}  # request kinds and their shares
RSS_EVERY_S = 5.0
RSS_GROWTH_MAX = 0.10
RESULTS = ROOT / "bench" / "results" / "serve_soak.json"


@dataclass
class Record:
    """Everything the clients and the monitor saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[tuple[float, str, int, float]] = field(default_factory=list)  # (t, kind, status, ms)
    cache: list[tuple[float, int]] = field(default_factory=list)  # (t, sets) from the answers
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (t, worker pid, bytes)
    capacity: int = 0
    errors: list[str] = field(default_factory=list)  # first few bodies of failed good requests

    def answer(self, t: float, kind: str, status: int, ms: float, info: dict | None = None, why: str = "") -> None:
        with self.lock:
            self.answers.append((t, kind, status, ms))
            if info and "cache" in info:
                self.cache.append((t, int(info["cache"]["sets"])))
                self.capacity = int(info["cache"]["capacity"])
            if why and kind != "malformed" and status >= 500 and len(self.errors) < 5:
                self.errors.append(f"{kind} {status}: {why[:200]}")


# ----------------------------------------------------------------------------- the worker


def worker_processes(frontend_pid: int) -> list:
    """The python model_service_worker processes under the TorchServe java frontend."""
    import psutil

    try:
        children = psutil.Process(frontend_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for proc in children:
        try:
            if "model_service_worker" in " ".join(proc.cmdline()):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def sample_rss(frontend_pid: int) -> tuple[int, int] | None:
    """(pid, RSS bytes) of the one worker, or None while it restarts."""
    import psutil

    procs = worker_processes(frontend_pid)
    try:
        return (procs[0].pid, procs[0].memory_info().rss) if len(procs) == 1 else None
    except psutil.Error:
        return None


# ----------------------------------------------------------------------------- requests


class Traffic:
    """One client's requests: fresh sources come from a per-client counter, so never repeat."""

    def __init__(self, handle, size: int, client_id: int, record: Record):
        self.client = handle.client(timeout=300)
        self.size, self.id, self.record = size, client_id, record
        self.rng = random.Random(client_id)
        self.n = 0
        self.sets: list[str] = []
        key = json.loads(handle.key_file.read_text())["inference"]["key"]
        self.url, self.headers = f"{handle.inference_url}/predictions/iwarp", {"Authorization": f"Bearer {key}"}
        self.bad = malformed_payloads(png_b64(photo(size, 0)), size)
        self.session = requests.Session()
        self.driving = [photo(size, 9), photo(size, 11)]

    def fresh_sources(self) -> list[np.ndarray]:
        """Two photo crops with a per-request pattern added: content never sent before."""
        self.n += 1
        base = [photo(self.size, (self.n + i) % 12) for i in range(2)]
        noise = np.random.default_rng((self.id, self.n)).integers(0, 8, base[0].shape, dtype=np.uint8)
        return [np.clip(b.astype(np.int16) + noise, 0, 255).astype(np.uint8) for b in base]

    def one(self, kind: str | None = None) -> None:
        kind = kind or self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        t0 = time.perf_counter()
        status, info, why = getattr(self, kind)()
        self.record.answer(time.time(), kind, status, (time.perf_counter() - t0) * 1000, info, why)

    def _predict(self, **kwargs) -> tuple[int, dict, str]:
        from serving.client import ServeError

        try:
            result = self.client.predict(frame="none", **kwargs)
            return result.status, result.info, ""
        except ServeError as exc:
            return exc.status, {}, exc.message
        except requests.RequestException as exc:  # no answer at all: counted as status 0
            return 0, {}, str(exc)

    def fresh(self) -> tuple[int, dict, str]:
        return self._predict(sources=self.fresh_sources(), driving=self.driving)

    def register(self) -> tuple[int, dict, str]:
        status, info, why = self._predict(sources=self.fresh_sources(), register=True)
        if status == 200:
            self.sets = [*self.sets[-3:], info["source_set_id"]]
        return status, info, why

    def cached(self) -> tuple[int, dict, str]:
        if not self.sets:
            return self.register()
        sid = self.rng.choice(self.sets)
        status, info, why = self._predict(source_set_id=sid, driving=self.driving[:1], relative=True)
        if status == 404:  # evicted by other registrations: the API's answer, not a failure
            self.sets.remove(sid)
        return status, info, why

    def malformed(self) -> tuple[int, dict, str]:
        _, kwargs = self.rng.choice(self.bad)
        kw = dict(kwargs)
        try:
            r = self.session.post(self.url, headers={**self.headers, **kw.pop("headers", {})}, timeout=300, **kw)
            return r.status_code, {}, r.text[:200]
        except requests.RequestException as exc:
            return 0, {}, str(exc)


# ----------------------------------------------------------------------------- the run


def soak(handle, size: int, clients: int, seconds: float, record: Record, desc: str = "soak") -> float:
    from tqdm import tqdm

    stop = threading.Event()

    def client_loop(i: int) -> None:
        traffic = Traffic(handle, size, i, record)
        while not stop.is_set():
            traffic.one()

    def monitor() -> None:
        while not stop.is_set():
            got = sample_rss(handle.pid)
            if got:
                with record.lock:
                    record.rss.append((time.time(), *got))
            stop.wait(RSS_EVERY_S)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=monitor))
    t0 = time.time()
    for t in threads:
        t.start()
    with tqdm(total=int(seconds), desc=desc, unit="s") as bar:
        while (elapsed := time.time() - t0) < seconds:
            time.sleep(min(2.0, seconds - elapsed))
            with record.lock:
                codes = Counter(s for _, k, s, _ in record.answers if k != "malformed" and s >= 500)
                sets = record.cache[-1][1] if record.cache else None
                bar.set_postfix(requests=len(record.answers), good_5xx=sum(codes.values()), cache_sets=sets)
            bar.n = min(int(time.time() - t0), int(seconds))
            bar.refresh()
    stop.set()
    for t in threads:
        t.join()
    got = sample_rss(handle.pid)  # the end, once the last requests are answered
    if got:
        record.rss.append((time.time(), *got))
    return t0


def summarize(record: Record, t0: float, args) -> dict:
    answers = [a for a in record.answers if a[0] >= t0]
    good = [a for a in answers if a[1] != "malformed"]
    bad = [a for a in answers if a[1] == "malformed"]
    minutes = []
    for m in range(int(np.ceil(args.minutes))):
        lo, hi = t0 + 60 * m, t0 + 60 * (m + 1)
        ok_ms = [ms for t, _, s, ms in good if lo <= t < hi and s == 200]
        sets = [n for t, n in record.cache if lo <= t < hi]
        rss = [b for t, _, b in record.rss if lo <= t < hi]
        minutes.append(
            {
                "minute": m + 1,
                "requests": sum(lo <= a[0] < hi for a in answers),
                "good_200": len(ok_ms),
                "good_5xx": sum(1 for t, _, st, _ in good if lo <= t < hi and (st >= 500 or st == 0)),
                "p50_ms": pct(ok_ms, 50),
                "p95_ms": pct(ok_ms, 95),
                "cache_sets_max": max(sets, default=None),
                "worker_rss_mb": rss[-1] / 2**20 if rss else None,
            }
        )
    rss = [(t, pid, b) for t, pid, b in record.rss if t >= t0]
    start_rss, end_rss = (rss[0][2], rss[-1][2]) if rss else (0, 0)
    cache_max = max((n for t, n in record.cache if t >= t0), default=0)
    good_5xx = sum(1 for a in good if a[2] >= 500 or a[2] == 0)
    growth = (end_rss - start_rss) / start_rss if start_rss else float("nan")
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "checkpoint": args.checkpoint,
        "requests_answered": len(answers),
        "good": {"n": len(good), "codes": dict(sorted(Counter(a[2] for a in good).items()))},
        "good_by_kind": {
            k: dict(sorted(Counter(a[2] for a in good if a[1] == k).items())) for k in MIX if k != "malformed"
        },
        "malformed": {"n": len(bad), "codes": dict(sorted(Counter(a[2] for a in bad).items()))},
        "per_minute": minutes,
        "worker_rss_mb": {"start": start_rss / 2**20, "end": end_rss / 2**20, "growth": growth},
        "worker_pids": sorted({pid for _, pid, _ in rss}),
        "cache": {"bound": record.capacity or CACHE_SIZE, "max_seen": cache_max, "samples": len(record.cache)},
        "good_5xx_examples": record.errors,
        "targets": {
            "no 5xx for good requests": good_5xx == 0,
            f"worker RSS growth < {RSS_GROWTH_MAX:.0%}": bool(growth < RSS_GROWTH_MAX),
            "cache never above its bound": cache_max <= (record.capacity or CACHE_SIZE),
        },
    }


def fmt(x, spec: str = ".0f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def report(s: dict) -> None:
    print(f"\nsoak: {s['minutes']} min, {s['clients']} clients, {s['checkpoint']}; {s['requests_answered']} answered")
    print(f"good requests      {s['good']['n']:>6}   HTTP codes {s['good']['codes']}   by kind {s['good_by_kind']}")
    print(f"malformed requests {s['malformed']['n']:>6}   HTTP codes {s['malformed']['codes']}")
    print(
        f"\n{'minute':>6} {'requests':>8} {'good 200':>8} {'good 5xx':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'cache sets':>10} {'RSS MB':>7}"
    )
    for m in s["per_minute"]:
        print(
            f"{m['minute']:>6} {m['requests']:>8} {m['good_200']:>8} {m['good_5xx']:>8} "
            f"{fmt(m['p50_ms']):>8} {fmt(m['p95_ms']):>8} {fmt(m['cache_sets_max'], 'd'):>10} "
            f"{fmt(m['worker_rss_mb'], '.1f'):>7}"
        )
    r, c = s["worker_rss_mb"], s["cache"]
    print(
        f"\nworker RSS {r['start']:.1f} MB after warm-up -> {r['end']:.1f} MB at the end ({r['growth']:+.1%}), "
        f"worker pids {s['worker_pids']}"
    )
    print(f"source-set cache: at most {c['max_seen']} sets seen (bound {c['bound']}, {c['samples']} answers)")
    for e in s["good_5xx_examples"]:
        print(f"  good request failed: {e}")
    for name, ok in s["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--warmup-s", type=float, default=30.0, help="seconds of the same traffic first, not counted")
    p.add_argument("--checkpoint", default="iwarp-faces-64", help="a checkpoint file or a shipped model's name")
    p.add_argument("--json", default=str(RESULTS), help="where the results go")
    args = p.parse_args(argv)

    from serving.server import stop_server

    tmp = Path(tempfile.mkdtemp(prefix="iwarp-soak-"))
    handle, cfg = start(args.checkpoint, tmp)
    record = Record()
    try:
        size = int(handle.client().predict([photo(64, 0)], register=True, frame="none").info["image_size"][0])
        # warm-up: the same traffic, not counted (allocator arenas, the exported programs' first runs, a full cache)
        soak(handle, size, args.clients, args.warmup_s, Record(), desc="warm-up")
        t0 = soak(handle, size, args.clients, args.minutes * 60, record)
    finally:
        stop_server(tmp / "work")
    summary = summarize(record, t0, args)
    report(summary)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nwritten {args.json}")
    return 0 if all(summary["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
