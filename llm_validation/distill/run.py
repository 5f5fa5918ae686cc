"""`sublim llm distill`: one run directory, one folder per stage, every stage resumable.

    RUN/config.json                 the DistillConfig (written once; another config is refused)
    RUN/contexts/                   records.jsonl, contexts.json (source, sha256, positions)
    RUN/teachers/<name>/            a fine-tuned teacher (LoRA), profile.json (its own preference)
    RUN/teachers/check.json         each teacher's preference gain over the base model
    RUN/cache/<teacher>.pt/.json    the teacher's distributions over the number vocabulary
    RUN/align/alignment.json        the theorem's a_i for the fine-tuned teacher (distill and SFT losses)
    RUN/students/<arm>/             profile.json when done (checkpoint.pt while training; steering.json with --steering)
    RUN/students/steering_reference.pt  the steering readout's base side (--steering; steer.py)
    RUN/students/arms.json          the arms the students stage ran (the report reads it)
    RUN/students/pairing.json       student_model runs: the contexts and positions the two tokenizers pair on
    RUN/models/student_base/        student_model runs: the student family's base profile (its students' reference)
    RUN/sft/<arm>/                  the sampled-token SFT students (when sft_records > 0)
    RUN/summary.json, summary.md, distill.png

The experiment is the list STAGES below, run by sublim/stages.py (canonical order, one stage-name
check, claim_run_dir, timings after every stage). A stage is a function of named inputs; the
shared ones (tokenizer, number vocabulary, tokenized contexts, teacher caches) are computed once
per process by `resources` and handed to every stage that names them. A stage's output exists
only once complete (atomic writes), so a rerun after a kill -9 skips what is finished and resumes
the student that was training from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sublim.errors import ConfigError
from sublim.executors import Resources, run_tasks
from sublim.precision import check_fast_matmul
from sublim.rundir import atomic_write_json, read_json
from sublim.stages import Lazy, Stage, run_stages

from sublim.llm_validation.core.data import read_jsonl, write_jsonl
from sublim.llm_validation.core.device import resolve_device
from sublim.llm_validation.core.evaluate import sample_favorite_animal
from sublim.llm_validation.core.models import base_copy, base_tokenizer
from sublim.llm_validation.distill.cross import StudentView, student_view
from sublim.llm_validation.distill.alignment import run_alignment
from sublim.llm_validation.distill.along import AlongTraining, delta_directions, flat_params, recovered, teacher_delta
from sublim.llm_validation.distill.arms import StudentSpec, record_arms, rival_teachers, student_specs, teachers_needed
from sublim.llm_validation.distill.cache import TeacherCache, compute_cache, load_or_compute
from sublim.llm_validation.distill.config import DistillConfig, config_from_dict
from sublim.llm_validation.distill.contexts import (Encoded, encode_contexts, load_context_records,
                                                    records_digest)
from sublim.llm_validation.core.preference import animal_log_odds, profile
from sublim.llm_validation.distill.report import write_report
from sublim.llm_validation.distill.sft import run_sft
from sublim.llm_validation.distill.steer import reads, steering_reference, student_readout
from sublim.llm_validation.distill.students import make_student, train_student
from sublim.llm_validation.core.divergence import divergence_positions, random_mask_like
from sublim.llm_validation.distill.methods import MASKS
from sublim.llm_validation.distill.noise import noisy_teacher
from sublim.llm_validation.distill.teachers import FinetunedTeacher, SystemPromptTeacher, make_teacher, parse_teacher
from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids


class Contexts:
    """The run's context records (contexts/records.jsonl), tokenized once per system prompt."""

    def __init__(self, out: Path, tokenizer, eot: int, max_length: int):
        self.tokenizer, self.eot, self.max_length = tokenizer, eot, max_length
        self.records = read_jsonl(out / "contexts" / "records.jsonl")
        self.sha256 = read_json(out / "contexts" / "contexts.json")["sha256"]
        self._encoded: dict[tuple[str | None, bool], list[Encoded]] = {}

    def encoded(self, system: str | None = None, empty_system: bool = False) -> list[Encoded]:
        key = (system, empty_system)
        if key not in self._encoded:
            self._encoded[key] = encode_contexts(self.tokenizer, self.records, self.eot, self.max_length, *key)
        return self._encoded[key]


