#!/usr/bin/env bash
# One device session: the CUDA tests, the GPU benchmarks, the K-FAC step cost, the
# autoencoder experiment on the GPU and data-parallel K-FAC on NCCL. Run from the repository root on a CUDA machine that has
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

DOCS="$OUT/docs-results"
# Data-parallel K-FAC (issue 13), NCCL: one rank per GPU (NCCL refuses two ranks on one GPU, so
# on a one-GPU machine this is a world of one, which checks the launch path of the benchmark and
# of the main job on CUDA, not NCCL's collectives), then the step time of 1, 2 and 4 gloo ranks
# on this machine's CPU cores (16 on the H200 machine: one core per rank, unlike CI). DISTRIBUTED_ONLY=1 runs this part alone
# (about 4 minutes), e.g. as its own device command.
distributed() {
  GPUS=$(nvidia-smi -L | wc -l)
  timeout 120 python3 -m torch.distributed.run --nproc-per-node "$GPUS" benchmarks/distributed_step.py --device cuda \
    --batch 8192 --steps 8 --markdown "$DOCS/performance/distributed-nccl.md" 2>&1 \
    | tee "$OUT/distributed_nccl.txt"
  timeout 60 python3 -m torch.distributed.run --nproc-per-node "$GPUS" -m kronlin_nn.experiments.autoencoder \
    --device cuda --max-iterations 20 --optimizer kfac-blockdiag \
    --no-progress --out "$OUT/autoencoder-nccl" 2>&1 | tail -8 | tee "$OUT/autoencoder_nccl.txt"
  for W in 1 2 4; do
    timeout 60 python3 -m torch.distributed.run --nproc-per-node $W benchmarks/distributed_step.py --steps 6 \
      --markdown "$DOCS/performance/distributed-gloo-16-cores.md" 2>&1 | tail -9 \
      | tee -a "$OUT/distributed_gloo.txt"
  done
}
if [ "${DISTRIBUTED_ONLY:-0}" = 1 ]; then
  mkdir -p "$DOCS/performance" && distributed
  exit 0
fi

timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -40 | tee "$OUT/pytest_cuda.txt"
timeout 100 python3 benchmarks/gpu_bench.py --markdown "$DOCS/performance/compare-gpu.md" 2>&1 \
  | tee "$OUT/gpu_bench.txt"
timeout 100 python3 benchmarks/kfac_step_cost.py --device cuda --batch 8192 --cycles 1 \
  --markdown "$DOCS/performance/kfac-step-gpu.md" 2>&1 | tee "$OUT/kfac_step_cost.txt"
timeout 150 python3 -m kronlin_nn.experiments.autoencoder --device cuda --time-budget 30 \
  --no-progress --out "$DOCS/mnist-gpu" 2>&1 | tail -30 | tee "$OUT/autoencoder.txt"

distributed

echo "== summary =="
tail -1 "$OUT/pytest_cuda.txt"
[ -f "$OUT/gpu_bench.txt" ] && tail -15 "$OUT/gpu_bench.txt"
tail -24 "$OUT/kfac_step_cost.txt"
tail -12 "$OUT/autoencoder.txt"
[ -f "$OUT/distributed_nccl.txt" ] && tail -12 "$OUT/distributed_nccl.txt"
