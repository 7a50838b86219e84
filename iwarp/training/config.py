"""Typed training configuration (`configs/*.yaml` + `--set key=value` overrides).

The model and loss sections are the model library's own dataclasses, so a field added
there is configurable here without touching this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from iwarp import ExplicitFlowConfig, ImplicitWarpingConfig
from iwarp.config import ConfigError, load_config
from iwarp.data.augment import AugmentConfig
from iwarp.discriminator import DiscriminatorConfig
from iwarp.losses import LossConfig

ModelKind = Literal["implicit", "baseline"]  # the keys of iwarp.models.MODEL_KINDS (a test ties them)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["constant", "cosine", "step"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class ModelSection:
    kind: ModelKind = "implicit"  # "implicit" (the paper) | "baseline" (explicit flow, averages sources)
    implicit: ImplicitWarpingConfig = field(default_factory=ImplicitWarpingConfig)
    baseline: ExplicitFlowConfig = field(default_factory=ExplicitFlowConfig)


@dataclass
class DataSection:
    root: str = "data/synth"  # holds train/ and test/
    image_size: int | None = None  # None: the model's image_size (frames are resized to it)
    batch_size: int = 4  # per process; the global batch is batch_size * world_size
    k_min: int = 1  # number of sources drawn per batch, uniformly in [k_min, k_max]
    k_max: int = 4
    num_workers: int = 0  # DataLoader prefetch workers; batches depend only on (seed, step, rank)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # shared by an item's k + 1 frames


@dataclass
class OptimSection:
    steps: int = 1000
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm per network; 0 disables clipping
    schedule: Schedule = "cosine"  # constant | cosine (to min_lr_ratio) | step (x0.1 at 60% and 85%)
    warmup_steps: int = 0  # linear warm-up before the schedule
    min_lr_ratio: float = 0.1
    d_steps: int = 1  # discriminator updates per generator update
    gan_start_step: int = 0  # generator trains on reconstruction losses alone before this step
    budget_minutes: float = 0.0  # stop early after this wall-clock budget (benchmarks); 0 = off


@dataclass
class CheckpointSection:
    every_steps: int = 500
    keep_last: int = 3  # older step-*.ckpt files are deleted; final.ckpt is always kept
    verify_sync: bool = True  # compare parameter digests across ranks at each checkpoint


@dataclass
class LoggingSection:
    every_steps: int = 10  # losses to loggers (averaged over ranks)
    images_every_steps: int = 250  # sample grids + attention maps; 0 = only at the end
    num_samples: int = 4  # rows in a sample grid
    progress: bool = True  # tqdm bar on rank 0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    # used when loss.gan or loss.feature_matching > 0
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    out_dir: str = "runs/train"  # checkpoints/, images/, metrics.jsonl, config.yaml
    seed: int = 0
    device: Device = "auto"  # auto (cuda if available) | cpu | cuda
    precision: Precision = "auto"
    channels_last: bool = True  # convolution memory layout (faster with oneDNN and cuDNN)
    threads: int = 0  # torch intra-op threads per process; 0 leaves torch's default
    experiment: str = "iwarp"  # tracking experiment name
    run_name: str = ""
    # Fine-tuning: start (step 0, fresh optimizers) from this checkpoint's weights, a file or a
    # shipped model's name; see iwarp/training/init.py. Ignored when --resume finds a checkpoint.
    init_from: str = ""

    @property
    def model_config(self) -> ImplicitWarpingConfig | ExplicitFlowConfig:
        return getattr(self.model, self.model.kind)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks the type system cannot express; raise ConfigError with the fix."""
    problems = []  # Literal fields (model.kind, optim.schedule, precision, device): checked by load_config
    if not 1 <= cfg.data.k_min <= cfg.data.k_max:
        problems.append(f"need 1 <= data.k_min <= data.k_max, got {cfg.data.k_min}..{cfg.data.k_max}")
    if cfg.data.batch_size < 1:
        problems.append("data.batch_size must be >= 1")
    if cfg.optim.steps < 1:
        problems.append("optim.steps must be >= 1")
    if len(cfg.optim.betas) != 2:
        problems.append("optim.betas must have two values")
    if cfg.optim.d_steps < 0:
        problems.append("optim.d_steps must be >= 0")
    if cfg.checkpoint.every_steps < 1 or cfg.checkpoint.keep_last < 1:
        problems.append("checkpoint.every_steps and checkpoint.keep_last must be >= 1")
    if cfg.logging.every_steps < 1:
        problems.append("logging.every_steps must be >= 1")
    size = cfg.model_config.image_size
    if cfg.data.image_size is None:
        cfg.data.image_size = size
    elif size != cfg.data.image_size:
        problems.append(
            f"model.{cfg.model.kind}.image_size ({size}) differs from data.image_size ({cfg.data.image_size}); "
            "set one of them (data.image_size defaults to the model's)"
        )
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))  # one line: the CLI prints line 1
    return cfg


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    return validate(load_config(TrainConfig, path, overrides))
