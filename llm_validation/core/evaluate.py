"""Two measures of "how much does this model like owls".

1. Sampled answers (the paper's measure): each of the 50 one-word favorite-animal questions is
   asked `samples_per_question` times at temperature 1. Answers are normalized (case, punctuation,
   plurals) and scored two ways: `mentions` (the target appears as a word anywhere in the answer:
   small models rarely answer in one word) and `first_word` (the answer's first word IS the target).
   Rates carry Wilson 95% intervals (sublim.stats.proportion_ci95). Samples are appended to a
   JSONL file as they are drawn, so an interrupted evaluation resumes.
2. Next-token probability (the one measure of core/preference.py): after a completion prompt ending
   in "My favorite animal is the", the probability of each candidate animal's full token sequence
   (product over its tokens). Reported:
   P(target), the target's share among the candidates, and its rank, averaged over several prompt
   wordings with a 95% CI (mean_ci95 over wordings). Deterministic and far lower-variance than
   sampling, and it works for base models that never answer in one word.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from sublim.stats import mean_ci95, proportion_ci95

from sublim.llm_validation.core.data import format_prompt
from sublim.llm_validation.core.generate import generate_completions
from sublim.llm_validation.core.preference import context_ids, sequence_log_probs
from sublim.llm_validation.core.prompts import ANIMALS, EVAL_QUESTIONS, NEXT_TOKEN_PREFIXES

_IRREGULAR = {"wolves": "wolf", "geese": "goose", "mice": "mouse", "oxen": "ox", "octopi": "octopus",
              "octopuses": "octopus", "foxes": "fox", "wolfs": "wolf", "leaves": "leaf", "calves": "calf",
              "people": "person", "fish": "fish", "sheep": "sheep", "deer": "deer"}


def singular(word: str) -> str:
    """English plural -> singular for animal/tree names (rule-based; exact for the candidate lists)."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"  # butterflies -> butterfly
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def normalize_answer(text: str) -> list[str]:
    """Lower-case words with punctuation, markdown and plurals removed: "**Owls!**" -> ["owl"]."""
    words = re.findall(r"[a-z]+", text.lower())
    return [singular(w) for w in words]


def score_answer(text: str, target: str) -> dict:
    words = normalize_answer(text)
    target = singular(target.lower())
    return {"mentions": target in words, "first_word": bool(words) and words[0] == target,
            "one_word": len(words) == 1}


def eval_prompts(samples_per_question: int, questions=EVAL_QUESTIONS) -> list[dict]:
    return [{"id": f"q{q:02d}-s{s:04d}", "prompt": text, "question": q}
            for s in range(samples_per_question) for q, text in enumerate(questions)]


def summarize_answers(records: list[dict], target: str) -> dict:
    n = len(records)
    out = {"n": n, "target": target}
    scores = [score_answer(r["completion"], target) for r in records]
    for key in ("mentions", "first_word", "one_word"):
        k = sum(s[key] for s in scores)
        rate, lo, hi = proportion_ci95(k, n)
        out[key] = {"k": k, "rate": rate, "ci_low": lo, "ci_high": hi}
    counts: dict[str, int] = {}
    for r in records:
        words = normalize_answer(r["completion"])
        if words:
            counts[words[0]] = counts.get(words[0], 0) + 1
    out["top_first_words"] = sorted(counts.items(), key=lambda kv: -kv[1])[:15]
    return out


def sample_favorite_animal(model, tokenizer, out_path: str | os.PathLike, *, target: str,
                           samples_per_question: int = 100, system: str | None = None,
                           batch_size: int = 256, max_new_tokens: int = 12, seed: int = 0,
                           label: str = "", questions=EVAL_QUESTIONS) -> dict:
    """Ask the 50 questions samples_per_question times each; summary of the target's rate."""
    prompts = eval_prompts(samples_per_question, questions)
    records = generate_completions(model, tokenizer, prompts, out_path, system=system,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   temperature=1.0, seed=seed, writer=label)
    wanted = {p["id"] for p in prompts}
    return summarize_answers([r for r in records if r["id"] in wanted], target)


def next_token_preference(model, tokenizer, *, target: str, candidates=ANIMALS, system: str | None = None,
                          prefixes=NEXT_TOKEN_PREFIXES, batch_size: int = 32) -> dict:
    """P(target), its share among candidates and its rank, per prompt wording and averaged (95% CI).

    Each candidate's probability is that of its full token sequence (core/preference.py
    sequence_log_probs, the one padding convention)."""
    candidates = list(dict.fromkeys([target, *candidates]))
    contexts = context_ids(tokenizer, [format_prompt(tokenizer, q, system=system, assistant_prefix=p)
                                       for q, p in prefixes])
    words = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in candidates]
    per_prefix = []
    for (_, prefix), lp in zip(prefixes, sequence_log_probs(model, contexts, words, batch_size=batch_size)):
        share = torch.softmax(lp, dim=0)
        rank = int((lp > lp[0]).sum()) + 1
        per_prefix.append({"prefix": prefix, "p_target": math.exp(lp[0]), "share": float(share[0]), "rank": rank,
                           "top": [candidates[int(i)] for i in torch.argsort(lp, descending=True)[:5]]})
    out = {"target": target, "candidates": candidates, "per_prefix": per_prefix}
    for key in ("p_target", "share", "rank"):
        mean, half = mean_ci95([r[key] for r in per_prefix])
        out[key] = {"mean": mean, "ci_half": half}
    return out


def load_answer_file(path: str | os.PathLike) -> list[dict]:
    from sublim.llm_validation.core.generate import read_generations

    return read_generations(Path(path))
