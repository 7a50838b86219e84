"""The demo's page (Gradio Blocks).

Tab "Driving video": photos + a driving clip (uploaded or recorded) -> the animation, the
source-selection map (each output pixel in the colour of the source it came from) and the time
per frame. Tab "Live webcam": the webcam streams frame by frame, one request per frame against
the source set registered once, relative motion anchored at the session's first frame until
"Reset reference". A bad input or an unreachable server is one message in the page (a Gradio
error toast for the video, the status line for the live stream), never a traceback; the app
keeps serving.
"""

from __future__ import annotations

import functools
import logging
import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from app.demo.backends import Animation, Animator, SourceSet
from app.demo.config import MOTIONS, DemoConfig
from app.demo.media import legend, load_driving, load_photos, selection_map, upscale, write_mp4
from iwarp.errors import IwarpError

log = logging.getLogger(__name__)

DISPLAY = 256  # the 64 px model output is upscaled for the page (the map keeps its token cells)
LIVE_WINDOW = 100  # live latency statistics over the last this many frames
# System fonts only: the page must render with no internet (Gradio's themes name web fonts).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = "#timing, #live-status {min-height: 3em} footer {display: none !important}"


def user_message(exc: BaseException) -> str | None:
    """The one line a person sees for an expected failure; None for a bug."""
    import requests

    if isinstance(exc, IwarpError):
        return str(exc)
    if isinstance(exc, requests.RequestException):
        return f"The model server is not answering ({type(exc).__name__}): is it running?"
    return None


def shown_to_user(fn: Callable) -> Callable:
    """Expected failures become a Gradio error (a message in the page); bugs are logged with
    their traceback and shown as one line too: the app keeps running either way."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing reaches the page as a traceback
            text = user_message(exc)
            if text is None:
                log.exception("demo bug in %s", fn.__name__)
                text = f"Something went wrong inside the demo ({type(exc).__name__}); its log has the details."
            raise gr.Error(text, duration=None, print_exception=False) from None

    return wrapper


@dataclass
class LiveSession:
    """One browser's live stream: the source set it registered and its latencies."""

    key: tuple = ()  # (photo paths, version) the source set belongs to
    source_set: SourceSet | None = None
    reset: bool = True  # the next frame becomes the reference (session start, or the button)
    latencies: list[float] = field(default_factory=list)  # ms per frame, end to end


class DemoPage:
    def __init__(self, animator: Animator, config: DemoConfig, out_dir: Path):
        self.animator, self.config, self.out_dir = animator, config, out_dir

    # -- versions
    def versions(self) -> Any:
        try:
            choices = self.animator.choices()
        except Exception as exc:  # noqa: BLE001 - shown in the page; the list stays empty
            gr.Warning(user_message(exc) or f"cannot list the model versions ({type(exc).__name__})", duration=None)
            return gr.Dropdown(choices=[], value=None)
        return gr.Dropdown(choices=[(c.label, c.version or "") for c in choices], value=choices[0].version or "")

    def _register(self, photo_paths: list[str] | None, version: str | None) -> tuple[SourceSet, list[np.ndarray]]:
        photos = load_photos(photo_paths, self.config.max_sources, self.config.face_check)
        return self.animator.register(photos, version or None), photos

    # -- a driving video
    def animate_video(
        self, photo_paths: list[str] | None, video: str | None, motion: str, version: str | None
    ) -> tuple[str, str | None, np.ndarray, str]:
        source_set, photos = self._register(photo_paths, version)
        frames, fps = load_driving(video, self.config.max_frames)
        result = self.animator.animate(source_set, frames, relative=motion == "relative", reset_reference=True)
        name = uuid.uuid4().hex[:12]
        out = write_mp4(upscale(result.frames, DISPLAY), fps, self.out_dir / f"{name}-animation.mp4")
        maps = None
        if result.maps is not None:
            maps = str(write_mp4(selection_map(result.maps, DISPLAY), fps, self.out_dir / f"{name}-sources.mp4"))
        return str(out), maps, legend(photos), self._timing(result, source_set)

    def _timing(self, result: Animation, source_set: SourceSet) -> str:
        n = len(result.frames)
        line = f"**{result.ms_per_frame:.1f} ms per frame** ({n} frames, {result.wall_ms / 1000:.2f} s)"
        served = f"version {source_set.version}" if source_set.version else "the default version"
        if self.animator.kind.startswith("HTTP"):
            inside = result.model_ms / max(n, 1)
            line += (
                f" over HTTP to TorchServe, {served}, {result.requests} request(s) against one cached "
                f"source set of {source_set.n_sources}; {inside:.1f} ms of it inside the worker, the rest "
                "PNG + base64 both ways, TorchServe's frontend and batching wait, and the hop."
            )
        else:
            line += f", the model in this process, {source_set.n_sources} cached sources."
        if result.maps is None:
            line += " This version was packaged without source maps: package it again to see them."
        return line

    # -- live
    def live_frame(
        self, frame: np.ndarray | None, photo_paths: list[str] | None, motion: str, version: str | None, session: Any
    ) -> tuple[Any, Any, str, LiveSession]:
        session = session if isinstance(session, LiveSession) else LiveSession()
        if frame is None:
            return gr.skip(), gr.skip(), "Start the webcam.", session
        try:
            key = (tuple(photo_paths or ()), version or "")
            if session.source_set is None or session.key != key:  # new photos or version: register once
                session.source_set, _ = self._register(photo_paths, version)
                session.key, session.reset, session.latencies = key, True, []
            result = self.animator.animate(
                session.source_set, [frame], relative=motion == "relative", reset_reference=session.reset
            )
        except Exception as exc:  # noqa: BLE001 - one status line, not one toast per frame
            text = user_message(exc)
            if text is None:
                log.exception("demo bug in the live stream")
                text = f"Something went wrong inside the demo ({type(exc).__name__}); its log has the details."
            session.source_set = None  # registered again on the next frame
            return gr.skip(), gr.skip(), f"⚠ {text}", session
        session.reset = False
        session.latencies = [*session.latencies[-LIVE_WINDOW + 1 :], result.wall_ms]
        picture = upscale(result.frames, DISPLAY)[0]
        chosen = selection_map(result.maps, DISPLAY)[0] if result.maps is not None else gr.skip()
        return picture, chosen, self._live_stats(session.latencies), session

    def _live_stats(self, latencies: list[float]) -> str:
        p50 = statistics.median(latencies)
        p95 = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
        return (
            f"**{latencies[-1]:.0f} ms** this frame · p50 {p50:.0f} ms · p95 {p95:.0f} ms over the last "
            f"{len(latencies)} frames (at most {1000 / p50:.0f} frames/s, {self.animator.kind})"
        )

    @staticmethod
    def reset_reference(session: Any) -> LiveSession:
        session = session if isinstance(session, LiveSession) else LiveSession()
        session.reset = True
        return session


