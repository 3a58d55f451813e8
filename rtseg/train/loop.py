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

import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rtseg.atomic import ensure_parent
from rtseg.errors import UserError
from rtseg.imageio import CLASS_NAMES
from rtseg.model.bundle import Bundle, build_model, resolve_device, save_bundle
from rtseg.model.manifest import MANIFEST, Manifest
from rtseg.train.calibrate import reestimate_bn
from rtseg.train.checkpoint import (BackgroundSaver, checkpoint_state, cpu_copy, load_init_state,
                                    read_resume_checkpoint, restore_checkpoint, split_fingerprint)
from rtseg.train.config import CHECKPOINT, TrainConfig, TrainResult
from rtseg.train.data import (augment_batch, default_workers, load_images, read_labels_csv,
                              require_classes, stratified_split, summarize)
from rtseg.train.step import Stepper, evaluate, torch_flags


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


# ----------------------------------------------------------------------------------------
# the step (eager or CUDA graph)
# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        if enabled:
            from rich.console import Console

            from rtseg.ui import progress_bar

            self.console = Console(stderr=True)
            self.progress = progress_bar("[bold]{task.description}", "{task.fields[info]}",
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
@dataclass
class _Run:
    """What one training run works with, shared by the stages of :func:`train`."""

    cfg: TrainConfig
    device: str
    model: Any
    prog: Any
    amp_dtype: Any = None
    channels_last: bool = False
    cache: Any = None  # every image, decoded once: uint8 tensor on the device
    targets: Any = None
    train_dev: Any = None  # training indices (device tensor)
    val_x: Any = None
    val_y: Any = None
    n_train: int = 0
    bsz: int = 0
    steps: int = 0
    optimizer: Any = None
    scaler: Any = None
    gen: Any = None
    use_graph: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "val_accuracy": None, "val_loss": None, "state": None})
    start_epoch: int = 0
    prior_seconds: float = 0.0
    train_seconds: float = 0.0
    epochs_run: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def inputs(self, frames):
        import torch

        from rtseg.model.preprocess import frames_to_input

        cfg = self.cfg
        x = frames_to_input(frames, cfg.size, cfg.mean, cfg.std, fov=cfg.fov)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


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
        ckpt = read_resume_checkpoint(cfg, ckpt_path)
    elif ckpt_path.exists():
        warnings.warn(f"{out} holds a checkpoint of an earlier run; starting afresh "
                      "(use --resume to continue it)", stacklevel=2)

    # --- labels, split --------------------------------------------------------------------
    items = read_labels_csv(cfg.labels)
    require_classes(items)
    targets_np = np.array([it.target for it in items], dtype=np.int64)
    fingerprint = split_fingerprint(items, cfg.seed, cfg.val)
    if ckpt is not None and ckpt.get("split", {}).get("fingerprint") != fingerprint:
        raise UserError("--resume: the labels CSV, --val or --seed differ from the checkpoint's; "
                        "resume with the same ones or train afresh")
    train_idx, val_idx = stratified_split(targets_np, cfg.val, cfg.seed)

    # --- model (and --init) before the slow image decoding --------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, pretrained=bool(cfg.pretrained))
    init_tensors = load_init_state(cfg.init, model) if cfg.init is not None else None

    with torch_flags(device, cfg.cudnn_benchmark), _Progress(progress) as prog:
        run = _Run(cfg, device, model, prog)
        if run.is_cuda and cfg.amp:
            run.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        run.channels_last = run.is_cuda
        _load_images(run, items, targets_np, train_idx, val_idx)
        _make_optimizer(run, len(train_idx))
        if ckpt is not None:
            restore_checkpoint(run, ckpt, ckpt_path)
        stepper = _run_epochs(run, on_epoch, {"fingerprint": fingerprint, "val": val_idx.tolist()},
                              ckpt_path, t_start)

    # --- the bundle: the best epoch ----------------------------------------------------------
    seconds = time.perf_counter() - t_start
    manifest = _write_bundle(run, items, len(val_idx), init_tensors, stepper, ckpt is not None,
                             seconds)
    n_seen = run.epochs_run * run.steps * run.bsz
    return TrainResult(bundle=out, manifest=manifest, best_epoch=run.best["epoch"],
                       val_accuracy=run.best["val_accuracy"], val_loss=run.best["val_loss"],
                       history=run.history, epochs_run=run.epochs_run,
                       seconds=seconds, device=device,
                       images_per_second=n_seen / run.train_seconds if run.train_seconds else 0.0,
                       checkpoint=ckpt_path)


