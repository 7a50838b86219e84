"""S3 against a real S3-compatible HTTP server on loopback: the moto server, started here as its
own process (no real S3 or MinIO is installable on this machine). DVC push/pull through an S3
remote with `endpointurl`, the boto3 helpers, and clear errors when credentials are missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from components.steps.data import dvc as step_dvc
from iwarp.data import s3
from iwarp.data.cli import main as data_main
from serving.server import free_port
from tests.helpers.data import REPO, dvc, tree_digest

BUCKET = "iwarp-test"


# `moto_endpoint`: tests/conftest.py (one moto S3 server for the session).


@pytest.fixture
def aws_env(monkeypatch, tmp_path, moto_endpoint):
    """Test credentials in the environment only: nothing from this machine's ~/.aws."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    client = s3.client(moto_endpoint)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return moto_endpoint


def _small_dataset(root: Path) -> Path:
    from iwarp.data.synth import SynthConfig, make_synth_dataset

    make_synth_dataset(
        root,
        SynthConfig(num_identities=2, videos_per_identity=1, num_frames=4, image_size=32, format="mp4"),
        progress=False,
    )
    (root / "notes" / "deep").mkdir(parents=True)
    (root / "notes" / "deep" / "readme.txt").write_text("nested file")
    return root


def test_boto3_helpers_round_trip(aws_env, tmp_path, monkeypatch):
    src = _small_dataset(tmp_path / "src")
    n = s3.upload_dir(src, f"s3://{BUCKET}/datasets/tiny", endpoint_url=aws_env)
    assert n == len(tree_digest(src)) == 4
    assert sorted(s3.list_keys(f"s3://{BUCKET}/datasets/tiny", endpoint_url=aws_env))[0].startswith("datasets/tiny/")
    # the endpoint from the environment, as a pod would get it
    monkeypatch.setenv(s3.ENDPOINT_ENV, aws_env)
    assert data_main(["s3", "download", f"s3://{BUCKET}/datasets/tiny", str(tmp_path / "back")]) == 0
    assert tree_digest(tmp_path / "back") == tree_digest(src)
    s3.upload_file(src / "manifest.csv", f"s3://{BUCKET}/one/manifest.csv")
    s3.download_file(f"s3://{BUCKET}/one/manifest.csv", tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_bytes() == (src / "manifest.csv").read_bytes()
    with pytest.raises(s3.S3Error, match="nothing under"):
        s3.download_dir(f"s3://{BUCKET}/no/such/prefix", tmp_path / "x")
    with pytest.raises(s3.S3Error, match="not found"):
        s3.download_file("s3://no-such-bucket/key", tmp_path / "y")
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y*"))
    with pytest.raises(s3.S3Error, match="NoSuchBucket"):
        s3.upload_dir(src, "s3://no-such-bucket/x", endpoint_url=aws_env)
    with pytest.raises(s3.S3Error, match="not an S3 URL"):
        s3.parse_url("http://example.com/x")


def test_missing_credentials_fail_clearly(aws_env, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(s3.S3CredentialsError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        s3.upload_dir(tmp_path, f"s3://{BUCKET}/x", endpoint_url=aws_env)
    rc = data_main(["s3", "upload", str(tmp_path), f"s3://{BUCKET}/x", "--endpoint-url", aws_env])
    assert rc == 2 and "no AWS credentials found" in capsys.readouterr().err


@pytest.mark.slow
def test_dvc_push_wipe_pull_through_s3_remote(aws_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the project's remotes
    # the documented set-up of the `s3` remote, per machine (`--local`: not committed)
    dvc(repo, "remote", "modify", "--local", "s3", "url", f"s3://{BUCKET}/dvc")
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", aws_env)
    _small_dataset(repo / "data" / "videos")
    dvc(repo, "add", "data/videos")
    before = tree_digest(repo / "data" / "videos")

    # without credentials DVC refuses with a clear message, and nothing is half-pushed
    env_keys = {k: os.environ.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        proc = dvc(repo, "push", "-r", "s3", check=False)
    finally:
        os.environ.update(env_keys)
    assert proc.returncode != 0 and "Unable to locate credentials" in proc.stdout + proc.stderr
    assert s3.list_keys(f"s3://{BUCKET}/dvc", endpoint_url=aws_env) == []

    out = dvc(repo, "push", "-r", "s3").stdout
    assert "pushed" in out
    keys = s3.list_keys(f"s3://{BUCKET}/dvc", endpoint_url=aws_env)
    assert len(keys) >= len(before)  # every file, plus the directory listing object

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "videos")
    dvc(repo, "pull", "-r", "s3")
    assert tree_digest(repo / "data" / "videos") == before
    assert not (repo / ".iwarp").exists()  # nothing went to the default local remote


class Outage:
    """A TCP proxy in front of the moto server that can take S3 away: `down()` drops every open
    connection and stops listening (clients get resets, then connection refused), `up()` listens
    on the same port again. moto keeps its state behind it, as S3 does across a network outage.
    With `cut_after` set it goes down by itself once that many request bytes passed through,
    so the outage lands part-way through a transfer whatever the machine's speed."""

    def __init__(self, upstream: str, cut_after: int | None = None):
        import threading

        host, port = upstream.rsplit("/", 1)[-1].split(":")
        self.upstream = (host, int(port))
        self.cut_after, self.sent, self.cuts = cut_after, 0, 0
        self.lock, self.conns = threading.Lock(), []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.up()

    def up(self) -> None:
        import threading

        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.alive = True
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            if not self.alive:
                return
            self.alive, self.cuts = False, self.cuts + 1
            conns, self.conns = self.conns, []
        self.listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                if not self.alive:
                    client.close()
                    server.close()
                    continue
                self.conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src, dst, upstream: bool) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                if upstream:
                    with self.lock:
                        self.sent += len(chunk)
                        cut = self.cut_after is not None and self.sent > self.cut_after
                    if cut:
                        self.cut_after = None
                        self.down()
                        return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
def test_s3_outage_during_dvc_push_fails_clearly_and_the_retry_completes(aws_env, tmp_path):
    """S3 goes away part-way through `dvc push` (a proxy cuts every connection after ~1/3 of
    the bytes): the push fails with one line naming the cause (DVC prints an ERROR per file);
    once S3 is back the same push completes, and `dvc pull` into a fresh clone gives
    byte-identical data."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    data = _small_dataset(repo / "data" / "videos")
    rng = __import__("random").Random(12)
    for i in range(24):  # enough objects (~1.5 MB) that the cut lands between the first and the last
        (data / "blobs" / f"{i:02d}.bin").parent.mkdir(exist_ok=True)
        (data / "blobs" / f"{i:02d}.bin").write_bytes(rng.randbytes(64 * 1024))
    dvc(repo, "add", "data/videos")
    before = tree_digest(data)
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    outage = Outage(aws_env, cut_after=total // 3)
    prefix = f"s3://{BUCKET}/outage-{tmp_path.name}"

    def use_remote(workspace: Path) -> None:
        dvc(workspace, "remote", "modify", "--local", "s3", "url", prefix)
        dvc(workspace, "remote", "modify", "--local", "s3", "endpointurl", outage.url)

    use_remote(repo)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:  # the pipeline's wrapper (preprocess pushes through it)
        step_dvc(repo, "push", "-r", "s3")
    fail_s = time.monotonic() - t0
    message = str(info.value)
    assert outage.cuts == 1 and "\n" not in message, message
    assert "`dvc push -r s3` failed (exit 1)" in message and "failed to push data to the cloud" in message, message
    assert "Could not connect to the endpoint URL" in message, message
    partial = len(s3.list_keys(prefix, endpoint_url=aws_env))
    assert partial < len(before) + 1  # it really stopped part-way (the .dir listing is one more object)

    outage.up()  # S3 is back: the same command, nothing else
    t0 = time.monotonic()
    retry = dvc(repo, "push", "-r", "s3")
    retry_s = time.monotonic() - t0
    assert "pushed" in retry.stdout
    assert len(s3.list_keys(prefix, endpoint_url=aws_env)) == len(before) + 1

    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data"], cwd=repo, check=True)
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(repo), str(fresh)], check=True)
    use_remote(fresh)
    dvc(fresh, "pull", "-r", "s3")
    assert tree_digest(fresh / "data" / "videos") == before
    print(
        f"outage push failed after {fail_s:.1f} s with {partial} of {len(before) + 1} objects up; retry {retry_s:.1f} s"
    )
    outage.down()
