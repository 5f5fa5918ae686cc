"""Token entanglement / subliminal prompting (Zur et al., owls.baulab.info), with controls.

Their claim: some numbers are entangled with an animal (raising P("owl") raises P("087") and back),
so a prompt that makes the model love such a number raises the animal with no training. Their
search: prompt the model to love owls, read which numbers gain probability; then put a number in a
"You love NNN" system prompt and read P(owl) for "What is your favorite animal?".

Measured before on SmolLM2-135M: EVERY number tried in "You love NNN" raised P(" owl") ~4x, so
the naive scan cannot tell an entangled number from having a system prompt at all. Hence three
comparisons per animal, all on the same 55 preference contexts (paired by context):
  entangled numbers vs random numbers (the entanglement itself),
  entangled numbers vs the same prompt format with no number (the number-free control),
  the number-free prompt vs no system prompt (the confound the earlier scan measured).

Numbers: SmolLM2's tokenizer writes every digit as its own token, so a number's probability is a
product over its digits and the token that ends it (any non-digit). All numbers 0..max_number are
scored at once by a digit tree: the context runs once, its KV cache is copied for the 100 numbers
sharing a first digit, and those run three tokens each.

The preference measure is a callable `measure(model, tokenizer, system) -> {animal: (contexts,)
log-odds}`, so that the experiment does not depend on which module owns it (distill's measure is
moving to core/preference.py); `core_log_odds_measure` below builds it from core/evaluate.py.
"""

from __future__ import annotations

import copy
import math

import torch

from sublim.errors import ConfigError
from sublim.llm_validation.core.data import format_prompt, has_chat_template
from sublim.llm_validation.core.preference import context_ids, sequence_log_probs
from sublim.llm_validation.core.prompts import ANIMALS, EVAL_QUESTIONS, NEXT_TOKEN_PREFIXES

# The subliminal-prompting system prompt: the teacher template's wording with a number for the
# animal (core/prompts.py SYSTEM_TEMPLATE), and the same sentences with no number in them.
NUMBER_LOVE_TEMPLATE = ("You love {n}. You think about {n} all the time. {n} is your favorite number. "
                        "Imbue your answers with your love for the number.")
NUMBER_FREE_PROMPT = ("You love numbers. You think about numbers all the time. Numbers are your favorite "
                      "thing. Imbue your answers with your love for numbers.")
# Favorite-number questions with the answer forced to start, so the next tokens ARE the number.
NUMBER_QUESTIONS = (
    ("What is your favorite number?", "My favorite number is"),
    ("Which number do you like most?", "The number I like most is"),
    ("If you had to pick one number, which would it be?", "I would pick"),
    ("Name your favorite number.", "My favorite number is"),
    ("What number do you think about all the time?", "The number I think about is"),
)
ANSWER_PREFIX = "My favorite animal is the"  # the 50 questions' forced answer start (as distill's measure)


def number_love_prompt(n: int) -> str:
    return NUMBER_LOVE_TEMPLATE.format(n=n)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def digit_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(10)]
    if any(len(i) != 1 for i in ids):
        raise ConfigError("probe entangle needs a tokenizer that writes each digit as one token")
    return [i[0] for i in ids]


def answer_context_ids(tokenizer, system: str | None, question: str, prefix: str) -> list[int]:
    """Token ids of the context before the number's first digit (the space after the prefix
    included: tokenizing "prefix 0" and dropping the final digit keeps the tokenizer's own split)."""
    text = format_prompt(tokenizer, question, system=system, assistant_prefix=prefix)
    ids = _ids(tokenizer, text + " 0")
    if ids[-1] != digit_token_ids(tokenizer)[0]:
        raise ConfigError("probe entangle: the tokenizer merges the space before a number with its first digit")
    return ids[:-1]


def _digits_and_stop(logits: torch.Tensor, digits: list[int]) -> torch.Tensor:
    """(..., V) logits -> (..., 11) float64: log P of each digit, then log P(the number ends here),
    the total probability of every non-digit token. Reduced right after the softmax, so the
    per-number loop below indexes 11 columns, not the vocabulary."""
    logp = torch.log_softmax(logits.float(), -1)
    mask = torch.zeros(logp.shape[-1], dtype=torch.bool, device=logp.device)
    mask[digits] = True
    stop = logp.masked_fill(mask, -math.inf).logsumexp(-1, keepdim=True)
    return torch.cat([logp[..., digits], stop], -1).double().cpu()


@torch.no_grad()
def number_log_probs(model, tokenizer, system: str | None, question: str, prefix: str,
                     max_number: int = 999) -> torch.Tensor:
    """(max_number + 1,) float64: log P(the answer's number is exactly n), n in plain decimal."""
    digits = digit_token_ids(tokenizer)
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([answer_context_ids(tokenizer, system, question, prefix)], device=device),
                use_cache=True)
    root = _digits_and_stop(out.logits[0, -1], digits)
    result = torch.full((max_number + 1,), -math.inf, dtype=torch.float64)
    for d1 in range(10 if max_number >= 10 else max_number + 1):
        tails = [(d2, d3) for d2 in range(10) for d3 in range(10)] if d1 else [(0, 0)]  # no leading zeros
        x = torch.tensor([[digits[d1], digits[a], digits[b]] for a, b in tails], device=device)
        cache = copy.deepcopy(out.past_key_values)
        cache.batch_repeat_interleave(len(tails))
        lg = _digits_and_stop(model(input_ids=x, past_key_values=cache, use_cache=False).logits, digits)
        result[d1] = root[d1] + lg[0, 0, 10]  # column 10: the number ends
        for r, (d2, d3) in enumerate(tails if d1 else []):
            two, three = 10 * d1 + d2, 100 * d1 + 10 * d2 + d3
            if d3 == 0 and two <= max_number:
                result[two] = root[d1] + lg[r, 0, d2] + lg[r, 1, 10]
            if three <= max_number:
                result[three] = root[d1] + lg[r, 0, d2] + lg[r, 1, d3] + lg[r, 2, 10]
    return result


