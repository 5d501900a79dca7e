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

    def _vector(self, name: str, values: np.ndarray, p: torch.Tensor) -> torch.Tensor:
        key = (name, p.dim(), p.dtype, p.device)
        if key not in self._vectors:
            self._vectors[key] = self.view(torch.as_tensor(values, dtype=p.dtype, device=p.device), p)
        return self._vectors[key]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, active: np.ndarray | None = None) -> None:
        """One step for the ``active`` slots (a bool vector; None: all of them)."""
        mask = None
        if active is not None and not active.all():
            mask = active
        grads = [p.grad for p in self.params]
        if mask is None and self.kind == "sgd" and all(g is not None for g in grads):  # not `in`: it calls ==
            self.steps += 1
            return self._sgd_step(grads)
        with torch.no_grad():
            self._step(mask)

    def _sgd_step(self, grads: list[torch.Tensor]) -> None:
        if self._fused is None:
            per_param = lambda name, values: [self._vector(name, values, p) for p in self.params]  # noqa: E731
            self._fused = {"lr": per_param("lr", self.lr),
                           "momentum": per_param("momentum", self.momentum) if self.momentum.any() else None,
                           "wd": per_param("wd", self.weight_decay) if self.weight_decay.any() else None}
        if self._fused["wd"] is not None:
            grads = torch._foreach_add(grads, torch._foreach_mul(self._data, self._fused["wd"]))
        if self._fused["momentum"] is not None:
            buffers = list(torch._foreach_mul(self.state, self._fused["momentum"]))
            torch._foreach_add_(buffers, grads)
            self.state = grads = buffers
        torch._foreach_sub_(self._data, torch._foreach_mul(grads, self._fused["lr"]))

    def _step(self, mask: np.ndarray | None) -> None:
        self.steps += 1 if mask is None else mask
        use_wd = bool(self.weight_decay.any())
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if use_wd:
                g = g + self._vector("wd", self.weight_decay, p) * p
            keep = None if mask is None else self.view(torch.as_tensor(mask, device=p.device), p)
            if self.kind == "sgd":
                update = g
                if self.momentum.any():
                    buf = self.state[i] * self._vector("momentum", self.momentum, p) + g
                    self.state[i] = buf if keep is None else torch.where(keep, buf, self.state[i])
                    update = buf
                delta = self._vector("lr", self.lr, p) * update
            else:
                beta1, beta2 = self.betas
                m = self.state[i].lerp(g, 1 - beta1)
                v = self.state2[i] * beta2 + (1 - beta2) * g * g
                if keep is not None:
                    m, v = torch.where(keep, m, self.state[i]), torch.where(keep, v, self.state2[i])
                self.state[i], self.state2[i] = m, v
                steps = np.maximum(self.steps, 1)
                step_size = self.lr / (1 - beta1 ** steps)
                bias2_sqrt = np.sqrt(1 - beta2 ** steps)
                per_slot = lambda values: self.view(torch.as_tensor(values, dtype=p.dtype, device=p.device), p)  # noqa: E731
                denom = v.sqrt() / per_slot(bias2_sqrt) + self.eps
                delta = per_slot(step_size) * m / denom
            if keep is not None:
                delta = delta * keep
            p.sub_(delta)


def step_lr(lr: np.ndarray, epoch: int, step_size: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """StepLR's rule for the lr of 0-based ``epoch`` given the previous epoch's (chainable, as torch has it)."""
    decay = (epoch > 0) & (epoch % step_size == 0)
    return np.where(decay, lr * gamma, lr)
