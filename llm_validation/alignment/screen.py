"""The gradient screen: can a_i find the examples that carry the trait, where a semantic filter can't?

Given the teacher's numbers scored against the trait direction (alignment.py):
1. Hold out a seeded share of the examples (never trained on) to measure usefulness.
2. Rank the rest by the score; build slices of equal size m: top (most aligned), bottom (least),
   random; and the two defenses of equal size N - m: drop_top (everything but the top m) and
   drop_random (everything but a random m).
3. Fine-tune one student per slice from the same base (the pipeline's finetune), then measure
   - transfer: the student's mean log p(target's first token | favorite-animal prompts) minus the
     base model's (the same scalar whose gradient is the trait direction), and the next-token
     probability itself;
   - usefulness: mean per-token loss on the held-out teacher numbers (lower = the data still
     teaches the task).
4. Does transfer follow the score (top > random > bottom)? Does drop_top transfer less than
   drop_random while its held-out loss stays close?

Each student is a finished fine-tuning directory under out_dir/screen/<arm>/: a rerun reuses them
(finetune() resumes or skips), and screen.json is rewritten atomically after every arm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from sublim.config_cli import check_field_types
from sublim.errors import ConfigError, DataError
from sublim.progress import log
from sublim.rundir import atomic_write_json
from sublim.seeding import numpy_rng

from sublim.llm_validation.alignment.config import SCREEN_ARMS, check_screen
from sublim.llm_validation.core.config import FinetuneConfig
from sublim.llm_validation.core.finetune import finetune
from sublim.llm_validation.core.models import base_copy, load_finetuned
from sublim.llm_validation.core.preference import mean_answer_log_probs
from sublim.llm_validation.core.scores import AlignmentScores, per_example_completion_loss

ARMS = SCREEN_ARMS  # declared once, in alignment/config.py


@dataclass(frozen=True)
class ScreenConfig:
    direction: str = ""            # which direction's a_i ranks the examples ("" = the first)
    rank_by: str = "alignment"     # "alignment" (a_i) | "per_token" (a_i / n_tokens) | "cosine"
    fraction: float = 0.25         # m = fraction * (pool size): size of top/bottom/random
    heldout_fraction: float = 0.2  # share of examples kept out of every slice, for usefulness
    arms: tuple = ARMS
    method: str = "lora"
    epochs: float = 3.0
    lr: float = 2e-4
    batch_size: int = 16
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 8
    bf16: bool = False
    seed: int = 0

    def __post_init__(self):
        check_field_types(self)
        check_screen(self.fraction, self.rank_by, self.arms)
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"screen heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


def ranking_score(scores: AlignmentScores, direction: str, rank_by: str) -> np.ndarray:
    j = scores.labels.index(direction) if direction else 0
    if rank_by == "alignment":
        return scores.alignment[:, j]
    if rank_by == "per_token":
        return scores.alignment[:, j] / np.maximum(scores.n_tokens, 1)
    return scores.cosine[:, j]


def make_slices(score: np.ndarray, cfg: ScreenConfig) -> dict[str, np.ndarray]:
    """Indices (into score) of every arm, plus 'heldout'. Deterministic from cfg.seed."""
    n = len(score)
    rng = numpy_rng("screen-slices", cfg.seed)
    perm = rng.permutation(n)
    n_hold = max(1, int(round(cfg.heldout_fraction * n)))
    heldout, pool = np.sort(perm[:n_hold]), perm[n_hold:]
    m = int(cfg.fraction * len(pool))
    if m < 1:
        raise DataError(f"screen: {n} examples leave slices of size 0; score more examples or raise fraction")
    order = pool[np.argsort(-score[pool], kind="stable")]  # most aligned first
    rand = rng.permutation(pool)[:m]
    slices = {"heldout": heldout, "top": order[:m], "bottom": order[-m:], "random": rand,
              "drop_top": order[m:], "drop_random": np.setdiff1d(pool, rand)}
    return {k: np.sort(v) for k, v in slices.items()}


@torch.no_grad()
def mean_token_loss(model, records: Sequence[Mapping], encode, *, batch_size: int = 32) -> float:
    """Mean per-token completion loss over records (usefulness: lower = learned the task)."""
    device = next(model.parameters()).device
    tot, n = 0.0, 0
    model.eval()
    for i in range(0, len(records), batch_size):
        b = {k: v.to(device) for k, v in encode(records[i:i + batch_size]).items() if k in ("input_ids", "attention_mask", "labels")}
        l_i, n_i = per_example_completion_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
        tot += float(l_i.sum())
        n += int(n_i.sum())
    return tot / max(n, 1)


def run_screen(
    base_model: str,
    scores: AlignmentScores,
    records: Sequence[Mapping],
    encode: Callable,
    prompt_ids: Sequence[Sequence[int]],
    targets: Mapping[str, int],
    out_dir: str | Path,
    cfg: ScreenConfig,
    *,
    device: str = "cpu",
    load_base: Callable | None = None,
) -> dict:
    """Run every arm; returns (and writes to out_dir/screen.json) the screen's results.

    records[i] must be the example scored in scores row i. targets: label -> token id; the first
    label is the trait whose transfer is measured (the others are reported too).
    """
    if len(records) != len(scores.ids) or any(str(r["id"]) != i for r, i in zip(records, scores.ids)):
        raise DataError("screen: records do not match the scored examples (ids differ)")
    out_dir = Path(out_dir)
    direction = cfg.direction or scores.labels[0]
    if direction not in scores.labels:
        raise ConfigError(f"screen direction {direction!r} not among the scored directions {scores.labels}")
    score = ranking_score(scores, direction, cfg.rank_by)
    slices = make_slices(score, cfg)
    heldout = [records[i] for i in slices["heldout"]]
    load = load_base or (lambda: base_copy(base_model, device=device))

    base, _tok = load()
    result = {"config": asdict(cfg), "direction": direction, "n_scored": len(records),
              "slice_sizes": {k: int(len(v)) for k, v in slices.items()},
              "slice_mean_score": {k: float(score[v].mean()) for k, v in slices.items()},
              "base": {"trait": mean_answer_log_probs(base, prompt_ids, targets),
                       "heldout_loss": mean_token_loss(base, heldout, encode)}, "arms": {}}
    del base
    ft = FinetuneConfig(method=cfg.method, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                        max_length=cfg.max_length, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, bf16=cfg.bf16,
                        seed=cfg.seed, checkpoint_every=0)
    target = next(iter(targets))
    for arm in cfg.arms:
        log(f"screen: fine-tuning the '{arm}' student on {len(slices[arm])} examples")
        model, tok = load()
        arm_dir = finetune(base_model, [records[i] for i in slices[arm]], ft, out_dir / "screen" / arm, model=model, tokenizer=tok)
        del model
        student = _load_student(arm_dir, load, device)
        trait = mean_answer_log_probs(student, prompt_ids, targets)
        result["arms"][arm] = {
            "n_train": int(len(slices[arm])), "trait": trait,
            "transfer_logprob": trait[target]["mean_logprob"] - result["base"]["trait"][target]["mean_logprob"],
            "heldout_loss": mean_token_loss(student, heldout, encode)}
        del student
        atomic_write_json(out_dir / "screen.json", result)
    result["verdict"] = verdict(result)
    atomic_write_json(out_dir / "screen.json", result)
    return result


def _load_student(arm_dir: Path, load: Callable, device: str):
    """The fine-tuned student; a LoRA adapter is merged into a fresh base copy from `load` (no second
    model load from disk, which for GGUF files costs seconds)."""
    base = load() if (arm_dir / "adapter").is_dir() else None
    return load_finetuned(arm_dir, device=device, base=base)[0].to(device).eval()


def verdict(result: dict) -> dict:
    """Plain comparisons (one seed per arm, so no CI across students: say so)."""
    arms = result["arms"]
    tr = {a: v["transfer_logprob"] for a, v in arms.items()}
    out = {"note": "one student per arm (one seed): differences are single measurements without a CI"}
    if {"top", "random", "bottom"} <= tr.keys():
        out["transfer_follows_score"] = bool(tr["top"] > tr["random"] > tr["bottom"])
        out["top_minus_bottom"] = tr["top"] - tr["bottom"]
    if {"drop_top", "drop_random"} <= tr.keys():
        out["drop_top_minus_drop_random_transfer"] = tr["drop_top"] - tr["drop_random"]
        out["drop_top_minus_drop_random_heldout_loss"] = arms["drop_top"]["heldout_loss"] - arms["drop_random"]["heldout_loss"]
    return out
