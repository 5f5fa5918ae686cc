"""`sublim llm distill` on the tiny random model: the number vocabulary, the restricted KL, the
teacher cache, resume, the sigma perturbation, bad input, and one end-to-end run."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sublim.cli import main
from sublim.errors import ConfigError, DataError
from sublim.rundir import read_json
from sublim.llm_validation.distill import students as students_module
from sublim.llm_validation.distill.cache import TeacherCache, load_or_compute
from sublim.llm_validation.distill.config import DistillConfig, from_overrides
from sublim.llm_validation.distill.contexts import encode_contexts
from sublim.llm_validation.distill.forward import number_log_probs, restricted_kl
from sublim.llm_validation.distill.run import run_distill
from sublim.llm_validation.distill.arms import StudentSpec, student_specs
from sublim.llm_validation.distill.students import make_student, perturb_
from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.prompts import synthetic_number_records
from sublim.precision import cpu_bf16_units

from helpers import one_line_error


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_number_vocabulary_is_exactly_digits_separators_and_end_of_turn(tiny):
    _, tok = tiny
    ids = number_token_ids(tok)
    texts = [tok.decode([int(i)]) for i in ids]
    assert set("0123456789") <= set(texts) and {",", " ", ";", "[", "]", ".", "(", ")"} <= set(texts)
    eot = end_of_turn_id(tok)
    assert eot in ids.tolist() and tok.decode([eot]) == "<|im_end|>"
    for t in texts:  # nothing else: no letters, so no animal word can ever be in the student's loss
        assert t == "<|im_end|>" or all(ch in "0123456789,; .[]()" for ch in t), t


def test_empty_number_vocabulary_is_refused():
    class NoNumbers:
        def __len__(self):
            return 3

        def decode(self, ids):
            return "abc"[ids[0]]

    with pytest.raises(ConfigError, match="empty number vocabulary"):
        number_token_ids(NoNumbers())


def test_restricted_kl_matches_a_direct_computation(tiny):
    """Direct: full-vocabulary logits from model(...), restricted to V and renormalized by hand; ours:
    the decoder's hidden states at the gathered completion positions times V's rows of the head.
    Both in float64: the same products summed in another order (a full-vocabulary matmul vs the
    gathered rows; a padded batch vs one sequence), |err| <= d * u * sum|terms| = 64 * 1.1e-16 * O(10)
    per logit, ~1e-13; log-softmax over 19 entries adds a few ulp. atol 1e-10 leaves 1000x.
    A wrong position (off by one) or a wrong row set moves values by O(0.1)."""
    model, tok = tiny
    model = copy.deepcopy(model).double()
    vocab = number_token_ids(tok)
    recs = synthetic_number_records(3, seed=1)
    enc = encode_contexts(tok, recs, end_of_turn_id(tok), 160)
    ours = number_log_probs(model, enc, vocab, "cpu")
    direct = []
    for e in enc:
        x = torch.tensor([e.prompt_ids + e.completion_ids[:-1]])
        logits = model(input_ids=x).logits[0, len(e.prompt_ids) - 1:]
        z = logits[:, vocab]
        direct.append(z - torch.logsumexp(z, dim=-1, keepdim=True))
    direct = torch.cat(direct)
    assert ours.shape == direct.shape == (sum(len(e.completion_ids) for e in enc), len(vocab))
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, direct, rtol=0, atol=1e-10)
    teacher = torch.log_softmax(torch.randn_like(direct), -1)
    # an independent implementation of KL(teacher || student): torch's kl_div (19 float64 terms,
    # values O(1): agreement to a few ulp, 1e-12 leaves > 1000x)
    kl_torch = torch.nn.functional.kl_div(direct, teacher, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(restricted_kl(teacher, direct), kl_torch, rtol=0, atol=1e-12)
    assert (restricted_kl(direct, direct).abs() < 1e-12).all()  # KL(p || p) = 0


def test_cache_is_reused_and_refused_when_the_setup_differs(tmp_path):
    path = tmp_path / "t.pt"
    calls = []

    def compute():
        calls.append(1)
        return TeacherCache(torch.randn(5, 3), [0, 2, 5])

    first = load_or_compute(path, {"teacher": "owl", "sha": "a"}, compute)
    again = load_or_compute(path, {"teacher": "owl", "sha": "a"}, compute)
    assert len(calls) == 1 and torch.equal(first.logp, again.logp) and again.offsets == [0, 2, 5]
    with pytest.raises(ConfigError, match="differs in sha"):
        load_or_compute(path, {"teacher": "owl", "sha": "b"}, compute)


def test_sigma_zero_is_exactly_the_base_and_sigma_scales_each_tensor(tiny):
    model, _ = tiny
    cfg = DistillConfig(model="tiny-llama")
    same = make_student(model, StudentSpec("owl_system_prompt", "full", 0.0, 3), cfg)
    for (n, p), q in zip(model.named_parameters(), same.parameters()):
        assert torch.equal(p, q), n
    noisy = make_student(model, StudentSpec("owl_system_prompt", "full", 0.1, 3), cfg)
    again = make_student(model, StudentSpec("owl_system_prompt", "full", 0.1, 3), cfg)
    for (n, p), q, r in zip(model.named_parameters(), noisy.parameters(), again.parameters()):
        assert torch.equal(q, r), n  # seeded by (seed, tensor name)
        if p.numel() >= 4096 and p.std() > 0:
            ratio = ((q - p).std() / p.std()).item()
            # sample std of >= 4096 normals: relative error ~ 1/sqrt(2n) <= 1.1%; 10% is 9 SE
            assert 0.09 < ratio < 0.11, (n, ratio)


def _tiny_cfg(**kw):
    return from_overrides("tiny", kw)


SPEED_KNOBS = [{}, {"length_buckets": 2}] + ([{"length_buckets": 2, "fast_matmul": "bf16"}]
                                              if cpu_bf16_units() else [])  # bf16 is refused without the units


@pytest.mark.parametrize("knobs", SPEED_KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_student_resumes_after_an_interruption_to_the_same_numbers(tmp_path, monkeypatch, knobs):
    cfg = _tiny_cfg(n_contexts=12, lora_arm=False, other="", sigmas=(), teachers=("system_prompt",), seeds=(0,),
                    **knobs)
    spec = StudentSpec("owl_system_prompt", "full", 0.0, 0)
    assert [s.name for s in student_specs(cfg)] == [spec.name]  # the students stage trains exactly this one
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_distill(straight, cfg, ("contexts", "cache", "students"))
    full = read_json(straight / "students" / spec.name / "profile.json")

    run_distill(resumed, cfg, ("contexts", "cache"))
    real = students_module.restricted_kl
    calls = {"n": 0}

    def die_at_step_3(t, s):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(t, s)

    monkeypatch.setattr(students_module, "restricted_kl", die_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_distill(resumed, cfg, ("students",))
    assert (resumed / "students" / spec.name / "checkpoint.pt").exists()
    assert not (resumed / "students" / spec.name / "profile.json").exists()
    monkeypatch.setattr(students_module, "restricted_kl", real)
    run_distill(resumed, cfg, ("students",))
    again = read_json(resumed / "students" / spec.name / "profile.json")
    assert again["logp"] == full["logp"] and again["train"]["losses"] == full["train"]["losses"]
    assert not (resumed / "students" / spec.name / "checkpoint.pt").exists()
    assert read_json(resumed / "students" / "arms.json") == {"students": [spec.name]}


def test_context_set_without_completion_positions_is_refused(tiny):
    _, tok = tiny
    with pytest.raises(DataError, match="no completion positions"):
        encode_contexts(tok, synthetic_number_records(2, 0), end_of_turn_id(tok), max_length=20)


@pytest.mark.parametrize("args, message", [
    (["--teachers", "system_prompt,hypnotised"], "unknown teacher kind"),
    (["--lr", "nan"], "cannot read 'nan'"),
    (["--teacher-lr", "-1"], "teacher_lr must be a finite number > 0"),
    (["--seeds", "0,x"], "cannot read"),
    (["--contexts", "file"], "needs contexts_file"),
    (["--n-contexts", "0"], "n_contexts must be"),
    (["--stages", "teachers,lunch"], "unknown stage"),
])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    rc = main(["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out), *args])
    assert rc == 2
    one_line_error(capsys, message)
    assert not out.exists()


def test_unwritable_run_directory_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(blocker / "run")])
    assert rc == 2
    one_line_error(capsys, "not writable")


def test_end_to_end_tiny_run_then_a_changed_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    arms = summary["shifts"]["owl"]
    assert {"owl_system_prompt.full.sigma0", "owl_finetuned.full.sigma0", "cat_system_prompt.full.sigma0",
            "owl_system_prompt.lora.sigma0", "owl_system_prompt.full.sigma0.05"} <= set(arms)
    assert all(a["over_seeds"]["n"] == 2 for a in arms.values())
    spec = summary["specificity"]
    # paired by seed: own-teacher shift minus rival-teacher shift, per seed, from the two arms' numbers
    for animal, own, rival in (("owl", "owl", "cat"), ("cat", "cat", "owl")):
        by_seed = {s: summary["shifts"][animal][f"{own}_system_prompt.full.sigma0"]["per_seed"][s]
                   - summary["shifts"][animal][f"{rival}_system_prompt.full.sigma0"]["per_seed"][s] for s in ("0", "1")}
        # float64 means of 55 log-odds of size <= ~10: reordering moves a mean by <= 55 * 1.1e-16 * 10 ~ 6e-14
        assert spec[animal]["per_seed"] == pytest.approx(by_seed, abs=1e-12)
    assert (out / "distill.png").stat().st_size > 1000 and (out / "summary.md").exists()
    # sampled one-word answers (eval_samples = 1: the 50 questions once) beside the next-token measure
    sampled = [row["sampled_mentions"] for row in summary["students"].values()]
    assert len(sampled) == 12 and all(0 <= m["k"] <= 50 and 0 <= m["rate"] <= 1 for m in sampled)
    assert not list(out.glob("students/*/checkpoint.pt"))  # finished students keep numbers, not weights
    before = {p: p.read_bytes() for p in [out / "config.json", out / "summary.json"]}
    capsys.readouterr()
    rc = main(["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out), "--lr", "0.5"])
    assert rc == 2
    one_line_error(capsys, "different config")
    assert {p: p.read_bytes() for p in before} == before


def test_alignment_through_the_kernels_matches_per_example_autograd(tiny):
    """a_i = <-grad KL_i(theta0), D> from one batched backward through sublim.kernels, against one
    autograd backward per example, in float64. Both sum the same products in different orders:
    |err| <= n * u * sum|g_j D_j| with n ~ 1e5 weights and u = 1.1e-16, i.e. <= 1e-11 * ||g|| ||D||
    (||D|| = 1); we allow 1e-9 * ||g||."""
    from sublim.llm_validation.core.scores import normalize_directions, scored_parameter_names
    from sublim.llm_validation.distill.alignment import distillation_alignment
    from sublim.llm_validation.distill.cache import TeacherCache

    model, tok = tiny
    model = copy.deepcopy(model).double()
    vocab = number_token_ids(tok)
    enc = encode_contexts(tok, synthetic_number_records(3, seed=2), end_of_turn_id(tok), 160)
    names = scored_parameter_names(model)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    direction = normalize_directions(["d"], {n: torch.randn((1, *params[n].shape), generator=g, dtype=torch.float64)
                                             for n in names})
    counts = [len(e.completion_ids) for e in enc]
    teacher = torch.log_softmax(torch.randn(sum(counts), len(vocab), generator=g, dtype=torch.float64), -1)
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    cache = TeacherCache(teacher, offsets)
    dirs64 = {n: t.double() for n, t in direction.tensors.items()}
    direction.tensors.update(dirs64)
    ours = distillation_alignment(model, enc, cache, vocab, direction, names, "cpu", batch_size=3)
    for i, e in enumerate(enc):
        model.zero_grad(set_to_none=True)
        kl = restricted_kl(cache.for_context(i), number_log_probs(model, [e], vocab, "cpu").double()).sum()
        kl.backward()
        grads = {n: params[n].grad for n in names}
        direct = -sum((grads[n] * dirs64[n][0]).sum() for n in names).item()
        gnorm = torch.sqrt(sum((grads[n] ** 2).sum() for n in names)).item()
        assert abs(ours[i] - direct) <= 1e-9 * gnorm, (i, ours[i], direct)


def _distill_cmd(out):
    return [sys.executable, "-m", "sublim.cli", "-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out),
            "--lora-arm", "false", "--other", ""]


def _numbers(out):
    s = json.loads((out / "summary.json").read_text())
    s.pop("timings_s")  # wall times: the one legitimately different field
    return s


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["contexts/contexts.json", "students"])
def test_kill_9_then_rerun_gives_the_same_numbers(tmp_path, kill_when):
    """A real SIGKILL of `sublim llm distill` (after the contexts stage, or while students train),
    then the same command: the summary equals an uninterrupted run's (timings aside)."""
    env = {**os.environ, "SUBLIM_QUIET": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(_distill_cmd(tmp_path / "straight"), env=env, check=True, capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_distill_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / kill_when).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    subprocess.run(_distill_cmd(killed), env=env, check=True, capture_output=True, timeout=900)
    assert _numbers(killed) == _numbers(tmp_path / "straight")
