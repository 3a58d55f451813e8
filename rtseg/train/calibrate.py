"""BatchNorm statistics re-estimated from forward passes: for untrained bundles in tests and
benchmarks (:func:`calibrate_bn`) and after every training epoch (:func:`reestimate_bn`).

A random-init EfficientNet in eval mode is degenerate (running mean 0 / variance 1 do not
match its activations: near-constant output, CAM range ~1e-13, and denormal floats that make
CPU timings meaningless). :func:`calibrate_bn` re-estimates the BatchNorm statistics from a
few forward passes with the BatchNorm layers in train mode (no weights change), which gives a network with ordinary
activations. It is what ``tests/conftest.py`` does, reusable outside the tests. Training
uses :func:`reestimate_bn` itself ("precise BN", ``rtseg train --precise-bn``).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import numpy as np


def calibration_images(size: int, n: int = 16, seed: int = 0, noise: float = 0.0) -> list[np.ndarray]:
    """``n`` synthetic colonoscopy-like RGB images (half with a polyp) of ``size`` x ``size``.

    ``noise`` > 0 replaces that fraction of them by uniform random images, so that random
    frames are in the calibrated range too (tests that feed random frames use this).
    """
    from rtseg.synthetic import make_dataset

    n_noise = int(round(n * noise))
    n_syn = n - n_noise
    images = [s.image for s in make_dataset((n_syn + 1) // 2, n_syn // 2, size=(size, size), seed=seed)]
    rng = np.random.default_rng(seed)
    images += [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_noise)]
    if n_noise:
        order = rng.permutation(len(images))
        images = [images[i] for i in order]
    return images


def calibrate_bn(bundle, images: Sequence[np.ndarray] | None = None, batches: int = 4,
                 batch_size: int = 8, seed: int = 0, noise: float = 0.0):
    """Re-estimate ``bundle.model``'s BatchNorm statistics in place; returns the bundle (eval).

    ``images``: RGB uint8 images (default: :func:`calibration_images` at the manifest's input
    size). Statistics are the cumulative average over ``batches`` passes.
    """
    import torch

    from rtseg.graph.fold import cpu_flush_denormal
    from rtseg.model.preprocess import images_to_input

    m = bundle.manifest
    if images is None:
        images = calibration_images(m.input_size, n=2 * batch_size, seed=seed, noise=noise)
    model = bundle.model
    device = next(model.parameters()).device
    x = images_to_input(list(images), m).to(device)
    n = x.shape[0]
    with cpu_flush_denormal(device.type):
        reestimate_bn(model, (x[(i * batch_size) % n:(i * batch_size) % n + batch_size]
                              for i in range(batches)))
    return bundle


def reestimate_bn(model, batches: Iterable, autocast=None) -> None:
    """Replace every BatchNorm's running statistics by their cumulative average over
    ``batches`` (preprocessed inputs), in place (buffers keep their storage, so a captured
    CUDA-graph training step stays valid). Only the BN layers run in train mode (no
    drop-connect noise); the momenta are restored and the model is left in eval mode.
    ``autocast``: an optional context manager for the forward passes (mixed precision)."""
    import torch

    bns = [mod for mod in model.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [mod.momentum for mod in bns]
    model.eval()
    for mod in bns:
        mod.reset_running_stats()
        mod.momentum = None  # cumulative average
        mod.train()
    try:
        with torch.no_grad(), (autocast if autocast is not None else contextlib.nullcontext()):
            for x in batches:
                model(x)
    finally:
        for mod, momentum in zip(bns, momenta):
            mod.momentum = momentum
        model.eval()
