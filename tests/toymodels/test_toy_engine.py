"""The engine's pieces against slow, obviously-correct references, and its determinism."""

import numpy as np
import pytest
import torch

from sublim.errors import NumericalError
from sublim.toymodels import losses
from sublim.toymodels.arms import derangement, student_inits
from sublim.toymodels.config import ToyConfig
from sublim.toymodels.inputs import DistillInputs, make_generator
from sublim.toymodels.mnist import load_mnist
from sublim.toymodels import train
from sublim.toymodels.model import HandMLP, MLPSpec, Workspace, forward, forward_fast, init_params
from sublim.toymodels.train import run_experiment, students_kl_fm

TINY = dict(width=16, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=512, batch_size=256,
            max_test_examples=1000)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.mark.parametrize("n", [2, 3, 5, 10, 37])
def test_derangement_has_no_fixed_point_and_is_a_permutation(n):
    for seed in range(20):
        p = derangement(n, seed)
        assert sorted(p) == list(range(n))
        assert all(p[i] != i for i in range(n))
    assert derangement(n, 3) == derangement(n, 3)


def test_derangement_varies_with_seed():
    assert len({tuple(derangement(10, s)) for s in range(10)}) > 5


@pytest.mark.parametrize("x_shape, k", [((5, 20), 1), ((6, 5, 20), 1), ((3, 5, 20), 2), ((2, 5, 20), 3)])
def test_forward_fast_matches_forward_values_and_grads(x_shape, k):
    spec = MLPSpec(d_in=20, width=8, depth=3, n_aux=2)
    torch.manual_seed(0)
    base = [p + 0.1 * torch.randn_like(p) for p in init_params(spec, 6, dtype=torch.float64)]
    x = torch.randn(*x_shape, dtype=torch.float64)
    x_ref = x if (x.dim() == 2 or k == 1) else x.repeat_interleave(k, 0)
    fast = [p.clone().requires_grad_() for p in base]
    ref = [p.clone().requires_grad_() for p in base]
    out_f, out_r = forward_fast(fast, x), forward(ref, x_ref)
    torch.testing.assert_close(out_f, out_r, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out_r)
    (out_f * w).sum().backward()
    (out_r * w).sum().backward()
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x_shape, k, depth, block_groups", [((5, 20), 1, 3, 0), ((6, 5, 20), 1, 2, 4), ((3, 5, 20), 2, 1, 2),
                                                             ((2, 5, 20), 3, 2, 1), ((5, 20), 6, 2, 0)])
def test_hand_mlp_matches_forward_and_autograd(x_shape, k, depth, block_groups):
    """The hand-written engine: logits and every parameter gradient, in blocks or not, vs autograd."""
    spec = MLPSpec(d_in=20, width=8, depth=depth, n_aux=2)
    torch.manual_seed(0)
    base = [p + 0.1 * torch.randn_like(p) for p in init_params(spec, 6, dtype=torch.float64)]
    x = torch.randn(*x_shape, dtype=torch.float64)
    x_ref = x if (x.dim() == 2 or k == 1) else x.repeat_interleave(k, 0)
    ref = [p.clone().requires_grad_() for p in base]
    hand_params = [p.clone() for p in base]
    hand = HandMLP(hand_params, Workspace(), block_groups=block_groups)
    out_r = forward(ref, x_ref)
    for _ in range(2):  # the second pass reuses every buffer: nothing may leak from the first
        out_h = hand.forward(x)
        torch.testing.assert_close(out_h.transpose(1, 2), out_r, rtol=1e-12, atol=1e-12)
        w = torch.randn_like(out_r)
        hand.backward(w.transpose(1, 2).contiguous())
        ref_grads = torch.autograd.grad((out_r * w).sum(), ref, retain_graph=True)
        for a, g in zip(hand_params, ref_grads):
            torch.testing.assert_close(a.grad, g, rtol=1e-10, atol=1e-12)


