"""sublim/stages.py, the one stage runner: canonical order, one name check before anything exists,
timings after every stage, Lazy inputs computed once, config claimed like every run directory."""

import json

import pytest

from sublim.errors import ConfigError
from sublim.stages import Lazy, Stage, run_stages


def _stages(calls: list):
    def first(log):
        calls.append(("first", log))

    def second(log, shared):
        calls.append(("second", shared))

    def third(shared):
        calls.append(("third", shared))
        raise RuntimeError("third fails")

    return [Stage("first", first, ("log",)), Stage("second", second, ("log", "shared")),
            Stage("third", third, ("shared",))]


def test_stages_run_in_canonical_order_and_a_lazy_input_is_built_once(tmp_path):
    calls, built = [], []
    res = {"log": "L", "shared": Lazy(lambda log: built.append(log) or f"S({log})", ("log",))}
    timings = run_stages(tmp_path / "run", {"a": 1}, _stages(calls)[:2], ["second", "first"], res, what="test")
    assert calls == [("first", "L"), ("second", "S(L)")]  # typed order does not matter
    assert built == ["L"] and set(timings) == {"first", "second"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"] == {"a": 1}


def test_an_unknown_stage_is_refused_before_the_directory_exists(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage.*nope.*use first, second, third"):
        run_stages(tmp_path / "run", {}, _stages([]), ["first", "nope"], {"log": 1, "shared": 2}, what="test")
    assert not (tmp_path / "run").exists()


def test_timings_are_written_after_every_stage_so_a_failure_keeps_earlier_ones(tmp_path):
    calls = []
    with pytest.raises(RuntimeError, match="third fails"):
        run_stages(tmp_path / "run", {}, _stages(calls), None, {"log": 1, "shared": 2}, what="test")
    assert [c[0] for c in calls] == ["first", "second", "third"]
    assert set(json.loads((tmp_path / "run" / "timings.json").read_text())) == {"first", "second"}


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run_stages(tmp_path / "run", {"a": 1}, _stages([])[:1], None, {"log": 1}, what="test")
    with pytest.raises(Exception, match="different config"):
        run_stages(tmp_path / "run", {"a": 2}, _stages([])[:1], None, {"log": 1}, what="test")
