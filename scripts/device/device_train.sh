#!/usr/bin/env bash
# Trains efficientnet-b1 default-model candidates on a CUDA machine from the packed training cache.
# Prepared here with: python -m rtseg.recipes.paper prepare --data ../shared/data --work WORK
# (then the pack is copied to .carry/pack); efficientnet_pytorch travels in .carry/site.
# Each candidate's weights come back as fp16 (<= 16 MiB) with its manifest.
set -u
export PYTHONPATH="$PWD:$PWD/.carry/site" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/rtseg-out}
mkdir -p "$OUT"
log="$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$log"
train() {  # name, labels csv, epochs
  local name=$1 csv=$2 epochs=$3
  local t0=$SECONDS
  python3 -m rtseg train --labels "$csv" --out "/tmp/b_$name" --epochs "$epochs" --size 224 \
    --device cuda --val 60 --seed 0 2>&1 | grep -v "━" | tail -n 40 >> "$log"
  echo "$name: wall $((SECONDS - t0)) s" | tee -a "$log"
  python3 - "$name" "$OUT" <<'PY'
import sys, torch, shutil
name, out = sys.argv[1], sys.argv[2]
sd = torch.load(f"/tmp/b_{name}/weights.pt", map_location="cpu", weights_only=True)
torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, f"{out}/{name}_weights.pt")
shutil.copy(f"/tmp/b_{name}/manifest.json", f"{out}/{name}_manifest.json")
PY
}
train negtiles .carry/pack/labels_negtiles.csv 25
train whole .carry/pack/labels_whole.csv 25
train negtiles60 .carry/pack/labels_negtiles.csv 60
echo done | tee -a "$log"
