"""HTTP client for a running iwarp TorchServe: predictions and model management.

It reads the bearer tokens from the server's key_file.json (token auth is always on) and,
when TorchServe reports a token expired, renews it once with the API key and retries.

A worker that dies (kill -9, a crash, the OOM killer) mid-request: TorchServe answers the batch
it was running at once (507 "Worker died."), but drops the requests it was still gathering into
its next batch, unanswered. A prediction watches its worker and, once it is gone and a probe
sent behind the request is answered first, raises a one-line 503 instead of waiting out
`timeout` (`_watched`). It does not resend by itself: a request can be what killed the worker,
and the restarted worker has an empty source-set cache, so the caller decides.

    from serving.server import ServerHandle
    client = ServerHandle.load(".iwarp/serve").client()
    result = client.predict(sources=["a.png", "b.png"], driving=["d0.png", "d1.png"])
    sid = client.register_sources(["a.png", "b.png"])
    result = client.predict(source_set_id=sid, driving=["d2.png"], relative=True)
    result = client.predict(sources=["photo.jpg"], driving_video="talking.mp4", frame="face")  # whole photo back
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests

from iwarp.errors import IwarpError
from serving.config import ClientWatch

ImageLike = Any  # path, encoded bytes, PIL image, HxWx3 uint8 array or (3,H,W) float tensor


class ServeError(IwarpError, RuntimeError):
    """A non-2xx answer; `status` is the HTTP code, `body` the decoded JSON error if any."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.body = status, message, body

    @classmethod
    def lost(cls, worker: _Worker, model_name: str) -> ServeError:
        return cls(
            503,
            f"TorchServe lost this request: worker pid {worker.pid} of {model_name} {worker.version} died while "
            "gathering it into a batch (TorchServe 0.12 never answers those); the worker restarts, send it again",
        )

    @property
    def exit_code(self) -> int:  # iwarp.errors: a rejected request is bad input; no server is a service outage
        if self.status == 0 or self.status in (502, 503, 504):
            return 3
        return 2 if 400 <= self.status < 500 else 1


def encode_image(image: ImageLike) -> bytes:
    """Anything image-like -> PNG (or the file's own) bytes."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, Image.Image):
        pil = image
    else:
        arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:  # (3,H,W) float in [0,1]
            arr = arr.transpose(1, 2, 0)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        pil = Image.fromarray(arr)
    buf = io.BytesIO()
    pil.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _decode_npy(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def decode_png(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@dataclass
class PredictResult:
    status: int
    latency_ms: float
    info: dict[str, Any] = field(default_factory=dict)  # JSON fields besides the frames
    frames: list[np.ndarray] | None = None  # uint8 HxWx3 (output=png)
    array: np.ndarray | None = None  # float32 (T,3,H,W) (output=npy)
    video: bytes | None = None  # output=mp4
    source_maps: np.ndarray | None = None  # float32 (T,k+1,h,w): each source's share (source_maps=True)

    @property
    def source_set_id(self) -> str | None:
        return self.info.get("source_set_id")

    def as_float(self) -> np.ndarray:
        """(T,3,H,W) float in [0,1], whichever output format was asked for."""
        if self.array is not None:
            return self.array
        if self.frames is not None:
            return np.stack(self.frames).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        raise ValueError("an mp4 result has no frames; decode `video` instead")


WORKER_DIED = "Worker died."  # TorchServe's whole message when a worker exits mid-batch


@dataclass(frozen=True)
class _Worker:
    """The one worker process of a version, as the management API named it (pid + start time,
    so a recycled pid is not taken for it)."""

    version: str
    pid: int
    created: float

    @classmethod
    def of(cls, version: str, pid: int) -> _Worker | None:
        import psutil

        try:
            return cls(version, pid, psutil.Process(pid).create_time())
        except (psutil.Error, ValueError):
            return None  # gone already, or not on this machine

    def alive(self) -> bool:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.created and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def _parse_utc(stamp: str) -> datetime:
    """TorchServe writes nanoseconds (2026-01-01T00:00:00.123456789Z); Python parses micro."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]:0<6}+00:00")


