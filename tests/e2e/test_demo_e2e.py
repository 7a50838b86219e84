"""`iwarp demo` end to end: the page in headless Chromium (Selenium, Debian's chromedriver) against
the session's real TorchServe (`served`, tests/conftest.py), and the page's messages for every
bad input and server fault, through the same functions the page calls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers.demo import DemoBrowser, DemoProcess, chromedriver, chromium
from tests.helpers.serve import decode_mp4, mp4_bytes, png_bytes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("IWARP_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts")) / "demo"
N_DRIVING = 5


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Two photos of the test identity (the demo's own example cut), a 5-frame 64 px driving clip
    of her, a photo without a face, a corrupt video."""
    from app.demo.examples import example_rows

    root = tmp_path_factory.mktemp("demo-inputs")
    photos, driving = example_rows(root / "home")[0]
    clip = [
        np.asarray(Image.fromarray(f).resize((64, 64), Image.Resampling.LANCZOS))
        for f in decode_mp4(Path(driving).read_bytes())
    ]
    (root / "drive.mp4").write_bytes(mp4_bytes(clip[:N_DRIVING]))
    sky = np.linspace(60, 220, 256 * 256 * 3).reshape(256, 256, 3).astype(np.uint8)  # same size, no face
    (root / "sky.png").write_bytes(png_bytes(sky))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 800)
    return {
        "photo1": Path(photos[0]),
        "photo2": Path(photos[1]),
        "driving": root / "drive.mp4",
        "sky": root / "sky.png",
        "corrupt": root / "corrupt.mp4",
        "home": root / "home",
    }


@pytest.mark.skipif(
    chromium() is None or chromedriver() is None,
    reason="headless Chromium + chromedriver not installed (scripts/system-deps.sh installs them)",
)
def test_the_page_animates_uploads_through_torchserve(served, inputs):
    handle, _, _ = served
    demo = DemoProcess("--workdir", handle.workdir, "--home", str(inputs["home"]), "--port", str(_free_port()))
    browser = DemoBrowser()
    try:
        assert demo.url.startswith("http://127.0.0.1:") and len(demo.lines) == 1  # one URL, one line
        browser.open(demo.url)
        assert browser.version().startswith("1.0")  # the served version, from the management API

        browser.upload([inputs["photo1"], inputs["photo2"]], inputs["driving"])
        src, error = browser.animate()
        assert error is None, error
        frames = decode_mp4(requests.get(src, timeout=30).content)
        assert len(frames) == N_DRIVING  # one output frame per driving frame
        first = np.asarray(Image.open(inputs["photo1"]).convert("RGB").resize(frames[0].shape[1::-1]))
        assert min(np.abs(f.astype(float) - first).mean() for f in frames) > 5  # animated, not a copy of a source
        played = browser.playback("animation")
        assert played["error"] is None and played["width"] == frames[0].shape[1] and played["duration"] > 0
        maps = decode_mp4(requests.get(browser.video_src("source-map"), timeout=30).content)
        assert len(maps) == N_DRIVING  # the source-selection map, per frame
        timing = browser.text("timing")
        assert "ms per frame" in timing and "HTTP to TorchServe" in timing, timing
        browser.hold(0.2)
        browser.screenshot(ARTIFACTS / "demo.png")

        # a bad upload: one message in the page, and the next good request still works
        browser.upload([inputs["photo1"], inputs["sky"]])
        src_bad, error = browser.animate()
        assert src_bad is None and error and "No face found in photo 2" in error, error
        assert "Traceback" not in browser.driver.page_source
        browser.upload([inputs["photo2"], inputs["photo1"]])
        src_again, error = browser.animate()
        assert error is None and src_again not in (None, src), error
        assert len(decode_mp4(requests.get(src_again, timeout=30).content)) == N_DRIVING

        # the live tab: Chromium's synthetic webcam streams frame by frame against the cached set
        browser.start_live()
        status = browser.live_status("ms this frame")
        assert "HTTP to TorchServe" in status, status
        frames_seen = int(status.split("over the last ")[1].split()[0])
        assert browser.wait(
            lambda: int(browser.live_status("ms this frame").split("over the last ")[1].split()[0]) > frames_seen
        )
        assert browser._find("#live img") and browser._find("#live-map img")
        browser._find("#reset")[0].click()  # re-anchors the relative motion; the stream goes on
        browser.live_status("ms this frame")
    finally:
        browser.close()
        log = demo.stop()
    assert "Traceback" not in log, log


def _free_port() -> int:
    from serving.server import free_port

    return free_port()