def _load_images(run: _Run, items, targets_np, train_idx, val_idx) -> None:
    """Images -> one uint8 tensor on the device; the validation inputs made once."""
    import torch

    cfg, device, prog = run.cfg, run.device, run.prog
    task = prog.add("decoding images", len(items))
    cache = load_images(items, cfg.size, cfg.workers or default_workers(),
                        on_progress=lambda n: prog.advance(task, n), active_area=cfg.active_area)
    prog.remove(task)
    run.cache = cache.to(device)
    run.targets = torch.from_numpy(targets_np).float().to(device)
    run.train_dev = torch.from_numpy(train_idx).to(device)
    if len(val_idx):
        run.val_x = torch.cat([run.inputs(run.cache[torch.from_numpy(val_idx[i:i + 64]).to(device)])
                               for i in range(0, len(val_idx), 64)])
        run.val_y = run.targets[torch.from_numpy(val_idx).to(device)]


def _make_optimizer(run: _Run, n_train: int) -> None:
    """The model on the device; Adam (fused on CUDA), the fp16 GradScaler, the batch stream."""
    import torch

    cfg, device, model = run.cfg, run.device, run.model
    model.to(device)
    if run.channels_last:
        model.to(memory_format=torch.channels_last)
    run.n_train = n_train
    run.bsz = min(cfg.batch, n_train)
    run.steps = math.ceil(n_train / run.bsz)
    run.use_graph = bool(run.is_cuda and cfg.cuda_graph and run.amp_dtype != torch.float16)
    opt_kw: dict[str, Any] = {"lr": cfg.lr}
    if run.is_cuda:
        opt_kw.update(fused=True, capturable=run.use_graph)
    try:
        run.optimizer = torch.optim.Adam(model.parameters(), **opt_kw)
    except (RuntimeError, TypeError, ValueError):
        opt_kw.pop("fused", None)
        run.optimizer = torch.optim.Adam(model.parameters(), **opt_kw)
    run.scaler = torch.amp.GradScaler("cuda") if run.amp_dtype == torch.float16 else None
    run.gen = torch.Generator(device=device)
    run.gen.manual_seed(cfg.seed + 1)


def _run_epochs(run: _Run, on_epoch, split: dict, ckpt_path: Path, t_start: float) -> Stepper:
    """The epochs from ``run.start_epoch``: train, re-estimate BN, validate, keep the best,
    checkpoint in the background, report. Returns the stepper (it says whether a CUDA graph ran)."""
    import torch

    cfg, device, prog = run.cfg, run.device, run.prog
    # the training images that re-estimate the BN statistics: fixed, seeded, unaugmented
    pbn_gen = torch.Generator().manual_seed(cfg.seed + 2)
    pbn_idx = run.train_dev[torch.randperm(run.n_train, generator=pbn_gen)[:cfg.precise_bn].to(device)]
    stepper = Stepper(run.model, run.optimizer, device, run.amp_dtype, run.scaler, run.use_graph,
                      (run.bsz, 3, cfg.size, cfg.size), run.channels_last)
    saver = BackgroundSaver()
    ep_task = prog.add("epochs", cfg.epochs, info="")
    prog.update(ep_task, completed=min(run.start_epoch, cfg.epochs))
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            train_loss, train_acc, step_task = _train_epoch(run, stepper, epoch)
            t_train = time.perf_counter() - t0
            run.train_seconds += t_train
            if len(pbn_idx):
                reestimate_bn(run.model, (run.inputs(run.cache[pbn_idx[i:i + run.bsz]])
                                          for i in range(0, len(pbn_idx), run.bsz)),
                              torch.autocast("cuda", dtype=run.amp_dtype) if run.amp_dtype else None)
            val_loss = val_acc = None
            if run.val_x is not None:
                val_loss, val_acc = evaluate(run.model, run.val_x, run.val_y, run.amp_dtype, run.bsz)
            run.epochs_run += 1
            record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                      "val_loss": val_loss, "val_accuracy": val_acc,
                      "train_seconds": round(t_train, 4),
                      "seconds": round(time.perf_counter() - t0, 4)}
            run.history.append(record)
            best = run.best
            improved = best["state"] is None or val_acc is None or (
                val_acc > best["val_accuracy"]
                or (val_acc == best["val_accuracy"] and val_loss < best["val_loss"]))
            if improved:
                run.best = {"epoch": epoch + 1, "val_accuracy": val_acc, "val_loss": val_loss,
                            "state": cpu_copy(run.model.state_dict())}
            # checkpoint: model + optimizer + rng + best so far, written in the background
            saver.save(checkpoint_state(run, epoch + 1, split,
                                        run.prior_seconds + time.perf_counter() - t_start), ckpt_path)
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
    return stepper