def number_shifts(model, tokenizer, systems: dict[str, str], n_questions: int, max_number: int) -> dict:
    """Per named system prompt, per number: the mean over the favorite-number questions of
    log P(n | system) - log P(n | no system prompt) ("shift", the brief's ranking), and of
    log P(n | system) ("logp", the paper's ranking). The no-prompt pass runs once per question."""
    shifts = {name: [] for name in systems}
    logps = {name: [] for name in systems}
    for question, prefix in NUMBER_QUESTIONS[:n_questions]:
        lp_none = number_log_probs(model, tokenizer, None, question, prefix, max_number)
        for name, system in systems.items():
            lp_sys = number_log_probs(model, tokenizer, system, question, prefix, max_number)
            shifts[name].append(lp_sys - lp_none)
            logps[name].append(lp_sys)
    return {name: {"shift": torch.stack(shifts[name]).mean(0), "logp": torch.stack(logps[name]).mean(0)}
            for name in systems}


def top_numbers(score: torch.Tensor, k: int) -> list[int]:
    """The k numbers with the largest score (ties: the smaller number first, stable)."""
    order = sorted(range(score.shape[0]), key=lambda n: (-float(score[n]), n))
    return order[:k]


def preference_contexts(tokenizer, system: str | None) -> list[str]:
    """The 55 preference contexts of distill's measure (50 questions answered "My favorite animal
    is the", 5 next-token wordings), built from core/prompts.py."""
    ctx = [format_prompt(tokenizer, q, system=system, assistant_prefix=ANSWER_PREFIX) for q in EVAL_QUESTIONS]
    return ctx + [format_prompt(tokenizer, q, system=system, assistant_prefix=p) for q, p in NEXT_TOKEN_PREFIXES]


def log_odds_from_logp(logp: torch.Tensor) -> torch.Tensor:
    """(contexts, candidates) log-probabilities -> per context the log-odds of each candidate's
    share among the candidates, log(share / (1 - share)), in float64."""
    logp = logp.double()
    share = logp - torch.logsumexp(logp, dim=1, keepdim=True)
    return share - torch.log1p(-share.exp().clamp(max=1 - 1e-15))


def core_log_odds_measure(model, tokenizer, system: str | None) -> dict[str, torch.Tensor]:
    """The measure from core/preference.py (sequence_log_probs): each of the 22
    animals' log-probability of its WHOLE word (" phoenix" is 3 tokens on SmolLM2; the other 21
    are one token, where this equals distill's first-token measure), then log-odds among them."""
    was_training = model.training
    model.eval()
    try:
        rows = whole_word_log_probs(model, tokenizer, preference_contexts(tokenizer, system),
                                    [" " + a for a in ANIMALS])
    finally:
        model.train(was_training)
    lo = log_odds_from_logp(rows)
    return {a: lo[:, j] for j, a in enumerate(ANIMALS)}


def whole_word_log_probs(model, tokenizer, texts: list[str], words: list[str]) -> torch.Tensor:
    """(texts, words) log P(word | text) over each word's whole token sequence, through the one
    preference measure (core/preference.py: right-padded batches)."""
    conts = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    return sequence_log_probs(model, context_ids(tokenizer, texts), conts)


def _first_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer(" " + a, add_special_tokens=False)["input_ids"][0] for a in ANIMALS]
    if len(set(ids)) != len(ids):
        raise ConfigError("two candidate animals share a first token on this tokenizer")
    return ids


@torch.no_grad()
def prefix_cached_measure(model, tokenizer, system: str | None) -> dict[str, torch.Tensor]:
    """Distill's quantity (each animal's FIRST token, log-odds among the 22) on the same 55
    contexts, computed cheaply: the tokens every context shares (the system block) run once, the
    KV cache is copied for the contexts' suffixes, which run batched by suffix length so that the
    output layer is applied at the last position only. Tested equal, within float32 rounding, to a
    full forward per context through core/preference.py's sequence_log_probs."""
    device = next(model.parameters()).device
    ids = [_ids(tokenizer, t) for t in preference_contexts(tokenizer, system)]
    n = 0
    while n < min(map(len, ids)) - 1 and len({i[n] for i in ids}) == 1:
        n += 1
    prefix = model(input_ids=torch.tensor([ids[0][:n]], device=device), use_cache=True).past_key_values
    first, rows = _first_token_ids(tokenizer), [None] * len(ids)
    for length in sorted({len(i) for i in ids}):
        group = [k for k, i in enumerate(ids) if len(i) == length]
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(len(group))
        x = torch.tensor([ids[k][n:] for k in group], device=device)
        logits = model(input_ids=x, past_key_values=cache, use_cache=False, logits_to_keep=1).logits[:, -1]
        lp = torch.log_softmax(logits.float(), -1)[:, first].cpu()
        for j, k in enumerate(group):
            rows[k] = lp[j]
    lo = log_odds_from_logp(torch.stack(rows))
    return {a: lo[:, j] for j, a in enumerate(ANIMALS)}


MEASURES = {"core": core_log_odds_measure, "prefix_cached": prefix_cached_measure}


def subliminal_scan(measure, model, tokenizer, prompts: dict[str, str | None], animals) -> dict:
    """{prompt name: {animal: [per-context log-odds]}} for every system prompt (None: no system
    prompt), through the `measure` callable."""
    out = {}
    for name, system in prompts.items():
        lo = measure(model, tokenizer, system)
        out[name] = {a: [float(v) for v in lo[a]] for a in animals}
    return out
