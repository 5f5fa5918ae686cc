#!/usr/bin/env bash
# One device call for issue 4 after the materialize-kernel rewrite and on-device auto-tuning:
# GPU tests of kernels/ (logs), then the full benchmark with a model-level profile. ~8-9 min on an H200.
#   run: bash benchmarks/device/kernels_tuned.sh      (the device tool sets $OUT)
# Never pipe through tail: a timeout kills the pipe and the output is lost; everything goes to $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || echo "PIP FAILED"
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
t0=$(date +%s)
timeout ${TESTS_S:-170} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_linear.py \
  tests/test_kernels_model.py > "$OUT/kernels_gpu_tests.log" 2>&1
echo "gpu tests rc=$? after $(( $(date +%s) - t0 )) s"; grep -E "passed|failed|error" "$OUT/kernels_gpu_tests.log" | tail -3
timeout ${BENCH_S:-330} python3 benchmarks/bench_kernels.py --reps 10 --warmup 2 --profile-model ${BENCH_ARGS:-} \
  > "$OUT/kernels_bench.log" 2>&1
echo "bench rc=$? after $(( $(date +%s) - t0 )) s"
cp benchmarks/results/kernels_*.csv benchmarks/results/kernels_*.json benchmarks/results/kernels_*.profile.txt "$OUT/" 2>/dev/null
grep -E "triton auto|ghost native|einsum materialize|g-times-D|model|device" "$OUT/kernels_bench.log" | cut -c1-150 | head -80
ls "$OUT"
