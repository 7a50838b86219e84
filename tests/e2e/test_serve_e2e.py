"""A real TorchServe 0.12 process on loopback (token auth on) serving an archive built by
`iwarp serve package` from a checkpoint: answers match the in-process model, the source-set
cache matches the uncached path, every bad input gets its 4xx and the worker survives.

The server is the session's `served` fixture (tests/conftest.py), shared with the demo's browser test
(start-up and packaging are the slow part)."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from tests.helpers.serve import (
    ROOT,
    decode_mp4,
    mp4_bytes,
    photo_frames,
    png_bytes,
    reference,
    serve_cli,
)

pytestmark = pytest.mark.slow
torch.set_num_threads(2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def frames():
    return photo_frames(8, seed=1)


def test_server_runs_on_loopback_with_token_auth_and_the_version(served):
    handle, _, _ = served
    client = handle.client()
    assert handle.host == "127.0.0.1" and client.ping()
    assert client.versions() == ["1.0"] and client.default_version() == "1.0"
    conf = (Path(handle.workdir) / "config.properties").read_text()
    assert "disable_token_authorization" not in conf and "enable_model_api=true" in conf
    keys = json.loads(handle.key_file.read_text())
    assert {"management", "inference", "API"} <= set(keys)


def test_single_and_multi_source_match_in_process_model(served, frames):
    handle, model, _ = served
    client = handle.client()
    one = client.predict(frames[:1], frames[2:5], output="npy", frame="none")
    assert one.info["n_sources"] == 1 and one.array.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(one.array, reference(model, frames[:1], frames[2:5]), atol=1e-4)
    # three sources over multipart, PNG frames back: equal up to 8-bit rounding
    three = client.predict(frames[:3], frames[3:7], multipart=True, frame="none")
    assert three.info["n_sources"] == 3 and len(three.frames) == 4
    np.testing.assert_allclose(three.as_float(), reference(model, frames[:3], frames[3:7]), atol=0.5 / 255 + 1e-4)
    # the sources matter: a different set gives a different animation
    other = client.predict(frames[5:8], frames[3:7], output="npy", frame="none")
    assert np.abs(other.array - three.as_float()).max() > 1e-2


def test_cached_source_set_matches_uncached(served, frames):
    handle, model, _ = served
    client = handle.client()
    sid = client.register_sources(frames[:2], frame="none")
    assert sid == client.register_sources(frames[:2], frame="none")  # same images, same id
    uncached = client.predict(frames[:2], frames[2:8], output="npy", frame="none").array
    cached = client.predict(source_set_id=sid, driving=frames[2:8], output="npy", frame="none")
    assert cached.source_set_id == sid
    np.testing.assert_allclose(cached.array, uncached, atol=1e-6)

    # relative motion: a clip sent in two chunks to a cached set keeps the first chunk's
    # first frame as reference, so it equals the whole clip in one request
    whole = client.predict(frames[:2], frames[2:8], relative=True, output="npy", frame="none").array
    np.testing.assert_allclose(whole, reference(model, frames[:2], frames[2:8], relative=True), atol=1e-4)
    first = client.predict(
        source_set_id=sid, driving=frames[2:5], relative=True, reset_reference=True, output="npy", frame="none"
    ).array
    second = client.predict(source_set_id=sid, driving=frames[5:8], relative=True, output="npy", frame="none").array
    np.testing.assert_allclose(np.concatenate([first, second]), whole, atol=1e-5)
    assert np.abs(whole - uncached).max() > 1e-3  # relative really differs from absolute


def test_driving_video_in_mp4_out(served, frames):
    handle, model, _ = served
    client = handle.client()
    video = mp4_bytes(frames[2:6])
    result = client.predict(frames[:1], driving_video=video, output="mp4", frame="none")
    out = decode_mp4(result.video)
    assert len(out) == 4 and out[0].shape == (64, 64, 3)
    # same frames as PNG output, up to H.264 loss
    png = client.predict(frames[:1], driving_video=video, frame="none")
    assert np.abs(np.stack(out).astype(float) - np.stack(png.frames).astype(float)).mean() < 6


def _post(handle, payload=None, data=None, files=None, headers=None, version=""):
    key = json.loads(handle.key_file.read_text())["inference"]["key"]
    url = f"{handle.inference_url}/predictions/iwarp" + (f"/{version}" if version else "")
    return requests.post(
        url,
        json=payload,
        data=data,
        files=files,
        timeout=120,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    )


def test_every_bad_input_gets_a_4xx_and_the_worker_survives(served, frames):
    handle, _, _ = served
    client = handle.client()
    pids_before = client.worker_pids()
    good = [b64(png_bytes(f)) for f in frames]
    big = np.random.default_rng(0).integers(0, 255, (40, 700, 3), dtype=np.uint8)  # max_image_side is 640
    odd = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(frames[0]).resize((80, 64)))
    cases = [
        (
            "non-image bytes",
            dict(payload={"sources": [b64(b"%PDF-1.4 not an image")], "driving": good[:1]}),
            415,
            "not an image",
        ),
        ("zero sources", dict(payload={"sources": [], "driving": good[:1]}), 400, "missing field `sources`"),
        ("nine sources", dict(payload={"sources": good[:1] * 9, "driving": good[:1]}), 400, "1 to 8 allowed"),
        (
            "mismatched sizes",
            dict(payload={"sources": good[:1], "driving": [b64(png_bytes(odd))], "frame": "none"}),
            400,
            "mismatched image sizes",
        ),
        (
            "oversized image",
            dict(payload={"sources": [b64(png_bytes(big))], "driving": [b64(png_bytes(big))]}),
            413,
            "largest side",
        ),
        (
            "oversized payload",
            dict(payload={"sources": good[:1], "driving": good[:1], "pad": "A" * 1_200_000}),
            413,
            "exceeds",
        ),
        ("too many frames", dict(payload={"sources": good[:1], "driving": good[:1] * 17}), 413, "at most 16"),
        (
            "corrupt video",
            dict(payload={"sources": good[:1], "driving_video": b64(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500)}),
            400,
            "video",
        ),
        ("missing driving", dict(payload={"sources": good[:1]}), 400, "missing field `driving`"),
        ("empty body", dict(data=b"", headers={"Content-Type": "application/json"}), 400, "empty request"),
        ("invalid JSON", dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400, "neither JSON"),
        ("bad base64", dict(payload={"sources": ["***"], "driving": good[:1]}), 400, "not valid base64"),
        (
            "unknown source set",
            dict(payload={"source_set_id": "f" * 24, "driving": good[:1]}),
            404,
            "unknown or expired",
        ),
        (
            "multipart non-image",
            dict(
                files={
                    "source_0": ("a.png", b"GIF89a?", "image/png"),
                    "driving_0": ("b.png", png_bytes(frames[1]), "image/png"),
                }
            ),
            415,
            "source_0",
        ),
    ]
    for name, kwargs, code, needle in cases:
        r = _post(handle, **kwargs)
        assert r.status_code == code, f"{name}: {r.status_code} {r.text[:300]}"
        body = r.json()
        assert body["code"] == code and needle in body["message"], f"{name}: {body}"
        ok = client.predict(frames[:1], frames[1:2], frame="none")  # the next good request succeeds
        assert ok.status == 200 and len(ok.frames) == 1, name
    # above the frontend's hard cap Netty answers 413 itself (no JSON body, the handler never sees it)
    r = _post(handle, payload={"sources": good[:1], "driving": good[:1], "pad": "A" * 3_300_000})
    assert r.status_code == 413
    # an unknown version is TorchServe's own 404
    r = _post(handle, payload={"sources": good[:1], "driving": good[:1]}, version="9.9")
    assert r.status_code == 404 and "9.9" in r.json()["message"]
    assert client.predict(frames[:1], frames[1:2], frame="none").status == 200
    assert client.worker_pids() == pids_before, "a bad request restarted the worker"


def test_hostile_bodies_over_http_never_get_a_5xx_nor_restart_the_worker(served, frames):
    """Every 10th of the in-process fuzz's 600 seeded cases (60, all kinds) through the real
    frontend and worker: no answer >= 500, the worker pid unchanged, a good request still works."""
    from collections import Counter

    from tests.helpers.serve import hostile_cases

    handle, _, _ = served
    client = handle.client()
    pids_before = client.worker_pids()
    cases = hostile_cases(600, seed=12, good=frames[0])[::10]
    statuses = []
    for i, case in enumerate(cases):
        r = _post(handle, **case.post_kwargs())
        statuses.append(r.status_code)
        assert r.status_code < 500, f"case {i * 10} ({case.name}): {r.status_code} {r.text[:300]}"
        if r.status_code >= 400 and r.headers.get("Content-Type", "").startswith("application/json"):
            assert len(r.json()["message"]) < 400, f"case {i * 10} ({case.name})"
    assert statuses.count(200) > 0 and sum(s >= 400 for s in statuses) > 40, statuses
    # the issue's own repro: 100 000 nested `[` was a 500 RecursionError
    r = _post(handle, data=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nests deeper than 32" in r.json()["message"], r.text[:300]
    r = _post(handle, payload={"source_set_id": "x" * 100_000, "driving": [b64(png_bytes(frames[0]))]})
    assert r.status_code == 404 and len(r.json()["message"]) < 400 and "x" * 64 + "…" in r.json()["message"]
    assert client.predict(frames[:1], frames[1:2], frame="none").status == 200
    assert client.worker_pids() == pids_before, "a hostile request restarted the worker"
    print(
        f"\nhostile bodies over HTTP: {len(cases)} cases, statuses {sorted(Counter(statuses).items())}, "
        f"worker pids {pids_before}"
    )


def test_requests_without_the_token_are_refused(served, frames):
    handle, _, _ = served
    keys = json.loads(handle.key_file.read_text())
    payload = {"sources": [b64(png_bytes(frames[0]))], "driving": [b64(png_bytes(frames[1]))], "frame": "none"}
    url = f"{handle.inference_url}/predictions/iwarp"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {keys['management']['key']}"}):
        r = requests.post(url, json=payload, headers=headers, timeout=60)
        # TorchServe 0.12 answers 400 InvalidKeyException (not 401) for a missing or wrong token
        assert r.status_code in (400, 401, 403) and "Token Authorization failed" in r.json()["message"]
        assert "frames" not in r.text
    for headers in ({}, {"Authorization": f"Bearer {keys['inference']['key']}"}):
        r = requests.get(f"{handle.management_url}/models", headers=headers, timeout=60)
        assert r.status_code in (400, 401, 403) and "Token Authorization failed" in r.json()["message"]
    r = requests.post(url, json=payload, headers={"Authorization": f"Bearer {keys['inference']['key']}"}, timeout=60)
    assert r.status_code == 200
    # keys expire after server.token_expiration_min; the key file says when
    from datetime import datetime, timedelta

    from serving.client import _parse_utc

    left = _parse_utc(keys["inference"]["expiration time"]) - datetime.now(UTC)
    assert timedelta(minutes=1400) < left <= timedelta(minutes=1440)
    # rotating the inference key (TorchServe's token API, with the API key) refuses the old
    # key at once; the client reads the key file on every call and keeps working
    r = requests.post(
        f"{handle.management_url}/token",
        params={"type": "inference"},
        headers={"Authorization": f"Bearer {keys['API']['key']}"},
        timeout=60,
    )
    assert r.status_code == 200
    new_key = json.loads(handle.key_file.read_text())["inference"]["key"]
    assert new_key != keys["inference"]["key"]
    r = requests.post(url, json=payload, headers={"Authorization": f"Bearer {keys['inference']['key']}"}, timeout=60)
    assert r.status_code == 400 and "Token Authorization failed" in r.json()["message"]
    assert handle.client().predict(frames[:1], frames[1:2], frame="none").status == 200


def test_concurrent_requests_are_batched_and_all_correct(served, frames):
    handle, model, _ = served
    results: list = [None] * 6
    errors: list = []

    def call(i: int) -> None:
        try:
            results[i] = handle.client().predict(
                frames[i % 3 : i % 3 + 2], frames[i : i + 2], output="npy", frame="none"
            )
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.array, reference(model, frames[i % 3 : i % 3 + 2], frames[i : i + 2]), atol=1e-4)
    assert max(r.info["batch"] for r in results) > 1, "TorchServe never batched concurrent requests"


def test_cli_predict_status_and_metrics(served, frames, tmp_path):
    handle, _, _ = served
    paths = []
    for i, f in enumerate(frames[:3]):
        p = tmp_path / f"f{i}.png"
        p.write_bytes(png_bytes(f))
        paths.append(str(p))
    out = tmp_path / "anim"
    proc = serve_cli(
        "predict", "--workdir", handle.workdir, "--sources", paths[0], "--driving", *paths[1:], "--out", str(out),
        "--frame", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["frame_0000.png", "frame_0001.png"]
    assert json.loads(proc.stdout)["n_frames"] == 2
    proc = serve_cli(
        "predict", "--workdir", handle.workdir, "--sources", "/etc/hostname", "--driving", paths[1], "--out", str(out)
    )
    assert proc.returncode == 2 and "HTTP 415" in proc.stderr
    proc = serve_cli("status", "--workdir", handle.workdir)
    status = json.loads(proc.stdout)
    assert proc.returncode == 0 and status["running"] and status["healthy"]
    assert status["models"]["iwarp"][0]["workers"][0]["status"] == "READY"
    metrics = handle.client().metrics()
    assert "ts_inference_requests_total" in metrics and 'model_name="iwarp"' in metrics


def test_a_second_server_runs_beside_the_first(served, frames, tmp_path):
    """Private worker sockets, pid file and gRPC ports: two servers (two test runs, two
    users) on one machine keep their own workers; the same workdir or a busy port is refused."""
    import shutil

    from serving.server import ServerError, start_server, stop_server

    handle, model, cfg = served
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(Path(handle.model_store) / "iwarp.mar", store / "iwarp.mar")
    second = start_server(
        store, config=cfg, workdir=tmp_path / "work2", inference_port=0, management_port=0, metrics_port=0
    )
    try:
        ports = [
            getattr(h, f"{n}_port")
            for h in (handle, second)
            for n in ("inference", "management", "metrics", "grpc_inference", "grpc_management")
        ]
        assert len(set(ports)) == 10
        expected = reference(model, frames[:1], frames[1:3])
        for h in (handle, second):  # both workers answer, each through its own socket
            np.testing.assert_allclose(
                h.client().predict(frames[:1], frames[1:3], output="npy", frame="none").array, expected, atol=1e-4
            )
        with pytest.raises(ServerError, match="already runs"):
            start_server(
                store, config=cfg, workdir=tmp_path / "work2", inference_port=0, management_port=0, metrics_port=0
            )
        with pytest.raises(ServerError, match="already in use"):
            start_server(
                store,
                config=cfg,
                workdir=tmp_path / "work3",
                inference_port=handle.inference_port,
                management_port=0,
                metrics_port=0,
            )
    finally:
        assert stop_server(tmp_path / "work2")
    assert handle.client().ping() and not second.alive()


def test_a_whole_photo_and_an_uncropped_video_over_http(served, tmp_path):
    """What a user sends: a whole photo (the astronaut, 512x512) and an uncropped 640x360 clip of
    someone else, no `frame` field (face framing is the default). The archive carries the
    library's framing module; the answer is the photo with the animated face pasted back."""
    import itertools
    import zipfile

    import skimage.data

    from iwarp import framing
    from iwarp.data.realfaces import feat_data_dir
    from iwarp.data.video import iter_frames, write_video

    handle, _, _ = served
    client = handle.client()
    with zipfile.ZipFile(Path(handle.model_store) / "iwarp.mar") as mar:
        assert mar.read("iwarp_framing.py") == (ROOT / "iwarp" / "framing.py").read_bytes()
    photo = skimage.data.astronaut()
    clip = list(itertools.islice(iter_frames(feat_data_dir() / "WolfgangLanger_Pexels.mp4"), 80, 86))
    video = write_video(tmp_path / "talking.mp4", np.stack(clip), fps=24).read_bytes()

    result = client.predict([png_bytes(photo)], driving_video=video, relative=True)
    frames = np.stack(result.frames)
    box = framing.frame_photo(photo, "astronaut").box
    assert frames.shape == (6, 512, 512, 3) and result.info["frame"] == "face"
    assert result.info["source_box"] == list(box) and result.info["driving_held"] == 0
    x0, y0, x1, y1 = box
    outside = np.ones((512, 512), bool)
    outside[y0:y1, x0:x1] = False
    assert (frames[:, outside] == photo[outside]).all()  # the photo's own pixels, exactly
    assert np.abs(np.diff(frames[:, y0:y1, x0:x1].astype(int), axis=0)).mean() > 0.5  # the face moves

    # a live session: the photo's framing is registered once, the clip streams in two chunks
    sid = client.register_sources([png_bytes(photo)], frame="face")
    decoded = decode_mp4(video)  # the frames the handler decoded from the clip, at its 24 fps
    first = client.predict(source_set_id=sid, driving=decoded[:3], relative=True, fps=24)
    second = client.predict(source_set_id=sid, driving=decoded[3:], relative=True, fps=24)
    streamed = np.stack(first.frames + second.frames)
    assert first.info["frame"] == "face" and np.abs(streamed.astype(int) - frames.astype(int)).max() <= 1
    mp4 = decode_mp4(client.predict([png_bytes(photo)], driving_video=video, output="mp4").video)
    assert len(mp4) == 6 and mp4[0].shape == (512, 512, 3)
