"""`sublim llm distill`: one run directory, one folder per stage, every stage resumable.

    RUN/config.json                 the DistillConfig (written once; another config is refused)
    RUN/contexts/                   records.jsonl, contexts.json (source, sha256, positions)
    RUN/teachers/<name>/            a fine-tuned teacher (LoRA), profile.json (its own preference)
    RUN/teachers/check.json         each teacher's preference gain over the base model
    RUN/cache/<teacher>.pt/.json    the teacher's distributions over the number vocabulary
    RUN/align/alignment.json        the theorem's a_i for the fine-tuned teacher (distill and SFT losses)
    RUN/students/<arm>/             profile.json when done (checkpoint.pt while training)
    RUN/sft/<arm>/                  the sampled-token SFT students (when sft_records > 0)
    RUN/summary.json, summary.md, distill.png

A stage's output exists only once complete (atomic writes), so a rerun after a kill -9 skips what
is finished and resumes the student that was training from its last checkpoint.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from sublim.errors import ConfigError
from sublim.precision import check_fast_matmul
from sublim.progress import log
from sublim.rundir import atomic_write_json, claim_run_dir, read_json

from sublim.llm_validation.core.data import write_jsonl
from sublim.llm_validation.core.device import resolve_device
from sublim.llm_validation.distill.arms import student_specs, teachers_needed
from sublim.llm_validation.distill.cache import compute_cache, load_or_compute
from sublim.llm_validation.distill.config import DistillConfig
from sublim.llm_validation.distill.contexts import encode_contexts, load_context_records, records_digest
from sublim.llm_validation.distill.preference import animal_log_odds, profile
from sublim.llm_validation.distill.students import StudentSpec, make_student, train_student
from sublim.llm_validation.distill.teachers import make_teacher
from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids

_LOADED: dict[str, tuple] = {}  # model name -> (model, tokenizer), shared by the runs of this process
STAGES = ("contexts", "teachers", "cache", "align", "students", "sft", "summary")


class DistillRun:
    def __init__(self, run_dir: str | Path, cfg: DistillConfig, *, executor: str = "local",
                 address: str | None = None, threads: int | None = None):
        self.dir, self.cfg = Path(run_dir), cfg
        self.executor, self.address = executor, address
        self.threads = threads or torch.get_num_threads()
        self.device = resolve_device(cfg.device)
        check_fast_matmul(cfg.fast_matmul, self.device)  # one line before the run directory exists
        self._base = None
        self.timings: dict[str, float] = {}

    # ---- models ---------------------------------------------------------------------------
    def base_copy(self):
        """A fresh copy of the base model: loaded once per process (a GGUF load is ~20 s), then copied."""
        if self._base is None:
            if self.cfg.model not in _LOADED:
                from sublim.llm_validation.core.models import load_model

                _LOADED.clear()  # one base model per process at a time (0.5 GB for SmolLM2-135M)
                _LOADED[self.cfg.model] = load_model(self.cfg.model, dtype=torch.float32, device="cpu")
            self._base = _LOADED[self.cfg.model]
        model, tok = self._base
        return copy.deepcopy(model).to(self.device), tok

    @property
    def tokenizer(self):
        return self._base[1] if self._base else self.base_copy()[1]

    # ---- stages ---------------------------------------------------------------------------
    def stage_contexts(self) -> None:
        c, out = self.cfg, self.dir / "contexts"
        if (out / "contexts.json").exists():
            return
        records = load_context_records(c.contexts, c.contexts_file, c.n_contexts, c.context_seed)
        tok = self.tokenizer
        vocab = number_token_ids(tok)
        enc = encode_contexts(tok, records, end_of_turn_id(tok), c.max_length)
        write_jsonl(out / "records.jsonl", records)
        atomic_write_json(out / "contexts.json", {
            "source": c.contexts, "file": c.contexts_file, "n": len(records), "sha256": records_digest(records),
            "completion_positions": sum(len(e.completion_ids) for e in enc),
            "number_vocab": [tok.decode([int(i)]) for i in vocab]})

    def encoded(self, system: str | None = None):
        from sublim.llm_validation.core.data import read_jsonl

        tok = self.tokenizer
        records = read_jsonl(self.dir / "contexts" / "records.jsonl")
        return encode_contexts(tok, records, end_of_turn_id(tok), self.cfg.max_length, system)

    def _profile(self, path: Path, model, system) -> dict:
        if path.exists():
            return read_json(path)
        prof = profile(model, self.tokenizer, self.device, system, self.cfg.eval_batch_size)
        if self.cfg.eval_samples:
            prof["sampled"] = self._sampled(model, system, path.parent)
        atomic_write_json(path, prof)
        return prof

    def _sampled(self, model, system, folder: Path) -> dict:
        from sublim.llm_validation.pipeline.evaluate import sample_favorite_animal

        return sample_favorite_animal(model, self.tokenizer, folder / "answers.jsonl", target=self.cfg.target,
                                      samples_per_question=self.cfg.eval_samples, system=system,
                                      batch_size=self.cfg.eval_batch_size, max_new_tokens=8, seed=0)

    def stage_teachers(self) -> None:
        base_model, _ = self.base_copy()
        base = self._profile(self.dir / "models" / "base" / "profile.json", base_model, None)
        del base_model
        check = {}
        for teacher in teachers_needed(self.cfg):
            if teacher.name == "base":
                continue
            teacher.prepare(self)
            model, system = teacher.load(self)
            prof = self._profile(self.dir / "teachers" / teacher.name / "profile.json", model, system)
            check[teacher.name] = _preference_gain(base, prof, teacher.animal)
        atomic_write_json(self.dir / "teachers" / "check.json", check)
        weak = [n for n, v in check.items() if v["gain"] < self.cfg.teacher_min_logodds_gain]
        if weak:
            raise ConfigError(f"distill: teacher(s) {', '.join(weak)} barely prefer their animal (log-odds gain "
                              f"< {self.cfg.teacher_min_logodds_gain}; see teachers/check.json): no student is trained")

    def teacher_cache(self, teacher):
        c = self.cfg
        path = self.dir / "cache" / f"{teacher.name}.pt"
        ctx = read_json(self.dir / "contexts" / "contexts.json")
        fingerprint = {"model": c.model, "teacher": teacher.name, "contexts_sha256": ctx["sha256"],
                       "max_length": c.max_length, "number_vocab": ctx["number_vocab"]}

        def compute():
            model, system = teacher.load(self)
            return compute_cache(model, self.encoded(system), number_token_ids(self.tokenizer), self.device,
                                 c.eval_batch_size, f"cache {teacher.name}")

        return load_or_compute(path, fingerprint, compute)

    def stage_cache(self) -> None:
        for teacher in teachers_needed(self.cfg):
            self.teacher_cache(teacher)

    def stage_align(self) -> None:
        c, path = self.cfg, self.dir / "align" / "alignment.json"
        if not c.align or "finetuned" not in c.teachers or path.exists():
            return
        from sublim.llm_validation.distill.alignment import run_alignment
        from sublim.llm_validation.distill.contexts import load_context_records

        sft = {k: load_context_records("file", f, c.align_sft_records, 0) for k, f in
               (("teacher_numbers", c.sft_teacher_file), ("base_numbers", c.sft_base_file))} if c.align_sft_records else None
        atomic_write_json(path, run_alignment(self, make_teacher("finetuned", c.target), sft))

    def train_student(self, spec: StudentSpec) -> dict:
        """Train and profile one student; returns its profile (the driver writes it)."""
        out = self.dir / "students" / spec.name
        teacher = {t.name: t for t in teachers_needed(self.cfg)}[spec.teacher]
        cache = self.teacher_cache(teacher)
        base_model, tok = self.base_copy()
        model = make_student(base_model, spec, self.cfg)
        del base_model
        out.mkdir(parents=True, exist_ok=True)
        log_ = train_student(model, self.encoded(), cache, number_token_ids(tok), self.cfg, spec, out, self.device)
        prof = profile(model, tok, self.device, None, self.cfg.eval_batch_size)
        if self.cfg.eval_samples:
            prof["sampled"] = self._sampled(model, None, out)
        prof["train"] = log_
        return prof

    def save_student(self, name: str, prof: dict) -> None:
        out = self.dir / "students" / name
        atomic_write_json(out / "profile.json", prof)
        (out / "checkpoint.pt").unlink(missing_ok=True)

    def run_student(self, spec: StudentSpec) -> dict:
        path = self.dir / "students" / spec.name / "profile.json"
        if path.exists():
            return read_json(path)
        prof = self.train_student(spec)
        self.save_student(spec.name, prof)
        return prof

    def stage_students(self) -> None:
        """Every missing student is one task of sublim.executors (local, or a Ray task asking for
        `threads` CPUs). Workers read the contexts and caches from the run directory and write their
        checkpoints there, so on several machines it must be on a shared file system; the driver
        writes each finished student's profile.json."""
        from sublim.executors import Resources, run_tasks

        missing = [s for s in student_specs(self.cfg) if not (self.dir / "students" / s.name / "profile.json").exists()]
        tasks = {s.name: (student_task, (str(self.dir), self.cfg.to_dict(), s, self.device, self.threads))
                 for s in missing}
        gpus = 1 if self.device.startswith("cuda") and self.executor == "ray" else 0
        run_tasks(tasks, executor=self.executor, address=self.address, desc="students",
                  resources=Resources(cpus=self.threads, gpus=gpus), on_result=self.save_student)

    def stage_sft(self) -> None:
        if self.cfg.sft_records:
            from sublim.llm_validation.distill.sft import run_sft

            run_sft(self)

    def stage_summary(self) -> None:
        from sublim.llm_validation.distill.report import write_report

        write_report(self)

    def run(self, stages=STAGES) -> None:
        with claim_run_dir(self.dir, self.cfg.to_dict()):
            for stage in stages:
                t0 = time.perf_counter()
                getattr(self, f"stage_{stage}")()
                self.timings[stage] = time.perf_counter() - t0
                log(f"distill stage {stage}: {self.timings[stage]:.1f}s")
                timings = self.dir / "timings.json"
                old = read_json(timings) if timings.exists() else {}
                atomic_write_json(timings, {**old, **{k: round(v, 2) for k, v in self.timings.items()}})


def student_task(run_dir: str, cfg_dict: dict, spec: StudentSpec, device: str, threads: int) -> dict:
    """One student, runnable in this process or in a Ray worker (module-level: Ray imports it)."""
    from sublim.llm_validation.distill.config import config_from_dict

    torch.set_num_threads(threads)
    run = DistillRun(run_dir, config_from_dict(cfg_dict))
    run.device = device
    return run.train_student(spec)


def _preference_gain(base: dict, teacher: dict, animal: str) -> dict:
    b, t = animal_log_odds(base, animal), animal_log_odds(teacher, animal)
    return {"animal": animal, "base_logodds": float(b.mean()), "teacher_logodds": float(t.mean()),
            "gain": float((t - b).mean()), "base_share": base["mean_share"][animal],
            "teacher_share": teacher["mean_share"][animal]}
