"""PerExampleGradStats (the model-level contract) vs one-backward-per-example in float64.

Tolerance: the statistics are accumulated in fp32 from fp32 (or float64) activations, so relative
to the float64 reference the error is ~n * 2^-24 with n up to a few hundred accumulated terms at
these sizes: rtol = 1e-4 on norms. Dots can be near zero (cancellation), so their error is measured
against the Cauchy-Schwarz scale ||G_i|| ||D_k||, with the same 1e-4.
"""

import copy

import pytest
import torch
from torch import nn

from sublim.errors import ConfigError, SublimError
from sublim.kernels import PerExampleGradStats, supported_param_names
from sublim.kernels import references as R
from sublim.kernels.linear_stats import triton_available

RTOL = 1e-4


class TinyLM(nn.Module):
    """Embedding tied to the output head, a Linear called twice, a padding index."""

    def __init__(self, vocab=13, d=6, with_norm=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.l1 = nn.Linear(d, d)
        self.l2 = nn.Linear(d, 2 * d)
        self.l3 = nn.Linear(2 * d, d, bias=False)
        self.norm = nn.LayerNorm(d) if with_norm else nn.Identity()
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx)
        h = torch.tanh(self.l1(h))
        h = h + self.l1(h)  # second use of the same weights
        h = h + self.l3(torch.relu(self.l2(h)))
        return self.head(self.norm(h))


def per_example_loss(model, idx, tgt):
    logits = model(idx)
    lo = nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none", ignore_index=-100)
    return lo.sum(1)


def data(B=4, T=5, vocab=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T), generator=gen)
    idx[0, :2] = 0  # padding tokens
    tgt = torch.randint(0, vocab, (B, T), generator=gen)
    tgt[1, 3:] = -100  # masked positions: zero output gradient
    return idx, tgt


def random_dirs(model, k, names, dtype=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.randn(k, *params[n].shape, generator=gen).to(dtype or params[n].dtype) for n in names}


def check_against_reference(model, idx, tgt, dirs, backend, names=None, device="cpu"):
    names = names or [n for n, p in model.named_parameters() if p.requires_grad]
    model = model.to(device)
    idx, tgt = idx.to(device), tgt.to(device)
    dirs_dev = {n: d.to(device) for n, d in dirs.items()}
    with PerExampleGradStats(model, dirs_dev, param_names=names, backend=backend) as st:
        per_example_loss(model, idx, tgt).sum().backward()
    r = st.result()
    ref_model = copy.deepcopy(model).double()
    sq, dot = R.micro_batch_model(
        ref_model, lambda i: per_example_loss(ref_model, idx, tgt)[i], idx.shape[0], names, dirs_dev
    )
    for n in names:
        got = r.sq_norm[n].double().cpu()
        assert got.shape == (idx.shape[0],) and r.sq_norm[n].dtype == torch.float32
        assert ((got - sq[n]).abs() <= RTOL * sq[n] + 1e-12).all(), (n, got, sq[n])
        if n in dirs:
            scale = sq[n].sqrt()[:, None] * dirs[n].double().reshape(dirs[n].shape[0], -1).norm(dim=1)[None, :]
            assert ((r.dot[n].double().cpu() - dot[n]).abs() <= RTOL * scale + 1e-12).all(), n
    total = sum(sq[n] for n in names)
    assert ((r.total_sq_norm.double().cpu() - total).abs() <= RTOL * total).all()
    if dirs:
        assert r.total_dot.shape == (idx.shape[0], next(iter(dirs.values())).shape[0])
    return r


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tied_model_torch_backend(dtype):
    torch.manual_seed(0)
    model = TinyLM().to(dtype)
    idx, tgt = data()
    names = [n for n, _ in model.named_parameters()]
    r = check_against_reference(model, idx, tgt, random_dirs(model, 3, names), "torch")
    # the masked example still has nonzero statistics from its unmasked positions
    assert (r.total_sq_norm > 0).all()


def test_directions_subset_and_no_directions():
    torch.manual_seed(0)
    model = TinyLM()
    idx, tgt = data()
    r = check_against_reference(model, idx, tgt, random_dirs(model, 2, ["l2.weight", "l2.bias"]), "torch")
    assert set(r.dot) == {"l2.weight", "l2.bias"}
    r = check_against_reference(model, idx, tgt, {}, "torch")
    assert r.dot == {} and r.total_dot.shape == (4, 0)


