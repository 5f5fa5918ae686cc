"""Steering-vector readout (Blank et al., arXiv 2606.00995): does the student's activation change
point where the teacher's system prompt pushes the activations?

Their account: a system-prompted teacher is approximately the base model plus one steering vector
added to the residual stream, and a subliminally trained student learns an aligned vector. The
readout here, per decoder layer l, on the same contexts (user prompts):

    student change  s_l = mean over (context, position) of h_l(student, x) - h_l(base, x)
    teacher change  t_l = mean over (context, position) of h_l(base, system + x) - h_l(base, x)
    readout         cos(s_l, t_l)

h_l is decoder layer l's output (the residual stream after the block, read by a forward hook, so
the final norm is never included). Positions: the tokens the two formattings share at their END
(the user turn and the assistant header); the system block itself has no counterpart without the
prompt, and a chat template may put a default system prompt in its place (SmolLM2 does), so the
teacher change is "this system prompt instead of the default one", exactly what the teacher
differs by in distill. Blank et al. fit a steering vector by optimization and compare it with the
student's learned one; this readout uses the mean activation difference (a cheap estimate of that
vector), not their fitted one.

A change of exactly zero has no direction: such a layer reports cosine None and
`defined: False` (never a NaN that a comparison would silently pass).

`layer_means` (per-layer mean block outputs over chosen positions of token sequences, one forward
per sequence) and `cosine_rows` are the pieces distill's `--steering` readout of trained students is
built from (distill/steer.py: the paper's positions, the base side computed once per run). Lives
in core/ (moved from probes/) because two experiments, probes and distill, use it.
"""

from __future__ import annotations

import contextlib

import torch

from sublim.llm_validation.core.data import format_prompt, has_chat_template


def decoder_layers(model):
    """The model's decoder blocks (Llama/Gemma/Qwen layout: model.model.layers; a PEFT model is read
    through its wrapped model, whose blocks hold the adapters, so their effect is in what is read)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no model.model.layers to read activations from")
    return layers


@contextlib.contextmanager
def capture_layer_outputs(model):
    """Within the block, the list returned holds each forward's per-layer outputs (a list of
    (batch, seq, d) tensors). Hooks are appended last, so they see any earlier hook's edit (a
    steering vector added by a hook is part of what is read)."""
    store: list[list[torch.Tensor]] = []
    current: dict[int, torch.Tensor] = {}
    layers = list(decoder_layers(model))

    def hook_for(i):
        def hook(_module, _args, output):
            current[i] = (output[0] if isinstance(output, tuple) else output).detach()
            if i == len(layers) - 1:
                store.append([current[j] for j in range(len(layers))])
                current.clear()
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def shared_suffix_length(a: list[int], b: list[int]) -> int:
    """How many tokens the two sequences share at their end."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


@torch.no_grad()
def _suffix_activations(model, ids: list[int], k: int) -> list[torch.Tensor]:
    """Per layer, the (k, d) float64 outputs at the last k positions of one sequence."""
    device = next(model.parameters()).device
    with capture_layer_outputs(model) as store:
        model(input_ids=torch.tensor([ids], device=device))
    return [h[0, -k:].double().cpu() for h in store[0]]


def _summed_change(model_a, ids_a, model_b, ids_b, k) -> list[torch.Tensor]:
    """Per layer, the (d,) sum over the last k positions of h(model_a, ids_a) - h(model_b, ids_b)
    (summed here, divided once by the total position count in steering_readout)."""
    acts_a = _suffix_activations(model_a, ids_a, k)
    acts_b = _suffix_activations(model_b, ids_b, k)
    return [(a - b).sum(0) for a, b in zip(acts_a, acts_b)]


def _cosine_row(s: torch.Tensor, t: torch.Tensor) -> dict:
    ns, nt = float(s.norm()), float(t.norm())
    defined = ns > 0 and nt > 0
    return {"cosine": float(s @ t / (ns * nt)) if defined else None, "defined": defined,
            "student_change_norm": ns, "teacher_change_norm": nt}


def steering_readout(student, base, teacher_system_prompt: str, tokenizer, contexts) -> dict:
    """Per decoder layer: cosine between the student's and the teacher prompt's mean activation
    change over the contexts' shared positions (module docstring). Both models are put in eval
    mode for the reads and restored. Returns {"layers": [{cosine, defined, student_change_norm,
    teacher_change_norm}, ...], "n_contexts", "n_positions"}; norms are of the mean change."""
    if not contexts:
        raise ValueError("steering_readout needs at least one context")
    modes = (student.training, base.training)
    student.eval()
    base.eval()
    sums_s, sums_t, n_pos = None, None, 0
    try:
        for user in contexts:
            plain = _ids(tokenizer, format_prompt(tokenizer, user))
            prompted = _ids(tokenizer, format_prompt(tokenizer, user, system=teacher_system_prompt))
            k = shared_suffix_length(plain, prompted)
            if k == 0:
                raise ValueError(f"context {user[:40]!r}: the prompted and plain texts share no final tokens")
            ds = _summed_change(student, plain, base, plain, k)
            dt = _summed_change(base, prompted, base, plain, k)
            sums_s = ds if sums_s is None else [a + b for a, b in zip(sums_s, ds)]
            sums_t = dt if sums_t is None else [a + b for a, b in zip(sums_t, dt)]
            n_pos += k
    finally:
        student.train(modes[0])
        base.train(modes[1])
    rows = [_cosine_row(s / n_pos, t / n_pos) for s, t in zip(sums_s, sums_t)]
    return {"layers": rows, "n_contexts": len(contexts), "n_positions": n_pos}


@torch.no_grad()
def layer_means(model, sequences: list[list[int]], selections: dict[str, list[slice]]) -> dict[str, torch.Tensor]:
    """{name: (layers, d) float64 mean of every decoder block's output over the chosen positions}:
    selections[name][i] picks sequence i's positions (slice(None) all, slice(-1, None) the last).
    One forward per sequence (no padding, so no position is ever a pad) serves every selection.
    Sums are float64, so the mean of a difference is the difference of two such means to ~1e-16
    relative, and two bit-identical models give exactly equal means."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = {k: 0.0 for k in selections}
    counts = {k: 0 for k in selections}
    try:
        for i, ids in enumerate(sequences):
            with capture_layer_outputs(model) as store:
                model(input_ids=torch.tensor([ids], device=device))
            acts = torch.stack([h[0] for h in store[0]]).double().cpu()  # (layers, T, d)
            for k, chosen in selections.items():
                part = acts[:, chosen[i]]
                sums[k] = sums[k] + part.sum(1)
                counts[k] += part.shape[1]
    finally:
        model.train(was_training)
    if any(n == 0 for n in counts.values()):
        raise ValueError(f"layer_means: no position selected for {[k for k, n in counts.items() if n == 0]}")
    return {k: sums[k] / counts[k] for k in selections}


def cosine_rows(s: torch.Tensor, t: torch.Tensor) -> list[dict]:
    """Per layer (rows of two (layers, d) changes): {cosine or None, defined, both norms}."""
    return [_cosine_row(a, b) for a, b in zip(s, t)]
