"""One-off (not part of the package): plain SGD from the base model for the first 6 steps of seed 0's
batch order on the laptop-long design (owl system-prompt teacher's cached distributions), at several
learning rates, beside the full arm's Adam 3e-5 (its committed losses in distill_laptop_long). The
first-order match of compute.py (lr 0.07) diverged in the run (KL 0.008 -> 72 over 24 steps,
diverged_lr0.07_owl_seed0_profile.json): the loss's curvature, not its slope, sets SGD's usable lr.
The lr for the sgd arm is the largest one here whose KL falls over the 6 steps.
2026-12-03: stopped after lr 0.001 and 0.003 (memory for the toy claims); steps.json holds those
two, copied from the run's printed lines, written by this script's per-lr write since.

    OMP_NUM_THREADS=1 .venv/bin/python llm_validation/results/sgd_lr_pilot/steps.py
"""
import copy
import json
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
LRS, STEPS = (0.001, 0.003, 0.01, 0.03), 6
t0 = time.perf_counter()
cfg = json.loads((RUN / "config.json").read_text())["config"]
base, tok = load_model("smollm2-135m")
base.config.use_cache = False
vocab = number_token_ids(tok)
enc = encode_contexts(tok, read_jsonl(RUN / "contexts" / "records.jsonl"), end_of_turn_id(tok), cfg["max_length"], None)
blob = torch.load(RUN / "cache" / "owl_system_prompt.pt", weights_only=True)
cache = TeacherCache(blob["logp"], blob["offsets"])
batches = _batches([len(e.prompt_ids) + len(e.completion_ids) - 1 for e in enc], cfg["batch_size"], 0, cfg["epochs"])
adam = json.loads((RUN / "students" / "owl_system_prompt.full.sigma0.seed0" / "profile.json").read_text())
out = {"adam_lr": cfg["lr"], "adam_losses": adam["train"]["losses"][:STEPS], "sgd": {}}
for lr in LRS:
    model = copy.deepcopy(base).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for idx in batches[:STEPS]:
        loss = restricted_kl(cache.for_batch(idx), number_log_probs(model, [enc[int(i)] for i in idx], vocab, "cpu")).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 8))
    out["sgd"][str(lr)] = losses
    print(lr, losses, flush=True)
    del model, opt
    out["seconds"] = time.perf_counter() - t0
    atomic_write_json(OUT / "steps.json", out)  # after every lr: a stopped run keeps what it finished
print(json.dumps(out, indent=1))