def test_padding_and_masked_tokens_contribute_nothing():
    """Appending masked positions (target -100) must not change any statistic."""
    torch.manual_seed(0)
    model = TinyLM()
    idx, tgt = data(B=3, T=4)
    names = [n for n, _ in model.named_parameters()]
    with PerExampleGradStats(model, param_names=names, backend="torch") as st:
        per_example_loss(model, idx, tgt).sum().backward()
    a = st.result().total_sq_norm
    # l1/l2/l3 are applied per token (no mixing across positions), so extra positions with target
    # -100 get zero output gradient and must add exactly nothing
    idx2 = torch.cat([idx, torch.randint(0, 13, (3, 3))], 1)
    tgt2 = torch.cat([tgt, torch.full((3, 3), -100)], 1)
    model.zero_grad()
    with PerExampleGradStats(model, param_names=names, backend="torch") as st:
        per_example_loss(model, idx2, tgt2).sum().backward()
    torch.testing.assert_close(st.result().total_sq_norm, a, rtol=1e-6, atol=0)


def test_several_steps_in_one_context():
    torch.manual_seed(0)
    model = TinyLM()
    names = supported_param_names(model)
    with PerExampleGradStats(model, param_names=names, backend="torch") as st:
        out = []
        for seed in (0, 1):
            idx, tgt = data(seed=seed)
            model.zero_grad()
            per_example_loss(model, idx, tgt).sum().backward()
            out.append(st.result().total_sq_norm.clone())
    idx, tgt = data(seed=1)
    with PerExampleGradStats(model, param_names=names, backend="torch") as st:
        per_example_loss(model, idx, tgt).sum().backward()
    torch.testing.assert_close(out[1], st.result().total_sq_norm)
    assert not torch.allclose(out[0], out[1])


def test_lora_adapters():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = TinyLM()
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["l2", "l3"], init_lora_weights=False)
    model = peft.get_peft_model(base, cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    idx, tgt = data()
    check_against_reference(model, idx, tgt, random_dirs(model, 2, names), "torch", names=names)


# ---- errors --------------------------------------------------------------------------------------
def test_unsupported_module_is_named():
    model = TinyLM(with_norm=True)
    with pytest.raises(SublimError, match=r"norm\.weight.*LayerNorm"):
        PerExampleGradStats(model)
    names = supported_param_names(model)
    assert "norm.weight" not in names and "l1.weight" in names
    PerExampleGradStats(model, param_names=names)  # fine without the norm


def test_registry_refuses_an_unknown_layer_type_in_one_line():
    model = nn.Sequential(nn.Linear(3, 4), nn.Conv1d(4, 4, 1))
    with pytest.raises(SublimError) as err:
        PerExampleGradStats(model)
    msg = str(err.value)
    assert "\n" not in msg and "'1.weight'" in msg and "Conv1d is not supported" in msg, msg
    assert supported_param_names(model) == ["0.weight", "0.bias"]


class _MatMul(nn.Module):
    """A layer type of its own (not an nn.Linear): y = x W^T."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x @ self.weight.T


def test_registering_a_layer_type():
    """A type registered with the linear handler is tracked like nn.Linear (same numbers); a weight
    it shares with an nn.Linear is refused, since no cross term is registered for the pair."""
    from sublim.kernels import model_stats

    torch.manual_seed(0)
    lin = nn.Linear(5, 3, bias=False)
    x = torch.randn(4, 6, 5)
    try:
        model_stats.register_layer(_MatMul, min_input_dim=2)(model_stats.LAYER_HANDLERS[nn.Linear].add)
        norms = []
        for model in (lin, _MatMul(lin.weight)):
            with PerExampleGradStats(model, backend="torch") as st:
                model(x).pow(2).sum().backward()
            norms.append(st.result().sq_norm["weight"])
        torch.testing.assert_close(norms[1], norms[0], rtol=0, atol=0)
        shared = nn.ModuleDict({"a": lin, "b": _MatMul(lin.weight)})
        with pytest.raises(SublimError, match="shared by .* no cross term"):
            PerExampleGradStats(shared)
    finally:
        model_stats.LAYER_HANDLERS.pop(_MatMul, None)


def test_functional_use_is_caught():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return nn.functional.linear(x, self.lin.weight, self.lin.bias)

    model = Functional()
    with PerExampleGradStats(model) as st:
        model(torch.randn(2, 3)).sum().backward()
    with pytest.raises(SublimError, match="functionally"):
        st.result()


def test_autocast_matches_autograd():
    """Under autocast (bf16 on CPU) the statistics are those of the gradients autograd forms."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(3, 5, 8)

    def loss_i(i=None):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x).float().pow(2).sum((1, 2))
        return out if i is None else out[i]

    names = [n for n, _ in model.named_parameters()]
    with PerExampleGradStats(model, backend="torch") as st:
        loss_i().sum().backward()
    r = st.result()
    for i in range(3):
        model.zero_grad()
        loss_i(i).backward()
        for n, p in model.named_parameters():
            ref = p.grad.double().pow(2).sum()
            # autograd's own weight gradient leaves a bf16 matmul (each element rounded, relative
            # error <= 2^-9), so its squared norm is off by at most 2 * 2^-9 ~ 0.4%: allow 1%
            assert abs(r.sq_norm[n][i].item() - ref.item()) <= 1e-2 * ref.item(), (n, i)


