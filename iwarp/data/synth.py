"""Procedural talking-head videos for tests and demos, built so that several sources matter.

Each identity is a textured head (an ellipsoid ray-cast in orthographic projection, so turning it
really rotates its surface) over a neck and shirt; each video moves it over a textured background
with smooth random trajectories. What only some frames show:

* the cheeks, ears and an earring on one side only (each identity marks its two cheeks
  differently), and the hair on the back of the head: visible when the head turns (yaw/pitch);
* the mouth interior (teeth, tongue): visible when the mouth opens;
* irises and pupils: hidden while the eyes blink;
* background behind the head and body: uncovered when they move.

A single source frame therefore cannot predict every driving frame; frames from several poses
can. Everything is a pure function of (seed, identity, video) and vectorised in numpy
(~1000 frames/s at 64 px, a few hundred at 256 px on one core; see `bench/data_synth.py`).
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import assign_splits, write_manifest
from .options import opt
from .video import OUTPUT_FORMATS, OutputFormat, write_frames, write_video


@dataclass
class SynthConfig:
    num_identities: int = opt(8, "people (each gets its own look)")
    videos_per_identity: int = opt(2, "clips per person")
    num_frames: int = opt(48, "frames per clip")
    image_size: int = opt(64, "frame side in pixels")
    fps: float = opt(25.0, "frame rate recorded (and encoded, for mp4)")
    test_fraction: float = opt(0.25, "share of identities in test/")
    seed: int = opt(0, "everything is a function of this seed")
    format: OutputFormat = opt("png", "png/jpg frame folders (lossless, fast random access) or mp4 files")
    workers: int = opt(1, "parallel processes (the output does not depend on it)")


# ---------------------------------------------------------------------------------------------
# small helpers


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse(dx, dy, a, b, soft=0.15):
    """Soft mask of an axis-aligned ellipse with half-axes (a, b); 1 inside, 0 outside."""
    e = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return 1.0 - _smoothstep(1.0 - soft, 1.0 + soft, e)


def _mix(color, other, mask):
    """Blend `other` (broadcastable RGB) into `color` (..., 3) where mask (...) is 1."""
    return color + (np.asarray(other, dtype=np.float32) - color) * mask[..., None]


def _trajectory(rng, n, amplitude, cycles=(0.4, 1.6), terms=3):
    """Smooth random curve: a sum of sinusoids with a few cycles per clip, peak ~amplitude."""
    t = np.arange(n, dtype=np.float32) / max(n, 1)
    out = np.zeros(n, np.float32)
    weights = rng.uniform(0.5, 1.0, terms)
    weights /= weights.sum()
    for w in weights:
        out += w * np.sin(2 * np.pi * rng.uniform(*cycles) * t + rng.uniform(0, 2 * np.pi))
    return (amplitude * out).astype(np.float32)


def _random_color(rng, lo=0.1, hi=0.95):
    return rng.uniform(lo, hi, 3).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# identity and video parameters


def identity_params(seed: int, identity: int) -> dict:
    """The look of one person: skin, hair, eyes, side marks, shirt, head shape."""
    rng = np.random.default_rng([seed, identity, 1])
    tone = rng.uniform(0, 1)
    skin = (1 - tone) * np.array([0.96, 0.80, 0.68]) + tone * np.array([0.42, 0.28, 0.19])
    skin = np.clip(skin + rng.normal(0, 0.03, 3), 0, 1).astype(np.float32)
    hair_palette = np.array(
        [[0.08, 0.06, 0.05], [0.35, 0.2, 0.1], [0.85, 0.7, 0.4], [0.6, 0.25, 0.1], [0.7, 0.7, 0.72], [0.15, 0.15, 0.3]],
        np.float32,
    )
    side = rng.choice([-1.0, 1.0])
    return {
        "skin": skin,
        "skin_waves": [
            (rng.normal(0, 6, 3).astype(np.float32), rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.06))
            for _ in range(5)
        ],
        "hair": hair_palette[rng.integers(len(hair_palette))] * rng.uniform(0.8, 1.1),
        "hairline": rng.uniform(0.5, 0.72),
        "hair_back": rng.uniform(0.9, 1.5),  # how far around the back the hair reaches (rad)
        "iris": _random_color(rng, 0.05, 0.7),
        "lips": np.clip(skin * np.array([1.0, 0.55, 0.55]) + rng.normal(0, 0.04, 3), 0, 1).astype(np.float32),
        "mark_left": (_random_color(rng), rng.uniform(-1.0, -0.75), rng.uniform(-0.35, 0.0), rng.uniform(8, 20)),
        "mark_right": (_random_color(rng), rng.uniform(0.75, 1.0), rng.uniform(-0.35, 0.0), rng.uniform(8, 20)),
        "ear": np.clip(skin * np.array([1.05, 0.85, 0.8]), 0, 1).astype(np.float32),
        "earring": (_random_color(rng, 0.5, 1.0), side),
        "shirt": _random_color(rng),
        "shirt2": _random_color(rng),
        "stripes": rng.uniform(6, 18),
        "radius": rng.uniform(0.44, 0.52),
        "aspect": rng.uniform(1.12, 1.25),
    }


def _background(rng, size: int) -> np.ndarray:
    """Textured background: gradient + oriented gratings + colour blobs + a few boxes."""
    y, x = np.mgrid[-1 : 1 : complex(0, size), -1 : 1 : complex(0, size)].astype(np.float32)
    c0, c1 = _random_color(rng, 0.15, 0.9), _random_color(rng, 0.15, 0.9)
    img = _mix(np.broadcast_to(c0, (size, size, 3)).astype(np.float32), c1, (y + 1) / 2)
    for _ in range(3):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 9)
        wave = np.sin(freq * np.pi * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0, 6.3))
        img = img + (rng.uniform(0.03, 0.12) * wave)[..., None] * rng.choice([-1, 1], 3)
    for _ in range(6):
        cx, cy, s = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.1, 0.4)
        img = _mix(img, _random_color(rng), 0.8 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)))
    for _ in range(3):
        cx, cy, w, h = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)
        box = _smoothstep(-0.02, 0.02, w - np.abs(x - cx)) * _smoothstep(-0.02, 0.02, h - np.abs(y - cy))
        img = _mix(img, _random_color(rng), box)
    return np.clip(img, 0, 1).astype(np.float32)


def video_params(seed: int, identity: int, video: int, num_frames: int, image_size: int) -> dict:
    """Motion and scene of one clip: trajectories, blinks, talking, light, background."""
    rng = np.random.default_rng([seed, identity, video, 2])
    n = num_frames
    pad = image_size // 4
    blink = np.zeros(n, np.float32)
    t = 0
    while True:  # blinks every ~1-3 s, each a 5-frame close/open
        t += int(rng.integers(8, 40)) if t else int(rng.integers(0, max(2, min(n, 30))))
        if t >= n:
            break
        for dt, v in zip(range(-2, 3), (0.5, 0.9, 1.0, 0.9, 0.5)):
            if 0 <= t + dt < n:
                blink[t + dt] = max(blink[t + dt], v)
    talk = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2.0, 4.0) * np.arange(n) / 25.0 + rng.uniform(0, 6.3))
    envelope = _smoothstep(-0.3, 0.3, _trajectory(rng, n, 1.0, (0.5, 1.5)))  # talking vs pauses
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.1, 0.7), 1.0], np.float32)
    return {
        "cx": _trajectory(rng, n, 0.22) + rng.uniform(-0.08, 0.08),
        "cy": _trajectory(rng, n, 0.1) + rng.uniform(-0.05, 0.1),
        "scale": 1.0 + _trajectory(rng, n, 0.08),
        "yaw": _trajectory(rng, n, rng.uniform(0.7, 1.1), (0.5, 1.5)),
        "pitch": _trajectory(rng, n, rng.uniform(0.2, 0.4)),
        "roll": _trajectory(rng, n, 0.12),
        "gaze_x": _trajectory(rng, n, 1.0, (1.0, 3.0)),
        "gaze_y": _trajectory(rng, n, 0.6, (1.0, 3.0)),
        "mouth": np.clip(talk * envelope + 0.1 * rng.standard_normal(n), 0, 1).astype(np.float32),
        "blink": blink,
        "light": light / np.linalg.norm(light),
        "pan_x": np.round(_trajectory(rng, n, pad * 0.8)).astype(int),
        "pan_y": np.round(_trajectory(rng, n, pad * 0.4)).astype(int),
        "background": _background(rng, image_size + 2 * pad),
        "pad": pad,
    }


# ---------------------------------------------------------------------------------------------
# rendering


def _static_colors(ip: dict, q: np.ndarray, lon, lat) -> np.ndarray:
    """Colour of the fixed surface features at object-space points q (..., 3) with
    longitude/latitude lon, lat (radians; lon 0 = the face's front)."""
    noise = sum(a * np.sin(q @ w + ph) for w, ph, a in ip["skin_waves"])
    col = ip["skin"] * (1.0 + noise)[..., None]
    # hair on top and around the back, with strands
    top = _smoothstep(ip["hairline"] - 0.06, ip["hairline"] + 0.02, lat + 0.08 * np.cos(3 * lon))
    back = _smoothstep(np.pi - ip["hair_back"] - 0.1, np.pi - ip["hair_back"] + 0.1, np.abs(lon)) * _smoothstep(
        -0.75, -0.55, lat
    )
    hair = np.maximum(top, back)
    strands = (0.8 + 0.2 * np.sin(40 * lon + 6 * np.sin(9 * lat)))[..., None]
    col = _mix(col, 0, hair) + (ip["hair"] * strands) * hair[..., None]
    # ears, one earring, cheek marks: each only visible when the head turns that way
    for s in (-1.0, 1.0):
        col = _mix(col, ip["ear"] * 0.9, _ellipse(lon - s * np.pi / 2, lat + 0.02, 0.16, 0.26))
    ring_color, side = ip["earring"]
    col = _mix(col, ring_color, _ellipse(lon - side * np.pi / 2, lat + 0.3, 0.07, 0.07))
    for color, mlon, mlat, freq in (ip["mark_left"], ip["mark_right"]):
        blob = _ellipse(lon - mlon, lat - mlat, 0.3, 0.22, 0.4)
        pattern = 0.5 + 0.5 * np.sin(freq * (lon + 0.6 * lat)) * np.sin(freq * (lat - 0.4 * lon))
        col = _mix(col, color, blob * pattern * 0.85)
    # eyebrows, nose, nostrils
    for s in (-1.0, 1.0):
        col = _mix(
            col, ip["hair"] * 0.8, _ellipse(lon - s * 0.37, lat - 0.37 + 0.05 * s * (lon - s * 0.37), 0.17, 0.035)
        )
    col = col * (1.0 - 0.12 * _ellipse(lon, lat + 0.07, 0.07, 0.2, 0.5))[..., None]
    for s in (-1.0, 1.0):
        col = _mix(col, ip["skin"] * 0.35, _ellipse(lon - s * 0.045, lat + 0.24, 0.025, 0.018))
    return col.astype(np.float32)


def _paint_eye(ip: dict, col: np.ndarray, dx, dy, blink: float, gaze) -> np.ndarray:
    """Eyelid, and where open, sclera, iris and pupil (dx, dy: offsets from the eye centre)."""
    col = _mix(col, ip["skin"] * 0.82, _ellipse(dx, dy, 0.17, 0.1))
    eye = _ellipse(dx, dy, 0.15, 0.085 * max(1.0 - blink, 0.0) + 1e-3, 0.1)
    gx, gy = dx - 0.06 * gaze[0], dy - 0.03 * gaze[1]
    inner = _mix(np.full(col.shape, 0.95, np.float32), ip["iris"], _ellipse(gx, gy, 0.055, 0.055))
    inner = _mix(inner, 0.02, _ellipse(gx, gy, 0.024, 0.024))
    return _mix(col, 0, eye) + inner * eye[..., None]


def _paint_mouth(ip: dict, col: np.ndarray, dx, dy, mouth: float) -> np.ndarray:
    """Lips always; the dark interior, teeth and tongue only as far as the mouth is open."""
    hi = 0.02 + 0.15 * mouth
    col = _mix(col, ip["lips"], _ellipse(dx, dy, 0.3, hi + 0.055))
    interior = np.broadcast_to(np.array([0.25, 0.04, 0.06], np.float32), col.shape).astype(np.float32)
    interior = _mix(interior, [0.95, 0.93, 0.86], _smoothstep(hi - 0.07, hi - 0.04, dy) * _ellipse(dx, 0 * dy, 0.24, 1))
    interior = _mix(interior, [0.78, 0.32, 0.36], _ellipse(dx, dy + hi, 0.17, 0.7 * hi + 0.01))
    opening = _ellipse(dx, dy, 0.27, hi, 0.08)
    return _mix(col, 0, opening) + interior * opening[..., None]


_EYE_LON, _EYE_LAT, _MOUTH_LAT = 0.36, 0.17, -0.45


@functools.lru_cache(maxsize=4)
def _atlas_base(seed: int, identity: int, h: int, w: int) -> np.ndarray:
    """Static texture of one identity (cached: every clip of a person shares it)."""
    ip = identity_params(seed, identity)
    lat = (np.pi / 2 - (np.arange(h, dtype=np.float32) + 0.5) / h * np.pi)[:, None]
    lon = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 * np.pi - np.pi)[None, :]
    lat, lon = np.broadcast_arrays(lat, lon)
    q = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
    base = _static_colors(ip, q, lon, lat)
    base.flags.writeable = False
    return base


