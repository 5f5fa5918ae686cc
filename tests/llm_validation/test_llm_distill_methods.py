"""Issue #23's student methods in `sublim llm distill` (distill/methods.py): the LoRA rank sweep builds
the ranks asked, SGD keeps no adaptive state, and a loss mask removes exactly the chosen positions."""

import pytest
import torch

from sublim.errors import ConfigError, DataError
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.distill.arms import StudentSpec, student_specs, teachers_needed
from sublim.llm_validation.distill.config import from_overrides
from sublim.llm_validation.distill.forward import restricted_kl
from sublim.llm_validation.distill.methods import kept_mean, lora_rank, make_optimizer
from sublim.llm_validation.distill.students import make_student


def test_method_arms_parse_and_need_their_teachers():
    cfg = from_overrides("tiny", {"methods": ("lora4", "sgd", "sgdm", "mask_div", "mask_base", "mask_rand")})
    added = [s for s in student_specs(cfg) if s.method not in ("full", "lora")]
    assert {s.method for s in added} == set(cfg.methods) and {s.teacher for s in added} == {"owl_system_prompt"}
    assert all(StudentSpec.parse(s.name) == s for s in added)
    assert "base" in {t.name for t in teachers_needed(cfg)}  # mask_base reads the base model's argmax
    with pytest.raises(DataError):
        StudentSpec.parse("owl_system_prompt.adagrad.sigma0.seed0")
    for bad, msg in (({"methods": ("adagrad",)}, "unknown method"), ({"methods": ("lora0",)}, "unknown method"),
                     ({"methods": ("sgd", "sgd")}, "distinct"),
                     ({"methods": ("mask_div",), "other": ""}, "rival teachers")):
        with pytest.raises(ConfigError, match=msg):
            from_overrides("tiny", bad)


def test_the_rank_sweep_builds_the_ranks_asked_at_one_scale():
    cfg = from_overrides("tiny", {})
    assert lora_rank("lora", cfg) == (cfg.lora_r, cfg.lora_alpha) and lora_rank("full", cfg) is None
    base, _ = load_model("tiny-llama")
    for r in (1, 4, 16):
        assert lora_rank(f"lora{r}", cfg) == (r, r * cfg.lora_alpha / cfg.lora_r)
        student = make_student(base, StudentSpec("owl_system_prompt", f"lora{r}", 0.0, 0), cfg)
        lora = student.peft_config["default"]
        assert lora.r == r and lora.lora_alpha / lora.r == cfg.lora_alpha / cfg.lora_r
        a = [p for n, p in student.named_parameters() if "lora_A" in n]
        assert a and all(p.shape[0] == r for p in a)


@pytest.mark.parametrize("method, has_state", [("sgd", False), ("sgdm", True), ("full", True)])
def test_sgd_keeps_no_adaptive_state(method, has_state):
    cfg = from_overrides("tiny", {})
    w = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer(method, [w], cfg)
    (w ** 2).sum().backward()
    opt.step()
    state = opt.state[w]
    adaptive = any(k in state for k in ("exp_avg_sq", "square_avg", "sum"))  # a per-weight step scale
    assert adaptive == (method == "full")  # Adam has one, neither SGD arm does
    assert bool(state) == has_state  # sgdm: a momentum buffer only; sgd: nothing
    if method == "sgd":
        # one plain step w - lr * 2w = 0.98: float32 rounds lr, the product and the sum (each <= 1/2 ulp
        # of a value in [0.5, 1], ulp 2^-24) against one rounding of the float64 expectation: <= 2^-23
        assert torch.allclose(w.detach(), torch.full((3,), 1 - 2 * cfg.sgd_lr), rtol=0, atol=2 ** -23)


def test_a_mask_removes_exactly_the_chosen_positions_from_the_loss():
    torch.manual_seed(0)
    teacher = torch.log_softmax(torch.randn(6, 5), -1)
    logits = torch.randn(6, 5, requires_grad=True)
    keep = torch.tensor([True, False, True, True, False, True])
    loss = kept_mean(restricted_kl(teacher, torch.log_softmax(logits, -1)), keep)
    loss.backward()
    assert torch.equal(logits.grad[~keep], torch.zeros(2, 5)) and bool((logits.grad[keep] != 0).all())
    kl = restricted_kl(teacher, torch.log_softmax(logits.detach(), -1))
    # the same 4 float32 values summed in another order: <= 3 roundings of a sum of O(1) terms
    assert float(loss) == pytest.approx(float(kl[keep].mean()), rel=4 * 2 ** -24)
    assert float(kept_mean(kl, torch.zeros(6, dtype=torch.bool))) == 0.0  # all masked: zero, not nan
    assert torch.equal(kept_mean(kl, None), kl.mean())


