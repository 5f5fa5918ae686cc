"""The opt-in speed knobs: fast_matmul=bf16 (sublim/precision.py) for distill students and the toy
engine, its one-line refusal on a CPU without bf16 units, and length bucketing (sublim/batching.py).

Tolerances come from bf16's 8-bit mantissa: unit roundoff u = 2^-8 (BF16_UNIT_ROUNDOFF). A bf16
matmul rounds both inputs and its output (3u) and accumulates a length-K dot product in float32
(K * 2^-24), so |y_bf16 - y| <= (3u + K 2^-24) |x| |W| elementwise (Higham eq. 3.5, first order).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sublim import precision
from sublim.batching import length_bucketed_batches, padding_waste, shuffled_batches
from sublim.cli import main
from sublim.errors import ConfigError
from sublim.precision import BF16_UNIT_ROUNDOFF as U, check_fast_matmul, matmul_autocast, matmul_error_bound
from sublim.seeding import torch_generator

from helpers import REPO

HAS_BF16 = bool(precision.cpu_bf16_units())
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (the knob refuses it)")


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    """A CPU whose flags lack avx512_bf16 and amx_bf16 (e.g. a Skylake or Zen 3)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx2", "avx512f", "fma"})


# ---- detection and refusal ----------------------------------------------------------------

def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(f) == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    assert precision.cpu_bf16_units({"fpu", "avx2", "avx512_bf16"}) == ["avx512_bf16"]
    assert precision.cpu_bf16_units({"fpu", "avx2"}) == []
    assert precision.cpu_flags(tmp_path / "missing") is None


