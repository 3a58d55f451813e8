"""Train the polyp / non-polyp classifier (the paper's set-up) and write a model bundle.

EfficientNet-b1 (efficientnet-pytorch, one logit = polyp), BCEWithLogitsLoss, Adam (lr 1e-3,
otherwise defaults), 25 epochs; ``val`` images held out (stratified, seeded) and measured each
epoch. The best epoch by validation accuracy (ties: lower validation loss) becomes
``OUT/weights.pt`` + ``OUT/manifest.json``; ``OUT/checkpoint.pt`` (model, optimizer, epoch,
random states, best so far, history) is written atomically after every epoch, in a background
thread, and ``resume=True`` continues from it.

Speed: the images are decoded once into a uint8 tensor on the device (:mod:`rtseg.train.data`);
each epoch is a seeded permutation cut into equal batches (the last one is topped up from the
start of the permutation), augmented and preprocessed in chunks of batches on the device. On
CUDA the step runs in bf16 autocast (fp16 + GradScaler where bf16 is missing), channels-last,
a fused Adam, and (``cuda_graph``) the whole training step (forward, loss, backward, Adam)
captured once as a CUDA graph and replayed: about 1,350 training images/s at 224 x 224 on an
H100, 4.7 times the eager step, 25 epochs of 1,000 images in about 41 s all told.
(``cudnn_benchmark`` is off by default: on an H100 its autotuning cost ~25 s in the first step
and gained nothing per step.) On the CPU a seeded
run is deterministic: the same seed gives bit-identical weights.

Network inputs are always made by :func:`rtseg.model.preprocess.frames_to_input` with the
manifest's size, mean, std and FOV mask: the same normalisation as at inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rtseg.atomic import atomic_path, ensure_parent
from rtseg.train.calibrate import reestimate_bn
from rtseg.train.data import (AugmentConfig, LabeledItem, augment_batch, default_workers, load_images,
                        read_labels_csv, require_classes, stratified_split, summarize)
from rtseg.errors import UserError, first_line
from rtseg.imageio import CLASS_NAMES
from rtseg.model.arch import ARCHS, IMAGENET_MEAN, IMAGENET_STD, check_layer, num_blocks
from rtseg.model.bundle import Bundle, build_model, resolve_device, save_bundle
from rtseg.model.manifest import MANIFEST, WEIGHTS, Manifest
from rtseg.model.thresholds import ThresholdPolicy

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "rtseg-train-checkpoint"
CHECKPOINT_VERSION = 1
MIN_SIZE = 32  # EfficientNet downsamples by 32


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
        if self.size < MIN_SIZE:
            raise UserError(f"--size must be at least {MIN_SIZE}, not {self.size}")
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


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    """The bundle folder exists (or can be made) and a file can be written in it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    ensure_parent(out / MANIFEST)
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return "cpu"


