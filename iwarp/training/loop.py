"""The training loop: generator + discriminator steps, DDP, checkpoints, exact resume.

Design choices that make resume exact:
* batches are a pure function of (seed, step, rank) (`SourceDrivingBatches[step]`), so the
  sampler state is just the step number;
* every rank's torch/numpy/python RNG state is saved, so dropout and the equivariance
  transforms draw the same numbers after a resume as in an uninterrupted run;
* preview pictures run under `torch.random.fork_rng` in eval mode, so they consume nothing.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from iwarp.checkpoint import CheckpointError, CheckpointWriteError, latest_checkpoint, load_checkpoint, save_checkpoint
from iwarp.config import ConfigError, flatten, from_dict, save_config, to_dict
from iwarp.training import init, visuals
from iwarp.training.config import TrainConfig
from iwarp.training.distributed import DistContext, init_distributed
from iwarp.training.loggers import ConsoleLogger, JSONLLogger, Logger, MultiLogger
from iwarp.training.state import (
    CHECKPOINT_PATTERN,
    FINAL_NAME,
    capture_rng,
    checkpoint_name,
    link_or_copy,
    param_digest,
    prune_checkpoints,
    remove_stale_temp_files,
    restore_rng,
    seed_everything,
)

FORMAT_VERSION = 1

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


@dataclass
class TrainResult:
    step: int  # completed optimisation steps
    final_checkpoint: Path | None  # None when stopped by a signal before the end
    metrics: dict[str, float] = field(default_factory=dict)  # last logged (rank-averaged) values
    stopped: str = ""  # "" finished | "budget" | "signal"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate after `step` updates (pure function of the step)."""
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    t = min(1.0, (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps))
    if o.schedule == "cosine":
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if o.schedule == "step":
        return 1.0 if t < 0.6 else 0.1 if t < 0.85 else 0.01
    return 1.0


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN then runs bf16 convolutions and matmuls natively (~1.2-1.4x
    faster steps here); elsewhere bf16 on CPU is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32. `auto` = bf16 on a GPU that supports it (else
    fp16) and on a CPU with native bf16, fp32 on other CPUs."""
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def to_device(module: ModuleT, device: torch.device, fmt: torch.memory_format) -> ModuleT:
    """`module.to(device, memory_format=fmt)`: Module.to takes memory_format (it converts the 4-D
    parameters and buffers), but torch's type stubs for Module.to omit the keyword."""
    return module.to(device, memory_format=fmt)  # type: ignore[call-overload]


