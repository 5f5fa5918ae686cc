"""The one place "auto" becomes a device."""

from __future__ import annotations

from sublim.errors import ConfigError

DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def check_device_name(name: str) -> None:
    """Syntax only (no torch import): for config validation."""
    if name not in ("auto", "cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"device must be {DEVICE_HELP}; got {name!r}")


def resolve_device(name: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; a CUDA device without CUDA -> one line."""
    import torch

    check_device_name(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name}: CUDA is not available on this machine")
    return name
