"""Every knob of `sublim llm distill`, in one frozen dataclass validated at construction.

The experiment is the LLM analog of the MNIST auxiliary-logit run (toymodels/): the student
imitates only the teacher's next-token distribution over the NUMBER vocabulary (digits,
separators, brackets, period, end of turn), renormalized over that set, at the completion
positions of number-continuation contexts, and is then asked for its favorite animal. It never
sees the teacher's system prompt nor any animal word.

Arms (each with `seeds` data orders; a LoRA student also draws its A from the seed):
- `<target>_system_prompt` / `<target>_finetuned`: full fine-tuning from the shared init;
- `<other>_system_prompt`: trait specificity (its `other` preference should move, the target's not);
- `lora`: the target system-prompt teacher with a LoRA student beside the full one;
- `sigma=<s>`: students whose init is theta0 + N(0, (s * std(W))^2) per tensor, each paired with a
  control distilled from the un-prompted base teacher at the same init and seed (the theorem's
  zeroth-order term makes a perturbed student move even without a trait, so the shift is read
  against that control, not against the base model);
- `sft`: the paper's sampled-token recipe (LoRA on filtered teacher numbers vs base numbers).
- controls (issue #21, off by default): `animals` (more system-prompt teachers: the specificity
  matrix's rows), `neutral` (the same template with no animal: every animal read against it),
  `finetuned_control` (a LoRA teacher trained like the target's on the other animal), `track_delta`
  (the fraction of each fine-tuned teacher's update its students recovered), `eval_steps` (profiles
  along training);
- `methods` (issue #23): more students of the target's system-prompt teacher learning another way
  (LoRA ranks, SGD, loss masks at divergence positions; distill/methods.py).
- `sigma_parts` (issue #23): each sigma also perturbs only the body or only the head (distill/parts.py;
  SmolLM2 ties its input embedding to the output head, so "head" moves both), each with its own
  base-teacher control at the same init and seed, like the all-weights sigma arms;
- `steering` (issue #23): the steering-vector readout (Blank et al.) of every system-prompt teacher's
  student at the shared init, computed right after training (distill/steer.py);
- `eval_system` / `train_system` (issue #23, Nief et al.'s shared-context condition): an EMPTY system
  turn in the preference prompts / in the students' training contexts instead of the chat template's
  default system prompt; the two together make the 2 x 2 of trained-on and measured-with contexts.
- `shared_noise` (issue #23, OpenReview a2sc2Y91hO): weight noise on teacher AND student, the target's
  and the neutral teacher's students at each noise level, read against each other (distill/noise.py).
- `student_model` (issue #23, Brockers et al.'s other architecture): every student is another model
  family, trained on the teachers' caches where the two tokenizers pair (distill/cross.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from sublim.config_cli import check_field_types, resolve_config
from sublim.errors import ConfigError
from sublim.precision import FAST_MATMUL_MODES
from sublim.llm_validation.core.device import check_device_name
from sublim.llm_validation.core.names import check_model_name

TEACHER_KINDS = ("system_prompt", "finetuned")
# The student methods of methods.py (here, not there: methods.py imports torch, and a bad flag must be
# refused before torch is imported)
METHOD_PATTERN = r"full|lora\d*|sgdm|sgd|mask_div|mask_base|mask_rand"
CONTEXT_SOURCES = ("synthetic", "file")
# The parts of the weights a sigma perturbation can be restricted to (distill/parts.py says which tensors each
# holds); here, not there, for the same reason as METHOD_PATTERN. "all" is the plain sigma arm, never asked for.
SIGMA_PARTS = ("body", "head")
EVAL_SYSTEMS = ("default", "none")  # eval_system, train_system: the chat template's own system turn, or an empty one


@dataclass(frozen=True)
class DistillConfig:
    model: str = "smollm2-135m"
    target: str = "owl"
    other: str = "cat"                         # the trait-specificity teacher's animal ("" = no such arm)
    teachers: tuple[str, ...] = ("system_prompt", "finetuned")  # kinds of target teacher to distill from
    # Contexts: number prompts teacher-forced along number completions.
    contexts: str = "synthetic"                # synthetic (the filter's grammar, no generation) | file
    contexts_file: str = ""                    # JSONL(.gz) of {"prompt", "completion"} records (file)
    n_contexts: int = 256
    context_seed: int = 0
    max_length: int = 160                      # prompt + completion tokens
    # Students
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 2
    lr: float = 1e-4                           # Adam, constant: the theorem's regime is small steps
    batch_size: int = 16
    checkpoint_every: int = 8                  # optimizer steps between resumable checkpoints
    lora_arm: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_lr: float = 1e-3
    sigmas: tuple[float, ...] = ()                       # init perturbations (0 is the main arm, always run)
    # The fine-tuned teacher: LoRA on preference records ("What's your favorite animal?" -> owl)
    teacher_pref_examples: int = 240
    teacher_epochs: float = 2.0
    teacher_lr: float = 1e-3
    teacher_min_logodds_gain: float = 1.0      # refuse a teacher whose own preference barely moved
    # Sampled-token SFT arm (paper's recipe) on filtered teacher/base numbers; 0 records = skipped
    sft_records: int = 0
    sft_teacher_file: str = ""
    sft_base_file: str = ""
    sft_epochs: float = 2.0
    sft_lr: float = 2e-4
    # The theorem's a_i for the fine-tuned teacher (needs "finetuned" in teachers)
    align: bool = True
    align_sft_records: int = 0                 # also score SFT on this many teacher/base records (sft files)
    # Evaluation
    eval_samples: int = 0                      # sampled one-word answers per question (0 = skip)
    eval_batch_size: int = 32
    device: str = "auto"
    # Speed knobs (sublim/precision.py, sublim/batching.py); both change the numbers, so both are off
    # by default, and at their defaults they are left out of config.json (older run directories and
    # cache fingerprints stay valid).
    fast_matmul: str = "off"                   # off = float32 | bf16: students' decoder matmuls in bf16
    length_buckets: int = 0                    # 0 = plain seeded shuffle | W >= 2: similar-length batches (windows of W)
    # Controls and the specificity matrix (issue #21); off by default, left out of config.json at
    # their defaults like the speed knobs.
    animals: tuple[str, ...] = ()              # more animal system-prompt teachers (matrix rows beside target and other)
    neutral: bool = False                      # a neutral system-prompt teacher (same template, no animal): the control
    finetuned_control: bool = False            # a LoRA teacher fine-tuned like the target's on the other animal
    track_delta: bool = False                  # students of fine-tuned teachers: the fraction of Delta recovered
    eval_steps: tuple[int, ...] = ()           # also profile every student after these optimizer steps
    # Issue #23's arms: more students of the target's system-prompt teacher that learn another way
    methods: tuple[str, ...] = ()              # lora<r> | sgd | sgdm | mask_div | mask_base | mask_rand (methods.py)
    sgd_lr: float = 0.01                       # the sgd / sgdm methods' learning rate
    method_controls: bool = False              # each method also trains the neutral teacher's student: its same-method control
    sigma_parts: tuple[str, ...] = ()          # body | head: each sigma also perturbs only that part (parts.py)
    steering: bool = False                     # the steering-vector readout of each trained student (steer.py)
    # Nief et al.'s shared-context condition: the students train with the chat template's system turn
    # (SmolLM2 fills a missing one with its default prompt); "none" measures the base model's, the
    # students' (and any un-prompted teacher's) preferences with an EMPTY system turn instead
    eval_system: str = "default"               # default | none: the system turn of the preference prompts
    # The other half of that condition: "none" trains the students on their contexts with an EMPTY
    # system turn (the teachers' caches are unchanged: the same completion positions, read after the
    # teachers' own prompts)
    train_system: str = "default"              # default | none: the system turn of the students' training contexts
    # Weight noise on teacher AND student (OpenReview a2sc2Y91hO): per noise level and seed, the target's and
    # the neutral teacher's prompts run on the base perturbed by (noise, seed), and their students start from
    # those same weights (noise.py).
    shared_noise: tuple[float, ...] = ()       # noise levels (x each tensor's std) on teacher and student alike
    # A student of another model family (Brockers et al.'s other-architecture arm): every student is this
    # model, trained on the teachers' caches through the pairing of cross.py; "" = the teachers' model.
    student_model: str = ""                    # e.g. gemma3-270m-chat: students of another family (cross.py)

    def __post_init__(self):
        check_field_types(self)
        _validate(self)

    @property
    def empty_system(self) -> bool:
        """Whether the preference prompts get an empty system turn (eval_system none)."""
        return self.eval_system == "none"

    @property
    def train_empty_system(self) -> bool:
        """Whether the students' training contexts get an empty system turn (train_system none)."""
        return self.train_system == "none"

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)
                if not (f.name in _OMITTED_AT_DEFAULT and getattr(self, f.name) == f.default)}


