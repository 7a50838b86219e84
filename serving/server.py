"""Start, stop and inspect a local TorchServe process for iwarp.

Everything a run writes lives in one working directory (`server.workdir`, default
`.iwarp/serve`): the rendered config.properties, TorchServe's key_file.json (token auth is
always on), logs, the launcher's pid file and `server.json` (ports, pid, model store). Two
servers with different working directories and ports run side by side (tests use port 0 =
any free port).

Which versions load at start: TorchServe runs with `--ncs` (no config snapshots), so nothing
is resurrected from an earlier run's snapshot. Instead the model store is the source of
truth: `<model_store>/serving-state.json` lists the registered versions and the default
(the canary keeps it up to date), and `start_server` registers exactly those. Without a state
file it registers `<model_store>/iwarp.mar` (if present) and writes the state file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import string
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iwarp.errors import IwarpError, ServiceUnavailable
from serving.config import ServeConfig, ServerSettings, load_serve_config
from serving.tools import find_executable

TEMPLATE = Path(__file__).with_name("config.properties")
STATE_FILE = "serving-state.json"
SERVER_FILE = "server.json"
KEY_FILE = "key_file.json"
_TS_MAIN = "org.pytorch.serve.ModelServer"


class ServerError(IwarpError, RuntimeError):
    pass


class ServerNotRunning(ServiceUnavailable, ServerError):
    """No TorchServe was started from that folder (exit 3)."""


@dataclass
class ServerHandle:
    """Where a running TorchServe listens and where its key file is."""

    workdir: str
    model_store: str
    host: str
    inference_port: int
    management_port: int
    metrics_port: int
    pid: int
    grpc_inference_port: int = 0
    grpc_management_port: int = 0

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def key_file(self) -> Path:
        return Path(self.workdir) / KEY_FILE

    def save(self) -> None:
        path = Path(self.workdir) / SERVER_FILE
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, workdir: str | Path) -> ServerHandle:
        path = Path(workdir) / SERVER_FILE
        if not path.is_file():
            raise ServerNotRunning(
                f"no TorchServe started from {workdir} (missing {SERVER_FILE}); run `iwarp serve start`"
            )
        return cls(**json.loads(path.read_text()))

    def alive(self) -> bool:
        return _is_torchserve(self.pid, self.workdir)

    def client(self, timeout: float = 300.0):
        from serving.client import TorchServeClient

        return TorchServeClient(self, timeout=timeout)


# ----------------------------------------------------------------------------- state file


def read_state(model_store: str | Path) -> dict[str, Any] | None:
    path = Path(model_store) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(model_store: str | Path, state: dict[str, Any]) -> None:
    path = Path(model_store) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _is_torchserve(pid: int, workdir: str | Path) -> bool:
    """pid is a TorchServe frontend started from `workdir` (its cwd): a recycled pid, or
    another run's server, is never mistaken for ours."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return _TS_MAIN in " ".join(proc.cmdline()) and Path(proc.cwd()).resolve() == Path(workdir).resolve()
    except (psutil.Error, OSError):
        return False


def _private_tmp(workdir: Path, create: bool = True) -> Path:
    """workdir/tmp, or a short folder under the system temp dir when socket paths in
    workdir/tmp would pass the 107-byte limit of a Unix socket path (recorded in workdir).
    `create=False` only looks it up (stopping a server must not make folders)."""
    tmp = workdir / "tmp"
    if len(str(tmp)) + len("/.ts.sock.65535") > 100:
        import tempfile

        link = workdir / "tmp-path"
        if link.is_file() and Path(link.read_text().strip()).is_dir():
            return Path(link.read_text().strip())
        if not create:
            return tmp
        short = Path(tempfile.mkdtemp(prefix="iwarp-ts-"))
        link.write_text(str(short))
        return short
    if create:
        tmp.mkdir(exist_ok=True)
    return tmp


