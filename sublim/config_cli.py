"""Config fields declared once: argparse flags, `--set key=value` overrides and JSON loading are
all generated from a config dataclass, and every value is type-checked when the config is built.

    add_config_flags(parser, FinetuneConfig)              # --method --epochs --lr ... one per field
    cfg = config_from_args(args, FinetuneConfig)          # only the flags given override defaults
    cfg = config_from_dict(RunConfig, {"student": {"lr": 1e-4}, "target_kept": 8})
    check_field_types(self)                               # in a frozen config's __post_init__

A value typed on a command line is parsed by its field's type: int, float (NaN/inf refused),
bool (true/false/1/0/yes/no), str, `X | None` ("none" or "" -> None), tuple/list
(comma-separated), dict (NAME=VALUE items, comma-separated), a nested config (only through
`--set section.field=value` or a JSON object). The toy CLI (toymodels/cli.py) grew the same idea
first; this is the shared version for the LLM configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import math
import tokenize
import types
import typing
from typing import Any

from sublim.errors import ConfigError

_NONE_WORDS = ("none", "null", "")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """{field: help text} from the comments in a config class's source: the comment ending the
    field's line, after the comment lines directly above it ("## Title" lines head a group of
    fields and are no field's help). The comment is the field's one
    description, read by people in the source and by `--help` alike (written once, never out of
    step). Empty when the source is not available (a frozen app): the flags still work."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        return {}
    helps, above = {}, []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("##"):
            above = []
            continue
        if stripped.startswith("#"):
            above.append(comments.get(number, ""))
            continue
        name = stripped.split(":", 1)[0].strip()
        if name in names and ":" in stripped:
            text = " ".join(t for t in (*above, comments.get(number, "")) if t)
            if text:
                helps[name] = text
        above = []
    return helps


def _split_optional(hint) -> tuple[Any, bool]:
    """(the type, whether None is allowed) for `X | None` / Optional[X] / X."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return hint, False


def _base(hint):
    return typing.get_origin(hint) or hint


def _type_name(hint) -> str:
    inner, optional = _split_optional(hint)
    name = getattr(_base(inner), "__name__", str(inner))
    return f"{name} or none" if optional else name


def parse_text(name: str, text: str, hint) -> Any:
    """A command-line string as a value of the field's type; ConfigError (one line) otherwise."""
    inner, optional = _split_optional(hint)
    if optional and text.strip().lower() in _NONE_WORDS:
        return None
    base = _base(inner)
    if dataclasses.is_dataclass(base):
        raise ConfigError(f"{name} is a config section: set its fields ({name}.FIELD=VALUE)")
    t = text.strip()
    try:
        if base is bool:
            low = t.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(t)
        if base is int:
            return int(t)
        if base is float:
            value = float(t)
            if not math.isfinite(value):
                raise ValueError(t)
            return value
        if base in (tuple, list):
            item_hint = (typing.get_args(inner) or (str,))[0]
            # names may also be joined by '+' (the toy's `--arms teacher+student_aux`, which a
            # sweep grid needs: its values are comma-separated); never numbers (1e+3)
            sep = t.replace("+", ",") if item_hint is str else t
            items = [s.strip() for s in sep.split(",") if s.strip()]
            parsed = [parse_text(name, s, item_hint) for s in items]
            return tuple(parsed) if base is tuple else parsed
        if base is dict:
            pairs = [s.strip() for s in t.split(",") if s.strip()]
            if any(not p.split("=", 1)[0] or not p.partition("=")[2] for p in pairs):
                raise ConfigError(f"{name} expects NAME=VALUE items, got {text!r}")
            return dict(p.split("=", 1) for p in pairs)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{name}: cannot read {text!r} as {_type_name(hint)}") from None
    return text


def _matches(value, hint) -> bool:
    inner, optional = _split_optional(hint)
    if value is None:
        return optional
    base = _base(inner)
    if base is typing.Any or base is typing.Union:
        return True
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(base):
        return isinstance(value, base)
    return isinstance(value, base)


def check_field_types(obj) -> None:
    """Every field of a config instance has its declared type (floats finite); one-line ConfigError."""
    for name, hint in _hints(type(obj)).items():
        if name not in {f.name for f in dataclasses.fields(obj)}:
            continue
        value = getattr(obj, name)
        if not _matches(value, hint):
            raise ConfigError(f"{type(obj).__name__}.{name} must be {_type_name(hint)}"
                              f"{' (finite)' if _base(_split_optional(hint)[0]) is float else ''}, got {value!r}")


