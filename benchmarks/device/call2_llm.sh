#!/usr/bin/env bash
# Device call 2 of 2 (right after call 1, machine warm): reassemble SmolLM2, run the LLM experiment, then gradient alignment.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/tmp/site
M=/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
cat /tmp/models/part00 .carry/m2/part01 > $M && rm /tmp/models/part00
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $M" | sha256sum -c - || exit 3
t0=$(date +%s)
timeout ${LB:-200} bash llm_validation/gpu_experiment.sh $M /tmp/llm --budget-s ${LBB:-180} > $OUT/llm.log 2>&1
echo "llm rc=$? t=$(( $(date +%s)-t0 ))"; grep -v "it/s\]\|seq/s\]" $OUT/llm.log | tail -30 | cut -c1-250
ALIGN_LIMIT=${AL:-1000} SCREEN_EPOCHS=1 BENCH_N=256 BENCH_NAIVE_N=32 timeout ${AB:-120} bash llm_validation/gpu_alignment.sh /tmp/llm $M /tmp/align > $OUT/align.log 2>&1
echo "align rc=$? t=$(( $(date +%s)-t0 ))"; grep -v "it/s\]" $OUT/align.log | tail -25 | cut -c1-250
cp /tmp/align/alignment_results.tar.gz $OUT/ 2>/dev/null
(cd /tmp && tar czf $OUT/llm_results.tar.gz --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='checkpoint*' llm) ; ls -la $OUT
