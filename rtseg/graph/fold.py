"""An inference copy of the network that computes the same function, for the fused graph
(:mod:`rtseg.graph.fused`): every BatchNorm folded into the convolution before it (in float64,
then cast), every "same padding" convolution of efficientnet-pytorch replaced by a
:class:`StaticConv2d` with the padding it applies at the manifest's input size (symmetric padding
goes into the convolution, the few asymmetric ones keep an explicit zero pad), all parameters
frozen; checked against the original in eval mode before it is used. Also
:func:`cpu_flush_denormal`, which every CPU segmenter runs under.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import UserError


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


def _crop_pad(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """F.pad with (left, right, top, bottom) that may be negative (= crop), via pad + slice."""
    left, right, top, bottom = pads
    if any(p > 0 for p in pads):
        x = F.pad(x, [max(left, 0), max(right, 0), max(top, 0), max(bottom, 0)])
    if any(p < 0 for p in pads):
        h, w = x.shape[-2], x.shape[-1]
        x = x[..., max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0)]
    return x
