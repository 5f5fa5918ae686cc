"""Teacher distributions over the number vocabulary, computed once per teacher and cached.

A cache file holds, for every context in order, the teacher's log-probabilities over the number
vocabulary at each completion position: one (positions, |V|) float32 tensor plus the offsets of
each context. Beside it, `<name>.json` records what it was computed from (model, teacher, the
contexts' sha256, vocabulary, max_length). A rerun reuses a cache whose record matches and refuses
one that does not (a cache is never silently mixed with another experiment's).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from sublim.errors import ConfigError
from sublim.progress import progress
from sublim.rundir import atomic_write_bytes, atomic_write_json, read_json

from sublim.llm_validation.distill.forward import number_log_probs


class TeacherCache:
    def __init__(self, logp: torch.Tensor, offsets: list[int]):
        self.logp, self.offsets = logp, offsets

    def for_context(self, i: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        return (self.logp if rows is None else rows)[self.offsets[i]:self.offsets[i + 1]]

    def for_batch(self, indices, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The cached rows of these contexts, concatenated; `rows`: any tensor aligned with the cache's
        positions (e.g. a loss mask) sliced the same way."""
        return torch.cat([self.for_context(int(i), rows) for i in indices])


@torch.no_grad()
def compute_cache(model, encoded, vocab, device, batch_size: int, desc: str) -> TeacherCache:
    was_training = model.training
    model.eval()
    chunks, offsets = [], [0]
    for lo in progress(range(0, len(encoded), batch_size), desc=desc):
        batch = encoded[lo:lo + batch_size]
        chunks.append(number_log_probs(model, batch, vocab, device).float().cpu())
        for e in batch:
            offsets.append(offsets[-1] + len(e.completion_ids))
    model.train(was_training)
    return TeacherCache(torch.cat(chunks), offsets)


def load_or_compute(path: Path, fingerprint: dict, compute) -> TeacherCache:
    """The cached distributions at `path` when their fingerprint matches; else compute and save."""
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        old = read_json(meta_path)
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ConfigError(f"{path}: cached teacher distributions come from another setup "
                              f"(differs in {', '.join(diff)}); use another run directory")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return TeacherCache(blob["logp"], blob["offsets"])
    cache = compute()
    buf = io.BytesIO()
    torch.save({"logp": cache.logp, "offsets": cache.offsets}, buf)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(meta_path, fingerprint)
    return cache