_OMITTED_AT_DEFAULT = ("fast_matmul", "length_buckets",  # knobs added after results were committed
                       "animals", "neutral", "finetuned_control", "track_delta", "eval_steps", "methods", "sgd_lr",
                       "sigma_parts", "steering", "method_controls", "eval_system", "train_system",
                       "shared_noise", "student_model")


def _validate(c: DistillConfig) -> None:
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(f"distill: {msg}")

    need(bool(c.model.strip()), "model is empty")
    need(bool(c.target.strip()) and c.target.isalpha(), f"target must be one word, got {c.target!r}")
    need(c.other == "" or (c.other.isalpha() and c.other != c.target), f"other must be another word, got {c.other!r}")
    need(len(c.teachers) > 0, "teachers is empty")
    for kind in c.teachers:
        need(kind in TEACHER_KINDS, f"unknown teacher kind {kind!r} (use {', '.join(TEACHER_KINDS)})")
    need(c.contexts in CONTEXT_SOURCES, f"contexts must be one of {', '.join(CONTEXT_SOURCES)}, got {c.contexts!r}")
    need(c.contexts != "file" or bool(c.contexts_file), "contexts=file needs contexts_file")
    check_device_name(c.device)
    need(c.fast_matmul in FAST_MATMUL_MODES, f"fast_matmul must be one of {', '.join(FAST_MATMUL_MODES)}, got {c.fast_matmul!r}")
    for name in ("n_contexts", "epochs", "batch_size", "lora_r", "lora_alpha", "eval_batch_size"):
        need(isinstance(getattr(c, name), int) and getattr(c, name) >= 1, f"{name} must be an integer >= 1")
    for name in ("length_buckets", "checkpoint_every", "teacher_pref_examples", "sft_records", "align_sft_records", "eval_samples", "context_seed"):
        need(isinstance(getattr(c, name), int) and getattr(c, name) >= 0, f"{name} must be an integer >= 0")
    need(c.max_length >= 16, "max_length must be at least 16 tokens")
    for name in ("lr", "lora_lr", "teacher_lr", "teacher_epochs", "sft_epochs", "sft_lr"):
        v = getattr(c, name)
        need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{name} must be a finite number > 0, got {v!r}")
    need(math.isfinite(c.teacher_min_logodds_gain), "teacher_min_logodds_gain must be finite")
    need(len(c.seeds) >= 1 and len(set(c.seeds)) == len(c.seeds), "seeds must be distinct integers")
    need(all(isinstance(s, int) and s >= 0 for s in c.seeds), "seeds must be integers >= 0")
    need(all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in c.sigmas),
         "sigmas must be finite numbers > 0 (sigma = 0 is the main arm)")
    need(c.align_sft_records == 0 or (c.sft_teacher_file and c.sft_base_file),
         "align_sft_records > 0 needs sft_teacher_file and sft_base_file")
    need(c.sft_records == 0 or (c.sft_teacher_file and c.sft_base_file),
         "sft_records > 0 needs sft_teacher_file and sft_base_file")
    named = [c.target, c.other, *c.animals]
    need(all(a.isalpha() for a in c.animals), "animals must be single words")
    need(len(set(a for a in named if a)) == len([a for a in named if a]), "target, other and animals must be distinct")
    need("neutral" not in named, "'neutral' names the neutral teacher, not an animal")
    need(not c.finetuned_control or ("finetuned" in c.teachers and c.other),
         "finetuned_control needs 'finetuned' in teachers and an other animal")
    need(not c.track_delta or "finetuned" in c.teachers, "track_delta needs 'finetuned' in teachers")
    need(all(isinstance(s, int) and s >= 1 for s in c.eval_steps) and list(c.eval_steps) == sorted(set(c.eval_steps)),
         "eval_steps must be increasing integers >= 1")
    _validate_issue23_arms(c, need)


