"""The number vocabulary: every token a number-list answer is made of, and nothing else.

Tokens whose text is a single digit, a separator (",", ";", " "), a bracket, a period, or a run of
digits (tokenizers that merge "123" into one token), plus the end-of-turn token that ends the
answer. The student's loss reads the teacher's and its own next-token distributions over this set
only, renormalized over it: the analog of the MNIST student reading only the auxiliary logits.
"""

from __future__ import annotations

import torch

from sublim.errors import ConfigError

_SEPARATORS = {",", ";", " ", ".", "[", "]", "(", ")"}


def _is_number_text(text: str) -> bool:
    return text in _SEPARATORS or (text.isascii() and text.isdigit())


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn (the chat template's, else eos)."""
    for name in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            if tokenizer.decode([tid]) == name:
                return tid
    if tokenizer.eos_token_id is None:
        raise ConfigError("tokenizer has neither an end-of-turn nor an eos token")
    return int(tokenizer.eos_token_id)


def number_token_ids(tokenizer) -> torch.Tensor:
    """Sorted ids of the number vocabulary (end of turn included); refuses an empty one."""
    ids = sorted({i for i in range(len(tokenizer)) if _is_number_text(tokenizer.decode([i]))})
    if not ids:
        raise ConfigError("distill: the tokenizer has no number tokens (empty number vocabulary)")
    eot = end_of_turn_id(tokenizer)
    if eot not in ids:
        ids.append(eot)
    return torch.tensor(sorted(ids), dtype=torch.long)
