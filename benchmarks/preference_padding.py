"""How much the padding convention moves the candidate-animal log-probabilities (issue 19 item 1).

Before the preference measure moved to core/preference.py, three copies used three conventions:
- pipeline (core/evaluate.py): each candidate's full token sequence, one context at a time, no
  padding, later tokens from a copy of the context's KV cache;
- alignment (alignment/screen.py `trait_logprobs`, core/scores.py `trait_direction`): the first
  token, all 55 contexts in one LEFT-padded batch with explicit position_ids;
- distill (distill/preference.py): the first token, RIGHT-padded batches of 32.
The old code paths are reproduced below verbatim (they exist nowhere else any more) and compared
with the one measure, plus an unpadded one-context-at-a-time forward as the reference of all three.

    python benchmarks/preference_padding.py --models tiny-llama,tiny-gemma,smollm2-135m \
        --out benchmarks/results/preference_padding_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.preference import (candidate_first_tokens, candidate_log_probs, context_ids,
                                                   preference_contexts, sequence_log_probs)
from sublim.llm_validation.core.prompts import ANIMALS, NEXT_TOKEN_PREFIXES
from sublim.llm_validation.core.data import format_prompt
from sublim.llm_validation.core.scores import only_these_trainable, scored_parameter_names, trait_direction


@torch.no_grad()
def old_pipeline(model, tok, contexts: list[list[int]], candidates: list[list[int]]) -> torch.Tensor:
    """core/evaluate.py candidate_logprobs before the move: unpadded, KV cache per candidate."""
    out = torch.empty(len(contexts), len(candidates))
    for a, ctx in enumerate(contexts):
        res = model(input_ids=torch.tensor([ctx]), use_cache=True)
        first = torch.log_softmax(res.logits[0, -1].float(), dim=-1)
        for b, ids in enumerate(candidates):
            total = first[ids[0]].item()
            if len(ids) > 1:
                cont = model(input_ids=torch.tensor([ids[:-1]]), past_key_values=copy.deepcopy(res.past_key_values),
                             use_cache=True)
                logp = torch.log_softmax(cont.logits[0].float(), dim=-1)
                total += logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
            out[a, b] = total
    return out


@torch.no_grad()
def old_alignment(model, prompt_ids: list[list[int]], tokens: list[int]) -> torch.Tensor:
    """alignment/screen.py trait_logprobs (and core/scores.py trait_direction's forward) before the
    move: one left-padded batch, position_ids from the mask."""
    T = max(len(p) for p in prompt_ids)
    ids = torch.zeros((len(prompt_ids), T), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, T - len(p):] = torch.tensor(list(p))
        mask[i, T - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float(), -1)
    return logp[:, tokens]


@torch.no_grad()
def old_distill(model, seqs: list[list[int]], tokens: list[int], batch_size: int = 32) -> torch.Tensor:
    """distill/preference.py candidate_log_probs before the move: right-padded batches of 32."""
    rows = []
    for lo in range(0, len(seqs), batch_size):
        enc = seqs[lo:lo + batch_size]
        width = max(map(len, enc))
        x = torch.zeros(len(enc), width, dtype=torch.long)
        m = torch.zeros(len(enc), width, dtype=torch.long)
        for i, e in enumerate(enc):
            x[i, :len(e)], m[i, :len(e)] = torch.tensor(e), 1
        logits = model(input_ids=x, attention_mask=m).logits
        last = logits[torch.arange(len(enc)), torch.tensor([len(e) - 1 for e in enc])].float()
        rows.append(torch.log_softmax(last, -1)[:, tokens])
    return torch.cat(rows)


def old_trait_gradient(model, prompt_ids, token: int, names) -> torch.Tensor:
    """core/scores.py trait_direction before the move (one direction, flattened, float64): the
    gradient of mean log p(token) through old_alignment's left-padded batch."""
    T = max(len(p) for p in prompt_ids)
    ids = torch.zeros((len(prompt_ids), T), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, T - len(p):] = torch.tensor(list(p))
        mask[i, T - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(torch.log_softmax(logits, -1)[:, token].mean(), [params[n] for n in names])
    return torch.cat([g.double().flatten() for g in grads])


def direction_change(model, seqs, token: int) -> dict:
    """Old (left-padded) vs new (trait_direction, right-padded) owl direction over the scored weights."""
    names = scored_parameter_names(model)
    new = trait_direction(model, seqs, {"owl": token}, names)
    with only_these_trainable(model, names):
        old = old_trait_gradient(model, seqs, token, names)
    new_flat = torch.cat([new.tensors[n][0].double().flatten() for n in names])
    old_unit = old / old.norm()
    return {"trait_direction_raw_norm_rel_change": abs(new.raw_norms[0] - float(old.norm())) / float(old.norm()),
            "trait_direction_unit_max_abs_change": float((new_flat - old_unit).abs().max()),
            "trait_direction_unit_max_abs_component": float(old_unit.abs().max()),
            "trait_direction_one_minus_cosine": float(1 - new_flat @ old_unit / new_flat.norm())}


@torch.no_grad()
def unpadded(model, seqs: list[list[int]], tokens: list[int]) -> torch.Tensor:
    """The reference of every convention: one sequence at a time, no padding, no mask."""
    return torch.cat([torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, -1].float(), -1)[tokens][None]
                      for s in seqs])


