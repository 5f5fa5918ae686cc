#!/usr/bin/env bash
# Gradient alignment on the GPU run of the pipeline (issue 6), in one device call.
#
#   bash llm_validation/gpu_alignment.sh RUN_DIR MODEL_PATH [OUT_DIR]
#
# RUN_DIR     either one `sublim llm run` directory (config.json, numbers/teacher.jsonl,
#             numbers/base.jsonl, teacher/ when the teacher was fine-tuned, student/ + control/ when
#             fine-tuned) or the output folder of llm_validation/gpu_experiment.sh, which holds one
#             such directory per variant (A_system_prompt/, B_finetuned_teacher/): each is scored.
# MODEL_PATH  the base model, e.g. /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
# OUT_DIR     where results go (default RUN_DIR/alignment), one sub-folder per variant
#
# Run it in the same environment as the pipeline's GPU script (gguf importable: loading a GGUF
# file needs it). Expected wall time on one H100/H200: ~2 minutes with both variants (each:
# model load ~10 s, 6-7 directions, scoring 3 x ALIGN_LIMIT examples ~10-30 s, relating the
# pipeline's student/control ~5 s; the screen, first variant only: 5 LoRA students ~40-60 s;
# benchmark ~15-30 s incl. Triton compilation). Not measured on a GPU yet: CPU dry run only.
# Knobs (environment): ALIGN_LIMIT (examples per data set, default 2000), SCREEN_EPOCHS (2),
# SCREEN (1 = run the screen), SCREEN_ALL (1 = screen every variant), BENCH (1 = benchmark),
# BENCH_N (512) and BENCH_NAIVE_N (64): examples of the batched and the naive path.
#
# Writes to OUT_DIR/<variant>/: config.json, summary.json, per_example_scores.csv, scores_*.npz,
# alignment_distribution_<dir>.png, alignment_per_layer_<dir>.png, screen.json + screen/<arm>/;
# to OUT_DIR: align.log, bench.log, bench_alignment.json and alignment_results.tar.gz (every
# small file in one archive: copy THAT to $OUT on the device). Also
# benchmarks/results/alignment_<gpu>.json in the repository copy.
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

# RUN_DIR is either one pipeline run directory (config.json + numbers/) or the GPU experiment's
# output folder holding one per variant (A_system_prompt/, B_finetuned_teacher/).
if [ -f "$RUN_DIR/config.json" ] && [ -f "$RUN_DIR/numbers/teacher.jsonl" ]; then
  runs=("$RUN_DIR")
else
  runs=()
  for d in "$RUN_DIR"/*/; do
    if [ -f "$d/config.json" ] && [ -f "$d/numbers/teacher.jsonl" ] && [ -f "$d/numbers/base.jsonl" ]; then runs+=("${d%/}"); fi
  done
fi
if [ ${#runs[@]} -eq 0 ]; then echo "gpu_alignment: no run directory with numbers/teacher.jsonl and numbers/base.jsonl under $RUN_DIR" >&2; exit 2; fi

start=$(date +%s)
first=1
for run in "${runs[@]}"; do
  name=$(basename "$run")
  screen_flags=()
  # The screen (5 students) runs on the first variant only, unless SCREEN_ALL=1: it is the slow part.
  if [ "$SCREEN" = 1 ] && { [ $first = 1 ] || [ "${SCREEN_ALL:-0}" = 1 ]; }; then
    screen_flags=(--screen --screen-epochs "$SCREEN_EPOCHS")
  fi
  first=0
  echo "== align $name ($run) ==" | tee -a "$OUT_DIR/align.log"
  python -c "import sys; from sublim.cli import main; sys.exit(main(sys.argv[1:]))" \
    llm align --run-dir "$run" --model "$MODEL" --out "$OUT_DIR/$name" --limit "$ALIGN_LIMIT" \
    --batch-size 32 --max-length 192 "${screen_flags[@]}" 2>&1 | tee -a "$OUT_DIR/align.log" \
    || echo "align $name FAILED (see above); going on" | tee -a "$OUT_DIR/align.log"
  echo "align $name: $(( $(date +%s) - start )) s since start" | tee -a "$OUT_DIR/align.log"
done

if [ "$BENCH" = 1 ]; then
  # default output: benchmarks/results/alignment_<gpu name>.json; a copy goes to OUT_DIR
  python "$REPO/benchmarks/bench_alignment.py" --model "$MODEL" --n "${BENCH_N:-512}" --naive-n "${BENCH_NAIVE_N:-64}" --batch-size 32 --k 6 \
    --threads 8 2>&1 | tee "$OUT_DIR/bench.log" | tee -a "$OUT_DIR/align.log" || echo "benchmark FAILED" | tee -a "$OUT_DIR/align.log"
  bench_json=$(sed -n 's/^wrote //p' "$OUT_DIR/bench.log" | tail -1)
  if [ -n "$bench_json" ]; then cp "$bench_json" "$OUT_DIR/bench_alignment.json"; fi
fi
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT_DIR/align.log"
# Everything small in one file, for the trip back from the device ($OUT takes at most 8 files):
# summaries, CSV, plots, logs, benchmark; not the npz arrays nor the students' weights.
tar -czf /tmp/alignment_results.tar.gz -C "$OUT_DIR" --exclude='*.npz' --exclude='screen' --exclude='*.tar.gz' .
mv /tmp/alignment_results.tar.gz "$OUT_DIR/alignment_results.tar.gz"
ls -la "$OUT_DIR/alignment_results.tar.gz"
