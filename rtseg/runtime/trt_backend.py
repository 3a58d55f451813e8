"""The TensorRT segmenter: runs a serialized engine built by ``rtseg export`` on a CUDA GPU.

The engine's manifest is read from the ``<engine>.json`` sidecar written beside it. Buffers are
PyTorch CUDA tensors; the engine runs on the current CUDA stream (``execute_async_v3``,
TensorRT >= 8.5 API).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from rtseg.errors import UserError
from rtseg.runtime.base import Segmenter, SegOutput, check_frames

log = logging.getLogger(__name__)


def tensorrt_available() -> bool:
    from rtseg.graph.tensorrt import tensorrt_status

    return tensorrt_status()[0]


class TrtSegmenter(Segmenter):
    name = "tensorrt"

    def __init__(self, engine: str | os.PathLike, device: str = "cuda") -> None:
        from rtseg.graph.metadata import read_engine_metadata
        from rtseg.graph.tensorrt import tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            raise UserError(f"the tensorrt backend needs TensorRT and a CUDA GPU: {why}")
        if not str(device).startswith("cuda"):
            raise UserError("the tensorrt backend runs on a CUDA device only")
        import tensorrt as trt
        import torch

        self.path = Path(engine)
        if not self.path.is_file():
            raise UserError(f"TensorRT engine not found: {self.path}")
        self.manifest, self.layer, self.precision, self.meta = read_engine_metadata(self.path)
        self.device = device
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(torch.device(device)):
            try:
                self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            except Exception:
                self.engine = None
            if self.engine is None:
                raise UserError(f"corrupt or incompatible TensorRT engine: {self.path}")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if not {"frames", "prob", "cam", "mask"} <= set(names):
            raise UserError(f"{self.path} is not an rtseg fused engine (tensors {names})")
        self._dtypes = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self.name = f"tensorrt-{self.precision}"

    def __call__(self, frames: np.ndarray) -> SegOutput:
        torch = self._torch
        frames = check_frames(frames)
        x = torch.from_numpy(frames).pin_memory().to(self.device, non_blocking=True)
        ctx = self.context
        if not ctx.set_input_shape("frames", tuple(x.shape)):
            raise UserError(f"frames {list(x.shape)} are outside the engine's optimisation profile "
                            f"{self.meta.get('profile')}")
        ctx.set_tensor_address("frames", x.data_ptr())
        outs = {}
        for name in ("prob", "cam", "mask"):
            shape = tuple(ctx.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            ctx.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return SegOutput(outs["prob"].float().cpu().numpy(), outs["cam"].float().cpu().numpy(),
                         outs["mask"].to(torch.uint8).cpu().numpy())

    def describe(self) -> str:
        return f"{self.name} on {self.device}, CAM layer {self.layer}"


def _torch_dtype(trt_dtype):
    import tensorrt as trt
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    if hasattr(trt, "uint8"):
        table[trt.uint8] = torch.uint8
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table.get(trt_dtype, torch.float32)