class _Atlas:
    """Equirectangular texture of one head (rows: lat +pi/2 .. -pi/2, cols: lon -pi .. pi).

    Static features are painted once per identity; per frame only the eye and mouth boxes are
    repainted, and pixels look their surface colour up by bilinear sampling (fast at 256 px)."""

    def __init__(self, seed: int, identity: int, image_size: int):
        self.h, self.w = 2 * image_size, 4 * image_size  # >= 1 texel per pixel at the face's centre
        self.lat = (np.pi / 2 - (np.arange(self.h, dtype=np.float32) + 0.5) / self.h * np.pi)[:, None]
        self.lon = ((np.arange(self.w, dtype=np.float32) + 0.5) / self.w * 2 * np.pi - np.pi)[None, :]
        self.base = _atlas_base(seed, identity, self.h, self.w)
        self.chw = np.ascontiguousarray(self.base.transpose(2, 0, 1))  # per-channel planes for sampling
        self.ip = identity_params(seed, identity)

    def _region(self, lon0, lon1, lat0, lat1):
        rows = np.flatnonzero((self.lat[:, 0] >= lat0) & (self.lat[:, 0] <= lat1))
        cols = np.flatnonzero((self.lon[0] >= lon0) & (self.lon[0] <= lon1))
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)

    def update(self, mouth: float, blink: float, gaze) -> None:
        for s in (-1.0, 1.0):
            r, c = self._region(s * _EYE_LON - 0.2, s * _EYE_LON + 0.2, _EYE_LAT - 0.13, _EYE_LAT + 0.13)
            painted = _paint_eye(
                self.ip, self.base[r, c], self.lon[:, c] - s * _EYE_LON, self.lat[r] - _EYE_LAT, blink, gaze
            )
            self.chw[:, r, c] = painted.transpose(2, 0, 1)
        r, c = self._region(-0.36, 0.36, _MOUTH_LAT - 0.3, _MOUTH_LAT + 0.3)
        painted = _paint_mouth(self.ip, self.base[r, c], self.lon[:, c], self.lat[r] - _MOUTH_LAT, mouth)
        self.chw[:, r, c] = painted.transpose(2, 0, 1)

    def sample(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        u = (lon + np.pi) * np.float32(self.w / (2 * np.pi)) - 0.5
        v = np.clip((np.pi / 2 - lat) * np.float32(self.h / np.pi) - 0.5, 0, self.h - 1.001)
        u0, v0 = np.floor(u), np.floor(v)
        fu, fv = u - u0, v - v0
        u0, v0 = u0.astype(np.intp) % self.w, v0.astype(np.intp) * self.w
        u1, v1 = (u0 + 1) % self.w, v0 + self.w
        corners = [
            (v0 + u0, (1 - fu) * (1 - fv)),
            (v0 + u1, fu * (1 - fv)),
            (v1 + u0, (1 - fu) * fv),
            (v1 + u1, fu * fv),
        ]
        # one 1-D gather per channel and corner: much faster than gathering RGB rows
        out = np.empty(lon.shape + (3,), np.float32)
        for ch in range(3):
            plane = self.chw[ch].reshape(-1)
            out[..., ch] = sum(np.take(plane, idx) * w for idx, w in corners)
        return out


def _rot(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], np.float32)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], np.float32)
    return ry @ rx  # object -> camera