def test_unbatched_input_is_an_error():
    lin = nn.Linear(3, 2)
    with PerExampleGradStats(lin) as st:
        lin(torch.randn(3)).sum().backward()
    with pytest.raises(SublimError, match="batch"):
        st.result()


def test_bad_inputs():
    model = TinyLM()
    with pytest.raises(ConfigError, match="shape"):
        PerExampleGradStats(model, {"l1.weight": torch.randn(2, 6, 5)})
    with pytest.raises(ConfigError, match="shape"):
        PerExampleGradStats(model, {"l1.weight": torch.randn(6, 6)})
    with pytest.raises(ConfigError, match="floating-point"):
        PerExampleGradStats(model, {"l1.weight": torch.ones(2, 6, 6, dtype=torch.long)})
    with pytest.raises(ConfigError, match="share one k"):
        PerExampleGradStats(model, {"l1.weight": torch.randn(2, 6, 6), "l1.bias": torch.randn(3, 6)})
    with pytest.raises(ConfigError, match="not a tracked"):
        PerExampleGradStats(model, {"nope": torch.randn(2, 6, 6)})
    with pytest.raises(ConfigError, match="not a parameter"):
        PerExampleGradStats(model, param_names=["l9.weight"])
    with pytest.raises(ConfigError, match="backend"):
        PerExampleGradStats(model, backend="cuda")
    with PerExampleGradStats(model) as st:
        pass
    with pytest.raises(SublimError, match="backward"):
        st.result()


# ---- Triton backend ------------------------------------------------------------------------------
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(torch.device(DEVICE)), reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.mark.interpreter
@needs_triton
def test_tied_model_triton_backend():
    torch.manual_seed(0)
    model = TinyLM()
    idx, tgt = data(B=3, T=4)
    names = [n for n, _ in model.named_parameters()]
    check_against_reference(model, idx, tgt, random_dirs(model, 2, names), "triton", device=DEVICE)


@pytest.mark.gpu
def test_small_llama_gpu():
    """A 2-layer Llama on the GPU: Triton backend vs one backward per example (float64)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=97, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).cuda().float().eval()
    names = supported_param_names(model)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 97, (5, 33), generator=gen).cuda()
    dirs = {n: d.cuda() for n, d in random_dirs(model, 3, names).items()}

    def loss(m):
        lo = m(input_ids=idx).logits.float()
        return nn.functional.cross_entropy(lo[:, :-1].transpose(1, 2), idx[:, 1:], reduction="none").mean(1)

    with PerExampleGradStats(model, dirs, param_names=names, backend="triton") as st:
        loss(model).sum().backward()
    r = st.result()
    ref_model = copy.deepcopy(model).double()
    sq, dot = R.micro_batch_model(ref_model, lambda i: loss(ref_model)[i], 5, names, dirs)
    for n in names:
        assert ((r.sq_norm[n].double().cpu() - sq[n]).abs() <= 1e-3 * sq[n] + 1e-12).all(), n
