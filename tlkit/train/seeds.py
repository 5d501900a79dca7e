"""Many seeds of a torch head trained together, as one set of stacked parameters.

A head on cached features is tiny (a 512 x 2 matrix; a 4-qubit circuit), so
one training step is mostly fixed per-step cost: Python, dispatch, the
optimizer's bookkeeping. Training S seeds as S separate runs pays that cost
S times; stacking the seeds' parameters along a leading axis and running one
step for all of them pays it about once (PyTorch's "model ensembling"
recipe; DINOv2 trains its linear probes the same way).

    >>> heads = LinearHead(epochs=30).fit_seeds(X, y, seeds=range(10), eval_set=(X_val, y_val))
    >>> [h.evaluation_.final_proba for h in heads]     # one (n_val, n_classes) array per seed

:meth:`tlkit.heads.base.TorchHead.fit_seeds` is the entry point; the engine
underneath is :func:`train_seeds`, which takes any module builder.

**Each seed is exactly the single run with that seed.** Its module is built
after ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``), and
epoch e visits the training rows in ``np.random.default_rng([seed, e])
.permutation(n)`` order in batches of ``batch_size``, as
:class:`tlkit.heads.base.TorchHead` does. The loss minimised is the sum over
seeds of each seed's mean batch loss, so each seed's gradient is its own;
SGD (momentum, weight decay), Adam and StepLR act element by element, so one
optimizer over the stacked tensors gives every seed its own update. The
tests check the result against separate ``fit`` runs.

Two ways to run the stacked forward pass (``method``):

* ``"batched"``: the module's own ``forward`` on inputs (S, B, features),
  with each ``nn.Linear`` replaced by a batched matrix product
  (:class:`SeedLinear`) and every other parameter given its seed axis.
  Fewest operations per step; valid for modules whose forward broadcasts
  over a leading seed axis once the parameters carry one.
* ``"vmap"``: ``torch.func.stack_module_state`` + ``functional_call`` under
  ``torch.vmap``, for any other torch module; more overhead per step.

Which one a module takes, the module says itself, by its attribute
``seed_axis``: ``"broadcast"`` (batched), ``"vmap"``, or ``None`` (it cannot
train several seeds in one pass at all, e.g. a circuit run by a PennyLane
QNode on a device: :class:`NotVectorisable`, and the head trains its seeds
one after another). A module that does not say is inferred: ``nn.Linear``
and element-wise activations in ``nn.Sequential`` broadcast; anything else
takes vmap. ``"auto"`` follows that; no table here names a head.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tlkit.errors import HeadError
from tlkit.metrics import predict_from_proba
from tlkit.threads import one_thread
from tlkit.train.config import check_seeds
from tlkit.train.loop import EpochRecord, TrainConfig, make_optimizer, make_scheduler
from tlkit.train.views import TrainingRows

EVAL_ROWS = 8192  # seed-rows per evaluation forward pass (bounds memory at many seeds)
METHODS = ("auto", "batched", "vmap")

_ELEMENTWISE = (nn.Sequential, nn.Identity, nn.Tanh, nn.ReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU)


class NotVectorisable(HeadError):
    """This module cannot train several seeds in one pass; train them one by one."""


@dataclass
class SeedRun:
    """One seed's result: what a single ``TorchHead.fit`` with that seed learns.

    ``seconds`` and each record's ``seconds`` are this seed's share of the
    shared pass (its wall time divided by the number of seeds). Without an
    evaluation set, ``best_epoch``, ``best_state``, ``final_proba`` and
    ``best_proba`` are None, as in ``fit``.
    """

    seed: int
    module: nn.Module  # built with this seed, holding the final parameters, in eval mode
    history: list[EpochRecord]
    best_epoch: int | None
    final_proba: np.ndarray | None
    best_proba: np.ndarray | None
    final_state: dict
    best_state: dict | None
    seconds: float


@dataclass
class SeedsResult:
    runs: list[SeedRun]
    seconds: float  # wall time of the whole pass (training + per-epoch evaluation), as TrainResult.seconds
    method: str  # "batched" or "vmap"


def train_seeds(
    build_module: Callable[[int, int], nn.Module],
    X: np.ndarray,
    y: np.ndarray,
    seeds: Sequence[int],
    cfg: TrainConfig,
    *,
    n_classes: int | None = None,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    method: str = "auto",
    on_epoch: Callable[[int, list[EpochRecord]], None] | None = None,
    views: np.ndarray | None = None,
) -> SeedsResult:
    """Train one module per seed, all in one vectorised pass; ``cfg.seed`` is ignored.

    ``build_module(n_features, n_classes)`` builds one seed's module (a head's
    ``_build_module``); ``X`` (n, features) float32 and ``y`` (n,) class
    indices 0..n_classes-1; ``eval_set=(X_val, y_val)`` likewise, evaluated
    after every epoch. ``on_epoch(epoch, records)`` gets the 1-based epoch
    and each seed's :class:`EpochRecord`. ``views`` (n, K, features): each
    seed trains on its own seeded draw of one view per row and epoch
    (:mod:`tlkit.train.views`), as its single run would. The global torch RNG
    is left as it was.
    """
    seeds = check_seeds(seeds)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if eval_set is None:
        X_eval, y_eval = np.zeros((0, X.shape[1]), np.float32), np.zeros(0, np.int64)
    else:
        X_eval, y_eval = np.ascontiguousarray(eval_set[0], dtype=np.float32), np.asarray(eval_set[1], dtype=np.int64)
    device = torch.device(device)

    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_module(X.shape[1], n_classes)

    with one_thread(), torch.random.fork_rng(devices=[]):
        first = build(seeds[0])
        axis = seed_axis(first)
        if axis is None:  # before building the other seeds' modules (a QNode each)
            raise NotVectorisable(f"{type(first).__name__} cannot train several seeds in one pass "
                                  "(its seed_axis is None); train them one after another")
        modules = [first, *(build(seed) for seed in seeds[1:])]
        stacked = _stack(modules, axis if method == "auto" else method, device)
        loop = _SeedLoop(stacked, seeds, cfg, device)
        rows = TrainingRows(torch.from_numpy(X).to(device),
                            None if views is None else torch.from_numpy(np.ascontiguousarray(views, np.float32)).to(device))
        runs = loop.train(rows, torch.from_numpy(y).to(device), torch.from_numpy(X_eval).to(device), y_eval, on_epoch)
    for module, run in zip(modules, runs):
        module.load_state_dict(run.final_state)
        module.eval()
        run.module = module
    return SeedsResult(runs, loop.seconds, stacked.method)


# --- stacking ---------------------------------------------------------------------------------

class SeedLinear(nn.Module):
    """``nn.Linear`` with a leading seed axis: weight (S, out, in), bias (S, out); x (S, B, in) -> (S, B, out).

    Computed as weight @ x^T (then viewed transposed): the weight gradient
    g^T @ x then comes out in the weight's own layout, about twice as fast
    as x @ weight^T at many seeds. Rows shared by every seed (x expanded
    from (B, in), as in evaluation) take one matrix product for all seeds.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds, n_out = self.weight.shape[:2]
        if x.stride(0) == 0:  # the same rows for every seed
            out = (self.weight.flatten(0, 1) @ x[0].T).view(seeds, n_out, -1)
            if self.bias is not None:
                out = out + self.bias.unsqueeze(-1)
        elif self.bias is None:
            out = torch.bmm(self.weight, x.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias.unsqueeze(-1), self.weight, x.transpose(1, 2))
        return out.transpose(1, 2)


