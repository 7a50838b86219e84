"""Helpers shared by the serving tests (imported directly, not a pytest plugin).

Models are the real tiny ImplicitWarping with seeded random weights; images are crops of a
real photo (scikit-image's astronaut, public domain) so the PNG round trip and resizing see
natural image statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from iwarp.checkpoint import save_checkpoint
from iwarp.config import to_dict
from iwarp.implicit_warping import ImplicitWarping, ImplicitWarpingConfig

SIZE = 64

# Small limits so every "too big" case is cheap to send.
TEST_OVERRIDES = [
    "model.batch_size=4",
    "model.max_batch_delay_ms=100",
    "handler.max_image_side=256",
    "handler.max_payload_mb=1.0",
    "handler.max_driving_frames=16",
    "handler.cache_size=3",
    "handler.num_threads=1",
    "server.max_request_mb=3",
    "server.java_heap_mb=384",
]


def tiny_model(seed: int = 0) -> ImplicitWarping:
    torch.manual_seed(seed)
    return ImplicitWarping(ImplicitWarpingConfig.tiny(image_size=SIZE)).eval()


def write_checkpoint(model: ImplicitWarping, path: Path) -> Path:
    """What training writes, minus optimizer state (the serving path reads only these keys)."""
    return save_checkpoint(
        {"model_kind": "implicit", "model_config": to_dict(model.config), "model": model.state_dict(), "step": 0}, path
    )


def photo_frames(n: int, seed: int = 0, size: int = SIZE, drift: int = 6) -> list[np.ndarray]:
    """n uint8 crops of a real photo, moving smoothly (a stand-in for video frames)."""
    from PIL import Image
    from skimage import data

    img = data.astronaut()  # 512x512x3 uint8
    rng = np.random.default_rng(seed)
    y, x = 60 + int(rng.integers(0, 40)), 140 + int(rng.integers(0, 40))
    frames = []
    for i in range(n):
        dy, dx = int(round(drift * np.sin(i / 2 + seed))), int(round(drift * np.cos(i / 3 + seed)))
        crop = img[y + dy : y + dy + 240, x + dx : x + dx + 240]
        frames.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)))
    return frames


def to_float(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 frames -> (T,3,H,W) float in [0,1] exactly as the handler decodes PNGs."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


def png_bytes(frame: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def mp4_bytes(frames: list[np.ndarray], fps: int = 10) -> bytes:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def decode_mp4(data: bytes) -> list[np.ndarray]:
    import io

    import av

    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def reference(model: ImplicitWarping, sources: list[np.ndarray], driving: list[np.ndarray], relative: bool = False) -> np.ndarray:
    """The in-process model on the same (PNG-exact) inputs: (T,3,H,W)."""
    src = to_float(sources)[None]  # (1,k,3,H,W)
    drv = to_float(driving)
    with torch.no_grad():
        cache = model.encode_sources(src)
        t = drv.shape[0]
        big = type(cache)(*(x.expand(t, *x.shape[1:]) for x in cache))
        if not relative:
            return model.animate(big, drv).prediction.numpy()
        kp = model.detect_keypoints(drv)
        src_xy = model.detect_keypoints(src[:, 0]).xy  # first source anchors relative motion
        moved = type(kp)(src_xy + (kp.xy - kp.xy[:1]), kp.strength)
        return model.animate(big, driving_keypoints=moved).prediction.numpy()


class MlflowServer:
    """A real `mlflow server` (sqlite backend, local artifacts) on a free loopback port."""

    def __init__(self, root: Path):
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        mlflow = Path(sys.executable).with_name("mlflow")
        env = {**__import__("os").environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = open(root / "mlflow.log", "wb")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    def wait(self, timeout: float = 180.0) -> str:
        import time

        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {timeout} s")

    def stop(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(30)
            except Exception:  # noqa: BLE001
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
