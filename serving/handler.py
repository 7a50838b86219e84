"""TorchServe handler for iwarp: animate a set of source images with driving frames.

Self-contained on purpose: inside a .mar it needs only torch, numpy, Pillow, PyAV (for
video) and dlib (for face framing), never the `iwarp`/`serving` packages, so the archive runs on
any TorchServe image. It serves the `torch.export` programs written by `serving.export` (folder
`export/`); face framing is pre/post-processing here, not part of the exported graph, and its
code is the library's `iwarp/framing.py`, which the .mar ships beside this file.

Request (POST /predictions/iwarp[/<version>]), JSON or multipart/form-data:

    field            JSON                         multipart
    sources          list of base64 images (1-8)  parts source_0 .. source_7 (or `source`)
    driving          list of base64 images        parts driving_0 .. driving_N (or `driving`)
    driving_video    base64 video (mp4, ...)      part driving_video
    source_set_id    id from a registration       text part
    register         true: cache the sources, return their id
    relative         true: relative motion (see below); default false
    reset_reference  true: this request's first frame becomes the session's reference
    output           "png" (default, base64 in JSON), "mp4" (video/mp4 body), "npy" (float32)
    fps              frame rate of driving images and of mp4 output (default: the driving
                     video's, else handler.default_fps)
    frame            "face" (default): whole photos and frames in, faces framed, pasted back;
                     "none": inputs are face crops already (resized to the model's size)
    face_index       with frame=face: which face of a source photo, most confident first (0)
    source_maps      true: also answer `source_maps`, per frame each source's share of every
                     output position (base64 .npy, float16 (T, k+1, h, w); png/npy output only)

A request needs either `sources` or `source_set_id`, plus driving frames unless it only
registers. With frame=face each source photo is cropped around its face as training crops are
(`iwarp.framing`), the driving face is followed over the frames (smoothed; the last box held
where it is lost, counted in `driving_held`) and cropped the same way, and the animated face is
pasted back into the first source photo: the answer has that photo's size. A registered set
keeps its framing (crop box and photo), so a session pays face detection of its sources once;
its requests inherit its `frame`, and its driving face track continues across requests (until
`reset_reference`). Relative motion: kp = kp_source + (kp_driving - kp_reference), with kp_source the
keypoints of the first source image and kp_reference those of the first driving frame of the
request, or, for a cached source set, of the first frame of the first relative request on that
set (kept until `reset_reference`), so a clip streamed in chunks moves consistently. Keypoints
are the export's `keypoint_fields` (xy, strength[, jacobian]); first-order models' Jacobians
compose as J_driving J_reference^-1 J_source (`relative_motion`).

Every bad input gets its own 4xx JSON body {"code", "type", "message", "field"} while other
requests in the same TorchServe batch still succeed; the worker never raises for bad input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import io
import json
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
Output = Literal["png", "mp4", "npy"]
OUTPUTS: tuple[Output, ...] = get_args(Output)
Frame = Literal["face", "none"]
FRAMES: tuple[Frame, ...] = get_args(Frame)
# A copy of serving.config.HandlerSettings (this file ships alone in the .mar);
# tests/unit/test_config_sources.py ties the two and serving/serve.yaml.
DEFAULTS = {
    "max_sources": 8,
    "max_driving_frames": 256,
    "max_image_side": 1024,
    "max_payload_mb": 32.0,
    "cache_size": 32,
    "cache_ttl_s": 3600.0,
    "forward_batch": 8,
    "num_threads": 0,
    "default_fps": 25.0,
}
_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
}
_TYPES = {
    400: "BadRequest",
    404: "UnknownSourceSet",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    500: "InternalError",
}


ECHO_CHARS = 64  # client text quoted back in an error is cut to this many characters
MAX_JSON_DEPTH = 32  # a valid request nests 2 deep; json.loads recurses once per level


def clip(value: Any, limit: int = ECHO_CHARS) -> str:
    """Client-supplied text for an error message: at most `limit` characters, then '…'."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


