"""The fine-tuning knobs shared by every LLM experiment (pipeline students, distill teachers and
SFT arms, the alignment screen): one frozen dataclass checked at construction. No torch import
here, on purpose: configs are checked at parse time, in well under a second."""

from __future__ import annotations

from dataclasses import dataclass

from sublim.config_cli import check_field_types
from sublim.errors import ConfigError

# Attention and MLP projections: the same names in Llama, Gemma 3, Qwen2 and Mistral.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_positive(obj, names, *, allow_zero=False) -> None:
    for name in names:
        v = getattr(obj, name)
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{type(obj).__name__}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = "lora"            # "lora" | "full"
    epochs: float = 3.0             # may be fractional (e.g. 0.5 of an epoch)
    lr: float = 2e-4                # peak; linear decay to 0 after warmup (the paper's schedule)
    warmup_steps: int = 0
    batch_size: int = 16            # per process, per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    max_length: int = 128           # prompt + completion tokens
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0      # 0 = no clipping
    seed: int = 0
    checkpoint_every: int = 100     # optimizer steps; 0 = only at the end
    bf16: bool = False              # autocast to bfloat16 (GPU); master weights stay float32
    dtype: str = "float32"          # master weights: "float32", or "float64" (exact comparisons in tests)
    system_field: str | None = None  # train WITH a record field as system prompt (rarely wanted)

    def __post_init__(self):
        check_field_types(self)
        if self.method not in ("lora", "full"):
            raise ConfigError(f"finetune method must be 'lora' or 'full', got {self.method!r}")
        check_positive(self, ("epochs", "lr", "batch_size", "grad_accum", "lora_r", "lora_alpha"))
        check_positive(self, ("warmup_steps", "weight_decay", "max_grad_norm", "checkpoint_every", "seed"), allow_zero=True)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"finetune lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"finetune dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.max_length < 8:
            raise ConfigError("finetune: max_length must be at least 8 tokens")
        if not self.target_modules:
            raise ConfigError("finetune: target_modules is empty")
