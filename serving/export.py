"""Export the generator's serving paths with `torch.export`, independent of any server.

An export folder holds three ExportedPrograms plus a manifest:

    export.json             format, image size, keypoint count and fields, cache field names,
                            model kind/config, version, SHA-256 of each program
    encode_sources.pt2      sources (B,k,3,H,W) in [0,1]       -> cache tensors (per source set)
    detect_keypoints.pt2    images (B,3,H,W)                   -> keypoint tensors, one per field
    animate.pt2             (*keypoint tensors, *cache)        -> prediction (B,3,H,W) in [0,1]
    source_maps.pt2         (*keypoint tensors, *cache)        -> (B,k+1,h,w): per output position,
                            the share of each source (the last channel: no source's), the
                            model's `source_mass`; optional (exports before it lack it)

The keypoint fields (manifest `keypoint_fields`) are the model's: ["xy", "strength"] (xy
(B,N,2), strength (B,N)) for zeroth-order detectors, plus "jacobian" (B,N,2,2) for first-order
ones (the FOMM baseline); a manifest without the entry means ["xy", "strength"].

B (batch) and k (number of sources, 1..max_sources) are dynamic; H and W are the model's
training size. `animate(cache, detect_keypoints(driving))` is the model's
`animate(cache, driving)`; relative motion moves the keypoints before calling `animate`.
Any server that can run `torch.export.load(path).module()` can serve these files; the
TorchServe handler is just one such consumer (TorchServe is in limited maintenance upstream).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iwarp.errors import IwarpError

FORMAT = "iwarp-export/1"
MANIFEST = "export.json"
PROGRAMS = ("encode_sources", "detect_keypoints", "animate")
OPTIONAL_PROGRAMS = ("source_maps",)  # absent from older exports; a server answers without them
KEYPOINT_FIELDS = ("xy", "strength", "jacobian")  # Keypoints' order; a model uses a prefix
DEFAULT_KEYPOINT_FIELDS = ["xy", "strength"]  # what a manifest without `keypoint_fields` means


class ExportError(IwarpError, RuntimeError):
    """The model could not be exported or the exported programs disagree with it."""


def _cache_fields(cache: Any) -> list[str]:
    """Names of the tensors in a SourceCache (dataclass, NamedTuple or dict of tensors)."""
    if dataclasses.is_dataclass(cache):
        names = [f.name for f in dataclasses.fields(cache)]
    elif isinstance(cache, tuple) and hasattr(cache, "_fields"):
        names = list(cache._fields)
    elif isinstance(cache, dict):
        names = list(cache)
    else:
        raise ExportError(
            f"unsupported SourceCache type {type(cache).__name__}: expected a dataclass, NamedTuple or dict"
        )
    bad = [n for n in names if not isinstance(_get(cache, n), torch.Tensor)]
    if bad:
        raise ExportError(f"SourceCache fields {bad} are not tensors; the serving contract needs plain tensors")
    return names


def _get(cache: Any, name: str) -> Any:
    return cache[name] if isinstance(cache, dict) else getattr(cache, name)


def _rebuild(cache_type: type, names: list[str], tensors: tuple[torch.Tensor, ...]) -> Any:
    values = dict(zip(names, tensors))
    if cache_type is dict:
        return values
    if issubclass(cache_type, tuple):  # NamedTuple
        return cache_type(*tensors)
    return cache_type(**values)


def _keypoint_tensors(kp: Any) -> tuple[torch.Tensor, ...]:
    """(xy, strength) or (xy, strength, jacobian): every field the detector filled in."""
    if isinstance(kp, (tuple, list)) and not hasattr(kp, "xy"):
        values = tuple(kp[:3])
    else:
        values = (kp.xy, kp.strength, getattr(kp, "jacobian", None))
    values = values[:2] if len(values) < 3 or values[2] is None else values
    if any(not isinstance(t, torch.Tensor) for t in values):
        raise ExportError("keypoints must be tensors (xy, strength[, jacobian])")
    return values


class _EncodeSources(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, sources: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.model.encode_sources(sources)
        return tuple(_get(cache, n) for n in self.names)


class _DetectKeypoints(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _keypoint_tensors(self.model.detect_keypoints(images))


class _Animate(nn.Module):
    """forward(kp_xy, kp_strength, [kp_jacobian,] *cache): the keypoint fields, then the cache."""

    def __init__(self, model: nn.Module, names: list[str], cache_type: type, kp_type: type, n_kp_fields: int):
        super().__init__()
        self.model, self.names, self.cache_type, self.kp_type = model, names, cache_type, kp_type
        self.n_extra = n_kp_fields - 2  # keypoint fields after xy and strength (the Jacobian)

    def unpack(self, kp_xy: torch.Tensor, kp_strength: torch.Tensor, cache: tuple[torch.Tensor, ...]) -> tuple:
        # The varargs lead with the extra keypoint fields; their names (kp_xy, kp_strength,
        # cache_i) are the program's input names, so a zeroth-order model's program is unchanged.
        kp = self.kp_type(kp_xy, kp_strength, *cache[: self.n_extra])
        return kp, _rebuild(self.cache_type, self.names, cache[self.n_extra :])

    def forward(self, kp_xy: torch.Tensor, kp_strength: torch.Tensor, *cache: torch.Tensor) -> torch.Tensor:
        kp, rebuilt = self.unpack(kp_xy, kp_strength, cache)
        out = self.model.animate(rebuilt, driving_keypoints=kp)
        return out.prediction if hasattr(out, "prediction") else out["prediction"]


class _SourceMaps(_Animate):
    """Same inputs as `_Animate`; returns the model's `source_mass` (B, k+1, h, w)."""

    def forward(self, kp_xy: torch.Tensor, kp_strength: torch.Tensor, *cache: torch.Tensor) -> torch.Tensor:
        kp, rebuilt = self.unpack(kp_xy, kp_strength, cache)
        return self.model.source_mass(rebuilt, kp)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_generator(
    model: nn.Module,
    out_dir: str | Path,
    image_size: tuple[int, int],
    *,
    max_sources: int = 8,
    max_batch: int = 256,
    metadata: dict[str, Any] | None = None,
    check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export `model`'s encode_sources / detect_keypoints / animate to `out_dir`.

    With `check`, the exported programs are run against the eager model for several
    (batch, k) pairs, including k=1 and k=max_sources, and must agree within `atol`.
    """
    model = model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = image_size
    gen = torch.Generator().manual_seed(0)
    # Example sizes of 2 (not 1): torch.export specialises dimensions traced at size 1.
    sources = torch.rand(2, 2, 3, h, w, generator=gen)
    driving = torch.rand(2, 3, h, w, generator=gen)
    with torch.no_grad():
        cache = model.encode_sources(sources)
        names = _cache_fields(cache)
        kp = model.detect_keypoints(driving)
        kp_tensors = tuple(t.clone() for t in _keypoint_tensors(kp))
        cache_3 = model.encode_sources(torch.rand(2, 3, 3, h, w, generator=gen))
    # Clones: the model returns views (reshape of B*k batches); export would trace their
    # bases with sizes of their own and bake in relations like B*k != B that fail at k=1.
    cache_tensors = tuple(_get(cache, n).clone() for n in names)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    k = torch.export.Dim("sources", min=1, max=max_sources)
    # Cache dims that change between k=2 and k=3 are dynamic in animate's signature: a size
    # that goes 2m -> 3m is m*k (k itself for m = 1), others (token counts k*L + extra tokens)
    # share one Dim per growth pattern
    # so export sees that all fields come from the same source set.
    shared: dict[tuple[int, int], Any] = {}
    cache_dyn = []
    for n in names:
        a, b = _get(cache, n), _get(cache_3, n)
        if a.dim() != b.dim() or a.shape[0] != 2:
            raise ExportError(
                f"cache field {n} must be (B, ...) with a fixed rank, got {tuple(a.shape)} / {tuple(b.shape)}"
            )
        spec: dict[int, Any] = {0: batch}
        for d in range(1, a.dim()):
            pair = (int(a.shape[d]), int(b.shape[d]))
            if pair[0] == pair[1]:
                continue
            if pair[1] * 2 == pair[0] * 3:  # m*k exactly (2m -> 3m): k itself, or e.g. 3 channels per source
                spec[d] = k if pair[0] == 2 else pair[0] // 2 * k
            else:
                spec[d] = shared.setdefault(pair, torch.export.Dim(f"tokens_{pair[0]}_{pair[1]}", min=1))
        cache_dyn.append(spec)
    kp_fields = list(KEYPOINT_FIELDS[: len(kp_tensors)])
    kp_dyn = tuple({0: batch} for _ in kp_tensors)
    try:
        with torch.no_grad():
            programs = {
                "encode_sources": torch.export.export(
                    _EncodeSources(model, names), (sources,), dynamic_shapes=({0: batch, 1: k},)
                ),
                "detect_keypoints": torch.export.export(
                    _DetectKeypoints(model), (driving,), dynamic_shapes=({0: batch},)
                ),
            }
            # animate and source_maps take the same inputs: *cache (extra keypoint fields, then
            # the cache) is one varargs entry
            per_frame = {"animate": _Animate}
            if hasattr(model, "source_mass"):
                per_frame["source_maps"] = _SourceMaps
            for name, wrapper in per_frame.items():
                programs[name] = torch.export.export(
                    wrapper(model, names, type(cache), type(kp), len(kp_fields)),
                    (*kp_tensors, *cache_tensors),
                    dynamic_shapes=(*kp_dyn[:2], (*kp_dyn[2:], *cache_dyn)),
                )
    except Exception as exc:  # torch.export's own message names the offending op/guard
        raise ExportError(f"torch.export failed on {type(model).__name__}: {exc}") from exc

    files = {}
    for name, ep in programs.items():
        path = out_dir / f"{name}.pt2"
        torch.export.save(ep, path)
        files[name] = {"file": path.name, "sha256": _sha256(path)}
    manifest = {
        "format": FORMAT,
        "image_size": [h, w],
        "n_keypoints": int(kp_tensors[0].shape[1]),
        "keypoint_fields": kp_fields,
        "max_sources": max_sources,
        "max_batch": max_batch,
        "cache_fields": names,
        "programs": files,
        "torch_version": torch.__version__,
        **(metadata or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if check:
        verify_export(model, load_exported(out_dir), max_sources=max_sources, atol=atol)
    return out_dir


@dataclass
class ExportedGenerator:
    """The three exported programs of an export folder, ready to call."""

    manifest: dict[str, Any]
    encode_program: nn.Module
    detect_program: nn.Module
    animate_program: nn.Module
    maps_program: nn.Module | None = None  # exports written before source_maps existed lack it

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.manifest["image_size"]
        return int(h), int(w)

    @property
    def keypoint_fields(self) -> list[str]:
        return list(self.manifest.get("keypoint_fields", DEFAULT_KEYPOINT_FIELDS))

    def encode_sources(self, sources: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.encode_program(sources))

    def detect_keypoints(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One tensor per keypoint field, in `keypoint_fields` order."""
        kp = tuple(self.detect_program(images))
        if len(kp) != len(self.keypoint_fields):
            raise ExportError(f"detect_keypoints returned {len(kp)} tensors; the manifest names {self.keypoint_fields}")
        return kp

    def animate(self, cache: tuple[torch.Tensor, ...], *keypoints: torch.Tensor) -> torch.Tensor:
        """`keypoints`: one tensor per keypoint field, as `detect_keypoints` returns them."""
        return self.animate_program(*keypoints, *cache)

    def source_maps(self, cache: tuple[torch.Tensor, ...], *keypoints: torch.Tensor) -> torch.Tensor:
        """(B, k+1, h, w): per output position, each source's share (the model's `source_mass`)."""
        if self.maps_program is None:
            raise ExportError("this export has no source_maps program (exported before it existed)")
        return self.maps_program(*keypoints, *cache)

    def __call__(self, sources: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        """Same as the eager `model(sources, driving).prediction`."""
        return self.animate(self.encode_sources(sources), *self.detect_keypoints(driving))


def load_exported(
    export_dir: str | Path, verify_hashes: bool = True, device: str | torch.device = "cpu"
) -> ExportedGenerator:
    export_dir = Path(export_dir)
    manifest_path = export_dir / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"no {MANIFEST} in {export_dir}: not an iwarp export folder")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    mods = {}
    for name in (*PROGRAMS, *(n for n in OPTIONAL_PROGRAMS if n in manifest["programs"])):
        entry = manifest["programs"][name]
        path = export_dir / entry["file"]
        if verify_hashes and _sha256(path) != entry["sha256"]:
            raise ExportError(f"{path} does not match the SHA-256 in {MANIFEST} (corrupt or replaced)")
        program = torch.export.load(path)
        if torch.device(device).type != "cpu":  # device arguments baked in at export time are rewritten
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, str(device))
        mods[name] = program.module()
    return ExportedGenerator(
        manifest, mods["encode_sources"], mods["detect_keypoints"], mods["animate"], mods.get("source_maps")
    )