def _box(cx, cy, hx, hy, size):
    """Pixel index ranges (rows, cols) covering centre (cx, cy) +- (hx, hy), y up, clipped."""
    x0, x1 = int(np.floor((cx - hx + 1) * size / 2)), int(np.ceil((cx + hx + 1) * size / 2))
    y0, y1 = int(np.floor((-cy - hy + 1) * size / 2)), int(np.ceil((-cy + hy + 1) * size / 2))
    return slice(max(y0, 0), min(max(y1, 0), size)), slice(max(x0, 0), min(max(x1, 0), size))


def render_frame(atlas: _Atlas, vp: dict, t: int, size: int) -> np.ndarray:
    """One (size, size, 3) float32 frame in [0, 1]."""
    ip = atlas.ip
    pad = vp["pad"]
    bx, by = int(vp["pan_x"][t]), int(vp["pan_y"][t])
    img = vp["background"][pad + by : pad + by + size, pad + bx : pad + bx + size].copy()
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    px = 2.0 / size  # one pixel in normalised units: edges are ~1 px soft
    xs, ys = coords[None, :], -coords[:, None]  # y up
    r = ip["radius"] * vp["scale"][t]
    rv = r * ip["aspect"]
    cx, cy = float(vp["cx"][t]), float(vp["cy"][t])
    # shirt and neck behind the head (each computed inside its bounding box only)
    tx, ty, ta, tb = 0.6 * cx, cy - rv - 0.62, 1.55 * r, 0.75
    rows, cols = _box(tx, ty, ta + px, tb + px, size)
    torso = _ellipse(xs[:, cols] - tx, ys[rows] - ty, ta, tb, px / tb)
    stripes = (0.5 + 0.5 * np.sign(np.sin(ip["stripes"] * (xs[:, cols] - tx)))) * 0.6
    shirt = _mix(ip["shirt"][None, None, :], ip["shirt2"], stripes)  # vertical stripes: one row, broadcast
    img[rows, cols] = _mix(img[rows, cols], shirt, torso)
    nx, ny, na, nb = 0.85 * cx, cy - rv * 0.95, 0.42 * r, 0.55 * r
    rows, cols = _box(nx, ny, na + px, nb + px, size)
    img[rows, cols] = _mix(
        img[rows, cols], ip["skin"] * 0.72, _ellipse(xs[:, cols] - nx, ys[rows] - ny, na, nb, px / na)
    )
    # head: ray-cast the ellipsoid inside its bounding box
    head = head_surface(ip, vp, t, size)
    if head is None:
        return np.clip(img, 0, 1)
    rows, cols, p, lon, lat, alpha = head
    atlas.update(float(vp["mouth"][t]), float(vp["blink"][t]), (float(vp["gaze_x"][t]), float(vp["gaze_y"][t])))
    col = atlas.sample(lon, lat)
    shade = 0.35 + 0.65 * np.clip(p @ vp["light"], 0, 1)
    img[rows, cols] = _mix(img[rows, cols], col * shade[..., None], alpha)
    return np.clip(img, 0, 1)


