"""A student of another model family (issue #23; Brockers et al.'s other-architecture arm, on the LLM).

The teachers' caches hold their distributions over the TEACHER tokenizer's number vocabulary at the
teacher's completion positions. A student with another tokenizer (`student_model`, e.g. SmolLM2 ->
Gemma 3) is trained on the same records through two pairings:

- vocabulary: every number text of the teacher maps to every student id that decodes to it (Gemma
  holds each digit twice, the text token "1" and its byte fallback "<0x31>"). The student's
  probability of a text is the SUM over its ids, so its log-probabilities over its own number
  vocabulary are log-sum-exp'd per text into the teacher's order (`grouped_log_probs`), and the loss
  is the same restricted KL over the teacher's texts. End of turn pairs with end of turn, whatever
  each tokenizer calls it. Two vocabularies whose texts differ are refused in one line.
- positions: a context pairs when both completions (each cut to max_length after its own model's
  prompt) agree text by text over the shorter one; both are cut to that length. A context that
  does not pair is dropped; students/pairing.json lists it, with the positions kept.

There is no shared initialization here: the theorem predicts nothing, and the MNIST analogue
(toymodels claims heads_cnn) transfers nothing. With student_model == model the pairing is the
identity and a student is exactly the same-family student (tests/llm_validation).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

import torch

from sublim.errors import ConfigError, DataError

from sublim.llm_validation.distill.cache import TeacherCache
from sublim.llm_validation.distill.contexts import Encoded

EOT = "<end of turn>"  # the text both vocabularies' end-of-turn tokens pair under


def text_of(tokenizer, eot: int):
    """id -> its text, the end-of-turn token as EOT (memoized: a completion repeats a few dozen ids)."""
    return lru_cache(maxsize=None)(lambda i: EOT if i == eot else tokenizer.decode([i]))


def vocab_texts(tokenizer, ids, eot: int) -> list[str]:
    """Each id's text, the end-of-turn token as EOT."""
    text = text_of(tokenizer, eot)
    return [text(int(i)) for i in ids]


def text_groups(teacher_texts: list[str], student_texts: list[str]) -> list[list[int]]:
    """For each teacher vocabulary entry (in order), the indices of the student entries with its text."""
    groups = [[j for j, s in enumerate(student_texts) if s == t] for t in teacher_texts]
    missing = [t for t, g in zip(teacher_texts, groups) if not g]
    extra = sorted(set(student_texts) - set(teacher_texts))
    if missing or extra or len(set(teacher_texts)) != len(teacher_texts):
        raise ConfigError(f"student_model: the number vocabularies do not pair (teacher only {missing}, "
                          f"student only {extra}, teacher duplicates {len(teacher_texts) - len(set(teacher_texts))})")
    return groups


def grouped_log_probs(logp: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """(..., |V_student|) log-probs -> (..., |V_teacher|): log of the summed probability of each text."""
    return torch.stack([torch.logsumexp(logp[..., g], dim=-1) for g in groups], dim=-1)


@dataclass(frozen=True)
class StudentView:
    """What a cross-family student trains on: its contexts (paired ones only, cut to the paired
    length), its number vocabulary, the text groups, and per kept context (teacher context index,
    positions kept) to cut the teachers' caches the same way."""
    encoded: list[Encoded]
    vocab: torch.Tensor
    groups: list[list[int]]
    spans: list[tuple[int, int]]

    def cache(self, teacher_cache: TeacherCache) -> TeacherCache:
        rows = [teacher_cache.for_context(i)[:k] for i, k in self.spans]
        return TeacherCache(torch.cat(rows), list(accumulate((k for _, k in self.spans), initial=0)))


def pair_contexts(teacher: list[Encoded], student: list[Encoded], teacher_text, student_text) -> tuple[list, list, list]:
    """(student contexts cut to the paired length, spans, ids of the dropped contexts); *_text(id) -> text."""
    kept, spans, dropped = [], [], []
    for i, (t, s) in enumerate(zip(teacher, student, strict=True)):
        k = min(len(t.completion_ids), len(s.completion_ids))
        if k == 0 or [teacher_text(x) for x in t.completion_ids[:k]] != [student_text(x) for x in s.completion_ids[:k]]:
            dropped.append(t.id)
            continue
        kept.append(Encoded(s.id, s.prompt_ids, s.completion_ids[:k]))
        spans.append((i, k))
    if not kept:
        raise DataError("student_model: no context's completion tokenizes into the same texts for both models")
    return kept, spans, dropped


def student_view(teacher_tok, teacher_vocab, teacher_eot: int, teacher_encoded: list[Encoded],
                 student_tok, student_vocab, student_eot: int, student_encoded: list[Encoded]) -> tuple[StudentView, dict]:
    """The student's view of the run and its record (students/pairing.json)."""
    teacher_texts = vocab_texts(teacher_tok, teacher_vocab, teacher_eot)
    groups = text_groups(teacher_texts, vocab_texts(student_tok, student_vocab, student_eot))
    kept, spans, dropped = pair_contexts(teacher_encoded, student_encoded, text_of(teacher_tok, teacher_eot),
                                         text_of(student_tok, student_eot))
    record = {"contexts": len(teacher_encoded), "paired": len(kept), "dropped": dropped,
              "teacher_positions": sum(len(e.completion_ids) for e in teacher_encoded),
              "paired_positions": sum(k for _, k in spans),
              "student_vocab": len(student_vocab), "teacher_vocab": len(teacher_vocab),
              "student_ids_per_text": {t: len(g) for t, g in zip(teacher_texts, groups)}}
    return StudentView(kept, student_vocab, groups, spans), record