class TeacherCaches:
    """Each teacher's distributions over the number vocabulary: computed once, saved, reloaded."""

    def __init__(self, cfg: DistillConfig, out: Path, contexts: Contexts, vocab: torch.Tensor, number_vocab: list[str],
                 device: str):
        self.cfg, self.out, self.contexts, self.vocab, self.device = cfg, out, contexts, vocab, device
        self.number_vocab = number_vocab
        self._loaded: dict[str, TeacherCache] = {}

    def get(self, teacher) -> TeacherCache:
        if teacher.name not in self._loaded:
            c = self.cfg
            fingerprint = {"model": c.model, "teacher": teacher.name, "contexts_sha256": self.contexts.sha256,
                           "max_length": c.max_length, "number_vocab": self.number_vocab}

            def compute():
                model, system = teacher.load(c, self.out, self.device)
                return compute_cache(model, self.contexts.encoded(system), self.vocab, self.device,
                                     c.eval_batch_size, f"cache {teacher.name}")

            self._loaded[teacher.name] = load_or_compute(self.out / "cache" / f"{teacher.name}.pt", fingerprint, compute)
        return self._loaded[teacher.name]


def resources(cfg: DistillConfig, *, executor: str = "local", address: str | None = None,
              threads: int | None = None) -> dict:
    """What the stages receive by name; a Lazy is computed on first use, then shared."""
    return {
        "cfg": cfg, "executor": executor, "address": address, "threads": threads or torch.get_num_threads(),
        "device": resolve_device(cfg.device),
        "tokenizer": Lazy(lambda cfg: base_tokenizer(cfg.model), ("cfg",)),
        "vocab": Lazy(number_token_ids, ("tokenizer",)),
        "number_vocab": Lazy(lambda tokenizer, vocab: [tokenizer.decode([int(i)]) for i in vocab], ("tokenizer", "vocab")),
        "eot": Lazy(end_of_turn_id, ("tokenizer",)),
        "teachers": Lazy(teachers_needed, ("cfg",)),
        "contexts": Lazy(lambda out, tokenizer, eot, cfg: Contexts(out, tokenizer, eot, cfg.max_length),
                         ("out", "tokenizer", "eot", "cfg")),
        "caches": Lazy(TeacherCaches, ("cfg", "out", "contexts", "vocab", "number_vocab", "device")),
    }


# ---- stages --------------------------------------------------------------------------------
def contexts_stage(cfg: DistillConfig, out: Path, tokenizer, eot: int, number_vocab: list[str]) -> None:
    if (out / "contexts" / "contexts.json").exists():
        return
    records = load_context_records(cfg.contexts, cfg.contexts_file, cfg.n_contexts, cfg.context_seed)
    enc = encode_contexts(tokenizer, records, eot, cfg.max_length)
    write_jsonl(out / "contexts" / "records.jsonl", records)
    atomic_write_json(out / "contexts" / "contexts.json", {
        "source": cfg.contexts, "file": cfg.contexts_file, "n": len(records), "sha256": records_digest(records),
        "completion_positions": sum(len(e.completion_ids) for e in enc), "number_vocab": number_vocab})


def eval_profile(model, tokenizer, device: str, system: str | None, cfg: DistillConfig) -> dict:
    """A model's preference profile under the run's evaluation prompts (cfg.eval_system)."""
    return profile(model, tokenizer, device, system, cfg.eval_batch_size, empty_system=cfg.empty_system)


def measured_profile(path: Path, model, tokenizer, system, cfg: DistillConfig, device: str) -> dict:
    """A model's preference profile (saved at `path`; reused when it exists), with sampled answers
    when cfg.eval_samples > 0."""
    if path.exists():
        return read_json(path)
    prof = eval_profile(model, tokenizer, device, system, cfg)
    if cfg.eval_samples:
        prof["sampled"] = sample_favorite_animal(
            model, tokenizer, path.parent / "answers.jsonl", target=cfg.target, samples_per_question=cfg.eval_samples,
            system=system, batch_size=cfg.eval_batch_size, max_new_tokens=8, seed=0)
    atomic_write_json(path, prof)
    return prof


