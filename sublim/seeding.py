"""One way to seed everything in the lab: a seed is a pure function of named parts.

    g = torch_generator("generate", run_seed, record_id)   # the same stream wherever it runs
    rng = numpy_rng("subsample", seed, "teacher")

A stream depends only on what it is for and which item it serves, never on how much work was
already done, so a resumed run draws exactly the numbers an uninterrupted one would have drawn.
sha256 makes the mapping stable across runs, platforms and Python versions (hash() is salted).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs, platforms, Pythons)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_generator(*parts, device="cpu"):
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


def numpy_rng(*parts):
    import numpy as np

    return np.random.default_rng(derive_seed(*parts))
