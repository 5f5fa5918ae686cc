"""One-off (not part of the package; a script may use distill, the probes package may not): the
divergence-token counts on the committed lr pilot's owl and cat system-prompt caches (SmolLM2-135M,
96 laptop contexts), with the un-prompted base model's distributions computed here through
distill's own cache code on the same contexts.

    nice -n 10 .venv/bin/python llm_validation/results/probe_divergence/compute.py
"""
import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.data import read_jsonl
from sublim.llm_validation.distill.cache import compute_cache
from sublim.llm_validation.distill.contexts import encode_contexts
from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids
from sublim.llm_validation.core.divergence import divergence_report, random_mask_like, divergence_positions
from sublim.rundir import atomic_write_json

RUN = Path("llm_validation/results/dose_pilot_lr/lr_1e-4")
OUT = Path(__file__).resolve().parent
t0 = time.perf_counter()
cfg = json.loads((RUN / "config.json").read_text())["config"]
model, tok = load_model("smollm2-135m")
vocab = number_token_ids(tok)
records = read_jsonl(RUN / "contexts" / "records.jsonl")
enc = encode_contexts(tok, records, end_of_turn_id(tok), cfg["max_length"], None)
base = compute_cache(model.eval(), enc, vocab, "cpu", 8, "base cache")
owl = torch.load(RUN / "cache" / "owl_system_prompt.pt", weights_only=True)
cat = torch.load(RUN / "cache" / "cat_system_prompt.pt", weights_only=True)
assert owl["offsets"] == base.offsets == cat["offsets"], "the caches' contexts differ"
out = {"source": str(RUN), "n_contexts": len(records), "max_length": cfg["max_length"],
       "owl": divergence_report(owl["logp"], {"cat": cat["logp"], "base": base.logp}, base.logp),
       "cat": divergence_report(cat["logp"], {"owl": owl["logp"], "base": base.logp}, base.logp),
       "owl_vs_cat_only": int(divergence_positions(owl["logp"], [cat["logp"]]).sum()),
       "owl_vs_base_only": int(divergence_positions(owl["logp"], [base.logp]).sum()),
       "seconds": time.perf_counter() - t0, "torch_threads": 1}
atomic_write_json(OUT / "divergence.json", out)
print(json.dumps(out, indent=1))
