"""Knobs of `sublim llm probe entangle` (frozen, checked at construction, no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from sublim.config_cli import check_field_types, resolve_config
from sublim.errors import ConfigError
from sublim.llm_validation.core.names import check_model_name
from sublim.llm_validation.core.prompts import ANIMALS


MEASURE_NAMES = ("core", "prefix_cached")  # entangle.MEASURES (kept here: configs import no torch)


@dataclass(frozen=True)
class EntangleConfig:
    model: str = "smollm2-135m"  # model name or path (core/models.py: load_model)
    animals: tuple[str, ...] = ("owl", "cat")  # animals whose entangled numbers are searched (from the 22 candidates)
    n_entangled: int = 5  # candidate entangled numbers per animal (largest rise of log P(number) under the animal prompt)
    n_random: int = 10  # random control numbers (seeded; none of them is any animal's candidate)
    max_number: int = 999  # numbers scored: 0..max_number in plain decimal (at most 999: three digits)
    n_number_questions: int = 3  # favorite-number wordings averaged when ranking candidates (1-5)
    seed: int = 0  # draws the random control numbers
    # the preference measure: "core" (core/preference.py sequence_log_probs, one full forward per
    # context, whole words) or "prefix_cached" (distill's first-token log-odds, the shared system
    # block run once; tested equal to a per-context forward)
    measure: str = "core"

    def __post_init__(self):
        check_field_types(self)
        check_model_name(self.model)
        if self.measure not in MEASURE_NAMES:
            raise ConfigError(f"measure must be one of {', '.join(MEASURE_NAMES)}, got {self.measure!r}")
        unknown = [a for a in self.animals if a not in ANIMALS]
        if not self.animals or unknown:
            raise ConfigError(f"animals must be some of the {len(ANIMALS)} candidates ({', '.join(ANIMALS)}); "
                              f"got {', '.join(unknown) or 'none'}")
        if len(set(self.animals)) != len(self.animals):
            raise ConfigError("animals: each animal once")
        if not 9 <= self.max_number <= 999:
            raise ConfigError(f"max_number must be in 9..999 (one to three digits), got {self.max_number}")
        if not 1 <= self.n_number_questions <= 5:
            raise ConfigError(f"n_number_questions must be in 1..5, got {self.n_number_questions}")
        need = self.n_entangled * len(self.animals) + self.n_random
        if self.n_entangled < 2 or self.n_random < 2 or need > self.max_number + 1:
            raise ConfigError(f"n_entangled and n_random must be >= 2 (a CI over numbers needs two) and "
                              f"{need} numbers must fit in 0..{self.max_number}")


PRESETS = {"tiny": {"model": "tiny-llama", "n_entangled": 2, "n_random": 3, "max_number": 99,
                    "n_number_questions": 1}}


def from_overrides(preset: str | None, overrides: dict, saved: dict | None = None) -> EntangleConfig:
    return resolve_config(EntangleConfig, preset=preset, presets=PRESETS, saved=saved, flags=overrides,
                          what="probe entangle")
