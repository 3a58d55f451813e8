"""Training checkpoints: ``--init`` weights, the resume checkpoint (read and checked before any
work, restored into the model and optimiser), and the background writer of one checkpoint per
epoch (atomic, one at a time)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from pathlib import Path
from typing import Any

from rtseg.atomic import atomic_path
from rtseg.errors import UserError, first_line
from rtseg.model.manifest import WEIGHTS
from rtseg.train.config import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from rtseg.train.data import LabeledItem


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
            raise UserError(f"--init {path} is a folder without {WEIGHTS}: give a weights "
                            "file or a model bundle folder")
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


def split_fingerprint(items: list[LabeledItem], seed: int, val: int) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(f"{it.ref}\t{it.label}\n".encode("utf-8", "surrogatepass"))
    h.update(f"seed={seed};val={val}".encode())
    return h.hexdigest()


def cpu_copy(obj):
    """Deep copy with every tensor moved to (a fresh) CPU tensor."""
    import torch

    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class BackgroundSaver:
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


def read_resume_checkpoint(cfg, ckpt_path: Path) -> dict:
    """``--resume``: the checkpoint, read and checked against ``cfg`` before any work."""
    import torch

    if not ckpt_path.is_file():
        raise UserError(f"--resume: no checkpoint in {cfg.out} (expected {ckpt_path.name})")
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
    return ckpt


def restore_checkpoint(run, ckpt: dict, ckpt_path: Path) -> None:
    """Model, optimiser, scaler, history, best so far and random streams from ``ckpt`` into
    ``run`` (a :class:`rtseg.train.loop._Run` with its optimiser made)."""
    import torch

    cfg, gen = run.cfg, run.gen
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"checkpoint {ckpt_path} does not fit: "
                        f"{first_line(exc)}") from None
    for group in run.optimizer.param_groups:
        group["lr"] = cfg.lr
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.history = list(ckpt.get("history", []))
    run.best = dict(ckpt.get("best", run.best))
    run.start_epoch = int(ckpt.get("epoch", 0))
    run.prior_seconds = float(ckpt.get("seconds", 0.0))
    rng = ckpt.get("rng", {})
    torch.set_rng_state(rng["torch"])
    if run.is_cuda and rng.get("cuda") is not None:
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(rng["cuda"])
    if rng.get("gen_device") == str(gen.device):
        gen.set_state(rng["gen"])
    else:
        gen.manual_seed(cfg.seed + 1 + run.start_epoch)
        warnings.warn("resuming on another device than the checkpoint's: "
                      "the random streams differ from an uninterrupted run", stacklevel=3)
    if run.start_epoch >= cfg.epochs:
        run.prog.print(f"checkpoint already has {run.start_epoch} epoch(s) (--epochs "
                       f"{cfg.epochs}): writing the bundle only")


def checkpoint_state(run, epoch: int, split: dict, seconds: float) -> dict[str, Any]:
    """What the checkpoint after ``epoch`` holds: model + optimizer + rng + best so far."""
    import torch

    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "model": cpu_copy(run.model.state_dict()),
        "optimizer": cpu_copy(run.optimizer.state_dict()),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "best": run.best, "history": list(run.history),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if run.is_cuda else None,
                "gen": run.gen.get_state(), "gen_device": str(run.gen.device)},
        "config": run.cfg.to_dict(),
        "split": split,
        "seconds": seconds,
    }
