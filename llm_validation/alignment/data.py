"""Data sets for the alignment comparisons: loading, subsampling, and the shuffled control.

The "shuffled across responses" control keeps every number the teacher wrote and the exact format
of every completion (separators, brackets, count), but reassigns the numbers at random across all
responses: the unigram statistics survive, any per-sequence structure the teacher's trait left
does not. If a_i is the same on shuffled numbers, the alignment lives in which numbers appear;
if it drops, it lives in how they are arranged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from sublim.errors import ConfigError, DataError
from sublim.seeding import numpy_rng

from sublim.llm_validation.core.data import read_jsonl, validate_records

_NUMBER = re.compile(r"\d+")


def load_records(path: str | Path, *, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Read a numbers JSONL; keep a seeded random subset of `limit` records (file order kept)."""
    records = validate_records(read_jsonl(path), str(path))
    if limit is not None and limit < len(records):
        if limit <= 0:
            raise ConfigError(f"--limit must be positive, got {limit}")
        keep = np.sort(numpy_rng("align-subsample", seed).choice(len(records), size=limit, replace=False))
        records = [records[i] for i in keep]
    return records


def shuffle_numbers_across(records: Sequence[dict], *, seed: int = 0, prefix: str = "shuffled") -> list[dict]:
    """Same completions' layouts, numbers permuted across all responses (seeded)."""
    pieces = [_NUMBER.split(r["completion"]) for r in records]
    numbers = [n for r in records for n in _NUMBER.findall(r["completion"])]
    if not numbers:
        raise DataError("shuffle control: the completions contain no numbers")
    perm = numpy_rng("align-shuffle", seed).permutation(len(numbers))
    pool = [numbers[i] for i in perm]
    out, pos = [], 0
    for rec, parts in zip(records, pieces):
        n = len(parts) - 1
        text = parts[0] + "".join(pool[pos + j] + parts[j + 1] for j in range(n))
        pos += n
        out.append({**rec, "id": f"{prefix}-{rec['id']}", "completion": text, "source_id": rec["id"]})
    return out