def verify_export(model: nn.Module, exported: ExportedGenerator, *, max_sources: int = 8, atol: float = 1e-4) -> float:
    """Largest |exported - eager| over several (batch, k), including k=1 and k=max_sources, of
    the prediction and of every keypoint field (a field lost on the way fails here)."""
    h, w = exported.image_size
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    with torch.no_grad():
        for b, k in sorted({(1, 1), (3, 1), (1, max_sources), (2, min(3, max_sources))}):
            sources = torch.rand(b, k, 3, h, w, generator=gen)
            driving = torch.rand(b, 3, h, w, generator=gen)
            eager_kp = _keypoint_tensors(model.detect_keypoints(driving))
            got_kp = exported.detect_keypoints(driving)
            if len(got_kp) != len(eager_kp):
                raise ExportError(f"exported keypoints have {len(got_kp)} fields, the model's {len(eager_kp)}")
            worst = max([worst, *(float((g - e).abs().max()) for g, e in zip(got_kp, eager_kp))])
            eager = model(sources, driving)
            eager = eager.prediction if hasattr(eager, "prediction") else eager["prediction"]
            got = exported(sources, driving)
            if got.shape != eager.shape:
                raise ExportError(
                    f"exported output shape {tuple(got.shape)} != eager {tuple(eager.shape)} (B={b}, k={k})"
                )
            worst = max(worst, float((got - eager).abs().max()))
            if exported.maps_program is not None:
                got_maps = exported.source_maps(exported.encode_sources(sources), *got_kp)
                worst = max(worst, float((got_maps - model.source_attention(sources, driving)).abs().max()))
    if worst > atol:
        raise ExportError(f"exported programs differ from the eager model by {worst:.2e} (> {atol:.0e})")
    return worst