def _prof(owl: float, losses=(1.0, 0.5)) -> dict:
    return {"candidates": ["owl", "cat"], "logp": [[owl - 2.0, -2.0]] * 3, "mean_share": {"owl": 0.5, "cat": 0.5},
            "train": {"losses": list(losses)}}


def test_method_report_pairs_each_method_with_the_full_arm_by_seed():
    from sublim.llm_validation.distill.controls import method_arms

    cfg = from_overrides("tiny", {"methods": ("mask_div", "sgd"), "neutral": True})
    profiles = {}
    for s in cfg.seeds:
        profiles[StudentSpec("owl_system_prompt", "full", 0.0, s).name] = _prof(0.4 + 0.1 * s)
        profiles[StudentSpec("owl_system_prompt", "mask_div", 0.0, s).name] = _prof(0.1 + 0.1 * s, (1.0, 0.75))
        profiles[StudentSpec("neutral_system_prompt", "full", 0.0, s).name] = _prof(0.0)
    m = method_arms(cfg, profiles, base=_prof(-5.0))
    assert m["reference"] == "neutral teacher's student"
    assert m["full"]["shift"]["mean"] > m["mask_div"]["shift"]["mean"] > 0
    # the same shift removed in every seed: the paired difference has no spread
    assert m["mask_div"]["minus_full"]["mean"] == pytest.approx(-0.3, abs=1e-12) and m["mask_div"]["minus_full"]["ci_half"] < 1e-12
    assert m["mask_div"]["kl_reduction"]["mean"] == 0.25 and m["full"]["kl_reduction"]["mean"] == 0.5
    assert m["sgd"] == {"shift": {"missing": True}, "kl_reduction": {"missing": True}}  # not trained: a row, not a skip


def test_method_controls_read_each_method_against_the_neutral_student_of_the_same_method():
    from sublim.llm_validation.distill.controls import method_arms

    cfg = from_overrides("tiny", {"methods": ("lora4",), "neutral": True, "method_controls": True})
    before = student_specs(from_overrides("tiny", {"methods": ("lora4",), "neutral": True}))
    specs = student_specs(cfg)
    assert specs[:len(before)] == before  # the controls come last: an older run's arms stay a prefix
    assert [s.name for s in specs[len(before):]] == [f"neutral_system_prompt.lora4.sigma0.seed{s}" for s in cfg.seeds]
    assert "method_controls" not in from_overrides("tiny", {}).to_dict()
    profiles = {}
    for s in cfg.seeds:
        profiles[StudentSpec("owl_system_prompt", "full", 0.0, s).name] = _prof(0.4)
        profiles[StudentSpec("neutral_system_prompt", "full", 0.0, s).name] = _prof(0.0)
        # a LoRA student drifts +0.5 whatever its teacher; the owl one adds +0.1 of trait
        profiles[StudentSpec("owl_system_prompt", "lora4", 0.0, s).name] = _prof(0.6)
        profiles[StudentSpec("neutral_system_prompt", "lora4", 0.0, s).name] = _prof(0.5)
    m = method_arms(cfg, profiles, base=_prof(-5.0))
    assert m["reference"] == "neutral teacher's student, same method"
    # log-odds differences of values set exactly in _prof: a few float64 roundings of O(1) numbers, <= 1e-12
    assert m["lora4"]["shift"]["mean"] == pytest.approx(0.1, abs=1e-12)
    assert m["full"]["shift"]["mean"] == pytest.approx(0.4, abs=1e-12)
    plain = method_arms(from_overrides("tiny", {"methods": ("lora4",), "neutral": True}), profiles, base=_prof(-5.0))
    assert plain["lora4"]["shift"]["mean"] == pytest.approx(0.6, abs=1e-12)  # against the FULL neutral student
    with pytest.raises(ConfigError, match="method_controls needs"):
        from_overrides("tiny", {"methods": ("lora4",), "method_controls": True})