def render_config(settings: ServerSettings, model_store: Path, ports: dict[str, int]) -> str:
    values = {
        "host": settings.host,
        **ports,
        "token_expiration_min": settings.token_expiration_min,
        "model_store": str(model_store),
        "max_request_bytes": int(settings.max_request_mb * 1024 * 1024),
        "max_response_bytes": int(settings.max_response_mb * 1024 * 1024),
        "java_heap_mb": settings.java_heap_mb,
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)


def _log_tail(workdir: Path, n: int = 40) -> str:
    parts = []
    for name in ("torchserve.out", "logs/ts_log.log", "logs/model_log.log"):
        p = workdir / name
        if p.is_file():
            # Java stack frames ("\tat ...") would push the actual error out of view
            lines = [ln for ln in p.read_text(errors="replace").splitlines() if not ln.lstrip().startswith("at ")][-n:]
            parts.append(f"--- {p} ---\n" + "\n".join(lines))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- start / stop


def start_server(
    model_store: str | Path,
    *,
    config: ServeConfig | None = None,
    workdir: str | Path | None = None,
    inference_port: int | None = None,
    management_port: int | None = None,
    metrics_port: int | None = None,
    grpc_ports: tuple[int, int] | None = None,
    register: bool = True,
    workers: int | None = None,
) -> ServerHandle:
    """Start TorchServe in the background and wait until it answers, then register the
    versions listed in the model store's state file (or `iwarp.mar`). Port 0 = a free port."""
    cfg = config or load_serve_config()
    s = cfg.server
    model_store = Path(model_store).resolve()
    if not model_store.is_dir():
        raise ServerError(f"model store {model_store} is not a directory")
    workdir = Path(workdir or s.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    if (workdir / SERVER_FILE).is_file():
        old = ServerHandle.load(workdir)
        if old.alive():
            raise ServerError(f"TorchServe already runs from {workdir} (pid {old.pid}); `iwarp serve stop` first")
    requested = {
        "inference_port": s.inference_port if inference_port is None else inference_port,
        "management_port": s.management_port if management_port is None else management_port,
        "metrics_port": s.metrics_port if metrics_port is None else metrics_port,
        "grpc_inference_port": s.grpc_inference_port,
        "grpc_management_port": s.grpc_management_port,
    }
    if grpc_ports is not None:
        requested["grpc_inference_port"], requested["grpc_management_port"] = grpc_ports
    ports: dict[str, int] = {}
    for k, v in requested.items():  # distinct free ports (the OS may hand out one twice)
        while not v or v in ports.values():
            v = free_port(s.host)
        ports[k] = v
    busy = [f"{k}={v}" for k, v in ports.items() if _port_in_use(s.host, v)]
    if busy:
        raise ServerError(
            f"ports already in use on {s.host}: {', '.join(busy)} (pick others or use 0 for any free port)"
        )
    conf = workdir / "config.properties"
    conf.write_text(render_config(s, model_store, ports))
    (workdir / KEY_FILE).unlink(missing_ok=True)

    private_tmp = _private_tmp(workdir)
    env = {
        **os.environ,
        # The launcher keeps its pid file in $TMPDIR, and $TEMP becomes java.io.tmpdir, where the
        # frontend puts its worker sockets (.ts.sock.9000, ...): private ones per workdir let
        # several servers run at once without stealing each other's workers, and `stop` find
        # the right process.
        "TMPDIR": str(private_tmp),
        "TEMP": str(private_tmp),
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
    }
    torchserve = find_executable("torchserve", ServerError, "install torchserve==0.12.0 (and Java 17)")
    cmd = [torchserve, "--start", "--ncs", "--model-store", str(model_store), "--ts-config", str(conf)]
    out_path = workdir / "torchserve.out"
    out_offset = out_path.stat().st_size if out_path.is_file() else 0
    with open(out_path, "ab") as out:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120)
    if proc.returncode != 0:
        raise ServerError(f"`torchserve --start` exited {proc.returncode}\n{_log_tail(workdir)}")
    pid_file = private_tmp / ".model_server.pid"
    pid = int(pid_file.read_text().strip()) if pid_file.is_file() else -1
    handle = ServerHandle(
        str(workdir),
        str(model_store),
        s.host,
        ports["inference_port"],
        ports["management_port"],
        ports["metrics_port"],
        pid,
        ports["grpc_inference_port"],
        ports["grpc_management_port"],
    )
    handle.save()
    try:
        _wait_healthy(handle, s.startup_timeout_s, out_path, out_offset)
        if register:
            restore_models(handle, cfg, workers=workers)
    except BaseException:
        stop_server(workdir)
        raise
    return handle