class Trainer:
    """Trains one generator (+ discriminator) on this process's share of every batch."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext | None = None,
        resume: bool = False,
        resume_from: str | Path | None = None,
    ):
        self.cfg = cfg
        self.ctx = ctx or init_distributed(cfg.device)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.image_dir = self.out_dir / "images"
        self.resume = resume or resume_from is not None
        self.resume_from = Path(resume_from) if resume_from else None
        self.extra_logger: Logger | None = None
        self.last_metrics: dict[str, float] = {}
        self._stop_signal = threading.Event()
        self._setup()

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from iwarp.data import SourceDrivingBatches, VideoDataset
        from iwarp.discriminator import MultiScalePatchDiscriminator
        from iwarp.losses import Losses
        from iwarp.models import build_model

        cfg, ctx = self.cfg, self.ctx
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.autocast_dtype = resolve_precision(cfg, ctx.device)

        # Same initial weights on every rank (DDP would broadcast rank 0's anyway).
        torch.manual_seed(cfg.seed)
        # channels_last: oneDNN's (and cuDNN's) fast convolution layout; state dicts are unaffected
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = to_device(build_model(cfg.model.kind, cfg.model_config), ctx.device, fmt)
        self.losses = to_device(Losses(cfg.loss), ctx.device, fmt)  # holds the frozen VGG; not checkpointed
        self.disc = None
        if self.losses.uses_discriminator:  # only when an adversarial term has weight
            self.disc = to_device(MultiScalePatchDiscriminator(cfg.discriminator), ctx.device, fmt)

        o = cfg.optim
        betas = (o.betas[0], o.betas[1])  # the config check guarantees two values
        self.opt_g = torch.optim.Adam(
            self.model.parameters(), lr=o.lr_generator, betas=betas, weight_decay=o.weight_decay
        )
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lambda s: lr_factor(s, cfg))
        self.opt_d = self.sched_d = None
        if self.disc is not None:
            self.opt_d = torch.optim.Adam(
                self.disc.parameters(), lr=o.lr_discriminator, betas=betas, weight_decay=o.weight_decay
            )
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lambda s: lr_factor(s, cfg))
        # Loss scaling only for fp16; bf16 and fp32 need none.
        fp16 = self.autocast_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(ctx.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(ctx.device.type, enabled=fp16)

        d = cfg.data
        try:
            self.train_set = VideoDataset(d.root, "train", d.image_size)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"training data not found under {d.root!r} (set data.root): {exc}") from exc
        self.batches = SourceDrivingBatches(
            self.train_set,
            batch_size=d.batch_size,
            k_min=d.k_min,
            k_max=d.k_max,
            seed=cfg.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            augment=d.augment,
            landmarks=self._guided(),
        )

        self.start_step = 0
        self.tracking_run_id: str | None = None
        self.init_report: dict[str, Any] | None = None
        self.keypoints_report: dict[str, Any] | None = None
        resumed = self.resume and self._load_resume_state()
        if not self.resume:
            existing = sorted(self.ckpt_dir.glob(CHECKPOINT_PATTERN))
            if existing:  # a fresh run would interleave with (and prune) the old run's files
                raise ConfigError(
                    f"{self.ckpt_dir} already holds checkpoints ({existing[-1].name}, ...): pass --resume to "
                    "continue that run, or choose another out_dir (--set out_dir=...)"
                )
            seed_everything(cfg.seed, ctx.rank)
        if cfg.init_from and resumed:  # a retried step continues its own run, it does not restart
            if ctx.is_main:
                tqdm.write(f"init_from {cfg.init_from} ignored: resuming this run's own checkpoint")
        elif cfg.init_from:
            self._init_from(cfg.init_from)
        self._pretrained_keypoints(load=not resumed)

        self.ddp_model: torch.nn.Module = self.model
        self.ddp_disc: torch.nn.Module | None = self.disc
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.ddp_model = DDP(self.model, device_ids=ids)
            if self.disc is not None:
                self.ddp_disc = DDP(self.disc, device_ids=ids)

    def _guided(self) -> bool:
        """`model.*.keypoints.guidance: landmarks`: the batches carry landmark targets. Refused
        without sidecars or with a frozen detector, which the term could not move."""
        kp_cfg = getattr(self.model.config, "keypoints", None)
        if kp_cfg is None or kp_cfg.guidance != "landmarks" or self.cfg.loss.landmark_guidance <= 0:
            return False
        if getattr(self.model.config, "keypoints_from", None) and getattr(self.model.config, "keypoints_frozen", False):
            raise ConfigError("keypoints.guidance=landmarks needs a trainable detector: set keypoints_frozen=false")
        found = self.train_set.landmark_coverage()
        if found == 0:
            raise ConfigError(
                f"keypoints.guidance=landmarks, but {self.cfg.data.root}/train has no landmark sidecars: "
                f"run `iwarp data landmarks --data {self.cfg.data.root}`"
            )
        if self.ctx.is_main:
            tqdm.write(f"landmark guidance: {found:.0%} of the training frames have landmarks")
        return True

    def _init_from(self, name_or_path: str) -> None:
        """Fine-tuning: fresh run, weights from another checkpoint (every rank loads the same)."""
        self.init_report = init.init_from_checkpoint(
            name_or_path, self.cfg.model.kind, self.model, self.disc, map_location=self.ctx.device
        )
        if self.ctx.is_main:
            tqdm.write(init.describe(self.init_report))

    def _pretrained_keypoints(self, load: bool) -> None:
        """`model.implicit.keypoints_from`: the detector from a pretraining run (after init_from,
        so it wins), frozen unless `keypoints_frozen: false`. A resumed run has its own copy in
        its checkpoint, but stays frozen."""
        from iwarp.implicit_warping import ImplicitWarpingConfig

        model_cfg = self.model.config
        if not isinstance(model_cfg, ImplicitWarpingConfig) or not model_cfg.keypoints_from:
            return  # only the implicit model has the option
        source, frozen = model_cfg.keypoints_from, model_cfg.keypoints_frozen
        if load:
            self.keypoints_report = init.keypoints_from_checkpoint(
                source, self.model, frozen, map_location=self.ctx.device
            )
            if self.ctx.is_main:
                state = "frozen" if frozen else "fine-tuned"
                tqdm.write(f"keypoints from {self.keypoints_report['checkpoint']} ({state})")
        if frozen:
            init.freeze(self.model.keypoint_detector)

    def _load_resume_state(self) -> bool:
        """True when a checkpoint was loaded; False when there is none yet (fresh start)."""
        cfg, ctx = self.cfg, self.ctx
        path = self.resume_from or latest_checkpoint(self.ckpt_dir, CHECKPOINT_PATTERN)
        if path is None:
            if ctx.is_main:
                warnings.warn(f"--resume: no checkpoint in {self.ckpt_dir}; starting from step 0", stacklevel=2)
            seed_everything(cfg.seed, ctx.rank)
            return False
        try:
            ckpt = load_checkpoint(path, map_location=ctx.device)
        except CheckpointError as exc:
            older = sorted(p.name for p in self.ckpt_dir.glob(CHECKPOINT_PATTERN) if p != path)
            hint = f" Older checkpoints: {', '.join(older)} (pass --resume-from PATH)." if older else ""
            raise CheckpointError(f"cannot resume: {exc}.{hint}") from exc
        self._check_compatible(ckpt, path)
        self.model.load_state_dict(ckpt["model"])
        self.opt_g.load_state_dict(ckpt["optimizers"]["generator"])
        self.sched_g.load_state_dict(ckpt["schedulers"]["generator"])
        self.scaler_g.load_state_dict(ckpt["scalers"]["generator"])
        if self.disc is not None:
            if ckpt.get("discriminator") is None:
                raise ConfigError(f"{path} was trained without a discriminator; this config enables one")
            self.disc.load_state_dict(ckpt["discriminator"])
            assert self.opt_d is not None and self.sched_d is not None  # built with the discriminator
            self.opt_d.load_state_dict(ckpt["optimizers"]["discriminator"])
            self.sched_d.load_state_dict(ckpt["schedulers"]["discriminator"])
            self.scaler_d.load_state_dict(ckpt["scalers"]["discriminator"])
        rng = ckpt["rng"]
        if len(rng) == ctx.world_size:
            restore_rng(rng[ctx.rank], ctx.device)
        else:
            # Another world size sees other data anyway; fresh but reproducible streams.
            if ctx.is_main:
                warnings.warn(
                    f"resuming {len(rng)}-process training on {ctx.world_size} processes: "
                    "the run continues, but will not match an uninterrupted run bit for bit",
                    stacklevel=2,
                )
            seed_everything(cfg.seed + int(ckpt["step"]), ctx.rank)
        self.start_step = int(ckpt["step"])
        self.tracking_run_id = ckpt.get("tracking_run_id")
        self.resumed_from = path
        if ctx.is_main:
            tqdm.write(f"resuming from {path} at step {self.start_step}")
        return True

    def _stored_model_config(self, ckpt: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint's model config with fields added to the code since it was written at
        their defaults, so a run started before a new (default-off) option still resumes."""
        stored = ckpt.get("model_config")
        try:
            return to_dict(from_dict(type(self.cfg.model_config), stored)) if isinstance(stored, dict) else stored
        except ConfigError:
            return stored  # not this model's config: the comparison refuses it

    def _check_compatible(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another model; warn when the data stream would differ."""
        cfg = self.cfg
        if ckpt.get("model_kind") != cfg.model.kind or self._stored_model_config(ckpt) != to_dict(cfg.model_config):
            raise ConfigError(
                f"{path} holds a {ckpt.get('model_kind')!r} model with config {ckpt.get('model_config')}, "
                f"but the config asks for {cfg.model.kind!r} with {to_dict(cfg.model_config)}; "
                "use the training config the run started with (see config.yaml in the run folder)"
            )
        try:  # the sampler refuses a different seed / batch size / k range / dataset
            self.batches.load_state_dict(ckpt["sampler"])
        except ValueError as exc:
            raise ConfigError(f"cannot resume from {path}: {exc}") from exc

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def _generator_losses(self, driving, out, use_gan: bool, landmarks=None) -> dict[str, torch.Tensor]:
        # The inner modules, not the DDP wrappers: the equivariance term calls
        # model.detect_keypoints, and D must not sync gradients it does not receive here.
        # Before optim.gan_start_step the adversarial terms are skipped.
        return self.losses.generator_losses(
            driving, out, self.model, self.disc, adversarial=use_gan, landmarks=landmarks
        )

    def _discriminator_losses(self, driving, fake) -> dict[str, torch.Tensor]:
        assert self.ddp_disc is not None  # called only when there is a discriminator
        return self.losses.discriminator_losses(driving, fake, self.ddp_disc)

    def _clip(self, params, scaler, opt) -> torch.Tensor:
        scaler.unscale_(opt)
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def train_step(self, step: int, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One generator update and `d_steps` discriminator updates; returns detached scalars."""
        dev = self.ctx.device
        sources = batch["sources"].to(dev, non_blocking=True)
        driving = batch["driving"].to(dev, non_blocking=True)
        use_gan = self.disc is not None and step >= self.cfg.optim.gan_start_step
        self.model.train()

        if self.disc is not None:
            self.disc.requires_grad_(False)  # G step: gradients flow through D, not into it
        with self._autocast():
            out = self.ddp_model(sources, driving)
            g_losses = self._generator_losses(driving, out, use_gan, batch.get("landmarks"))
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(g_losses["total"]).backward()
        g_norm = self._clip(self.model.parameters(), self.scaler_g, self.opt_g)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.sched_g.step()
        logged = {f"g/{k}": v.detach() for k, v in g_losses.items()}
        logged["g/grad_norm"] = g_norm.detach()

        if self.disc is not None:
            assert self.opt_d is not None and self.sched_d is not None  # built with the discriminator
            self.disc.requires_grad_(True)
            if use_gan and self.cfg.loss.gan > 0:  # feature matching alone does not train D
                fake = out["prediction"].detach()
                for _ in range(self.cfg.optim.d_steps):
                    with self._autocast():
                        d_losses = self._discriminator_losses(driving, fake)
                    self.opt_d.zero_grad(set_to_none=True)
                    self.scaler_d.scale(d_losses["total"]).backward()
                    d_norm = self._clip(self.disc.parameters(), self.scaler_d, self.opt_d)
                    self.scaler_d.step(self.opt_d)
                    self.scaler_d.update()
                logged.update({f"d/{k}": v.detach() for k, v in d_losses.items()})
                logged["d/grad_norm"] = d_norm.detach()
            self.sched_d.step()  # the D schedule follows the global step even before the GAN starts
        return logged

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int, final: bool = False) -> Path | None:
        """Collective: every rank must call it at the same step. Rank 0 writes the file."""
        ctx = self.ctx
        rng = ctx.gather(capture_rng(ctx.device))
        digests = ctx.gather(param_digest(self.model, self.disc)) if self.cfg.checkpoint.verify_sync else []
        if not ctx.is_main:
            return None
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks diverged at step {step}: parameter digests {digests}")
        payload = {
            "format_version": FORMAT_VERSION,
            "model_kind": self.cfg.model.kind,
            "model_config": to_dict(self.cfg.model_config),
            "model": self.model.state_dict(),
            "discriminator": self.disc.state_dict() if self.disc is not None else None,
            "optimizers": {
                "generator": self.opt_g.state_dict(),
                "discriminator": self.opt_d.state_dict() if self.opt_d else None,
            },
            "schedulers": {
                "generator": self.sched_g.state_dict(),
                "discriminator": self.sched_d.state_dict() if self.sched_d else None,
            },
            "scalers": {"generator": self.scaler_g.state_dict(), "discriminator": self.scaler_d.state_dict()},
            "step": step,
            "rng": rng,  # one entry per rank, in rank order
            "sampler": {**self.batches.state_dict(), "next_step": step},
            "rank_digests": digests,
            "train_config": to_dict(self.cfg),
            "metrics": dict(self.last_metrics),
            "tracking_run_id": self.tracking_run_id,
            "saved_at": time.time(),
        }
        path = save_checkpoint(payload, self.ckpt_dir / checkpoint_name(step))
        prune_checkpoints(self.ckpt_dir, self.cfg.checkpoint.keep_last)  # only after a good write
        if final:
            try:
                link_or_copy(path, self.ckpt_dir / FINAL_NAME)
            except OSError as exc:
                raise CheckpointWriteError(
                    f"could not write {self.ckpt_dir / FINAL_NAME}: {exc.strerror or exc}; "
                    f"the step checkpoint {path} is complete"
                ) from exc
            return self.ckpt_dir / FINAL_NAME
        return path

    def _save_periodic(self, step: int) -> None:
        """Policy: a periodic checkpoint that cannot be written (disk full, ...) costs one warning
        line and training carries on, trying again at the next interval; the last good checkpoint
        stays the resume point. The final (and the SIGTERM) checkpoint has no next try: its
        failure stops the run with CheckpointWriteError (`iwarp train`: `error: ...`, exit 1)."""
        try:
            self.save(step)
        except CheckpointWriteError as exc:
            nxt = step + self.cfg.checkpoint.every_steps
            tqdm.write(f"warning: step {step}: {exc}; training continues, next try at step {nxt}", file=sys.stderr)

    # ------------------------------------------------------------------ pictures
    def _preview_batch(self) -> dict[str, Any]:
        """A fixed batch (test split when present) so pictures are comparable over training."""
        from iwarp.data import SourceDrivingBatches, VideoDataset

        d = self.cfg.data
        try:
            ds = VideoDataset(d.root, "test", d.image_size)
            if len(ds) == 0:
                raise FileNotFoundError
        except (FileNotFoundError, ValueError):
            ds = self.train_set
        n = self.cfg.logging.num_samples
        return SourceDrivingBatches(ds, batch_size=n, k_min=d.k_max, k_max=d.k_max, seed=self.cfg.seed + 1)[0]

    @torch.no_grad()
    def write_pictures(self, step: int, logger: Logger) -> list[Path]:
        """Sample grid + attention map for the preview batch (rank 0; consumes no RNG)."""
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.model.eval()
            batch = self._preview
            sources = batch["sources"].to(self.ctx.device)
            driving = batch["driving"].to(self.ctx.device)
            with self._autocast():
                pred = self.model(sources, driving)["prediction"].float()
            paths = [visuals.sample_grid(sources, driving, pred, self.image_dir / f"samples-{step:08d}.png")]
            try:
                maps = self.model.source_attention(sources, driving)
            except (AttributeError, NotImplementedError):
                maps = None  # a model without attention (the baseline) has no selection map
            if maps is not None:
                last = "occluded" if self.cfg.model.kind == "baseline" else "extraKV"
                paths.append(
                    visuals.attention_grid(
                        sources, driving, pred, maps, self.image_dir / f"attention-{step:08d}.png", last
                    )
                )
            self.model.train()
        for p in paths:
            logger.log_image(p, step)
        return paths

    # ------------------------------------------------------------------ main loop
    def _batches(self):
        """Batches for the remaining steps, prefetched by workers when num_workers > 0."""
        steps = range(self.start_step, self.cfg.optim.steps)
        if self.cfg.data.num_workers <= 0:
            return (self.batches[s] for s in steps)
        # A batch is a pure function of its step: worker scheduling cannot change the data.
        return iter(
            torch.utils.data.DataLoader(
                self.batches,
                sampler=steps,
                batch_size=None,
                num_workers=self.cfg.data.num_workers,
                pin_memory=self.ctx.device.type == "cuda",
                persistent_workers=False,
            )
        )

    def _make_logger(self) -> Logger:
        loggers: list[Logger] = [JSONLLogger(self.out_dir, resume_step=self.start_step if self.resume else None)]
        if self.cfg.logging.progress:
            loggers.append(ConsoleLogger())
        if self.extra_logger is not None:
            loggers.append(self.extra_logger)
        return MultiLogger(loggers)

    def _install_signal_handler(self):
        """SIGTERM (Kubernetes eviction, torchrun shutdown): checkpoint at the next step, exit."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, lambda *_: self._stop_signal.set())

    def run(self, logger: Logger | None = None) -> TrainResult:
        """Train to `optim.steps`; `logger` (rank 0 only) gets params, metrics, images, model."""
        cfg, ctx = self.cfg, self.ctx
        self.extra_logger = logger if ctx.is_main else None
        run_logger = self._make_logger() if ctx.is_main else Logger()
        self.logger = run_logger
        if ctx.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.ckpt_dir)
            save_config(cfg, self.out_dir / "config.yaml")
            params = flatten(to_dict(cfg))
            params.update({"world_size": ctx.world_size, "global_batch_size": cfg.data.batch_size * ctx.world_size})
            if self.init_report is not None:
                params.update(init.log_params(self.init_report, cfg.init_from))
            if self.keypoints_report is not None:
                params["keypoints_from.checkpoint"] = self.keypoints_report["checkpoint"]
                params["keypoints_from.model_kind"] = self.keypoints_report["model_kind"]
            run_logger.log_params(params)
            if self.init_report is not None:
                run_logger.log_artifact(init.write_report(self.init_report, self.out_dir))
            self.tracking_run_id = getattr(self.extra_logger, "run_id", None) or self.tracking_run_id
            self._preview = self._preview_batch()
        previous_handler = self._install_signal_handler()
        status, result = "FAILED", None
        try:
            result = self._loop(run_logger)
            status = "KILLED" if result.stopped == "signal" else "FINISHED"
            return result
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
            if ctx.is_main:
                run_logger.close(status)

    def _loop(self, logger: Logger) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        total = cfg.optim.steps
        step = self.start_step
        window: dict[str, torch.Tensor] = {}
        window_steps, window_start, window_cpu = 0, time.perf_counter(), time.process_time()
        started = time.monotonic()
        stopped = ""
        bar = tqdm(
            total=total,
            initial=step,
            disable=not (ctx.is_main and cfg.logging.progress),
            desc="train",
            dynamic_ncols=True,
        )
        for batch in self._batches():
            logged = self.train_step(step, batch)
            step += 1
            for k, v in logged.items():
                window[k] = window.get(k, 0) + v.float()
            window_steps += 1
            bar.update(1)

            out_of_time = cfg.optim.budget_minutes > 0 and time.monotonic() - started > cfg.optim.budget_minutes * 60
            if ctx.distributed or out_of_time or self._stop_signal.is_set():
                # Ranks agree before anyone leaves the loop (rank 0's clock decides the budget).
                if ctx.any(self._stop_signal.is_set()):
                    stopped = "signal"
                elif ctx.any(out_of_time and ctx.is_main):
                    stopped = "budget"

            if step % cfg.logging.every_steps == 0 or step == total or stopped:
                # CPU seconds per sample of one process: how DDP scales when cores are not shared
                cpu = torch.tensor(window_steps * cfg.data.batch_size / max(time.process_time() - window_cpu, 1e-9))
                metrics = ctx.mean({**{k: v / window_steps for k, v in window.items()}, "samples_per_cpu_s": cpu})
                elapsed = time.perf_counter() - window_start
                metrics["samples_per_s"] = window_steps * cfg.data.batch_size * ctx.world_size / max(elapsed, 1e-9)
                metrics["lr/generator"] = float(self.sched_g.get_last_lr()[0])
                metrics["k"] = float(batch["k"])
                self.last_metrics = metrics
                if ctx.is_main:
                    logger.log_metrics(metrics, step)
                    bar.set_postfix(loss=f"{metrics.get('g/total', float('nan')):.4f}")
                window, window_steps, window_start, window_cpu = {}, 0, time.perf_counter(), time.process_time()

            every_img = cfg.logging.images_every_steps
            if ctx.is_main and every_img > 0 and step % every_img == 0 and step < total and not stopped:
                self.write_pictures(step, logger)

            if stopped == "signal":
                self.save(step)
                break
            if stopped == "budget":
                break
            if step % cfg.checkpoint.every_steps == 0 and step < total:
                self._save_periodic(step)
        bar.close()

        if stopped == "signal":
            ctx.barrier()
            return TrainResult(step=step, final_checkpoint=None, metrics=self.last_metrics, stopped="signal")
        final = self.save(step, final=True)
        if ctx.is_main:
            self._finish(step, final, logger)
        ctx.barrier()
        return TrainResult(
            step=step,
            final_checkpoint=final if ctx.is_main else self.ckpt_dir / FINAL_NAME,
            metrics=self.last_metrics,
            stopped=stopped,
        )

    def _finish(self, step: int, final: Path | None, logger: Logger) -> None:
        """Final pictures, loss curves and the model itself to the loggers."""
        self.write_pictures(step, logger)
        history = [r for lg in getattr(logger, "loggers", []) if isinstance(lg, JSONLLogger) for r in lg.history()]
        curves = visuals.loss_curves(history, self.image_dir / "loss-curves.png")
        if curves is not None:
            logger.log_image(curves, step)
        logger.log_artifact(self.out_dir / "config.yaml")
        logger.log_artifact(self.out_dir / "metrics.jsonl")
        if final is not None:
            logger.log_artifact(final, "checkpoints")
            batch = self._preview
            example = (batch["sources"][:2].to(self.ctx.device), batch["driving"][:2].to(self.ctx.device))
            self.model.eval()
            logger.log_model(
                self.model,
                example,
                {
                    "model_kind": self.cfg.model.kind,
                    "model_config": to_dict(self.cfg.model_config),
                    "checkpoint": str(final),
                    "step": step,
                },
            )


def train(
    cfg: TrainConfig,
    make_logger=None,
    resume: bool = False,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train with the process group torchrun describes (or a single process).

    `make_logger(trainer)` builds the rank-0 tracking logger once the trainer knows whether
    it resumes (and which tracking run it continues: `trainer.tracking_run_id`).
    """
    from iwarp.training.distributed import shutdown

    ctx = init_distributed(cfg.device)
    try:
        trainer = Trainer(cfg, ctx, resume=resume, resume_from=resume_from)
        logger = make_logger(trainer) if (make_logger is not None and ctx.is_main) else None
        return trainer.run(logger)
    finally:
        shutdown(ctx)