class RequestError(Exception):
    """A client mistake: becomes this request's HTTP status and JSON error body."""

    def __init__(self, code: int, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, None if field is None else clip(field)

    def body(self) -> str:
        return json.dumps(
            {"code": self.code, "type": _TYPES.get(self.code, "Error"), "message": self.message, "field": self.field}
        )


# ----------------------------------------------------------------------------- request parsing


@dataclass
class Request:
    sources: list[tuple[str, bytes]] = field(default_factory=list)  # (field name, encoded image)
    driving: list[tuple[str, bytes]] = field(default_factory=list)
    driving_video: bytes | None = None
    source_set_id: str | None = None
    register: bool = False
    relative: bool = False
    reset_reference: bool = False
    output: Output = "png"
    fps: float | None = None
    frame: Frame | None = None  # None: the source set's, else "face"
    face_index: int = 0
    source_maps: bool = False


_INDEXED = re.compile(r"^(source|driving)s?(?:[_\[\.]?(\d+)\]?)?$")


def _to_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off", ""):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise RequestError(400, f"`{name}` must be a boolean (true/false), got {clip(value, 40)!r}", name)


def _to_text(value: Any, name: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, f"`{name}` must be text", name) from None
    if not isinstance(value, (str, int, float)):
        raise RequestError(400, f"`{name}` must be a string", name)
    return str(value).strip()


def _b64(value: Any, name: str) -> bytes:
    """Decode a base64 string (a `data:...;base64,` prefix is allowed)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise RequestError(400, f"`{name}` must be a base64 string, got {type(value).__name__}", name)
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"`{name}` is not valid base64", name) from None


def _b64_list(value: Any, name: str) -> list[tuple[str, bytes]]:
    if isinstance(value, (str, bytes, bytearray)):
        value = [value]
    if not isinstance(value, list):
        raise RequestError(400, f"`{name}` must be a list of base64 images", name)
    if any(isinstance(v, (list, dict)) for v in value):
        raise RequestError(400, f"`{name}` must be a flat list of base64 images, not nested lists or objects", name)
    return [(f"{name}[{i}]", _b64(v, f"{name}[{i}]")) for i, v in enumerate(value)]


def parse_request(raw: dict[str, Any]) -> Request:
    """One TorchServe request dict -> Request. JSON arrives as raw['body'] (a dict, or bytes
    when it did not parse); multipart parts arrive as top-level keys."""
    body = raw.get("body")
    if body is None:
        body = raw.get("data")
    fields: dict[str, Any]
    if isinstance(body, dict):
        fields = body
        from_json = True
    elif isinstance(body, (bytes, bytearray, str)) and len(raw) == 1:
        text = bytes(body) if not isinstance(body, str) else body.encode()
        if not text.strip():
            raise RequestError(400, "empty request: send `sources` (or `source_set_id`) and `driving` frames", "body")
        fields = _loads(text)
        if not isinstance(fields, dict):
            raise RequestError(400, "JSON body must be an object with `sources`/`source_set_id` and `driving`", "body")
        from_json = True
    else:
        fields = {k: v for k, v in raw.items() if k not in ("body", "data")}
        from_json = False
    if not fields:
        raise RequestError(400, "empty request: send `sources` (or `source_set_id`) and `driving` frames", "body")

    _check_depth(fields)
    req = Request()
    indexed: dict[str, list[tuple[int, str, bytes]]] = {"source": [], "driving": []}
    for key, value in fields.items():
        k = str(key)
        m = _INDEXED.match(k) if len(k) <= 32 else None  # bounds the index too: driving_999...
        if m:
            kind, idx = m.group(1), m.group(2)
            if from_json and idx is None:
                items = _b64_list(value, k)
                indexed[kind].extend((i, n, b) for i, (n, b) in enumerate(items))
            else:
                indexed[kind].append((int(idx or 0), k, _b64(value, k) if from_json else _raw_bytes(value, k)))
        elif k == "driving_video":
            req.driving_video = _b64(value, k) if from_json else _raw_bytes(value, k)
        elif k == "source_set_id":
            req.source_set_id = _to_text(value, k) or None
        elif k in ("register", "relative", "reset_reference", "source_maps"):
            setattr(req, k, _to_bool(value, k))
        elif k == "output":
            out = _to_text(value, k).lower()
            if out not in OUTPUTS:
                raise RequestError(400, f"`output` must be one of {list(OUTPUTS)}, got {clip(out)!r}", k)
            req.output = cast(Output, out)  # checked against OUTPUTS above
        elif k == "frame":
            frame = _to_text(value, k).lower()
            if frame not in FRAMES:
                raise RequestError(400, f"`frame` must be one of {list(FRAMES)}, got {clip(frame)!r}", k)
            req.frame = cast(Frame, frame)  # checked against FRAMES above
        elif k == "face_index":
            text = _to_text(value, k)
            if not text.isdigit() or len(text) > 3:
                raise RequestError(400, "`face_index` must be a whole number from 0 (the most confident face)", k)
            req.face_index = int(text)
        elif k == "fps":
            try:
                req.fps = float(_to_text(value, k))
            except ValueError:
                raise RequestError(400, "`fps` must be a number", k) from None
            if not 0 < req.fps <= 240:
                raise RequestError(400, "`fps` must be in (0, 240]", k)
        else:
            raise RequestError(400, f"unknown field `{clip(k)}`", k)
    req.sources = [(n, b) for _, n, b in sorted(indexed["source"])]
    req.driving = [(n, b) for _, n, b in sorted(indexed["driving"])]
    if req.driving and req.driving_video is not None:
        raise RequestError(
            400, "send driving frames either as `driving` images or as `driving_video`, not both", "driving_video"
        )
    if req.source_maps and req.output == "mp4":
        raise RequestError(400, "`source_maps` come back in JSON: use output png or npy, not mp4", "source_maps")
    if req.sources and req.source_set_id:
        raise RequestError(400, "send either `sources` or `source_set_id`, not both", "source_set_id")
    if not req.sources and not req.source_set_id:
        raise RequestError(400, "missing field `sources` (1 to 8 images) or `source_set_id`", "sources")
    if not req.driving and req.driving_video is None and not req.register:
        raise RequestError(400, "missing field `driving` (one or more frames) or `driving_video`", "driving")
    return req


def _loads(text: bytes) -> Any:
    """Parse a JSON body; bad or hostile JSON (e.g. 100 000 nested `[`, which makes json.loads
    raise RecursionError) is the client's 400, never the worker's 500."""
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(400, f"JSON body nests deeper than {MAX_JSON_DEPTH} levels", "body") from None
    except (ValueError, UnicodeDecodeError):
        raise RequestError(
            400, "request body is neither JSON (application/json) nor multipart/form-data", "body"
        ) from None


def _check_depth(fields: dict[str, Any]) -> None:
    """Refuse deep nesting in an already parsed body (TorchServe parses application/json itself)
    before anything walks it recursively (str(), json.dumps)."""
    stack = [(v, 2) for v in fields.values()]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(400, f"JSON body nests deeper than {MAX_JSON_DEPTH} levels", "body")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _raw_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # a text/* part; could still be base64 sent as a form field
        return _b64(value, name)
    raise RequestError(400, f"`{name}` must be a file part", name)


# ----------------------------------------------------------------------------- media


def decode_image(data: bytes, name: str, max_side: int) -> np.ndarray:
    """Encoded image -> HxWx3 uint8 RGB. Refuses non-images (415) and huge images (413)
    before decoding pixels (a tiny PNG can declare a gigapixel canvas)."""
    if not data:
        raise RequestError(400, f"`{name}` is empty", name)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RequestError(415, f"`{name}` is not an image Pillow can read (PNG, JPEG, WebP, ...)", name) from None
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"`{name}` declares too many pixels: {clip(exc, 200)}", name) from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's bytes
        raise RequestError(415, f"`{name}` could not be read as an image: {clip(exc, 200)}", name) from None
    w, h = img.size
    if max(w, h) > max_side:
        raise RequestError(413, f"`{name}` is {w}x{h}; the largest side allowed is {max_side} px", name)
    if w < 8 or h < 8:
        raise RequestError(400, f"`{name}` is {w}x{h}; images must be at least 8x8", name)
    try:
        return np.asarray(img.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pixel data
        raise RequestError(415, f"`{name}` is a corrupt image: {clip(exc, 200)}", name) from None


def decode_video(data: bytes, name: str, max_side: int, max_frames: int) -> tuple[list[np.ndarray], float | None]:
    """Encoded video -> RGB frames and its frame rate; 400 when it does not decode."""
    import av  # lazy: only video requests need PyAV

    frames: list[np.ndarray] = []
    fps = None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise RequestError(400, f"`{name}` contains no video stream", name)
            stream = container.streams.video[0]
            if stream.average_rate:
                fps = float(stream.average_rate)
            w, h = stream.codec_context.width, stream.codec_context.height
            if max(w, h) > max_side:
                raise RequestError(413, f"`{name}` is {w}x{h}; the largest side allowed is {max_side} px", name)
            for frame in container.decode(stream):
                if len(frames) >= max_frames:
                    raise RequestError(413, f"`{name}` has more than {max_frames} frames (the limit per request)", name)
                frames.append(frame.to_ndarray(format="rgb24"))
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - av raises many types for corrupt input
        raise RequestError(
            400, f"`{name}` is not a decodable video: {clip(exc or type(exc).__name__, 200)}", name
        ) from None
    if not frames:
        raise RequestError(400, f"`{name}` decoded to zero frames (corrupt or truncated video)", name)
    return frames, fps


def encode_npy(tensor: torch.Tensor) -> str:
    buf = io.BytesIO()
    np.save(buf, tensor.cpu().numpy())
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_png(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)  # speed over size
    return base64.b64encode(buf.getvalue()).decode("ascii")


# H.264 settings: a copy of iwarp/data/video.py's (this file ships alone in the .mar), under
# which the same frames give the same bytes (one thread everywhere, no x264 macroblock-tree pass,
# bitexact); see the comment there for why. tests/integration/test_serve_handler.py ties the two copies.
H264_PRESET = "veryfast"
X264_PARAMS = "threads=1:sliced-threads=0:lookahead-threads=1:no-mbtree=1"
BITEXACT_CONTAINER = {"fflags": "+bitexact"}


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """RGB frames -> H.264 mp4 bytes (cropped to even sizes), byte-identical to iwarp's VideoWriter."""
    from fractions import Fraction

    import av

    buf = io.BytesIO()
    h, w = frames.shape[1:3]
    with av.open(buf, mode="w", format="mp4", options=BITEXACT_CONTAINER) as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        stream.codec_context.thread_count = 1  # PyAV's default is one thread per core
        stream.codec_context.thread_type = "NONE"
        x264 = {"crf": str(crf), "preset": H264_PRESET} if codec == "libx264" else {}
        stream.options = {
            **x264,
            "threads": "1",
            **({"x264-params": X264_PARAMS} if x264 else {}),
            "flags": "+bitexact",
        }
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: h - h % 2, : w - w % 2]), format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def to_tensor(frames: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """uint8 HxWx3 frames -> float (T,3,H,W) in [0,1] at the model's size."""
    h, w = size
    out = []
    for f in frames:
        if f.shape[:2] != (h, w):
            f = np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
        out.append(torch.from_numpy(np.require(f, requirements=["C", "W"])).permute(2, 0, 1))
    return torch.stack(out).float().div_(255.0)


def _float(frames: np.ndarray) -> np.ndarray:
    """(T,H,W,3) uint8 -> (T,3,H,W) float32 in [0,1]."""
    return frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(T,3,H,W) in [0,1] -> (T,H,W,3) uint8, rounded (not truncated)."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


# ----------------------------------------------------------------------------- keypoints

DEFAULT_KEYPOINT_FIELDS = ["xy", "strength"]  # an export.json without `keypoint_fields`


def relative_motion(
    fields: list[str],
    source: tuple[torch.Tensor, ...],
    driving: tuple[torch.Tensor, ...],
    reference: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, ...]:
    """FOMM's relative motion on keypoint tuples (one tensor per field in `fields`): the
    source's positions moved by driving - reference, the driving strengths, Jacobians composed
    as J_driving J_reference^-1 J_source. A copy of `iwarp.keypoints.relative_keypoints`
    (without adapt_movement_scale): this file ships alone in the .mar; a test ties the two."""
    src, drv, ref = (dict(zip(fields, kp)) for kp in (source, driving, reference))
    moved = dict(drv, xy=src["xy"] + (drv["xy"] - ref["xy"]))
    if "jacobian" in moved:
        moved["jacobian"] = drv["jacobian"] @ torch.linalg.inv(ref["jacobian"]) @ src["jacobian"]
    return tuple(moved[f] for f in fields)


# ----------------------------------------------------------------------------- source-set cache


@dataclass(frozen=True)
class Target:
    """The first source photo and its face's crop box: the animation is pasted back there."""

    photo: np.ndarray  # HxWx3 uint8, as sent
    box: tuple[int, int, int, int]
    faces: int  # faces found in the photo


def framing() -> Any:
    """The library's `iwarp/framing.py`: shipped in the .mar as `iwarp_framing.py` (serving.package);
    the `iwarp` package's own module when the handler runs in-process (tests, a dev checkout)."""
    try:
        return importlib.import_module("iwarp_framing")
    except ModuleNotFoundError:
        return importlib.import_module("iwarp.framing")


@dataclass
class SourceSet:
    cache: tuple[torch.Tensor, ...]  # encode_sources output, batch 1
    source_kp: tuple[torch.Tensor, ...]  # keypoint fields of the first source, batch 1 (relative anchor)
    n_sources: int
    reference_kp: tuple[torch.Tensor, ...] | None = None  # keypoint fields of the session's first frame
    last_used: float = field(default_factory=time.monotonic)
    frame: Frame = "none"
    target: Target | None = None  # frame=face: where the animated face goes back
    follower: Any = None  # frame=face sessions: the driving face track (iwarp.framing.FaceFollower)


class SourceSetCache:
    """Bounded LRU with a time-to-live: per worker, in memory."""

    def __init__(self, capacity: int, ttl_s: float):
        self.capacity, self.ttl_s = max(1, int(capacity)), float(ttl_s)
        self._items: OrderedDict[str, SourceSet] = OrderedDict()

    def get(self, key: str) -> SourceSet | None:
        item = self._items.get(key)
        if item is None:
            return None
        if self.ttl_s > 0 and time.monotonic() - item.last_used > self.ttl_s:
            del self._items[key]
            return None
        item.last_used = time.monotonic()
        self._items.move_to_end(key)
        return item

    def put(self, key: str, item: SourceSet) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


# ----------------------------------------------------------------------------- the handler


@dataclass
class _Job:
    idx: int
    req: Request
    sources: torch.Tensor | None = None  # (k,3,H,W)
    driving: torch.Tensor | None = None  # (T,3,H,W)
    frames: list[tuple[str, np.ndarray]] = field(default_factory=list)  # decoded driving frames
    fps: float | None = None
    entry: SourceSet | None = None
    set_id: str | None = None
    frame: Frame = "none"  # resolved: the request's, else its source set's, else "face"
    target: Target | None = None  # frame=face: the new source set's paste-back target
    held: int = 0  # frame=face: driving frames whose face was lost (the last box held)
    prediction: torch.Tensor | None = None
    pasted: np.ndarray | None = None  # frame=face: (T,H,W,3) uint8 at the photo's size
    maps: torch.Tensor | None = None  # (T,k+1,h,w) when the request asked for source_maps
    error: RequestError | None = None


class IwarpService:
    def __init__(self) -> None:
        self.initialized = False

    # -- lifecycle
    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir")
        cfg = dict(DEFAULTS)
        yaml_cfg = getattr(context, "model_yaml_config", None) or {}
        cfg.update(yaml_cfg.get("handler") or {})
        self.cfg = cfg
        if int(cfg["num_threads"]) > 0:
            torch.set_num_threads(int(cfg["num_threads"]))
        gpu = props.get("gpu_id")
        # TorchServe hands a GPU to a worker through gpu_id; the programs were exported on CPU,
        # so their device arguments are rewritten (move_to_device_pass) rather than .to()'d.
        self.device = (
            torch.device(f"cuda:{gpu}") if gpu is not None and torch.cuda.is_available() else torch.device("cpu")
        )
        export_dir = os.path.join(model_dir, EXPORT_DIR)
        with open(os.path.join(export_dir, "export.json")) as f:
            self.meta = json.load(f)
        progs = self.meta["programs"]
        self.encode = self._load(os.path.join(export_dir, progs["encode_sources"]["file"]))
        self.detect = self._load(os.path.join(export_dir, progs["detect_keypoints"]["file"]))
        self.animate = self._load(os.path.join(export_dir, progs["animate"]["file"]))
        # optional: archives packaged before source maps existed serve without them
        maps = progs.get("source_maps")
        self.maps = self._load(os.path.join(export_dir, maps["file"])) if maps else None
        self.size = tuple(int(x) for x in self.meta["image_size"])
        self.kp_fields = list(self.meta.get("keypoint_fields", DEFAULT_KEYPOINT_FIELDS))
        fields = list(self.meta.get("cache_fields", []))
        # caches that hold the sources' keypoints (source_xy, source_strength[, source_jacobian])
        # give the relative-motion anchor without another detect call
        held = [f"source_{f}" for f in self.kp_fields]
        self.source_kp_fields = [fields.index(n) for n in held] if set(held) <= set(fields) else None
        manifest = getattr(context, "manifest", None) or {}
        self.version = str((manifest.get("model") or {}).get("modelVersion") or self.meta.get("version", "unknown"))
        self.max_sources = min(int(cfg["max_sources"]), int(self.meta.get("max_sources", 8)))
        self.cache = SourceSetCache(int(cfg["cache_size"]), float(cfg["cache_ttl_s"]))
        self.initialized = True
        log.info(
            "iwarp handler ready: version %s, image %s, threads %d", self.version, self.size, torch.get_num_threads()
        )

    def _load(self, path: str) -> Any:
        program = torch.export.load(path)
        if self.device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, str(self.device))
        return program.module()

    # -- TorchServe entry point
    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
        if not self.initialized:
            self.initialize(context)
        if data is None:  # initialisation call from the function entry point
            return None
        self._batch = len(data)  # reported back so clients (and tests) can see TorchServe batching
        t0 = time.perf_counter()
        jobs = [_Job(i, Request()) for i in range(len(data))]
        for job, raw in zip(jobs, data):
            self._guard(job, self._prepare, raw)
        t1 = time.perf_counter()
        with torch.inference_mode():
            self._guard_all([j for j in jobs if j.error is None and j.sources is not None], self._encode)
            for job in jobs:
                if job.error is None and job.entry is None:
                    self._guard(job, self._lookup)
                if job.error is None and job.frames:
                    self._guard(job, self._frame_driving)
            self._guard_all([j for j in jobs if j.error is None and j.driving is not None], self._run)
            for job in jobs:
                if job.error is None and job.prediction is not None and job.frame == "face":
                    self._guard(job, self._paste)
        # where a request's time went (per TorchServe batch): decoding inputs vs the model
        self._timing = {
            "decode_ms": round((t1 - t0) * 1000, 1),
            "model_ms": round((time.perf_counter() - t1) * 1000, 1),
        }
        return [self._respond(job, context) for job in jobs]

    def _guard(self, job: _Job, fn: Any, *args: Any) -> None:
        try:
            fn(job, *args)
        except RequestError as exc:
            job.error = exc
        except Exception as exc:  # noqa: BLE001 - one request's bug must not fail the batch
            log.exception("request %d failed", job.idx)
            job.error = RequestError(500, f"internal error: {type(exc).__name__}: {clip(exc, 200)}")

    def _guard_all(self, jobs: list[_Job], fn: Any) -> None:
        """Run a batched stage; if the batch fails, retry one by one so only the culprit fails."""
        if len(jobs) <= 1:
            for job in jobs:
                self._guard(job, lambda j: fn([j]))
            return
        try:
            fn(jobs)
        except Exception:  # noqa: BLE001
            for job in jobs:
                self._guard(job, lambda j: fn([j]))

    # -- stages
    def _prepare(self, job: _Job, raw: dict[str, Any]) -> None:
        cfg = self.cfg
        total = sum(len(v) for v in raw.values() if isinstance(v, (bytes, bytearray, str)))
        if isinstance(raw.get("body"), dict):
            _check_depth(raw["body"])  # before str() walks it recursively
            total = sum(len(str(v)) for v in raw["body"].values())
        limit = float(cfg["max_payload_mb"]) * 1024 * 1024
        if total > limit:
            raise RequestError(413, f"payload of {total / 2**20:.1f} MiB exceeds {cfg['max_payload_mb']} MiB", "body")
        req = job.req = parse_request(raw)
        if req.source_maps and self.maps is None:
            raise RequestError(
                400, f"version {self.version} was packaged without source maps; package it again", "source_maps"
            )
        max_side, max_frames = int(cfg["max_image_side"]), int(cfg["max_driving_frames"])
        if req.sources:
            if len(req.sources) > self.max_sources:
                raise RequestError(
                    400, f"{len(req.sources)} source images sent; 1 to {self.max_sources} allowed", "sources"
                )
        if len(req.driving) > max_frames:
            raise RequestError(
                413, f"{len(req.driving)} driving frames sent; at most {max_frames} per request", "driving"
            )
        images = [(n, decode_image(b, n, max_side)) for n, b in req.sources]
        driving = [(n, decode_image(b, n, max_side)) for n, b in req.driving]
        if req.driving_video is not None:
            frames, job.fps = decode_video(req.driving_video, "driving_video", max_side, max_frames)
            driving = [(f"driving_video[{i}]", f) for i, f in enumerate(frames)]
        # frame=face takes whole photos of any size; the driving frames are one video all the same
        same = driving if req.frame != "none" else images + driving
        if len({a.shape for _, a in same}) > 1:
            detail = ", ".join(f"{n} {a.shape[1]}x{a.shape[0]}" for n, a in same)
            raise RequestError(
                400,
                f"mismatched image sizes (the driving frames, and with frame=none all images, must share one "
                f"size): {detail}",
                "driving" if req.frame != "none" else "sources",
            )
        job.frames = driving
        if images:
            job.frame = req.frame or "face"
            job.set_id = self.source_set_id([a for _, a in images], job.frame, req.face_index)
            cached = self.cache.get(job.set_id) if req.register else None
            if cached is not None:
                job.entry = cached  # re-registering the same images is free: no detection, no encoding
            elif job.frame == "face":
                job.sources = self._frame_sources(job, images)
            else:
                job.sources = to_tensor([a for _, a in images], self.size).to(self.device)

    def _frame_sources(self, job: _Job, images: list[tuple[str, np.ndarray]]) -> torch.Tensor:
        """Face crops of the source photos at the model's size; the first photo is the target."""
        fr = framing()
        crops = []
        for name, image in images:
            try:
                framed = fr.frame_photo(image, f"`{name}`", job.req.face_index)
            except fr.FramingError as exc:
                raise RequestError(400, f"{exc}; send a photo with a frontal face, or frame=none", name) from None
            crops.append(fr.crop(image, framed.box, self.size[0]))
            if job.target is None:
                job.target = Target(image, framed.box, framed.found)
        return to_tensor(crops, self.size).to(self.device)

    def _frame_driving(self, job: _Job) -> None:
        """The driving frames at the model's size: face crops along the (session's) face track
        with frame=face, whole frames resized with frame=none."""
        entry = job.entry
        assert entry is not None
        frame = entry.frame
        if job.req.frame is not None and job.req.frame != frame:
            raise RequestError(
                400,
                f"source set {clip(job.set_id)} was registered with frame={frame}; send frame={frame} "
                f"or register the sources again with frame={job.req.frame}",
                "frame",
            )
        job.frame = frame
        arrays = [a for _, a in job.frames]
        if frame == "none":
            job.driving = to_tensor(arrays, self.size).to(self.device)
            return
        fr = framing()
        h, w = arrays[0].shape[:2]
        session = job.req.source_set_id is not None
        follower = entry.follower if session and not job.req.reset_reference else None
        if follower is None or (follower.width, follower.height) != (w, h):
            face = fr.first_face(arrays)
            if face is None:
                name = "driving_video" if job.req.driving_video is not None else "driving"
                raise RequestError(400, "no face found in the driving frames; send frame=none for face crops", name)
            rate = job.fps or job.req.fps or float(self.cfg["default_fps"])  # the smoother's time step
            follower = fr.FaceFollower(w, h, rate)
            follower.start(face)
        held = follower.held
        crops = [fr.crop(a, follower.step(a), self.size[0]) for a in arrays]
        job.held = follower.held - held
        if session:
            entry.follower = follower
        job.driving = to_tensor(crops, self.size).to(self.device)

    def _paste(self, job: _Job) -> None:
        target = job.entry.target if job.entry is not None else None
        if target is None:
            raise RequestError(400, "this source set has no face framing to paste into; send frame=none", "frame")
        fr = framing()
        job.pasted = np.stack([fr.paste_back(target.photo, f, target.box) for f in to_uint8(job.prediction)])

    def _encode(self, jobs: list[_Job]) -> None:
        """Encode every new source set, batching sets with the same k into one call."""
        by_k: dict[int, list[_Job]] = {}
        for job in jobs:
            by_k.setdefault(job.sources.shape[0], []).append(job)
        for k, todo in by_k.items():
            step = max(1, int(self.cfg["forward_batch"]))
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                stacked = torch.stack([j.sources for j in chunk])  # (B,k,3,H,W)
                cache = tuple(self.encode(stacked))
                if self.source_kp_fields is not None:  # the cache already holds (B,k,N,...) source keypoints
                    kp = tuple(cache[i][:, 0] for i in self.source_kp_fields)
                else:
                    kp = tuple(self.detect(stacked[:, 0]))
                for b, job in enumerate(chunk):
                    job.entry = SourceSet(
                        tuple(t[b : b + 1] for t in cache),
                        tuple(t[b : b + 1] for t in kp),
                        k,
                        frame=job.frame,
                        target=job.target,
                    )
                    if job.req.register:  # own copies: a view would keep the whole batch alive in the LRU
                        entry = job.entry
                        job.entry = SourceSet(
                            tuple(t.clone() for t in entry.cache),
                            tuple(t.clone() for t in entry.source_kp),
                            k,
                            frame=entry.frame,
                            target=entry.target,
                        )
                        assert job.set_id is not None  # set in _prepare for every job with sources
                        self.cache.put(job.set_id, job.entry)

    def _lookup(self, job: _Job) -> None:
        sid = job.req.source_set_id
        entry = self.cache.get(sid)
        if entry is None:
            raise RequestError(
                404,
                f"unknown or expired source_set_id {clip(sid)!r}: "
                f"this worker keeps the {self.cache.capacity} most recent "
                f"sets for {self.cache.ttl_s:.0f} s; register the sources again (same images give the same id)",
                "source_set_id",
            )
        job.entry, job.set_id = entry, sid

    def _run(self, jobs: list[_Job]) -> None:
        """Keypoints for every driving frame, then the per-frame animation, batched across
        requests (frames of sets with the same number of sources share a forward)."""
        step = max(1, int(self.cfg["forward_batch"]))
        frames = torch.cat([j.driving for j in jobs])
        # one tensor per keypoint field (xy, strength[, jacobian]), for all frames
        detected = [tuple(self.detect(frames[start : start + step])) for start in range(0, frames.shape[0], step)]
        all_kp = tuple(torch.cat(parts) for parts in zip(*detected))
        # Per frame: (job, keypoint fields) after relative adjustment.
        items: list[tuple[_Job, tuple[torch.Tensor, ...]]] = []
        offset = 0
        for job in jobs:
            t = job.driving.shape[0]
            kp = tuple(x[offset : offset + t] for x in all_kp)
            offset += t
            if job.req.relative:
                entry = job.entry
                session = job.req.source_set_id is not None
                if session and entry.reference_kp is not None and not job.req.reset_reference:
                    ref = entry.reference_kp
                else:
                    ref = tuple(x[:1] for x in kp)
                    if session:
                        entry.reference_kp = ref
                kp = relative_motion(self.kp_fields, entry.source_kp, kp, ref)
            items.extend((job, tuple(x[i : i + 1] for x in kp)) for i in range(t))
        by_k: dict[int, list[int]] = {}
        for i, (job, _) in enumerate(items):
            by_k.setdefault(job.entry.n_sources, []).append(i)
        outputs: list[torch.Tensor | None] = [None] * len(items)
        maps: list[torch.Tensor | None] = [None] * len(items)
        for idxs in by_k.values():
            for start in range(0, len(idxs), step):
                chunk = idxs[start : start + step]
                caches = [items[i][0].entry.cache for i in chunk]
                cache = tuple(torch.cat(parts) for parts in zip(*caches))
                kp = tuple(torch.cat(parts) for parts in zip(*(items[i][1] for i in chunk)))
                pred = self.animate(*kp, *cache)
                chunk_maps = self.maps(*kp, *cache) if any(items[i][0].req.source_maps for i in chunk) else None
                for j, i in enumerate(chunk):
                    outputs[i] = pred[j : j + 1]
                    maps[i] = None if chunk_maps is None else chunk_maps[j : j + 1]
        offset = 0
        for job in jobs:
            t = job.driving.shape[0]
            job.prediction = torch.cat(outputs[offset : offset + t])
            if job.req.source_maps:
                job.maps = torch.cat(maps[offset : offset + t])
            offset += t

    # -- responses
    def _respond(self, job: _Job, context: Any) -> Any:
        if job.error is not None:
            code = job.error.code
            context.set_response_status(code, _REASONS.get(code, "Error"), job.idx)
            context.set_response_content_type(job.idx, "application/json")
            return job.error.body()
        try:
            info: dict[str, Any] = {
                "model_version": self.version,
                "n_sources": job.entry.n_sources,
                "image_size": list(self.size),  # what clients may resize their frames to
                "batch": self._batch,
                **self._timing,
            }
            if job.req.register or job.req.source_set_id:
                info["source_set_id"] = job.set_id
                # this worker's cache after the batch, and its bound: lets a client (bench/serve_soak.py) watch it
                info["cache"] = {"sets": len(self.cache), "capacity": self.cache.capacity}
            target = job.entry.target
            info["frame"] = job.entry.frame
            if target is not None:
                info.update(source_box=list(target.box), faces_found=target.faces)
            if job.prediction is None:  # registration only
                context.set_response_content_type(job.idx, "application/json")
                return json.dumps(info)
            frames = to_uint8(job.prediction) if job.pasted is None else job.pasted  # (T,H,W,3) uint8
            info.update(
                n_frames=int(frames.shape[0]),
                height=int(frames.shape[1]),
                width=int(frames.shape[2]),
                relative=job.req.relative,
            )
            if job.frame == "face":
                info["driving_held"] = job.held
            if job.req.output == "mp4":
                fps = job.req.fps or job.fps or float(self.cfg["default_fps"])
                context.set_response_content_type(job.idx, "video/mp4")
                return encode_mp4(frames, fps)
            if job.req.output == "npy":  # pasted frames are 8-bit: their values / 255
                array = job.prediction.float() if job.pasted is None else torch.from_numpy(_float(job.pasted))
                info["npy"] = encode_npy(array)
            else:
                info["frames"] = [encode_png(f) for f in frames]
            if job.maps is not None:  # on the model's token grid (of the face crop with frame=face)
                info["source_maps"] = encode_npy(job.maps.to(torch.float16))
            context.set_response_content_type(job.idx, "application/json")
            return json.dumps(info)
        except Exception as exc:  # noqa: BLE001
            log.exception("encoding response %d failed", job.idx)
            err = RequestError(500, f"internal error while encoding the response: {clip(exc, 200)}")
            context.set_response_status(500, _REASONS[500], job.idx)
            context.set_response_content_type(job.idx, "application/json")
            return err.body()

    def source_set_id(self, images: list[np.ndarray], frame: Frame, face_index: int) -> str:
        """Content hash of the decoded images and their framing: the same images give the same
        id on every worker, before any detection or encoding."""
        h = hashlib.sha256(f"{self.version}|{frame}|{face_index if frame == 'face' else 0}".encode())
        for image in images:
            h.update(str(image.shape).encode())
            h.update(np.ascontiguousarray(image).tobytes())
        return h.hexdigest()[:24]


_service = IwarpService()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """TorchServe function entry point (`--handler handler.py:handle`)."""
    return _service.handle(data, context)
