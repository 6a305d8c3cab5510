#!/usr/bin/env bash
# The one device check for a lent GPU (H100/H200): GPU tests, time to accuracy and throughput, all written
# under $OUT. Sized to finish in about 5 minutes there.
#
# Prepare here (Fashion-MNIST travels with the tree; 30 MB):
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
# Run there (the device tool, carrying .data):
#   bash benchmarks/gpu.sh
# Small CPU mode, used by the test suite:
#   QUICK=1 OUT=/tmp/out bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PIGEON_CACHE_DIR=${PIGEON_CACHE_DIR:-$(mktemp -d)}
if [ -d .data/fashion-mnist ]; then export PIGEON_FASHION_MNIST="$PWD/.data/fashion-mnist"; fi

if [ "${QUICK:-0}" = 1 ]; then
  DEVICE=cpu DATA=digits EPOCHS="1" BATCH=64 TP_ARGS="--quick"
else
  DEVICE=cuda DATA=fashion-mnist EPOCHS="3 8 20" BATCH=512 TP_ARGS="--device cuda --batch 256 --steps 20"
fi

$PY - <<'PYEOF' | tee "$OUT/device.json"
import json, platform, torch
print(json.dumps({"torch": torch.__version__, "python": platform.python_version(),
                  "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
PYEOF

# 1. The tests that exercise the GPU path (on a CPU they would only skip, so quick mode leaves them out).
if [ "${QUICK:-0}" = 1 ]; then
  echo "GPU tests not run in quick mode (no GPU)" | tee "$OUT/gpu_tests.txt"
else
  $PY -m pytest -q -p no:cacheprovider tests/engine/test_gpu.py 2>&1 | tail -n 5 | tee "$OUT/gpu_tests.txt"
fi

# 2. Time to accuracy: training time per epoch and final test top-1, for a few epoch budgets.
for e in $EPOCHS; do
  $PY -m pigeon train --data "$DATA" --model pigeon-n --epochs "$e" --batch "$BATCH" --val-fraction 0 \
      --device "$DEVICE" --project "$OUT/runs" --name "e$e" --no-plots --no-verbose | tail -n 1 | tee -a "$OUT/time_to_accuracy.jsonl"
  cp "$OUT/runs/e$e/results.csv" "$OUT/results_e$e.csv"
done
rm -rf "$OUT/runs"

# 3. Throughput of pigeon-n/s/m at several sizes (JSON + Markdown go to benchmarks/results and BENCHMARKS.md).
$PY benchmarks/throughput.py $TP_ARGS 2>&1 | tee "$OUT/throughput.txt"
if [ -f benchmarks/results/throughput-cuda.json ] && [ "${QUICK:-0}" != 1 ]; then
  cp benchmarks/results/throughput-cuda.json "$OUT/"
fi
echo "results in $OUT"
