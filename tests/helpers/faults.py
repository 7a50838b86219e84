"""Faults the tests inject into real services and processes: an MLflow server killed and
brought back on its store and port, a pipeline driver killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from pipelines.progress import ANSI
from pipelines.services import MlflowServer


def kill_mlflow(server: MlflowServer) -> None:
    """SIGKILL the whole server (gunicorn/uvicorn workers too): a crash, not a clean stop."""
    rec = server.record()
    assert rec is not None, "no MLflow server recorded"
    os.killpg(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while MlflowServer.healthy(rec.url, timeout=1) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not MlflowServer.healthy(rec.url, timeout=1)


def newest_log(home: Path, after: float) -> Path | None:
    """The pipeline.log of the newest run folder created after `after` (a time.time())."""
    runs = [p for p in (home / "runs").glob("*/pipeline.log") if p.stat().st_mtime >= after]
    return max(runs, key=lambda p: p.parent.name, default=None)


class MlflowOutage(threading.Thread):
    """While a local pipeline runs: when its log shows the `nth` start of `task`, kill MLflow,
    then `seconds` later start it again (`MlflowServer.ensure`: the same store, the same port)."""

    def __init__(self, home: Path, task: str, nth: int = 1, seconds: float = 60.0, timeout: float = 900.0):
        super().__init__(daemon=True)
        self.home, self.marker, self.nth = home, f"Executing task '{task}'", nth
        self.seconds, self.timeout = seconds, timeout
        self.started_at = time.time()
        self.killed: float | None = None
        self.back: float | None = None
        self.error: BaseException | None = None

    def due(self) -> bool:
        """Whether the pipeline's log has reached the point where MLflow goes down."""
        log = newest_log(self.home, self.started_at)
        text = ANSI.sub("", log.read_text(errors="replace")) if log else ""  # kfp colours task names
        return text.count(self.marker) >= self.nth

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                if self.due():
                    break
                time.sleep(0.2)
            else:
                raise TimeoutError(f"{self.marker!r} x{self.nth} never appeared")
            server = MlflowServer(self.home)
            kill_mlflow(server)
            self.killed = time.monotonic()
            time.sleep(self.seconds)
            server.ensure(timeout=180)
            self.back = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