def _train_epoch(run: _Run, stepper: Stepper, epoch: int) -> tuple[float, float, Any]:
    """One epoch: a seeded permutation cut into equal batches (the last one topped up from the
    start), augmented and preprocessed in chunks of batches on the device.
    (loss, accuracy, its progress task)."""
    import torch

    cfg, device, prog, bsz, steps = run.cfg, run.device, run.prog, run.bsz, run.steps
    chunk_steps = max(1, (512 if run.is_cuda else 128) // bsz)
    run.model.train()
    step_task = prog.add(f"epoch {epoch + 1}/{cfg.epochs}", steps, info="")
    perm = torch.randperm(run.n_train, generator=run.gen, device=device)
    if steps * bsz > run.n_train:  # top the last batch up from the start
        perm = torch.cat([perm, perm[:steps * bsz - run.n_train]])
    order = run.train_dev[perm]
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device, dtype=torch.long)
    for c0 in range(0, steps, chunk_steps):
        c1 = min(steps, c0 + chunk_steps)
        idx = order[c0 * bsz:c1 * bsz]
        frames = run.cache[idx]
        if cfg.augment:
            frames = augment_batch(frames, run.gen, cfg.augmentation)
        x = run.inputs(frames)
        y = run.targets[idx]
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
    return train_loss, train_acc, step_task


def _write_bundle(run: _Run, items, n_val: int, init_tensors, stepper: Stepper, resumed: bool,
                  seconds: float) -> Manifest:
    """The best epoch's weights + a manifest recording how they were trained, saved to --out."""
    import torch

    cfg, model = run.cfg, run.model
    if run.best["state"] is not None:
        model.load_state_dict(run.best["state"])
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    precision = {None: "fp32", torch.bfloat16: "bf16-autocast",
                 torch.float16: "fp16-autocast"}[run.amp_dtype]
    training = {
        "labels": str(cfg.labels.resolve()),
        **summarize(items),
        "train_images": int(run.n_train), "val_images": int(n_val),
        "epochs": cfg.epochs, "batch": cfg.batch, "lr": cfg.lr,
        "optimizer": "Adam", "loss": "BCEWithLogitsLoss", "seed": cfg.seed,
        "augment": cfg.augment,
        "augmentation": cfg.augmentation.to_dict() if cfg.augment else None,
        "fov": cfg.fov, "precise_bn": min(cfg.precise_bn, int(run.n_train)),
        "init": str(cfg.init) if cfg.init is not None else None,
        "init_tensors": init_tensors, "device": _device_name(run.device), "precision": precision,
        "cuda_graph": bool(stepper.use_graph),
        "cudnn_benchmark": cfg.cudnn_benchmark if run.is_cuda else None,
        "resumed": resumed,
        "seconds": round(run.prior_seconds + seconds, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    best = run.best
    metrics = {"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
               "best_epoch": best["epoch"], "history": run.history}
    manifest = Manifest(arch=cfg.arch, input_size=cfg.size, mean=cfg.mean, std=cfg.std,
                        fov_mask=cfg.fov, cam_layer=cfg.layer, threshold=cfg.threshold,
                        tiles=cfg.tiles, class_names=CLASS_NAMES, training=training,
                        active_area=cfg.active_area,
                        metrics=metrics)
    save_bundle(Bundle(model, manifest), cfg.out)
    return manifest
