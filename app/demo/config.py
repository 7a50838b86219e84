"""`iwarp demo`'s settings (the command's flags fill them in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Backend = Literal["http", "local"]
Motion = Literal["relative", "absolute"]
MOTIONS: tuple[Motion, ...] = get_args(Motion)


@dataclass
class DemoConfig:
    backend: Backend = "http"  # http: the TorchServe endpoint; local: the model in this process
    checkpoint: str = "iwarp-faces-64"  # the local model: a checkpoint file or a shipped model name
    home: str | None = None  # state directory (default .iwarp or $IWARP_HOME, as `make run`)
    workdir: str | None = None  # a running TorchServe's working dir (server.json, key_file.json)
    host: str = "127.0.0.1"
    port: int = 7860  # 0: any free port
    model_name: str = "iwarp"
    max_sources: int = 8
    max_frames: int = 300  # a longer driving video is refused (12 s at 25 fps)
    chunk_frames: int = 8  # driving frames per request (the handler's forward batch)
    source_side: int = 256  # photos are sent at most this big; the server resizes to the model's size
    face_check: bool = True  # refuse photos without a detectable face (dlib, in this process)
    timeout_s: float = 120.0  # per HTTP request

    def __post_init__(self) -> None:
        if self.backend not in get_args(Backend):
            raise ValueError(f"backend must be one of {get_args(Backend)}, got {self.backend!r}")
        if not 1 <= self.max_sources <= 8:
            raise ValueError(f"max_sources must be 1 to 8 (the model's limit), got {self.max_sources}")
        if self.max_frames < 1 or self.chunk_frames < 1:
            raise ValueError("max_frames and chunk_frames must be positive")
