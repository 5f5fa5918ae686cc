"""One forward pass over a batch of contexts, reading hidden states at completion positions only,
and the student's loss: KL(teacher || student) over the number vocabulary, renormalized over it.

    KL_t = sum_{v in V} p_T(v) (log p_T(v) - log p_S(v)),   p(v) = softmax(logits[V])_v

at every completion position t (the positions that predict a completion token). The decoder runs
on the right-padded batch; number_log_probs then applies the output layer to the gathered
completion positions only, and only its rows that belong to V (restricted_log_probs): the full
vocabulary projection (a fifth of SmolLM2-135M's FLOPs) is skipped, and the student never
computes, and so is never trained on, the logit of any other token (an animal word included).
"""

from __future__ import annotations

import torch

from sublim.precision import matmul_autocast

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
    with matmul_autocast(fast_matmul, device):
        hidden = completion_hidden(model, batch, device)
    if hidden.dtype in (torch.float16, torch.bfloat16):
        hidden = hidden.float()
    _, head = decoder_and_head(model)
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return restricted_log_probs(hidden, head.weight, vocab.to(device), getattr(head, "bias", None), softcap)


def restricted_log_probs(hidden: torch.Tensor, head_weight: torch.Tensor, vocab: torch.Tensor,
                         head_bias: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """log softmax over V of the logits hidden @ W[V]^T (+ b[V]); hidden (..., d) -> (..., |V|).
    softcap: a model's final logit soft-capping (Gemma 2 style), applied before the softmax."""
    logits = hidden @ head_weight[vocab].T
    if head_bias is not None:
        logits = logits + head_bias[vocab]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if logits.dtype in (torch.float16, torch.bfloat16):  # upcast half precision; float64 stays float64
        logits = logits.float()
    return torch.log_softmax(logits, dim=-1)


def restricted_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(teacher || student) from log-probabilities over V: (P, |V|) -> (P,)."""
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
