#!/usr/bin/env bash
# One device session: the CUDA tests, the GPU benchmarks, the K-FAC step cost and the
# autoencoder experiment on the GPU. Run from the repository root on a CUDA machine that has
# torch, numpy, scipy, numba and pytest; wheels missing there travel in .whl/.
# Writes logs under ${OUT:-gpu-results}/, the docs' result files under $OUT/docs-results/
# (copy them into docs/results/), and prints a short table last.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -40 | tee "$OUT/pytest_cuda.txt"
DOCS="$OUT/docs-results"
timeout 100 python3 benchmarks/gpu_bench.py --markdown "$DOCS/performance/compare-gpu.md" 2>&1 \
  | tee "$OUT/gpu_bench.txt"
timeout 100 python3 benchmarks/kfac_step_cost.py --device cuda --batch 8192 --cycles 1 \
  --markdown "$DOCS/performance/kfac-step-gpu.md" 2>&1 | tee "$OUT/kfac_step_cost.txt"
timeout 150 python3 -m kronlin_nn.experiments.autoencoder --device cuda --time-budget 30 \
  --no-progress --out "$DOCS/mnist-gpu" 2>&1 | tail -30 | tee "$OUT/autoencoder.txt"

echo "== summary =="
tail -1 "$OUT/pytest_cuda.txt"
[ -f "$OUT/gpu_bench.txt" ] && tail -15 "$OUT/gpu_bench.txt"
tail -24 "$OUT/kfac_step_cost.txt"
tail -12 "$OUT/autoencoder.txt"
