#!/usr/bin/env bash
# The full-scale Fashion-MNIST study on one GPU (H100-class): 9 methods x 5 seeds, eight runs packed onto the GPU
# (spaces/studies/fashion_mnist_gpu.yaml: gpus_per_trial 0.125). Expected: ~8 minutes including start-up.
# Needs Debian's dataset-fashion-mnist (or Fashion-MNIST's four idx .gz files under DATA_ROOT).
#   bash bench/gpu_study.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gce-study-fashion_mnist_gpu}
SETS=()
if [ -n "${DATA_ROOT:-}" ]; then SETS+=(--set "base.data.root=$DATA_ROOT"); fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
gce-search study fashion_mnist_gpu --out "$OUT" "${SETS[@]}"
end=$(date +%s)
echo "wall: $((end - start)) s for 45 runs"
python - "$OUT" <<'PY'
import json, sys
rows = json.load(open(f"{sys.argv[1]}/runs.json"))
print(f"{len(rows)} result rows")
PY
