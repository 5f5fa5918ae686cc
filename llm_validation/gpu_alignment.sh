#!/usr/bin/env bash
# Gradient alignment on the GPU run of the pipeline (issue 6), in one device call.
#
#   bash llm_validation/gpu_alignment.sh RUN_DIR MODEL_PATH [OUT_DIR]
#
# RUN_DIR     the directory the pipeline's GPU script wrote (config.json, numbers/teacher.jsonl,
#             numbers/base.jsonl, teacher/ when the teacher was fine-tuned)
# MODEL_PATH  the base model, e.g. /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
# OUT_DIR     where results go (default RUN_DIR/alignment); the benchmark JSON goes there too
#
# Run it in the same environment as the pipeline's GPU script (gguf importable: loading a GGUF
# file needs it). Expected wall time on one H100/H200: ~1.5-2 minutes (model load ~10 s, scoring
# 3 x ALIGN_LIMIT examples ~20-40 s, screen: 5 LoRA students ~40-60 s, benchmark ~15 s).
# Knobs (environment): ALIGN_LIMIT (examples per data set, default 2000), SCREEN_EPOCHS (2),
# SCREEN (1 = run the screen), BENCH (1 = run the benchmark).
#
# Writes to OUT_DIR: config.json, summary.json, per_example_scores.csv, scores_*.npz,
# alignment_distribution_<animal>.png, alignment_per_layer_<animal>.png, screen.json,
# screen/<arm>/ (students), bench_alignment.json, align.log, and alignment_results.tar.gz (all of
# the small files in one archive: copy THAT to $OUT on the device). Also
# benchmarks/results/alignment_<gpu>.json in the repository.
set -euo pipefail
RUN_DIR=${1:?usage: gpu_alignment.sh RUN_DIR MODEL_PATH [OUT_DIR]}
MODEL=${2:?usage: gpu_alignment.sh RUN_DIR MODEL_PATH [OUT_DIR]}
OUT_DIR=${3:-$RUN_DIR/alignment}
ALIGN_LIMIT=${ALIGN_LIMIT:-2000}
SCREEN_EPOCHS=${SCREEN_EPOCHS:-2}
SCREEN=${SCREEN:-1}
BENCH=${BENCH:-1}
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 SUBLIM_QUIET=${SUBLIM_QUIET:-1}

# Make `import sublim.llm_validation` work without installing: the areas live in top-level
# folders mapped into the `sublim` namespace by pyproject; mirror that mapping with links.
if ! python -c "import sublim.llm_validation.alignment" 2>/dev/null; then
  SHIM=/tmp/sublim_shim
  rm -rf "$SHIM" && mkdir -p "$SHIM/sublim"
  for f in "$REPO"/sublim/*; do ln -s "$f" "$SHIM/sublim/$(basename "$f")"; done
  for area in theory toymodels kernels llm_validation; do ln -s "$REPO/$area" "$SHIM/sublim/$area"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

screen_flags=()
if [ "$SCREEN" = 1 ]; then screen_flags=(--screen --screen-epochs "$SCREEN_EPOCHS"); fi
start=$(date +%s)
python -c "import sys; from sublim.cli import main; sys.exit(main(sys.argv[1:]))" \
  llm align --run-dir "$RUN_DIR" --model "$MODEL" --out "$OUT_DIR" --limit "$ALIGN_LIMIT" \
  --batch-size 32 --max-length 128 "${screen_flags[@]}" 2>&1 | tee "$OUT_DIR/align.log"
echo "align: $(( $(date +%s) - start )) s" | tee -a "$OUT_DIR/align.log"

if [ "$BENCH" = 1 ]; then
  # default output: benchmarks/results/alignment_<gpu name>.json; a copy goes to OUT_DIR
  python "$REPO/benchmarks/bench_alignment.py" --model "$MODEL" --n 512 --naive-n 64 --batch-size 32 --k 6 \
    --threads 8 2>&1 | tee "$OUT_DIR/bench.log" | tee -a "$OUT_DIR/align.log"
  bench_json=$(sed -n 's/^wrote //p' "$OUT_DIR/bench.log" | tail -1)
  if [ -n "$bench_json" ]; then cp "$bench_json" "$OUT_DIR/bench_alignment.json"; fi
fi
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT_DIR/align.log"
# Everything small in one file, for the trip back from the device ($OUT takes at most 8 files):
# summaries, CSV, plots, logs, benchmark; not the npz arrays nor the students' weights.
tar -czf /tmp/alignment_results.tar.gz -C "$OUT_DIR" --exclude='*.npz' --exclude='screen' --exclude='*.tar.gz' .
mv /tmp/alignment_results.tar.gz "$OUT_DIR/alignment_results.tar.gz"
ls -la "$OUT_DIR/alignment_results.tar.gz"
