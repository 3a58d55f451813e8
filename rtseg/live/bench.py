"""``rtseg bench``: speed of each runtime backend against the pytorch-grad-cam way of doing it.

Rows in the layout of the paper's Table 2 (Av-time, Mi-time, Ma-time [ms]; Av-fps, Mi-fps,
Ma-fps), plus the median, next to the paper's reported figures (reference rows) and the speed-up
over the baseline at the same batch size (ratio of median frame times). Given an int8 graph
(``<name>.int8.onnx`` from ``rtseg export --int8``), the onnxruntime rows time the fp32 graph
beside it (``<name>.onnx``) in the same run too, and each int8 row says its speed-up over the
fp32 row of the same batch and frame (``x fp32``).

Without ``--source`` the segmenter alone is timed on generated 384 x 288 frames and on generated
1920 x 1080 frames with black side margins (a 1080p endoscopy feed; one call per batch; frame
time = call time / batch). Each 1080p row comes with the same segmenter timed the way rtseg
did it before the frame was resized on the CPU (``in-graph resize``: the active area cut out
at full resolution and resized inside the graph), measured in the same run. With ``--source`` the whole loop (decode, inference,
overlay) runs headless through :func:`rtseg.live.loop.run_stream`. Warm-up runs are excluded.

:class:`PytorchGradCamBaseline` is the reference: Grad-CAM computed as the pytorch-grad-cam
library does it (what the paper used): trainable parameters, a forward hook storing the
activations and a tensor hook storing their gradient, ``model.zero_grad()`` and a full
``loss.backward(retain_graph=True)`` that also computes every weight gradient, then the CAM in
numpy (per-image min-max, then ``cv2.resize`` to the input size).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Sequence

import cv2
import numpy as np

from rtseg.errors import UserError
from rtseg.live.stats import TABLE2_FIELDS, RunningStats, table2
from rtseg.runtime.base import Segmenter, SegOutput, check_frames

FRAME_HW = (288, 384)  # generated frames: CVC-ClinicDB size
HD_HW = (1080, 1920)  # ... and a 1080p feed: the 4:3 view scaled to 1080 rows, black margins
# The paper's Table 2 (MediaEval 2021 Medico, real-time task): reported frame rates.
PAPER_FPS = (("paper, Table 2 run A", 9.34), ("paper, Table 2 run B", 11.00))
BACKEND_CHOICES = ("all", "torch", "torch-eager", "torch-fused", "onnxruntime", "tensorrt")


class PytorchGradCamBaseline(Segmenter):
    """Grad-CAM the way pytorch-grad-cam computes it (see the module doc). A Segmenter."""

    name = "baseline-gradcam"

    def __init__(self, bundle, device: str = "cpu", layer: int | str | None = None) -> None:
        import copy

        from rtseg.model.gradcam import target_module
        from rtseg.model.manifest import with_layer

        self.manifest = with_layer(bundle.manifest, layer)
        self.device = device
        # a trainable copy: the bundle's own model stays as other backends expect it
        self.model = copy.deepcopy(bundle.model).to(device).eval()
        for p in self.model.parameters():  # a trainable model, as handed to pytorch-grad-cam
            p.requires_grad_(True)
        self.activations: list = []
        self.gradients: list = []
        target = target_module(self.model, self.manifest.cam_layer)
        self._handles = [target.register_forward_hook(self._save_activation),
                         target.register_forward_hook(self._save_gradient)]

    # --- pytorch-grad-cam's ActivationsAndGradients -----------------------------------------
    def _save_activation(self, module, inputs, output) -> None:
        self.activations.append(output.cpu().detach())

    def _save_gradient(self, module, inputs, output) -> None:
        if not getattr(output, "requires_grad", False):
            return

        def _store_grad(grad):
            self.gradients = [grad.cpu().detach()] + self.gradients

        output.register_hook(_store_grad)

    def __call__(self, frames: np.ndarray) -> SegOutput:
        import torch

        from rtseg.model.preprocess import frames_to_input

        m = self.manifest
        x = torch.from_numpy(check_frames(frames)).to(self.device)
        x = frames_to_input(x, m.input_size, m.mean, m.std, bgr=True, fov=m.fov_mask)
        self.activations, self.gradients = [], []
        with torch.enable_grad():
            outputs = self.model(x)
            self.model.zero_grad()
            loss = sum(o[0] for o in outputs)  # ClassifierOutputTarget(0) per image
            loss.backward(retain_graph=True)
        acts = self.activations[-1].numpy()  # "head": the last call of the shared Swish
        grads = self.gradients[-1].numpy()  # prepended in backward order: head's comes last
        weights = grads.mean(axis=(2, 3))
        cam = np.maximum((weights[:, :, None, None] * acts).sum(axis=1), 0)
        s = m.input_size
        cams = np.empty((cam.shape[0], s, s), np.float32)
        for i, c in enumerate(cam):  # scale_cam_image
            c = c - c.min()
            c = c / (1e-7 + c.max())
            cams[i] = cv2.resize(c.astype(np.float32), (s, s))
        prob = torch.sigmoid(outputs.detach().reshape(-1)).cpu().numpy().astype(np.float32)
        mask = np.asarray(m.threshold.apply(cams), dtype=np.uint8)
        return SegOutput(prob, cams, mask)

    def describe(self) -> str:
        return f"{self.name} (pytorch-grad-cam style, full backward) on {self.device}"

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# --- timing --------------------------------------------------------------------------------
def device_name(device: str) -> str:
    """A human name for the device the timings ran on."""
    if device.startswith("cuda"):
        import torch

        try:
            return torch.cuda.get_device_name(torch.device(device))
        except Exception:
            return device
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def generated_frames(n: int = 16) -> list[np.ndarray]:
    from rtseg.synthetic import clip_frames

    return list(clip_frames(n, FRAME_HW, seed=0))


def hd_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``frames`` scaled to 1080 rows and centred in 1920 x 1080 black frames."""
    h, w = HD_HW
    vw = round(FRAME_HW[1] * h / FRAME_HW[0])
    out = []
    for f in frames:
        big = np.zeros((h, w, 3), np.uint8)
        x0 = (w - vw) // 2
        big[:, x0:x0 + vw] = cv2.resize(f, (vw, h), interpolation=cv2.INTER_LINEAR)
        out.append(big)
    return out


