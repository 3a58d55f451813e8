"""What ``rtseg train`` takes (:class:`TrainConfig`, the paper's set-up by default, validated)
and what it returns (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtseg.errors import UserError
from rtseg.model.arch import ARCHS, IMAGENET_MEAN, IMAGENET_STD, check_layer, num_blocks
from rtseg.model.manifest import Manifest
from rtseg.model.validate import check_input_size
from rtseg.model.thresholds import ThresholdPolicy
from rtseg.train.data import AugmentConfig

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "rtseg-train-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """Everything ``rtseg train`` takes; the defaults are the paper's set-up."""

    labels: Path  # labels CSV: path,label[,source,round]
    out: Path  # bundle folder (weights.pt, manifest.json, checkpoint.pt)
    epochs: int = 25
    batch: int = 16
    size: int = 224  # network input size (manifest input_size)
    lr: float = 1e-3
    device: str = "auto"
    seed: int = 0
    val: int = 60  # images held out for validation (stratified); 0 = none
    augment: bool = True
    fov: bool = True  # common field-of-view mask (manifest fov_mask)
    init: Path | None = None  # efficientnet-pytorch ImageNet state_dict (or a bundle)
    resume: bool = False
    layer: int | str = 14  # CAM layer recorded in the manifest
    threshold: str | ThresholdPolicy = "above 0.28"  # threshold policy recorded in the manifest
    workers: int | None = None  # image-decoding threads (default min(8, CPUs))
    arch: str = "efficientnet-b1"
    # None: the normalisation the architecture's weights expect (rtseg.model.bundle.ARCHS)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # start from the ImageNet weights installed for the architecture (None: where installed)
    pretrained: bool | None = None
    active_area: bool = False  # crop every image to the endoscope's field of view first
    tiles: bool = False  # manifest "tiles" (Run 1: one CAM per 2x2 tile at inference)
    amp: bool = True  # mixed precision on CUDA (bf16, else fp16 + GradScaler)
    cuda_graph: bool = True  # capture the training step as a CUDA graph (CUDA, bf16/fp32)
    # cuDNN autotuning: measured on an H100 it added ~25 s to the first step and gained
    # nothing per step for b1 at batch 16 (the CUDA graph dominates), so it is off by default
    cudnn_benchmark: bool = False
    # "precise BN": after every epoch, re-estimate the BatchNorm statistics (cumulative
    # average) on this many training images, unaugmented, with the epoch's final weights.
    # efficientnet-pytorch's BN momentum is 0.01, so the running statistics lag the weights by
    # hundreds of steps; in a short training that makes the eval-mode model degenerate (one
    # class for every image) although its weights are good. 0 = off (the paper's set-up).
    precise_bn: int = 256
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.labels = Path(self.labels)
        self.out = Path(self.out)
        self.init = Path(self.init) if self.init is not None else None
        if isinstance(self.threshold, str):
            self.threshold = ThresholdPolicy.parse(self.threshold)
        if isinstance(self.layer, str) and self.layer.strip().lstrip("-").isdigit():
            self.layer = int(self.layer)
        spec = ARCHS.get(self.arch)
        if self.mean is None:
            self.mean = spec.mean if spec else IMAGENET_MEAN
        if self.std is None:
            self.std = spec.std if spec else IMAGENET_STD
        if self.pretrained is None:
            self.pretrained = bool(spec and spec.pretrained and self.init is None)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    def validate(self) -> None:
        num_blocks(self.arch)
        check_layer(self.arch, self.layer)
        for name in ("epochs", "batch"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name} must be at least 1, not {getattr(self, name)}")
        check_input_size(self.size)  # the manifest's range: never a huge allocation
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, not {self.lr}")
        if self.val < 0:
            raise UserError(f"--val must be >= 0, not {self.val}")
        if self.precise_bn < 0:
            raise UserError(f"--precise-bn must be >= 0, not {self.precise_bn}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be at least 1, not {self.workers}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError("mean and std need three values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["labels"], d["out"] = str(self.labels), str(self.out)
        d["init"] = str(self.init) if self.init is not None else None
        d["threshold"] = str(self.threshold)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["augmentation"] = self.augmentation.to_dict()
        return d


@dataclass
class TrainResult:
    bundle: Path  # the bundle folder written
    manifest: Manifest
    best_epoch: int  # 1-based; the epoch whose weights are in the bundle
    val_accuracy: float | None  # of the best epoch (None without a validation set)
    val_loss: float | None
    history: list[dict[str, Any]]  # one dict per epoch (all epochs, resumed ones included)
    epochs_run: int  # epochs trained by this call
    seconds: float  # wall time of this call
    device: str
    images_per_second: float  # training throughput of this call (train steps only)
    checkpoint: Path
