"""Helpers shared by the serving tests (a plain module; the fixtures built on it, `tiny_checkpoint`
and `background_mlflow`, are in tests/conftest.py).

Models are the real tiny ImplicitWarping with seeded random weights; images are crops of a
real photo (scikit-image's astronaut, public domain) so the PNG round trip and resizing see
natural image statistics.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from iwarp.checkpoint import save_checkpoint
from iwarp.config import to_dict
from iwarp.implicit_warping import ImplicitWarping, ImplicitWarpingConfig

SIZE = 64
ROOT = Path(__file__).resolve().parents[2]

# Small limits so every "too big" case is cheap to send.
TEST_OVERRIDES = [
    "model.batch_size=4",
    "model.max_batch_delay_ms=100",
    "handler.max_image_side=640",  # whole photos (the astronaut, 512 px) and 640x360 driving videos
    "handler.max_payload_mb=1.0",
    "handler.max_driving_frames=16",
    "handler.cache_size=3",
    "handler.num_threads=1",
    "server.max_request_mb=3",
    "server.java_heap_mb=384",
]


def serve_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m serving.cli serve ARGS` in this tree (what `iwarp serve` runs)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_model(seed: int = 0) -> ImplicitWarping:
    torch.manual_seed(seed)
    return ImplicitWarping(ImplicitWarpingConfig.tiny(image_size=SIZE)).eval()


def first_order_baseline(seed: int = 0):
    """The tiny FOMM baseline (first-order motion) with a perturbed Jacobian head: at init the
    head predicts exact identities, under which first-order motion equals translations and a
    lost Jacobian would go unnoticed."""
    from iwarp import ExplicitFlowBaseline, ExplicitFlowConfig

    torch.manual_seed(seed)
    model = ExplicitFlowBaseline(ExplicitFlowConfig.tiny(image_size=SIZE)).eval()
    with torch.no_grad():
        model.keypoint_detector.jacobian.weight.normal_(0, 0.1)
    return model


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


def reference(
    model: ImplicitWarping, sources: list[np.ndarray], driving: list[np.ndarray], relative: bool = False
) -> np.ndarray:
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


class BackgroundMlflow:
    """`pipelines.services.MlflowServer` started on a background thread, so a fixture can package
    models while the server boots; `wait()` gives its URL."""

    def __init__(self, root: Path):
        import threading

        from pipelines.services import MlflowServer as Service
        from serving.server import free_port

        self.service = Service(root, port=free_port())
        self._started: dict[str, object] = {}
        self._thread = threading.Thread(target=self._start, daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._started["url"] = self.service.ensure(timeout=180.0)[0].url
        except BaseException as exc:  # noqa: BLE001 - handed to wait() on the test's thread
            self._started["error"] = exc

    def wait(self, timeout: float = 180.0) -> str:
        self._thread.join(timeout)
        if "error" in self._started:
            raise self._started["error"]
        if "url" not in self._started:
            raise RuntimeError(f"mlflow server not healthy after {timeout} s")
        return self._started["url"]

    def stop(self) -> None:
        self._thread.join()
        self.service.stop()


# ----------------------------------------------------------------------------- hostile bodies


class HostileCase:
    """One generated request: `kind` is how it travels ("json" body, "octet" body, or
    "multipart" parts {name: bytes})."""

    def __init__(self, name: str, kind: str, data):
        self.name, self.kind, self.data = name, kind, data

    def ts_request(self) -> dict:
        """What TorchServe's Python worker hands the handler for this request (as its
        otf_message_handler decodes it: application/json parsed when it parses, else bytes)."""
        import json

        if self.kind == "multipart":
            return dict(self.data)
        if self.kind == "json":
            try:
                return {"body": json.loads(self.data.decode("utf-8"))}
            except Exception:  # noqa: BLE001 - TorchServe forwards the raw bytes then
                return {"body": self.data}
        return {"body": self.data}

    def post_kwargs(self) -> dict:
        """requests.post keyword arguments that send it over HTTP."""
        if self.kind == "multipart":
            return {"files": {k: (f"{k}.bin", v, "application/octet-stream") for k, v in self.data.items()}}
        ctype = "application/json" if self.kind == "json" else "application/octet-stream"
        return {"data": self.data, "headers": {"Content-Type": ctype}}


def _image_bytes(img, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png_bomb(side: int) -> bytes:
    """A valid PNG header declaring side x side pixels with almost no data (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\x00" * min(side // 8 + 1, 4096) * 64, 9)  # a few rows of 1-bit pixels, the rest missing
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def hostile_cases(n: int, seed: int, good: np.ndarray) -> list[HostileCase]:
    """n hostile requests from a seeded RNG (the same seed gives the same cases). `good` is a
    valid frame the cases wrap their hostile part around, so each reaches deep into the handler."""
    import base64
    import json

    from PIL import Image

    rng = np.random.default_rng(seed)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    png = png_bytes(good)
    pil = Image.fromarray(good)
    video = mp4_bytes([good] * 3)
    jpeg = _image_bytes(pil, "JPEG")

    def js(obj) -> bytes:
        return json.dumps(obj, allow_nan=True).encode()

    def odd_mode() -> tuple[str, bytes]:
        mode, fmt = [
            ("CMYK", "JPEG"),
            ("CMYK", "TIFF"),
            ("P", "PNG"),
            ("I;16", "PNG"),
            ("LA", "PNG"),
            ("1", "PNG"),
            ("I", "TIFF"),
            ("F", "TIFF"),
            ("RGBA", "WEBP"),
            ("L", "GIF"),
            ("YCbCr", "JPEG"),
        ][rng.integers(11)]
        img = pil.convert(mode) if mode != "I;16" else Image.fromarray(good[..., 0].astype(np.uint16) * 257)
        return f"{mode}/{fmt}", _image_bytes(img, fmt)

    def truncated() -> tuple[str, bytes]:
        name, data = [("png", png), ("jpeg", jpeg), ("mp4", video)][rng.integers(3)]
        return name, data[: int(rng.integers(1, len(data)))]

    def random_bytes() -> bytes:
        return rng.bytes(int(rng.integers(0, 4096)))

    def huge_text() -> str:
        return "".join(rng.choice(list("A/.\\%{[\"'\u00e9\u200b"), int(rng.integers(10_000, 200_000))))

    paths = [
        "../../etc/passwd",
        "/etc/passwd",
        "..\\..\\windows\\win.ini",
        "file:///etc/passwd",
        "%2e%2e%2fetc%2fpasswd",
        "\x00",
        "../" * 200,
        "s3://bucket/../../key",
        "$(id)",
        "`id`",
        "'; DROP TABLE x; --",
    ]
    numbers = [
        "1e999",
        "-1e999",
        "NaN",
        "Infinity",
        "-Infinity",
        "9" * 5000,
        "-" + "9" * 400,
        "1e-999",
        "0",
        "-0.0",
        "2.5",
    ]

    def make(i: int) -> HostileCase:
        kind = int(rng.integers(14))
        if kind == 0:
            return HostileCase("random bytes as json", "json", random_bytes())
        if kind == 1:
            return HostileCase("random bytes as octet-stream", "octet", random_bytes())
        if kind == 2:
            depth = int(rng.choice([33, 100, 999, 1000, 1001, 5000, 100_000]))
            opener, closer = [("[", "]"), ('{"a":', "}"), ('{"sources":[', "]}")][rng.integers(3)]
            tail = closer * depth if rng.random() < 0.5 else ""
            return HostileCase(f"nesting {depth} of {opener}", "json", (opener * depth + "1" + tail).encode())
        if kind == 3:
            depth = int(rng.integers(3, 900))
            nested = "[" * depth + json.dumps(b64(png)) + "]" * depth
            return HostileCase(
                f"nested sources {depth}",
                "json",
                f'{{"sources": {nested}, "driving": [{json.dumps(b64(png))}]}}'.encode(),
            )
        if kind == 4:
            field = str(
                rng.choice(
                    [
                        "fps",
                        "relative",
                        "register",
                        "reset_reference",
                        "output",
                        "sources",
                        "source_set_id",
                        "driving_video",
                    ]
                )
            )
            num = str(rng.choice(numbers))
            body = f'{{"sources": ["{b64(png)}"], "driving": ["{b64(png)}"], "{field}": {num}}}'
            return HostileCase(f"number {num[:12]} in {field}", "json", body.encode())
        if kind == 5:
            name, data = odd_mode()
            role = "sources" if rng.random() < 0.5 else "driving"
            other = "driving" if role == "sources" else "sources"
            return HostileCase(f"image mode {name} as {role}", "json", js({role: [b64(data)], other: [b64(png)]}))
        if kind == 6:
            side = int(rng.choice([300, 5000, 65_535, 100_000, 2**31 - 1]))
            return HostileCase(
                f"png bomb {side}", "json", js({"sources": [b64(_png_bomb(side))], "driving": [b64(png)]})
            )
        if kind == 7:
            name, data = truncated()
            field = "driving_video" if name == "mp4" else str(rng.choice(["sources", "driving"]))
            body = {"sources": [b64(png)], "driving": [b64(png)]}
            if field == "driving_video":
                del body["driving"]
            body[field] = b64(data) if field == "driving_video" else [b64(data)]
            return HostileCase(f"truncated {name} ({len(data)} B) as {field}", "json", js(body))
        if kind == 8:
            pid = str(rng.choice(paths))
            return HostileCase(f"path-like id {pid[:20]!r}", "json", js({"source_set_id": pid, "driving": [b64(png)]}))
        if kind == 9:
            where = int(rng.integers(4))
            text = huge_text()
            body = [
                {"source_set_id": text, "driving": [b64(png)]},
                {"sources": [b64(png)], "driving": [b64(png)], text: 1},
                {"sources": [b64(png)], "driving": [b64(png)], "output": text},
                {"sources": [text], "driving": [b64(png)]},
            ][where]
            return HostileCase(f"oversized string ({len(text)} chars) #{where}", "json", js(body))
        if kind == 10:
            value = [None, True, 5, 1.5, {}, [None], [1.5], [{}], "", [""], {"a": b64(png)}, [[b64(png)]]][
                rng.integers(12)
            ]
            field = str(
                rng.choice(["sources", "driving", "source_set_id", "output", "fps", "driving_video", "register"])
            )
            body = {"sources": [b64(png)], "driving": [b64(png)], field: value}
            return HostileCase(f"type {type(value).__name__} in {field}", "json", js(body))
        if kind == 11:
            raw = [
                b'{"sources": ["\xff\xfe"], "driving": []}',
                b'{"sources": ["\\ud800"], "driving": ["\\udfff"]}',
                b'\xef\xbb\xbf{"sources": []}',
                b'{"sources": [' + b'"' + b64(png).encode() + b'",' * 3 + b"]}",
                b'{"a": 1, "a": 2}',
                b'{"source_set_id": "\\u0000", "driving": ["' + b64(png).encode() + b'"]}',
                b"null",
                b"[]",
                b'"just a string"',
                b"12345678901234567890",
                b'{"sources": NaN}',
            ][rng.integers(11)]
            return HostileCase("odd json", "json", raw)
        if kind == 12:
            parts = {"source_0": png, "driving_0": png}
            target = str(
                rng.choice(
                    ["source_0", "driving_0", "driving_video", "../../etc/passwd", "source_" + "9" * 50, "driving_-1"]
                )
            )
            parts[target] = [random_bytes(), truncated()[1], odd_mode()[1], _png_bomb(100_000), b"", b"x" * 200_000][
                rng.integers(6)
            ]
            return HostileCase(f"multipart {target[:20]}", "multipart", parts)
        # a valid-looking request with one base64 string mangled
        s = b64(png)
        cut = int(rng.integers(1, len(s)))
        mangled = [
            s[:cut],
            s[:cut] + "=" * int(rng.integers(1, 4)),
            s.replace("A", "*", 1),
            "data:," + s,
            "data:image/png;base64,",
            " " + s,
        ][rng.integers(6)]
        return HostileCase("mangled base64", "json", js({"sources": [mangled], "driving": [s]}))

    return [make(i) for i in range(n)]