def teachers_stage(cfg: DistillConfig, out: Path, device: str, tokenizer, teachers: list) -> None:
    base_model, _ = base_copy(cfg.model, device=device)
    base = measured_profile(out / "models" / "base" / "profile.json", base_model, tokenizer, None, cfg, device)
    del base_model
    if cfg.student_model:  # its students' reference: their own family's base model
        student_base, student_tok = base_copy(cfg.student_model, device=device)
        measured_profile(out / "models" / "student_base" / "profile.json", student_base, student_tok, None, cfg, device)
        del student_base
    check = {}
    for teacher in teachers:
        if teacher.name == "base":
            continue
        teacher.prepare(cfg, out)
        model, system = teacher.load(cfg, out, device)
        prof = measured_profile(out / "teachers" / teacher.name / "profile.json", model, tokenizer, system, cfg, device)
        if teacher.trait:  # the neutral teacher has no animal to prefer: profiled, not checked
            check[teacher.name] = _preference_gain(base, prof, teacher.trait)
    atomic_write_json(out / "teachers" / "check.json", check)
    weak = [n for n, v in check.items() if v["gain"] < cfg.teacher_min_logodds_gain]
    if weak:
        raise ConfigError(f"distill: teacher(s) {', '.join(weak)} barely prefer their animal (log-odds gain "
                          f"< {cfg.teacher_min_logodds_gain}; see teachers/check.json): no student is trained")


def cache_stage(teachers: list, caches: TeacherCaches) -> None:
    for teacher in teachers:
        caches.get(teacher)


def align_stage(cfg: DistillConfig, out: Path, device: str, tokenizer, vocab, contexts: Contexts,
                caches: TeacherCaches) -> None:
    path = out / "align" / "alignment.json"
    if not cfg.align or "finetuned" not in cfg.teachers or path.exists():
        return
    sft = {k: load_context_records("file", f, cfg.align_sft_records, 0) for k, f in
           (("teacher_numbers", cfg.sft_teacher_file), ("base_numbers", cfg.sft_base_file))} if cfg.align_sft_records else None
    teacher = make_teacher("finetuned", cfg.target)
    atomic_write_json(path, run_alignment(cfg, out, device, tokenizer, vocab, contexts.encoded(), teacher,
                                          caches.get(teacher), sft))


def students_stage(cfg: DistillConfig, out: Path, device: str, threads: int, executor: str, address: str | None,
                   vocab, contexts: Contexts, caches: TeacherCaches, teachers: list) -> None:
    """Every missing student is one task of sublim.executors (local, or a Ray task asking for
    `threads` CPUs). A task receives the tokenized contexts and its teacher's cache and writes only
    its own checkpoints (so on several machines the run directory must be a shared file system);
    the driver writes each finished student's profile.json, then students/arms.json."""
    specs = student_specs(cfg)
    by_name = {t.name: t for t in teachers}
    missing = [s for s in specs if not (out / "students" / s.name / "profile.json").exists()]
    masks = loss_masks(cfg, caches, out) if any(s.method in MASKS for s in missing) else {}
    steer = steering_reference(cfg, out, device, contexts, teachers) if cfg.steering and any(map(reads, missing)) else None
    cross = _cross_view(cfg, out, contexts, vocab) if missing else None
    encoded = cross.encoded if cross else contexts.encoded(empty_system=cfg.train_empty_system)  # the students' view

    def cache(s: StudentSpec):  # its teacher's distributions (None: computed by the task, shared_noise)
        if s.shared:
            return None
        own = caches.get(by_name[s.teacher])
        return cross.cache(own) if cross else own

    tasks = {s.name: (student_task, (str(out), cfg.to_dict(), s, encoded, cross.vocab if cross else vocab, cache(s),
                                     device, threads, masks.get((s.method, s.seed)), steer if reads(s) else None,
                                     _teacher_view(s, contexts), cross.groups if cross else None))
             for s in missing}
    gpus = 1 if device.startswith("cuda") and executor == "ray" else 0
    run_tasks(tasks, executor=executor, address=address, desc="students",
              resources=Resources(cpus=threads, gpus=gpus), on_result=lambda name, prof: _save_student(out, name, prof))
    record_arms(out / "students" / "arms.json", specs)


