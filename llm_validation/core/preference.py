"""The one animal-preference measure: a model's next-token log-probabilities of candidate animals.

Contexts: the 50 favorite-animal questions with the answer forced to begin "My favorite animal
is the", plus the 5 next-token wordings of prompts.NEXT_TOKEN_PREFIXES (55 in all). Three readers:
- distill (`profile`): at each context, every candidate's FIRST token (" owl", " cat", ...); the
  measures are the target's share among the candidates (softmax over them) and its log-odds
  log(share / (1 - share)), per context, so that model differences can be paired by context (a CI
  over questions) and by seed (a CI over students).
- alignment (`mean_answer_log_probs`): mean over the contexts of log p(first token) and of p.
- pipeline (core/evaluate.py `next_token_preference`): on the 5 wordings, each candidate's FULL
  token sequence (`sequence_log_probs`: log p of its first token plus each later token given the
  ones before).

One padding convention for all of them (`right_padded`): sequences are RIGHT-padded with an
attention mask and read at each row's last real token. With right padding every real token keeps
its unpadded position 0..len-1 (no position_ids needed) and, causal attention plus the mask, sees
exactly the tokens it sees alone; the only difference from an unpadded forward is float rounding
(other matrix shapes). Left padding needs explicit position_ids to mean the same thing.
"""

from __future__ import annotations

import math

import torch

from sublim.llm_validation.core.data import format_prompt, has_chat_template
from sublim.llm_validation.core.prompts import ANIMALS, EVAL_QUESTIONS, NEXT_TOKEN_PREFIXES

ANSWER_PREFIX = "My favorite animal is the"


def preference_contexts(tokenizer, system: str | None = None, empty_system: bool = False) -> list[str]:
    """empty_system: an empty system turn where `system` is None (core/data.format_prompt)."""
    kw = {"system": system, "empty_system": empty_system}
    ctx = [format_prompt(tokenizer, q, assistant_prefix=ANSWER_PREFIX, **kw) for q in EVAL_QUESTIONS]
    ctx += [format_prompt(tokenizer, q, assistant_prefix=p, **kw) for q, p in NEXT_TOKEN_PREFIXES]
    return ctx


def context_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of formatted contexts: a chat template already wrote its special tokens, a
    template-less base model gets the tokenizer's own (e.g. BOS)."""
    add_special = not has_chat_template(tokenizer)
    return [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]


def candidate_first_tokens(tokenizer, candidates=ANIMALS) -> tuple[list[str], list[int]]:
    """Candidates whose first token is their own (two animals sharing one would be confounded)."""
    names, ids = [], []
    for c in candidates:
        tid = tokenizer(" " + c, add_special_tokens=False)["input_ids"][0]
        if tid not in ids:
            names.append(c)
            ids.append(tid)
    return names, ids


def right_padded(seqs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, index of each row's last real token): THE padding convention."""
    width = max(map(len, seqs))
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    m = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)], m[i, :len(s)] = torch.tensor(list(s)), 1
    return x, m, torch.tensor([len(s) - 1 for s in seqs])


def answer_log_probs(model, x, m, last, device) -> torch.Tensor:
    """(rows, vocab) log-softmax at each row's last real token (differentiable: the trait direction
    of core/scores.py takes its gradient). Half-precision logits are read in float32 (a log-softmax
    over ~50k entries in bf16 keeps 2-3 digits); float32 and float64 stay as they are.
    The output head runs only at the batch's distinct last positions (`logits_to_keep`, one 1-D index
    for every row): the vocabulary projection of every other position was computed and thrown away,
    ~97% of a tiny model's forward and ~20% of SmolLM2's. Each kept logit is the same dot product of
    the same hidden state with the same head row."""
    keep = torch.unique(last)  # sorted, so a row's last position is found by searchsorted
    logits = model(input_ids=x.to(device), attention_mask=m.to(device), logits_to_keep=keep.to(device)).logits
    last_logits = logits[torch.arange(len(last)), torch.searchsorted(keep, last).to(logits.device)]
    if last_logits.dtype in (torch.float16, torch.bfloat16):
        last_logits = last_logits.float()
    return torch.log_softmax(last_logits, -1)


