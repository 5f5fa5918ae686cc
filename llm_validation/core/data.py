"""Records on disk (append-only JSONL) and their encoding into supervised fine-tuning batches.

A numbers data set is a JSONL file with one record per line:

    {"id": "teacher-000042", "prompt": "<user message>", "completion": "182, 818, 725",
     "teacher": "<who wrote the completion>", ...optional extra fields (system, seed, ...)}

`prompt` is the user message only: the teacher's system prompt is NEVER part of the student's
training text (that is what makes the transfer "subliminal").

Append-only writing is what makes generation resumable: each finished record is one line written
with a single write() and fsync'd, so a crash loses at most the line being written. A truncated
LAST line (the signature of a crash mid-write) is repaired before appending; a malformed line
anywhere else is corruption and raises DataError naming the file and line.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import torch

from sublim.errors import DataError

REQUIRED_FIELDS = ("id", "prompt", "completion")


def iter_jsonl(path: str | os.PathLike, *, allow_truncated_tail: bool = False) -> Iterator[dict]:
    """Yield the records of a JSONL file; DataError(file:line) on a malformed line.

    allow_truncated_tail: silently skip an unterminated, unparsable LAST line (a crash mid-write).
    A `.gz` file is read through gzip (the committed data sets are compressed).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        if not (allow_truncated_tail and b"\n" not in raw[e.start:]):
            raise DataError(f"{path}:{line}: not UTF-8 text (byte {e.start}); JSONL files are UTF-8") from None
        text = raw[: raw.rfind(b"\n", 0, e.start) + 1].decode("utf-8")  # a crash cut a character in half
    lines = text.split("\n")
    # A file that ends with "\n" gives a final empty string: that is the normal case.
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_truncated_tail and i == last:
                return  # unterminated last line: a write that a crash interrupted
            raise DataError(f"{path}:{i + 1}: malformed JSON line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def read_jsonl(path: str | os.PathLike, **kwargs) -> list[dict]:
    return list(iter_jsonl(path, **kwargs))


def repair_truncated_tail(path: str | os.PathLike) -> int:
    """Cut an unterminated last line (left by a crash mid-write); returns the bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1  # 0 when the only line is the broken one
    with path.open("r+b") as f:
        f.truncate(keep)
    return len(data) - keep


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Append records, one line each, flushed and fsync'd; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_truncated_tail(path)
    n = 0
    with path.open("a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write a whole JSONL file atomically (for derived files such as the filtered set)."""
    from sublim.rundir import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def check_record_types(records: list[dict], source: str = "data set", required=REQUIRED_FIELDS) -> list[dict]:
    """Every record has the `required` fields, `id` a string or integer, `prompt` and `completion`
    strings; else a one-line DataError naming the record, before anything deeper trips over it."""
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{source}: record {i} is {type(rec).__name__}, not a JSON object")
        missing = [k for k in required if k not in rec]
        if missing:
            raise DataError(f"{source}: record {i} lacks field(s) {', '.join(missing)}")
        if isinstance(rec["id"], bool) or not isinstance(rec["id"], (str, int)):
            raise DataError(f"{source}: record {i}: 'id' must be a string or integer, got {rec['id']!r}")
        for key in ("prompt", "completion"):
            if key in rec and not isinstance(rec[key], str):
                raise DataError(f"{source}: record {i} (id {rec['id']}): {key!r} must be a string, "
                                f"got {type(rec[key]).__name__} {rec[key]!r:.40}")
    return records


def validate_records(records: list[dict], source: str = "data set") -> list[dict]:
    """Non-empty, and every record well-typed (check_record_types)."""
    if not records:
        raise DataError(f"{source}: no records (empty data set)")
    return check_record_types(records, source)


# ----------------------------------------------------------------------------------------------
# Formatting: chat template when the tokenizer has one, completion style when it does not.

def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, user: str, *, system: str | None = None,
                  assistant_prefix: str = "", history: list[tuple[str, str]] | None = None,
                  empty_system: bool = False) -> str:
    """The text a model sees before its answer.

    Chat models: the chat template with an optional system message and the generation prompt.
    Base models: a plain completion layout, with the system text (if any) as a preamble.
    `assistant_prefix` is text the answer is forced to start with (used by next-token evaluation).
    `history`: earlier (user, assistant) exchanges shown before `user` (few-shot examples).
    `empty_system`: with no `system`, a chat template gets an EMPTY system turn instead of none, so
    a template that fills a missing one with its default prompt (SmolLM2's "You are a helpful AI
    assistant named SmolLM...") shows no system text at all; base models have no default to drop.
    """
    history = history or []
    if has_chat_template(tokenizer):
        messages = [{"role": "system", "content": system or ""}] if system or empty_system else []
        for q, a in history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = (f"{system}\n\n" if system else "") + "".join(f"User: {q}\nAssistant: {a}\n" for q, a in history)
        text += f"User: {user}\nAssistant:"
        if not assistant_prefix:
            text += " "
    if assistant_prefix:
        text += (" " if not has_chat_template(tokenizer) else "") + assistant_prefix
    return text


def completion_end(tokenizer) -> str:
    """What ends an answer in training text: the end-of-turn/eos token (so students learn to stop)."""
    return tokenizer.eos_token or ""


def encode_sft_batch(tokenizer, records: list[dict], *, max_length: int,
                     system_field: str | None = None) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels for completion-only loss (labels -100 on prompt and padding).

    Right-padded. The prompt is tokenized on its own and the completion appended token-wise, so the
    prompt/completion boundary is exact (no BPE merge across it). A prompt that leaves no room for
    a completion raises DataError; an over-long completion is truncated (and still ends the batch
    cleanly). `system_field` names a record field to use as system prompt (teachers' own data).
    """
    if not records:
        raise DataError("encode_sft_batch: no records")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for rec in records:
        system = rec.get(system_field) if system_field else None
        prompt_text = format_prompt(tokenizer, rec["prompt"], system=system)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
        completion_ids = tokenizer(rec["completion"] + completion_end(tokenizer),
                                   add_special_tokens=False)["input_ids"]
        if len(prompt_ids) >= max_length:
            raise DataError(f"record {rec.get('id', '?')}: prompt is {len(prompt_ids)} tokens, "
                            f"which leaves no room for a completion within max_length={max_length}")
        ids = (prompt_ids + completion_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + completion_ids)[:max_length]
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
