"""Typed serving configuration (`serving/serve.yaml`, overridable with `key=value`).

Sections and when they take effect:
- `model`   : TorchServe per-model settings, baked into the .mar's model-config.yaml at
              `iwarp serve package` time (they travel with the archive to any TorchServe/KServe).
- `handler` : request limits and the source-set cache, also baked in at package time.
- `server`  : addresses, ports, auth and frontend limits, used by `iwarp serve start`.
- `canary`  : promotion thresholds (`serving.canary.CanaryThresholds`), used by the
              TorchServe canary and the KServe rollout alike.
- `canary_eval`: how the canary evaluation is run (set, repeats, MLflow registry name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from serving.canary import CanaryThresholds

DEFAULT_CONFIG = Path(__file__).with_name("serve.yaml")


@dataclass
class ModelSettings:
    name: str = "iwarp"  # TorchServe model name: /predictions/<name>[/<version>]
    batch_size: int = 4  # TorchServe groups up to this many requests into one handler call
    max_batch_delay_ms: int = 10  # ... waiting at most this long for the batch to fill
    workers: int = 1  # workers per version; each holds its own source-set cache
    # A worker silent this long on one batch is killed by TorchServe (its requests get 500). It
    # only catches a hung worker: a dead one is noticed at once (507 "Worker died.", measured
    # 0.1 s after kill -9), so it must outlast the longest legitimate batch, not bound a crash.
    # The largest request the handler allows (8 sources, 256 driving frames at 1024 px,
    # frame=face) took 21 s (mp4 out) and 40 s (png out) on the 64 px model here (2 loaded
    # cores, 1 thread), so a full batch of 4 takes up to ~160 s; 300 s leaves room for that.
    response_timeout_s: int = 300


@dataclass
class HandlerSettings:
    # serving/handler.py DEFAULTS and serving/serve.yaml repeat these (tests/unit/test_config_sources.py)
    max_sources: int = 8
    max_driving_frames: int = 256
    max_image_side: int = 1024  # larger inputs are refused (413), smaller ones resized to the model size
    max_payload_mb: float = 32.0  # JSON 413 above this (the frontend's hard cap is server.max_request_mb)
    cache_size: int = 32  # source sets kept per worker (least recently used evicted)
    cache_ttl_s: float = 3600.0  # a source set unused this long expires
    forward_batch: int = 8  # frames per generator forward (bounds memory on long clips)
    num_threads: int = 0  # torch intra-op threads per worker; 0 = torch's default
    default_fps: float = 25.0  # mp4 output frame rate when the request gives none


@dataclass
class ClientWatch:
    """How `serving.client` notices a prediction that TorchServe lost. A worker that dies mid-batch
    gets its batch answered 507, but the requests it was still gathering into its next batch
    (`max_batch_delay_ms`) are dropped unanswered: the client would wait its whole timeout.
    While a prediction is pending the client checks the worker's pid; once it is gone it sends a
    probe behind the request, and a probe answered while the request is not means it was lost."""

    watch_s: float = 1.0  # how often a pending prediction checks its worker
    settle_s: float = 3.0  # after the probe's answer, how long the request's own answer may lag
    # A version with several workers, or one this machine cannot see, is not watched; the verdict
    # is kept this long, so predictions do not ask the management API before each one.
    recheck_s: float = 30.0


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"  # inference, management and metrics bind here (loopback by default)
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    # TorchServe 0.12 always starts its gRPC servers too (no switch): same host, same tokens.
    # iwarp's clients use HTTP only, so 0 = any free port (no clash with other servers).
    grpc_inference_port: int = 0
    grpc_management_port: int = 0
    workdir: str = ".iwarp/serve"  # key_file.json, config.properties, logs, pid file, state
    token_expiration_min: int = 1440  # TorchServe token lifetime; `iwarp serve` refreshes expired ones
    max_request_mb: int = 64  # frontend hard cap: bigger requests get a bare 413 from Netty
    max_response_mb: int = 512
    java_heap_mb: int = 1024
    startup_timeout_s: float = 180.0


@dataclass
class CanaryEval:
    canary_set: str = ""  # folder of held-out cases (see docs/serving.md); empty = pass --canary-set
    max_cases: int = 0  # 0 = every case in the set
    repeats: int = 1  # send each case this many times to each version (more latency samples)
    warmup: int = 1  # untimed requests per version first (first-call JIT/alloc noise)
    # per request: TorchServe 0.12 loses the request a dying worker was batching (it never
    # answers); the client reports it lost within seconds (ClientWatch), this bounds the rest
    timeout_s: float = 120.0
    mlflow_model_name: str = "iwarp"  # registered model whose aliases move (needs a tracking URI)


@dataclass
class ServeConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    handler: HandlerSettings = field(default_factory=HandlerSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    canary: CanaryThresholds = field(default_factory=CanaryThresholds)
    canary_eval: CanaryEval = field(default_factory=CanaryEval)


def load_serve_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ServeConfig:
    """Defaults <- `serving/serve.yaml` (or `path`) <- `overrides` such as `server.inference_port=9080`."""
    from iwarp.config import load_config

    return load_config(ServeConfig, path if path is not None else DEFAULT_CONFIG, overrides)


def load_thresholds(path: str | Path | None = None, overrides: list[str] | None = None) -> CanaryThresholds:
    """Thresholds from a YAML file: either a full serving config (its `canary:` section is
    used) or a file holding only the threshold keys. None: the packaged defaults."""
    from iwarp.config import load_config

    if path is not None:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(data, dict) and "canary" in data:
            return load_serve_config(path, overrides).canary
        return load_config(CanaryThresholds, path, overrides)
    return load_serve_config(None, overrides).canary