@torch.no_grad()
def next_token_log_probs(model, seqs, device=None, batch_size: int = 32, columns=None) -> torch.Tensor:
    """(len(seqs), len(columns) or vocab) next-token log-probabilities after each token sequence,
    over the FULL vocabulary, in right-padded batches of batch_size; on the CPU."""
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for lo in range(0, len(seqs), batch_size):
            logp = answer_log_probs(model, *right_padded(seqs[lo:lo + batch_size]), device)
            rows.append((logp if columns is None else logp[:, columns]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows)


def candidate_log_probs(model, tokenizer, device, system: str | None = None, batch_size: int = 32,
                        empty_system: bool = False):
    """(names, (contexts, candidates) next-token log-probabilities of each candidate's first token)."""
    names, ids = candidate_first_tokens(tokenizer)
    seqs = context_ids(tokenizer, preference_contexts(tokenizer, system, empty_system))
    return names, next_token_log_probs(model, seqs, device, batch_size, columns=ids)


def sequence_log_probs(model, contexts, continuations, device=None, batch_size: int = 32) -> torch.Tensor:
    """(contexts, continuations) log P(continuation | context), summed over the continuation's
    tokens: token j is read after context + its first j tokens, so a k-token continuation costs
    k - 1 extra sequences (shared prefixes run once)."""
    index: dict[tuple, int] = {}
    for ctx in contexts:
        for cont in continuations:
            for j in range(len(cont)):
                index.setdefault(tuple(ctx) + tuple(cont[:j]), len(index))
    logp = next_token_log_probs(model, list(index), device, batch_size)
    out = torch.zeros(len(contexts), len(continuations), dtype=logp.dtype)
    for a, ctx in enumerate(contexts):
        for b, cont in enumerate(continuations):
            out[a, b] = sum(float(logp[index[tuple(ctx) + tuple(cont[:j])], t]) for j, t in enumerate(cont))
    return out


def mean_answer_log_probs(model, prompt_ids, targets, device=None, batch_size: int = 32) -> dict[str, dict]:
    """Per target (label -> first token id): mean over prompts of log p(token) and of p itself."""
    logp = next_token_log_probs(model, prompt_ids, device, batch_size, columns=list(targets.values()))
    return {lab: {"mean_logprob": float(logp[:, j].mean()), "mean_prob": float(logp[:, j].exp().mean())}
            for j, lab in enumerate(targets)}


def log_odds(logp: torch.Tensor, names: list[str], animal: str) -> torch.Tensor:
    """Per context: log(share / (1 - share)) of `animal` among the candidates."""
    j = names.index(animal)
    share_logp = logp[:, j] - torch.logsumexp(logp, dim=1)
    rest = torch.log1p(-share_logp.exp().clamp(max=1 - 1e-12))
    return share_logp - rest


def animal_log_odds(prof: dict, animal: str, dtype=torch.float64) -> torch.Tensor:
    """Per context log-odds of `animal` from a saved profile (profile() below), in float64."""
    return log_odds(torch.tensor(prof["logp"], dtype=dtype), prof["candidates"], animal)


def profile(model, tokenizer, device, system: str | None = None, batch_size: int = 32,
            empty_system: bool = False) -> dict:
    """Everything the report needs about one model's preferences (JSON-ready)."""
    names, logp = candidate_log_probs(model, tokenizer, device, system, batch_size, empty_system)
    share = torch.softmax(logp, dim=1)
    return {"candidates": names, "logp": [[round(float(v), 6) for v in row] for row in logp],
            "mean_share": {n: float(share[:, j].mean()) for j, n in enumerate(names)},
            "n_contexts": int(logp.shape[0]), "finite": bool(math.isfinite(float(logp.sum())))}
