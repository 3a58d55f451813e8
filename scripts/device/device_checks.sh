#!/usr/bin/env bash
# One-shot GPU checks of the speed of the fused export and of the stream, run once on a CUDA
# machine with a copy of this repository and the .carry/ folder prepared on the CPU machine:
#
#   python benchmarks/stream.py ../shared/data --save-clip .carry/cvc_clip.mp4 --clip-only
#   python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from _common import cvc_frames; \
#     from stream_sizes import build_clips; d = Path('../shared/data'); \
#     build_clips(d, Path('.carry'), [p for _, p in cvc_frames(d)])"   # .carry/cvc_1920x1080.mp4 (21 MB)
#   cp -r "$(python -c 'import efficientnet_pytorch,os;print(os.path.dirname(efficientnet_pytorch.__file__))')" .carry/site/
#   then, on the GPU machine (with .carry/):  bash scripts/device/device_checks.sh
#
# Writes fused_gpu.json, stream_gpu.json, stream_1080p_gpu.json, bench_gpu.json and log.txt into $OUT. Each step has
# its own time limit so that one stall cannot use up the GPU machine's time; DEV=cpu QUICK=1 runs
# the same steps briefly on a CPU (to check the script itself).
set -u
export PYTHONPATH="$PWD:$PWD/.carry/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RTSEG_CACHE=${RTSEG_CACHE:-/tmp/rtseg-cache}
OUT=${OUT:-/tmp/rtseg-out}
DEV=${DEV:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
log="$OUT/log.txt"
PY=${PY:-python3}
step() {  # seconds, name, command...
  local limit=$1 name=$2; shift 2
  local t0=$SECONDS
  echo "== $name" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | grep -v "━" | tail -n 80 >> "$log"
  echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1
} | tee -a "$log"
if [ "$QUICK" = 1 ]; then
  FUSED=(--sizes 224 --batches 1 --iters 3 --budget 1 --backends torch-fused,eager)
  STREAM=(--frames 20) HD=(--frames 20) BENCH=(--batch 1 --frames 8 --backend torch)
else
  FUSED=(--sizes 224,720p,1080p --batches 1,8,64 --iters 100 --budget 3)
  STREAM=(--frames 4000) HD=(--frames 428) BENCH=(--batch 1,8 --frames 500 --backend all)
fi
# 1. fused graph vs eager Grad-CAM vs pytorch-grad-cam, fp16 compile / CUDA graph
step 240 fused "$PY" benchmarks/fused.py --model rtseg/assets/default_model --device "$DEV" \
  "${FUSED[@]}" --json "$OUT/fused_gpu.json"
# 2. end to end on the CVC clip, torch backend (the decode thread must keep the GPU fed)
step 150 stream "$PY" benchmarks/stream.py --clip .carry/cvc_clip.mp4 --backend torch \
  --device "$DEV" "${STREAM[@]}" --json "$OUT/stream_gpu.json"
# 2b. the same frames as a 1920 x 1080 clip: the view is made on the CPU, the mask at 1080p
if [ -f .carry/cvc_1920x1080.mp4 ]; then
  step 120 stream_1080p "$PY" benchmarks/stream.py --clip .carry/cvc_1920x1080.mp4 --backend torch \
    --device "$DEV" "${HD[@]}" --json "$OUT/stream_1080p_gpu.json"
fi
# 3. rtseg bench, Table 2 rows beside the paper's
step 150 bench "$PY" -m rtseg bench --device "$DEV" "${BENCH[@]}" --json "$OUT/bench_gpu.json"
echo done | tee -a "$log"
