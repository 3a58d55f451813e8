#!/usr/bin/env bash
# Candidates for an efficientnet-b1 default model, in one run on a CUDA machine: train them from
# the packed training cache and judge each on the validation split (rtseg tune, then cam_diagnosis).
#
# Prepare here (CPU):
#   python -m rtseg.recipes.paper prepare --data ../shared/data --work runs/default
#   python experiments/seed_grid_tiles.py --work runs/default --out runs/default/pack --csv labels_grid3.csv
#   mkdir -p .carry/site && cp -r "$(python -c 'import efficientnet_pytorch,os;print(os.path.dirname(efficientnet_pytorch.__file__))')" .carry/site/
#   cp -r runs/default/pack .carry/pack && cp -rL runs/default/val .carry/val
# Run on the GPU machine, with .carry/site, .carry/pack and .carry/val copied (about 50 MB):
#   bash scripts/device/device_candidates.sh
# Back in $OUT, per candidate: NAME_weights.pt (fp16, the bundle's weights) and NAME.json
# (manifest, best tune rows, diagnosis), plus log.txt: at most 7 files in all.
# VARIANTS="name:labels csv in .carry/pack:epochs ..." picks the candidates; DEV=cpu QUICK=1
# checks the script on a CPU (tiny size, one epoch).
set -u
export PYTHONPATH="$PWD:$PWD/.carry/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/rtseg-out}
DEV=${DEV:-cuda}
QUICK=${QUICK:-0}
PY=${PY:-python3}
VARIANTS=${VARIANTS:-"whole:labels_whole.csv:25 grid3:labels_grid3.csv:25 grid3e60:labels_grid3.csv:60"}
SIZE=224 LIMIT=300
if [ "$QUICK" = 1 ]; then SIZE=64 LIMIT=600; fi
mkdir -p "$OUT"
log="$OUT/log.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee -a "$log"
for v in $VARIANTS; do
  IFS=: read -r name csv epochs <<< "$v"
  [ "$QUICK" = 1 ] && epochs=1
  b="/tmp/rtseg-cand-$name"
  rm -rf "$b"
  t0=$SECONDS
  echo "== $name: $csv, $epochs epochs, $SIZE px" | tee -a "$log"
  timeout "$LIMIT" $PY -m rtseg train --labels ".carry/pack/$csv" --out "$b" --epochs "$epochs" \
    --size "$SIZE" --device "$DEV" --val 60 --seed 0 2>&1 | grep -v "━" | tail -n 8 >> "$log"
  if [ ! -f "$b/weights.pt" ]; then echo "== $name: training failed" | tee -a "$log"; continue; fi
  timeout 240 $PY -m rtseg tune --model "$b" --images .carry/val/images --masks .carry/val/masks \
    --write --device "$DEV" --json "$b/tune.json" 2>&1 | grep -v "━" | tail -n 14 >> "$log"
  timeout 240 $PY experiments/cam_diagnosis.py --model "$b" --images .carry/val/images \
    --masks .carry/val/masks --json "$b/diag.json" 2>&1 | tail -n 14 >> "$log"
  $PY - "$b" "$OUT" "$name" <<'PY'
import json, sys, torch
from pathlib import Path
b, out, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
sd = torch.load(b / "weights.pt", map_location="cpu", weights_only=True)
torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, out / f"{name}_weights.pt")
def load(p):
    return json.loads(p.read_text()) if p.is_file() else None
tune, diag = load(b / "tune.json"), load(b / "diag.json")
if diag:
    diag.pop("per_image", None)
res = {"manifest": load(b / "manifest.json"), "tune_top": (tune or {}).get("rows", [])[:10], "diagnosis": diag}
(out / f"{name}.json").write_text(json.dumps(res, indent=1))
PY
  echo "== $name: $((SECONDS - t0)) s" | tee -a "$log"
done
echo done | tee -a "$log"
