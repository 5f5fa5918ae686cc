"""How much a model prefers each animal at its next token: 55 contexts, one forward each.

Contexts: the 50 favorite-animal questions with the answer forced to begin "My favorite animal
is the", plus the 5 next-token wordings of evaluate.NEXT_TOKEN_PREFIXES. At each context the
model's next-token log-probabilities of every candidate animal's FIRST token (" owl", " cat", ...)
are kept; the measures are the target's share among the candidates (softmax over them) and its
log-odds log(share / (1 - share)), per context, so that model differences can be paired by
context (a CI over questions) and by seed (a CI over students).
"""

from __future__ import annotations

import math

import torch

from sublim.llm_validation.core.data import format_prompt, has_chat_template
from sublim.llm_validation.core.prompts import ANIMALS, EVAL_QUESTIONS, NEXT_TOKEN_PREFIXES

ANSWER_PREFIX = "My favorite animal is the"


def preference_contexts(tokenizer, system: str | None = None) -> list[str]:
    ctx = [format_prompt(tokenizer, q, system=system, assistant_prefix=ANSWER_PREFIX) for q in EVAL_QUESTIONS]
    ctx += [format_prompt(tokenizer, q, system=system, assistant_prefix=p) for q, p in NEXT_TOKEN_PREFIXES]
    return ctx


def candidate_first_tokens(tokenizer, candidates=ANIMALS) -> tuple[list[str], list[int]]:
    """Candidates whose first token is their own (two animals sharing one would be confounded)."""
    names, ids = [], []
    for c in candidates:
        tid = tokenizer(" " + c, add_special_tokens=False)["input_ids"][0]
        if tid not in ids:
            names.append(c)
            ids.append(tid)
    return names, ids


@torch.no_grad()
def candidate_log_probs(model, tokenizer, device, system: str | None = None, batch_size: int = 32):
    """(names, (contexts, candidates) next-token log-probabilities over the FULL vocabulary)."""
    names, ids = candidate_first_tokens(tokenizer)
    texts = preference_contexts(tokenizer, system)
    was_training = model.training
    model.eval()
    rows = []
    for lo in range(0, len(texts), batch_size):
        enc = [tokenizer(t, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
               for t in texts[lo:lo + batch_size]]
        width = max(map(len, enc))
        x = torch.zeros(len(enc), width, dtype=torch.long)
        m = torch.zeros(len(enc), width, dtype=torch.long)
        for i, e in enumerate(enc):
            x[i, :len(e)], m[i, :len(e)] = torch.tensor(e), 1
        logits = model(input_ids=x.to(device), attention_mask=m.to(device)).logits
        last = logits[torch.arange(len(enc)), torch.tensor([len(e) - 1 for e in enc])].float()
        rows.append(torch.log_softmax(last, -1)[:, ids].cpu())
    model.train(was_training)
    return names, torch.cat(rows)


def log_odds(logp: torch.Tensor, names: list[str], animal: str) -> torch.Tensor:
    """Per context: log(share / (1 - share)) of `animal` among the candidates."""
    j = names.index(animal)
    share_logp = logp[:, j] - torch.logsumexp(logp, dim=1)
    rest = torch.log1p(-share_logp.exp().clamp(max=1 - 1e-12))
    return share_logp - rest


def animal_log_odds(prof: dict, animal: str, dtype=torch.float64) -> torch.Tensor:
    """Per context log-odds of `animal` from a saved profile (profile() below), in float64."""
    return log_odds(torch.tensor(prof["logp"], dtype=dtype), prof["candidates"], animal)


def profile(model, tokenizer, device, system: str | None = None, batch_size: int = 32) -> dict:
    """Everything the report needs about one model's preferences (JSON-ready)."""
    names, logp = candidate_log_probs(model, tokenizer, device, system, batch_size)
    share = torch.softmax(logp, dim=1)
    return {"candidates": names, "logp": [[round(float(v), 6) for v in row] for row in logp],
            "mean_share": {n: float(share[:, j].mean()) for j, n in enumerate(names)},
            "n_contexts": int(logp.shape[0]), "finite": bool(math.isfinite(float(logp.sum())))}
