"""Per-example gradient alignment between a student's imitation loss and a teacher direction.

The theorem (theory/README.md, derived in theory/symbolic.py) says that one gradient step on teacher-written data moves a
student that shares the teacher's initialization toward the teacher. Its quantity, per example i:

    a_i = < -grad_theta loss_i(theta_base), D >

with D the teacher direction. a_i > 0 means a gradient-descent step on example i moves the student
toward the teacher (to first order it raises whatever D points up). We also report ||grad loss_i||
and the cosine a_i / (||grad loss_i|| ||D||), per parameter (hence per layer) and in total.

Conventions (used everywhere in this area, and tested):
- Parameter space: the FULL weights of the base model's linear layers (by default every nn.Linear
  inside the decoder blocks: q/k/v/o and the MLP projections; the embedding / tied head can be
  added with include_embedding). A LoRA teacher's direction is its merged update scale * B @ A,
  expressed in those full weights. Why not the LoRA student's own (A, B) space: at a LoRA
  student's init B = 0, so its A-gradient vanishes and its B-gradient is the full gradient
  projected on the student's random A; the score would depend on an arbitrary random projection.
  Full-weight space is the theorem's space and is the same for every kind of teacher.
- Per-example loss: the SUM of the completion-token cross-entropies of that example (labels = -100
  elsewhere). A batch's token-mean training loss is sum_i loss_i / n_tokens, so the sum is the
  example's exact share of a training step. n_tokens is kept so a per-token view is one division.
- Directions are normalized to unit total norm (over all scored parameters), so a_i is the
  directional derivative of -loss_i along a unit step toward the teacher; ||D|| before
  normalization is reported.
- Several directions (k <= 16: e.g. one per animal) are scored in the same backward pass.

Scoring uses sublim.kernels.PerExampleGradStats: one forward + one backward per batch, per-example
gradients never materialized. reference_scores() is the obviously-correct slow path: one
backward per example, explicit autograd gradients, dot with D (float64 in the tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sublim.errors import ConfigError, DataError, SublimError
from sublim.progress import progress

from sublim.llm_validation.core.preference import answer_log_probs, right_padded

MAX_DIRECTIONS = 16
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# ----------------------------------------------------------------------------- parameters
def scored_parameter_names(model: nn.Module, *, include_embedding: bool = False) -> list[str]:
    """Names of the weights we score: every nn.Linear weight inside the decoder blocks.

    The output head is excluded unless include_embedding (with a tied head it IS the embedding).
    Biases are skipped (Llama/Gemma projections have none).
    """
    names: list[str] = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and _LAYER_RE.search(mod_name + "."):
            names.append(f"{mod_name}.weight")
    if include_embedding:
        emb = model.get_input_embeddings()
        for p_name, p in model.named_parameters():
            if p is emb.weight:
                names.append(p_name)
                break
    if not names:
        raise SublimError(f"{type(model).__name__}: no linear layers inside decoder blocks to score")
    return names


def layer_index(param_name: str) -> int:
    """Decoder block index of a parameter, -1 for parameters outside the blocks (embedding)."""
    m = _LAYER_RE.search(param_name)
    return int(m.group(1)) if m else -1


def short_name(param_name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'L3.q_proj' (for column names and plots)."""
    li = layer_index(param_name)
    parts = param_name.split(".")
    leaf = parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]
    return f"L{li}.{leaf}" if li >= 0 else leaf


