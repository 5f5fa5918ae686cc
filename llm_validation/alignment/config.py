"""`sublim llm align`'s config, declared once: the CLI flags are generated from these fields
(alignment/cli.py) and every value is checked at construction, without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sublim.config_cli import check_field_types
from sublim.errors import ConfigError

from sublim.llm_validation.core.device import check_device_name
from sublim.llm_validation.core.names import check_model_name

DTYPE_NAMES = ("float32", "bfloat16", "float64")
SCREEN_ARMS = ("top", "bottom", "random", "drop_top", "drop_random")
OTHER_ANIMALS = ("cat", "dog", "eagle", "lion", "dolphin")


@dataclass(frozen=True)
class AlignConfig:
    model: str = "smollm2-135m"
    data: dict[str, str] = field(default_factory=dict)   # name -> numbers JSONL; the first is the reference
    shuffled: tuple[str, ...] = ()                       # data sets also scored with numbers shuffled across responses
    traits: tuple[str, ...] = ("owl",)                   # one trait direction each; the first is the target
    teacher_model: str | None = None                     # fine-tuned teacher: direction theta_teacher - theta_base
    out: str = ""
    limit: int = 1000                                    # seeded random subset per data set; 0 = all
    batch_size: int = 16
    max_length: int = 192            # prompt (chat template ~100 tokens) + completion
    include_embedding: bool = False
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    n_boot: int = 1000
    arms: dict[str, str] = field(default_factory=dict)   # fine-tuned students to relate to the alignment, name -> dir
    screen: bool = False
    screen_fraction: float = 0.25
    screen_epochs: float = 3.0
    screen_lr: float = 2e-4
    screen_rank_by: str = "alignment"
    screen_arms: tuple[str, ...] = SCREEN_ARMS

    def __post_init__(self):
        check_field_types(self)
        check_model_name(self.model, "--model")
        check_device_name(self.device)
        if not self.out:
            raise ConfigError("give --out (or --run-dir, which defaults it to RUN_DIR/alignment)")
        if not self.data:
            raise ConfigError("give at least one --data NAME=PATH")
        for name, path in self.data.items():
            if not name or not Path(path).is_file():
                raise ConfigError(f"--data {name}={path}: file not found")
        for name in self.shuffled:
            if name not in self.data:
                raise ConfigError(f"--shuffled {name}: no --data with that name")
        if not self.traits and not self.teacher_model:
            raise ConfigError("no direction: give --traits and/or --teacher-model")
        if len(self.traits) + bool(self.teacher_model) > 16:
            raise ConfigError("at most 16 directions in total")
        self._check_ranges()

    def _check_ranges(self) -> None:
        if self.limit < 0 or self.batch_size < 1 or self.max_length < 8 or self.n_boot < 1:
            raise ConfigError("--limit must be >= 0 (0 = all), --batch-size and --n-boot >= 1, --max-length >= 8")
        if self.backend not in ("auto", "triton", "torch"):
            raise ConfigError(f"--backend must be auto, triton or torch, got {self.backend!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        check_screen(self.screen_fraction, self.screen_rank_by, self.screen_arms, "--screen-")
        if self.screen_epochs <= 0 or self.screen_lr <= 0:
            raise ConfigError("--screen-epochs and --screen-lr must be > 0")


RANK_BY = ("alignment", "per_token", "cosine")


def check_screen(fraction: float, rank_by: str, arms: tuple, flag: str = "screen ") -> None:
    """The gradient screen's settings, checked once for AlignConfig and ScreenConfig alike."""
    if not 0 < fraction <= 0.5:
        raise ConfigError(f"{flag}fraction must be in (0, 0.5], got {fraction}")
    if rank_by not in RANK_BY:
        raise ConfigError(f"{flag}rank-by must be {', '.join(RANK_BY)}; got {rank_by!r}")
    if not arms or any(a not in SCREEN_ARMS for a in arms):
        raise ConfigError(f"{flag}arms: choose from {', '.join(SCREEN_ARMS)}; got {', '.join(arms) or '(none)'}")