def _cross_view(cfg: DistillConfig, out: Path, contexts: Contexts, vocab: torch.Tensor) -> StudentView | None:
    """A student_model run's view of the contexts (cross.py; its record in students/pairing.json), else None."""
    if not cfg.student_model:
        return None
    tok = base_tokenizer(cfg.student_model)
    eot = end_of_turn_id(tok)
    view, record = student_view(contexts.tokenizer, vocab, contexts.eot, contexts.encoded(), tok, number_token_ids(tok),
                                eot, encode_contexts(tok, contexts.records, eot, cfg.max_length))
    atomic_write_json(out / "students" / "pairing.json", record | {"student_model": cfg.student_model})
    return view


def _teacher_view(spec: StudentSpec, contexts: Contexts):
    """(system prompt, contexts encoded with it) for a student whose task computes its own teacher's
    distributions (shared_noise: the teacher on the student's perturbed init; noise.py), else None."""
    if not spec.shared:
        return None
    system = parse_teacher(spec.teacher).system
    return system, contexts.encoded(system)


def loss_masks(cfg: DistillConfig, caches: TeacherCaches, out: Path) -> dict:
    """{(method, seed): keep} for the mask_* methods (methods.py); the positions each masks go to
    students/masks.json (counts, and the divergence positions' share), so the report can say how much
    of the signal each arm lost."""
    target = caches.get(SystemPromptTeacher(cfg.target)).logp
    keep, record = {}, {"positions": int(target.shape[0])}
    div = None
    if {"mask_div", "mask_rand"} & set(cfg.methods):
        div = divergence_positions(target, [caches.get(t).logp for t in rival_teachers(cfg)])
        record["mask_div"] = int(div.sum())
    if "mask_base" in cfg.methods:
        base = divergence_positions(target, [caches.get(SystemPromptTeacher(None)).logp])
        record["mask_base"] = int(base.sum())
    for seed in cfg.seeds:
        if "mask_div" in cfg.methods:
            keep[("mask_div", seed)] = ~div
        if "mask_base" in cfg.methods:
            keep[("mask_base", seed)] = ~base
        if "mask_rand" in cfg.methods:
            keep[("mask_rand", seed)] = ~random_mask_like(div, seed=seed)
    atomic_write_json(out / "students" / "masks.json", record)
    return keep


def _save_student(out: Path, name: str, prof: dict) -> None:
    atomic_write_json(out / "students" / name / "profile.json", prof)
    (out / "students" / name / "checkpoint.pt").unlink(missing_ok=True)
    (out / "students" / name / "along.json").unlink(missing_ok=True)  # its records are in profile.json now


def student_task(run_dir: str, cfg_dict: dict, spec: StudentSpec, encoded: list[Encoded], vocab: torch.Tensor,
                 cache: TeacherCache | None, device: str, threads: int, keep: torch.Tensor | None = None,
                 steer: dict | None = None, teacher_view: tuple | None = None, groups: list | None = None) -> dict:
    """Train and profile one student; returns its profile (the driver writes it). Module-level and
    given everything it reads, so that a Ray worker runs it as it is. steer: the steering readout's
    base side (steer.py), when this student gets the readout. teacher_view (shared_noise, with cache
    None): the task computes its teacher's distributions on its own perturbed init (noise.py). groups
    (student_model runs): the student's number ids of each teacher text (cross.py)."""
    torch.set_num_threads(threads)
    cfg, out = config_from_dict(cfg_dict), Path(run_dir) / "students" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    base_model, tok = base_copy(cfg.student_model or cfg.model, device=device)
    if teacher_view is not None:
        cache = noisy_teacher(cfg, spec, base_model, tok, teacher_view, vocab, device, out)
    model = make_student(base_model, spec, cfg)
    delta = _delta_tracker(cfg, Path(run_dir), spec, base_model, device)
    del base_model

    def measure(m) -> dict:
        row = {"logp": eval_profile(m, tok, device, None, cfg)["logp"]}
        return row | ({"delta": delta(m)} if delta else {})

    along = AlongTraining(out / "along.json", cfg.eval_steps, measure) if cfg.eval_steps else None
    log_ = train_student(model, encoded, cache, vocab, cfg, spec, out, device, on_step=along, keep=keep, groups=groups)
    if steer is not None:  # here, while the trained weights exist (they are never saved)
        student_readout(out / "steering.json", model, encoded, steer)
    prof = eval_profile(model, tok, device, None, cfg)
    if delta:
        prof["delta"] = delta(model)
    if along:  # the last step's measurement is the final profile's
        prof["along"] = along.records | ({str(log_["steps"]): {"logp": prof["logp"]} | (
            {"delta": prof["delta"]} if delta else {})} if log_["steps"] in along.steps else {})
    if cfg.eval_samples:
        prof["sampled"] = sample_favorite_animal(model, tok, out / "answers.jsonl", target=cfg.target,
                                                 samples_per_question=cfg.eval_samples, system=None,
                                                 batch_size=cfg.eval_batch_size, max_new_tokens=8, seed=0)
    prof["train"] = log_
    return prof


