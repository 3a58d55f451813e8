"""Speed of the fused forward + Grad-CAM graph per runtime backend, against two baselines.

For each backend available on the device, at batch 1 and 8, on frames of 224 x 224 (the
network's input size for the default model: no resize), 1280 x 720 and 1920 x 1080: latency
per call (median, min, max in ms) and throughput (frames/s at the median). Baselines, on the
same device and frames:

- ``pytorch-grad-cam``: Grad-CAM the way the pytorch-grad-cam library computes it - a trainable
  model (requires_grad parameters), a forward hook keeping the activations and a tensor hook
  keeping their gradient, ``model.zero_grad()`` and a full ``loss.backward()`` that computes
  every weight gradient, then the CAM on the CPU in numpy (per-image min-max, ``cv2.resize``)
  and the threshold in numpy;
- ``eager``: rtseg's eager Grad-CAM (:class:`rtseg.runtime.torch_eager.EagerSegmenter`).

Ratios are median latencies of the baseline over the backend's (same size and batch). Before
timing, each backend's output is compared with the eager fp32 Grad-CAM on the same device
(TF32 off; the pytorch-grad-cam row differs by definition: it normalises before resizing). A
backend that cannot run here is skipped with a note; a failure in one cell is recorded and the
run goes on. ``--ablation`` also times the optimisation steps of the ONNX Runtime path (one
export each). Without ``--model`` a random-init EfficientNet-b1 with BatchNorm statistics
calibrated on synthetic frames is used (speed does not depend on the weights, but a
degenerate eval-mode network produces denormal floats that distort CPU timings).

Examples::

    python benchmarks/fused.py --json fused_bench.json
    python benchmarks/fused.py --device cuda --sizes 224,1080p --json fused_gpu.json \
        --backends torch-fused-fp16-graph,eager,pytorch-grad-cam,torch-fused-fp16-compile,onnxruntime,tensorrt
    python benchmarks/fused.py --sizes 224 --batches 1 --backends onnxruntime,pytorch-grad-cam --ablation
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

SIZES = {"224": (224, 224), "720p": (720, 1280), "1080p": (1080, 1920)}
CPU_BACKENDS = ("onnxruntime", "torch-fused", "eager", "pytorch-grad-cam")
CUDA_BACKENDS = ("tensorrt", "torch-fused-fp16-compile", "torch-fused-fp16-graph",
                 "torch-fused-fp32-graph", "onnxruntime", "eager", "pytorch-grad-cam")


from rtseg.errors import first_line  # noqa: E402
# the pytorch-grad-cam baseline and the device name come from rtseg.live.bench (one definition)
from rtseg.live.bench import PytorchGradCamBaseline, device_name  # noqa: E402


def make_frames(hw: tuple[int, int], n: int = 8) -> np.ndarray:
    from rtseg.synthetic import clip_frames

    return np.stack(list(clip_frames(n, hw, seed=0)))


def time_calls(fn: Callable, frames: np.ndarray, batch: int, iters: int, budget_s: float,
               warmup: int = 3) -> dict[str, Any]:
    """Median/min/max latency of ``fn(batch frames)`` over up to ``iters`` timed calls."""
    n = len(frames)
    xs = [np.ascontiguousarray(np.stack([frames[(i * batch + j) % n] for j in range(batch)]))
          for i in range(max(2, min(iters, 4)))]
    t0 = time.perf_counter()
    for i in range(warmup):
        fn(xs[i % len(xs)])
    warm_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    for i in range(iters):
        t = time.perf_counter()
        fn(xs[i % len(xs)])
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    ms = np.asarray(times) * 1000
    med = float(np.median(ms))
    return {"median_ms": med, "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "fps": batch * 1000.0 / med, "iters": len(times), "warmup_s": warm_s}


def calibrated_default_bundle(size: int = 224):
    import torch

    from rtseg.train.calibrate import calibrate_bn
    from rtseg.model.bundle import new_bundle

    torch.manual_seed(0)
    return calibrate_bn(new_bundle(input_size=size))


def build_backend(name: str, bundle, device: str, cache: str | None):
    """A segmenter-like callable for ``name``; raises with a reason when it cannot run."""
    if name == "pytorch-grad-cam":
        return PytorchGradCamBaseline(bundle, device)
    if name == "eager":
        import copy

        from rtseg.runtime.torch_eager import EagerSegmenter

        return EagerSegmenter(copy.deepcopy(bundle), device)  # it moves and hooks the model
    if name == "onnxruntime":
        from rtseg.graph.onnx import cached_onnx
        from rtseg.runtime.onnx_backend import OnnxSegmenter

        half = device.startswith("cuda")
        return OnnxSegmenter(cached_onnx(bundle, None, half, cache=cache), device, half)
    if name == "tensorrt":
        from rtseg.graph.onnx import cached_onnx
        from rtseg.graph.tensorrt import build_engine, tensorrt_status
        from rtseg.runtime.trt_backend import TrtSegmenter

        ok, why = tensorrt_status()
        if not ok:
            raise RuntimeError(why)
        onnx_path = cached_onnx(bundle, None, False, cache=cache)
        engine = onnx_path.with_suffix(".engine")
        if not engine.is_file():
            s = bundle.manifest.input_size
            build_engine(onnx_path, engine, [(s, s), (1280, 720), (1920, 1080)], [1, 8], fp16=True)
        return TrtSegmenter(engine, device)
    if name.startswith("torch-fused"):
        from rtseg.runtime.torch_fused import FusedTorchSegmenter

        parts = name.split("-")  # torch-fused[-fp16|-fp32][-mode]
        fp16 = "fp16" in parts
        mode = parts[-1] if parts[-1] in ("compile", "graph", "plain") else "auto"
        if not device.startswith("cuda"):
            fp16, mode = False, "plain"
        return FusedTorchSegmenter(bundle, device, fp16, None, mode=mode)
    raise RuntimeError(f"unknown backend {name}")


# --------------------------------------------------------------------------------------------
# ablation of the ONNX Runtime path
# --------------------------------------------------------------------------------------------
ABLATION_STEPS = (
    ("naive export, ORT basic", dict(fold=False, resize="decomposed", optimize=False),
     "autograd's conv backward (ConvTranspose), BatchNorm kept, PyTorch's resize decomposition "
     "(GatherND), no ONNX optimizer; ORT basic optimisations"),
    ("naive export, ORT all", dict(fold=False, resize="decomposed", optimize=False),
     "the same, ORT all optimisations (NCHWc layout, fusions)"),
    ("+ onnxscript optimizer", dict(fold=False, resize="decomposed"),
     "constant folding and dead-code removal at export"),
    ("+ BN folded, forward-conv backward", dict(fold=True, resize="decomposed"),
     "BatchNorm folded into the convolutions, static padding, conv backward as 1x1 / depthwise "
     "convolutions with precomputed weights"),
    ("+ resize as ONNX Resize", dict(fold=True, resize="onnx"),
     "one Resize op (ORT's coordinate arithmetic: ~5e-4 CAM difference at 720p)"),
    ("+ resize as separable Gathers (final)", dict(fold=True, resize="gather"),
     "two Gathers per axis with PyTorch's coordinates: what `rtseg export` writes"),
    ("final, ORT basic", "final", "ORT graph optimisation level basic"),
    ("final, ORT extended", "final", "ORT extended (no NCHWc layout transformation)"),
    ("final, 1 intra-op thread", "final", "intra_op_num_threads=1"),
    ("final, no thread spinning", "final", "session.intra_op.allow_spinning=0"),
    ("final, saved ORT-optimised model", "final",
     "optimized_model_filepath written once, loaded with optimisations off (session start)"),
)


def run_ablation(bundle, iters: int, budget: float, console, tmpdir: str,
                 check_frames=None, reference=None, rounds: int = 3) -> list[dict[str, Any]]:
    """Each step of the ONNX Runtime path, timed round-robin (``rounds`` rounds) at batch 1.

    A step's figure is its best round's median latency (all rounds are in the JSON).
    """
    import onnxruntime as ort

    from rtseg.graph.onnx import onnx_model_proto, save_proto
    from rtseg.runtime.onnx_backend import cpu_cores

    s = bundle.manifest.input_size
    frames = make_frames((s, s), 4)
    levels = ort.GraphOptimizationLevel

    def session(path, level=levels.ORT_ENABLE_ALL, threads=None, spin=True, save_to=None):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = threads or cpu_cores()
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if save_to:
            so.optimized_model_filepath = save_to
        t = time.perf_counter()
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return sess, time.perf_counter() - t

    steps = []  # (label, what, session, session start s, export s)
    exported: dict[str, tuple[str, float]] = {}
    final = None
    for label, kw, what in ABLATION_STEPS:
        if kw == "final":
            path, export_s = final
            if "basic" in label:
                sess, st = session(path, levels.ORT_ENABLE_BASIC)
            elif "extended" in label:
                sess, st = session(path, levels.ORT_ENABLE_EXTENDED)
            elif "1 intra-op" in label:
                sess, st = session(path, threads=1)
            elif "spinning" in label:
                sess, st = session(path, spin=False)
            else:
                opt_path = os.path.join(tmpdir, "ablation-ort-optimised.onnx")
                session(path, save_to=opt_path)
                sess, st = session(opt_path, levels.ORT_DISABLE_ALL)
        else:
            key = repr(sorted(kw.items()))
            if key not in exported:
                path = os.path.join(tmpdir, f"ablation-{len(exported)}.onnx")
                t = time.perf_counter()
                save_proto(onnx_model_proto(bundle, None, False, **kw), path)
                exported[key] = (path, time.perf_counter() - t)
            path, export_s = exported[key]
            level = levels.ORT_ENABLE_BASIC if "ORT basic" in label else levels.ORT_ENABLE_ALL
            sess, st = session(path, level)
            final = (path, export_s)
        steps.append((label, what, sess, st, export_s))
    per_round = max(3, iters // rounds)
    timings: dict[str, list[float]] = {label: [] for label, *_ in steps}
    for _ in range(rounds):
        for label, _, sess, _, _ in steps:
            time.sleep(0.05)  # let the previous session's threads stop spinning
            r = time_calls(lambda x: sess.run(None, {"frames": x}), frames, 1, per_round, budget / rounds)
            timings[label].append(r["median_ms"])
    rows = []
    for label, what, sess, st, export_s in steps:
        # best round: the steps share the machine with whatever else runs on it
        med = float(np.min(timings[label]))
        row = {"step": label, "what": what, "median_ms": med, "fps": 1000.0 / med,
               "round_medians_ms": timings[label], "session_start_s": st, "export_s": export_s}
        if reference is not None:
            row["cam_max_vs_eager"] = max(
                float(np.abs(sess.run(["cam"], {"frames": f})[0] - ref.cam).max())
                for f, ref in zip(check_frames, reference))
        rows.append(row)
        console.print(f"  {label:40s} {med:7.1f} ms  {1000 / med:6.1f} fps", markup=False)
    return rows


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Examples::"):])
    ap.add_argument("--model", help="Bundle folder (default: random-init b1, BN calibrated).")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N].")
    ap.add_argument("--json", help="Write the results as JSON (atomically).")
    ap.add_argument("--iters", type=int, default=20, help="Timed calls per cell (at most).")
    ap.add_argument("--budget", type=float, default=8.0, help="Seconds per cell (at least 3 calls).")
    ap.add_argument("--sizes", default="224,720p,1080p", help="Frame sizes: 224, 720p, 1080p, or HxW.")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--backends", default=None, help="Comma-separated (default: all for the device).")
    ap.add_argument("--layer", default=None, help="CAM layer (default: the manifest's).")
    ap.add_argument("--ablation", action="store_true", help="Also time the ORT optimisation steps.")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: cores).")
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="Skip comparing each backend's output with the eager Grad-CAM first.")
    args = ap.parse_args(argv)

    import tempfile

    import torch
    from rich.console import Console
    from rich.table import Table

    from rtseg.atomic import ensure_parent, write_json
    from rtseg.errors import UserError
    from rtseg.model.manifest import with_layer
    from rtseg.model.bundle import load_bundle, resolve_device

    console = Console()
    try:
        dev = resolve_device(args.device)
        if args.json:
            ensure_parent(args.json)
        sizes = {}
        for tok in args.sizes.split(","):
            tok = tok.strip()
            if tok in SIZES:
                sizes[tok] = SIZES[tok]
            elif "x" in tok and all(p.isdigit() for p in tok.split("x")):
                h, w = (int(p) for p in tok.split("x"))
                sizes[tok] = (h, w)
            else:
                raise UserError(f"unknown size '{tok}' (224, 720p, 1080p or HxW)")
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        if args.iters < 1 or not batches or min(batches) < 1:
            raise UserError("--iters and --batches must be positive")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(args.threads or cores)
        # every torch backend and baseline runs with denormals flushed (the rtseg segmenters
        # do it themselves on CPU); without it PyTorch on CPU is up to 80x slower on these
        # frames, which would inflate the ratios
        torch.set_flush_denormal(True)
        if args.model:
            bundle = load_bundle(args.model)
            model_note = f"bundle {args.model}"
        else:
            bundle = calibrated_default_bundle()
            model_note = "random-init efficientnet-b1, BatchNorm calibrated on synthetic frames"
        if args.layer is not None:
            bundle.manifest = with_layer(bundle.manifest, args.layer)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    cuda = dev.startswith("cuda")
    names = [b.strip() for b in args.backends.split(",")] if args.backends else \
        list(CUDA_BACKENDS if cuda else CPU_BACKENDS)
    s = bundle.manifest.input_size
    console.print(f"device: {dev} ({device_name(dev)}); model: {model_note}; input {s}x{s}, "
                  f"CAM layer {bundle.manifest.cam_layer}; torch {torch.__version__}", markup=False)

    results: dict[str, Any] = {
        "device": dev, "device_name": device_name(dev), "model": model_note, "input_size": s,
        "cam_layer": bundle.manifest.cam_layer, "torch": torch.__version__,
        "python": platform.python_version(), "rows": [], "skipped": {}, "errors": [],
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import onnxruntime

        results["onnxruntime"] = onnxruntime.__version__
    except Exception:
        pass
    frames = {k: make_frames(hw) for k, hw in sizes.items()}
    check_frames = [make_frames((224, 224), 2), make_frames((720, 1280), 2)]
    reference = None
    if args.check:  # eager fp32 Grad-CAM on the same device, without TF32
        import copy

        from rtseg.runtime.torch_eager import EagerSegmenter

        if cuda:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        ref_seg = EagerSegmenter(copy.deepcopy(bundle), dev)
        reference = [ref_seg(f) for f in check_frames]
        ref_seg.close()
        del ref_seg
    results["checks"] = {}
    tmp = tempfile.TemporaryDirectory(prefix="rtseg-bench-")
    cache = None  # the export cache ($RTSEG_CACHE or ~/.cache/rtseg): exports are not timed
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                seg = build_backend(name, bundle, dev, cache)
            except Exception as exc:  # unavailable here: note it, go on
                why = first_line(exc)
                results["skipped"][name] = why
                console.print(f"skipped {name}: {why}", markup=False)
                continue
            setup_s = time.perf_counter() - t0
            console.print(f"{name}: {getattr(seg, 'describe', lambda: name)()} (setup {setup_s:.1f} s)",
                          markup=False)
            if reference is not None:
                try:
                    t1 = time.perf_counter()
                    got = [seg(f) for f in check_frames]
                    first_s = time.perf_counter() - t1
                    c = {"cam_max": max(float(np.abs(g.cam - r.cam).max()) for g, r in zip(got, reference)),
                         "cam_mean": float(np.mean([np.abs(g.cam - r.cam).mean() for g, r in zip(got, reference)])),
                         "prob_max": max(float(np.abs(g.prob - r.prob).max()) for g, r in zip(got, reference)),
                         "mask_agree": float(np.mean([(g.mask == r.mask).mean() for g, r in zip(got, reference)])),
                         "first_calls_s": first_s}
                    results["checks"][name] = c
                    console.print(f"  vs eager fp32: max |cam diff| {c['cam_max']:.2e}, mean "
                                  f"{c['cam_mean']:.2e}, max |prob diff| {c['prob_max']:.2e}, masks "
                                  f"agree {c['mask_agree']:.2%}", markup=False)
                except Exception as exc:
                    msg = f"{name} check: {type(exc).__name__}: {first_line(exc, 200, '')}"
                    results["errors"].append(msg)
                    console.print(f"  error {msg}", markup=False)
            for size_name, fr in frames.items():
                for b in batches:
                    try:
                        r = time_calls(seg, fr, b, args.iters, args.budget)
                    except Exception as exc:
                        msg = f"{name} {size_name} b{b}: {type(exc).__name__}: {first_line(exc, 200, '')}"
                        results["errors"].append(msg)
                        console.print(f"  error {msg}", markup=False)
                        if os.environ.get("RTSEG_BENCH_TRACEBACK"):
                            traceback.print_exc()
                        continue
                    row = {"backend": name, "size": size_name, "frame_hw": list(sizes[size_name]),
                           "batch": b, "setup_s": setup_s, **r}
                    results["rows"].append(row)
                    console.print(f"  {size_name:>6} b{b}: median {r['median_ms']:8.2f} ms  "
                                  f"{r['fps']:8.1f} frames/s  ({r['iters']} calls)", markup=False)
            del seg
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            if args.json:  # partial results survive a run cut short
                write_json(args.json, results)
        if args.ablation:
            console.print("ablation of the ONNX Runtime path (CPU, batch 1, "
                          f"{s}x{s} frames):", markup=False)
            try:
                results["ablation"] = run_ablation(bundle, args.iters, args.budget, console, tmp.name,
                                                   check_frames, reference)
            except Exception as exc:
                results["errors"].append(f"ablation: {type(exc).__name__}: {first_line(exc)}")
                console.print(f"  ablation failed: {exc}", markup=False)
    finally:
        tmp.cleanup()

    # ratios against the baselines (same size and batch)
    def med(backend, size, b):
        for r in results["rows"]:
            if r["backend"] == backend and r["size"] == size and r["batch"] == b:
                return r["median_ms"]
        return None

    for r in results["rows"]:
        for base in ("pytorch-grad-cam", "eager"):
            m = med(base, r["size"], r["batch"])
            r[f"x_vs_{base}"] = (m / r["median_ms"]) if m else None

    table = Table(title=f"fused Grad-CAM, {results['device_name']} ({dev}), input {s}x{s}")
    for col in ("backend", "frames", "batch", "median ms", "min ms", "max ms", "frames/s",
                "x pytorch-grad-cam", "x eager"):
        table.add_column(col, justify="left" if col in ("backend", "frames") else "right")
    for r in results["rows"]:
        fmt = (lambda v: f"{v:.1f}x" if v else "-")
        table.add_row(r["backend"], r["size"], str(r["batch"]), f"{r['median_ms']:.2f}",
                      f"{r['min_ms']:.2f}", f"{r['max_ms']:.2f}", f"{r['fps']:.1f}",
                      fmt(r["x_vs_pytorch-grad-cam"]), fmt(r["x_vs_eager"]))
    console.print(table)
    if results["checks"]:
        ct = Table(title="output vs eager fp32 Grad-CAM (224x224 and 1280x720 frames, batch 2)")
        for col in ("backend", "max |cam diff|", "mean |cam diff|", "max |prob diff|", "masks agree"):
            ct.add_column(col, justify="left" if col == "backend" else "right")
        for k, c in results["checks"].items():
            ct.add_row(k, f"{c['cam_max']:.2e}", f"{c['cam_mean']:.2e}", f"{c['prob_max']:.2e}",
                       f"{c['mask_agree']:.2%}")
        console.print(ct)
    if results.get("ablation"):
        at = Table(title="ONNX Runtime path: optimisation steps (batch 1, best of 3 rounds)")
        for col in ("step", "median ms", "frames/s", "session start s", "max |cam diff| vs eager"):
            at.add_column(col, justify="left" if col == "step" else "right")
        for r in results["ablation"]:
            d = r.get("cam_max_vs_eager")
            at.add_row(r["step"], f"{r['median_ms']:.1f}", f"{r['fps']:.1f}", f"{r['session_start_s']:.2f}",
                       "-" if d is None else f"{d:.1e}")
        console.print(at)
    for k, v in results["skipped"].items():
        console.print(f"note: {k} skipped: {v}", markup=False)
    for e in results["errors"]:
        console.print(f"note: error: {e}", markup=False)
    results["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    console.print(f"load average (1 min) at start {results['loadavg_start'][0]:.1f}, at end "
                  f"{results['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs", markup=False)
    if args.json:
        write_json(args.json, results)
        console.print(f"wrote {args.json}", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