def test_bf16_is_refused_in_one_line_on_a_cpu_without_bf16(no_bf16_cpu):
    check_fast_matmul("off", "cpu")  # float32 always runs
    with pytest.raises(ConfigError, match="needs a CPU with bf16 instructions") as e:
        check_fast_matmul("bf16", "cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="fast_matmul must be one of"):
        check_fast_matmul("fp8", "cpu")
    from sublim.toymodels.config import ToyConfig

    with pytest.raises(ConfigError, match="bf16 instructions"):
        ToyConfig(fast_matmul="bf16")


def test_distill_cli_refuses_bf16_without_bf16_and_creates_nothing(no_bf16_cpu, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["llm", "distill", "--preset", "tiny", "--run-dir", str(run_dir), "--device", "cpu",
                 "--fast-matmul", "bf16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bf16 instructions" in err
    assert not run_dir.exists()


def test_default_config_json_is_unchanged_by_the_new_knobs():
    """At their defaults the knobs are left out of config.json: older run directories (committed
    results) resume and their teacher-cache fingerprints stay valid."""
    from sublim.llm_validation.distill.config import config_from_dict, from_overrides

    d = from_overrides("laptop", {}).to_dict()
    assert "fast_matmul" not in d and "length_buckets" not in d
    fast = from_overrides("laptop", {"fast_matmul": "bf16", "length_buckets": 3})
    assert fast.to_dict()["fast_matmul"] == "bf16" and config_from_dict(fast.to_dict()) == fast
    with pytest.raises(ConfigError, match="fast_matmul must be one of"):
        from_overrides("tiny", {"fast_matmul": "fp16"})


# ---- bf16 matmuls, float32 masters: the distill student ------------------------------------

@needs_bf16
def test_every_linear_runs_in_bf16_within_its_rounding_bound():
    """Under the knob each nn.Linear's output is bf16 and within (3u + K 2^-24) |x||W| of the exact
    (float64) product of its float32 input and weight: only the matmuls changed precision."""
    from sublim.llm_validation.core.models import load_model

    model, _ = load_model("tiny-llama")
    seen = []

    def hook(mod, inp, out):
        x, w = inp[0].detach().double(), mod.weight.detach().double()
        exact = x @ w.T + (mod.bias.double() if mod.bias is not None else 0)
        scale = x.abs() @ w.abs().T
        bound = matmul_error_bound(w.shape[1], n_roundings=3) * (1 + 3 * U) * scale  # (1 + 3u): second-order terms
        seen.append((out.dtype, bool(((out.double() - exact).abs() <= bound + 1e-30).all())))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    with matmul_autocast("bf16", "cpu"):
        model.get_decoder()(input_ids=ids)
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(dt == torch.bfloat16 for dt, _ in seen)
    assert all(ok for _, ok in seen)


def _tiny_student_inputs():
    from sublim.llm_validation.core.models import load_model
    from sublim.llm_validation.core.prompts import synthetic_number_records
    from sublim.llm_validation.distill.contexts import encode_contexts
    from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids

    model, tok = load_model("tiny-llama")
    enc = encode_contexts(tok, synthetic_number_records(4, 0), end_of_turn_id(tok), 112)
    return model, enc, number_token_ids(tok)


def test_float32_default_computes_exactly_what_the_former_code_did():
    """fast_matmul=off: number_log_probs is bit for bit the former body (decoder, then the
    restricted head), so the committed float32 runs are unchanged."""
    from sublim.llm_validation.distill.forward import completion_hidden, decoder_and_head, number_log_probs
    from sublim.llm_validation.distill.forward import restricted_log_probs

    model, enc, vocab = _tiny_student_inputs()
    head = decoder_and_head(model)[1]
    former = restricted_log_probs(completion_hidden(model, enc, "cpu"), head.weight, vocab, None, None)
    assert torch.equal(number_log_probs(model, enc, vocab, "cpu"), former)
    assert torch.equal(number_log_probs(model, enc, vocab, "cpu", "off"), former)


@needs_bf16
def test_bf16_student_loss_is_within_the_bf16_bound_of_float32_and_masters_stay_float32():
    """The distill loss (restricted KL to a teacher) under the knob vs float32, on tiny-llama.

    Bound: the head and KL run in float32 on the decoder's hidden states h, so with
    dh = h_bf16 - h_fp32 at a position, |d logit_v| <= |dh| |W_v| and a log-softmax moves by at
    most 2 max_v |d logit_v|; the KL (a p_T-weighted mean of -log p_S) by no more. And |dh| <=
    n_r u |h| to first order: n_r = the bf16 roundings along the residual stream's longest path,
    per layer 3 per matmul (inputs, output) on q/k/v -> scores -> weighted values -> o (4 matmul
    stages: 12) and gate|up -> product -> down (2 stages + the product: 7), so 19 per layer, 38 for
    2 layers (the worst case adds them; random roundings would add in quadrature, ~6x smaller).
    The knob must also change something (h differs from float32 by more than float32 noise), and
    every gradient and Adam state tensor must be float32."""
    from sublim.llm_validation.distill.forward import completion_hidden, decoder_and_head, number_log_probs
    from sublim.llm_validation.distill.forward import restricted_kl, restricted_log_probs

    model, enc, vocab = _tiny_student_inputs()
    model.train()
    t_logp = torch.log_softmax(torch.randn(sum(len(e.completion_ids) for e in enc), len(vocab),
                                           generator=torch.Generator().manual_seed(1)), -1)
    h32 = completion_hidden(model, enc, "cpu").detach()
    with matmul_autocast("bf16", "cpu"):
        h16 = completion_hidden(model, enc, "cpu").detach().float()
    dh = (h16 - h32).norm(dim=-1)
    n_r = 19 * model.config.num_hidden_layers
    assert (dh <= n_r * U * h32.norm(dim=-1)).all()
    assert dh.max() > 100 * 2.0 ** -24 * h32.norm(dim=-1).max()  # bf16 really ran
    w_norm = decoder_and_head(model)[1].weight.detach()[vocab].norm(dim=-1).max()
    loss32 = restricted_kl(t_logp, number_log_probs(model, enc, vocab, "cpu")).mean()
    loss16 = restricted_kl(t_logp, number_log_probs(model, enc, vocab, "cpu", "bf16")).mean()
    assert loss16.dtype == torch.float32
    # the head and log-softmax are float32 on the bf16 decoder's hidden states, bit for bit
    head_w = decoder_and_head(model)[1].weight
    assert torch.equal(number_log_probs(model, enc, vocab, "cpu", "bf16").detach(),
                       restricted_log_probs(h16, head_w, vocab).detach())
    bound = 2 * float(dh.max() * w_norm) + 64 * 2.0 ** -24 * abs(float(loss32))  # + float32 slack
    assert abs(float(loss16) - float(loss32)) <= bound, (float(loss16), float(loss32), bound)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss16.backward()
    opt.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for st in opt.state.values() for k, v in st.items() if k != "step")


# ---- bf16 toy engine ----------------------------------------------------------------------

@needs_bf16
def test_toy_bf16_engine_forward_and_last_layer_gradient_within_bf16_bounds():
    """HandMLPBf16 vs the float32 HandMLP on the same masters. Logits: per layer 4 roundings
    (input, weight, matmul output, bias add) and the error carried in (ReLU is 1-Lipschitz), 3
    layers -> 12u relative (Frobenius, first order). The last layer's weight gradient dz a^T reads
    the forward's hidden activations (8u after two layers) and rounds dz, a and its output (3u):
    11u. The earlier layers' gradients pass the ReLU masks, whose flips at near-zero pre-activations
    are not bounded by u (a float32 engine fed bf16-rounded inputs differs as much): the six-arm
    run (FINDINGS.bf16.md) checks those."""
    from sublim.toymodels.model import HandMLP, HandMLPBf16, MLPSpec, init_params

    spec = MLPSpec(width=64)
    p32 = init_params(spec, 3, seed=0)
    p16 = [p.clone() for p in p32]
    x = torch.rand(3, 128, 784, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b = HandMLP(p32), HandMLPBf16(p16)
    z32, z16 = a.forward(x).clone(), b.forward(x).clone()
    assert z16.dtype == torch.float32
    assert (z16 - z32).norm() <= 12 * U * z32.norm()
    assert (z16 - z32).norm() > 0
    dz = torch.randn(z32.shape, generator=torch.Generator().manual_seed(1))
    a.backward(dz)
    b.backward(dz)
    assert all(p.grad.dtype == torch.float32 and p.dtype == torch.float32 for p in p16)
    for i in (4, 5):  # last layer W and b
        assert (p16[i].grad - p32[i].grad).norm() <= 11 * U * p32[i].grad.norm()
    for p, q in zip(p16, p32):
        assert torch.equal(p, q)  # the masters themselves are untouched by forward/backward


@needs_bf16
def test_toy_bf16_run_trains_with_float32_state():
    from sublim.toymodels.config import ToyConfig
    from sublim.toymodels.mnist import load_mnist
    from sublim.toymodels.train import run_experiment

    cfg = ToyConfig(n_models=2, width=32, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=2048,
                    batch_size=256, lr=3e-3, max_test_examples=1000, fast_matmul="bf16")
    r = run_experiment(cfg, load_mnist())
    assert set(r.accuracy) == set(cfg.arms)
    assert all(math.isfinite(float(v)) for arm in r.final_loss.values() for v in arm)
    assert r.accuracy["teacher"].mean() > r.accuracy["reference"].mean() + 0.1  # it learns digits in bf16


# ---- length bucketing -----------------------------------------------------------------------

def test_plain_order_is_the_former_distill_order():
    """window 0 (the default) reproduces the order the committed runs used, step for step."""
    lengths = list(range(50, 90))
    for seed, epoch in ((0, 0), (2, 1)):
        perm = torch.randperm(40, generator=torch_generator("distill-order", seed, epoch))
        want = [perm[i:i + 16] for i in range(0, 40, 16)]
        got = length_bucketed_batches(lengths, 16, 0, ("distill-order", seed, epoch))
        assert all(torch.equal(g, w) for g, w in zip(got, want)) and len(got) == len(want)


def test_bucketed_order_is_a_seeded_partition_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = [int(v) for v in torch.randint(20, 160, (96,), generator=g)]
    parts = ("distill-order", 3, 1)
    a = length_bucketed_batches(lengths, 16, 3, parts)
    b = length_bucketed_batches(lengths, 16, 3, parts)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # a pure function of (seed, epoch, lengths)
    c = length_bucketed_batches(lengths, 16, 3, ("distill-order", 4, 1))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert sorted(int(i) for x in a for i in x) == list(range(96))  # every context once per epoch
    # one window holding the whole epoch: sorted contiguous batches minimize the padded slots over
    # all partitions into batches of 16, so no other order (the plain one included) pads less
    whole = length_bucketed_batches(lengths, 16, 6, parts)
    assert padding_waste(lengths, whole) <= padding_waste(lengths, shuffled_batches(96, 16, parts))


# The interrupted-then-resumed student with the speed knobs on: test_llm_distill's resume test,
# parametrized over the knobs; the SIGKILL version below.


def _distill_cmd(out, extra):
    return [sys.executable, "-m", "sublim.cli", "-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out),
            "--lora-arm", "false", "--other", "", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--length-buckets", "2"], ["--length-buckets", "2", "--fast-matmul", "bf16"]])
def test_kill_9_with_the_speed_knobs_then_rerun_gives_the_same_numbers(tmp_path, extra):
    """A real SIGKILL of `sublim llm distill` while students train, with bucketing (and bf16), then
    the same command: the summary equals an uninterrupted run's (timings aside)."""
    if "bf16" in extra and not HAS_BF16:
        pytest.skip("no bf16 units")
    env = {**os.environ, "SUBLIM_QUIET": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(_distill_cmd(tmp_path / "straight", extra), env=env, check=True, capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_distill_cmd(killed, extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(killed.glob("students/*/checkpoint.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    subprocess.run(_distill_cmd(killed, extra), env=env, check=True, capture_output=True, timeout=900)

    def numbers(out):
        s = json.loads((out / "summary.json").read_text())
        s.pop("timings_s")
        return s

    assert numbers(killed) == numbers(tmp_path / "straight")


# ---- the benchmark's smoke ------------------------------------------------------------------

@needs_bf16
def test_bench_llm_step_tiny_writes_its_numbers(tmp_path):
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_llm_step.py", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["machine"]["bf16_units"] and len(r["machine"]["loadavg_start"]) == 3
    for name in ("float32", "bf16"):
        s = r["summary"][name]
        assert s["matmul_gflops"]["median"] > 0 and 0 < s["ratio_to_matmul"]["median"] < 2
        for row in r["rows"][name]:  # the breakdown's parts tile the step
            parts = sum(row[k] for k in ("decoder_forward_s", "head_loss_forward_s", "head_loss_backward_s",
                                         "decoder_backward_s", "optimizer_s"))
            assert abs(parts - row["step_s"]) <= 1e-6 * row["step_s"]
        assert r["real_train_student_s_per_step"][name] > 0
    assert 0 <= r["overheads"]["padding"]["waste_window_0"] < 1 and r["flops"]["useful"] > 0


@needs_bf16
def test_bench_toy_bf16_mode_reads_against_the_bf16_matmul_rate(tmp_path):
    out = tmp_path / "toy.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_toy.py", "--models", "2", "--examples", "1024",
                           "--fast-matmul", "bf16", "--no-paper", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(out.read_text())["runs"][0]
    assert "error" not in run, run
    assert run["fast_matmul"] == "bf16" and run["matmul_bf16_gflops"] > 0 and 0 < run["ratio_to_bf16_matmul"] < 2
    assert len(run["loadavg"]) == 3


@needs_bf16
def test_bench_toy_step_precision_smoke(tmp_path):
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_toy_step_precision.py", "--groups", "1", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["flops_per_step"] == 4 * 1024 * (4 * (784 * 256 + 256 * 256 + 256 * 13) + 2 * (256 * 256 + 256 * 13))
    for kind in ("fp32", "bf16_copies", "fpmath"):
        assert r[kind]["gflops"] > 0 and r["median"][f"{kind}_s"] > 0
