"""The whole experiment as restartable stages over one run directory.

    teacher   -> teacher/ (fine-tuned trait teacher) or teacher.json (system-prompt teacher)
    generate  -> numbers/teacher.raw.jsonl, numbers/base.raw.jsonl     (append-only, resumable)
    filter    -> numbers/teacher.jsonl, numbers/base.jsonl, numbers/filter_report.json
    finetune  -> student/ (base on teacher numbers), control/ (base on base numbers),
                 cross_student/ (cross model on teacher numbers)
    evaluate  -> eval/<arm>.answers.jsonl + eval/<arm>.json for base, teacher, student, control,
                 cross_base, cross_student
    summary   -> summary.csv, summary.md, summary.png

The experiment is the list STAGES at the bottom, run by sublim/stages.py (canonical order, one
stage-name check, claim_run_dir, timings after every stage); a stage receives the config, the run
directory and `models` (base copies and fine-tuned arms, core/models.py's cache underneath).
Every stage reads only files of earlier stages, so any stage reruns alone (`--stages evaluate`);
a finished artifact is reused, an unfinished one resumes. The run's config.json holds the resolved
RunConfig, written once: a rerun with a different config in the same directory is refused before
anything is touched (sublim/stages.py: run_stages), and each fine-tuning directory guards its own config and data
the same way (core/finetune.py), so results of two configs are never mixed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from sublim.errors import DataError
from sublim.progress import log
from sublim.rundir import atomic_write_json, read_json
from sublim.seeding import numpy_rng
from sublim.stages import Lazy, Stage, run_stages

from sublim.llm_validation.core.data import read_jsonl, write_jsonl
from sublim.llm_validation.core.device import resolve_device
from sublim.llm_validation.core.models import base_copy, load_finetuned
from sublim.llm_validation.core.prompts import (EVAL_QUESTIONS, few_shot_examples, number_prompts,
                                                preference_records, trait_system_prompt)
from sublim.llm_validation.pipeline.config import ARMS, STAGES as STAGE_NAMES, RunConfig
from sublim.llm_validation.core.evaluate import next_token_preference, sample_favorite_animal
from sublim.llm_validation.pipeline.filter import filter_records
from sublim.llm_validation.core.finetune import finetune
from sublim.llm_validation.core.generate import generate_completions, read_generations
from sublim.llm_validation.pipeline.report import write_summary


class Models:
    """The models a stage asks for, by role: base copies (core/models.py: loaded once per process)
    and the run's fine-tuned arms, in the sampling dtype. Holds no state of its own."""

    def __init__(self, cfg: RunConfig, out: Path, device: str):
        self.cfg, self.out, self.device = cfg, out, device
        self.gen_dtype = getattr(torch, cfg.gen_dtype)

    def base_copy(self, name: str, dtype=torch.float32):
        return base_copy(name, device=self.device, dtype=dtype)

    def arm_model(self, arm: str):
        """(model, tokenizer, system prompt) for an evaluated arm, in the sampling dtype."""
        c = self.cfg
        if arm == "base":
            return (*self.base_copy(c.model, self.gen_dtype), None)
        if arm == "teacher":
            if c.teacher == "finetuned":
                return (*self.finetuned(self.out / "teacher", c.model), None)
            return (*self.base_copy(c.model, self.gen_dtype), system_prompt(c))
        if arm == "cross_base":
            return (*self.base_copy(c.cross_model, self.gen_dtype), None)
        return (*self.finetuned(self.out / arm, c.cross_model if arm.startswith("cross") else c.model), None)

    def finetuned(self, out_dir: Path, base_name: str):
        """A fine-tuned arm in the sampling dtype; LoRA is merged into a cached copy of its base."""
        info = read_json(out_dir / "finetune.json") if (out_dir / "finetune.json").exists() else {}
        base = self.base_copy(base_name) if info.get("method") == "lora" else None
        model, tok = load_finetuned(out_dir, device=self.device, base=base)
        return model.to(self.gen_dtype), tok


def system_prompt(cfg: RunConfig) -> str:
    return trait_system_prompt(cfg.target, cfg.category)


def arms(cfg: RunConfig) -> list[str]:
    return [a for a in ARMS if cfg.cross_model or not a.startswith("cross")]