def test_feature_major_losses_match_their_autograd_twins():
    torch.manual_seed(0)
    s = torch.randn(4, 7, 13, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 7, 13, dtype=torch.float64)
    for labels in (torch.randint(0, 13, (4, 7)), torch.randint(0, 13, (7,))):
        loss = losses.cross_entropy(s, labels)
        (grad,) = torch.autograd.grad(loss.sum(), s)
        loss_fm, grad_fm = losses.cross_entropy_fm(s.detach().transpose(1, 2), labels)
        torch.testing.assert_close(loss_fm, loss)
        torch.testing.assert_close(grad_fm.transpose(1, 2), grad)
    loss = losses.distill_kl(s, t)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    loss_fm, grad_fm = losses.distill_kl_fm(s.detach().transpose(1, 2), t.transpose(1, 2))
    torch.testing.assert_close(loss_fm, loss)
    torch.testing.assert_close(grad_fm.transpose(1, 2), grad)
    # the arms' mix: aux-only arms read the last 3 logits and get no gradient on the others
    zs = torch.randn(2, 3, 13, 5, dtype=torch.float64)
    zt = torch.randn(2, 1, 13, 5, dtype=torch.float64)
    aux = torch.tensor([True, False, True])
    loss, dz = students_kl_fm(zs, zt, aux, 10)
    for a in range(3):
        lo = 10 if aux[a] else 0
        want, want_g = losses.distill_kl_fm(zs[:, a, lo:], zt[:, 0, lo:])
        torch.testing.assert_close(loss[:, a], want)
        torch.testing.assert_close(dz[:, a, lo:], want_g)
        assert not dz[:, a, :lo].any()


def test_hand_engine_trains_like_the_autograd_engine(mnist, monkeypatch):
    """Whole run in float64, hand-written gradients vs forward_fast + autograd: same losses and
    accuracies (rounding only), for shared and per-model batches. The autograd engine casts the
    logits to float32 for the loss and the per-epoch loss is summed in float32, hence float32-sized
    tolerances (the KL of a one-step student is ~1e-5); a wrong gradient moves them by orders more."""
    for extra in (dict(), dict(independent_batches=False, depth=1)):
        cfg = ToyConfig(n_models=3, dtype="float64", **{**TINY, **extra})
        hand = run_experiment(cfg, mnist)
        monkeypatch.setattr(train, "hand_engine", lambda cfg, device: False)
        auto = run_experiment(cfg, mnist)
        monkeypatch.undo()
        for arm in auto.final_loss:
            np.testing.assert_allclose(hand.final_loss[arm], auto.final_loss[arm], rtol=1e-6, atol=1e-7)
        for arm in auto.accuracy:
            np.testing.assert_array_equal(hand.accuracy[arm], auto.accuracy[arm])


def test_uniform_noise_into_a_buffer_is_bit_identical_to_rand(mnist):
    """DistillInputs draws uniform noise in one pass into a reused buffer: same bits as the
    rand().mul_(2).sub_(1) the recorded runs used."""
    for dtype in (torch.float32, torch.float64):
        inp = DistillInputs("uniform", mnist.x_train, 3, 600, 256, make_generator(torch.device("cpu"), "t", 0), True, dtype)
        g = make_generator(torch.device("cpu"), "t", 0)
        for step in range(3):
            x = inp.batch(step)
            want = torch.rand(x.shape, generator=g, dtype=dtype).mul_(2).sub_(1)
            assert torch.equal(x, want)


def test_kl_is_per_example_and_independent_of_model_count():
    """A model's gradient must not shrink when more models join the ensemble."""
    torch.manual_seed(0)
    s1 = torch.randn(1, 7, 3, dtype=torch.float64, requires_grad=True)
    t1 = torch.randn(1, 7, 3, dtype=torch.float64)
    losses.distill_kl(s1, t1).sum().backward()
    s5 = s1.detach().repeat(5, 1, 1).requires_grad_()
    loss5 = losses.distill_kl(s5, t1.repeat(5, 1, 1))
    loss5.sum().backward()
    torch.testing.assert_close(s5.grad[3], s1.grad[0])
    # the value is the mean over examples of the per-example KL
    p, q = torch.softmax(t1[0], -1), torch.softmax(s1[0].detach(), -1)
    manual = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(loss5[0], manual)