def measure(name: str) -> dict:
    model, tok = load_model(name)
    model.eval()
    names, first = candidate_first_tokens(tok)
    seqs = context_ids(tok, preference_contexts(tok))
    new_first = candidate_log_probs(model, tok, "cpu")[1]  # the one measure, distill's reader
    ref = unpadded(model, seqs, first)
    left = old_alignment(model, seqs, first)
    # pipeline: its 5 wordings, the target (owl) first then every candidate, full token sequences
    cands = list(dict.fromkeys(["owl", *ANIMALS]))
    cand_ids = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in cands]
    p_ctx = context_ids(tok, [format_prompt(tok, q, assistant_prefix=p) for q, p in NEXT_TOKEN_PREFIXES])
    old_p, new_p = old_pipeline(model, tok, p_ctx, cand_ids), sequence_log_probs(model, p_ctx, cand_ids)
    ref_lp = unpadded(model, seqs[-5:], first)  # the pipeline's 5 contexts are the last 5 of the 55
    single = [n for n in names if len(cand_ids[cands.index(n)]) == 1]  # one token: full sequence = first token
    share = lambda lp: torch.softmax(lp, 1)[:, 0]  # noqa: E731  (owl's share among the candidates)
    mx = lambda a, b: float((a.double() - b.double()).abs().max())  # noqa: E731
    return {
        "model": name, "n_contexts": len(seqs), "n_candidates_first_token": len(first),
        "multi_token_candidates": [c for c, i in zip(cands, cand_ids) if len(i) > 1],
        "max_abs_logit_scale": float(ref.abs().max()),
        "distill_new_vs_old_bitwise_equal": bool(torch.equal(new_first, old_distill(model, seqs, first))),
        "right_padded_vs_unpadded": mx(new_first, ref),
        "alignment_left_padded_vs_unpadded": mx(left, ref),
        "alignment_left_vs_right_padded": mx(left, new_first),
        "pipeline_new_vs_old_logp": mx(new_p, old_p),
        "pipeline_new_vs_old_share": mx(share(new_p), share(old_p)),
        "pipeline_rank_changes": int((torch.argsort(new_p, 1, descending=True) != torch.argsort(old_p, 1, descending=True)).sum()),
        "pipeline_single_token_new_vs_unpadded": mx(new_p[:, [cands.index(n) for n in single]],
                                                    ref_lp[:, [names.index(n) for n in single]]),
        **direction_change(model, seqs, first[names.index("owl")]),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-llama,tiny-gemma,smollm2-135m")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        t0 = time.time()
        rows.append({**measure(name), "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]))
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