class InGraphResize(Segmenter):
    """``seg`` fed the way rtseg did before the CPU resize: the active area (found once per
    frame size, as the stream's old box cache did) cut out at full resolution and handed to the
    graph, which resized it itself."""

    def __init__(self, seg) -> None:
        self.seg = seg
        self.inner = getattr(seg, "inner", seg)
        self.manifest, self.device, self.name = seg.manifest, seg.device, seg.name
        self._boxes: dict = {}

    def __call__(self, frames: np.ndarray) -> SegOutput:
        from rtseg.model.active_area import Box, crop, detect_box

        frames = check_frames(frames)
        key = frames.shape[1:3]
        if key not in self._boxes:
            self._boxes[key] = detect_box(frames[0]) if getattr(self.manifest, "active_area", False) \
                else Box.full(key)
        box = self._boxes[key]
        views = np.stack([crop(f, box) for f in frames])
        return self.inner(views)

    def warmup(self, height: int, width: int, batch: int = 1, runs: int = 3) -> None:
        super().warmup(height, width, batch, runs)
        self._boxes.clear()  # the warm-up's noise frames are lit everywhere: not the feed's box


def time_model(seg, frames: Sequence[np.ndarray], batch: int, n_frames: int,
               warmup: int = 3) -> dict[str, Any]:
    """Time ``seg`` alone: ceil(n_frames / batch) calls; per-frame time = call time / batch."""
    h, w = frames[0].shape[:2]
    seg.warmup(h, w, batch, runs=warmup)
    st = RunningStats()
    calls = max(1, -(-n_frames // batch))
    k = 0
    wall = 0.0
    for _ in range(calls):
        x = np.stack([frames[(k + j) % len(frames)] for j in range(batch)])
        k += batch
        t0 = time.perf_counter()
        seg(x)
        dt = time.perf_counter() - t0
        wall += dt
        st.add(dt / batch, batch)
    return {**table2(st, wall), "frames": st.count}


def time_loop(seg, source: str, batch: int, n_frames: int) -> dict[str, Any]:
    """Time the whole headless loop (decode -> segmenter -> overlay) on ``source``."""
    from rtseg.live.loop import StreamConfig, run_stream

    cfg = StreamConfig(source=source, headless=True, max_frames=n_frames, batch=batch, loop=True,
                       quiet=True, log_every=0)
    out = run_stream(cfg, segmenter=seg)
    if out.interrupted:  # the loop stopped cleanly on a signal: the benchmark stops too
        import signal

        from rtseg.shutdown import Interrupted

        raise Interrupted(getattr(signal, out.signal or "SIGINT", signal.SIGINT))
    res = out.stats
    return {**res["table2"], "frames": res["frames_processed"], "stages_ms": res["stages_ms"]}


def parse_batches(text: str) -> list[int]:
    try:
        out = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise UserError(f"--batch must be a comma-separated list of integers, not '{text}'") from None
    if not out or any(b < 1 or b > 256 for b in out):
        raise UserError(f"--batch values must be 1..256: '{text}'")
    return out


def run_bench(model: str | None = None, backend: str = "all", size: int | None = None,
              batches: Sequence[int] = (1, 8), frames: int = 200, source: str | None = None,
              device: str = "auto", baseline: bool = True, json_path: str | None = None,
              console=None, threads: int = 0) -> dict[str, Any]:
    """Run the benchmark; print the table; return (and optionally write) the results."""
    from rtseg.atomic import check_out_file, write_json
    from rtseg.model.bundle import resolve_device
    from rtseg.runtime.loader import backends_here, check_model, create
    from rtseg.ui import make_console

    console = console or make_console()
    if backend not in BACKEND_CHOICES:
        raise UserError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, not '{backend}'")
    if frames < 1:
        raise UserError("--frames must be at least 1")
    if size is not None and not 32 <= size <= 1024:
        raise UserError("--size must be 32..1024")
    if json_path:
        check_out_file(json_path, "--json")
    if source is not None:
        from rtseg.live.capture import open_source

        open_source(source).close()  # fail early on a bad source
    dev = resolve_device(device)
    avail = backends_here(dev)
    if backend == "all":
        backends = list(avail)
    elif backend not in avail and not (backend.startswith("torch-") and "torch" in avail):
        raise UserError(f"backend '{backend}' is not available here (available: {', '.join(avail)})")
    else:
        backends = [backend]

    check_model(model)

    mode = "loop" if source else "model"
    frame_pool = None if source else generated_frames()
    rows: list[dict[str, Any]] = []

    hd_pool = None if source else hd_frames(frame_pool)

    def bench_one(seg, label: str, kind: str) -> None:
        if size is not None and seg.manifest.input_size != size:
            raise UserError(f"the model's input size is {seg.manifest.input_size}, not --size {size}")
        for b in batches:
            console.print(f"timing {label} batch {b} ({mode}) ...", markup=False)
            r = time_loop(seg, source, b, frames) if source else time_model(seg, frame_pool, b, frames)
            row = {"kind": kind, "backend": seg.name, "device": seg.device, "batch": b,
                   "mode": mode, "input_size": seg.manifest.input_size,
                   "precision": getattr(seg, "precision", None)}
            frame = None if source else "x".join(map(str, FRAME_HW[::-1]))
            rows.append({"label": f"{label} b{b}", **row, "frame": frame, **r})
            if source or kind == "baseline":
                continue
            hd = "x".join(map(str, HD_HW[::-1]))
            for suffix, s in (("", seg), (" in-graph resize", InGraphResize(seg))):
                console.print(f"timing {label} batch {b} {hd}{suffix} ...", markup=False)
                rows.append({"label": f"{label} b{b} {hd}{suffix}", **row, "frame": hd,
                             "variant": suffix.strip(), **time_model(s, hd_pool, b, frames)})

    for name in backends:
        for path, label in models_to_time(model, name, console):
            seg = create(path, name, dev, threads=threads)
            bench_one(seg, label, "backend")
            _close(seg)
            del seg
    if baseline:
        from pathlib import Path

        from rtseg.model.bundle import resolve_bundle

        if model is not None and not Path(model).is_dir():
            console.print("baseline skipped: it needs a bundle folder (torch weights)")
        else:
            seg = PytorchGradCamBaseline(resolve_bundle(model, "cpu"), dev)
            bench_one(seg, "baseline", "baseline")
            seg.close()

    base = {(r["batch"], r.get("frame")): r["Med-time"] for r in rows if r["kind"] == "baseline"}
    for r in rows:
        b = base.get((r["batch"], r.get("frame")))
        r["x_baseline"] = (b / r["Med-time"]) if b and r["Med-time"] else None
    relative_to_fp32(rows)
    paper = [{"label": lab, "kind": "paper", "Av-fps": fps, "Av-time": 1000.0 / fps}
             for lab, fps in PAPER_FPS]
    import torch

    result = {
        "mode": mode, "source": source, "frames_per_row": frames, "device": dev,
        "device_name": device_name(dev), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "frame_size": [FRAME_HW[1], FRAME_HW[0]] if not source else None,
        "hd_frame_size": [HD_HW[1], HD_HW[0]] if not source else None,
        "rows": rows, "paper": paper,
    }
    print_bench(console, result)
    if json_path:
        write_json(json_path, result)
    return result


def models_to_time(model, backend: str, console) -> list[tuple]:
    """(model, row label) pairs for ``backend``: an int8 graph comes with the fp32 graph beside
    it, timed in the same run (its label says each one's precision)."""
    from pathlib import Path

    from rtseg.graph.metadata import read_onnx_metadata
    from rtseg.graph.quantize import INT8, fp32_name

    if backend != "onnxruntime" or model is None or Path(model).suffix.lower() != ".onnx":
        return [(model, backend)]
    if read_onnx_metadata(model)[2] != INT8:
        return [(model, backend)]
    fp32 = fp32_name(model)
    if fp32 == Path(model) or not fp32.is_file():
        console.print(f"no fp32 graph {fp32.name} beside {Path(model).name}: the int8 rows "
                      "have no same-run fp32 figure", markup=False)
        return [(model, f"{backend} int8")]
    return [(fp32, f"{backend} fp32"), (model, f"{backend} int8")]


def relative_to_fp32(rows: list[dict]) -> None:
    """``x_fp32`` of each int8 row: the fp32 row's median time (same batch, frame and variant,
    same run) over its own."""
    def key(r: dict) -> tuple:
        return r["batch"], r.get("frame"), r.get("variant", "")

    fp32 = {key(r): r["Med-time"] for r in rows if r.get("precision") == "fp32"}
    for r in rows:
        if r.get("precision") == "int8" and fp32.get(key(r)) and r["Med-time"]:
            r["x_fp32"] = fp32[key(r)] / r["Med-time"]


def _close(seg) -> None:
    close = getattr(seg, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass


def print_bench(console, result: dict[str, Any]) -> None:
    from rich.table import Table

    what = ("whole loop on " + str(result["source"])) if result["mode"] == "loop" else \
        (f"segmenter alone on generated {result['frame_size'][0]}x{result['frame_size'][1]} "
         "frames and 1920x1080 ones with black margins")
    t = Table(title=f"rtseg bench: {what}\n(Table 2 layout, times in ms per frame; warm-up "
                    "excluded; x baseline = ratio of median times)")
    t.add_column("run", no_wrap=True)
    t.add_column("frame", justify="right")
    t.add_column("S", justify="right")
    for k in TABLE2_FIELDS[:3]:
        t.add_column(k, justify="right")
    t.add_column("Med-time", justify="right")
    for k in TABLE2_FIELDS[3:]:
        t.add_column(k, justify="right")
    t.add_column("x baseline", justify="right")
    vs_fp32 = any("x_fp32" in r for r in result["rows"])
    if vs_fp32:
        t.add_column("x fp32", justify="right")

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    for r in result["rows"]:
        t.add_row(r["label"], r.get("frame") or "-", str(r["input_size"]),
                  *(f(r[k]) for k in TABLE2_FIELDS[:3]),
                  f(r["Med-time"]), *(f(r[k]) for k in TABLE2_FIELDS[3:]),
                  f(r.get("x_baseline")) + ("x" if r.get("x_baseline") else ""),
                  *([f(r.get("x_fp32")) + ("x" if r.get("x_fp32") else "")] if vs_fp32 else []))
    for r in result["paper"]:
        t.add_row(r["label"], "-", "-", f(r["Av-time"]), "-", "-", "-", f(r["Av-fps"]), "-", "-", "-",
                  *(["-"] if vs_fp32 else []), style="dim")
    console.print(t)
    console.print(f"device: {result['device']} ({result['device_name']}); torch {result['torch']} "
                  f"({result['torch_threads']} threads); "
                  f"{result['frames_per_row']} frames per row; the paper's rows ran on its own "
                  "hardware (Av-time derived from its fps)", markup=False)