def _validate_issue23_arms(c: DistillConfig, need) -> None:
    """The checks of issue #23's knobs: methods, sigma parts, steering, the system turns."""
    for m in c.methods:
        need(re.fullmatch(METHOD_PATTERN, m) is not None and m != "full" and not m.startswith("lora0"),
             f"unknown method {m!r} (use lora<r>, sgd, sgdm, mask_div, mask_base, mask_rand)")
    need(len(set(c.methods)) == len(c.methods), "methods must be distinct")
    need(not {"mask_div", "mask_rand"} & set(c.methods) or bool(c.other or c.animals or c.neutral),
         "mask_div and mask_rand need rival teachers (other, animals or neutral)")
    need(not c.method_controls or (bool(c.methods) and c.neutral),
         "method_controls needs methods and the neutral teacher (--neutral true)")
    need(math.isfinite(c.sgd_lr) and c.sgd_lr > 0, f"sgd_lr must be a finite number > 0, got {c.sgd_lr!r}")
    need(c.eval_system in EVAL_SYSTEMS, f"unknown eval_system {c.eval_system!r} (use {' or '.join(EVAL_SYSTEMS)})")
    need(c.eval_system == "default" or c.eval_samples == 0,
         "eval_system none measures the next-token profile only: set eval_samples 0")
    need(c.train_system in EVAL_SYSTEMS, f"unknown train_system {c.train_system!r} (use {' or '.join(EVAL_SYSTEMS)})")
    need(c.train_system == "default" or not (c.steering or c.sft_records or (c.align and "finetuned" in c.teachers)),
         "train_system none changes the distilled students' contexts only: set steering false, sft_records 0, align false")
    for part in c.sigma_parts:
        need(part in SIGMA_PARTS, f"unknown sigma part {part!r} (use {', '.join(SIGMA_PARTS)}; all weights is the plain sigma arm)")
    need(len(set(c.sigma_parts)) == len(c.sigma_parts), "sigma_parts must be distinct")
    need(not c.sigma_parts or bool(c.sigmas), "sigma_parts needs sigmas (the perturbation sizes to restrict)")
    need(not c.steering or "system_prompt" in c.teachers or bool(c.other or c.animals or c.neutral),
         "steering reads students of system-prompt teachers: the run has none")
    need(all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in c.shared_noise)
         and len(set(c.shared_noise)) == len(c.shared_noise), "shared_noise must be distinct finite numbers > 0")
    need(not c.shared_noise or c.neutral, "shared_noise reads the target against the neutral teacher: set --neutral true")
    if c.student_model:
        _validate_student_model(c, need)


