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
    response_timeout_s: int = 300  # a worker busy longer than this is restarted by TorchServe


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
    # per request: TorchServe 0.12 can lose the request a dying worker was batching (it never
    # answers), so this is what a worker crash mid-canary costs before that request counts as failed
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
