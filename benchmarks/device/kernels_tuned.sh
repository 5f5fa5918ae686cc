#!/usr/bin/env bash
# One device call for issue 4 (materialize kernel without spills, on-device auto-tuning, per-step
# result buffers): the benchmark first (with a model-level profile), then the GPU tests of kernels/,
# new code paths first. ~6 min on an H200 with a cold Triton cache.
#   run: bash benchmarks/device/kernels_tuned.sh      (the device tool sets $OUT)
# Never pipe through tail: a timeout kills the pipe and the output is lost; everything goes to $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || echo "PIP FAILED"
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
t0=$(date +%s)
timeout ${BENCH_S:-240} python3 benchmarks/bench_kernels.py --reps 10 --warmup 2 --profile-model ${BENCH_ARGS:-} \
  > "$OUT/kernels_bench.log" 2>&1
echo "bench rc=$? after $(( $(date +%s) - t0 )) s"
cp benchmarks/results/kernels_*.csv benchmarks/results/kernels_*.json benchmarks/results/kernels_*.profile.txt "$OUT/" 2>/dev/null
timeout ${TESTS1_S:-100} python3 -m pytest -v -p no:cacheprovider -m gpu tests/test_kernels_model.py \
  tests/test_kernels_linear.py -k "model or candidate or tuning" > "$OUT/kernels_gpu_tests_new.log" 2>&1
echo "gpu tests (new paths) rc=$? after $(( $(date +%s) - t0 )) s"
timeout ${TESTS2_S:-70} python3 -m pytest -v -p no:cacheprovider -m gpu tests/test_kernels_linear.py \
  -k "not candidate and not tuning" > "$OUT/kernels_gpu_tests_rest.log" 2>&1
echo "gpu tests (rest) rc=$? after $(( $(date +%s) - t0 )) s"
grep -cE "PASSED" "$OUT"/kernels_gpu_tests_*.log; grep -E "FAILED|ERROR" "$OUT"/kernels_gpu_tests_*.log | head -20
grep -E "triton auto|ghost native|einsum materialize|g-times-D|model|device" "$OUT/kernels_bench.log" | cut -c1-140 | head -90
ls "$OUT"
