"""core/training.py, the one resumable loop of fine-tuning and distillation: a run interrupted after
a checkpoint and rerun takes exactly the steps of an uninterrupted run and ends on the same weights,
bit for bit; a non-finite loss is one line; the batch orders are the ones the two callers used
before they shared the loop (so their committed numbers still reproduce)."""

import copy
import math

import pytest
import torch

from sublim.batching import full_batches, length_bucketed_batches, steps_of_epochs, shuffled_batches
from sublim.errors import NumericalError
from sublim.seeding import torch_generator
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.training import apply_lora, load_checkpoint, train_loop

N, BATCH, EPOCHS, LENGTH = 10, 3, 2, 12  # 4 batches per epoch (the last one short): 8 steps


@pytest.fixture(scope="module")
def base():
    model, _ = load_model("tiny-llama")
    return model


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (N, LENGTH), generator=torch_generator("test-training-data"))


def _setup(base, lora: bool):
    """A fresh student (same init every call), AdamW, a linear schedule, and every step's batch."""
    model = copy.deepcopy(base)
    if lora:
        torch.manual_seed(0)
        model = apply_lora(model, r=4, alpha=8)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / 10)
    batches = steps_of_epochs(lambda e: shuffled_batches(N, BATCH, ("test-order", e)), EPOCHS)
    return model, optimizer, scheduler, batches


def _run(model, optimizer, scheduler, batches, out, data, ran: list, crash_at=None):
    def batch_losses(step, idx):
        if step == crash_at:
            raise KeyboardInterrupt  # dies inside the step, after the checkpoint of the step before
        ran.append(step)
        x = data[idx]
        yield model(input_ids=x, labels=x).loss

    return train_loop(model, optimizer, batches, batch_losses, checkpoint=out / "checkpoint.pt",
                      checkpoint_every=2, name="test", scheduler=scheduler, max_grad_norm=1.0)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_takes_exactly_the_uninterrupted_steps_to_the_same_weights(base, tmp_path, lora):
    data = _tokens(base.config.vocab_size)
    model, opt, sched, batches = _setup(base, lora)
    assert len(batches) == 8
    straight_steps = []
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = _run(model, opt, sched, batches, tmp_path / "a", data, straight_steps)

    (tmp_path / "b" / ".checkpoint.pt.x.tmp").write_bytes(b"left by a kill -9 during a save")
    first, second = [], []
    m1, o1, s1, _ = _setup(base, lora)
    with pytest.raises(KeyboardInterrupt):
        _run(m1, o1, s1, batches, tmp_path / "b", data, first, crash_at=5)
    assert not (tmp_path / "b" / ".checkpoint.pt.x.tmp").exists()  # the stale temp file is gone
    m2, o2, s2, _ = _setup(base, lora)  # a new process: fresh weights, optimizer and schedule
    resumed = _run(m2, o2, s2, batches, tmp_path / "b", data, second)

    assert straight_steps == list(range(8))
    assert first == [0, 1, 2, 3, 4] and second == [4, 5, 6, 7]  # resumed at the checkpoint of step 4
    # Equal to the bit: the resumed session repeats the same float operations on the same values
    # (weights, Adam moments, step counts and learning rate restored exactly, batches from (seed, epoch)).
    assert resumed.losses == straight.losses and resumed.steps == straight.steps == 8
    assert all(math.isfinite(x) for x in straight.losses)
    a, b = dict(model.named_parameters()), dict(m2.named_parameters())
    trainable = [n for n, p in a.items() if p.requires_grad]
    assert trainable and all(torch.equal(a[n], b[n]) for n in a)
    init = dict(_setup(base, lora)[0].named_parameters())
    assert any(not torch.equal(a[n], init[n]) for n in trainable)  # training moved them: not vacuous
    assert s2.get_last_lr() == sched.get_last_lr() and o2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_checkpoint_holds_weights_optimizer_schedule_step_and_losses(base, tmp_path):
    data = _tokens(base.config.vocab_size)
    model, opt, sched, batches = _setup(base, True)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        _run(model, opt, sched, batches, tmp_path, data, seen, crash_at=3)
    m2, o2, s2, _ = _setup(base, True)
    step, losses = load_checkpoint(tmp_path / "checkpoint.pt", m2, o2, s2)
    assert step == 2 and len(losses) == 2 and s2.last_epoch == 2
    assert o2.state_dict()["state"][0]["step"] == 2


def test_non_finite_loss_is_one_line_numerical_error_before_any_update(base, tmp_path):
    model, opt, sched, batches = _setup(base, True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def batch_losses(step, idx):
        yield torch.tensor(float("nan"), requires_grad=True)

    with pytest.raises(NumericalError) as err:
        train_loop(model, opt, batches, batch_losses, checkpoint=tmp_path / "c.pt", checkpoint_every=1,
                   name="student x", scheduler=sched)
    assert str(err.value) == "student x: loss is nan at step 0" and "\n" not in str(err.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # no step taken
    assert not (tmp_path / "c.pt").exists()


def _old_finetune_order(n, global_batch, epochs, seed):
    """core/finetune.py's order before the shared loop (its _batch_indices), kept here verbatim."""
    steps_per_epoch = max(1, math.ceil(n / global_batch))
    out = []
    for step in range(max(1, round(epochs * steps_per_epoch))):
        epoch, inner = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch_generator("finetune-order", seed, epoch))
        out.append(perm[torch.arange(inner * global_batch, (inner + 1) * global_batch) % n])
    return out


@pytest.mark.parametrize("n, global_batch, epochs", [(12, 3, 1.0), (10, 4, 3.0), (10, 4, 0.5), (3, 8, 2.0),
                                                     (7, 7, 0.01), (50, 16, 2.5)])
def test_batch_orders_are_the_ones_the_callers_used_before(n, global_batch, epochs):
    new = steps_of_epochs(lambda e: full_batches(n, global_batch, ("finetune-order", 5, e)), epochs)
    old = _old_finetune_order(n, global_batch, epochs, 5)
    assert len(new) == len(old) and all(torch.equal(a, b) for a, b in zip(new, old))
    lengths = [(7 * i) % 13 + 1 for i in range(n)]
    for window in (0, 2):  # distill/students.py's order before: every epoch's batches, concatenated
        old = [b for e in range(3) for b in length_bucketed_batches(lengths, global_batch, window, ("distill-order", 1, e))]
        new = steps_of_epochs(lambda e: length_bucketed_batches(lengths, global_batch, window, ("distill-order", 1, e)), 3)
        assert len(new) == len(old) and all(torch.equal(a, b) for a, b in zip(new, old))