def config_from_dict(cls, data: dict, *, where: str = ""):
    """A config from a JSON-like dict: unknown keys refused, nested sections built, lists -> tuples
    for tuple fields, the dataclass's own validation run by its constructor."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a section of {cls.__name__} fields, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(where + k for k in unknown)}")
    kwargs = {}
    for key, value in data.items():
        inner, _ = _split_optional(hints[key])
        base = _base(inner)
        if dataclasses.is_dataclass(base) and not isinstance(value, base):
            value = config_from_dict(base, value, where=f"{where}{key}.")
        elif base is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls, *, skip=(), prefix: str = "cfg_",
                     helps: dict | None = None, defaults: Any = None, aliases: dict | None = None) -> None:
    """One `--field-name` option per (non-nested) field of `cls`, parsed later by the field's type.

    Every option defaults to None (= not given), so only what the user typed overrides a preset,
    a saved config or the dataclass default. `defaults`: an instance whose values the help shows.
    `helps` adds to (or replaces) the help read from the fields' comments; `aliases`: {field:
    extra flag} (the toy's `--m` for n_aux, the paper's name).
    """
    aliases = aliases or {}
    helps = {**field_help(cls), **(helps or {})}
    shown = defaults if defaults is not None else None
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if f.name in skip or dataclasses.is_dataclass(_base(_split_optional(hint)[0])):
            continue
        default = getattr(shown, f.name) if shown is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        text = helps.get(f.name, "")
        base = _base(_split_optional(hint)[0])
        kwargs = {}
        if base is bool:  # `--bf16` alone means true; `--bf16 false` also works
            kwargs = {"nargs": "?", "const": "true"}
        elif base in (tuple, list, dict):  # repeatable, and comma-separated within one flag
            kwargs = {"action": "append"}
        names = [flag_name(f.name), *([aliases[f.name]] if f.name in aliases else [])]
        parser.add_argument(*names, dest=prefix + f.name, default=None,
                            metavar=_type_name(hint).upper().replace(" ", "_"),
                            help=f"{text}{(' ' if text.endswith('.') else '; ') if text else ''}default {_show(default)}",
                            **kwargs)


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    return repr(value) if isinstance(value, str) else str(value)


def overrides_from_args(args, cls, *, prefix: str = "cfg_") -> dict:
    """{field: typed value} for every generated option the user gave."""
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        text = getattr(args, prefix + f.name, None)
        if text is None:
            continue
        if isinstance(text, list):  # a repeatable flag: parse each, then concatenate / merge
            parts = [parse_text(flag_name(f.name), t, hints[f.name]) for t in text]
            if all(isinstance(p, dict) for p in parts):
                out[f.name] = {k: v for p in parts for k, v in p.items()}
            else:
                items = [x for p in parts if p is not None for x in p]
                out[f.name] = tuple(items) if _base(_split_optional(hints[f.name])[0]) is tuple else items
        else:
            out[f.name] = parse_text(flag_name(f.name), text, hints[f.name])
    return out


def apply_set(data: dict, cls, item: str) -> None:
    """Apply one `--set key=value` (nested with dots) to a config dict, typed by the field."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    target, owner = data, cls
    for p in parts[:-1]:
        hint = _hints(owner).get(p)
        sub = _base(_split_optional(hint)[0]) if hint is not None else None
        if sub is None or not dataclasses.is_dataclass(sub):
            raise ConfigError(f"--set {key}: {p!r} is not a config section")
        target, owner = target.setdefault(p, {}), sub
    hint = _hints(owner).get(parts[-1])
    if hint is None:
        raise ConfigError(f"--set: unknown config key {key!r}")
    target[parts[-1]] = parse_text(key, text, hint)


def resolve_config(cls, *, preset: str | None = None, presets: dict | None = None, saved: dict | None = None,
                   flags: dict | None = None, sets=(), what: str = ""):
    """The one resolution of a command's config, in this order, each step overriding the last:
    the dataclass defaults; the run directory's saved config (only when no preset is named: a
    rerun continues the same experiment); the preset; the typed flags; every `--set key=value`.
    A section (nested config) in a preset or flag merges into the section, key by key. The
    result is built by config_from_dict, so unknown keys and wrong types give one line."""
    presets = presets or {}
    if preset is not None and preset not in presets:
        raise ConfigError(f"{what or cls.__name__}: unknown preset {preset!r} (use {', '.join(sorted(presets))})")
    data: dict = dict(saved) if (saved is not None and preset is None) else {}
    for f in dataclasses.fields(cls):  # a section starts from the field's own default, so a
        if _is_section(cls, f.name) and f.name not in data:  # partial override keeps the rest
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            data[f.name] = _as_dict(default)
    for layer in (presets.get(preset, {}) if preset else {}), (flags or {}):
        for key, value in layer.items():
            old = data.get(key)
            data[key] = {**_as_dict(old), **value} if isinstance(value, dict) and _is_section(cls, key) else value
    for item in sets:
        apply_set(data, cls, item)
    return config_from_dict(cls, data)


def _is_section(cls, key: str) -> bool:
    hint = _hints(cls).get(key)
    return hint is not None and dataclasses.is_dataclass(_base(_split_optional(hint)[0]))


def _as_dict(value) -> dict:
    if value is None:
        return {}
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)