def build_app(animator: Animator, config: DemoConfig, out_dir: Path, examples: list[list] | None = None) -> gr.Blocks:
    page = DemoPage(animator, config, out_dir)
    where = getattr(getattr(animator, "handle", None), "inference_url", None)
    backend = f"TorchServe at {where} (token auth)" if where else "the model in this process"
    with gr.Blocks(title="iwarp demo", analytics_enabled=False) as app:
        gr.Markdown(
            "## iwarp: animate photos of a person\n"
            f"Implicit warping (Mallya et al., NeurIPS 2022) through {backend}. Give 1 to "
            f"{config.max_sources} photos of one person (same size, face visible) and a driving video "
            "or your webcam; the animation follows the driving face's motion with the photos' looks."
        )
        with gr.Row():
            photos = gr.File(
                label=f"Source photos (1 to {config.max_sources}, one person, one size)",
                file_count="multiple",
                file_types=["image"],
                elem_id="sources",
            )
            with gr.Column():
                version = gr.Dropdown(label="Model version", choices=[], elem_id="version")
                motion = gr.Radio(
                    list(MOTIONS),
                    value="relative",
                    label="Motion",
                    info="relative: the photos' own face moves as the driving face moves; "
                    "absolute: it takes the driving face's pose",
                    elem_id="motion",
                )
        with gr.Tab("Driving video"):
            with gr.Row():
                driving = gr.Video(
                    label="Driving video (upload or record)", sources=["upload", "webcam"], elem_id="driving"
                )
                animation = gr.Video(label="Animation", autoplay=True, loop=True, elem_id="animation")
                source_map = gr.Video(label="Source selection map", autoplay=True, loop=True, elem_id="source-map")
            with gr.Row():
                button = gr.Button("Animate", variant="primary", elem_id="animate")
                colours = gr.Image(
                    label="Map colours: source 1, 2, ...; grey: none (paler: a blend)",
                    interactive=False,
                    elem_id="legend",
                    height=140,
                )
            timing = gr.Markdown(elem_id="timing")
            if examples:
                gr.Examples(
                    examples, inputs=[photos, driving], label="Examples (faces that ship with installed packages)"
                )
        with gr.Tab("Live webcam"):
            session = gr.State(LiveSession())
            with gr.Row():
                camera = gr.Image(label="Webcam", sources=["webcam"], streaming=True, type="numpy", elem_id="camera")
                live = gr.Image(label="Animation (live)", interactive=False, elem_id="live")
                live_map = gr.Image(label="Source selection map", interactive=False, elem_id="live-map")
            with gr.Row():
                reset = gr.Button("Reset reference (the next frame is the new start)", elem_id="reset")
            status = gr.Markdown("Start the webcam.", elem_id="live-status")
        app.load(page.versions, outputs=version)
        button.click(
            shown_to_user(page.animate_video),
            inputs=[photos, driving, motion, version],
            outputs=[animation, source_map, colours, timing],
            concurrency_limit=2,
        )
        camera.stream(
            page.live_frame,
            inputs=[camera, photos, motion, version, session],
            outputs=[live, live_map, status, session],
            stream_every=0.1,
            time_limit=600,
            concurrency_limit=4,
        )
        reset.click(page.reset_reference, inputs=session, outputs=session)
    return app
