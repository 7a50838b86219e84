"""Data: video IO, the dataset layout and its loader, the training sampler, synthetic data,
preparation (crop/resize/manifest), validation (Great Expectations) and S3 helpers.

Exports load on first use so `import iwarp.data` (and `iwarp --help`) stays light: torch, PyAV,
Great Expectations and boto3 are imported only by the functions that need them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VideoDataset": "dataset",
    "VideoEntry": "dataset",
    "reconstruction_pairs": "dataset",
    "SourceDrivingBatches": "sampler",
    "SynthConfig": "synth",
    "make_synth_dataset": "synth",
    "render_video": "synth",
    "PhotoConfig": "photos",
    "make_photo_dataset": "photos",
    "PrepareConfig": "prepare",
    "prepare_dataset": "prepare",
    "ValidationConfig": "validate",
    "validate_dataset": "validate",
    "VideoReadError": "video",
    "read_video": "video",
    "write_video": "video",
    "probe": "video",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
