"""The fused PyTorch segmenter: the traced forward + Grad-CAM graph (:mod:`rtseg.graph.fused`).

On CUDA this is the fast path: the graph is traced on the GPU (fp16 by default for the
``torch`` backend on CUDA), then either compiled with ``torch.compile`` (inductor, CUDA graphs
via ``mode="reduce-overhead"``) or captured into a plain CUDA graph per input shape, or run
as is. On CPU it runs the fp32 graph as is (useful as a check of the traced graph; the eager
segmenter or ONNX Runtime are the CPU choices).

``mode``: ``"auto"`` (CUDA: compile, falling back to a CUDA graph if compiling fails; CPU:
plain), ``"compile"``, ``"graph"`` (CUDA graph of the traced graph), ``"plain"``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from rtseg.errors import UserError, first_line
from rtseg.graph.fold import cpu_flush_denormal
from rtseg.runtime.base import Segmenter, SegOutput, check_frames

log = logging.getLogger(__name__)

MODES = ("auto", "compile", "graph", "plain")


class _GraphRunner:
    """A CUDA graph of ``fn`` for one input shape: copy in, replay, outputs in static buffers."""

    def __init__(self, fn, example: torch.Tensor, warmup: int = 3) -> None:
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor):
        self.static_in.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.static_out


class FusedTorchSegmenter(Segmenter):
    """Frames through the traced fused graph in PyTorch (CPU fp32, or CUDA fp16/fp32)."""

    def __init__(self, bundle, device: str = "cpu", fp16: bool | None = None, layer=None,
                 mode: str = "auto") -> None:
        from rtseg.graph.fold import fold_model
        from rtseg.graph.fused import trace_fused
        from rtseg.model.manifest import with_layer

        if mode not in MODES:
            raise UserError(f"unknown torch fused mode '{mode}' (use {', '.join(MODES)})")
        self.device = device
        cuda = str(device).startswith("cuda")
        if fp16 is None:
            fp16 = cuda
        if fp16 and not cuda:
            raise UserError("fp16 needs a CUDA device for the torch fused backend (use fp32 on CPU)")
        self.mode = ("compile" if cuda else "plain") if mode == "auto" else mode
        self._auto = mode == "auto"
        if self.mode in ("compile", "graph") and not cuda:
            raise UserError(f"torch fused mode '{self.mode}' needs a CUDA device")
        self.fp16 = fp16
        self.manifest = with_layer(bundle.manifest, layer)
        self.layer = self.manifest.cam_layer
        dtype = torch.float16 if fp16 else torch.float32
        folded = fold_model(bundle.model, self.manifest.input_size)
        self.gm = trace_fused(bundle, self.layer, dtype=dtype, device=device, folded=folded)
        self._fn = self.gm
        if self.mode == "compile":
            # dynamic=None: the first shape compiles static, a second one recompiles with
            # dynamic sizes that serve every later shape (cudagraph trees record per shape)
            self._fn = torch.compile(self.gm, mode="reduce-overhead", dynamic=None, fullgraph=True)
        self._graphs: dict[tuple, _GraphRunner] = {}
        self.name = f"torch-fused-{'fp16' if fp16 else 'fp32'}-{self.mode}"

    def _run(self, x: torch.Tensor):
        if self.mode == "graph":
            key = tuple(x.shape)
            runner = self._graphs.get(key)
            if runner is None:
                runner = self._graphs[key] = _GraphRunner(self.gm, x)
            return runner(x)
        if self.mode == "compile":
            try:
                # outputs live in cudagraph-tree memory until the next call: the caller
                # copies them to the host at once
                return self._fn(x)
            except Exception as exc:
                if not self._auto:
                    raise
                log.warning("torch.compile failed (%s); using a CUDA graph of the traced graph",
                            first_line(exc))
                self.mode = "graph"
                self.name = self.name.rsplit("-", 1)[0] + "-graph"
                return self._run(x)
        return self._fn(x)

    def __call__(self, frames: np.ndarray) -> SegOutput:
        frames = check_frames(frames)
        x = torch.from_numpy(frames)
        if self.device != "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(False), torch.no_grad(), cpu_flush_denormal(self.device):
            prob, cam, mask = self._run(x)
        return SegOutput(prob.float().cpu().numpy(), cam.float().cpu().numpy(), mask.cpu().numpy())

    def describe(self) -> str:
        return f"{self.name} on {self.device}, CAM layer {self.layer}"