def head_surface(ip: dict, vp: dict, t: int, size: int):
    """Where the head is in frame t: (rows, cols, camera points p (h,w,3), lon, lat, alpha)
    for the pixels of its bounding box (alpha 0 outside the silhouette), or None if off-frame."""
    px = 2.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    r = ip["radius"] * vp["scale"][t]
    rv = r * ip["aspect"]
    cx, cy = float(vp["cx"][t]), float(vp["cy"][t])
    rows, cols = _box(cx, cy, max(r, rv) + 2 * px, max(r, rv) + 2 * px, size)
    lx, ly = coords[None, cols] - cx, -coords[rows, None] - cy
    if lx.size == 0 or ly.size == 0:
        return None
    roll = vp["roll"][t]
    u = (np.cos(roll) * lx + np.sin(roll) * ly) / r
    v = (-np.sin(roll) * lx + np.cos(roll) * ly) / rv
    d2 = u * u + v * v
    z = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    p = np.stack(np.broadcast_arrays(u, v, z), -1)  # camera-space points on the unit sphere
    q = p @ _rot(vp["yaw"][t], vp["pitch"][t])  # row vectors: camera -> object
    lon, lat = np.arctan2(q[..., 0], q[..., 2]), np.arcsin(np.clip(q[..., 1], -1, 1))
    alpha = np.clip((1.0 - np.sqrt(d2)) * r / px, 0.0, 1.0)
    return rows, cols, p, lon, lat, alpha


