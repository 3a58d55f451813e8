"""The training step (eager, or the whole step captured once as a CUDA graph and replayed), the
torch flags a run trains under, and the validation pass."""

from __future__ import annotations

import contextlib
import warnings

from rtseg.errors import first_line


@contextlib.contextmanager
def torch_flags(device: str, cudnn_benchmark: bool = False):
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


class Stepper:
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


def evaluate(model, x, y, amp_dtype, batch: int) -> tuple[float, float]:
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