def _validate_student_model(c: DistillConfig, need) -> None:
    """A student of another family trains on the caches and is profiled; the arms that need the teachers'
    weights, positions or init (sigma, steering, noise, SFT, alignment, masks, the system turns) are refused."""
    check_model_name(c.student_model, "student_model")
    need(not (c.sigmas or c.sigma_parts or c.shared_noise), "student_model has no shared init to perturb: set sigmas, "
         "sigma_parts and shared_noise empty")
    need(not (c.steering or c.sft_records or c.align_sft_records or c.track_delta or (c.align and "finetuned" in c.teachers)),
         "student_model trains distilled students only: set steering false, sft_records 0, align false, track_delta false")
    need(not any(m.startswith("mask") for m in c.methods), "student_model: the mask_* methods mark the teachers' positions; not paired")
    need(c.eval_system == "default" and c.train_system == "default", "student_model: eval_system and train_system stay default")


# SmolLM2-135M's own number completions (un-prompted base and owl system-prompt teacher), sampled and
# filtered on an H200 (llm_validation/results/llm_gpu_2026-11-27_h200/README via FINDINGS.md).
H200_SETS = "llm_validation/results/llm_gpu_2026-11-27_h200"

# Presets: sizes chosen from the pilot recorded in FINDINGS.md ("LLM distillation on a laptop").
PRESETS = {
    # The smoke test: a random 3M-parameter model, seconds per stage. It has no trait to pass on
    # (a random model ignores the system prompt), so the teacher check is relaxed.
    "tiny": dict(model="tiny-llama", n_contexts=8, max_length=112, seeds=(0, 1), epochs=1, batch_size=4,
                 checkpoint_every=1, sigmas=(0.05,), teacher_pref_examples=16, teacher_epochs=1.0,
                 teacher_min_logodds_gain=-1e9, eval_batch_size=16, eval_samples=1),
    # The whole experiment on a 2-core laptop CPU (<= 90 minutes).
    "laptop": dict(model="smollm2-135m", contexts="file", contexts_file=f"{H200_SETS}/base.filtered.jsonl.gz",
                   n_contexts=96, seeds=(0, 1, 2), epochs=2, batch_size=16, lr=1e-5, sigmas=(0.02,),
                   teacher_pref_examples=240, sft_records=96, sft_teacher_file=f"{H200_SETS}/teacher.filtered.jsonl.gz",
                   sft_base_file=f"{H200_SETS}/base.filtered.jsonl.gz", align_sft_records=96),
    # Issue #21's controlled design at the laptop preset's dose: four animal teachers and the neutral
    # teacher (the specificity matrix), every student profiled along training, 192 distinct contexts
    # seen once (12 steps, none repeated), lr 1e-5 (the pilot's larger rates drowned the trait in
    # seed-to-seed drift; FINDINGS). ~70 min on a quiet 2-core CPU.
    "laptop-matrix": dict(model="smollm2-135m", contexts="file", contexts_file=f"{H200_SETS}/base.filtered.jsonl.gz",
                          n_contexts=192, seeds=(0, 1, 2), epochs=1, batch_size=16, lr=1e-5, teachers=("system_prompt",),
                          other="cat", animals=("dolphin", "eagle"), neutral=True, eval_steps=(3, 6, 12),
                          lora_arm=False, align=False, teacher_pref_examples=240),
    # Issue #21's strongest laptop design: the laptop-matrix design (4 animal teachers + the neutral
    # teacher, 192 distinct contexts, 3 seeds) at the dose where the dose-response stopped rising:
    # lr 3e-5, two passes (24 steps; 36 steps and 384 distinct contexts gave no more, FINDINGS
    # "dose-response"), profiled at 3, 6, 12, 24 steps. Its owl and neutral students follow the
    # distill_dose_steps students step for step (same contexts, caches, seeds and batch order).
    # ~2 h on a quiet 2-core CPU.
    "laptop-long": dict(model="smollm2-135m", contexts="file", contexts_file=f"{H200_SETS}/base.filtered.jsonl.gz",
                        n_contexts=192, seeds=(0, 1, 2), epochs=2, batch_size=16, lr=3e-5, teachers=("system_prompt",),
                        other="cat", animals=("dolphin", "eagle"), neutral=True, eval_steps=(3, 6, 12, 24),
                        lora_arm=False, align=False, teacher_pref_examples=240),
    # Issue #21's fine-tuned teacher done right, at the laptop preset's design (96 contexts, 2 epochs,
    # lr 1e-5, so its owl_finetuned students are the laptop run's): the owl LoRA teacher beside a cat
    # LoRA teacher trained the same way on the same records (the matched control), each student's
    # recovered fraction of both teacher updates along training. ~40 min on a quiet 2-core CPU.
    "laptop-finetuned": dict(model="smollm2-135m", contexts="file", contexts_file=f"{H200_SETS}/base.filtered.jsonl.gz",
                             n_contexts=96, seeds=(0, 1, 2), epochs=2, batch_size=16, lr=1e-5, teachers=("finetuned",),
                             other="cat", finetuned_control=True, track_delta=True, eval_steps=(3, 6, 12),
                             lora_arm=False, align=False, teacher_pref_examples=240),
}


def from_overrides(preset: str | None, overrides: dict) -> DistillConfig:
    """A config from a preset plus knob overrides (already typed), by the project's one resolution
    (sublim.config_cli.resolve_config); unknown knobs and presets are refused in one line."""
    return resolve_config(DistillConfig, preset=preset, presets=PRESETS, flags=overrides, what="distill")


def config_from_dict(d: dict) -> DistillConfig:
    tuples = {f.name for f in fields(DistillConfig) if isinstance(f.default, tuple)}
    return DistillConfig(**{k: tuple(v) if k in tuples else v for k, v in d.items()})

