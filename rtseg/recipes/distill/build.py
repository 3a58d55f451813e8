"""The recipe's build: one fit on all the data, written as a model bundle (weights + manifest).
``rtseg build-model`` and ``python -m rtseg.recipes.distill build`` both run :func:`build`."""

from __future__ import annotations

from pathlib import Path

from rtseg.model.bundle import Bundle, build_model
from rtseg.recipes.distill.data import ARCH, load_all, manifest, open_store
from rtseg.recipes.distill.fit import DEFAULT_VARIANT, Fit, Variant, fit, variant_named
from rtseg.train.probe import set_classifier


def bundle_of(f: Fit, v: Variant, variant: str) -> Bundle:
    """A fit as a model bundle: the network (with the fit's fine-tuned blocks, classifier and
    head) and its manifest (threshold, clean-up, frame rule, call smoothing, training summary)."""
    from rtseg.model.thresholds import ThresholdPolicy

    m = manifest(agree=True)
    model = build_model(ARCH, pretrained=True, head=m.head).eval()
    set_classifier(model, f.w, f.b)  # the graph calls a frame polyp at logit > 0
    backbone = "ImageNet efficientnet-lite1, frozen"
    if f.top is not None:  # the blocks fine-tuned end to end (Variant.finetune_steps)
        f.top.install(model)
        backbone = (f"ImageNet efficientnet-lite1; blocks {f.top.from_block + 1}-{f.top.from_block + len(f.top.blocks)}, "
                    "conv_head, classifier and head fine-tuned end to end through augmented views")
    model.rtseg_head.load_state_dict(f.head.state_dict())
    m = m.replace(threshold=ThresholdPolicy.parse(f"above {f.threshold}"), postprocess=tuple(f.steps),
                  call_smoothing=f.call_smoothing,
                  training={"recipe": f"python -m rtseg.recipes.distill build --variant {variant}",
                            "backbone": backbone, "variant": v.__dict__, **f.tune},
                  metrics={"tuning": {"baselines": {"ellipse": {"radius": f.radius}}}})
    return Bundle(model, m)


def build(data: Path, out: Path, cache: Path | None, variant: str = DEFAULT_VARIANT) -> Path:
    """Fit on all the data and write the bundle (weights + manifest)."""
    import torch

    from rtseg.graph.fold import cpu_flush_denormal
    from rtseg.model.bundle import save_bundle

    v = variant_named(variant)
    items = load_all(data)
    with cpu_flush_denormal():  # far-negative activations underflow: ~100x slower without
        store = open_store(items, cache)
        bundle = bundle_of(fit(store, items, v, store.m), v, variant)
    with torch.no_grad():
        save_bundle(bundle, out, half=True)
    return out