def test_every_bad_input_and_fault_is_one_message_and_the_page_keeps_working(served, inputs, tmp_path):
    """What `shown_to_user(page.animate_video)` (the Animate button) answers, through the real
    server: each case is one readable sentence (a Gradio error, no traceback), and a good request
    right after it succeeds. A source set the worker evicted (LRU of 3 in the tests) is registered
    again transparently; the server itself answers a stale id with a 404 that says why."""
    import gradio as gr

    from app.demo.backends import HttpAnimator
    from app.demo.config import DemoConfig
    from app.demo.ui import DemoPage, shown_to_user
    from serving.client import ServeError

    handle, _, _ = served
    config = DemoConfig(workdir=str(handle.workdir), max_frames=4)
    page = DemoPage(HttpAnimator(handle, config), config, tmp_path)
    press = shown_to_user(page.animate_video)
    good = ([str(inputs["photo1"]), str(inputs["photo2"])], str(inputs["driving"]))
    small = tmp_path / "small.png"
    Image.open(inputs["photo1"]).resize((128, 128)).save(small)
    (tmp_path / "notes.png").write_text("not an image")
    photos = [str(inputs["photo1"])]

    # a wrong token and a server that is down: the same page on the server's address with a key
    # file holding wrong keys, and on ports nobody listens on
    from serving.server import ServerHandle

    wrong = tmp_path / "wrong-token"
    wrong.mkdir()
    keys = json.loads(handle.key_file.read_text())
    keys["inference"]["key"] = keys["management"]["key"] = "wrong"
    (wrong / "key_file.json").write_text(json.dumps(keys))
    served_at = vars(ServerHandle.load(handle.workdir))
    bad_token = DemoPage(HttpAnimator(ServerHandle(**{**served_at, "workdir": str(wrong)}), config), config, tmp_path)
    down = ServerHandle(**{**served_at, "inference_port": _free_port(), "management_port": _free_port()})
    server_down = DemoPage(HttpAnimator(down, config), config, tmp_path)

    cases = [
        ("no photos", press, ([], good[1], "relative", "1.0"), "Add 1 to 8 source photos"),
        ("9 photos", press, (photos * 9, good[1], "relative", "1.0"), "9 photos given"),
        ("not an image", press, ([str(tmp_path / "notes.png")], good[1], "relative", "1.0"), "is not an image"),
        ("different sizes", press, ([photos[0], str(small)], good[1], "relative", "1.0"), "different sizes"),
        ("no face", press, ([photos[0], str(inputs["sky"])], good[1], "relative", "1.0"), "No face found in photo 2"),
        ("no driving video", press, (good[0], None, "relative", "1.0"), "Add a driving video"),
        ("corrupt video", press, (good[0], str(inputs["corrupt"]), "relative", "1.0"), "cannot be decoded"),
        ("too long video", press, (good[0], str(inputs["driving"]), "relative", "1.0"), "longer than 4 frames"),
        ("unknown version", press, (good[0], good[1], "relative", "9.9"), "does not serve version 9.9"),
        ("wrong token", shown_to_user(bad_token.animate_video), (*good, "relative", "1.0"), "refused the token"),
        ("server down", shown_to_user(server_down.animate_video), (*good, "relative", "1.0"), "is not answering"),
    ]
    seen = {}
    for name, call, args, needle in cases:
        config.max_frames = 4 if name == "too long video" else 300  # the clip has 5 frames
        with pytest.raises(gr.Error) as caught:
            call(*args)
            pytest.fail(f"{name}: no message")
        config.max_frames = 300
        message = caught.value.message
        seen[name] = message
        assert needle in message and "Traceback" not in message, f"{name}: {message}"
        video, maps, _, timing = press(*good, "absolute", "1.0")  # the page still works
        assert len(decode_mp4(Path(video).read_bytes())) == N_DRIVING and maps and "ms per frame" in timing, name
    print("\n" + "\n".join(f"{name:>18}: {message}" for name, message in seen.items()))

    # an evicted source set: the demo registers it again (same images, same id) and goes on
    animator = page.animator
    photos_arr = [np.asarray(Image.open(p).convert("RGB")) for p in good[0]]
    kept = animator.register(photos_arr, "1.0")
    for i in range(3):  # cache_size=3: three other sets push it out
        animator.register([np.roll(photos_arr[0], 7 * (i + 1), axis=1)], "1.0")
    client = handle.client()
    with pytest.raises(ServeError) as stale:
        client.predict(source_set_id=kept.id, driving=[photos_arr[0]], version="1.0")
    assert stale.value.status == 404 and "unknown or expired source_set_id" in stale.value.message
    again = animator.animate(kept, photos_arr[:1] * 3, relative=True, reset_reference=True)
    assert len(again.frames) == 3 and again.maps is not None and again.maps.shape[1] == 3


def test_the_local_backend_answers_like_the_server(served, inputs, tmp_path):
    """`--local`: the same page functions with the model in this process give the served model's
    frames for the same photos (the tiny checkpoint both sides), up to 8-bit rounding."""
    from app.demo.backends import HttpAnimator, LocalAnimator
    from app.demo.config import DemoConfig
    from app.demo.media import load_driving

    handle, model, _ = served
    config = DemoConfig()
    frames, _ = load_driving(inputs["driving"], 10)
    photos = [
        np.asarray(Image.open(inputs[p]).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
        for p in ("photo1", "photo2")
    ]
    results = []
    for animator in (HttpAnimator(handle, config), LocalAnimator(model, "tiny", config)):
        source_set = animator.register(photos, "1.0" if isinstance(animator, HttpAnimator) else None)
        results.append(animator.animate(source_set, frames, relative=True, reset_reference=True))
    served_result, local = results
    assert served_result.frames.shape == local.frames.shape == (N_DRIVING, 64, 64, 3)
    assert np.abs(served_result.frames.astype(int) - local.frames.astype(int)).max() <= 1
    np.testing.assert_allclose(served_result.maps, local.maps, atol=2e-3)