def render_video(seed: int, identity: int, video: int, num_frames: int = 48, image_size: int = 64) -> np.ndarray:
    """(T, S, S, 3) uint8 frames of one synthetic clip, deterministic from its arguments."""
    vp = video_params(seed, identity, video, num_frames, image_size)
    atlas = _Atlas(seed, identity, image_size)
    frames = np.empty((num_frames, image_size, image_size, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = (render_frame(atlas, vp, t, image_size) * 255.0 + 0.5).astype(np.uint8)
    return frames


# ---------------------------------------------------------------------------------------------
# datasets


def make_synth_dataset(out: str | Path, cfg: SynthConfig, overwrite: bool = False, progress: bool = True):
    """Write `cfg.num_identities * cfg.videos_per_identity` clips in the dataset layout
    (train/ and test/ split by identity, manifest.csv) and return the manifest DataFrame."""
    import pandas as pd
    from tqdm import tqdm

    if cfg.format not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {cfg.format!r}")
    if cfg.format == "mp4" and cfg.image_size % 2:
        raise ValueError("mp4 needs an even image_size")
    out = Path(out)
    _prepare_out(out, overwrite)
    names = [f"synth{i:03d}" for i in range(cfg.num_identities)]
    splits = assign_splits(names, cfg.test_fraction, cfg.seed)
    jobs = [
        (out, cfg, names[i], splits[names[i]], i, v)
        for i in range(cfg.num_identities)
        for v in range(cfg.videos_per_identity)
    ]
    bar = tqdm(total=len(jobs), desc="synth", unit="video", disable=not progress)
    rows = []
    if cfg.workers > 1:  # clips are independent: same output, any number of processes
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(cfg.workers) as pool:
            for row in pool.map(_synth_clip, *zip(*jobs)):
                rows.append(row)
                bar.update()
    else:
        for job in jobs:
            rows.append(_synth_clip(*job))
            bar.update()
    bar.close()
    df = pd.DataFrame(rows)
    write_manifest(df, out / "manifest.csv")
    return df


def _synth_clip(out: Path, cfg: SynthConfig, name: str, split: str, i: int, v: int) -> dict:
    frames = render_video(cfg.seed, i, v, cfg.num_frames, cfg.image_size)
    vid = f"{name}_v{v:02d}"
    rel = write_entry(out / split, vid, frames, cfg.format, cfg.fps).relative_to(out)
    return {
        "id": vid,
        "identity": name,
        "split": split,
        "status": "ok",
        "path": str(rel),
        "source": f"synth:seed={cfg.seed}:identity={i}:video={v}",
        "format": cfg.format,
        "num_frames": cfg.num_frames,
        "width": cfg.image_size,
        "height": cfg.image_size,
        "fps": cfg.fps,
        "duration_s": cfg.num_frames / cfg.fps,
    }


def write_entry(split_dir: Path, vid: str, frames: np.ndarray, fmt: str, fps: float) -> Path:
    """One dataset entry: `<vid>.mp4` or `<vid>/000000.png ...` (written under a temp name first)."""
    if fmt == "mp4":
        return write_video(split_dir / f"{vid}.mp4", frames, fps)
    final = split_dir / vid
    tmp = split_dir / f".{vid}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    write_frames(tmp, frames, ext=f".{fmt}")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _prepare_out(out: Path, overwrite: bool) -> None:
    existing = [p for p in ("train", "test", "manifest.csv") if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a dataset ({', '.join(existing)}); pass overwrite=True (--overwrite) to replace it"
        )
    for name in existing:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
