"""`sublim llm align`, the orchestration: per-example gradient alignment of number data sets with
teacher directions (core/scores.py), summarized (alignment/report.py), optionally screened
(alignment/screen.py). The command line is alignment/cli.py; the config alignment/config.py.

    summary = run_align(AlignConfig(model="smollm2-135m", data={"teacher": "t.jsonl"}, out="runs/a"))

Directions (k <= 16 in total, all scored in the same backward pass): one trait direction per
animal in `traits` (grad of mean log p(" A" | favorite-animal prompts) at the base model; the FIRST
is the target, ranked by the screen), and with `teacher_model` theta_teacher - theta_base
("teacher_delta"). `shuffled` adds "NAME_shuffled", numbers permuted across responses. The first
data set is the reference of the comparisons.

Three stages (score, summary, screen) run by sublim/stages.py, which claims `out` (another
config is refused) and writes timings.json. Writes into `out`:
config.json, scores_<name>.npz (per data set, reused on rerun when the fingerprint matches: an
interrupted run resumes), per_example_scores.csv, summary.json, alignment_distribution_<dir>.png,
alignment_per_layer_<dir>.png, and with `screen` screen.json plus one student per arm under screen/.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import torch

from sublim.errors import ConfigError, SublimError
from sublim.progress import log
from sublim.rundir import atomic_write_json, read_json
from sublim.stages import Lazy, Stage, run_stages

from sublim.llm_validation.alignment.config import OTHER_ANIMALS, AlignConfig
from sublim.llm_validation.alignment.data import load_records, shuffle_numbers_across
from sublim.llm_validation.alignment.report import compare, correlation_with_ci, specificity, write_outputs
from sublim.llm_validation.core.scores import (AlignmentScores, Directions, normalize_directions, score_records,
                                                    scored_parameter_names, trait_direction, weight_delta_direction)
from sublim.llm_validation.alignment.screen import ScreenConfig, run_screen
from sublim.llm_validation.core.data import encode_sft_batch
from sublim.llm_validation.core.device import resolve_device
from sublim.llm_validation.core.models import base_copy, load_model, merge_lora
from sublim.llm_validation.core.preference import context_ids, mean_answer_log_probs, preference_contexts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def trait_prompt_ids(tokenizer) -> list[list[int]]:
    """Favorite-animal prompts ending where the animal's name starts: the pipeline's 50 questions
    with the forced answer prefix "My favorite animal is the", plus its next-token prompts."""
    return context_ids(tokenizer, preference_contexts(tokenizer))


def trait_token_ids(tokenizer, traits) -> dict[str, int]:
    """First token of " <animal>" (the word follows "... is the")."""
    out = {}
    for t in traits:
        ids = tokenizer(" " + t.strip().lower(), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"trait {t!r} tokenizes to nothing")
        out[t.strip().lower()] = ids[0]
    return out


def _fingerprint(cfg: AlignConfig, name: str, path: Path, labels: list[str]) -> str:
    st = path.stat()
    key = {"model": cfg.model, "labels": labels, "teacher_model": cfg.teacher_model, "path": str(path.resolve()),
           "size": st.st_size, "mtime": st.st_mtime_ns, "limit": cfg.limit, "seed": cfg.seed, "name": name,
           "max_length": cfg.max_length, "include_embedding": cfg.include_embedding, "dtype": cfg.dtype}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def config_from_run_dir(run_dir: str | Path, given: dict) -> AlignConfig:
    """An AlignConfig from a `sublim llm run` directory: its model, its target animal first among
    the traits (then OTHER_ANIMALS as comparison directions), numbers/teacher.jsonl as the
    reference, numbers/base.jsonl, the shuffled teacher control, the fine-tuned students, and the
    fine-tuned teacher's weight delta when the run fine-tuned one. `given` (the options the user
    typed) wins over everything taken from the run."""
    run_dir = Path(run_dir)
    run_cfg = read_json(run_dir / "config.json").get("config", {})
    target = str(run_cfg.get("target", "owl")).lower()
    data = dict(given.get("data", {}))
    for which in ("teacher", "base"):
        path = run_dir / "numbers" / f"{which}.jsonl"
        if not path.is_file():
            raise SublimError(f"{path}: not found; run the pipeline's filter stage first")
        data.setdefault(which, str(path))
    data = {"teacher": data.pop("teacher"), **data}  # the teacher's numbers are the reference
    arms = {arm: str(run_dir / arm) for arm in ("student", "control") if (run_dir / arm / "finetune.json").exists()}
    teacher = run_dir / "teacher"
    derived = {"model": run_cfg.get("model", "smollm2-135m"), "shuffled": ("teacher",), "out": str(run_dir / "alignment"),
               "traits": (target, *[a for a in OTHER_ANIMALS if a != target])}
    if run_cfg.get("teacher") == "finetuned" and (teacher / "finetune.json").exists():
        derived["teacher_model"] = str(teacher)
    return AlignConfig(**{**derived, **given, "data": data, "arms": {**arms, **given.get("arms", {})}})


def _directions(cfg: AlignConfig, model, tok, dtype, device):
    """(unit directions, parameter names, trait token ids, trait prompts)."""
    names = scored_parameter_names(model, include_embedding=cfg.include_embedding)
    targets = trait_token_ids(tok, cfg.traits)
    prompts = trait_prompt_ids(tok)
    parts: list[Directions] = []
    if targets:
        parts.append(trait_direction(model, prompts, targets, names))
    if cfg.teacher_model:
        teacher = load_variant(cfg.teacher_model, model, dtype, device)
        parts.append(weight_delta_direction(model, teacher, names))
        del teacher
    labels = [lab for d in parts for lab in d.labels]
    # Directions are already unit-norm each; stacking keeps that.
    dirs = normalize_directions(labels, {n: torch.cat([d.tensors[n] for d in parts]) for n in names})
    dirs.raw_norms = [r for d in parts for r in d.raw_norms]
    log(f"align: {len(names)} weight matrices, directions {labels} (raw norms {[f'{r:.3g}' for r in dirs.raw_norms]})")
    return dirs, names, targets, prompts


def _datasets(cfg: AlignConfig) -> tuple[dict, dict]:
    """{name: records} and {name: source file}, shuffled controls included."""
    datasets = {name: load_records(path, limit=cfg.limit or None, seed=cfg.seed) for name, path in cfg.data.items()}
    sources = {name: Path(path) for name, path in cfg.data.items()}
    for name in cfg.shuffled:
        datasets[f"{name}_shuffled"] = shuffle_numbers_across(datasets[name], seed=cfg.seed)
        sources[f"{name}_shuffled"] = Path(cfg.data[name])
    return datasets, sources


def _score_all(cfg: AlignConfig, out: Path, model, encode, dirs, datasets, sources, device) -> tuple[dict, dict]:
    """Scores per data set; a data set whose saved fingerprint matches is reloaded, not rescored."""
    scores: dict[str, AlignmentScores] = {}
    timings = {}
    for name, recs in datasets.items():
        npz, meta = out / f"scores_{name}.npz", out / f"scores_{name}.json"
        fp = _fingerprint(cfg, name, sources[name], dirs.labels)
        if npz.exists() and meta.exists() and read_json(meta).get("fingerprint") == fp:
            log(f"align: reusing {npz.name}")
            scores[name] = AlignmentScores.load_npz(npz)
            continue
        t = time.perf_counter()
        scores[name] = score_records(model, recs, encode, dirs, batch_size=cfg.batch_size, backend=cfg.backend,
                                     desc=f"score {name}")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        timings[name] = {"seconds": dt, "examples_per_s": len(recs) / dt}
        scores[name].save_npz(npz)
        scores[name] = AlignmentScores.load_npz(npz)  # the summary uses exactly what a rerun would reload
        atomic_write_json(meta, {"fingerprint": fp, "n": len(recs), **timings[name]})
    return scores, timings


class Scorer:
    """The base model, its directions and an encoder: built once (on first use) for every stage."""

    def __init__(self, cfg: AlignConfig, device: str):
        self.dtype = DTYPES[cfg.dtype]
        self.model, self.tok = base_copy(cfg.model, device=device, dtype=self.dtype, load_dtype=self.dtype)
        self.dirs, self.names, self.targets, self.prompts = _directions(cfg, self.model, self.tok, self.dtype, device)
        self.max_length = cfg.max_length

    def encode(self, recs):
        return encode_sft_batch(self.tok, list(recs), max_length=self.max_length)


def score_stage(cfg: AlignConfig, out: Path, device: str, datasets: tuple[dict, dict], scorer: Scorer,
                scored: dict) -> None:
    """Every data set scored (scores_<name>.npz; a matching saved fingerprint is reloaded)."""
    records, sources = datasets
    scores, timings = _score_all(cfg, out, scorer.model, scorer.encode, scorer.dirs, records, sources, device)
    scored.update(scores=scores, timings=timings)


def summary_stage(cfg: AlignConfig, out: Path, device: str, scorer: Scorer, scored: dict) -> None:
    """summary.json, per_example_scores.csv and the plots, from the scores of the score stage."""
    t0 = time.perf_counter()
    scores, labels, reference = scored["scores"], scorer.dirs.labels, next(iter(cfg.data))
    summary = {"directions": labels, "direction_raw_norms": dict(zip(labels, scorer.dirs.raw_norms)),
               "reference": reference, "n_weight_matrices": len(scorer.names), "scoring_timings": scored["timings"],
               "sign_convention": "a_i = <-grad loss_i, D>, loss_i = SUM of completion-token CE, D unit norm; "
                                  "a_i > 0 = toward the teacher",
               **compare(scores, reference, n_boot=cfg.n_boot)}
    if scorer.targets and len(labels) > 1:
        summary["specificity"] = {name: specificity(s, labels[0]) for name, s in scores.items()}
    if cfg.arms and scorer.targets:
        summary["transfer_vs_alignment"] = relate_transfer(scorer.model, scorer.tok, scorer.prompts, scorer.targets,
                                                           cfg, scores, scorer.dirs, device, scorer.dtype)
    written = write_outputs(out, scores, summary)
    scored["summary"] = summary
    log(f"align: wrote {', '.join(written)} to {out} ({time.perf_counter() - t0:.1f}s)")


def screen_stage(cfg: AlignConfig, out: Path, device: str, datasets: tuple[dict, dict], scorer: Scorer,
                 scored: dict) -> None:
    """With cfg.screen: the gradient screen (screen.json, screen/<arm>/), added to summary.json."""
    if not cfg.screen:
        return
    if not scorer.targets:
        raise ConfigError("--screen needs --traits (it measures the trait's transfer)")
    reference = next(iter(cfg.data))
    sc = ScreenConfig(direction=scorer.dirs.labels[0], rank_by=cfg.screen_rank_by, fraction=cfg.screen_fraction,
                      arms=tuple(cfg.screen_arms), epochs=cfg.screen_epochs, lr=cfg.screen_lr,
                      batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
                      bf16=device.startswith("cuda"))

    def load_base():  # every student starts from a copy of the same theta0 (core/models.py's cache)
        return base_copy(cfg.model, device=device, dtype=scorer.dtype, load_dtype=scorer.dtype)

    summary = scored["summary"]
    summary["screen"] = run_screen(cfg.model, scored["scores"][reference], datasets[0][reference], scorer.encode,
                                   scorer.prompts, scorer.targets, out, sc, device=device, load_base=load_base)
    atomic_write_json(out / "summary.json", summary)


STAGES = (
    Stage("score", score_stage, ("cfg", "out", "device", "datasets", "scorer", "scored"), ("scores_<set>.npz",)),
    Stage("summary", summary_stage, ("cfg", "out", "device", "scorer", "scored"),
          ("summary.json", "per_example_scores.csv", "alignment_*.png")),
    Stage("screen", screen_stage, ("cfg", "out", "device", "datasets", "scorer", "scored"), ("screen.json", "screen/")),
)


def run_align(cfg: AlignConfig) -> dict:
    """Score, summarize and (with cfg.screen) screen, in cfg.out; returns the summary.

    The stages always run together (summary and screen need the scores in memory; the scores
    themselves are reloaded from disk when their fingerprint matches, so a rerun is cheap)."""
    device = resolve_device(cfg.device)
    scored: dict = {}  # filled by the score and summary stages for the next ones: values in memory, not a run object
    resources = {"cfg": cfg, "device": device, "scored": scored,
                 "datasets": Lazy(lambda: _datasets(cfg)),  # a broken data file fails before the model loads
                 "scorer": Lazy(lambda datasets: Scorer(cfg, device), ("datasets",))}
    run_stages(cfg.out, cfg, STAGES, None, resources, what="align")
    return scored["summary"]


def load_variant(path: str, base_model, dtype, device):
    """A fine-tuned model of the same base: a LoRA adapter directory is merged into a deep copy of
    the base already in memory (loading a GGUF base again costs seconds); anything else (a full
    fine-tune, a model directory) is loaded with load_model."""
    p = Path(path)
    info = read_json(p / "finetune.json") if (p / "finetune.json").exists() else {}
    if info.get("done") and info.get("method") == "lora" and (p / "adapter").is_dir():
        ours = getattr(base_model, "sublim_name", None)
        if ours and str(info.get("base_model")) != str(ours):
            log(f"align: note: {p} was fine-tuned from {info.get('base_model')!r}; merging its adapter into {ours!r} "
                "(must be the same weights, e.g. an alias and its GGUF file)")
        return merge_lora(copy.deepcopy(base_model), p / "adapter").to(device).eval()
    return load_model(path, dtype=dtype, device=device)[0].to(device).eval()


def relate_transfer(model, tok, prompts, targets, cfg: AlignConfig, scores, dirs, device, dtype) -> dict:
    """Does the data's alignment predict what the students learned, animal by animal?

    First order: a gradient step of size eta on a data set changes the mean log p(animal) by
    eta * ||grad log p(animal)|| * sum_i a_i(animal) (a_i against the UNIT trait direction). So the
    student-minus-control change of log p(animal) should follow
        predicted(animal) = raw_norm(animal) * (mean a_teacher(animal) - mean a_base(animal)).
    We report both per animal and their correlation across animals (Pearson with a Fisher CI:
    few animals, so a wide CI; Spearman too). Students are the pipeline's arms (student on teacher
    numbers, control on base numbers), evaluated here with the same prompts as the directions.
    """
    out: dict = {"logprob": {"base": mean_answer_log_probs(model, prompts, targets)}}
    for arm, path in cfg.arms.items():
        m = load_variant(path, model, dtype, device)
        out["logprob"][arm] = mean_answer_log_probs(m, prompts, targets)
        del m
    animals = [a for a in targets if a in scores["teacher" if "teacher" in scores else next(iter(scores))].labels]
    if {"student", "control"} <= out["logprob"].keys() and {"teacher", "base"} <= scores.keys():
        norms = dict(zip(dirs.labels, dirs.raw_norms))
        rows = []
        for a in animals:
            jt, jb = scores["teacher"].labels.index(a), scores["base"].labels.index(a)
            diff = float(scores["teacher"].alignment[:, jt].mean() - scores["base"].alignment[:, jb].mean())
            obs = out["logprob"]["student"][a]["mean_logprob"] - out["logprob"]["control"][a]["mean_logprob"]
            rows.append({"animal": a, "predicted_first_order": norms[a] * diff, "mean_alignment_diff": diff,
                         "observed_student_minus_control_logprob": obs})
        out["per_animal"] = rows
        out["correlation"] = correlation_with_ci([r["predicted_first_order"] for r in rows],
                                                 [r["observed_student_minus_control_logprob"] for r in rows])
        target = animals[0]
        out["target"] = target
        pred, obs = rows[0]["predicted_first_order"], rows[0]["observed_student_minus_control_logprob"]
        out["target_signs_agree"] = None if pred == 0 or obs == 0 else bool((pred > 0) == (obs > 0))
    return out


