"""Shared test fixtures: small generated data and a BatchNorm-calibrated model.

A random-init EfficientNet in eval mode is degenerate (near-constant output, CAM range
~1e-13), so CAM tests use :func:`calibrated_bundle`: BatchNorm statistics re-estimated from a
few train-mode forward passes on synthetic colonoscopy-like images.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

from rtseg.model.bundle import new_bundle
from rtseg.model.preprocess import images_to_input
from rtseg.synthetic import make_dataset


def calibrate(bundle, size: int, n_batches: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    samples = make_dataset(8, 8, size=(size, size), seed=seed)
    x = images_to_input([s.image for s in samples], bundle.manifest)
    model = bundle.model
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(n_batches):
            model(x[i % 2 * 8:(i % 2 + 1) * 8] if n_batches > 1 else x)
    model.eval()
    return bundle


@pytest.fixture(scope="session")
def calibrated_bundle():
    """An efficientnet-b1 bundle (input 64 x 64) with calibrated BatchNorm statistics."""
    torch.manual_seed(0)
    b = new_bundle(input_size=64, cam_layer=14)
    return calibrate(b, 64)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads can be
    10x slower than one when other processes hold the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bundle_dir(calibrated_bundle, tmp_path_factory):
    """The calibrated bundle saved as a bundle folder."""
    from rtseg.model.bundle import save_bundle

    return save_bundle(calibrated_bundle, tmp_path_factory.mktemp("bundles") / "calib64")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """One export cache for the whole session (= $RTSEG_CACHE/onnx with :func:`rtseg_cache`)."""
    return tmp_path_factory.getbasetemp() / "rtseg-cache" / "onnx"


@pytest.fixture
def rtseg_cache(onnx_cache, monkeypatch):
    """Point rtseg's cache folder at the session's export cache."""
    monkeypatch.setenv("RTSEG_CACHE", str(onnx_cache.parent))


@pytest.fixture(autouse=True, scope="session")
def usual_signal_dispositions():
    """The usual SIGINT/SIGTERM/SIGHUP dispositions for the whole session, whatever the runner
    set (``nohup`` ignores SIGHUP, and rtseg rightly leaves an ignored signal ignored): the
    shutdown tests signal this process and its children, which inherit the dispositions."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    for s, h in saved.items():
        if h is not None:
            signal.signal(s, h)
