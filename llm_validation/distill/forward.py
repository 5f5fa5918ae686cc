"""One forward pass over a batch of contexts, reading hidden states at completion positions only.

The decoder runs on the right-padded batch; the output layer is applied by the caller to the
gathered completion positions and only to the number-vocabulary rows (loss.py), which skips the
full-vocabulary projection (a fifth of SmolLM2-135M's FLOPs) at every position.
"""

from __future__ import annotations

import torch

from sublim.llm_validation.distill.contexts import Encoded


def decoder_and_head(model):
    """(decoder, output layer) of a causal LM, through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def completion_hidden(model, batch: list[Encoded], device) -> torch.Tensor:
    """Hidden states that predict each completion token, concatenated over the batch: (P, d)."""
    decoder, _ = decoder_and_head(model)
    inputs = [e.prompt_ids + e.completion_ids[:-1] for e in batch]
    width = max(len(x) for x in inputs)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    rows, cols = [], []
    for i, (x, e) in enumerate(zip(inputs, batch)):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        start = len(e.prompt_ids) - 1  # the last prompt token predicts the first completion token
        cols += range(start, start + len(e.completion_ids))
        rows += [i] * len(e.completion_ids)
    hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]


def number_log_probs(model, batch: list[Encoded], vocab: torch.Tensor, device, fast_matmul: str = "off") -> torch.Tensor:
    """log p(v | context) renormalized over the number vocabulary at every completion position.
    fast_matmul="bf16": the decoder's matmuls in bf16 (sublim/precision.py); the restricted head,
    its log-softmax and the loss stay float32 (19 rows: nothing to gain, the KL's precision to lose)."""
    from sublim.llm_validation.distill.loss import restricted_log_probs
    from sublim.precision import matmul_autocast

    with matmul_autocast(fast_matmul, device):
        hidden = completion_hidden(model, batch, device)
    if hidden.dtype in (torch.float16, torch.bfloat16):
        hidden = hidden.float()
    _, head = decoder_and_head(model)
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return restricted_log_probs(hidden, head.weight, vocab.to(device), getattr(head, "bias", None), softcap)
