#!/usr/bin/env bash
# Device call 1 of 2: stash the first half of the SmolLM2 GGUF; kernels GPU tests + benchmark.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/models && cp .carry/m1/part00 /tmp/models/part00 && echo "stashed part00"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && echo "gguf wheel ok"
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1 || { echo PIP-FAILED; tail -5 /tmp/pip.log; }
nvidia-smi -L; t0=$(date +%s)
timeout 50 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_linear.py tests/test_kernels_model.py > $OUT/kernels_gpu_tests.log 2>&1
echo "kernel gpu tests rc=$? t=$(( $(date +%s)-t0 ))"; tail -5 $OUT/kernels_gpu_tests.log
timeout ${KB:-90} python3 benchmarks/bench_kernels.py --reps 10 --warmup 2 > $OUT/kernels_bench.log 2>&1
echo "kernel bench rc=$? t=$(( $(date +%s)-t0 ))"; tail -40 $OUT/kernels_bench.log | cut -c1-220
cp benchmarks/results/kernels_*.csv benchmarks/results/kernels_*.json $OUT/ 2>/dev/null; ls $OUT
