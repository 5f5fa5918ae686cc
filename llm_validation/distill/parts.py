"""The parts of a causal LM's weights that a sigma perturbation can be restricted to (sigma_parts):
the LLM version of the toy's body-only / head-only shared-init arms (toymodels/claims.py: PARTS).

    head   the output map: the unembedding (`get_output_embeddings().weight`) and the final norm
           (`model.model.norm`). The final norm's gain g multiplies the last hidden state just
           before the unembedding W_U, so logits = W_U diag(g) rms(h): g can be folded into W_U's
           columns, and the two together are the one linear readout, the toy's output layer.
    body   every other parameter: the decoder blocks (attention, MLP and their norms) and, in a model
           that does not tie them, the input embedding.

SmolLM2 (and the tiny test models) tie the input embedding to the unembedding: one tensor, listed
once by `named_parameters` (as model.embed_tokens.weight). It is counted as head (the unembedding
cannot move without it), so on these models a head perturbation ALSO moves the input embedding the
body reads: unlike the toy's, the LLM's head-only arm is not confined to the output side. Perturbing
the tensor in place keeps the tie (the input and output embedding stay one tensor).

The noise is sigma x each tensor's own std (students.perturb_), so a tensor with no spread is not
moved by any sigma arm: the tiny test models' norms (all ones at init). SmolLM2's trained norm gains
do vary, so there the final norm moves with the head and the blocks' norms with the body.
"""

from __future__ import annotations

from sublim.errors import ConfigError

PARTS = ("all", "body", "head")


def head_parameter_names(model) -> set[str]:
    """Names (as named_parameters gives them) of the head's tensors: the unembedding and the final norm."""
    out_emb = model.get_output_embeddings()
    norm = getattr(getattr(model, "model", None), "norm", None)
    if out_emb is None or norm is None:
        raise ConfigError(f"{type(model).__name__}: no output embedding and final norm (model.model.norm) to call the head")
    ids = {id(out_emb.weight)} | {id(p) for p in norm.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def part_parameter_names(model, part: str) -> set[str]:
    """The names of the tensors of `part` (all | body | head); body and head partition all."""
    if part not in PARTS:
        raise ConfigError(f"distill: unknown weight part {part!r} (use {', '.join(PARTS)})")
    names = {n for n, _ in model.named_parameters()}
    if part == "all":
        return names
    head = head_parameter_names(model)
    return head if part == "head" else names - head
