"""Local services behind `iwarp pipeline run`: an MLflow tracking server (SQLite store,
local artifact directory), TorchServe (through `serving`'s own process control) and a
local DVC remote directory.

Everything lives under one git-ignored state directory (`.iwarp/` in the current
directory, or `$IWARP_HOME`). A server writes `<home>/<name>/service.json` (pid, port,
URL) and logs to `<home>/<name>/server.log`; the next run reads that file, checks the
process is alive *and* answers its health check, and reuses it instead of paying the
~30 s MLflow start-up again. `iwarp pipeline services stop` ends them cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from iwarp.errors import ServiceUnavailable
from serving.server import free_port

HOME_ENV = "IWARP_HOME"
DEFAULT_MLFLOW_PORT = 5000


class ServiceError(ServiceUnavailable, RuntimeError):
    """A local service could not be started, reached or stopped."""


def iwarp_home(path: str | Path | None = None) -> Path:
    """The state directory: `path`, else `$IWARP_HOME`, else `./.iwarp`."""
    home = Path(path or os.environ.get(HOME_ENV) or Path.cwd() / ".iwarp").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclasses.dataclass
class ServiceRecord:
    """What a started server left behind so later runs can find (and stop) it."""

    name: str
    pid: int
    host: str
    port: int
    url: str
    log: str
    started: float
    command: list[str]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ServiceRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None  # missing or from an older layout: treat as not running


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0); its state letter is the field after "(comm)"
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def port_free(host: str, port: int) -> bool:
    """No one listens on it. SO_REUSEADDR as servers set it: connections of a killed server
    left in TIME_WAIT do not make the port busy (its restart can take the same port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise start/stop between concurrent `iwarp` processes sharing one state dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def log_tail(path: str | Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def group_alive(pgid: int) -> bool:
    """Any process left in the process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group led by `pid` (server + its workers), SIGKILL what lingers.

    Returns once the whole group is gone: the leader can exit a moment before its workers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:  # not a group leader we own: signal the process alone
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if we happen to be its parent
            if not pid_alive(pid) and not group_alive(pid):
                return
            time.sleep(0.2)


class MlflowServer:
    """A local `mlflow server` with a SQLite backend store and a local artifact directory.

    Artifacts are served through the server (`--artifacts-destination`), so clients only
    need the tracking URL, exactly as on a cluster.
    """

    name = "mlflow"

    def __init__(self, home: Path, host: str = "127.0.0.1", port: int = DEFAULT_MLFLOW_PORT, workers: int = 1):
        self.home = home
        self.dir = home / self.name
        self.host, self.port, self.workers = host, port, workers
        self.db = self.dir / "mlflow.db"
        self.artifacts = self.dir / "artifacts"
        self.record_path = self.dir / "service.json"
        self.log_path = self.dir / "server.log"

    def record(self) -> ServiceRecord | None:
        return ServiceRecord.load(self.record_path)

    @staticmethod
    def healthy(url: str, timeout: float = 3.0) -> bool:
        import requests

        try:
            r = requests.get(f"{url}/health", timeout=timeout)
            return r.status_code == 200 and r.text.strip() == "OK"
        except requests.RequestException:
            return False

    def running(self) -> ServiceRecord | None:
        """The recorded server when it is alive and healthy, else None."""
        rec = self.record()
        if rec and pid_alive(rec.pid) and self.healthy(rec.url):
            return rec
        return None

    def command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            self.host,
            "--port",
            str(port),
            "--workers",
            str(self.workers),
        ]

    def ensure(
        self, timeout: float = 300.0, on_wait: Callable[[float], None] | None = None
    ) -> tuple[ServiceRecord, bool]:
        """Reuse the recorded server or start one. Returns (record, started_now)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / ".lock"):
            rec = self.record()
            if rec and pid_alive(rec.pid):
                # Alive: healthy now, or still starting (another run launched it) -> wait.
                if self._wait_healthy(rec, min(timeout, 120.0), on_wait):
                    return rec, False
                terminate_group(rec.pid)  # alive but never healthy: replace it
            self.record_path.unlink(missing_ok=True)
            # A server that died comes back on its port: clients keep their tracking URI.
            wanted = rec.port if rec else self.port
            port = wanted if port_free(self.host, wanted) else free_port(self.host)
            rec = self._start(port)
            if not self._wait_healthy(rec, timeout, on_wait):
                alive = pid_alive(rec.pid)
                terminate_group(rec.pid)
                self.record_path.unlink(missing_ok=True)
                why = "did not become healthy" if alive else "exited"
                raise ServiceError(f"MLflow server {why} within {timeout:.0f} s; log {rec.log}:\n{log_tail(rec.log)}")
            return rec, True

    def _start(self, port: int) -> ServiceRecord:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        cmd = self.command(port)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no idle job-runner processes
        with open(self.log_path, "ab") as log:
            # Own session: the server outlives this `iwarp` process and its group can be
            # stopped as a whole (gunicorn/uvicorn workers included).
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=self.dir,
            )
        url = f"http://{self.host}:{port}"
        rec = ServiceRecord(self.name, proc.pid, self.host, port, url, str(self.log_path), time.time(), cmd)
        rec.save(self.record_path)
        return rec

    def _wait_healthy(self, rec: ServiceRecord, timeout: float, on_wait: Callable[[float], None] | None) -> bool:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.healthy(rec.url):
                return True
            if not pid_alive(rec.pid):
                return False
            if on_wait:
                on_wait(time.monotonic() - t0)
            time.sleep(1.0)
        return False

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the recorded server. Returns True when one was running."""
        with file_lock(self.dir / ".lock"):
            rec = self.record()
            if rec is None:
                return False
            was_alive = pid_alive(rec.pid)
            if was_alive:
                terminate_group(rec.pid, timeout)
                if pid_alive(rec.pid):
                    raise ServiceError(f"MLflow server pid {rec.pid} survived SIGTERM and SIGKILL")
            self.record_path.unlink(missing_ok=True)
            return was_alive


def dvc_remote_dir(home: Path) -> Path:
    """The local DVC remote of the embedded default (an ordinary directory remote)."""
    path = home / "dvc-remote"
    path.mkdir(parents=True, exist_ok=True)
    return path


def torchserve_workdir(home: Path) -> Path:
    return home / "serve"


def ensure_torchserve(
    home: Path, ports: tuple[int, int, int] = (8080, 8081, 8082), model_name: str = "iwarp"
) -> tuple[object, bool]:
    """Reuse the TorchServe started from `<home>/serve`, or start one (token auth on, model
    store `<home>/serve/model-store`, earlier versions restored from its state file).
    Busy default ports fall back to free ones. Returns (serving.server.ServerHandle, started_now)."""
    from serving.config import load_serve_config
    from serving.server import ServerError, ServerHandle, start_server

    workdir = torchserve_workdir(home)
    store = workdir / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    cfg = load_serve_config(overrides=[f"model.name={model_name}"])
    with file_lock(workdir / ".lock"):
        try:
            handle = ServerHandle.load(workdir)
            if handle.alive() and handle.client(timeout=10).ping():
                return handle, False
        except (ServerError, OSError, ValueError):
            pass
        host = cfg.server.host
        chosen = [p if p and port_free(host, p) else 0 for p in ports]  # 0: TorchServe picks a free port

        def start(ports: list[int]) -> object:
            return start_server(
                store,
                config=cfg,
                workdir=workdir,
                inference_port=ports[0],
                management_port=ports[1],
                metrics_port=ports[2],
            )

        try:
            try:
                return start(chosen), True
            except ServerError as exc:
                # A port free when chosen can be taken before the JVM binds it (servers starting
                # beside this one): one more try, on ports picked afresh.
                if "exited during start-up" not in str(exc):
                    raise
                print(f"[torchserve] exited during start-up; starting it again on other ports\n{exc}", flush=True)
            return start([0, 0, 0]), True
        except ServerError as exc:
            raise ServiceError(f"TorchServe did not start: {exc}") from exc


def stop_torchserve(home: Path) -> bool:
    from serving.server import stop_server

    return stop_server(torchserve_workdir(home))


def torchserve_status(home: Path) -> str:
    from serving.server import server_status

    info = server_status(torchserve_workdir(home))
    if not info.get("running"):
        return "not running"
    return f"running at http://{info['host']}:{info['inference_port']} (pid {info['pid']})"
