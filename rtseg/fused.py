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
   :func:`rtseg.preprocess.frames_to_input` (the one preprocessing path), then
   :class:`GraphGradCAM`, a subclass of :class:`rtseg.cam.GradCAM` that only changes *where* the
   activations come from (its hook makes the target layer's output the leaf the gradient is taken
   for, since frozen parameters leave nothing else requiring grad), so the forward, the
   ``torch.autograd.grad`` of the summed polyp logits, the Grad-CAM weights, the ReLU, and
   :func:`rtseg.cam.normalize_cam` are rtseg.cam's own code; then the manifest's
   :class:`~rtseg.thresholds.ThresholdPolicy` (torch version, otsu included).
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
and CUDA graphs on a GPU) and exports with the dynamo ONNX exporter (:mod:`rtseg.exporter`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.cam import GradCAM, normalize_cam
from rtseg.errors import UserError
from rtseg.model import check_layer
from rtseg.preprocess import frames_to_input

#: the backward seed of the fp16 graph: gradients are computed for ``FP16_GRAD_SCALE * z`` and the
#: raw CAM divided by it again in fp32 (Grad-CAM is linear in the seed), so small gradients do
#: not underflow in half precision
FP16_GRAD_SCALE = 1024.0

OUTPUT_NAMES = ("prob", "cam", "mask")
INPUT_NAME = "frames"


@contextlib.contextmanager
def cpu_flush_denormal(device="cpu"):
    """Flush denormal floats to zero while a CPU segmenter runs (restored afterwards).

    Gradients and Swish outputs of far-negative activations underflow into denormals; on x86
    each costs ~100 cycles: the eager Grad-CAM of a BN-calibrated b1 on synthetic 224 x 224
    frames measured 4.8 s per frame with denormals, 58 ms without. Values below 1.2e-38 become
    0, which no CAM can show.
    """
    if str(device) != "cpu":
        yield
        return
    ok = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if ok:
            torch.set_flush_denormal(False)


# --------------------------------------------------------------------------------------------
# 1. an inference copy of the network: BN folded, static padding, frozen
# --------------------------------------------------------------------------------------------
class _StaticConvFn(torch.autograd.Function):
    """A convolution whose backward computes only the input gradient, with forward convolutions.

    Tracing records this backward (plain convolutions with precomputed weights) instead of
    ``aten.convolution_backward``; parameters are frozen, so no weight gradient is ever needed.
    """

    @staticmethod
    def forward(ctx, x, conv):
        ctx.conv = conv
        return conv.conv(x)

    @staticmethod
    def backward(ctx, g):
        return ctx.conv.input_grad(g), None


class StaticConv2d(nn.Module):
    """A convolution with the fixed "same" padding of one input size (BN already folded in).

    ``input_grad`` is the exact adjoint (d conv / d input applied to a gradient) written with
    forward convolutions: 1x1 -> 1x1 with the transposed weight; depthwise -> depthwise
    correlation of the stride-dilated gradient with the flipped kernel; else a transposed
    convolution. The weights it needs are precomputed buffers (constants in the traced graph).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, dilation, groups: int,
                 pads: tuple[int, int, int, int], in_hw: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), int(groups)
        self.pads = tuple(int(p) for p in pads)  # left, right, top, bottom
        self.in_hw = tuple(int(v) for v in in_hw)
        left, right, top, bottom = self.pads
        self.symmetric = left == right and top == bottom
        c_out, c_in_g, kh, kw = weight.shape
        if (kh, kw) == (1, 1) and groups == 1 and self.stride == (1, 1) and not any(self.pads):
            self.kind = "pointwise"
            self.register_buffer("w_grad", weight.transpose(0, 1).contiguous(), persistent=False)
        elif groups == c_out and c_in_g == 1 and self.dilation == (1, 1):
            self.kind = "depthwise"
            self.register_buffer("w_grad", weight.flip(2, 3).contiguous(), persistent=False)
        else:
            self.kind = "general"
            self.w_grad = None

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.pads
        if self.symmetric:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        # asymmetric (stride 2 on an even size): explicit zero pad, as efficientnet-pytorch does
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _StaticConvFn.apply(x, self)
        return self.conv(x)

    def input_grad(self, g: torch.Tensor) -> torch.Tensor:
        """The gradient with respect to this convolution's (unpadded) input."""
        ih, iw = self.in_hw
        left, right, top, bottom = self.pads
        kh, kw = self.weight.shape[-2:]
        if self.kind == "pointwise":
            return F.conv2d(g, self.w_grad)
        if self.kind == "depthwise":
            oh, ow = g.shape[-2], g.shape[-1]
            sh, sw = self.stride
            if sh > 1 or sw > 1:  # insert s-1 zeros after every value (length o*s)
                g = F.pad(g[:, :, :, None, :, None], [0, sw - 1, 0, 0, 0, sh - 1])
                g = g.reshape(g.shape[0], g.shape[1], oh * sh, ow * sw)
            g = _crop_pad(g, [kw - 1 - left, iw + left - ow * sw, kh - 1 - top, ih + top - oh * sh])
            return F.conv2d(g, self.w_grad, None, 1, 0, 1, self.groups)
        # general: transposed convolution onto the padded input, then drop the padding
        ph, pw = ih + top + bottom, iw + left + right
        op = [ph - ((g.shape[-2] - 1) * self.stride[0] + self.dilation[0] * (kh - 1) + 1),
              pw - ((g.shape[-1] - 1) * self.stride[1] + self.dilation[1] * (kw - 1) + 1)]
        gi = F.conv_transpose2d(g, self.weight, None, self.stride, 0, op, self.groups, self.dilation)
        return gi[..., top:top + ih, left:left + iw]


def _same_pads(conv, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that ``conv`` applies to an input of size ``hw``.

    efficientnet-pytorch has two kinds: ``Conv2dStaticSamePadding`` (a ``ZeroPad2d`` computed
    once for the architecture's nominal image size, 240 for b1 - used whatever the real size)
    and ``Conv2dDynamicSamePadding`` (padding computed from the input size at run time).
    """
    if any(tuple(conv.padding)):
        raise UserError("unsupported convolution padding in the model")
    static = getattr(conv, "static_padding", None)
    if static is not None:
        if isinstance(static, nn.ZeroPad2d):
            return tuple(int(p) for p in static.padding)
        if isinstance(static, nn.Identity) or type(static).__name__ == "Identity":
            return (0, 0, 0, 0)
        raise UserError(f"unsupported padding module {type(static).__name__} in the model")
    ih, iw = hw
    kh, kw = conv.weight.shape[-2:]
    sh, sw = conv.stride
    dh, dw = conv.dilation
    oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
    pad_h = max((oh - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
    pad_w = max((ow - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def _folded(conv, bn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of ``bn(conv(x))`` as one convolution, computed in float64."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else None
    if bn is None:
        return w.float(), None if b is None else b.float()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    w = w * scale.view(-1, 1, 1, 1)
    b0 = b if b is not None else torch.zeros_like(scale)
    b = bn.bias.detach().double() + (b0 - bn.running_mean.detach().double()) * scale
    return w.float(), b.float()


#: (conv attribute, bn attribute) pairs of EfficientNet (efficientnet-pytorch): network / block
_NET_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"),
                ("_se_reduce", None), ("_se_expand", None))


def fold_model(model: nn.Module, input_size: int, check: bool = True) -> nn.Module:
    """A frozen eval-mode copy of ``model`` with BN folded and static padding for ``input_size``.

    The copy computes the same function as ``model`` in eval mode (checked on a test input
    unless ``check`` is False: a mismatch raises RuntimeError). ``model`` is not changed.
    """
    device = next(model.parameters()).device
    with cpu_flush_denormal(device.type):
        return _fold_model(model, input_size, check, device)


def _fold_model(model: nn.Module, input_size: int, check: bool, device) -> nn.Module:
    src = copy.deepcopy(model).float().eval()
    # input size seen by every convolution at this network input size
    sizes: dict[int, tuple[int, int]] = {}
    handles = [m.register_forward_pre_hook(lambda mod, a: sizes.__setitem__(id(mod), tuple(a[0].shape[-2:])))
               for m in src.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            src(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()

    out = copy.deepcopy(src)

    def replace(owner_src, owner_out, conv_name: str, bn_name: str | None) -> None:
        if not hasattr(owner_src, conv_name):
            return
        conv = getattr(owner_src, conv_name)
        bn = getattr(owner_src, bn_name) if bn_name else None
        w, b = _folded(conv, bn)
        pads = _same_pads(conv, sizes[id(conv)])
        setattr(owner_out, conv_name, StaticConv2d(w.to(device), None if b is None else b.to(device),
                                                   conv.stride, conv.dilation, conv.groups, pads,
                                                   sizes[id(conv)]))
        if bn_name:
            setattr(owner_out, bn_name, nn.Identity())

    for conv_name, bn_name in _NET_PAIRS:
        replace(src, out, conv_name, bn_name)
    for blk_src, blk_out in zip(src._blocks, out._blocks):
        for conv_name, bn_name in _BLOCK_PAIRS:
            replace(blk_src, blk_out, conv_name, bn_name)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if check:
        check_folded(src, out, input_size)
    return out


def check_folded(model: nn.Module, folded: nn.Module, input_size: int) -> float:
    """Relative difference of the head features of ``model`` and ``folded`` (eval mode).

    Raises RuntimeError above 1e-3 (float32 rounding gives ~1e-6 on a sane model).
    """
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    # a smooth test input (white noise drives a random-init model far out of its range)
    x = torch.randn(2, 3, 8, 8, generator=g)
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False).to(device)
    with torch.no_grad():
        a = model.extract_features(x)
        b = folded.extract_features(x)
        za, zb = model(x), folded(x)
    scale = a.abs().max().clamp_min(1e-12)
    rel = float(((a - b).abs().max() / scale).item())
    zrel = float(((za - zb).abs().max() / za.abs().max().clamp_min(1e-6)).item())
    if not (rel < 1e-3 and zrel < 1e-3):
        raise RuntimeError(f"BatchNorm folding changed the network (relative difference {rel:.2e})")
    return rel


# --------------------------------------------------------------------------------------------
# 2. the graph function: rtseg.cam's Grad-CAM definition, unchanged
# --------------------------------------------------------------------------------------------
class GraphGradCAM(GradCAM):
    """:class:`rtseg.cam.GradCAM` on a frozen network.

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


def resolve_layer(manifest, layer: int | str | None) -> int | str:
    """``layer`` (None = the manifest's), validated for the manifest's architecture."""
    return check_layer(manifest.arch, manifest.cam_layer if layer is None else layer)


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


def _crop_pad(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """F.pad with (left, right, top, bottom) that may be negative (= crop), via pad + slice."""
    left, right, top, bottom = pads
    if any(p > 0 for p in pads):
        x = F.pad(x, [max(left, 0), max(right, 0), max(top, 0), max(bottom, 0)])
    if any(p < 0 for p in pads):
        h, w = x.shape[-2], x.shape[-1]
        x = x[..., max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0)]
    return x


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
