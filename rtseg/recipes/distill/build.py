"""The recipe's build: one fit on all the data, written as a model bundle (weights + manifest).
``rtseg build-model`` and ``python -m rtseg.recipes.distill build`` both run :func:`build`."""

from __future__ import annotations

from pathlib import Path

from rtseg.errors import UserError
from rtseg.model.bundle import Bundle, build_model
from rtseg.recipes.distill.data import ARCH, SIZE, load_all, manifest, open_store
from rtseg.recipes.distill.fit import DEFAULT_VARIANT, Fit, Variant, fit, variant_named
from rtseg.train.probe import set_classifier


def bundle_of(f: Fit, v: Variant, variant: str) -> Bundle:
    """A fit as a model bundle: the network (with the fit's fine-tuned blocks, classifier and
    head) and its manifest (threshold, clean-up, frame rule, call smoothing, training summary)."""
    from rtseg.model.thresholds import ThresholdPolicy

    m = manifest(agree=True, size=f.size)
    model = build_model(ARCH, pretrained=True, head=m.head).eval()
    set_classifier(model, f.w, f.b)  # the graph calls a frame polyp at logit > 0
    backbone = f"ImageNet {ARCH}, frozen"
    if f.top is not None:  # the blocks fine-tuned end to end (Variant.finetune_steps)
        f.top.install(model)
        backbone = (f"ImageNet {ARCH}; blocks {f.top.from_block + 1}-{f.top.from_block + len(f.top.blocks)}, "
                    "conv_head, classifier and head fine-tuned end to end through augmented views")
    model.rtseg_head.load_state_dict(f.head.state_dict())
    m = m.replace(threshold=ThresholdPolicy.parse(f"above {f.threshold}"), postprocess=tuple(f.steps),
                  call_smoothing=f.call_smoothing,
                  training={"recipe": f"rtseg build-model --variant {variant}",
                            "backbone": backbone, "variant": v.__dict__, **f.tune},
                  metrics={"tuning": {"baselines": {"ellipse": {"radius": f.radius}}}})
    return Bundle(model, m)


def check_out(out: Path, data: Path, cache: Path | None) -> None:
    """UserError before any work unless ``out`` can be written as a whole folder: writable, and
    neither the data folder nor the feature cache, nor inside or around either (the new bundle
    replaces ``out`` as a whole)."""
    import os

    from rtseg.evaluate.predict import check_out_dir

    check_out_dir(out)
    if cache is not None:
        check_out_dir(cache)  # a file there would fail at the first cached feature
    o = os.path.realpath(out)
    for inp, what in ((data, "the data folder"), (cache, "the feature cache")):
        if inp is None:
            continue
        i = os.path.realpath(inp)
        if o == i or i.startswith(o + os.sep) or o.startswith(i + os.sep):
            raise UserError(f"--out {out} overlaps {what} {inp}: choose a folder outside it")


def build(data: Path, out: Path, cache: Path | None, variant: str = DEFAULT_VARIANT, size: int = SIZE) -> Path:
    """Fit ``variant`` on all the data and write its bundle (weights + manifest) to ``out``, which
    it replaces only once complete (:func:`rtseg.atomic.atomic_dir`; other files there are kept).
    The variant, ``out`` and the data folder are checked before any work."""
    from rtseg.graph.fold import cpu_flush_denormal

    v = variant_named(variant)
    check_out(Path(out), Path(data), Path(cache) if cache is not None else None)
    items = load_all(data)
    with cpu_flush_denormal():  # far-negative activations underflow: ~100x slower without
        store = open_store(items, cache, size)
        write_bundle(bundle_of(fit(store, items, v, store.m), v, variant), out)
    return Path(out)


def write_bundle(bundle: Bundle, out: Path) -> None:
    """A fit's bundle written to ``out`` (fp16 weights), which it replaces only once complete."""
    import torch

    from rtseg.atomic import atomic_dir
    from rtseg.model.bundle import save_bundle

    with atomic_dir(out) as tmp, torch.no_grad():
        save_bundle(bundle, tmp, half=True)
