"""Model names the loader knows, checked without importing torch (configs validate at parse time,
in well under a second; core/models.py does the loading)."""

from __future__ import annotations

from pathlib import Path

from sublim.errors import ConfigError

ALIAS_NAMES = ("smollm2-135m", "gemma3-270m", "gemma3-270m-chat")  # resolved to GGUF files by core/models.py: ALIASES
TINY_MODELS = ("tiny-llama", "tiny-gemma")
KNOWN_NAMES = ALIAS_NAMES + TINY_MODELS


def check_model_name(name: str, what: str = "model") -> None:
    """Refuse, with one line, a name load_model could never resolve (same rules, nothing loaded).

    A Hub name `org/model` passes: whether it exists is known only with a network.
    """
    name = str(name)
    if not name:
        raise ConfigError(f"{what}: model name is empty")
    if name.lower() in KNOWN_NAMES:
        return
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"{what}: {path}: GGUF file not found")
        return
    if path.is_dir():
        return
    if path.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"{what}: {name}: not a .gguf file or model directory")
    if "/" not in name:
        raise ConfigError(f"unknown model {name!r} ({what}): use one of {', '.join(KNOWN_NAMES)}, "
                          "a .gguf file, a model directory or a Hugging Face name like org/model")
