"""ToyConfig: paper defaults, validation with one-line errors, knob parsing."""

import pytest

from sublim.errors import ConfigError
from sublim.toymodels.config import ARMS, ToyConfig, canonical_knob, from_dict, from_overrides, parse_knob_value


def test_defaults_are_the_paper_settings():
    c = ToyConfig()
    assert c.spec.layer_dims == [(784, 256), (256, 256), (256, 13)]
    assert (c.n_aux, c.lr, c.optimizer, c.batch_size, c.teacher_epochs, c.distill_epochs) == (3, 3e-4, "adam", 1024, 5, 5)
    assert (c.init, c.init_scale, c.distill_input, c.student_init) == ("normal", 1.0, "uniform", "shared")
    assert c.arms == ARMS and c.independent_batches


@pytest.mark.parametrize("overrides, needle", [
    ({"width": 0}, "width must be a positive integer"),
    ({"depth": -2}, "depth must be a positive integer"),
    ({"n_models": 0}, "n_models must be a positive integer"),
    ({"batch_size": 0}, "batch_size"),
    ({"teacher_epochs": -1}, "teacher_epochs"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"lr": float("nan")}, "lr must be positive"),
    ({"init_scale": -1.0}, "init_scale"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of adam, sgd"),
    ({"distill_input": "pink"}, "distill_input must be one of"),
    ({"init": "xavier"}, "init must be one of"),
    ({"n_aux": 0}, "n_aux (m) = 0"),
    ({"arms": ("teacher", "ghost")}, "unknown arm 'ghost'"),
    ({"arms": ()}, "arms is empty"),
    ({"n_models": 1}, "cross-model arms need n_models >= 2"),
    ({"student_init": "perturbed"}, "needs perturb_sigma > 0"),
    ({"perturb_sigma": 0.1}, "only applies with student_init=perturbed"),
    ({"device": "tpu"}, "device must be cpu or cuda"),
    ({"fast_matmul": "tf32"}, "needs a CUDA device"),
])
def test_bad_values_raise_one_line_config_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        ToyConfig(**overrides)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_m_zero_is_fine_without_aux_arms():
    c = ToyConfig(n_aux=0, arms=("reference", "teacher", "student_all", "cross_all"))
    assert c.student_arms == ("student_all", "cross_all")


def test_unknown_knob_and_aliases():
    with pytest.raises(ConfigError, match="unknown knob 'wdith'"):
        from_overrides({"wdith": "3"})
    assert canonical_knob("m") == "n_aux" and canonical_knob("distill-input") == "distill_input"
    c = from_overrides({"m": "10", "independent-batches": "false", "arms": "teacher+student_aux", "lr": "1e-3"})
    assert (c.n_aux, c.independent_batches, c.arms, c.lr) == (10, False, ("teacher", "student_aux"), 1e-3)
    with pytest.raises(ConfigError, match="cannot read 'abc' as int"):
        parse_knob_value("width", "abc")


def test_to_dict_round_trips():
    c = ToyConfig(n_aux=5, arms=("teacher", "student_all"), student_init="perturbed", perturb_sigma=0.5)
    assert from_dict(c.to_dict()) == c
