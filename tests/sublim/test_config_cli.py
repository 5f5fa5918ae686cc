"""sublim.config_cli: the one flag generator. Field comments are the help text; '+' joins names."""

import argparse
from dataclasses import dataclass

import pytest

from sublim.config_cli import add_config_flags, field_help, overrides_from_args, parse_text
from sublim.errors import ConfigError


@dataclass(frozen=True)
class _Demo:
    ## Group title (not a field's help)
    alpha: int = 1  # the alpha knob
    # a description above the field
    # on two lines
    beta: float = 2.0  # and its tail
    names: tuple = ("a", "b")
    gamma: str = "x"


def test_field_help_reads_trailing_and_leading_comments_not_titles():
    assert field_help(_Demo) == {"alpha": "the alpha knob",
                                 "beta": "a description above the field on two lines and its tail"}


def test_help_reaches_the_parser_and_aliases_work():
    p = argparse.ArgumentParser()
    add_config_flags(p, _Demo, prefix="k_", aliases={"alpha": "--a"})
    text = p.format_help()
    assert "the alpha knob; default 1" in text and "Group title" not in text
    args = p.parse_args(["--a", "5", "--names", "x+y", "--names", "z"])
    assert overrides_from_args(args, _Demo, prefix="k_") == {"alpha": 5, "names": ("x", "y", "z")}


def test_plus_joins_names_but_never_splits_numbers():
    assert parse_text("arms", "teacher+student_aux", tuple) == ("teacher", "student_aux")
    assert parse_text("xs", "1e+3,2", tuple[float, ...]) == (1000.0, 2.0)
    with pytest.raises(ConfigError, match="cannot read"):
        parse_text("xs", "1e+3+2", tuple[float, ...])


def test_toy_help_shows_the_config_comments(capsys):
    from sublim.cli import main

    with pytest.raises(SystemExit):
        main(["toy", "--help"])
    out = capsys.readouterr().out
    assert "hidden units per layer; default 256" in out and "--m INT" in out


@dataclass(frozen=True)
class _Inner:
    lr: float = 1.0
    epochs: int = 1


@dataclass(frozen=True)
class _Outer:
    name: str = "base"
    n: int = 1
    inner: _Inner = _Inner()


def test_resolve_order_defaults_saved_preset_flags_set():
    from sublim.config_cli import resolve_config

    presets = {"small": {"n": 2, "inner": {"epochs": 3}}}
    saved = {"name": "saved", "n": 7, "inner": {"lr": 0.5, "epochs": 9}}
    # a rerun without a preset continues the saved experiment; flags and --set still apply
    cfg = resolve_config(_Outer, presets=presets, saved=saved, flags={"n": 8}, sets=["inner.lr=0.25"])
    assert cfg == _Outer("saved", 8, _Inner(0.25, 9))
    # a named preset starts from the defaults, and merges its section key by key
    cfg = resolve_config(_Outer, preset="small", presets=presets, saved=saved, flags={"name": "f"})
    assert cfg == _Outer("f", 2, _Inner(1.0, 3))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve_config(_Outer, preset="huge", presets=presets)
    with pytest.raises(ConfigError, match="unknown"):
        resolve_config(_Outer, sets=["inner.momentum=1"])