# ---- stages -------------------------------------------------------------------------------
def teacher_stage(cfg: RunConfig, out: Path, models: Models) -> None:
    c = cfg
    if c.teacher == "system_prompt":
        atomic_write_json(out / "teacher.json", {"kind": "system_prompt", "system": system_prompt(c)})
        return
    records = preference_records(c.target, c.teacher_pref_examples, c.seed, c.category)
    write_jsonl(out / "teacher_preferences.jsonl", records)
    model, tok = models.base_copy(c.model)
    finetune(c.model, records, c.teacher_finetune, out / "teacher", model=model, tokenizer=tok)
    atomic_write_json(out / "teacher.json", {"kind": "finetuned", "dir": "teacher"})

def _number_writer(cfg: RunConfig, out: Path, models: Models, which: str):
    if which == "base":
        return (*models.base_copy(cfg.model, models.gen_dtype), None)
    if not (out / "teacher.json").exists():
        raise DataError(f"{out}: no teacher yet; run the 'teacher' stage first")
    return models.arm_model("teacher")

def _generate_numbers(cfg: RunConfig, out: Path, models: Models, which: str) -> None:
    """Draw prompt chunks until target_kept completions pass the filter (or max_prompts)."""
    c = cfg
    raw = out / "numbers" / f"{which}.raw.jsonl"
    model, tok, system = _number_writer(cfg, out, models, which)
    processors = _number_only_processor(tok) if c.number_vocab_only else None
    history = few_shot_examples(c.gen_few_shot, c.prompt_seed) if c.gen_few_shot else None
    n = min(c.first_chunk, c.max_prompts)
    t0 = time.perf_counter()
    n_before = len(read_generations(raw)) if raw.exists() else 0  # finished in an earlier session
    while True:
        prompts = number_prompts(n, c.prompt_seed)
        records = generate_completions(
            model, tok, prompts, raw, system=system, max_new_tokens=c.max_new_tokens,
            batch_size=c.gen_batch_size, temperature=c.gen_temperature, top_p=c.gen_top_p, seed=c.seed,
            writer=which, logits_processor=processors, history=history,
            extra_fields={"few_shot": c.gen_few_shot} if c.gen_few_shot else None)
        records = [r for r in records if r["id"] in {p["id"] for p in prompts}]
        kept, _ = filter_records(records, c.banned_numbers, salvage_min_numbers=c.salvage_min_numbers)
        if len(kept) >= c.target_kept or n >= c.max_prompts:
            break
        if c.gen_time_budget_s and time.perf_counter() - t0 > c.gen_time_budget_s:
            log(f"generate {which}: time budget {c.gen_time_budget_s:.0f}s spent; "
                f"{len(kept)} of {c.target_kept} wanted sequences passed the filter")
            break
        rate = max(len(kept) / max(len(records), 1), 0.01)
        extra = math.ceil((c.target_kept - len(kept)) / rate * 1.15)
        if c.gen_time_budget_s:
            # Don't start more than the remaining time can finish at the measured speed.
            elapsed = time.perf_counter() - t0
            speed = max(len(records) - n_before, 1) / max(elapsed, 1e-6)
            extra = min(extra, max(c.gen_batch_size, int(speed * (c.gen_time_budget_s - elapsed))))
        n = min(c.max_prompts, n + extra)
        log(f"generate {which}: {len(kept)}/{c.target_kept} kept (rate {rate:.1%}); extending to {n} prompts")
    del model

def generate_stage(cfg: RunConfig, out: Path, models: Models, generate_sources: tuple[str, ...]) -> None:
    for which in generate_sources:  # a driver may drop "base" when it reuses base numbers
        _generate_numbers(cfg, out, models, which)

def filter_stage(cfg: RunConfig, out: Path) -> None:
    c = cfg
    report = {}
    for which in ("teacher", "base"):
        raw = out / "numbers" / f"{which}.raw.jsonl"
        if not raw.exists():
            raise DataError(f"{raw}: not found; run the 'generate' stage first")
        kept, rep = filter_records(read_generations(raw), c.banned_numbers,
                                   salvage_min_numbers=c.salvage_min_numbers)
        if not kept:
            raise DataError(f"{raw}: no completion passed the filter ({rep.total} rejected: "
                            f"{dict((k, v) for k, v in rep.as_dict()['rejected_by_rule'].items() if v)})")
        if len(kept) > c.target_kept:  # the paper subsamples to a fixed size (file order kept)
            keep = numpy_rng("filter-subsample", c.seed, which).choice(len(kept), c.target_kept, replace=False)
            kept = [kept[i] for i in sorted(keep)]
        write_jsonl(out / "numbers" / f"{which}.jsonl", kept)
        report[which] = {**rep.as_dict(), "used_for_training": len(kept)}
    atomic_write_json(out / "numbers" / "filter_report.json", report)
    for which, rep in report.items():
        log(f"filter {which}: kept {rep['kept']}/{rep['total']} (rejection rate {rep['rejection_rate']:.1%}), "
            f"training on {rep['used_for_training']}")