def test_student_inits_layout_and_relations():
    cfg = ToyConfig(n_models=4, width=8)
    perm = derangement(4, 0)
    inits = init_params(cfg.spec, 4, seed=0, dtype=torch.float64)
    st = student_inits(cfg, [1, 2], perm, inits, device="cpu", dtype=torch.float64)
    k = len(cfg.student_arms)  # student_aux, student_all, cross_aux, cross_all
    assert st[0].shape == (2 * k, 8, 784)
    for g, i in enumerate([1, 2]):
        for a, arm in enumerate(cfg.student_arms):
            want = inits[0][i] if arm.startswith("student") else inits[0][perm[i]]
            assert torch.equal(st[0][g * k + a], want)
    ind = student_inits(ToyConfig(n_models=4, width=8, student_init="independent"), [1], perm, inits,
                        device="cpu", dtype=torch.float64)
    assert all(not torch.allclose(ind[0][0], inits[0][j]) for j in range(4))
    pert = student_inits(ToyConfig(n_models=4, width=8, student_init="perturbed", perturb_sigma=0.5), [1], perm,
                         inits, device="cpu", dtype=torch.float64)
    diff = pert[0][0] - inits[0][1]
    assert abs(diff.std().item() - 0.5 / 784 ** 0.5) < 0.05 / 784 ** 0.5  # sigma x the layer's init std
    assert torch.equal(pert[0][2], inits[0][perm[1]])  # cross arms are never perturbed


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "mnist", "shuffled_pixels"])
def test_distill_inputs_shapes_ranges_and_seeding(kind, mnist):
    def batch(independent=True):
        g = make_generator(torch.device("cpu"), "t", 0)
        return DistillInputs(kind, mnist.x_train, 3, 600, 256, g, independent, torch.float32).batch(2)

    x = batch()
    assert x.shape == (3, 600 - 512, 784)
    assert torch.equal(x, batch())
    assert batch(independent=False).shape == (88, 784)
    assert not torch.equal(x[0], x[1])  # every model its own data
    if kind == "uniform":
        assert x.min() >= -1 and x.max() <= 1 and abs(x.mean()) < 0.01
    if kind == "shuffled_pixels":  # same multiset of pixel values as some MNIST image, shuffled
        assert x.min() >= -1 and x.max() <= 1


def test_same_seed_same_numbers_and_shapes(mnist):
    cfg = ToyConfig(n_models=3, **TINY)
    a, b = run_experiment(cfg, mnist), run_experiment(cfg, mnist)
    assert list(a.accuracy) == list(cfg.arms)
    for arm in cfg.arms:
        assert a.accuracy[arm].shape == (3,)
        np.testing.assert_array_equal(a.accuracy[arm], b.accuracy[arm])
    for arm in a.final_loss:
        np.testing.assert_array_equal(a.final_loss[arm], b.final_loss[arm])
    c = run_experiment(ToyConfig(n_models=3, seed=1, **TINY), mnist)
    assert not np.array_equal(c.final_loss["student_aux"], a.final_loss["student_aux"])


def test_arms_train_independently_in_the_joint_ensemble(mnist):
    """Training all student arms as one ensemble = training one arm alone (shared teacher logits)."""
    joint = run_experiment(ToyConfig(n_models=3, **TINY), mnist)
    alone = run_experiment(ToyConfig(n_models=3, arms=("cross_aux",), **TINY), mnist)
    np.testing.assert_allclose(alone.final_loss["cross_aux"], joint.final_loss["cross_aux"], rtol=1e-5)
    np.testing.assert_allclose(alone.final_loss["teacher"], joint.final_loss["teacher"], rtol=1e-6)


def test_chunking_changes_nothing_but_the_noise_streams(mnist):
    """Chunked training keeps each model's init and cross-model partner; only the data streams
    (one generator per chunk) differ, so the trained arms agree statistically, not exactly."""
    whole = run_experiment(ToyConfig(n_models=4, **TINY), mnist)
    chunked = run_experiment(ToyConfig(n_models=4, chunk_models=2, **TINY), mnist)
    assert whole.derangement == chunked.derangement
    np.testing.assert_array_equal(whole.accuracy["reference"], chunked.accuracy["reference"])
    for arm in whole.accuracy:
        assert chunked.accuracy[arm].shape == (4,)


def test_shared_batches_and_other_knobs_run(mnist):
    for extra in (dict(independent_batches=False), dict(optimizer="sgd", lr=0.05, distill_input="gaussian"),
                  dict(student_init="perturbed", perturb_sigma=0.1, distill_input="shuffled_pixels", depth=1),
                  dict(init="kaiming_normal", dtype="float64", arms=("reference", "student_all"))):
        r = run_experiment(ToyConfig(n_models=2, **{**TINY, **extra}), mnist)
        assert all(np.isfinite(v).all() and v.shape == (2,) for v in r.accuracy.values())


