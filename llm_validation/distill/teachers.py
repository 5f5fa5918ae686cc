"""Teacher kinds: one handler per kind, each with the same two methods.

    prepare(cfg, out)                          make what the teacher needs in the run directory
                                               (nothing, or a LoRA fine-tune in out/teachers/<name>)
    load(cfg, out, device) -> (model, system prompt or None)   the teacher as it writes numbers

- SystemPromptTeacher: the shared weights theta0 with the paper's system prompt in the teacher's
  context only ("You love owls. ..."); with animal=None it is the un-prompted base model, the
  teacher of the perturbed-init controls; with animal=NEUTRAL it reads the same template with no
  trait in it (prompts.NEUTRAL_SYSTEM_PROMPT), the control every animal teacher is read against.
- FinetunedTeacher: theta_T = theta0 + Delta, Delta a LoRA fine-tune on preference records
  ("What is your favorite animal?" -> "The owl."), merged; no system prompt. The matched control
  is the same class with another animal: same questions, same seed, same schedule, another answer.

`trait` is the animal a teacher is meant to prefer (None for base and neutral): the teachers stage
checks that a trait teacher prefers it, and the report builds its matrix from the trait teachers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sublim.errors import ConfigError, DataError

from sublim.llm_validation.core.models import base_copy, load_finetuned
from sublim.llm_validation.core.config import FinetuneConfig
from sublim.llm_validation.core.finetune import finetune
from sublim.llm_validation.core.prompts import NEUTRAL_SYSTEM_PROMPT, preference_records, trait_system_prompt

NEUTRAL = "neutral"  # the "animal" of the neutral system-prompt teacher (never a candidate animal)


@dataclass(frozen=True)
class SystemPromptTeacher:
    animal: str | None

    @property
    def name(self) -> str:
        return f"{self.animal}_system_prompt" if self.animal else "base"

    @property
    def trait(self) -> str | None:
        return None if self.animal in (None, NEUTRAL) else self.animal

    @property
    def system(self) -> str | None:
        if self.animal is None:
            return None
        return NEUTRAL_SYSTEM_PROMPT if self.animal == NEUTRAL else trait_system_prompt(self.animal)

    def prepare(self, cfg, out: Path) -> None:
        return None

    def load(self, cfg, out: Path, device: str):
        model, _ = base_copy(cfg.model, device=device)
        return model, self.system


@dataclass(frozen=True)
class FinetunedTeacher:
    animal: str

    @property
    def name(self) -> str:
        return f"{self.animal}_finetuned"

    @property
    def trait(self) -> str:
        return self.animal

    def directory(self, out: Path) -> Path:
        return out / "teachers" / self.name

    def prepare(self, c, out: Path) -> None:
        records = preference_records(self.animal, c.teacher_pref_examples, c.context_seed)
        ft = FinetuneConfig(method="lora", epochs=c.teacher_epochs, lr=c.teacher_lr, batch_size=8,
                            max_length=96, checkpoint_every=0, seed=c.context_seed)
        model, tok = base_copy(c.model)
        finetune(c.model, records, ft, self.directory(out), model=model, tokenizer=tok)

    def load(self, cfg, out: Path, device: str):
        base = base_copy(cfg.model, device=device)
        model, _ = load_finetuned(self.directory(out), base=base, device=device)
        return model, None


TEACHER_HANDLERS = {"system_prompt": SystemPromptTeacher, "finetuned": FinetunedTeacher}


def make_teacher(kind: str, animal: str | None):
    if kind not in TEACHER_HANDLERS:
        raise ConfigError(f"distill: unknown teacher kind {kind!r} (use {', '.join(TEACHER_HANDLERS)})")
    return TEACHER_HANDLERS[kind](animal)


def parse_teacher(key: str):
    """The teacher of a key its `name` wrote: "base", "<animal>_system_prompt", "<animal>_finetuned"."""
    if key == "base":
        return SystemPromptTeacher(None)
    for kind in TEACHER_HANDLERS:
        animal = key.removesuffix(f"_{kind}")
        if animal != key and animal.isalpha():
            return make_teacher(kind, animal)
    raise DataError(f"not a teacher key: {key!r} (want base, <animal>_system_prompt or <animal>_finetuned)")
