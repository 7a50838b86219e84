"""`iwarp.framing` without a detector: the training crop's geometry, the smoothed face track
(jitter, hold, no jumping to another face) and the feathered paste-back. Detections are made up
here; tests/data/test_data_framing.py runs dlib on real photos and video."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from iwarp import framing
from iwarp.framing import CROP_SCALE, LIFT, Face, FaceFollower, Smoothing, crop_square, feather_mask, paste_back

ROOT = Path(__file__).resolve().parents[2]


def face_at(cx: float, cy: float, side: float, score: float = 1.0) -> Face:
    return Face((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), score)


def test_the_crop_is_the_training_crop():
    """CROP_SCALE x the face, centre lifted by LIFT x the face: what prepare's track box does
    for a clip whose face never moves."""
    face = face_at(300, 200, 100)
    assert crop_square(face) == (300, 200 - LIFT * 100, CROP_SCALE * 100)
    box = framing.track_box([face.box] * 5, 640, 480)
    assert box == framing.square_in_frame(*crop_square(face), 640, 480)
    # near an edge the square moves inside the frame, and shrinks only if it must
    assert framing.fit_square(20, 50, 190, 640, 480) == (0.0, 0.0, 190.0, 190.0)
    assert framing.fit_square(320, 180, 500, 640, 360) == (140.0, 0.0, 500.0, 360.0)


def follow(detections: list[list[Face]], smoothing: Smoothing | None = None, fps: float = 25.0):
    follower = FaceFollower(1280, 720, fps, smoothing or Smoothing())
    boxes = [follower.update(d) for d in detections]
    return follower, np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0]] for b in boxes])


def test_smoothing_takes_out_detector_jitter():
    """A still face detected with 3 px of noise (a real detector's): the smoothed crop moves
    far less than the raw one from frame to frame."""
    rng = np.random.default_rng(0)
    faces = [[face_at(640 + rng.normal(0, 3), 360 + rng.normal(0, 3), 150 + rng.normal(0, 3))] for _ in range(100)]
    _, raw = follow(faces, Smoothing(kind="none"))
    _, smooth = follow(faces)
    _, ema = follow(faces, Smoothing(kind="ema"))
    shake = lambda track: np.abs(np.diff(track[20:], axis=0)).mean()  # noqa: E731
    assert shake(smooth) < 0.15 * shake(raw) and shake(ema) < 0.5 * shake(raw)
    assert np.abs(smooth[20:, :2] - (640, 360 - LIFT * 150)).max() < 4  # still centred on the face


def test_smoothing_follows_a_moving_face():
    """A face panning at half its size per second: the box keeps up (One-Euro's cutoff rises
    with speed), trailing by well under the crop's margin."""
    faces = [[face_at(300 + 3 * t, 360, 150)] for t in range(120)]  # 75 px/s at 25 fps
    _, track = follow(faces)
    lag = 300 + 3 * 119 - track[-1, 0]
    assert 0 <= lag < 0.25 * 150  # the crop's margin is (1.9 - 1) / 2 = 0.45 face sides


def test_a_lost_face_holds_the_last_box_and_is_counted():
    faces = [[face_at(640, 360, 150)]] * 10 + [[]] * 4 + [[face_at(640, 360, 150)]] * 3
    follower, track = follow(faces)
    assert follower.held == 4 and follower.frames == 17
    np.testing.assert_array_equal(track[10:14], np.repeat(track[9:10], 4, axis=0))
    # frames before the first face (the follower started elsewhere) hold the start box too
    late = FaceFollower(1280, 720)
    late.start(face_at(640, 360, 150))
    assert late.update([]) == late.update([]) and late.held == 2


def test_the_track_never_jumps_to_another_face():
    """The most confident face starts the track; after that, a second person (even more
    confident) or a detection far away is not the tracked face: the box holds."""
    me, other = face_at(400, 360, 150, score=1.0), face_at(1000, 360, 150, score=2.5)
    follower = FaceFollower(1280, 720)
    start = follower.update([me])
    assert follower.update([other]) == start and follower.held == 1
    assert follower.update([other, face_at(402, 361, 151, score=0.2)]) != start  # its own face, moved
    assert follower.held == 1
    fresh = FaceFollower(1280, 720)
    fresh.update(sorted([me, other], key=lambda f: -f.score))
    assert abs(fresh.square[0] - 1000) < 1  # most confident first


def test_feather_mask_is_zero_at_the_edge_and_one_inside():
    m = feather_mask(200)[..., 0]
    assert m.shape == (200, 200) and m.dtype == np.float32
    assert m[100, 100] == 1 and m[0].max() < 0.01 and m[:, -1].max() < 0.01 and m[0, 0] == 0
    assert np.all(np.diff(m[100, :100]) >= 0)  # rises smoothly to the middle: no step, no seam


def test_paste_back_touches_only_the_box():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    face = np.full((64, 64, 3), 200, np.uint8)
    box = (120, 40, 280, 200)
    out = paste_back(photo, face, box)
    inside = np.zeros(photo.shape[:2], bool)
    inside[40:200, 120:280] = True
    np.testing.assert_array_equal(out[~inside], photo[~inside])
    assert np.abs(out[120, 200].astype(int) - 200).max() <= 1  # the middle is the face
    assert out.shape == photo.shape and out is not photo


def test_framing_ships_alone():
    """The .mar carries iwarp/framing.py beside the handler: it may import nothing of iwarp's."""
    tree = ast.parse((ROOT / "iwarp" / "framing.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    allowed = {"__future__", "functools", "math", "collections", "dataclasses", "typing", "numpy", "PIL", "dlib"}
    assert {n.split(".")[0] for n in names} <= allowed, names