def test_nan_loss_raises_numerical_error(mnist):
    with pytest.raises(NumericalError, match="non-finite teacher loss in epoch 1"):
        run_experiment(ToyConfig(n_models=2, optimizer="sgd", lr=1e30, **TINY), mnist)


def test_teacher_learns_and_aux_student_beats_cross_model_on_a_short_run(mnist):
    """A small but real run: the effect must already show (few models, reduced size)."""
    cfg = ToyConfig(n_models=4, width=64, teacher_epochs=1, distill_epochs=2, max_examples_per_epoch=16384,
                    batch_size=256, lr=1e-3, max_test_examples=2000, arms=("teacher", "student_aux", "cross_aux"))
    r = run_experiment(cfg, mnist)
    assert r.accuracy["teacher"].mean() > 0.8  # one short epoch of a small teacher
    print(r.accuracy)
    assert r.accuracy["student_aux"].mean() > r.accuracy["cross_aux"].mean() + 0.05


@pytest.mark.gpu
def test_cuda_run_matches_the_cpu_numbers_closely(mnist):
    """Same config on CUDA (exact fp32) and on CPU: different RNG streams for the data, so only
    the untrained reference (same inits) must agree exactly-ish; the rest must be finite and learn."""
    cfg = dict(n_models=3, **TINY)
    cpu = run_experiment(ToyConfig(**cfg), mnist)
    gpu = run_experiment(ToyConfig(device="cuda", **cfg), mnist)
    np.testing.assert_allclose(gpu.accuracy["reference"], cpu.accuracy["reference"], atol=2e-3)
    tf32 = run_experiment(ToyConfig(device="cuda", fast_matmul="tf32", **cfg), mnist)
    again = run_experiment(ToyConfig(device="cuda", fast_matmul="tf32", **cfg), mnist)
    for r in (gpu, tf32):
        assert r.accuracy["teacher"].mean() > 0.3
    np.testing.assert_allclose(tf32.accuracy["teacher"], again.accuracy["teacher"], atol=2e-3)


def test_fixed_distillation_set_replays_the_same_noise_every_epoch(mnist):
    """distill_resample=False (paper): epoch 2 sees exactly epoch 1's noise; True: new noise."""
    seen = []
    orig = DistillInputs.batch

    def spy(self, step):
        x = orig(self, step)
        seen.append(x.clone())
        return x

    DistillInputs.batch = spy
    try:
        for resample in (False, True):
            seen.clear()
            run_experiment(ToyConfig(n_models=2, arms=("student_aux",), **{**TINY, "distill_epochs": 2,
                                                                          "teacher_epochs": 0},
                                     distill_resample=resample), mnist)
            half = len(seen) // 2
            same = all(torch.equal(a, b) for a, b in zip(seen[:half], seen[half:]))
            assert same == (not resample)
    finally:
        DistillInputs.batch = orig


def test_init_params_is_per_model_and_thread_order_free():
    """Model k's init is the same alone or in an ensemble (drawn in parallel threads)."""
    spec = MLPSpec(width=16)
    ens = init_params(spec, 6, seed=4)
    for k in (0, 5):
        alone = init_params(spec, [(4, k)])
        assert all(torch.equal(a[0], e[k]) for a, e in zip(alone, ens))
    assert not torch.equal(ens[0][0], ens[0][1])


def test_workspace_reuses_its_storage():
    """Same name: a view of the same memory while it fits (also for a device given by name), a new
    allocation when it grows or the dtype changes."""
    ws = Workspace()
    a = ws.get("h", (4, 8), torch.float32, "cpu")
    b = ws.get("h", (2, 8), torch.float32, torch.device("cpu"))
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 8)
    c = ws.get("h", (8, 8), torch.float32, "cpu")
    assert c.numel() == 64
    assert ws.get("h", (8, 8), torch.float32, "cpu").data_ptr() == c.data_ptr()
    assert ws.get("h", (8, 8), torch.float64, "cpu").dtype == torch.float64


@pytest.mark.gpu
def test_workspace_reuses_cuda_storage_for_an_indexless_device():
    ws = Workspace()
    a = ws.get("h", (4, 8), torch.float32, torch.device("cuda"))
    assert ws.get("h", (4, 8), torch.float32, "cuda").data_ptr() == a.data_ptr()
