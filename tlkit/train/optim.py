"""SGD, Adam and StepLR over stacked parameters, each slot with its own hyperparameters.

A *slot* is one run inside a stacked pass (:mod:`tlkit.train.slots`): a seed,
a fold, a grid point. Every parameter tensor carries the slots on its leading
axis, so the per-slot lr, momentum and weight decay are vectors broadcast
over that axis, and a slot that is not training at a step (its epochs are
over, or its shorter fold ran out of batches) keeps its parameters *and* its
optimizer state exactly as they were. The arithmetic is torch's own
(``torch.optim.SGD`` with dampening 0, ``torch.optim.Adam``, ``StepLR``), so
one slot is the single run: the tests compare them.
"""

from __future__ import annotations

import numpy as np
import torch


class SlotOptimizer:
    """``torch.optim.SGD``/``Adam`` over stacked tensors; ``view(vector, param)`` puts a (slots,) vector
    in the shape that broadcasts against ``param`` (the stacking decides where the slot axis is)."""

    def __init__(self, params: list[torch.Tensor], kind: str, lr, momentum, weight_decay, view,
                 betas=(0.9, 0.999), eps=1e-8):
        if kind not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {kind!r} (sgd or adam)")
        self.params, self.kind, self.view = params, kind, view
        self.base_lr = np.asarray(lr, dtype=np.float64)
        self.momentum = np.asarray(momentum, dtype=np.float64)
        self.weight_decay = np.asarray(weight_decay, dtype=np.float64)
        self.betas, self.eps = betas, eps
        self.state = [torch.zeros_like(p) for p in params]  # momentum buffer, or Adam's first moment
        self.state2 = [torch.zeros_like(p) for p in params] if kind == "adam" else None
        self.steps = np.zeros(len(self.base_lr), dtype=np.int64)
        # SGD on every slot at once is most steps of most runs: one fused update per operation over every
        # parameter (torch._foreach_*), on detached aliases of them (no grad mode to switch). Its arithmetic
        # is the general path's, operation for operation; a small head's step took 0.2 ms of Python before.
        self._data = [p.detach() for p in params]
        self.set_lr(self.base_lr)

    def set_lr(self, lr: np.ndarray) -> None:
        self.lr = np.asarray(lr, dtype=np.float64)
        self._vectors = {}
        self._fused = None

    def _per_slot(self, values: np.ndarray, p: torch.Tensor) -> torch.Tensor:
        return self.view(torch.as_tensor(values, dtype=p.dtype, device=p.device), p)

    def _vector(self, name: str, values: np.ndarray, p: torch.Tensor) -> torch.Tensor:
        key = (name, p.dim(), p.dtype, p.device)
        if key not in self._vectors:
            self._vectors[key] = self._per_slot(values, p)
        return self._vectors[key]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, active: np.ndarray | None = None) -> None:
        """One step for the ``active`` slots (a bool vector; None: all of them)."""
        mask = None if active is None or active.all() else np.asarray(active, dtype=bool)
        self.steps += 1 if mask is None else mask
        with torch.no_grad():
            (self._sgd_step if self.kind == "sgd" else self._adam_step)(mask)

    def _keep(self, mask: np.ndarray, p: torch.Tensor) -> torch.Tensor:
        return self.view(torch.as_tensor(mask, device=p.device), p)

    def _sgd_step(self, mask: np.ndarray | None) -> None:
        # Most steps of most runs are SGD on every slot at once: one fused update per operation over every
        # parameter (torch._foreach_*), on detached aliases (no grad mode to switch); a small head's step took
        # 0.2 ms of Python before, one parameter at a time. A masked step is the same arithmetic with an lr of 0 for the
        # slots that rest, and their momentum kept, so an active slot's update is the unmasked one bit for bit.
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        pick = (lambda items: items) if len(live) == len(self.params) else (lambda items: [items[i] for i in live])
        params, data, grads = pick(self.params), pick(self._data), [p.grad for p in pick(self.params)]
        if mask is None:
            if self._fused is None:
                self._fused = {name: [self._vector(name, values, p) for p in self.params]
                               for name, values in (("lr", self.lr), ("momentum", self.momentum),
                                                    ("wd", self.weight_decay))}
            lr, momentum, wd = (pick(self._fused[name]) for name in ("lr", "momentum", "wd"))
        else:
            lr, momentum, wd = ([self._per_slot(values, p) for p in params]
                                for values in (self.lr * mask, self.momentum, self.weight_decay))
        if self.weight_decay.any():
            grads = torch._foreach_add(grads, torch._foreach_mul(data, wd))
        if self.momentum.any():
            buffers = list(torch._foreach_mul(pick(self.state), momentum))
            torch._foreach_add_(buffers, grads)
            grads = buffers
            for i, buf, p in zip(live, buffers, params):
                self.state[i] = buf if mask is None else torch.where(self._keep(mask, p), buf, self.state[i])
        torch._foreach_sub_(data, torch._foreach_mul(grads, lr))

    def _adam_step(self, mask: np.ndarray | None) -> None:
        beta1, beta2 = self.betas
        steps = np.maximum(self.steps, 1)
        step_size, bias2_sqrt = self.lr / (1 - beta1 ** steps), np.sqrt(1 - beta2 ** steps)
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self.weight_decay.any():
                g = g + self._vector("wd", self.weight_decay, p) * p
            m = self.state[i].lerp(g, 1 - beta1)
            v = self.state2[i] * beta2 + (1 - beta2) * g * g
            delta = self._per_slot(step_size, p) * m / (v.sqrt() / self._per_slot(bias2_sqrt, p) + self.eps)
            if mask is not None:
                keep = self._keep(mask, p)
                m, v, delta = torch.where(keep, m, self.state[i]), torch.where(keep, v, self.state2[i]), delta * keep
            self.state[i], self.state2[i] = m, v
            p.sub_(delta)


def step_lr(lr: np.ndarray, epoch: int, step_size: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """StepLR's rule for the lr of 0-based ``epoch`` given the previous epoch's (chainable, as torch has it)."""
    decay = (epoch > 0) & (epoch % step_size == 0)
    return np.where(decay, lr * gamma, lr)
