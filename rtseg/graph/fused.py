"""The fused graph: preprocessing + EfficientNet forward + Grad-CAM backward + threshold, one graph.

``frames`` uint8 [B, H, W, 3] (BGR; B, H, W dynamic) -> ``prob`` float32 [B],
``cam`` float32 [B, S, S] in [0, 1], ``mask`` uint8 [B, S, S] (0/1).

How it is built (:func:`trace_fused`):

1. :func:`fold_model` makes an inference copy of the network that computes the same function:
   every BatchNorm folded into the convolution before it (in float64, then cast), every
   "same padding" convolution of efficientnet-pytorch replaced by a :class:`StaticConv2d` with
   the padding it applies at the manifest's input size S (symmetric padding goes into the
   convolution, the few asymmetric ones keep an explicit zero pad), all parameters frozen. The
   copy is checked against the original in eval mode before it is used.
2. The graph function (:func:`fused_function`) is literally the eager definition: it calls
   :func:`rtseg.model.preprocess.frames_to_input` (the one preprocessing path), then
   :class:`GraphGradCAM`, a subclass of :class:`rtseg.model.gradcam.GradCAM` that only changes *where* the
   activations come from (its hook makes the target layer's output the leaf the gradient is taken
   for, since frozen parameters leave nothing else requiring grad), so the forward, the
   ``torch.autograd.grad`` of the summed polyp logits, the Grad-CAM weights, the ReLU, and
   :func:`rtseg.model.gradcam.normalize_cam` are rtseg.model.gradcam's own code; then the manifest's
   :class:`~rtseg.model.thresholds.ThresholdPolicy` (torch version, otsu included).
3. ``make_fx(tracing_mode="symbolic")`` records that function, autograd's backward included, as a
   graph of plain aten operators with a symbolic batch size and frame size. Only the gradient
   with respect to the CAM layer is asked for and the parameters are frozen, so no weight
   gradient exists in the graph, and the forward before the CAM layer records no backward at all.
   Each :class:`StaticConv2d` carries its own backward (``aten.convolution_backward`` has no
   exporter): the exact input gradient written with forward convolutions and precomputed
   weights - 1x1: a 1x1 convolution with the transposed weight; depthwise: a depthwise
   correlation of the stride-dilated gradient with the flipped kernel; else: a transposed
   convolution - checked against autograd in the tests. The bilinear resizes are recorded as
   separable gathers with PyTorch's own coordinate arithmetic (:func:`resize_kernels`).

The result runs as a :class:`torch.fx.GraphModule` (the torch fused backend, ``torch.compile``
and CUDA graphs on a GPU) and exports with the dynamo ONNX exporter (:mod:`rtseg.graph.onnx`).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.graph.fold import fold_model
from rtseg.model.gradcam import GradCAM
from rtseg.model.manifest import resolve_layer
from rtseg.model.preprocess import frames_to_input

#: the backward seed of the fp16 graph: gradients are computed for ``FP16_GRAD_SCALE * z`` and the
#: raw CAM divided by it again in fp32 (Grad-CAM is linear in the seed), so small gradients do
#: not underflow in half precision
FP16_GRAD_SCALE = 1024.0

OUTPUT_NAMES = ("prob", "cam", "mask")
INPUT_NAME = "frames"


# 1. an inference copy of the network: BN folded, static padding, frozen: rtseg.graph.fold


# --------------------------------------------------------------------------------------------
# 2. the graph function: rtseg.model.gradcam's Grad-CAM definition, unchanged
# --------------------------------------------------------------------------------------------
class GraphGradCAM(GradCAM):
    """:class:`rtseg.model.gradcam.GradCAM` on a frozen network.

    With frozen parameters and an input that does not require grad, nothing in the forward
    pass requires grad; the hook makes the target layer's output a leaf that does, so
    ``autograd.grad(logits, acts, ones)`` in :meth:`BaseCAM.raw` differentiates exactly from the
    logit back to that layer (no weight gradients). Everything else is GradCAM's own code.
    For "head" (the Swish called for the stem and again for the head) the last call wins, as
    in GradCAM.
    """

    def _hook(self, module, inputs, output) -> None:
        if not output.requires_grad:
            output.requires_grad_(True)
        self._acts = output


class _GradScale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (fp16 graph only)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def fused_function(folded: nn.Module, manifest, layer: int | str,
                   dtype: torch.dtype = torch.float32) -> Callable:
    """frames uint8 [B, H, W, 3] BGR -> (prob [B], cam [B, S, S], mask uint8 [B, S, S]).

    ``folded`` is the network from :func:`fold_model` (in ``dtype``). In fp32 this is exactly
    the eager segmenter's computation; in fp16 the network and its backward run in half
    precision with a scaled gradient seed, preprocessing, normalisation and threshold in fp32.
    """
    m = manifest
    size = m.input_size
    half = dtype != torch.float32

    def fn(frames: torch.Tensor):
        x = frames_to_input(frames, size, m.mean, m.std, bgr=True, fov=m.fov_mask)
        handle = None
        if half:
            x = x.to(dtype)
            handle = folded._fc.register_forward_hook(
                lambda mod, a, out: _GradScale.apply(out, FP16_GRAD_SCALE))
        try:
            with GraphGradCAM(folded, layer, m.arch) as cam_op:
                if half:
                    logits, raw = cam_op.raw(x)
                    prob, cam = cam_op.finish(logits.float(), raw.float() / FP16_GRAD_SCALE, size)
                    prob, cam = prob.float(), cam.float()
                else:
                    prob, cam = cam_op(x)
        finally:
            if handle is not None:
                handle.remove()
        mask = m.threshold.apply(cam).to(torch.uint8)
        return prob, cam, mask

    return fn


# --------------------------------------------------------------------------------------------
# 3. tracing: forward + backward as one graph of plain operators
# --------------------------------------------------------------------------------------------
aten = torch.ops.aten


def _convolution_backward(grad_out, input, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    """Input gradient of a plain convolution as a transposed convolution.

    Used only by the unoptimised variant (``trace_fused(fold=False)``, kept for the benchmark's
    ablation): the folded network's convolutions (:class:`StaticConv2d`) carry their own,
    faster backward. Weight/bias gradients are never asked for (frozen parameters).
    """
    if transposed or output_mask[1] or output_mask[2]:
        raise RuntimeError("the fused graph must not compute weight gradients (parameters not frozen)")
    k = weight.shape[-2:]
    op = [input.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                + dilation[i] * (k[i] - 1) + 1) for i in range(2)]
    gi = F.conv_transpose2d(grad_out, weight, None, stride, padding, op, groups, dilation)
    return gi, None, None


def decompositions() -> dict:
    from torch._decomp import get_decompositions

    table = get_decompositions([aten.silu_backward, aten.sigmoid_backward,
                                aten.hardtanh_backward, aten.native_batch_norm_backward])
    table[aten.convolution_backward.default] = _convolution_backward
    return table


RESIZE_MODES = ("gather", "onnx", "decomposed")


def _interp_axis(x: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` to ``out_size`` (align_corners=False).

    The source coordinates are computed exactly as PyTorch's bilinear kernels do (float32:
    ``scale = in / out``, ``src = max(scale * (dst + 0.5) - 0.5, 0)``, ``i0 = floor(src)``,
    ``i1 = min(i0 + 1, in - 1)``, ``l1 = clamp(src - i0, 0, 1)``), the two taps gathered with
    ``index_select`` (ONNX ``Gather``).
    """
    in_size = x.shape[dim]
    scale = in_size / out_size
    d = torch.arange(out_size, device=x.device, dtype=torch.float32)
    src = ((d + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = src.to(torch.int64)  # floor: src >= 0
    l1 = (src - i0).clamp(0.0, 1.0)
    l0 = 1.0 - l1
    i1 = torch.clamp(i0 + 1, max=in_size - 1)
    shape = [1] * x.dim()
    shape[dim] = out_size
    a = x.index_select(dim, i0)
    b = x.index_select(dim, i1)
    return a * l0.view(shape).to(x.dtype) + b * l1.view(shape).to(x.dtype)


def bilinear_gather(input: torch.Tensor, output_size, align_corners: bool, scale_factors=None):
    """``F.interpolate(mode="bilinear", align_corners=False, size=...)`` as two separable
    gathers + blends; same coordinates as PyTorch's kernel (differences at rounding level)."""
    oh, ow = output_size
    return _interp_axis(_interp_axis(input, 2, int(oh)), 3, int(ow))


@contextlib.contextmanager
def resize_kernels(mode: str = "gather"):
    """How bilinear resizing (``F.interpolate`` in frames_to_input and normalize_cam) is recorded.

    - ``gather`` (default): :func:`bilinear_gather`: two ONNX ``Gather`` per axis and a blend,
      with PyTorch's own float32 coordinate arithmetic, so the graph matches eager to
      rounding level at any frame size;
    - ``onnx``: one ``upsample_bilinear2d`` (ONNX ``Resize``, linear, half_pixel). Same maths,
      but ONNX Runtime derives the coordinates differently (``(dst + 0.5) / (out / in) - 0.5``):
      at large downscales (720p -> 224) the float32 rounding of that differs from PyTorch's by
      ~1e-4 of a pixel, which this network amplifies to ~5e-4 in the CAM;
    - ``decomposed``: PyTorch's decomposition (index arithmetic + four 2-D gathers, ONNX
      ``GatherND``, slow in ONNX Runtime: ~15 ms for a 224 x 224 frame on 2 cores).

    Symbolic tracing runs PyTorch's Python kernels at the Autograd key; ``gather`` / ``onnx``
    swap them for the duration of the trace (and of the export). If this PyTorch has no such
    kernels, tracing keeps PyTorch's behaviour (the exactness tests would show it).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}")
    if mode == "decomposed":
        yield
        return
    from torch._C import DispatchKey

    def vec_whole(input, output_size, align_corners, scale_factors):
        from torch._decomp.decompositions import upsample_compute_output_size

        osize = upsample_compute_output_size(input.size(), output_size, scale_factors)
        scales = list(scale_factors) if scale_factors else [None, None]
        return aten.upsample_bilinear2d.default(input, osize, align_corners, *scales)

    saved = []
    originals = {}

    def vec_gather(input, output_size, align_corners, scale_factors):
        if output_size is not None and not align_corners and not scale_factors:
            return bilinear_gather(input, output_size, align_corners)
        return originals[aten.upsample_bilinear2d.vec](input, output_size, align_corners, scale_factors)

    if mode == "onnx":
        changes = [(aten.upsample_bilinear2d.vec, DispatchKey.Autograd, vec_whole),
                   (aten.upsample_bilinear2d.vec, DispatchKey.CompositeImplicitAutograd, vec_whole),
                   (aten.upsample_bilinear2d.default, DispatchKey.Autograd, None)]
    else:
        changes = [(aten.upsample_bilinear2d.vec, DispatchKey.Autograd, vec_gather),
                   (aten.upsample_bilinear2d.vec, DispatchKey.CompositeImplicitAutograd, vec_gather)]
    try:
        for op, key, fn in changes:
            kernels = op.py_kernels
            saved.append((op, key, kernels.get(key)))
            originals.setdefault(op, kernels.get(key))
            if fn is None:
                kernels.pop(key, None)
            else:
                kernels[key] = fn
            op._dispatch_cache.clear()
    except Exception:  # pragma: no cover - internal API changed: keep PyTorch's behaviour
        pass
    try:
        yield
    finally:
        for op, key, fn in reversed(saved):
            if fn is None:
                op.py_kernels.pop(key, None)
            else:
                op.py_kernels[key] = fn
            op._dispatch_cache.clear()


def example_frames(size: int, batch: int = 2, device="cpu") -> torch.Tensor:
    """Frames used for tracing: a size different from S, so the resize is in the graph.

    (Resizing S x S frames to S x S with ``align_corners=False`` is the identity, so the traced
    graph is exact for every frame size.)
    """
    return torch.zeros(batch, size + 17, size + 33, 3, dtype=torch.uint8, device=device)


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with frozen parameters (nothing folded)."""
    out = copy.deepcopy(model).float().eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def trace_fused(bundle, layer: int | str | None = None, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", folded: nn.Module | None = None,
                fold: bool = True, resize: str = "gather"):
    """The fused graph of ``bundle`` as a :class:`torch.fx.GraphModule` (symbolic B, H, W).

    Call it with uint8 BGR frames [B, H, W, 3] on ``device``; returns (prob, cam, mask).
    ``fold=False`` traces the unoptimised network (BatchNorm kept, autograd's convolution
    backward as transposed convolutions) - same function, slower; ``resize`` picks how the
    bilinear resizes are recorded (:func:`resize_kernels`). Both exist for the benchmark's
    ablation; the defaults are the fast, exact graph.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    m = bundle.manifest
    layer = resolve_layer(m, layer)
    if folded is None:
        folded = fold_model(bundle.model, m.input_size) if fold else frozen_copy(bundle.model)
    else:
        folded = copy.deepcopy(folded)
    folded = folded.to(device=device, dtype=dtype)
    fn = fused_function(folded, m, layer, dtype)
    frames = example_frames(m.input_size, device=device)
    with torch.no_grad(), resize_kernels(resize):
        gm = make_fx(fn, decomposition_table=decompositions(), tracing_mode="symbolic",
                     _allow_non_fake_inputs=True)(frames)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.rtseg_layer = layer
    gm.rtseg_dtype = dtype
    return gm


class FusedModule(nn.Module):
    """The traced graph as a module with one input (what the ONNX exporter is given)."""

    def __init__(self, gm) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, frames: torch.Tensor):
        return self.gm(frames)
