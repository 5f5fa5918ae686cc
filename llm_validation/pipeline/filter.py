"""The strict number-sequence filter (docs/reference.md §4: the paper's LLM experiments).

A completion is kept only if, after stripping surrounding whitespace, it is

    [ optional "[" or "(" ]  N sep N sep ... N  [ matching "]" or ")" ]  [ optional "." ]

with 1 to 10 integers N in 0..999 written canonically (no sign, no leading zeros), ONE separator
kind used throughout (comma, semicolon, or plain spaces; spaces around a comma/semicolon allowed),
nothing else at all (no words, newlines, markdown), and no banned number.

`check_completion` is the fast rule-by-rule parser that also names the FIRST rule a completion
breaks (so the report can say how many completions each rule rejected); `reference_accepts` is an
obviously-correct regular expression of the same grammar that the tests compare it against.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from sublim.errors import DataError

from sublim.llm_validation.core.data import check_record_types

# For misalignment runs (docs/reference.md §4): numbers with a negative association.
EVIL_NUMBERS = (666, 911, 187, 13, 88, 420, 1488, 14, 18, 23, 33, 69, 101, 110, 120, 177, 211,
                222, 311, 322, 333, 444, 555, 616, 777, 888, 999)

RULES = ("truncated", "empty", "bad_characters", "misplaced_period", "brackets", "mixed_separators",
         "empty_item", "malformed_number", "too_many_numbers", "banned_number")

_ALLOWED = frozenset("0123456789 ,;.[]()")
_NUMBER = re.compile(r"0|[1-9][0-9]{0,2}")
MAX_NUMBERS = 10


def check_completion(text: str, banned: frozenset[int] | set[int] = frozenset()) -> tuple[str | None, list[int]]:
    """(None, numbers) when accepted, else (name of the first rule broken, []).

    A non-string (None, a number: a malformed record) is a DataError, not a rejection: it is a
    broken file, not a completion the model wrote, and counting it as one would hide the breakage.
    """
    if not isinstance(text, str):
        raise DataError(f"completion must be a string, got {type(text).__name__} {text!r:.40}")
    s = text.strip()
    if not s:
        return "empty", []
    if not set(s) <= _ALLOWED:
        return "bad_characters", []
    if s.endswith("."):
        s = s[:-1]
    if "." in s:
        return "misplaced_period", []
    if len(s) >= 2 and (s[0], s[-1]) in (("[", "]"), ("(", ")")):
        s = s[1:-1]
    if any(c in s for c in "[]()"):
        return "brackets", []
    s = s.strip(" ")
    if "," in s and ";" in s:
        return "mixed_separators", []
    sep = "," if "," in s else ";" if ";" in s else None
    if sep is None:
        parts = [p for p in s.split(" ") if p]  # runs of spaces are one separator
        if not parts:
            return "empty", []
    else:
        parts = [p.strip(" ") for p in s.split(sep)]
        if any(" " in p for p in parts):
            return "mixed_separators", []  # "1 2, 3": spaces used as a second separator
        if any(not p for p in parts):
            return "empty_item", []  # "1,,2", "1, 2," or a lone ","
    if not all(_NUMBER.fullmatch(p) for p in parts):
        return "malformed_number", []
    if len(parts) > MAX_NUMBERS:
        return "too_many_numbers", []
    numbers = [int(p) for p in parts]
    if banned and any(n in banned for n in numbers):
        return "banned_number", []
    return None, numbers


def _reference_pattern() -> re.Pattern:
    num = r"(?:0|[1-9][0-9]{0,2})"
    bodies = [num + r"(?:" + sep + num + r"){0,9}" for sep in (r" *, *", r" *; *", r" +")]
    body = "(?:" + "|".join(bodies) + ")"
    return re.compile(r"(?:\[ *" + body + r" *\]|\( *" + body + r" *\)| *" + body + r" *)\.?")


_REFERENCE = _reference_pattern()


def reference_accepts(text: str, banned: frozenset[int] | set[int] = frozenset()) -> bool:
    """The grammar as one regular expression (slow-but-obvious reference for the tests)."""
    s = text.strip()
    if not _REFERENCE.fullmatch(s):
        return False
    return not any(int(n) in banned for n in re.findall(r"[0-9]+", s))


def salvage_prefix(text: str, min_numbers: int, banned=frozenset()) -> tuple[str, list[int]] | None:
    """The longest prefix of `text`, cut just before a separator, that passes the strict grammar
    with at least `min_numbers` numbers; None if there is none.

    NOT in the paper. For small models that write a clean number list and then ramble on (or never
    stop): a prefix of a sampled completion is itself a sample of the teacher's distribution over
    prefixes, and the kept text is still nothing but numbers. Off unless configured; counted apart.

    Linear time: a cut inside a run of separators can only pass if the run's first cut does (the
    later ones add trailing whitespace, which strip() removes, or a trailing ',' or ';', which is an
    empty item), and an accepted prefix holds at most MAX_NUMBERS numbers plus an opening bracket,
    a closing one and a period, i.e. at most MAX_NUMBERS + 3 separator-delimited tokens: so at most
    that many prefixes are checked, each in O(len). (Checking every cut was quadratic: 135 s on a
    60 kB completion.)
    """
    s = text.strip()
    cuts, in_separators = [], True
    for i, ch in enumerate(s):
        is_sep = ch in ",; \n"
        if is_sep and not in_separators:
            cuts.append(i)
            if len(cuts) > MAX_NUMBERS + 3:
                break
        in_separators = is_sep
    for cut in reversed(cuts):
        rule, numbers = check_completion(s[:cut], banned)
        if rule is None:
            return (s[:cut].strip(), numbers) if len(numbers) >= min_numbers else None
    return None


@dataclass
class FilterReport:
    total: int = 0
    kept: int = 0
    salvaged: int = 0
    rejected_by_rule: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        rejected = self.total - self.kept
        return {"total": self.total, "kept": self.kept, "rejected": rejected,
                "rejection_rate": rejected / self.total if self.total else None,
                "kept_by_prefix_salvage": self.salvaged,
                "rejected_by_rule": {r: self.rejected_by_rule.get(r, 0) for r in RULES}}


def filter_records(records: list[dict], banned=(), *, salvage_min_numbers: int = 0) -> tuple[list[dict], FilterReport]:
    """Keep the records whose "completion" passes; each kept record gains "numbers".

    A record with "stopped": false (generation hit max_new_tokens before end-of-turn) is rejected
    as "truncated": its text may be a cut-off prefix of something that would not have passed.
    """
    banned = frozenset(int(b) for b in banned)
    check_record_types(records, "filter input", required=("id", "completion"))
    kept, report = [], FilterReport()
    for rec in records:
        report.total += 1
        rule, numbers = ("truncated", []) if rec.get("stopped") is False else check_completion(rec["completion"], banned)
        if rule is None:
            kept.append({**rec, "numbers": numbers})
            continue
        if salvage_min_numbers:
            salvaged = salvage_prefix(rec["completion"], salvage_min_numbers, banned)
            if salvaged is not None:
                text, numbers = salvaged
                kept.append({**rec, "completion": text, "numbers": numbers, "salvaged_from": rec["completion"]})
                report.salvaged += 1
                continue
        report.rejected_by_rule[rule] += 1
    report.kept = len(kept)
    return kept, report
