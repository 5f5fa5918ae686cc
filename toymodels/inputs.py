"""Batches, generated on the fly from seeded generators: never a (models x 60000 x 784) tensor.

Every batch is (models, batch, 784) when each model gets its own data (independent_batches,
the default: the models are then independent samples and their spread gives an honest CI), or
(batch, 784) shared by all models. Peak memory is one batch, whatever the epoch length.

One generator per (purpose, chunk of models) and device: a single call draws the whole chunk's
batch, which keeps the GPU free of per-model launches. The teacher and its students read the
same distillation batch because it is drawn once and passed to both.
"""

from __future__ import annotations

import torch

from sublim.errors import ConfigError
from sublim.seeding import torch_generator

from .model import Workspace


def make_generator(device: torch.device, *parts) -> torch.Generator:
    """The data stream named by `parts` on `device` (sublim.seeding: the project's one seed helper)."""
    return torch_generator(*parts, device=device)


def epoch_orders(n_groups: int, n_train: int, n_examples: int, g: torch.Generator, device) -> torch.Tensor:
    """(n_groups, n_examples) indices into the training set: a fresh shuffle per group and epoch.

    Sorting uniform keys gives every group its own random permutation in one call.
    """
    keys = torch.rand(n_groups, n_train, generator=g, device=device)
    return keys.argsort(dim=1)[:, :n_examples]


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def batch_slice(step: int, n_examples: int, batch_size: int) -> slice:
    return slice(step * batch_size, min((step + 1) * batch_size, n_examples))


class DistillInputs:
    """The student's (and the teacher's) inputs for one epoch of distillation.

    kind: uniform noise in [-1, 1] (the paper), Gaussian N(0, 1), real MNIST training images,
    or MNIST images whose 784 pixels are shuffled independently per image (the pixel intensity
    histogram survives, the digit does not).
    """

    def __init__(self, kind: str, x_train: torch.Tensor, n_groups: int, n_examples: int, batch_size: int,
                 g: torch.Generator, independent: bool, dtype: torch.dtype, workspace=None):
        self.kind, self.x_train, self.n_examples, self.batch_size = kind, x_train, n_examples, batch_size
        self.g, self.dtype = g, dtype
        self.groups = n_groups if independent else 1
        self.independent = independent
        self.device = x_train.device
        self.d_in = x_train.shape[1]
        # scratch memory shared across epochs and chunks (a private one when none is given)
        self.workspace = workspace if workspace is not None else Workspace()
        if kind in ("mnist", "shuffled_pixels"):
            if n_examples > x_train.shape[0]:
                raise ConfigError(f"distill_input={kind} has only {x_train.shape[0]} images per epoch, asked {n_examples}")
            self.order = epoch_orders(self.groups, x_train.shape[0], n_examples, g, self.device)

    def _out(self, shape: tuple[int, ...]) -> torch.Tensor:
        """One buffer for every batch (the short last batch uses its head): on CPU a fresh
        batch-sized tensor costs more in page faults than drawing the noise into it."""
        return self.workspace.get("distill.x", shape, self.dtype, self.device)

    def batch(self, step: int) -> torch.Tensor:
        """The inputs of `step`. The tensor is overwritten by the next call: use it (or copy it) first."""
        sl = batch_slice(step, self.n_examples, self.batch_size)
        b = sl.stop - sl.start
        shape = (self.groups, b, self.d_in)
        if self.kind == "uniform":
            x = self._out(shape)
            if self.device.type == "cpu":
                # one pass instead of rand, mul_, sub_, and the same bits: the CPU kernel computes
                # u * (to - from) + from from the same draw u, and 2u - 1 is exact in fp32 and fp64
                x.uniform_(-1, 1, generator=self.g)
            else:
                torch.rand(shape, generator=self.g, device=self.device, dtype=self.dtype, out=x).mul_(2).sub_(1)
        elif self.kind == "gaussian":
            x = torch.randn(shape, generator=self.g, device=self.device, dtype=self.dtype, out=self._out(shape))
        else:
            rows = self.order[:, sl].reshape(-1)
            if self.x_train.dtype == self.dtype:
                x = torch.index_select(self.x_train, 0, rows, out=self._out(shape).view(-1, self.d_in)).view(shape)
            else:
                x = self.x_train.index_select(0, rows).to(self.dtype).view(shape)  # (groups, b, d_in)
            if self.kind == "shuffled_pixels":
                perm = torch.rand(shape, generator=self.g, device=self.device).argsort(dim=-1)
                x = x.gather(-1, perm)
        return x if self.independent else x[0]