def _wait_healthy(handle: ServerHandle, timeout_s: float, out_path: Path, out_offset: int) -> None:
    """Ping answers (with the token) and the frontend says it finished starting: it binds the
    gRPC ports after REST ones, and a busy gRPC port stops it after a first healthy ping."""
    import requests

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not handle.alive():
            raise ServerError(f"TorchServe exited during start-up\n{_log_tail(Path(handle.workdir))}")
        with open(out_path, "rb") as f:
            f.seek(out_offset)
            started = b"Model server started." in f.read()
        if started and handle.key_file.is_file():
            try:
                key = json.loads(handle.key_file.read_text())["inference"]["key"]
                r = requests.get(f"{handle.inference_url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=2)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except (requests.RequestException, ValueError, KeyError) as exc:
                last = str(exc)
        time.sleep(0.3)
    raise ServerError(f"TorchServe not healthy after {timeout_s:.0f} s ({last})\n{_log_tail(Path(handle.workdir))}")


def restore_models(handle: ServerHandle, cfg: ServeConfig, workers: int | None = None) -> dict[str, Any] | None:
    """Register what the model store's state file lists (or `<name>.mar`) and set the default."""
    client = handle.client()
    name = cfg.model.name
    store = Path(handle.model_store)
    state = read_state(store)
    if state is None:
        default_mar = store / f"{name}.mar"
        if not default_mar.is_file():
            return None  # empty store: the caller registers later
        from serving.package import read_mar

        version = read_mar(default_mar)["version"]
        state = {"model_name": name, "default": version, "versions": {version: default_mar.name}}
        write_state(store, state)
    for version, mar in sorted(state["versions"].items()):
        if not (store / mar).is_file():
            raise ServerError(f"{STATE_FILE} lists {mar} for version {version}, but it is not in {store}")
        client.register_model(mar, name, workers=workers or cfg.model.workers)
    client.set_default(name, state["default"])
    return state


def stop_server(workdir: str | Path | None = None, timeout_s: float = 60.0) -> bool:
    """Stop the TorchServe started from `workdir` (and its Python workers). False if none ran."""
    import psutil

    workdir = Path(workdir or load_serve_config().server.workdir).resolve()
    pids = set()
    try:
        pids.add(ServerHandle.load(workdir).pid)
    except ServerError:
        pass
    if not workdir.is_dir():
        return False
    pid_file = _private_tmp(workdir, create=False) / ".model_server.pid"
    if pid_file.is_file():
        try:
            pids.add(int(pid_file.read_text().strip()))
        except ValueError:
            pass
    stopped = False
    for pid in pids:
        if not _is_torchserve(pid, workdir):
            continue
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)  # model workers: gone with the frontend, but make sure
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        stopped = True
    for path in (workdir / KEY_FILE, workdir / SERVER_FILE, pid_file):
        path.unlink(missing_ok=True)
    return stopped


def server_status(workdir: str | Path | None = None) -> dict[str, Any]:
    """Running or not, and the registered versions with their default and worker state."""
    workdir = Path(workdir or load_serve_config().server.workdir).resolve()
    try:
        handle = ServerHandle.load(workdir)
    except ServerError:
        return {"running": False, "workdir": str(workdir)}
    if not handle.alive():
        return {"running": False, "workdir": str(workdir), "stale_pid": handle.pid}
    info: dict[str, Any] = {"running": True, **asdict(handle)}
    try:
        client = handle.client(timeout=10)
        info["healthy"] = client.ping()
        info["models"] = {m: client.describe(m) for m in client.list_models()}
    except Exception as exc:  # noqa: BLE001 - status should report, not crash
        info["error"] = str(exc)
    return info
