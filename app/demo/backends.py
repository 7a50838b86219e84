"""The demo's two ways to run the model, behind one interface (`Animator`):

* `HttpAnimator`: the TorchServe endpoint through `serving.client` (token from key_file.json).
  A source set is registered once (`register` -> `source_set_id`); driving frames then go in
  requests of `chunk_frames` against that id, relative motion anchored at the clip's first
  frame (`reset_reference`). An id the worker evicted (404) is registered again: same images,
  same id.
* `LocalAnimator`: the model in this process (`iwarp.checkpoint.load_model`,
  `iwarp.training.animate.AnimationSession`), the same calls.

Both return the frames, the source-selection maps and where the time went.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import requests

from app.demo.config import DemoConfig
from app.demo.media import to_model
from iwarp.errors import IwarpError, ServiceUnavailable


class DemoServiceError(ServiceUnavailable, RuntimeError):
    """The model server cannot be reached or refuses the demo; the message says what to do."""


@dataclass(frozen=True)
class ModelChoice:
    label: str  # what the page lists: "2.0 (default, champion)"
    version: str | None  # None: the server's default / the only local model


@dataclass
class SourceSet:
    id: str
    n_sources: int
    image_size: int  # the model's side: driving frames are sent at this size
    version: str | None
    photos: list[np.ndarray] = field(repr=False)  # as sent, to register again after an eviction
    maps: bool = True  # False once the served version turned out to have no source maps


@dataclass
class Animation:
    frames: np.ndarray  # (T, H, W, 3) uint8
    maps: np.ndarray | None  # (T, k + 1, h, w) float32, channels summing to 1; None: not served
    wall_ms: float  # in this process, request to decoded frames (HTTP: encode, the hop, decode)
    model_ms: float  # inside the model server (HTTP: the worker's decode + model time)
    requests: int

    @property
    def ms_per_frame(self) -> float:
        return self.wall_ms / max(len(self.frames), 1)


class Animator(Protocol):
    kind: str  # "HTTP to TorchServe" / "in-process"

    def choices(self) -> list[ModelChoice]: ...

    def register(self, photos: list[np.ndarray], version: str | None) -> SourceSet: ...

    def animate(
        self, source_set: SourceSet, frames: list[np.ndarray], *, relative: bool, reset_reference: bool
    ) -> Animation: ...


# ----------------------------------------------------------------------------- HTTP


class HttpAnimator:
    kind = "HTTP to TorchServe"

    def __init__(self, handle: Any, config: DemoConfig, aliases: dict[str, list[str]] | None = None):
        self.handle, self.config = handle, config
        self.client = handle.client(timeout=config.timeout_s)
        self.client.model_name = config.model_name
        self.aliases = aliases or {}  # TorchServe version -> MLflow aliases (champion, challenger)

    def choices(self) -> list[ModelChoice]:
        with _explained(self.handle):
            versions, default = self.client.versions(), self.client.default_version()
        if not versions:
            raise DemoServiceError(
                f"TorchServe at {self.handle.inference_url} serves no {self.config.model_name!r} model yet: "
                "`make run` registers one"
            )
        out = []
        for v in sorted(versions, key=_version_key, reverse=True):
            tags = (["default"] if v == default else []) + self.aliases.get(v, [])
            out.append(ModelChoice(f"{v} ({', '.join(tags)})" if tags else v, v))
        return out

    def register(self, photos: list[np.ndarray], version: str | None) -> SourceSet:
        side = min(self.config.source_side, *(min(p.shape[:2]) for p in photos))
        sent = to_model(photos, side)
        with _explained(self.handle, version):
            # the page sends centred squares (like --local does), so the server must not re-frame them
            info = self.client.predict(sent, register=True, version=version, frame="none").info
        # image_size: handlers packaged before it existed omit it; their frames go at the photos' size
        size = int((info.get("image_size") or [side])[0])
        return SourceSet(info["source_set_id"], len(sent), size, version, sent)

    def animate(
        self, source_set: SourceSet, frames: list[np.ndarray], *, relative: bool, reset_reference: bool
    ) -> Animation:
        from serving.client import ServeError

        driving = to_model(frames, source_set.image_size)
        out: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        model_ms, calls, t0 = 0.0, 0, time.perf_counter()
        for start in range(0, len(driving), self.config.chunk_frames):
            chunk = driving[start : start + self.config.chunk_frames]
            reset = reset_reference and start == 0
            try:
                result = self._predict(source_set, chunk, relative, reset)
            except ServeError as exc:
                if exc.status == 404 and "source_set_id" in exc.message:  # evicted or expired: same images, same id
                    self.register(source_set.photos, source_set.version)
                    result = self._predict(source_set, chunk, relative, reset or start == 0)
                elif _field(exc) == "source_maps" and source_set.maps:  # a version packaged without them
                    source_set.maps = False
                    result = self._predict(source_set, chunk, relative, reset)
                else:
                    raise explain(exc, self.handle, source_set.version) from None
            calls += 1
            model_ms += float(result.info.get("decode_ms", 0.0)) + float(result.info.get("model_ms", 0.0))
            out.extend(result.frames or [])
            if result.source_maps is not None:
                maps.append(result.source_maps)
        wall = (time.perf_counter() - t0) * 1000
        all_maps = np.concatenate(maps) if maps and source_set.maps else None
        return Animation(np.stack(out), all_maps, wall, model_ms, calls)

    def _predict(self, source_set: SourceSet, chunk: list[np.ndarray], relative: bool, reset: bool):
        try:  # a ServeError goes to the caller as it is: some are recoverable (see animate)
            return self.client.predict(
                source_set_id=source_set.id,
                driving=chunk,
                relative=relative,
                reset_reference=reset,
                source_maps=source_set.maps,
                version=source_set.version,
            )
        except requests.RequestException as exc:
            raise explain(exc, self.handle, source_set.version) from None


@contextlib.contextmanager
def _explained(handle: Any, version: str | None = None) -> Iterator[None]:
    from serving.client import ServeError

    try:
        yield
    except (ServeError, requests.RequestException) as exc:
        raise explain(exc, handle, version) from None


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in version.split("."))


def _field(exc: Any) -> str | None:
    return exc.body.get("field") if isinstance(exc.body, dict) else None


def explain(exc: BaseException, handle: Any, version: str | None = None) -> IwarpError:
    """A failed call to TorchServe -> one sentence a person can act on."""
    from serving.client import ServeError

    url = handle.inference_url
    if isinstance(exc, requests.RequestException):
        return DemoServiceError(
            f"TorchServe at {url} is not answering ({type(exc).__name__}): is it down? "
            "Start it (`make run`, or `iwarp serve start`) and press the button again."
        )
    if isinstance(exc, ServeError):
        if "Token Authorization failed" in exc.message or "InvalidKeyException" in exc.message:
            return DemoServiceError(
                f"TorchServe at {url} refused the token from {handle.key_file}: the key is wrong or expired "
                "(the server restarted?). Restart `iwarp demo` beside the running server."
            )
        if exc.status == 0:
            return DemoServiceError(f"TorchServe is not running: {exc.message}")
        if exc.status == 404 and version and version in exc.message:
            return DemoServiceError(f"TorchServe at {url} does not serve version {version} (any more): reload the page")
        if exc.status == 503:
            return DemoServiceError(f"TorchServe at {url} has no worker ready for the model (HTTP 503): retry shortly")
        return DemoServiceError(f"The model server refused the request (HTTP {exc.status}): {exc.message}")
    return exc if isinstance(exc, IwarpError) else DemoServiceError(str(exc))


# ----------------------------------------------------------------------------- in-process


class LocalAnimator:
    kind = "in-process"

    def __init__(self, model: Any, name: str, config: DemoConfig, sessions: int = 16):
        self.model, self.name, self.config = model, name, config
        self.size = int(model.config.image_size)
        self._sessions: OrderedDict[str, Any] = OrderedDict()  # LRU of AnimationSessions, as the server's
        self._capacity = sessions

    @classmethod
    def load(cls, checkpoint: str, config: DemoConfig) -> LocalAnimator:
        from iwarp.checkpoint import load_model, resolve_checkpoint

        path = resolve_checkpoint(checkpoint)
        return cls(load_model(path), path.stem, config)

    def choices(self) -> list[ModelChoice]:
        return [ModelChoice(f"{self.name} (in this process)", None)]

    def register(self, photos: list[np.ndarray], version: str | None) -> SourceSet:
        sent = to_model(photos, self.size)
        digest = hashlib.sha256(np.stack(sent).tobytes()).hexdigest()[:24]
        self._session(digest, sent)
        return SourceSet(digest, len(sent), self.size, None, sent)

    def _session(self, digest: str, photos: list[np.ndarray]):
        from iwarp.training.animate import AnimationSession

        if digest not in self._sessions:
            self._sessions[digest] = AnimationSession(self.model, _tensor(photos))
            while len(self._sessions) > self._capacity:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(digest)
        return self._sessions[digest]

    def animate(
        self, source_set: SourceSet, frames: list[np.ndarray], *, relative: bool, reset_reference: bool
    ) -> Animation:
        session = self._session(source_set.id, source_set.photos)
        if reset_reference:
            session.reset_reference()
        driving = to_model(frames, self.size)
        out, maps, calls, t0 = [], [], 0, time.perf_counter()
        for start in range(0, len(driving), self.config.chunk_frames):
            pred, chunk_maps = session.animate(
                _tensor(driving[start : start + self.config.chunk_frames]), relative, source_maps=True
            )
            out.append(pred.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
            maps.append(chunk_maps.cpu().numpy())
            calls += 1
        wall = (time.perf_counter() - t0) * 1000
        return Animation(np.concatenate(out), np.concatenate(maps), wall, wall, calls)


def _tensor(frames: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)
