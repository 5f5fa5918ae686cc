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

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sublim.errors import DataError

from sublim.llm_validation.core.data import format_prompt, has_chat_template
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
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 JSONL ({e})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{i}: malformed JSON line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) \
                or not isinstance(rec.get("completion"), str):
            raise DataError(f"{path}:{i}: a record needs string 'prompt' and 'completion' fields")
        out.append({"id": str(rec.get("id", f"line{i}")), "prompt": rec["prompt"], "completion": rec["completion"]})
    return out


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


def encode_context(tokenizer, record: dict, eot: int, max_length: int, system: str | None = None) -> Encoded:
    """The student's view fits max_length (the completion is cut to fit). A system-prompt teacher's
    view has the SAME completion tokens after a longer prompt, so its positions pair one to one."""
    prompt_ids = tokenizer(format_prompt(tokenizer, record["prompt"]),
                           add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"] + [eot]
    completion = completion[:max(max_length - len(prompt_ids), 0)]
    if system is not None:
        prompt_ids = tokenizer(format_prompt(tokenizer, record["prompt"], system=system),
                               add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    return Encoded(record["id"], prompt_ids, completion)


def encode_contexts(tokenizer, records: list[dict], eot: int, max_length: int,
                    system: str | None = None) -> list[Encoded]:
    """Encode every record; refuses a set with no completion position at all."""
    out = [encode_context(tokenizer, r, eot, max_length, system) for r in records]
    if not out or sum(len(e.completion_ids) for e in out) == 0:
        raise DataError(f"distill: the {len(records)} contexts have no completion positions "
                        f"(every prompt fills max_length={max_length}, or there are no records)")
    return out