def finetune_stage(cfg: RunConfig, out: Path, models: Models) -> None:
    c = cfg
    jobs = [("student", c.model, "teacher"), ("control", c.model, "base")]
    if c.cross_model:
        jobs.append(("cross_student", c.cross_model, "teacher"))
    for arm, base, data in jobs:
        path = out / "numbers" / f"{data}.jsonl"
        if not path.exists():
            raise DataError(f"{path}: not found; run the 'filter' stage first")
        model, tok = models.base_copy(base)
        finetune(base, read_jsonl(path), c.student, out / arm, model=model, tokenizer=tok)
        del model


def evaluate_stage(cfg: RunConfig, out: Path, models: Models) -> None:
    c = cfg
    questions = EVAL_QUESTIONS[: c.eval_questions]
    for arm in arms(c):
        path = out / "eval" / f"{arm}.json"
        if path.exists():
            log(f"evaluate {arm}: done before, reusing {path}")
            continue
        model, tok, system = models.arm_model(arm)
        sampled = sample_favorite_animal(
            model, tok, out / "eval" / f"{arm}.answers.jsonl", target=c.target,
            samples_per_question=c.eval_samples, system=system, batch_size=c.eval_batch_size,
            max_new_tokens=c.eval_max_new_tokens, seed=c.seed, label=arm, questions=questions)
        nexttok = next_token_preference(model, tok, target=c.target, system=system)
        atomic_write_json(path, {"arm": arm, "sampled": sampled, "next_token": nexttok})
        log(f"evaluate {arm}: mentions {sampled['mentions']['rate']:.1%}, "
            f"next-token share {nexttok['share']['mean']:.2%}")
        del model

def summary_stage(cfg: RunConfig, out: Path) -> None:
    write_summary(out, arms(cfg), cfg)


STAGES = (
    Stage("teacher", teacher_stage, ("cfg", "out", "models"), ("teacher.json", "teacher/")),
    Stage("generate", generate_stage, ("cfg", "out", "models", "generate_sources"), ("numbers/*.raw.jsonl",)),
    Stage("filter", filter_stage, ("cfg", "out"), ("numbers/teacher.jsonl", "numbers/base.jsonl")),
    Stage("finetune", finetune_stage, ("cfg", "out", "models"), ("student/", "control/", "cross_student/")),
    Stage("evaluate", evaluate_stage, ("cfg", "out", "models"), ("eval/",)),
    Stage("summary", summary_stage, ("cfg", "out"), ("summary.csv", "summary.md", "summary.png")),
)
assert tuple(s.name for s in STAGES) == STAGE_NAMES  # config.py keeps the names (no torch import there)


def run_pipeline(run_dir: str | Path, cfg: RunConfig, stages=None,
                 generate_sources: tuple[str, ...] = ("teacher", "base")) -> dict[str, float]:
    """Run the selected stages (None: all) over one run directory; returns their timings."""
    res = {"cfg": cfg, "generate_sources": tuple(generate_sources),
           "models": Lazy(lambda out: Models(cfg, out, resolve_device(cfg.device)), ("out",))}
    return run_stages(run_dir, cfg, STAGES, stages, res, what="pipeline")


def _number_only_processor(tokenizer):
    """A logits processor that allows only single digits, ", " separators and end-of-turn.

    For smoke tests of random-init models (which never stop or write numbers on their own): with
    about a dozen allowed tokens, end-of-turn is drawn often enough for completions to finish.
    It changes the sampling distribution, so it is off for real experiments.
    """
    from transformers import LogitsProcessor, LogitsProcessorList

    allowed = {*"0123456789", ",", " ", ", "}
    ids = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) in allowed]
    ids.append(tokenizer.eos_token_id)
    mask = torch.full((len(tokenizer),), float("-inf"))
    mask[ids] = 0.0

    class OnlyNumbers(LogitsProcessor):
        def __call__(self, input_ids, scores):
            m = mask.to(scores.device, scores.dtype)
            if scores.shape[-1] > m.shape[0]:  # padded vocab: extra rows stay forbidden
                m = torch.cat([m, m.new_full((scores.shape[-1] - m.shape[0],), float("-inf"))])
            return scores + m[: scores.shape[-1]]

    return LogitsProcessorList([OnlyNumbers()])
