#!/usr/bin/env bash
# GPU entry for kernels/ (issue 4): GPU tests, then the benchmark. Expected ~3 min on an H100/H200.
#   bash benchmarks/gpu_kernels.sh
# Writes benchmarks/results/kernels_<gpu>.csv and .json (also copied to $OUT when set), and prints
# the pytest summary and one line per measurement.
set -u
cd "$(dirname "$0")/.."
python -c "import sublim.kernels" 2>/dev/null || pip install -q --no-deps --no-build-isolation -e . || true
if python -c "import pytest" 2>/dev/null; then
  timeout 240 python -m pytest -q -p no:cacheprovider -m "gpu or interpreter" tests/test_kernels_linear.py tests/test_kernels_model.py 2>&1 | tail -40
else
  echo "pytest not installed: skipping the GPU tests (the benchmark still checks correctness)"
fi
python benchmarks/bench_kernels.py "$@"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; cp benchmarks/results/kernels_*.csv benchmarks/results/kernels_*.json "$OUT"/ 2>/dev/null || true; fi
