"""Where each arm's model starts: shared init, another model's init (derangement), or a perturbed copy.

The cross-model students are the control of the experiment: they learn from teacher i but start
from model perm[i]'s init. perm must be a derangement (perm[i] != i for every i): the public
script used a plain permutation, so a few "cross-model" students were really same-init students
and inflated the cross-model accuracy.
"""

from __future__ import annotations

import math

import torch

from sublim.seeding import torch_generator

from .config import ToyConfig
from .model import MLPSpec, init_params, model_generator

# Model-index offsets for the inits that are not any teacher's: far above any ensemble size,
# so an "independent" student never coincides with a teacher of the same run.
INDEPENDENT_OFFSET = 1_000_000
PERTURB_OFFSET = 2_000_000


def derangement(n: int, seed: int) -> list[int]:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), seeded.

    Rejection sampling: a random permutation is a derangement with probability ~1/e, so this
    takes ~2.7 tries on average.
    """
    if n < 2:
        raise ValueError(f"no derangement of {n} element(s)")
    g = torch_generator("derangement", int(seed))
    while True:
        perm = torch.randperm(n, generator=g)
        if not (perm == torch.arange(n)).any():
            return perm.tolist()


def init_std(spec: MLPSpec, fan_in: int) -> float:
    """The std of one weight at init (scale of a 'perturbed' student's noise)."""
    if spec.init == "normal":
        return spec.init_scale / math.sqrt(fan_in)
    if spec.init == "kaiming_normal":
        return spec.init_scale * math.sqrt(2.0 / fan_in)
    return spec.init_scale / math.sqrt(fan_in) / math.sqrt(3.0)  # U(-b, b) has std b/sqrt(3)


def student_inits(cfg: ToyConfig, indices: list[int], perm: list[int], teacher_init: list[torch.Tensor],
                  *, device, dtype) -> list[torch.Tensor]:
    """Initial parameters of the students of models `indices`, group-major.

    Model g*k + a is student arm cfg.student_arms[a] of model indices[g] (k = number of student
    arms): the layout model.forward_fast expects. teacher_init holds ALL n_models inits (the
    cross-model students need inits from outside the current chunk).
    """
    spec = cfg.spec
    arms = cfg.student_arms
    own: list[list[torch.Tensor]]  # the same-init students' starting point, per model index
    if cfg.student_init == "independent":
        own = init_params(spec, [(cfg.seed, INDEPENDENT_OFFSET + i) for i in indices], device=device, dtype=dtype)
    else:
        idx = torch.tensor(indices, device=teacher_init[0].device)
        own = [p.index_select(0, idx) for p in teacher_init]
        if cfg.student_init == "perturbed":
            own = [p.clone() for p in own]
            for j, i in enumerate(indices):
                g = model_generator(cfg.seed, PERTURB_OFFSET + i)
                for layer, (fan_in, fan_out) in enumerate(spec.layer_dims):
                    noise = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64)
                    own[2 * layer][j] += (cfg.perturb_sigma * init_std(spec, fan_in) * noise).to(own[0].device, own[0].dtype)
    cross = own  # placeholder when no cross-model arm is requested
    if any(a.startswith("cross") for a in arms):
        cross_idx = torch.tensor([perm[i] for i in indices], device=teacher_init[0].device)
        cross = [p.index_select(0, cross_idx) for p in teacher_init]
    layers = []
    for own_p, cross_p in zip(own, cross):
        per_arm = [own_p if a.startswith("student") else cross_p for a in arms]
        # stack on dim 1 then flatten: (groups, k, ...) -> group-major (groups*k, ...)
        layers.append(torch.stack(per_arm, dim=1).reshape(-1, *own_p.shape[1:]).to(device=device, dtype=dtype).contiguous())
    return layers
