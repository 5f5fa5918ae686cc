"""Number contexts: which records the student is distilled on, and their token ids.

Sources (recorded in the run's contexts.json with a sha256 of the records):
- `synthetic`: prompts.synthetic_number_records, answers written in the strict filter's grammar
  by code, so no generation is needed (seconds for thousands of contexts);
- `file`: any JSONL(.gz) of {"prompt", "completion"} records, e.g. a model's filtered generations
  (llm_validation/results/llm_gpu_2026-11-27_h200/base.filtered.jsonl.gz holds 4,692 completions
  of the un-prompted SmolLM2-135M, written on an H200).
Every context is the USER prompt (no system prompt) followed by the completion and end of turn;
a system-prompt teacher reads the same completion after its own prompt with the system message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sublim.errors import DataError

from sublim.llm_validation.core.data import check_record_types, format_prompt, has_chat_template, read_jsonl
from sublim.llm_validation.core.prompts import synthetic_number_records


def load_context_records(source: str, path: str, n: int, seed: int) -> list[dict]:
    if source == "synthetic":
        return synthetic_number_records(n, seed)
    records = _read_records(Path(path))
    if len(records) < n:
        raise DataError(f"{path}: holds {len(records)} usable records, the config asks for n_contexts={n}")
    return records[:n]


def resolve_data_path(path: str | Path) -> Path:
    """A data file as given, else relative to the repository root (presets name files in the repo,
    e.g. llm_validation/results/..., so that they work from any working directory)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    in_repo = Path(__file__).resolve().parents[2] / path
    return in_repo if in_repo.exists() else path


def _read_records(path: Path) -> list[dict]:
    path = resolve_data_path(path)
    records = check_record_types(read_jsonl(path), str(path))
    return [{"id": str(r["id"]), "prompt": r["prompt"], "completion": r["completion"]} for r in records]


def records_digest(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["id"], r["prompt"], r["completion"]]).encode())
    return h.hexdigest()


@dataclass
class Encoded:
    """One context: prompt ids (as the student sees them), completion ids ending in end of turn."""
    id: str
    prompt_ids: list[int]
    completion_ids: list[int]


def encode_context(tokenizer, record: dict, eot: int, max_length: int, system: str | None = None,
                   empty_system: bool = False) -> Encoded:
    """The student's view fits max_length (the completion is cut to fit). A system-prompt teacher's
    view has the SAME completion tokens after a longer prompt, so its positions pair one to one.
    empty_system (train_system none): the student's prompt with an EMPTY system turn instead of the
    template's default; the completion is still cut by the default view, so it pairs with the caches."""
    def ids(**kw) -> list[int]:
        return tokenizer(format_prompt(tokenizer, record["prompt"], **kw),
                         add_special_tokens=not has_chat_template(tokenizer))["input_ids"]

    prompt_ids = ids()
    completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"] + [eot]
    completion = completion[:max(max_length - len(prompt_ids), 0)]
    if system is not None or empty_system:
        prompt_ids = ids(system=system, empty_system=empty_system)
    return Encoded(record["id"], prompt_ids, completion)


def encode_contexts(tokenizer, records: list[dict], eot: int, max_length: int,
                    system: str | None = None, empty_system: bool = False) -> list[Encoded]:
    """Encode every record; refuses a set with no completion position at all."""
    out = [encode_context(tokenizer, r, eot, max_length, system, empty_system) for r in records]
    if not out or sum(len(e.completion_ids) for e in out) == 0:
        raise DataError(f"distill: the {len(records)} contexts have no completion positions "
                        f"(every prompt fills max_length={max_length}, or there are no records)")
    return out