class only_these_trainable:
    """Context manager: requires_grad only for `names` (the kernels refuse other trainable
    parameters, and skipping their weight gradients saves compute); restores flags on exit."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.model, self.names = model, set(names)

    def __enter__(self):
        self.saved = {n: p.requires_grad for n, p in self.model.named_parameters()}
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in self.names)
        return self

    def __exit__(self, *exc):
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.saved[n])


def _params_by_name(model: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    table = dict(model.named_parameters())
    missing = [n for n in names if n not in table]
    if missing:
        raise SublimError(f"parameters not in the model: {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return [table[n] for n in names]


# ----------------------------------------------------------------------------- loss
def per_example_completion_loss(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (B,), n_tokens (B,)): sum over completion tokens of the next-token cross-entropy.

    labels follow the Hugging Face convention (aligned with input_ids, -100 = not scored; the
    shift happens here). position_ids come from the attention mask so that left or right padding
    gives each example exactly the positions it has alone.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):  # upcast half precision; keep float64 as is
        logits = logits.float()
    target = labels[:, 1:]
    tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none")
    tok = tok.view(target.shape)
    n_tokens = (target != -100).sum(-1)
    return tok.sum(-1), n_tokens


# ----------------------------------------------------------------------------- directions
@dataclass
class Directions:
    """k teacher directions over the scored parameters: tensors[name] has shape (k, *param.shape).

    labels name each direction (e.g. "owl", "teacher_delta"); raw_norms is ||D|| before the unit
    normalization.
    """

    labels: list[str]
    tensors: dict[str, torch.Tensor]
    raw_norms: list[float] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.labels)

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def norms_per_param(self) -> dict[str, torch.Tensor]:
        """||D_k|| restricted to each parameter: (k,) per name (for per-layer cosines)."""
        return {n: t.flatten(1).double().norm(dim=1) for n, t in self.tensors.items()}

    def to(self, device=None, dtype=None) -> "Directions":
        return Directions(self.labels, {n: t.to(device=device, dtype=dtype) for n, t in self.tensors.items()}, self.raw_norms)


def normalize_directions(labels: Sequence[str], raw: Mapping[str, torch.Tensor]) -> Directions:
    """Scale every direction (over all parameters together) to unit norm."""
    k = len(labels)
    if not 1 <= k <= MAX_DIRECTIONS:
        raise ConfigError(f"need 1..{MAX_DIRECTIONS} directions, got {k}")
    sq = torch.zeros(k, dtype=torch.float64)
    for n, t in raw.items():
        if t.shape[0] != k:
            raise ConfigError(f"direction for {n} has {t.shape[0]} rows, expected {k}")
        # Directions may live on the GPU; the k norms are accumulated on the CPU (the first GPU run
        # failed here with a device mismatch).
        sq += t.detach().flatten(1).double().pow(2).sum(1).cpu()
    norms = sq.sqrt()
    for lab, nrm in zip(labels, norms.tolist()):
        if not np.isfinite(nrm) or nrm == 0.0:
            raise SublimError(f"direction '{lab}' is zero or not finite (norm {nrm}); nothing to align with")
    scale = (1.0 / norms).to(torch.float32)
    out = {n: (t.detach().float() * scale.to(t.device).view(-1, *([1] * (t.dim() - 1)))).contiguous()
           for n, t in raw.items()}
    return Directions(list(labels), out, norms.tolist())


def _canonical(name: str) -> str:
    """Strip peft wrappers so a LoRA-wrapped or merged teacher's names match the base model's."""
    name = name.replace("base_model.model.", "", 1) if name.startswith("base_model.model.") else name
    return name.replace(".base_layer.", ".")


def weight_delta_direction(
    base_model: nn.Module, teacher_model: nn.Module, names: Sequence[str], label: str = "teacher_delta"
) -> Directions:
    """D = theta_teacher - theta_base on the scored weights (a fine-tuned teacher).

    A peft teacher is merged first (merge_and_unload on the teacher object you pass: pass a copy
    if you still need the adapter), so a LoRA teacher gives D = scale * B @ A in full weights.
    """
    if hasattr(teacher_model, "merge_and_unload"):
        teacher_model = teacher_model.merge_and_unload()
    t_params = {_canonical(n): p for n, p in teacher_model.named_parameters()}
    raw = {}
    for n, p in zip(names, _params_by_name(base_model, names)):
        tp = t_params.get(_canonical(n))
        if tp is None:
            raise SublimError(f"teacher has no parameter matching {n}")
        if tp.shape != p.shape:
            raise SublimError(f"teacher parameter {n} has shape {tuple(tp.shape)}, base {tuple(p.shape)}")
        raw[n] = (tp.detach().double().to(p.device) - p.detach().double()).unsqueeze(0)
    return normalize_directions([label], raw)


def trait_direction(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    targets: Mapping[str, int],
    names: Sequence[str],
) -> Directions:
    """D_animal = grad_theta of mean_q log p(animal's first token | question q) at the base model.

    prompt_ids: tokenized favorite-animal prompts, each ending where the answer starts (the chat
    template's generation prompt, or a completion-style prefix). targets: label -> token id (the
    first token of the answer word, e.g. " owl" or "owl"). One backward per target.
    """
    if not prompt_ids:
        raise DataError("trait_direction: no prompts")
    device = next(model.parameters()).device
    # the preference measure's own batch (core/preference.py: right padding, read at each row's
    # last real token), all prompts at once: the direction is the gradient of what is measured
    batch = right_padded(prompt_ids)
    params = _params_by_name(model, names)
    raw: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    was_training = model.training
    model.eval()
    with only_these_trainable(model, names):
        for label, tok in targets.items():
            logp = answer_log_probs(model, *batch, device)[:, tok].mean()
            grads = torch.autograd.grad(logp, params)
            for n, g in zip(names, grads):
                raw[n].append(g.detach().double())
    model.train(was_training)
    return normalize_directions(list(targets), {n: torch.stack(v) for n, v in raw.items()})


# ----------------------------------------------------------------------------- scoring
@dataclass
class AlignmentScores:
    """Per-example results for one data set. Arrays are float64 numpy.

    param_names[j] is column j of dot/sq_norm. dot is <grad loss_i, D_k> (the kernels' sign);
    alignment is its negative (positive = toward the teacher).
    """

    ids: list[str]
    labels: list[str]  # direction labels
    param_names: list[str]
    loss: np.ndarray  # (N,)
    n_tokens: np.ndarray  # (N,)
    sq_norm: np.ndarray  # (N, P)
    dot: np.ndarray  # (N, P, k)
    dir_norms_per_param: np.ndarray  # (P, k): ||D_k|| restricted to each parameter

    @property
    def alignment(self) -> np.ndarray:
        """(N, k): a_i = <-grad loss_i, D_k> summed over all scored parameters."""
        return -self.dot.sum(1)

    @property
    def grad_norm(self) -> np.ndarray:
        return np.sqrt(self.sq_norm.sum(1))

    @property
    def cosine(self) -> np.ndarray:
        """(N, k): a_i / (||grad loss_i|| ||D_k||); directions have unit total norm."""
        tot = np.sqrt((self.dir_norms_per_param**2).sum(0))  # (k,) == 1 up to rounding
        return self.alignment / np.maximum(self.grad_norm[:, None] * tot[None, :], 1e-300)

    def layers(self) -> list[int]:
        return sorted({layer_index(n) for n in self.param_names})

    def per_layer(self) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """(layer ids, alignment (N, L, k), grad sq norm (N, L), cosine (N, L, k)) per block."""
        layers = self.layers()
        col = np.array([layers.index(layer_index(n)) for n in self.param_names])
        N, P, k = self.dot.shape
        a = np.zeros((N, len(layers), k))
        sq = np.zeros((N, len(layers)))
        dn = np.zeros((len(layers), k))
        np.add.at(a, (slice(None), col), -self.dot)
        np.add.at(sq, (slice(None), col), self.sq_norm)
        np.add.at(dn, col, self.dir_norms_per_param**2)
        cos = a / np.maximum(np.sqrt(sq)[:, :, None] * np.sqrt(dn)[None], 1e-300)
        return layers, a, sq, cos

    def subset(self, idx) -> "AlignmentScores":
        idx = np.asarray(idx)
        return AlignmentScores([self.ids[i] for i in idx], self.labels, self.param_names, self.loss[idx],
                               self.n_tokens[idx], self.sq_norm[idx], self.dot[idx], self.dir_norms_per_param)

    def save_npz(self, path) -> None:
        import io

        from sublim.rundir import atomic_write_bytes

        buf = io.BytesIO()
        # float32 on disk: the kernels accumulate in fp32, so nothing is lost, and the file halves
        np.savez_compressed(buf, ids=np.array(self.ids), labels=np.array(self.labels), param_names=np.array(self.param_names),
                            loss=self.loss, n_tokens=self.n_tokens, sq_norm=self.sq_norm.astype(np.float32),
                            dot=self.dot.astype(np.float32),
                            dir_norms_per_param=self.dir_norms_per_param)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load_npz(cls, path) -> "AlignmentScores":
        z = np.load(path, allow_pickle=False)
        return cls([str(s) for s in z["ids"]], [str(s) for s in z["labels"]], [str(s) for s in z["param_names"]],
                   z["loss"], z["n_tokens"], z["sq_norm"].astype(np.float64), z["dot"].astype(np.float64), z["dir_norms_per_param"])


EncodeFn = Callable[[Sequence[Mapping]], Mapping[str, torch.Tensor]]


def _check_batch(batch: Mapping[str, torch.Tensor], ids: Sequence[str]) -> None:
    n_tok = (batch["labels"][:, 1:] != -100).sum(-1)
    empty = [ids[i] for i in torch.nonzero(n_tok == 0).flatten().tolist()]
    if empty:
        raise DataError(f"examples with no completion token after truncation: {empty[:3]}")


def score_records(
    model: nn.Module,
    records: Sequence[Mapping],
    encode: EncodeFn,
    directions: Directions,
    *,
    batch_size: int = 16,
    backend: str = "auto",
    desc: str = "alignment",
) -> AlignmentScores:
    """Score every record: one forward + one backward per batch through sublim.kernels.

    encode(records) -> {"input_ids", "attention_mask", "labels"} (the pipeline's encode_sft_batch
    with the tokenizer and max_length bound). The model is put in eval mode (no dropout).
    """
    from sublim.kernels import PerExampleGradStats

    if not records:
        raise DataError("no records to score")
    names = directions.names
    device = next(model.parameters()).device
    dirs = {n: t.to(device=device, dtype=_params_by_name(model, [n])[0].dtype) for n, t in directions.tensors.items()}
    ids = [str(r.get("id", i)) for i, r in enumerate(records)]
    N, P, k = len(records), len(names), directions.k
    loss = np.zeros(N)
    n_tokens = np.zeros(N)
    sq = np.zeros((N, P))
    dot = np.zeros((N, P, k))
    was_training = model.training
    model.eval()
    with only_these_trainable(model, names):
        stats = PerExampleGradStats(model, dirs, param_names=names, backend=backend)
        with stats:
            for start in progress(range(0, N, batch_size), desc=desc, unit="batch"):
                chunk = records[start:start + batch_size]
                batch = {key: v.to(device) for key, v in encode(chunk).items() if key in ("input_ids", "attention_mask", "labels")}
                _check_batch(batch, ids[start:start + batch_size])
                l_i, n_i = per_example_completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                if not torch.isfinite(l_i).all():
                    raise SublimError(f"non-finite loss in batch starting at example {start}")
                model.zero_grad(set_to_none=True)
                l_i.sum().backward()
                res = stats.result()
                sl = slice(start, start + len(chunk))
                loss[sl] = l_i.detach().double().cpu().numpy()
                n_tokens[sl] = n_i.cpu().numpy()
                for j, n in enumerate(names):
                    sq[sl, j] = res.sq_norm[n].detach().double().cpu().numpy()
                    dot[sl, j] = res.dot[n].detach().double().cpu().numpy().reshape(len(chunk), k)
                model.zero_grad(set_to_none=True)
    model.train(was_training)
    per_param = directions.norms_per_param()  # once: it reads every direction tensor
    dn = torch.stack([per_param[n] for n in names]).cpu().numpy()
    return AlignmentScores(ids, directions.labels, names, loss, n_tokens, sq, dot, dn)


def reference_scores(
    model: nn.Module,
    records: Sequence[Mapping],
    encode: EncodeFn,
    directions: Directions,
    *,
    dtype: torch.dtype | None = None,
) -> AlignmentScores:
    """The slow, obviously-correct path: one backward per example, explicit gradients, dot with D.

    dtype=torch.float64 runs on a float64 copy of the model (the tests' reference); None uses the
    model as it is (the benchmark's naive baseline).
    """
    import copy

    names = directions.names
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    device = next(model.parameters()).device
    params = _params_by_name(model, names)
    dirs = [directions.tensors[n].to(device=device, dtype=p.dtype) for n, p in zip(names, params)]
    N, P, k = len(records), len(names), directions.k
    out_loss, out_n = np.zeros(N), np.zeros(N)
    sq, dot = np.zeros((N, P)), np.zeros((N, P, k))
    was_training = model.training
    model.eval()
    with only_these_trainable(model, names):
        for i, rec in enumerate(progress(records, desc="reference", unit="ex")):
            b = {key: v.to(device) for key, v in encode([rec]).items() if key in ("input_ids", "attention_mask", "labels")}
            l_i, n_i = per_example_completion_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
            grads = torch.autograd.grad(l_i.sum(), params)
            out_loss[i], out_n[i] = float(l_i.item()), float(n_i.item())
            for j, (g, d) in enumerate(zip(grads, dirs)):
                sq[i, j] = float(g.pow(2).sum().item())
                dot[i, j] = (d.flatten(1) @ g.flatten()).double().cpu().numpy()
    model.train(was_training)
    per_param = directions.norms_per_param()  # once: it reads every direction tensor
    dn = torch.stack([per_param[n] for n in names]).cpu().numpy()
    ids = [str(r.get("id", i)) for i, r in enumerate(records)]
    return AlignmentScores(ids, directions.labels, names, out_loss, out_n, sq, dot, dn)
