"""Seeded batch orders, optionally bucketed by length so a padded batch wastes little.

    order = shuffled_batches(n, 16, seed_parts=("distill-order", seed, epoch))
    order = length_bucketed_batches(lengths, 16, window=3, seed_parts=("distill-order", seed, epoch))

Both are pure functions of their arguments (sublim.seeding derives every generator from named
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

import torch

from sublim.seeding import torch_generator


def shuffled_batches(n: int, batch_size: int, seed_parts: tuple) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into consecutive batches (the last may be short)."""
    perm = torch.randperm(n, generator=torch_generator(*seed_parts))
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


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
