"""What one training of the sweep is asked to do, shared by the local backend
(`components.steps.training`) and the cluster backend (`components.steps.trainjob`), and where
its final checkpoint lands."""

import dataclasses
from pathlib import Path
from typing import Any

# Fine-tuning from a trained model starts gently: the recipe's from-scratch learning rate (1e-3,
# 200 warm-up steps) undoes the shipped model in a 100-step run. The user's overrides come after.
FINETUNE_OPTIM = ("optim.lr_generator=2e-4", "optim.warmup_steps=10")


@dataclasses.dataclass
class TrainRequest:
    dataset: str  # local path of the prepared dataset (a TrainJob gets a copy on the shared volume)
    ablation: dict[str, Any]
    config: str
    overrides: list[str]
    seed: int
    steps: int
    tracking_uri: str
    experiment: str
    parent_run_id: str
    backend: str = "torchrun"
    nproc_per_node: int = 1
    num_nodes: int = 1
    gpus_per_node: int = 0
    trainer_runtime: str = "torch-distributed"
    namespace: str = ""
    image: str = ""
    shared_dir: str = "/data"  # volume shared with the TrainJob pods (trainjob backend)
    data_pvc: str = "iwarp-data"  # ... and the claim behind it
    data_version: str = ""
    init_from: str = ""  # fine-tune from this checkpoint (a file or a shipped model's name); "" = from scratch
    # The keypoint stage's detector (a file; on a cluster staged onto the shared volume), loaded
    # frozen at step 0 (`model.implicit.keypoints_from`); "" = the detector trains with the rest.
    keypoints_from: str = ""
    # A local run's work folder (`iwarp pipeline run`): the training's folder is stable there, so a
    # run resumed after a kill continues this training from its last checkpoint. "" on a cluster.
    work_dir: str = ""

    @property
    def name(self) -> str:
        """The run's name: the ablation variant, or `keypoints` for the keypoint stage."""
        return str(self.ablation["variant"])

    def train_overrides(self, dataset_root: str, out_dir: str) -> list[str]:
        """Identical for every variant except the two ablation switches (the keypoint stage, an
        "ablation" without switches, gets none)."""
        from components.ablation import variant_overrides

        sets = [
            f"data.root={dataset_root}",
            f"out_dir={out_dir}",
            f"seed={self.seed}",
            f"experiment={self.experiment}",
            f"run_name={self.name}",
        ]
        if self.steps > 0:
            sets.append(f"optim.steps={self.steps}")
        if self.init_from:
            sets += [f"init_from={self.init_from}", *FINETUNE_OPTIM]
        if self.keypoints_from:
            sets.append(f"model.implicit.keypoints_from={self.keypoints_from}")
        switches = variant_overrides(self.ablation) if "residual" in self.ablation else []
        return [*sets, *self.overrides, *switches]


def train_dir(req: TrainRequest, checkpoint_path: str) -> Path:
    """Where the training writes: `<work_dir>/train/<name>` in a local run, else beside its output."""
    return Path(req.work_dir) / "train" / req.name if req.work_dir else Path(checkpoint_path).parent / "train"


def final_checkpoint(out_dir: Path) -> Path:
    found = sorted(out_dir.rglob("final.ckpt"))
    if not found:
        raise FileNotFoundError(f"training finished without a final.ckpt under {out_dir}")
    return found[0]
