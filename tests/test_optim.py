"""The heads' slot optimizer against torch's own SGD, Adam and StepLR, and its masked steps against its
unmasked ones (tlkit/train/optim.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tlkit.train.optim import SlotOptimizer, step_lr


def single_view(vector, param):
    return vector.reshape([1] * param.dim())


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def batches(steps: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(steps)]


def train(net: nn.Module, step, zero, data) -> None:
    for x, y in data:
        zero()
        nn.functional.cross_entropy(net(x), y).backward()
        step()


@pytest.mark.parametrize(("kind", "momentum", "weight_decay"),
                         [("sgd", 0.0, 0.0), ("sgd", 0.9, 0.0), ("sgd", 0.0, 1e-2), ("sgd", 0.9, 1e-2),
                          ("adam", 0.0, 0.0), ("adam", 0.0, 1e-2)])
def test_one_slot_is_torchs_own_optimizer(kind, momentum, weight_decay):
    data = batches(25)
    ours, theirs = model(), model()
    params = list(ours.parameters())
    slot = SlotOptimizer(params, kind, [0.05], [momentum], [weight_decay], single_view)
    if kind == "sgd":
        torch_opt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    else:
        torch_opt = torch.optim.Adam(theirs.parameters(), lr=0.05, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(torch_opt, step_size=2, gamma=0.5)
    lr = np.array([0.05])
    for epoch in range(5):
        lr = step_lr(lr, epoch, np.array([2]), np.array([0.5]))
        slot.set_lr(lr)
        assert lr[0] == pytest.approx(schedule.get_last_lr()[0], rel=1e-12)
        train(ours, slot.step, slot.zero_grad, data[epoch * 5:(epoch + 1) * 5])
        train(theirs, torch_opt.step, torch_opt.zero_grad, data[epoch * 5:(epoch + 1) * 5])
        schedule.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(params[0], model().state_dict()["0.weight"])  # it trained


def two_slots(vector, param):
    return vector.reshape(-1, *[1] * (param.dim() - 1))


@pytest.mark.parametrize(("kind", "momentum", "weight_decay"),
                         [("sgd", 0.0, 0.0), ("sgd", 0.9, 0.0), ("sgd", 0.0, 1e-2), ("sgd", 0.9, 1e-2),
                          ("adam", 0.0, 0.0), ("adam", 0.0, 1e-2)])
def test_a_slot_steps_the_same_whether_or_not_another_rests(kind, momentum, weight_decay):
    """The unmasked step is one fused update over every parameter; a masked one gives the resting slots an lr
    of 0. An active slot's parameters and state come out of both bit for bit alike."""
    g = torch.Generator().manual_seed(3)
    start, grads = torch.randn(2, 3, 4, generator=g), [torch.randn(2, 3, 4, generator=g) for _ in range(6)]
    weights = [nn.Parameter(start.clone()) for _ in range(2)]
    opts = [SlotOptimizer([w], kind, [0.1, 0.05], [momentum] * 2, [weight_decay] * 2, two_slots) for w in weights]
    for step, grad in enumerate(grads):
        for w, opt, active in zip(weights, opts, (None, np.array([True, step % 2 == 0]))):
            w.grad = grad.clone()
            opt.step(active)
    assert torch.equal(weights[0][0], weights[1][0])
    assert torch.equal(opts[0].state[0][0], opts[1].state[0][0])
    assert not torch.equal(weights[0][1], weights[1][1])  # the slot that rested half the time is behind


def test_an_inactive_slot_keeps_its_parameters_and_its_momentum():
    weight = nn.Parameter(torch.randn(2, 3, 4))  # two slots on the leading axis

    def view(vector, param):
        return vector.reshape(-1, *[1] * (param.dim() - 1))

    opt = SlotOptimizer([weight], "sgd", [0.1, 0.1], [0.9, 0.9], [0.0, 0.0], view)
    for _ in range(2):
        weight.grad = torch.ones_like(weight)
        opt.step()
    before, state = weight.detach().clone(), opt.state[0].clone()
    weight.grad = torch.ones_like(weight)
    opt.step(np.array([True, False]))
    assert torch.equal(weight[1], before[1]) and torch.equal(opt.state[0][1], state[1])
    assert not torch.equal(weight[0], before[0])
    assert opt.steps.tolist() == [3, 2]