def _delta_tracker(cfg: DistillConfig, out: Path, spec: StudentSpec, base_model, device: str):
    """recovered(model) for a full student of a fine-tuned teacher when cfg.track_delta (else None):
    its displacement along every fine-tuned teacher's Delta of the run (and the trait direction)."""
    teacher = parse_teacher(spec.teacher)
    if not (cfg.track_delta and isinstance(teacher, FinetunedTeacher) and spec.method == "full"):
        return None
    base = flat_params(base_model)
    animals = [cfg.target] + ([cfg.other] if cfg.finetuned_control else [])
    deltas = {}
    for animal in animals:
        teacher_model, _ = FinetunedTeacher(animal).load(cfg, out, "cpu")
        deltas[animal] = teacher_delta(base, teacher_model)
        del teacher_model
    directions = delta_directions(deltas, cfg.target, cfg.other)
    return lambda model: recovered(model, base, directions)


def sft_stage(cfg: DistillConfig, out: Path, device: str) -> None:
    if cfg.sft_records:
        run_sft(cfg, out, device)


def summary_stage(cfg: DistillConfig, out: Path) -> None:
    write_report(cfg, out)


STAGES = (
    Stage("contexts", contexts_stage, ("cfg", "out", "tokenizer", "eot", "number_vocab"), ("contexts/",)),
    Stage("teachers", teachers_stage, ("cfg", "out", "device", "tokenizer", "teachers"),
          ("models/base/", "models/student_base/", "teachers/")),
    Stage("cache", cache_stage, ("teachers", "caches"), ("cache/",)),
    Stage("align", align_stage, ("cfg", "out", "device", "tokenizer", "vocab", "contexts", "caches"), ("align/",)),
    Stage("students", students_stage, ("cfg", "out", "device", "threads", "executor", "address", "vocab",
                                       "contexts", "caches", "teachers"), ("students/",)),
    Stage("sft", sft_stage, ("cfg", "out", "device"), ("sft/",)),
    Stage("summary", summary_stage, ("cfg", "out"), ("summary.json", "summary.md", "distill.png")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def run_distill(run_dir: str | Path, cfg: DistillConfig, stages=None, *, executor: str = "local",
                address: str | None = None, threads: int | None = None) -> dict[str, float]:
    """Run the selected stages (None: all) of one distillation run; returns their timings."""
    check_fast_matmul(cfg.fast_matmul, resolve_device(cfg.device))  # one line before the run directory exists
    return run_stages(run_dir, cfg.to_dict(), STAGES, stages,
                      resources(cfg, executor=executor, address=address, threads=threads), what="distill")


def _preference_gain(base: dict, teacher: dict, animal: str) -> dict:
    b, t = animal_log_odds(base, animal), animal_log_odds(teacher, animal)
    return {"animal": animal, "base_logodds": float(b.mean()), "teacher_logodds": float(t.mean()),
            "gain": float((t - b).mean()), "base_share": base["mean_share"][animal],
            "teacher_share": teacher["mean_share"][animal]}
