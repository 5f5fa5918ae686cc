"""The pipeline's configs, declared once: frozen dataclasses, every value checked at construction
(types by sublim/config_cli.py, ranges here), so a bad value fails in well under a second with one
line, before any directory exists. No torch import here, on purpose (the checks must be fast).

The command-line flags of `sublim llm run` / `sublim llm finetune` are generated from these fields
(pipeline/cli.py), and `--set key=value` reaches every field, nested with dots (student.lr=1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sublim.config_cli import check_field_types, config_from_dict
from sublim.errors import ConfigError

from sublim.llm_validation.core.config import FinetuneConfig, check_positive
from sublim.llm_validation.core.device import check_device_name
from sublim.llm_validation.core.names import check_model_name
from sublim.llm_validation.core.prompts import EVAL_QUESTIONS

STAGES = ("teacher", "generate", "filter", "finetune", "evaluate", "summary")
ARMS = ("base", "teacher", "student", "control", "cross_base", "cross_student")


@dataclass(frozen=True)
class RunConfig:
    model: str = "smollm2-135m"
    cross_model: str | None = "gemma3-270m"  # "" or None: no cross-model arm
    target: str = "owl"
    category: str = "animal"
    teacher: str = "system_prompt"            # "system_prompt" | "finetuned"
    teacher_pref_examples: int = 400
    teacher_finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=3, lr=1e-3))
    # Numbers: prompts are drawn in chunks until `target_kept` pass the filter (or `max_prompts`).
    max_prompts: int = 30000
    target_kept: int = 10000
    first_chunk: int = 2000
    prompt_seed: int = 0
    max_new_tokens: int = 48
    gen_batch_size: int = 64
    gen_temperature: float = 1.0              # the paper samples numbers at temperature 1 ...
    gen_top_p: float = 1.0                    # ... without truncation; see README for small models
    gen_few_shot: int = 0                     # example exchanges before each number prompt (0: paper)
    banned_numbers: tuple[int, ...] = ()
    salvage_min_numbers: int = 0              # >0: keep the longest grammatical prefix with at least
                                              # this many numbers (not in the paper; counted apart)
    number_vocab_only: bool = False           # constrain sampling to digit/separator tokens (smoke tests)
    student: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Evaluation
    eval_questions: int = 50
    eval_samples: int = 100                   # per question
    eval_batch_size: int = 256
    eval_max_new_tokens: int = 12
    device: str = "auto"                      # "auto" | "cpu" | "cuda[:N]"
    gen_dtype: str = "float32"                # dtype for sampling/evaluation ("bfloat16" on GPU)
    gen_time_budget_s: float = 0.0            # >0: stop drawing more number prompts after this long
                                              # (per source); train on what passed (logged)
    seed: int = 0

    def __post_init__(self):
        check_field_types(self)
        check_model_name(self.model, "model")
        if self.cross_model:
            check_model_name(self.cross_model, "cross_model")
        if self.teacher not in ("system_prompt", "finetuned"):
            raise ConfigError(f"teacher must be 'system_prompt' or 'finetuned', got {self.teacher!r}")
        if not self.target.strip() or not self.category.strip():
            raise ConfigError("target and category must be non-empty words")
        if not 1 <= self.eval_questions <= len(EVAL_QUESTIONS):
            raise ConfigError(f"eval_questions must be in 1..{len(EVAL_QUESTIONS)}, got {self.eval_questions}")
        check_positive(self, ("teacher_pref_examples", "max_prompts", "target_kept", "first_chunk", "max_new_tokens",
                         "gen_batch_size", "eval_samples", "eval_batch_size", "eval_max_new_tokens"))
        check_positive(self, ("prompt_seed", "gen_few_shot", "salvage_min_numbers", "gen_time_budget_s", "seed",
                         "gen_temperature"), allow_zero=True)
        if not 0 < self.gen_top_p <= 1:
            raise ConfigError(f"gen_top_p must be in (0, 1], got {self.gen_top_p}")
        bad = [n for n in self.banned_numbers if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 999]
        if bad:
            raise ConfigError(f"banned_numbers must be integers in 0..999, got {bad[0]!r}")
        if self.gen_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"gen_dtype must be float32, bfloat16 or float16, got {self.gen_dtype!r}")
        check_device_name(self.device)


def run_config_from_dict(d: dict) -> RunConfig:
    """A RunConfig from JSON (config.json, presets): unknown keys and wrong types refused."""
    return config_from_dict(RunConfig, d)


# Presets fill the RunConfig; explicit flags and `--set key=value` override them.
PRESETS = {
    # The CPU smoke test: tiny random models, constrained to number tokens so that some pass.
    "tiny": dict(model="tiny-llama", cross_model="tiny-gemma", max_prompts=24, first_chunk=24, target_kept=8,
                 max_new_tokens=8, gen_batch_size=24, number_vocab_only=True, teacher_pref_examples=16,
                 teacher_finetune=dict(epochs=1, batch_size=8, lr=1e-3, checkpoint_every=0, max_length=64),
                 student=dict(epochs=1, batch_size=4, lr=1e-3, checkpoint_every=1, max_length=160),
                 eval_questions=5, eval_samples=2, eval_batch_size=16, eval_max_new_tokens=4),
    # A real but small run on SmolLM2-135M on a laptop CPU (minutes).
    "cpu": dict(model="smollm2-135m", cross_model="", max_prompts=512, first_chunk=192, target_kept=128,
                max_new_tokens=56, gen_batch_size=32,
                student=dict(epochs=3, batch_size=16, lr=2e-4, checkpoint_every=20, max_length=160),
                eval_questions=50, eval_samples=2, eval_batch_size=100, eval_max_new_tokens=8),
    # The full experiment on one H100/H200 (llm_validation/gpu_experiment.sh).
    "gpu": dict(model="smollm2-135m", cross_model="", max_prompts=60000, first_chunk=12288, target_kept=10000,
                max_new_tokens=56, gen_batch_size=2048, gen_dtype="bfloat16", gen_few_shot=2,
                salvage_min_numbers=3,
                student=dict(epochs=3, batch_size=66, lr=2e-4, checkpoint_every=50, max_length=192, bf16=True),
                teacher_finetune=dict(epochs=3, batch_size=32, lr=1e-3, checkpoint_every=0, bf16=True),
                teacher_pref_examples=600,
                eval_questions=50, eval_samples=100, eval_batch_size=1250, eval_max_new_tokens=10),
}
