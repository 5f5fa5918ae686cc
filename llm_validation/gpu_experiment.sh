#!/usr/bin/env bash
# The whole SmolLM2-135M subliminal-learning experiment on one GPU (see gpu_experiment.py).
#   llm_validation/gpu_experiment.sh MODEL_PATH OUT_DIR [--budget-s 290] [--tiny] [--skip-b] [--set k=v]
# Works with the project pip-installed, or straight from a copy of the repository: when
# `sublim.llm_validation` is not importable, a symlink shim maps the folders to the package names.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 MODEL_PATH OUT_DIR [--budget-s S] [--tiny] [--skip-b] [--set key=value]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
if ! "$PY" -c "import sublim.llm_validation.pipeline" 2>/dev/null; then
  SHIM="$(mktemp -d)/shim"
  mkdir -p "$SHIM/sublim"
  for f in "$REPO"/sublim/*.py; do ln -s "$f" "$SHIM/sublim/"; done
  for area in theory toymodels kernels llm_validation; do ln -s "$REPO/$area" "$SHIM/sublim/$area"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m sublim.llm_validation.pipeline.gpu_experiment "$@"