class _Stacked:
    """The seeds' parameters as stacked tensors, and a forward pass over all seeds at once."""

    method: str

    def __init__(self, modules: list[nn.Module], device: torch.device):
        self.keys = list(modules[0].state_dict().keys())
        params, buffers = torch.func.stack_module_state(modules)  # {name: (S, ...)}, params are fresh leaves
        self.params = {k: v.to(device).detach().requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """x (S, B, F) -> logits (S, B, C); ``shared_input``: x is (B, F), the same rows for every seed."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        raise NotImplementedError

    def state_dict(self, index: int) -> dict:
        """Seed ``index``'s state dict, keys in the module's own order, on the CPU."""
        tensors = {**self.params, **self.buffers}
        return {k: tensors[k][index].detach().cpu().clone() for k in self.keys}


class _Batched(_Stacked):
    method = "batched"

    def __init__(self, modules, device):
        super().__init__(modules, device)
        self.module = SeedLinear() if type(modules[0]) is nn.Linear else copy.deepcopy(modules[0])
        for parent in list(self.module.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, SeedLinear())
        for name, tensor in {**self.params, **self.buffers}.items():
            owner_name, _, attr = name.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)
            if name in self.params:
                owner.register_parameter(attr, nn.Parameter(tensor))
                self.params[name] = owner._parameters[attr]
            else:
                owner.register_buffer(attr, tensor)
        for parent in self.module.modules():  # a Linear without bias
            if isinstance(parent, SeedLinear) and "bias" not in parent._parameters:
                parent.register_parameter("bias", None)

    def forward(self, x, shared_input=False):
        if shared_input:
            x = x.expand(len(next(iter(self.params.values()))), *x.shape)
        return self.module(x)

    def train(self, mode=True):
        self.module.train(mode)


class _Vmapped(_Stacked):
    method = "vmap"

    def __init__(self, modules, device):
        super().__init__(modules, device)
        self.module = copy.deepcopy(modules[0]).to(device)

        def call(params, buffers, x):
            return torch.func.functional_call(self.module, (params, buffers), (x,))

        self._per_seed = torch.vmap(call, in_dims=(0, 0, 0))
        self._shared = torch.vmap(call, in_dims=(0, 0, None))

    def forward(self, x, shared_input=False):
        return (self._shared if shared_input else self._per_seed)(self.params, self.buffers, x)

    def train(self, mode=True):
        self.module.train(mode)


def _stack(modules: list[nn.Module], method: str, device: torch.device) -> _Stacked:
    return (_Batched if method in ("batched", "broadcast") else _Vmapped)(modules, device)


def seed_axis(module: nn.Module) -> str | None:
    """How ``module`` trains many seeds in one pass: ``"broadcast"``, ``"vmap"`` or None (see the module
    docstring). Its own ``seed_axis`` attribute if it has one, else inferred from what it is made of."""
    declared = getattr(module, "seed_axis", "undeclared")
    if declared != "undeclared":
        if declared not in ("broadcast", "vmap", None):
            raise ValueError(f"{type(module).__name__}.seed_axis must be 'broadcast', 'vmap' or None, got {declared!r}")
        if declared == "broadcast" and not all(seed_axis(child) == "broadcast" for child in module.children()):
            return "vmap"
        return declared
    if type(module) is nn.Linear:
        return "broadcast"
    if isinstance(module, _ELEMENTWISE) and not any(True for _ in module.parameters(recurse=False)):
        children = [seed_axis(child) for child in module.children()]
        if None in children:
            return None
        return "broadcast" if all(c == "broadcast" for c in children) else "vmap"
    return "vmap"


# --- the loop ---------------------------------------------------------------------------------

class _SeedLoop:
    """``train_classifier`` for stacked seeds: the same epochs, records and best-epoch rule, per seed."""

    def __init__(self, stacked: _Stacked, seeds: list[int], cfg: TrainConfig, device: torch.device):
        self.stacked, self.seeds, self.cfg, self.device = stacked, seeds, cfg, device
        self.seconds = 0.0

    def train(self, features, labels, eval_features, y_eval: np.ndarray, on_epoch) -> list[SeedRun]:
        cfg, stacked, n_seeds = self.cfg, self.stacked, len(self.seeds)
        optimizer = make_optimizer(stacked.parameters(), cfg)
        scheduler = make_scheduler(optimizer, cfg)
        histories: list[list[EpochRecord]] = [[] for _ in self.seeds]
        has_eval = len(y_eval) > 0
        best_acc = np.full(n_seeds, -1.0)
        best_epoch = [0] * n_seeds
        best_proba: list[np.ndarray | None] = [None] * n_seeds
        best_state: list[dict | None] = [None] * n_seeds
        final_proba = None
        n = len(labels)
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            stacked.train()
            lr = optimizer.param_groups[0]["lr"]
            # Each seed's row order for this epoch, exactly as a single run with that seed draws it.
            order = torch.from_numpy(np.stack(
                [np.random.default_rng([seed, epoch]).permutation(n) for seed in self.seeds])).to(self.device)
            total_loss = torch.zeros(n_seeds, dtype=torch.float64, device=self.device)
            correct = torch.zeros(n_seeds, dtype=torch.int64, device=self.device)
            take = features.epoch(self.seeds, epoch)  # each seed slot's view of each row (or the centre crops)
            for start in range(0, n, cfg.batch_size):
                rows = order[:, start:start + cfg.batch_size]  # seed by seed, b rows each
                targets = labels.index_select(0, rows.flatten()).view(n_seeds, -1)
                inputs = take(rows).view(*targets.shape, -1)  # (S, b, features)
                optimizer.zero_grad()
                logits = stacked.forward(inputs)  # (S, b, C)
                per_row = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                loss = per_row.view(targets.shape).mean(dim=1)  # each seed's own mean batch loss
                loss.sum().backward()  # seeds share no parameter, so each gets its own gradient
                optimizer.step()
                total_loss += loss.detach().double() * targets.shape[1]
                correct += (logits.detach().argmax(-1) == targets).sum(dim=1)
            scheduler.step()
            stacked.train(False)
            val_loss, proba = self._evaluate(eval_features, y_eval)
            dt = time.perf_counter() - t0
            self.seconds += dt
            train_loss, train_acc = (total_loss / max(n, 1)).tolist(), (correct.double() / max(n, 1)).tolist()
            records = []
            for i in range(n_seeds):
                val_acc = float((predict_from_proba(proba[i]) == y_eval).mean()) if has_eval else float("nan")
                record = EpochRecord(epoch + 1, lr, train_loss[i], train_acc[i], float(val_loss[i]), val_acc,
                                     dt / n_seeds)
                histories[i].append(record)
                records.append(record)
                if val_acc > best_acc[i]:  # NaN (no evaluation set) never is: no best epoch, as in fit
                    best_acc[i], best_epoch[i], best_proba[i] = val_acc, epoch + 1, proba[i]
                    best_state[i] = stacked.state_dict(i)
            final_proba = proba
            if on_epoch:
                on_epoch(epoch + 1, records)
        return [
            SeedRun(
                seed=seed, module=None, history=histories[i],
                best_epoch=best_epoch[i] if has_eval else None,
                final_proba=final_proba[i] if has_eval and final_proba is not None else None,
                best_proba=best_proba[i] if has_eval else None,
                final_state=stacked.state_dict(i), best_state=best_state[i] if has_eval else None,
                seconds=self.seconds / n_seeds,
            )
            for i, seed in enumerate(self.seeds)
        ]

    def _evaluate(self, features: torch.Tensor, y_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each seed's mean loss (S,) and class probabilities (S, n_eval, C) on the evaluation rows."""
        n_seeds = len(self.seeds)
        if not len(y_eval):
            return np.full(n_seeds, np.nan), np.zeros((n_seeds, 0, 0))
        labels = torch.from_numpy(y_eval).to(self.device)
        step = max(1, EVAL_ROWS // n_seeds)
        losses, probas = [], []
        with torch.no_grad():
            for start in range(0, len(y_eval), step):
                logits = self.stacked.forward(features[start:start + step], shared_input=True)  # (S, b, C)
                target = labels[start:start + step].expand(n_seeds, -1)
                losses.append(nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
                              .view(target.shape))
                probas.append(torch.softmax(logits.double(), dim=-1))
        return torch.cat(losses, dim=1).mean(dim=1).cpu().numpy(), torch.cat(probas, dim=1).cpu().numpy()