def load_init_state(path: Path, model) -> int:
    """Load an efficientnet-pytorch checkpoint into ``model``; returns the tensors loaded.

    The ImageNet classifier ``_fc`` is dropped (kept only where its shape fits, e.g. an rtseg
    bundle); every other tensor must fit the architecture. Accepts a state_dict, a dict with
    ``state_dict``/``model``, or a bundle folder (its weights.pt). Never downloads.
    """
    import torch

    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise UserError(f"--init checkpoint not found: {path}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise UserError(f"corrupt --init checkpoint {p}: {first_line(exc)}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise UserError(f"--init {p} is not a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    keep, bad = {}, []
    for k, v in state.items():
        if k not in own:
            continue
        if v.shape != own[k].shape:
            if not k.startswith("_fc."):
                bad.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
            continue
        keep[k] = v.to(own[k].dtype)
    body = [k for k in own if not k.startswith("_fc.")]
    if bad:
        raise UserError(f"--init {p} does not fit this architecture: {bad[0]}"
                        + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
    if sum(k in keep for k in body) < len(body) // 2:
        raise UserError(f"--init {p} does not look like a checkpoint of this architecture: "
                        f"{sum(k in keep for k in body)} of {len(body)} tensors match")
    model.load_state_dict(keep, strict=False)
    return len(keep)


def _split_fingerprint(items: list[LabeledItem], seed: int, val: int) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(f"{it.ref}\t{it.label}\n".encode("utf-8", "surrogatepass"))
    h.update(f"seed={seed};val={val}".encode())
    return h.hexdigest()


def _cpu_copy(obj):
    """Deep copy with every tensor moved to (a fresh) CPU tensor."""
    import torch

    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


class _BackgroundSaver:
    """Write one ``torch.save`` at a time in a thread, atomically; errors surface on wait()."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._path: Path | None = None

    def save(self, obj: Any, path: Path) -> None:
        self.wait()
        self._path = path

        def run() -> None:
            import torch

            try:
                with atomic_path(path) as tmp:
                    torch.save(obj, tmp)
            except BaseException as exc:  # noqa: BLE001 - reported by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="rtseg-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            exc, self._error = self._error, None
            if isinstance(exc, UserError):
                raise exc
            raise UserError(f"cannot write checkpoint {self._path}: {first_line(exc)}") from None


@contextlib.contextmanager
def _torch_flags(device: str, cudnn_benchmark: bool = False):
    """cuDNN benchmark (if asked) on CUDA; deterministic algorithms on the CPU; restored after."""
    import torch

    prev_bench = torch.backends.cudnn.benchmark
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = cudnn_benchmark
        else:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.backends.cudnn.benchmark = prev_bench
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


# ----------------------------------------------------------------------------------------
# the step (eager or CUDA graph)
# ----------------------------------------------------------------------------------------
class _Stepper:
    """One optimisation step on a batch; returns (loss, number correct) as device tensors."""

    def __init__(self, model, optimizer, device: str, amp_dtype, scaler, use_graph: bool,
                 batch_shape: tuple[int, ...], channels_last: bool) -> None:
        import torch

        self.model, self.opt, self.scaler = model, optimizer, scaler
        self.device, self.amp_dtype = device, amp_dtype
        self.use_graph = use_graph
        self.graph = None
        self.warmup = 3  # eager steps (side stream) before capture
        self.steps = 0
        self.graph_failed: str | None = None
        if use_graph:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self.static_x = torch.empty(batch_shape, device=device).contiguous(memory_format=fmt)
            self.static_y = torch.empty(batch_shape[0], device=device)

    def _autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # no autocast weight cache: it is unsafe under graph capture
        return torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=False)

    def _forward_backward(self, x, y):
        import torch
        import torch.nn.functional as F

        with self._autocast():
            logits = self.model(x).flatten()
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        correct = ((logits.detach() > 0) == (y > 0.5)).sum()
        return loss.detach(), correct

    def eager(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        return self._forward_backward(x, y)

    def __call__(self, x, y):
        import torch

        if not self.use_graph:
            return self.eager(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
            return self.out_loss.clone(), self.out_correct.clone()
        if self.steps < self.warmup:
            self.steps += 1
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                out = self.eager(self.static_x, self.static_y)
            torch.cuda.current_stream().wait_stream(s)
            return out
        try:
            g = torch.cuda.CUDAGraph()
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(g):
                self.out_loss, self.out_correct = self._forward_backward(self.static_x,
                                                                         self.static_y)
            self.graph = g
        except Exception as exc:  # fall back to eager steps for the rest of the run
            self.use_graph = False
            self.graph_failed = first_line(exc)
            torch.cuda.synchronize()
            warnings.warn(f"CUDA graph capture failed ({self.graph_failed}); training eagerly",
                          stacklevel=2)
            return self.eager(x, y)
        self.graph.replay()
        return self.out_loss.clone(), self.out_correct.clone()


# ----------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.console = Console(stderr=True)
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.progress is not None:
            if exc_type is not None:  # an error: leave only its one-line message behind
                for task in list(self.progress.task_ids):
                    self.progress.remove_task(task)
            self.progress.__exit__(exc_type, exc, tb)
        return False

    def add(self, description: str, total: int, info: str = ""):
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total, info=info)

    def update(self, task, **kw) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, **kw)

    def advance(self, task, n: int = 1) -> None:
        if self.progress is not None and task is not None:
            self.progress.advance(task, n)

    def remove(self, task) -> None:
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


# ----------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------
def train(config: TrainConfig, progress: bool = True,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train the classifier and write the bundle; see the module docstring.

    ``on_epoch`` (optional) is called with each epoch's history record.
    Raises UserError for bad input (labels, --val, --out, --resume, --init).
    """
    import numpy as np
    import torch

    t_start = time.perf_counter()
    cfg = config
    cfg.validate()
    device = resolve_device(cfg.device)
    out = cfg.out
    _check_out(out)
    ckpt_path = out / CHECKPOINT

    # --- resume: read the checkpoint first (fail fast) ------------------------------------
    ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise UserError(f"--resume: no checkpoint in {out} (expected {ckpt_path.name})")
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"corrupt checkpoint {ckpt_path}: {first_line(exc)}") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{ckpt_path} is not an rtseg training checkpoint")
        saved = ckpt.get("config", {})
        for key in ("arch", "size"):
            if saved.get(key) != getattr(cfg, key):
                raise UserError(f"--resume: the checkpoint was trained with {key} "
                                f"{saved.get(key)}, not {getattr(cfg, key)}")
    elif ckpt_path.exists():
        warnings.warn(f"{out} holds a checkpoint of an earlier run; starting afresh "
                      "(use --resume to continue it)", stacklevel=2)

    # --- labels, split --------------------------------------------------------------------
    items = read_labels_csv(cfg.labels)
    require_classes(items)
    targets_np = np.array([it.target for it in items], dtype=np.int64)
    fingerprint = _split_fingerprint(items, cfg.seed, cfg.val)
    if ckpt is not None and ckpt.get("split", {}).get("fingerprint") != fingerprint:
        raise UserError("--resume: the labels CSV, --val or --seed differ from the checkpoint's; "
                        "resume with the same ones or train afresh")
    train_idx, val_idx = stratified_split(targets_np, cfg.val, cfg.seed)

    # --- model (and --init) before the slow image decoding --------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, pretrained=bool(cfg.pretrained))
    init_tensors = load_init_state(cfg.init, model) if cfg.init is not None else None

    is_cuda = device.startswith("cuda")
    amp_dtype = None
    if is_cuda and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    precision = {None: "fp32", torch.bfloat16: "bf16-autocast",
                 torch.float16: "fp16-autocast"}[amp_dtype]
    channels_last = is_cuda

    with _torch_flags(device, cfg.cudnn_benchmark), _Progress(progress) as prog:
        # --- images -> one uint8 tensor on the device ------------------------------------
        task = prog.add("decoding images", len(items))
        cache = load_images(items, cfg.size, cfg.workers or default_workers(),
                            on_progress=lambda n: prog.advance(task, n), active_area=cfg.active_area)
        prog.remove(task)
        cache = cache.to(device)
        targets = torch.from_numpy(targets_np).float().to(device)
        train_dev = torch.from_numpy(train_idx).to(device)

        def inputs(frames):
            from rtseg.model.preprocess import frames_to_input

            x = frames_to_input(frames, cfg.size, cfg.mean, cfg.std, fov=cfg.fov)
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

        val_x = None
        if len(val_idx):
            val_x = torch.cat([inputs(cache[torch.from_numpy(val_idx[i:i + 64]).to(device)])
                               for i in range(0, len(val_idx), 64)])
            val_y = targets[torch.from_numpy(val_idx).to(device)]

        # --- model, optimiser ----------------------------------------------------------------
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        n_train = len(train_idx)
        bsz = min(cfg.batch, n_train)
        steps = math.ceil(n_train / bsz)
        use_graph = bool(is_cuda and cfg.cuda_graph and amp_dtype != torch.float16)
        opt_kw: dict[str, Any] = {"lr": cfg.lr}
        if is_cuda:
            opt_kw.update(fused=True, capturable=use_graph)
        try:
            optimizer = torch.optim.Adam(model.parameters(), **opt_kw)
        except (RuntimeError, TypeError, ValueError):
            opt_kw.pop("fused", None)
            optimizer = torch.optim.Adam(model.parameters(), **opt_kw)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        gen = torch.Generator(device=device)
        gen.manual_seed(cfg.seed + 1)

        # --- state (fresh or resumed) --------------------------------------------------------
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"epoch": 0, "val_accuracy": None, "val_loss": None, "state": None}
        start_epoch, prior_seconds = 0, 0.0
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise UserError(f"checkpoint {ckpt_path} does not fit: "
                                f"{first_line(exc)}") from None
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            history = list(ckpt.get("history", []))
            best = dict(ckpt.get("best", best))
            start_epoch = int(ckpt.get("epoch", 0))
            prior_seconds = float(ckpt.get("seconds", 0.0))
            rng = ckpt.get("rng", {})
            torch.set_rng_state(rng["torch"])
            if is_cuda and rng.get("cuda") is not None:
                with contextlib.suppress(RuntimeError, IndexError):
                    torch.cuda.set_rng_state_all(rng["cuda"])
            if rng.get("gen_device") == str(gen.device):
                gen.set_state(rng["gen"])
            else:
                gen.manual_seed(cfg.seed + 1 + start_epoch)
                warnings.warn("resuming on another device than the checkpoint's: "
                              "the random streams differ from an uninterrupted run", stacklevel=2)
            if start_epoch >= cfg.epochs:
                prog.print(f"checkpoint already has {start_epoch} epoch(s) (--epochs "
                           f"{cfg.epochs}): writing the bundle only")

        # the training images that re-estimate the BN statistics: fixed, seeded, unaugmented
        pbn_gen = torch.Generator().manual_seed(cfg.seed + 2)
        pbn_idx = train_dev[torch.randperm(n_train, generator=pbn_gen)[:cfg.precise_bn].to(device)]

        stepper = _Stepper(model, optimizer, device, amp_dtype, scaler, use_graph,
                           (bsz, 3, cfg.size, cfg.size), channels_last)
        chunk_steps = max(1, (512 if is_cuda else 128) // bsz)
        saver = _BackgroundSaver()
        train_seconds, epochs_run = 0.0, 0
        ep_task = prog.add("epochs", cfg.epochs, info="")
        prog.update(ep_task, completed=min(start_epoch, cfg.epochs))
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                model.train()
                step_task = prog.add(f"epoch {epoch + 1}/{cfg.epochs}", steps, info="")
                perm = torch.randperm(n_train, generator=gen, device=device)
                if steps * bsz > n_train:  # top the last batch up from the start
                    perm = torch.cat([perm, perm[:steps * bsz - n_train]])
                order = train_dev[perm]
                loss_sum = torch.zeros((), device=device)
                correct_sum = torch.zeros((), device=device, dtype=torch.long)
                for c0 in range(0, steps, chunk_steps):
                    c1 = min(steps, c0 + chunk_steps)
                    idx = order[c0 * bsz:c1 * bsz]
                    frames = cache[idx]
                    if cfg.augment:
                        frames = augment_batch(frames, gen, cfg.augmentation)
                    x = inputs(frames)
                    y = targets[idx]
                    for s in range(c1 - c0):
                        loss, correct = stepper(x[s * bsz:(s + 1) * bsz], y[s * bsz:(s + 1) * bsz])
                        loss_sum += loss
                        correct_sum += correct
                        prog.advance(step_task)
                    if prog.enabled:
                        done = c1 * bsz
                        prog.update(step_task, info=f"loss {loss_sum.item() / c1:.4f} "
                                    f"acc {correct_sum.item() / done:.3f}")
                train_loss = loss_sum.item() / steps
                train_acc = correct_sum.item() / (steps * bsz)
                if not math.isfinite(train_loss):
                    raise UserError(f"training diverged at epoch {epoch + 1} (loss {train_loss}); "
                                    "try a lower --lr")
                t_train = time.perf_counter() - t0
                train_seconds += t_train

                if len(pbn_idx):
                    reestimate_bn(model, (inputs(cache[pbn_idx[i:i + bsz]])
                                          for i in range(0, len(pbn_idx), bsz)),
                                  torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else None)
                val_loss = val_acc = None
                if val_x is not None:
                    val_loss, val_acc = _evaluate(model, val_x, val_y, amp_dtype, bsz)
                epochs_run += 1
                record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                          "val_loss": val_loss, "val_accuracy": val_acc,
                          "train_seconds": round(t_train, 4),
                          "seconds": round(time.perf_counter() - t0, 4)}
                history.append(record)
                improved = best["state"] is None or val_acc is None or (
                    val_acc > best["val_accuracy"]
                    or (val_acc == best["val_accuracy"] and val_loss < best["val_loss"]))
                if improved:
                    best = {"epoch": epoch + 1, "val_accuracy": val_acc, "val_loss": val_loss,
                            "state": _cpu_copy(model.state_dict())}
                # checkpoint: model + optimizer + rng + best so far, written in the background
                saver.save({
                    "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                    "epoch": epoch + 1,
                    "model": _cpu_copy(model.state_dict()),
                    "optimizer": _cpu_copy(optimizer.state_dict()),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "best": best, "history": list(history),
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all() if is_cuda else None,
                            "gen": gen.get_state(), "gen_device": str(gen.device)},
                    "config": cfg.to_dict(),
                    "split": {"fingerprint": fingerprint, "val": val_idx.tolist()},
                    "seconds": prior_seconds + time.perf_counter() - t_start,
                }, ckpt_path)
                prog.remove(step_task)
                prog.advance(ep_task)
                prog.print(f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {train_loss:.4f} "
                           f"acc {train_acc:.3f}  val_loss {_fmt(val_loss)} "
                           f"val_acc {_fmt(val_acc, '.3f')}  {record['seconds']:.1f}s"
                           + ("  *best" if improved and val_acc is not None else ""))
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            saver.wait()

    # --- the bundle: the best epoch ----------------------------------------------------------
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    seconds = time.perf_counter() - t_start
    summary = summarize(items)
    training = {
        "labels": str(cfg.labels.resolve()),
        **summary,
        "train_images": int(n_train), "val_images": int(len(val_idx)),
        "epochs": cfg.epochs, "batch": cfg.batch, "lr": cfg.lr,
        "optimizer": "Adam", "loss": "BCEWithLogitsLoss", "seed": cfg.seed,
        "augment": cfg.augment,
        "augmentation": cfg.augmentation.to_dict() if cfg.augment else None,
        "fov": cfg.fov, "precise_bn": min(cfg.precise_bn, int(n_train)),
        "init": str(cfg.init) if cfg.init is not None else None,
        "init_tensors": init_tensors, "device": _device_name(device), "precision": precision,
        "cuda_graph": bool(stepper.use_graph),
        "cudnn_benchmark": cfg.cudnn_benchmark if is_cuda else None,
        "resumed": ckpt is not None,
        "seconds": round(prior_seconds + seconds, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metrics = {"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
               "best_epoch": best["epoch"], "history": history}
    manifest = Manifest(arch=cfg.arch, input_size=cfg.size, mean=cfg.mean, std=cfg.std,
                        fov_mask=cfg.fov, cam_layer=cfg.layer, threshold=cfg.threshold,
                        tiles=cfg.tiles, class_names=CLASS_NAMES, training=training,
                        active_area=cfg.active_area,
                        metrics=metrics)
    save_bundle(Bundle(model, manifest), out)
    n_seen = epochs_run * steps * bsz
    return TrainResult(bundle=out, manifest=manifest, best_epoch=best["epoch"],
                       val_accuracy=best["val_accuracy"], val_loss=best["val_loss"],
                       history=history, epochs_run=epochs_run, seconds=seconds, device=device,
                       images_per_second=n_seen / train_seconds if train_seconds else 0.0,
                       checkpoint=ckpt_path)


def _evaluate(model, x, y, amp_dtype, batch: int) -> tuple[float, float]:
    """Mean BCE loss and accuracy (logit > 0 = polyp) of ``model`` in eval mode."""
    import torch
    import torch.nn.functional as F

    model.eval()
    logits = []
    with torch.no_grad():
        ctx = (torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            for i in range(0, x.shape[0], batch):
                logits.append(model(x[i:i + batch]).flatten().float())
    z = torch.cat(logits)
    loss = F.binary_cross_entropy_with_logits(z, y).item()
    acc = ((z > 0) == (y > 0.5)).float().mean().item()
    model.train()
    return loss, acc
