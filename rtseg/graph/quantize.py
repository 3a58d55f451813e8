"""The int8 fused graph: the backbone's convolutions quantized, everything after them exact.

:func:`quantize_graph` turns an exported fp32 graph (:mod:`rtseg.graph.onnx`) into
``<name>.int8.onnx`` with ONNX Runtime's static quantization (QDQ format, per-channel int8
weights, uint8 activations whose ranges come from calibration frames). Only the backbone's
convolutions are quantized; the classifier, the Grad-CAM gradient, the segmentation head, the
resizes, the threshold and the mask logic stay fp32.

What "the backbone's convolutions" are is read from the graph's structure, not from node
names or positions (:func:`backbone_convs`): the ``Conv`` nodes upstream of the classifier's
fully connected layer (the graph's ``Gemm``), i.e. the forward pass that produces the
classifier's features. The head's convolutions (fed by backbone features, but never feeding
the classifier) and the convolutions of the Grad-CAM backward (downstream of the logits) are
not upstream of it. :class:`Int8Config` says which of them: by default those after the last
downsampling block only (rounding the earlier ones moves the shipped model's masks beyond the
quality gate), or all of them, and can keep more exact for experiments.

The calibration frames are the caller's ``reader`` (an ONNX Runtime ``CalibrationDataReader``):
the runtime builds it from the frames the user gives, through the segmenters' own view of a
frame (:mod:`rtseg.runtime.int8`); this package never imports the runtime.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rtseg.errors import UserError, first_line
from rtseg.graph.metadata import META_PRECISION

#: the precision stored in an int8 graph's metadata (``rtseg_precision``)
INT8 = "int8"


#: how activation ranges may be calibrated (ONNX Runtime's methods)
METHODS = ("minmax", "percentile")

#: what ``--int8`` quantizes: the backbone's blocks at its coarsest resolution (default: the part
#: of the backbone whose rounding keeps the shipped model's masks and calls within the quality
#: gate), or all of it
SCOPES = ("coarsest", "backbone")


@dataclass(frozen=True)
class Int8Config:
    """Which backbone convolutions are quantized.

    ``scope``: ``backbone`` = all of them; ``coarsest`` = those after the backbone's last
    downsampling block (the blocks at its coarsest resolution, then its final 1x1 convolution). Then the first ``keep_first`` and the last ``keep_last`` of those (in
    graph order) are kept fp32, and the depthwise ones unless ``depthwise``. ``method``: how
    activation ranges are calibrated, minmax or percentile (ONNX Runtime's, 99.999th).
    """

    scope: str = "coarsest"
    keep_first: int = 0
    keep_last: int = 0
    depthwise: bool = True
    method: str = "minmax"

    def describe(self) -> str:
        parts = [{"backbone": "backbone convs", "coarsest": "backbone convs after its last downsampling block"}[self.scope]]
        if self.keep_first:
            parts.append(f"first {self.keep_first} kept fp32")
        if self.keep_last:
            parts.append(f"last {self.keep_last} kept fp32")
        if not self.depthwise:
            parts.append("depthwise kept fp32")
        return ", ".join(parts + [f"{self.method} calibration"])


def int8_name(fp32_path: str | os.PathLike) -> Path:
    """``export/m.onnx`` -> ``export/m.int8.onnx``."""
    p = Path(fp32_path)
    return p.with_name(p.stem + ".int8.onnx")


def fp32_name(int8_path: str | os.PathLike) -> Path:
    """``export/m.int8.onnx`` -> ``export/m.onnx`` (the graph it was quantized from)."""
    p = Path(int8_path)
    stem = p.name[:-len(".int8.onnx")] if p.name.endswith(".int8.onnx") else p.stem
    return p.with_name(stem + ".onnx")


def _upstream(graph, targets: list) -> set[str]:
    """Names of the nodes whose outputs reach any node of ``targets`` (targets included)."""
    producer = {out: n for n in graph.node for out in n.output}
    seen: set[int] = set()
    stack = list(targets)
    names = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        names.add(n.name)
        stack.extend(producer[i] for i in n.input if i in producer)
    return names


def _is_depthwise(node) -> bool:
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


def _strided(node) -> bool:
    return any(a.name == "strides" and max(a.ints, default=1) > 1 for a in node.attribute)


def _after_last_downsampling(graph, convs: list) -> list:
    """``convs`` after the backbone's last downsampling block: after the last strided
    convolution and the convolution that takes its output (through an activation, if any):
    the blocks at the backbone's coarsest resolution and its final 1x1 convolution."""
    strided = [i for i, n in enumerate(convs) if _strided(n)]
    if not strided:
        return convs
    last = convs[strided[-1]]
    outs = {last.output[0]}
    outs |= {n.output[0] for n in graph.node if n.op_type in ("Clip", "Relu")
             and n.input[0] == last.output[0]}
    after = [i for i, n in enumerate(convs) if i > strided[-1] and n.input[0] in outs]
    return convs[(after[0] if after else strided[-1]) + 1:]


def backbone_convs(proto, config: Int8Config = Int8Config()) -> list[str]:
    """Names of the ``Conv`` nodes to quantize, in graph order (see the module doc)."""
    g = proto.graph
    fc = [n for n in g.node if n.op_type == "Gemm"]
    if not fc:
        raise UserError("cannot quantize this graph: it has no classifier layer (Gemm) to find "
                        "the backbone by")
    if any(not n.name for n in g.node if n.op_type == "Conv"):
        raise UserError("cannot quantize this graph: it has unnamed convolutions")
    upstream = _upstream(g, fc)
    convs = [n for n in g.node if n.op_type == "Conv" and n.name in upstream]
    if config.scope not in SCOPES:
        raise UserError(f"int8 scope must be one of {', '.join(SCOPES)}, not '{config.scope}'")
    if config.method not in METHODS:
        raise UserError(f"int8 calibration must be one of {', '.join(METHODS)}, not "
                        f"'{config.method}'")
    if config.scope == "coarsest":
        convs = _after_last_downsampling(g, convs)
    convs = convs[config.keep_first:len(convs) - config.keep_last]
    if not config.depthwise:
        convs = [n for n in convs if not _is_depthwise(n)]
    if not convs:
        raise UserError("cannot quantize this graph: no backbone convolution is left to quantize")
    return [n.name for n in convs]


def fused_activations(proto, convs: list[str]) -> list[str]:
    """The ``Clip`` / ``Relu`` nodes that are the only consumer of one of ``convs``' outputs.

    Quantized with their convolution, the quantizer folds them into its output's range (the
    activation's range, [0, 6] for ReLU6, not the convolution's raw one), as an int8 runtime
    fuses them; else the raw output would be rounded to a range most of which ReLU6 clips.
    """
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_name = {n.name: n for n in proto.graph.node}
    out = []
    for name in convs:
        users = consumers.get(by_name[name].output[0], [])
        if len(users) == 1 and users[0].op_type in ("Clip", "Relu") and users[0].name:
            out.append(users[0].name)
    return out


def quantize_graph(fp32_path: str | os.PathLike, out_path: str | os.PathLike, reader,
                   config: Int8Config = Int8Config()) -> list[str]:
    """Write the int8 graph of ``fp32_path`` to ``out_path`` (a plain write: the caller makes it
    atomic); returns the names of the quantized convolutions.

    ``reader``: an ONNX Runtime ``CalibrationDataReader`` yielding ``{"frames": views}``. The
    metadata of the fp32 graph is carried over with ``rtseg_precision`` = ``int8``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from rtseg.graph.onnx import save_proto

    proto = onnx.load(str(fp32_path))
    names = backbone_convs(proto, config)
    acts = fused_activations(proto, names)
    with _quiet():
        try:
            quantize_static(str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "Clip", "Relu"],
                            nodes_to_quantize=names + acts,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile":
                                              CalibrationMethod.Percentile}[config.method])
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"int8 quantization failed: {first_line(exc, 300)}") from None
    out = onnx.load(str(out_path))
    del out.metadata_props[:]
    for p in proto.metadata_props:
        entry = out.metadata_props.add()
        entry.key, entry.value = p.key, (INT8 if p.key == META_PRECISION else p.value)
    out.doc_string = proto.doc_string.replace("fp32", f"int8 ({config.describe()})")
    save_proto(out, out_path)
    return names


def quantized_convs(proto) -> set[str]:
    """Names of the ``Conv`` nodes of a QDQ graph whose weight comes through a
    ``DequantizeLinear`` (what :func:`quantize_graph` quantized)."""
    producer = {out: n for n in proto.graph.node for out in n.output}
    out = set()
    for n in proto.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1:
            src = producer.get(n.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                out.add(n.name)
    return out


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs to the root logger (advice to pre-process the graph first,
    per-tensor notes): keep its errors only."""
    lg = logging.getLogger()
    level = lg.level
    lg.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        lg.setLevel(level)
