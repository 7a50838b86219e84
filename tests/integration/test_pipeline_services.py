"""The local services manager against a real `mlflow server` process: start, reuse by a
second caller, recovery from a stale record, a busy port, and a clean stop; and a real TorchServe
that loses a port at start-up."""

import json
import socket
import time

import pytest
import requests

from pipelines.services import MlflowServer, ServiceError, ServiceRecord, free_port, group_alive, pid_alive

pytestmark = pytest.mark.slow  # two real MLflow server start-ups (~20-40 s each)


def test_start_reuse_stop(tmp_path):
    port = free_port()
    server = MlflowServer(tmp_path, port=port)
    rec, started = server.ensure(timeout=240)
    try:
        assert started and rec.port == port and rec.url == f"http://127.0.0.1:{port}"
        assert requests.get(f"{rec.url}/health", timeout=5).text.strip() == "OK"
        saved = json.loads(server.record_path.read_text())
        assert saved["pid"] == rec.pid and saved["url"] == rec.url
        # the SQLite store and the artifact directory live under the state dir
        assert server.db.is_file() and server.artifacts.is_dir()

        # a second caller (the next `iwarp pipeline run`) reuses it at once
        t0 = time.monotonic()
        again, started_again = MlflowServer(tmp_path, port=free_port()).ensure()
        assert not started_again and again.pid == rec.pid and again.url == rec.url
        assert time.monotonic() - t0 < 5
        assert server.running() is not None
    finally:
        assert server.stop() is True
    assert not pid_alive(rec.pid) and not group_alive(rec.pid)  # workers went with it
    assert not server.record_path.exists()
    assert server.stop() is False and server.running() is None


def test_stale_record_and_busy_port(tmp_path):
    server = MlflowServer(tmp_path, port=free_port())
    # a record left by a server that died (pid no longer exists)
    server.dir.mkdir(parents=True)
    dead = ServiceRecord("mlflow", 2**22 + 12345, "127.0.0.1", 1, "http://127.0.0.1:1", "x", 0.0, [])
    dead.save(server.record_path)
    assert server.running() is None
    # and the configured port is taken by something else
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", server.port))
    blocker.listen()
    try:
        rec, started = server.ensure(timeout=240)
        try:
            assert started and rec.pid != dead.pid
            assert rec.port != server.port  # moved to a free port instead of failing
            assert requests.get(f"{rec.url}/health", timeout=5).status_code == 200
        finally:
            server.stop()
    finally:
        blocker.close()


def test_server_that_dies_at_start_reports_its_log(tmp_path, monkeypatch):
    """A server that cannot bind its port (taken between our check and its start) exits;
    the error says so and shows its log, and no record is left behind."""
    import pipelines.services as services

    server = MlflowServer(tmp_path, port=free_port())
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", server.port))
    blocker.listen()
    monkeypatch.setattr(services, "port_free", lambda host, port: True)  # lose the race on purpose
    try:
        with pytest.raises(ServiceError, match="(?s)MLflow server exited.*server.log"):
            server.ensure(timeout=180)
    finally:
        blocker.close()
        server.stop()
    assert not server.record_path.exists()


def test_torchserve_that_dies_at_start_is_started_again_on_other_ports(tmp_path, monkeypatch, capsys):
    """TorchServe loses the race for a port (taken between our choice and the JVM's bind, as
    another server starting beside it can do) and exits during start-up: `ensure_torchserve`
    starts it once more on ports picked afresh, and says so."""
    import serving.server as server
    from pipelines.services import ensure_torchserve, stop_torchserve

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    picks = iter([taken])  # the first gRPC port chosen is the taken one
    real_free_port = server.free_port
    monkeypatch.setattr(server, "free_port", lambda host="127.0.0.1": next(picks, None) or real_free_port(host))
    monkeypatch.setattr(server, "_port_in_use", lambda host, port: False)  # lose the race on purpose
    try:
        handle, started = ensure_torchserve(tmp_path, (0, 0, 0))
        assert started and handle.alive() and handle.client(timeout=10).ping()
        assert taken not in (handle.grpc_inference_port, handle.grpc_management_port)
    finally:
        blocker.close()
        stop_torchserve(tmp_path)
    assert "[torchserve] exited during start-up; starting it again on other ports" in capsys.readouterr().out