class TorchServeClient:
    def __init__(
        self, handle: Any, timeout: float = 300.0, model_name: str = "iwarp", watch: ClientWatch | None = None
    ):
        self.handle = handle
        self.timeout = timeout
        self.model_name = model_name
        self.watch = watch or ClientWatch()
        self.session = requests.Session()
        self._side_session = requests.Session()  # the watch's calls while a prediction holds `session`
        self._workers: dict[str, _Worker] = {}  # per requested version ("" = the default)
        self._unwatchable: dict[str, float] = {}  # version -> when it was found unwatchable (monotonic)

    # ----------------------------------------------------------------- tokens
    def _keys(self) -> dict[str, Any]:
        try:
            return json.loads(Path(self.handle.key_file).read_text())
        except FileNotFoundError:
            raise ServeError(
                0, f"no key file at {self.handle.key_file}: is TorchServe running from that folder?"
            ) from None

    def _refresh_if_expired(self, kind: str) -> bool:
        keys = self._keys()
        stamp = keys.get(kind, {}).get("expiration time")
        if not stamp:
            return False
        if _parse_utc(stamp) > datetime.now(UTC):
            return False
        r = self.session.post(
            f"{self.handle.management_url}/token",
            params={"type": kind},
            headers={"Authorization": f"Bearer {keys['API']['key']}"},
            timeout=30,
        )
        return r.status_code == 200

    def _request(self, kind: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        for attempt in range(2):
            headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {self._keys()[kind]['key']}"}
            r = self.session.request(
                method, url, headers=headers, timeout=kwargs.pop("timeout", self.timeout), **kwargs
            )
            if (
                r.status_code == 400
                and "InvalidKeyException" in r.text
                and attempt == 0
                and self._refresh_if_expired(kind)
            ):
                continue
            return r
        return r

    def _side(self, kind: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One call on the watch's own session, beside a pending prediction."""
        headers = {"Authorization": f"Bearer {self._keys()[kind]['key']}"}
        return self._side_session.request(method, url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    @staticmethod
    def _raise(r: requests.Response) -> None:
        if r.status_code < 300:
            return
        try:
            body = r.json()
            message = body.get("message", r.text) if isinstance(body, dict) else r.text
        except ValueError:
            body, message = None, r.text or r.reason
        if message == WORKER_DIED:
            message += " (the worker process exited while running this batch: killed, crashed or out of memory; "
            message += "TorchServe restarts it)"
        raise ServeError(r.status_code, message, body)

    # ----------------------------------------------------------------- lost requests
    def _worker(self, version: str | None) -> _Worker | None:
        """The live single worker of `version` (None: the default), remembered until it dies.
        None with several workers (a probe could pass a busy one through an idle one) or a
        worker this machine cannot see: then the prediction just waits up to `timeout`."""
        key = version or ""
        known = self._workers.get(key)
        if known is not None and known.alive():
            return known
        if time.monotonic() - self._unwatchable.get(key, -math.inf) < self.watch.recheck_s:
            return None  # asked recently: not on the hot path of every prediction
        path = f"/models/{self.model_name}" + (f"/{version}" if version else "")
        try:
            r = self._side("management", "GET", f"{self.handle.management_url}{path}")
            desc = r.json()[0] if r.status_code == 200 else {}
            workers = desc.get("workers") or []
            one = len(workers) == 1
            worker = _Worker.of(str(desc["modelVersion"]), int(workers[0].get("pid", -1))) if one else None
        except (ServeError, requests.RequestException, ValueError, KeyError, IndexError, AttributeError):
            return None  # no answer, or no worker yet (starting, restarting): ask again next time
        if worker is None and workers:  # several workers, or one on another machine: a lasting verdict
            self._unwatchable[key] = time.monotonic()
        elif worker is not None:
            self._workers[key] = worker
            self._unwatchable.pop(key, None)
        return worker

    def _lost(self, worker: _Worker, answered: threading.Event) -> bool:
        """The worker died with the request unanswered: was the request lost with it? A probe
        (an empty body, which the handler answers 400 at once) queues behind it for the same
        version; TorchServe runs a version's queue in order, so a probe answered by the handler
        while the request is not, `settle_s` later, means nothing is left to answer it."""
        url = f"{self.handle.inference_url}/predictions/{self.model_name}/{worker.version}"
        try:
            probe = self._side("inference", "POST", url, json={}, timeout=self.timeout)
        except (ServeError, requests.RequestException):
            return False
        return probe.status_code == 400 and not answered.wait(self.watch.settle_s)

    def _watched(self, version: str | None, send: Any) -> requests.Response:
        """`send()` on a thread while this one checks its worker every `watch_s`; a clear 503
        as soon as TorchServe is known to have lost the request, never before (a long request
        on a live worker runs to its answer or `timeout`)."""
        worker = self._worker(version)
        box: dict[str, Any] = {}
        answered = threading.Event()

        def run() -> None:
            try:
                box["answer"] = send()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                box["error"] = exc
            finally:
                answered.set()

        # daemon: a lost request's thread stays blocked until `timeout`; it must not hold up exit
        threading.Thread(target=run, daemon=True, name="iwarp-predict").start()
        while not answered.wait(self.watch.watch_s):
            if worker is None or worker.alive():
                continue
            if self._lost(worker, answered):
                raise ServeError.lost(worker, self.model_name)
            worker = self._worker(version)  # answered meanwhile, or a new worker to watch
        if "error" in box:
            raise box["error"]
        return box["answer"]

    # ----------------------------------------------------------------- inference
    def ping(self) -> bool:
        r = self._request("inference", "GET", f"{self.handle.inference_url}/ping", timeout=10)
        return r.status_code == 200 and r.json().get("status") == "Healthy"

    def predict_raw(
        self,
        payload: dict[str, Any] | None = None,
        *,
        files: dict[str, Any] | None = None,
        data: Any = None,
        version: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """One POST /predictions/<model>[/<version>] with a JSON payload or multipart files."""
        url = f"{self.handle.inference_url}/predictions/{self.model_name}" + (f"/{version}" if version else "")
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if payload is not None:
            kwargs["json"] = payload
        if files is not None:
            kwargs["files"] = files
        if data is not None:
            kwargs["data"] = data
        return self._watched(version, lambda: self._request("inference", "POST", url, **kwargs))

    def predict(
        self,
        sources: Sequence[ImageLike] | None = None,
        driving: Sequence[ImageLike] | None = None,
        *,
        driving_video: bytes | str | Path | None = None,
        source_set_id: str | None = None,
        register: bool = False,
        relative: bool = False,
        reset_reference: bool = False,
        output: str = "png",
        fps: float | None = None,
        version: str | None = None,
        multipart: bool = False,
        frame: str | None = None,
        face_index: int | None = None,
        source_maps: bool = False,
    ) -> PredictResult:
        """`frame`: "face" (whole photos and frames; the answer is the first photo with the
        animated face pasted back) or "none" (face crops in and out); None sends nothing, so the
        server's default ("face") or a registered set's own framing applies."""
        fields: dict[str, Any] = {"relative": relative, "output": output}
        if frame is not None:
            fields["frame"] = frame
        if face_index is not None:
            fields["face_index"] = face_index
        if register:
            fields["register"] = True
        if reset_reference:
            fields["reset_reference"] = True
        if source_maps:
            fields["source_maps"] = True
        if source_set_id:
            fields["source_set_id"] = source_set_id
        if fps:
            fields["fps"] = fps
        src = [encode_image(x) for x in sources or []]
        drv = [encode_image(x) for x in driving or []]
        video = Path(driving_video).read_bytes() if isinstance(driving_video, (str, Path)) else driving_video
        t0 = time.perf_counter()
        if multipart:
            files: dict[str, Any] = {f"source_{i}": (f"source_{i}.png", b, "image/png") for i, b in enumerate(src)}
            files.update({f"driving_{i}": (f"driving_{i}.png", b, "image/png") for i, b in enumerate(drv)})
            if video is not None:
                files["driving_video"] = ("driving.mp4", video, "video/mp4")
            data = {k: (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in fields.items()}
            r = self.predict_raw(files=files, data=data, version=version)
        else:
            if src:
                fields["sources"] = [base64.b64encode(b).decode() for b in src]
            if drv:
                fields["driving"] = [base64.b64encode(b).decode() for b in drv]
            if video is not None:
                fields["driving_video"] = base64.b64encode(video).decode()
            r = self.predict_raw(fields, version=version)
        latency = (time.perf_counter() - t0) * 1000
        self._raise(r)
        if output == "mp4":
            return PredictResult(r.status_code, latency, video=r.content)
        info = r.json()
        result = PredictResult(r.status_code, latency, info=info)
        if "frames" in info:
            result.frames = [decode_png(f) for f in info.pop("frames")]
        if "npy" in info:
            result.array = _decode_npy(info.pop("npy"))
        if "source_maps" in info:
            result.source_maps = _decode_npy(info.pop("source_maps")).astype(np.float32)
        return result

    def register_sources(
        self,
        sources: Sequence[ImageLike],
        version: str | None = None,
        frame: str | None = None,
        face_index: int | None = None,
    ) -> str:
        """Cache a source set (with its face framing) on the worker; later requests send only
        driving frames + this id."""
        result = self.predict(sources, register=True, version=version, frame=frame, face_index=face_index)
        return result.info["source_set_id"]

    # ----------------------------------------------------------------- management
    def _mgmt(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._request("management", method, f"{self.handle.management_url}{path}", **kwargs)
        self._raise(r)
        return r.json() if r.content else None

    def list_models(self) -> list[str]:
        return [m["modelName"] for m in self._mgmt("GET", "/models", timeout=30)["models"]]

    def describe(self, name: str | None = None, version: str = "all") -> list[dict[str, Any]]:
        return self._mgmt("GET", f"/models/{name or self.model_name}/{version}", timeout=30)

    def versions(self, name: str | None = None) -> list[str]:
        try:
            return [d["modelVersion"] for d in self.describe(name)]
        except ServeError as exc:
            if exc.status == 404:
                return []
            raise

    def default_version(self, name: str | None = None) -> str | None:
        try:
            return self._mgmt("GET", f"/models/{name or self.model_name}", timeout=30)[0]["modelVersion"]
        except ServeError as exc:
            if exc.status == 404:
                return None
            raise

    def register_model(
        self, mar: str, name: str | None = None, workers: int = 1, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Register an archive already in the model store (by file name); waits for the workers."""
        params = {"url": mar, "model_name": name or self.model_name, "initial_workers": workers, "synchronous": "true"}
        return self._mgmt("POST", "/models", params=params, timeout=timeout)

    def unregister_model(self, version: str, name: str | None = None) -> dict[str, Any]:
        return self._mgmt("DELETE", f"/models/{name or self.model_name}/{version}", timeout=120)

    def set_default(self, name: str | None, version: str) -> dict[str, Any]:
        return self._mgmt("PUT", f"/models/{name or self.model_name}/{version}/set-default", timeout=30)

    def worker_pids(self, name: str | None = None) -> dict[str, list[int]]:
        """Worker process ids per version (a changed pid means TorchServe restarted a worker)."""
        return {d["modelVersion"]: sorted(w.get("pid", -1) for w in d.get("workers", [])) for d in self.describe(name)}

    def metrics(self) -> str:
        return self.session.get(f"{self.handle.metrics_url}/metrics", timeout=30).text
