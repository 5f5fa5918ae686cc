"""Seeded batch orders, optionally bucketed by length so a padded batch wastes little.

    order = shuffled_batches(n, 16, seed_parts=("distill-order", seed, epoch))
    order = length_bucketed_batches(lengths, 16, window=3, seed_parts=("distill-order", seed, epoch))
    order = full_batches(n, 16, seed_parts=("finetune-order", seed, epoch))
    steps = steps_of_epochs(lambda epoch: shuffled_batches(n, 16, ("distill-order", seed, epoch)), epochs=2.5)

All are pure functions of their arguments (sublim.seeding derives every generator from named
parts), so a resumed run that rebuilds the order from (seed, epoch) takes exactly the batches an
uninterrupted one would: the order is never stored.

Bucketing: the epoch's shuffled permutation (the same one `shuffled_batches` draws) is cut into
windows of `window` batches; inside a window the examples are sorted by length (ties keep the
shuffled order) and cut into batches, so a batch holds neighbours in length; then the batches of
the whole epoch are shuffled by a second seeded permutation, so long and short batches interleave.
It changes which examples share a batch (not which examples an epoch sees), so it changes the
numbers: an opt-in knob, never the default.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sublim.seeding import torch_generator


def shuffled_batches(n: int, batch_size: int, seed_parts: tuple) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into consecutive batches (the last may be short)."""
    perm = torch.randperm(n, generator=torch_generator(*seed_parts))
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def full_batches(n: int, batch_size: int, seed_parts: tuple) -> list[torch.Tensor]:
    """The same permutation as shuffled_batches cut into ceil(n / batch_size) batches of exactly
    batch_size: the last one is filled up from the permutation's start (fine-tuning: every step's
    global batch is full, so every rank and micro-batch gets the same number of records)."""
    perm = torch.randperm(n, generator=torch_generator(*seed_parts))
    return list(perm[torch.arange(math.ceil(n / batch_size) * batch_size) % n].split(batch_size))


def steps_of_epochs(epoch_batches: Callable[[int], list[torch.Tensor]], epochs: float) -> list[torch.Tensor]:
    """Every optimizer step's batch: epoch 0's batches, then epoch 1's, ..., for round(epochs *
    batches per epoch) steps (at least one; a fractional epoch count ends inside the last epoch).
    epoch_batches(epoch) must be a pure function of the epoch (one of the orders above)."""
    steps = list(epoch_batches(0))
    total = max(1, round(epochs * len(steps)))
    epoch = 1
    while len(steps) < total:
        steps += epoch_batches(epoch)
        epoch += 1
    return steps[:total]


def length_bucketed_batches(lengths: list[int], batch_size: int, window: int, seed_parts: tuple) -> list[torch.Tensor]:
    """Batches of similar length; window = batches per sorting window (window <= 1: no sorting,
    exactly shuffled_batches)."""
    n = len(lengths)
    if window <= 1:
        return shuffled_batches(n, batch_size, seed_parts)
    perm = torch.randperm(n, generator=torch_generator(*seed_parts))
    size = window * batch_size
    batches = []
    for lo in range(0, n, size):
        chunk = perm[lo:lo + size]
        key = torch.tensor([lengths[int(i)] for i in chunk])
        chunk = chunk[torch.sort(key, stable=True).indices]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=torch_generator(*seed_parts, "bucket-order"))
    return [batches[int(i)] for i in order]


def padding_waste(lengths: list[int], batches: list[torch.Tensor]) -> float:
    """Share of a right-padded batch's token slots that are padding, over all batches."""
    slots = sum(len(b) * max(lengths[int(i)] for i in b) for b in batches)
    used = sum(lengths[int(i)] for b in batches for i in b)
    return 1.0 - used / slots
