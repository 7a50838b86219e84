"""The demo page driven by a real browser: `iwarp demo` in its own process, headless Debian
Chromium through Selenium and Debian's chromedriver (Playwright's browser download cannot work
offline). A plain module: the e2e test uses it, and so does the README picture:

    python -c "from tests.helpers.demo import readme_picture as r; r('docs/images/demo.png', '.iwarp/serve')"
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WINDOW = (1400, 1250)


def chromedriver() -> str | None:
    return shutil.which("chromedriver")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DemoProcess:
    """`iwarp demo ARGS` in the background; `url` is the one URL it prints."""

    def __init__(self, *args: str, timeout: float = 180):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "demo", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                self.lines.append(self.proc.stdout.readline())
                found = re.findall(r"https?://\S+", self.lines[-1])
                if found:
                    self.url = found[0]
                    return
        self.stop()
        raise AssertionError(
            f"iwarp demo printed no URL: {self.lines} {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def stop(self) -> str:
        """Stop it (SIGTERM, as Ctrl-C would); returns what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""


class DemoBrowser:
    """The page in headless Chromium: upload, press Animate, read what the page shows."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium() or "chromium"
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking",
            "--disable-component-update",
            # the live tab's webcam: Chromium's synthetic camera, access granted without a prompt
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(chromedriver()), options=options)

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait(lambda: self._find("#sources input[type=file]") and self.version(), 60)

    def version(self) -> str:
        """The model version the dropdown shows (filled in by the page's load event)."""
        found = self._find("#version input")
        return (found[0].get_attribute("value") or "") if found else ""

    def wait(self, condition, timeout: float = 60.0):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # the page re-renders as it answers: an element read a moment ago may be gone, so look again
        wait = WebDriverWait(
            self.driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
        )
        return wait.until(lambda _: condition())

    def _find(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def _text(self, css: str) -> str:
        found = self._find(css)
        return found[0].text if found else ""

    def upload(self, photos: list[Path], driving: Path | None = None) -> None:
        """Replace the photos (and the driving video) and wait until the page holds them."""
        for clear in self._find("#sources button[aria-label='Clear']"):
            clear.click()
        self._find("#sources input[type=file]")[0].send_keys("\n".join(str(p) for p in photos))
        self.wait(
            lambda: all(p.stem in self._text("#sources") for p in photos)
        )  # the page breaks "a.png" as "a" + ".png"
        if driving is not None:
            self._find("#driving input[type=file]")[0].send_keys(str(driving))
            self.wait(lambda: self._find("#driving video[src]"))

    def animate(self, timeout: float = 120.0) -> tuple[str | None, str | None]:
        """Press Animate; (the animation video's URL, None) or (None, the error message shown)."""
        before = self.video_src("animation")
        for close in self._find("[data-testid='toast-close']"):
            close.click()
        self.wait(lambda: not self._find("[data-testid='toast-body']"), 15)  # the last message is gone
        self._find("#animate")[0].click()

        def answered():
            src = self.video_src("animation")
            errors = [e.text for e in self._find("[data-testid='toast-body']") if e.text.strip()]
            return (src, None) if src and src != before else ((None, errors[0]) if errors else None)

        return self.wait(answered, timeout)

    def start_live(self) -> None:
        """Open the live tab, allow the webcam, start streaming."""
        next(t for t in self._find("button[role=tab]") if "Live" in t.text).click()
        self.wait(lambda: [b for b in self._find("#camera button") if "Access Webcam" in b.text])[0].click()
        self.wait(
            lambda: [b for b in self._find("#camera button") if b.get_attribute("aria-label") == "capture photo"]
        )[0].click()

    def live_status(self, needle: str, timeout: float = 60.0) -> str:
        """Wait until the live status line contains `needle`; returns it."""
        return self.wait(lambda: needle in self.text("live-status") and self.text("live-status"), timeout)

    def video_src(self, elem_id: str) -> str | None:
        found = self._find(f"#{elem_id} video[src]")
        return found[0].get_attribute("src") if found else None

    def playback(self, elem_id: str) -> dict:
        """What the browser itself made of a video: readyState, size, duration."""
        video = self._find(f"#{elem_id} video")[0]
        self.wait(lambda: self.driver.execute_script("return arguments[0].readyState", video) >= 2, 30)
        return self.driver.execute_script(
            "const v = arguments[0]; return {ready: v.readyState, width: v.videoWidth, height: v.videoHeight, "
            "duration: v.duration, error: v.error && v.error.code}",
            video,
        )

    def text(self, elem_id: str) -> str:
        return self._text(f"#{elem_id}")

    def hold(self, seconds: float) -> None:
        """Pause every video at the same moment, so a screenshot pairs driving frame and output."""
        self.driver.execute_script(
            "for (const v of document.querySelectorAll('video')) { v.pause(); v.currentTime = arguments[0]; }", seconds
        )
        time.sleep(1.0)  # let them seek and paint

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))
        return path

    def close(self) -> None:
        self.driver.quit()


def readme_picture(out: str | Path, workdir: str | None = None, checkpoint: str = "iwarp-faces-64") -> Path:
    """The README's picture: the woman's example through the TorchServe running from `workdir`
    (e.g. serving the shipped model), or `checkpoint` in `iwarp demo --local`."""
    home = ROOT / "outputs" / "demo-picture"
    backend = ["--workdir", workdir] if workdir else ["--local", checkpoint]
    demo = DemoProcess(*backend, "--home", str(home))
    browser = DemoBrowser()
    try:
        browser.open(demo.url)
        examples = home / "demo"
        photos = sorted(next(examples.glob("examples-*")).glob("woman/*.png"))
        browser.upload(photos, next(examples.glob("examples-*/woman-driving.mp4")))
        src, error = browser.animate()
        assert src and not error, error
        browser.playback("animation")
        browser.hold(1.5)
        return browser.screenshot(Path(out))
    finally:
        browser.close()
        demo.stop()
