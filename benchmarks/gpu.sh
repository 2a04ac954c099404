#!/usr/bin/env bash
# The GPU benchmarks in one go (about 5 minutes on one GPU), then every ratio line gathered at the end:
#   1. ResNet-50 extraction at 224 px (benchmarks/extract_resnet50.py, float16 autocast): store vs loop vs bare
#   2. guided feature inversion batched vs batch-1 (benchmarks/gfi.py) on a scenes CNN
#   3. the Serve load test (benchmarks/serve_load.py): batched vs unbatched, HTTP vs in-process
#
#   benchmarks/gpu.sh                 # on a GPU machine, real sizes
#   benchmarks/gpu.sh --device cpu    # dry run: tiny sizes, CPU, checks the plumbing (tests/benchmarks/test_gpu_sh.py)
#
# Output: each benchmark's own lines (prefixed by its name) and, last, a "ratios:" block with one line per ratio.
set -euo pipefail

DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    *) echo "usage: benchmarks/gpu.sh [--device cuda|cpu]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
WORK=$(mktemp -d /tmp/interp-ray-gpu-bench.XXXXXX)
LOG="$WORK/all.log"
trap 'rm -rf "$WORK"' EXIT

if [ "$DEVICE" = cuda ]; then
  EXTRACT=(--n 2000 --batch-size 256 --device cuda --float16-autocast --workers 8)
  GFI=(--n 32 --precision float32 --device cuda)
  SERVE=(--clients 32 --duration 10)
elif [ "$DEVICE" = cpu ]; then
  # tiny: a 32-px ResNet-50 over 6 JPEGs, GFI with 1+1 iterations over 2 images, 1-s Serve phases
  EXTRACT=(--n 6 --batch-size 3 --device cpu --workers 1 --image-size 32)
  GFI=(--n 2 --precision float32 --stage1 1 --stage2 1 --device cpu)
  SERVE=(--clients 2 --duration 1)
else
  echo "error: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2
fi

# GFI explains with a scenes CNN; random weights are enough for timing (benchmarks.gfi would train one otherwise)
"$PY" - "$WORK/scenes_cnn" <<'EOF'
import sys
from pathlib import Path
from benchmarks.extract import random_checkpoint
random_checkpoint(Path(sys.argv[1]), 64)
EOF

run() {  # name, command...: the command's stdout lines prefixed by name, also kept in the log
  local name=$1; shift
  echo "== $name: $*" | tee -a "$LOG"
  "$@" 2>"$WORK/$name.err" | sed -u "s/^/$name | /" | tee -a "$LOG" || { tail -20 "$WORK/$name.err" >&2; exit 1; }
}

T0=$SECONDS
run extract "$PY" -m benchmarks.extract_resnet50 "${EXTRACT[@]}"
run gfi "$PY" -m benchmarks.gfi --model "$WORK/scenes_cnn" "${GFI[@]}"
run serve "$PY" -m benchmarks.serve_load "${SERVE[@]}"
echo "wall_s: $((SECONDS - T0))"
echo "load_average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ratios:"
grep -E '^(extract|gfi|serve) \| .*(ratio|_vs_)' "$LOG" | sed 's/^/  /'
