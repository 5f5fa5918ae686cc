"""A small CNN student for the claims (Brockers et al.: MLP -> CNN transfer with a compatible head).

Architecture (per model): the 784 inputs read as a 1 x 28 x 28 image ->
conv 5x5 stride 2 pad 2 (1 -> 8 channels, 14 x 14) -> ReLU -> conv 5x5 stride 2 pad 2 (8 -> 16,
7 x 7) -> ReLU -> flatten (784) -> linear to `width` (the teacher's last hidden width, 256) ->
ReLU -> head (width -> 10 + m). The head has the MLP's last-layer layout ((d_out, width) weight,
(d_out,) bias), so the teacher's init head can be copied into it as is; everything before it
has no counterpart in the teacher. ~1.5x the MLP's multiply-adds per example (conv2 157k + fc
201k vs the MLP's 270k), i.e. a student of comparable size, not a bigger one.

Parameters of an ensemble are stacked on a leading models axis, like the MLP's:
[conv1 w (M, 8, 1, 5, 5), b (M, 8), conv2 w (M, 16, 8, 5, 5), b (M, 16), fc w (M, width, 784),
b (M, width), head w (M, d_out, width), b (M, d_out)]. The M models run as ONE grouped
convolution per layer (groups = models), not a Python loop over models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sublim.seeding import torch_generator

from .model import MLPSpec

SIDE = 28
CHANNELS = (8, 16)
KERNEL, STRIDE, PAD = 5, 2, 2
FLAT = CHANNELS[-1] * 7 * 7  # 28 -> 14 -> 7


def layer_shapes(spec: MLPSpec) -> list[tuple[tuple[int, ...], int]]:
    """(weight shape, fan_in) of each layer, head last."""
    c0, c1 = (1,) + CHANNELS[:-1], CHANNELS
    convs = [((co, ci, KERNEL, KERNEL), ci * KERNEL * KERNEL) for ci, co in zip(c0, c1)]
    return convs + [((spec.width, FLAT), FLAT), ((spec.d_out, spec.width), spec.width)]


def fresh_body(spec: MLPSpec, seed: int, model: int) -> list[torch.Tensor]:
    """Model `model`'s CNN body (convs and the fc to `width`), float64 on CPU, no models axis.

    Its own named stream ("cnn-init", sublim.seeding): no MLP init, teacher or other arm draws
    from it, so the body shares no numbers with anything (the head is supplied by the caller).
    Weights follow the toy's init scheme with the layer's fan-in (c_in x 5 x 5 for a conv)."""
    g = torch_generator("cnn-init", int(seed), int(model))
    out = []
    for shape, fan_in in layer_shapes(spec)[:-1]:
        if spec.init == "torch_default":  # U(+-1/sqrt(fan_in)) for weights and biases, as nn.Conv2d
            bound = spec.init_scale / math.sqrt(fan_in)
            w = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
            b = (torch.rand(shape[0], generator=g, dtype=torch.float64) * 2 - 1) * bound
        else:
            std = spec.init_scale * (math.sqrt(2.0) if spec.init == "kaiming_normal" else 1.0) / math.sqrt(fan_in)
            w = torch.randn(shape, generator=g, dtype=torch.float64) * std
            b = torch.zeros(shape[0], dtype=torch.float64)
        out += [w, b]
    return out


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (models, batch, d_out). x: (batch, 784) shared by all models, or (groups, batch, 784)
    with models = groups * k group-major (model g*k + a reads group g's batch), as forward_fast."""
    c1w, c1b, c2w, c2b, fw, fb, hw, hb = params
    m = c1w.shape[0]
    if x.dim() == 2:
        x = x[None]
    groups, batch, _ = x.shape
    if m % groups:
        raise ValueError(f"{m} models do not split into {groups} groups")
    # (batch, groups, 28, 28): group g is input channel g; conv1's groups=groups gives each
    # input channel its own k models' filters, so the k arms of a teacher read its batch once
    # channels-last: oneDNN's grouped convolutions (backward above all) ran 1.6x faster so on
    # this CPU (2.2 -> 1.35 s per paper-size step of the two convs, 20 models, 1 thread)
    img = x.transpose(0, 1).reshape(batch, groups, SIDE, SIDE).contiguous(memory_format=torch.channels_last)
    h = F.conv2d(img, c1w.reshape(-1, 1, KERNEL, KERNEL), c1b.reshape(-1), stride=STRIDE, padding=PAD, groups=groups)
    h = F.conv2d(torch.relu(h), c2w.reshape(-1, *c2w.shape[2:]), c2b.reshape(-1), stride=STRIDE, padding=PAD, groups=m)
    h = torch.relu(h).reshape(batch, m, FLAT).transpose(0, 1)  # (models, batch, FLAT)
    h = torch.relu(torch.baddbmm(fb[:, None, :], h, fw.transpose(1, 2)))
    return torch.baddbmm(hb[:, None, :], h, hw.transpose(1, 2))


@torch.no_grad()
def evaluate(params: list[torch.Tensor], x_test: torch.Tensor, y_test: torch.Tensor, n_classes: int,
             n_test: int, eval_batch: int = 1000) -> torch.Tensor:
    """(models,) test accuracy over the digit logits (device tensor), as train.evaluate for the MLP."""
    correct = torch.zeros(params[0].shape[0], device=params[0].device)
    for s in range(0, n_test, eval_batch):
        e = min(s + eval_batch, n_test)
        logits = forward(params, x_test[s:e].to(params[0].dtype))
        correct += (logits[..., :n_classes].argmax(-1) == y_test[s:e]).sum(-1)
    return correct / n_test
