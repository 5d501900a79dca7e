"""The one training loop of the torch heads: stacked *slots*, each its own run.

A slot is one training run: a seed, and for a sweep also a grid point and a
fold. Every slot has its own module (built after ``torch.manual_seed(seed)``),
its own hyperparameters (lr, momentum, weight decay, StepLR's step and
factor, its number of epochs: :data:`PER_SLOT`), its own training rows and
its own evaluation rows. All slots of a pass train together, their
parameters stacked along a leading axis (:mod:`tlkit.train.stacking` stacks
them), so a step costs about what one run's step costs. What must be one
value for the whole pass (:data:`SHARED`: the batch size and the optimizer,
and anything that changes the module's shapes or program) is grouped by the
caller, one pass per group.

A single ``fit`` is the one-slot case (its module runs as it is, unstacked);
``fit_seeds`` is one slot per seed; a sweep (:mod:`tlkit.heads.sweep`) is
grid points x folds x seeds. The rules, once for all of them:

* **data order**: epoch e visits a slot's training rows in
  :func:`epoch_order` ``(seed, e, n)`` order, in batches of ``batch_size``;
  each slot minimises its own mean batch loss (the losses are summed across
  slots, so each slot's gradient is its own);
* **optimizer**: :class:`tlkit.train.optim.SlotOptimizer` (torch's SGD/Adam
  arithmetic, per-slot hyperparameters); a slot whose epochs are over, or
  whose fold has run out of batches this epoch, is left exactly as it is;
* **best epoch**: :class:`tlkit.train.loop.BestEpoch` on each slot's
  evaluation accuracy. Sweeps do not keep it (``keep_best=False``), and
  then a slot is evaluated at its own last epoch only (its other epochs
  record NaN evaluation loss and accuracy): the score is the final epoch's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tlkit.errors import HeadError
from tlkit.metrics import predict_from_proba
from tlkit.train.config import TrainConfig
from tlkit.train.loop import BestEpoch, EpochRecord
from tlkit.train.optim import SlotOptimizer, step_lr
from tlkit.train.views import TrainingRows

PER_SLOT = ("lr", "momentum", "weight_decay", "step_size", "gamma", "epochs", "seed")
SHARED = ("batch_size", "optimizer")
EVAL_ROWS = 8192  # slot-rows per evaluation forward pass (bounds memory at many slots)
# Feature values gathered at once for training batches (1 MiB of float32). Chunks that stay in the CPU's cache
# were faster than larger ones, and far lighter: 100 linear seeds trained in 1.25-1.34 s with 40 MiB over the
# process's size at 1 << 18, in 1.60-1.74 s with 110-134 MiB at 1 << 23 (Zen 4 EPYC, bench_heads' section 5's
# setting); one seed's whole epoch is still one gather.
GATHER_VALUES = 1 << 18


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which a run with ``seed`` visits its ``n`` training rows in 0-based ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class Slot:
    seed: int
    cfg: TrainConfig  # its hyperparameters; SHARED ones must agree across a pass
    build: Callable[[int, int], nn.Module]  # (n_features, n_classes) -> its module, called after manual_seed(seed)
    rows: np.ndarray | None = None  # its training rows (indices into X); None: all of them
    eval_rows: np.ndarray | None = None  # its evaluation rows (indices into the evaluation set); None: all


@dataclass
class SeedRun:
    """One slot's result: what a single ``TorchHead.fit`` with its settings and rows learns.

    ``seconds`` and each record's ``seconds`` are this slot's share of the
    shared pass. Without evaluation rows ``best_epoch``, ``best_state``,
    ``final_proba`` and ``best_proba`` are None, as in ``fit``; so are the
    best ones of a pass that does not keep them.
    """

    seed: int
    module: nn.Module | None  # built for this slot, holding the final parameters, in eval mode
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
    seconds: float  # wall time of the whole pass (training + per-epoch evaluation)
    method: str  # "single", "batched" or "vmap"


def train_slots(
    slots: Sequence[Slot],
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int | None = None,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    method: str = "auto",
    keep_best: bool = True,
    on_epoch: Callable[[int, list[EpochRecord]], None] | None = None,
    views: np.ndarray | None = None,
) -> SeedsResult:
    """Train every slot in one pass; the global torch RNG is left as it was.

    ``views`` (n, K, features): augmented views of the rows of ``X``; each slot then trains, in each
    epoch, on one view per row drawn by its own seed over its own training rows, as a fit on just those
    rows would draw (:class:`tlkit.train.views.TrainingRows`).

    ``X`` (n, features) float32, ``y`` (n,) class indices; ``eval_set=(X_eval,
    y_eval)`` is evaluated after every epoch, each slot on its ``eval_rows``.
    ``on_epoch(epoch, records)`` gets the 1-based epoch and the record of
    each slot still training.
    """
    from tlkit.threads import one_thread
    from tlkit.train.stacking import NotVectorisable, seed_axis, stack

    slots = list(slots)
    for name in SHARED:
        values = {getattr(s.cfg, name) for s in slots}
        if len(values) > 1:
            raise HeadError(f"one pass takes one {name}; got {sorted(map(str, values))} (group the slots by it)")
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if eval_set is None:
        X_eval, y_eval = np.zeros((0, X.shape[1]), np.float32), np.zeros(0, np.int64)
    else:
        X_eval, y_eval = np.ascontiguousarray(eval_set[0], dtype=np.float32), np.asarray(eval_set[1], dtype=np.int64)
    device = torch.device(device)

    def build(slot: Slot) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(slot.seed)
            return slot.build(X.shape[1], n_classes)

    with one_thread(), torch.random.fork_rng(devices=[]):
        first = build(slots[0])
        axis = seed_axis(first)
        if axis is None and len(slots) > 1:  # before building the other slots' modules (a QNode each)
            raise NotVectorisable(f"{type(first).__name__} cannot train several seeds in one pass "
                                  "(its seed_axis is None); train them one after another")
        modules = [first, *(build(slot) for slot in slots[1:])]
        stacked = stack(modules, ("single" if len(slots) == 1 else axis) if method == "auto" else method, device)
        loop = _SlotLoop(stacked, slots, device, keep_best)
        features = TrainingRows(torch.from_numpy(X).to(device), None if views is None else
                                torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32)).to(device))
        runs = loop.train(features, torch.from_numpy(y).to(device),
                          torch.from_numpy(X_eval).to(device), y_eval, on_epoch)
    for module, run in zip(modules, runs):
        module.load_state_dict(run.final_state)
        module.eval()
        run.module = module
    return SeedsResult(runs, loop.seconds, stacked.method)


class _SlotLoop:
    def __init__(self, stacked, slots: list[Slot], device: torch.device, keep_best: bool):
        self.stacked, self.slots, self.device, self.keep_best = stacked, slots, device, keep_best
        self.seconds = 0.0
        cfgs = [s.cfg for s in slots]
        self.batch_size, self.optimizer_kind = cfgs[0].batch_size, cfgs[0].optimizer
        self.epochs = np.array([c.epochs for c in cfgs])
        self.step_size = np.array([c.step_size for c in cfgs])
        self.gamma = np.array([c.gamma for c in cfgs], dtype=np.float64)
        self.base_lr = np.array([c.lr for c in cfgs], dtype=np.float64)

    def train(self, features, labels, eval_features, y_eval: np.ndarray, on_epoch) -> list[SeedRun]:
        slots, stacked, n_slots, B = self.slots, self.stacked, len(self.slots), self.batch_size
        optimizer = SlotOptimizer(stacked.parameters(), self.optimizer_kind, self.base_lr,
                                  [s.cfg.momentum for s in slots], [s.cfg.weight_decay for s in slots], stacked.slot_view)
        rows = [np.arange(len(labels)) if s.rows is None else np.asarray(s.rows, dtype=np.int64) for s in slots]
        sizes = np.array([len(r) for r in rows])
        evaluation = _Evaluation(eval_features, y_eval, [s.eval_rows for s in slots], self.device)
        histories: list[list[EpochRecord]] = [[] for _ in slots]
        best = [BestEpoch() for _ in slots]
        final_proba: list[np.ndarray | None] = [None] * n_slots
        lr = self.base_lr
        for epoch in range(int(self.epochs.max())):
            t0 = time.perf_counter()
            lr = step_lr(lr, epoch, self.step_size, self.gamma)
            optimizer.set_lr(lr)
            training = epoch < self.epochs
            stacked.train()
            # (S, b) rows -> features: centre crops, or each slot's draw of views over its own rows
            take = features.epoch([s.seed for s in slots], epoch, rows)
            length = int(sizes[training].max())
            uniform = bool(training.all() and (sizes == length).all())
            # Padding (weight 0) repeats a slot's own first row: a fold never reads a row it holds out.
            order = np.repeat(np.array([r[0] if len(r) else 0 for r in rows], dtype=np.int64)[:, None], length, 1)
            for i, slot in enumerate(slots):  # each slot's rows in its own order, as its single run draws them
                if training[i]:
                    order[i, :sizes[i]] = rows[i][epoch_order(slot.seed, epoch, sizes[i])]
            order_t = torch.from_numpy(order).to(self.device)
            real = None if uniform else torch.from_numpy(
                (np.arange(length) < sizes[:, None]) & training[:, None]).to(self.device)
            losses, counts, hits = [], [], []  # per batch; summed once the epoch is over
            full = {}  # batch width -> every slot's row count, when no row is padding
            # The rows' features and labels are gathered a chunk of batches at a time (a batch is then a
            # slice): a small head's step is mostly fixed costs, and two gathers per batch were two of them.
            chunk = max(B, GATHER_VALUES // max(1, n_slots * features.table.shape[1]) // B * B)
            for start in range(0, length, B):
                if start % chunk == 0:
                    chunk_rows = order_t[:, start:start + chunk]
                    chunk_targets = labels[chunk_rows.flatten()].view(chunk_rows.shape)
                    chunk_inputs = take(chunk_rows).view(*chunk_rows.shape, -1)  # (S, chunk, features)
                within = slice(start % chunk, start % chunk + B)
                targets = chunk_targets[:, within]
                inputs = chunk_inputs[:, within].contiguous()  # (S, b, features)
                optimizer.zero_grad()
                logits = stacked.forward(inputs)  # (S, b, C)
                per_row = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                per_row = per_row.view(targets.shape)
                if real is None:
                    width = targets.shape[1]
                    if width not in full:
                        full[width] = torch.full((n_slots,), float(width), dtype=torch.float64, device=self.device)
                    count, weight = full[width], None
                    loss = per_row.mean(dim=1)  # each slot's own mean batch loss
                    active = None
                else:
                    weight = real[:, start:start + B]
                    count = weight.sum(dim=1).double()
                    loss = (per_row * weight).sum(dim=1) / count.clamp(min=1).to(per_row.dtype)
                    active = (count > 0).cpu().numpy()
                loss.sum().backward()  # slots share no parameter, so each gets its own gradient
                optimizer.step(active)
                losses.append(loss.detach())
                counts.append(count)
                hits.append((logits.detach().argmax(-1) == targets, weight))
            total_loss = (torch.stack(losses).double() * torch.stack(counts)).sum(dim=0)
            correct = sum(hit.double().sum(dim=1) if weight is None else (hit.double() * weight).sum(dim=1)
                          for hit, weight in hits)
            stacked.train(False)
            # A sweep (keep_best False) needs each slot's evaluation at its own last epoch only.
            ending = (epoch + 1 == self.epochs) & training
            evaluate = self.keep_best or bool(ending.any())
            val_loss, proba = evaluation.run(stacked) if evaluate else evaluation.skipped()
            dt = time.perf_counter() - t0
            self.seconds += dt
            train_loss = (total_loss.cpu().numpy() / np.maximum(sizes, 1)).tolist()
            train_acc = (correct.cpu().numpy() / np.maximum(sizes, 1)).tolist()
            records = []
            for i in np.flatnonzero(training):
                val_acc = evaluation.accuracy(i, proba[i]) if evaluate else float("nan")
                record = EpochRecord(epoch + 1, float(lr[i]), train_loss[i], train_acc[i], float(val_loss[i]),
                                     val_acc, dt / n_slots)
                histories[i].append(record)
                records.append(record)
                if evaluate:
                    final_proba[i] = proba[i]
                if self.keep_best:
                    best[i].offer(epoch + 1, val_acc, proba[i], lambda i=i: stacked.state_dict(i))
            if on_epoch:
                on_epoch(epoch + 1, records)
        has_eval = evaluation.has_rows
        return [
            SeedRun(
                seed=slot.seed, module=None, history=histories[i],
                best_epoch=best[i].epoch if has_eval and self.keep_best else None,
                final_proba=final_proba[i] if has_eval else None,
                best_proba=best[i].proba if has_eval and self.keep_best else None,
                final_state=stacked.state_dict(i), best_state=best[i].state if has_eval and self.keep_best else None,
                seconds=self.seconds / n_slots,
            )
            for i, slot in enumerate(slots)
        ]


class _Evaluation:
    """Each slot's mean loss and class probabilities on its own evaluation rows, after an epoch."""

    def __init__(self, features: torch.Tensor, y_eval: np.ndarray, eval_rows: list, device):
        self.features, self.y_eval = features, y_eval
        self.labels = torch.from_numpy(y_eval).to(device)
        self.per_slot = any(r is not None for r in eval_rows)
        rows = [np.arange(len(y_eval)) if r is None else np.asarray(r, dtype=np.int64) for r in eval_rows]
        self.rows, self.sizes = rows, [len(r) for r in rows]
        self.has_rows = len(y_eval) > 0 and max(self.sizes) > 0
        if self.per_slot and self.has_rows:
            padded = np.zeros((len(rows), max(self.sizes)), dtype=np.int64)
            for i, r in enumerate(rows):
                padded[i, :len(r)] = r
            self.padded = torch.from_numpy(padded).to(device)

    def skipped(self) -> tuple[np.ndarray, list]:
        """What an epoch without evaluation records: NaN loss, no probabilities."""
        return np.full(len(self.rows), np.nan), [None] * len(self.rows)

    def run(self, stacked) -> tuple[np.ndarray, list[np.ndarray]]:
        n_slots = len(self.rows)
        if not self.has_rows:
            return self.skipped()[0], [np.zeros((0, 0))] * n_slots
        width = self.padded.shape[1] if self.per_slot else len(self.y_eval)
        step = max(1, EVAL_ROWS // n_slots)
        losses, probas = [], []
        with torch.no_grad():
            for start in range(0, width, step):
                if self.per_slot:
                    index = self.padded[:, start:start + step]
                    logits = stacked.forward(self.features[index.flatten()].view(*index.shape, -1))
                    target = self.labels[index.flatten()].view(index.shape)
                else:
                    logits = stacked.forward(self.features[start:start + step], shared_input=True)  # (S, b, C)
                    target = self.labels[start:start + step].expand(n_slots, -1)
                losses.append(nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
                              .view(target.shape))
                probas.append(torch.softmax(logits.double(), dim=-1))
        loss, proba = torch.cat(losses, dim=1).cpu().numpy(), torch.cat(probas, dim=1).cpu().numpy()
        return (np.array([loss[i, :m].mean() if m else np.nan for i, m in enumerate(self.sizes)]),
                [proba[i, :m] for i, m in enumerate(self.sizes)])

    def accuracy(self, i: int, proba: np.ndarray) -> float:
        truth = self.y_eval[self.rows[i]]
        return float((predict_from_proba(proba) == truth).mean()) if len(truth) else float("nan")
