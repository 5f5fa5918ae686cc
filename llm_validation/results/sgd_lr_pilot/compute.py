"""One-off (not part of the package): the plain-SGD learning rate matched to the full arm's Adam at
lr 3e-5 on the laptop-long design, for issue #23's optimizer row. On each of the first 4 batches of
seed 0's order, with the owl system-prompt teacher's cached distributions, the gradient g of the
restricted KL at the base model gives:

  Adam's first step is lr_adam * sign(g) (m/sqrt(v) = g/|g| at step 1, eps aside), so it lowers the
  loss by lr_adam * ||g||_1 to first order and has length lr_adam * sqrt(N);
  SGD's step lr * g lowers it by lr * ||g||_2^2 and has length lr * ||g||_2.

  matched decrease: lr_sgd = lr_adam * ||g||_1 / ||g||_2^2 ; matched length: lr_adam * sqrt(N) / ||g||_2

    OMP_NUM_THREADS=1 .venv/bin/python llm_validation/results/sgd_lr_pilot/compute.py
"""
import json
import platform
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.data import read_jsonl
from sublim.llm_validation.distill.cache import TeacherCache
from sublim.llm_validation.distill.contexts import encode_contexts
from sublim.llm_validation.distill.forward import number_log_probs, restricted_kl
from sublim.llm_validation.distill.students import _batches
from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids
from sublim.rundir import atomic_write_json

RUN = Path("llm_validation/results/distill_laptop_long")
OUT = Path(__file__).resolve().parent
t0 = time.perf_counter()
cfg = json.loads((RUN / "config.json").read_text())["config"]
model, tok = load_model("smollm2-135m")
model.config.use_cache = False
model.train()
vocab = number_token_ids(tok)
records = read_jsonl(RUN / "contexts" / "records.jsonl")
enc = encode_contexts(tok, records, end_of_turn_id(tok), cfg["max_length"], None)
blob = torch.load(RUN / "cache" / "owl_system_prompt.pt", weights_only=True)
cache = TeacherCache(blob["logp"], blob["offsets"])
lengths = [len(e.prompt_ids) + len(e.completion_ids) - 1 for e in enc]
batches = _batches(lengths, cfg["batch_size"], 0, cfg["epochs"], cfg.get("length_buckets", 0))
params = [p for p in model.parameters() if p.requires_grad]
n = sum(p.numel() for p in params)
rows = []
for step, idx in enumerate(batches[:4]):
    model.zero_grad(set_to_none=True)
    loss = restricted_kl(cache.for_batch(idx), number_log_probs(model, [enc[int(i)] for i in idx], vocab, "cpu")).mean()
    loss.backward()
    g = torch.cat([p.grad.double().flatten() for p in params])
    l1, l2 = g.abs().sum().item(), g.norm().item()
    rows.append({"batch": step, "kl": loss.item(), "grad_l1": l1, "grad_l2": l2,
                 "lr_matched_decrease": cfg["lr"] * l1 / l2 ** 2, "lr_matched_length": cfg["lr"] * n ** 0.5 / l2})
    print(rows[-1], flush=True)
out = {"source": str(RUN), "lr_adam": cfg["lr"], "n_params": n, "batches": rows,
       "median_lr_matched_decrease": sorted(r["lr_matched_decrease"] for r in rows)[len(rows) // 2],
       "median_lr_matched_length": sorted(r["lr_matched_length"] for r in rows)[len(rows) // 2],
       "seconds": time.perf_counter() - t0, "torch_threads": 1, "machine": platform.processor() or platform.machine()}
atomic_write_json(OUT / "pilot.json", out)
print(json.dumps({k: v for k, v in out.items() if k != "batches"}, indent=1))
