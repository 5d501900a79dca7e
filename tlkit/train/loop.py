"""The training loop of the scratch baseline (a whole ResNet-18, its own DataLoader order), and the rules
every loop shares: the epoch record and the best-epoch rule (:class:`BestEpoch`). The heads train in
:mod:`tlkit.train.slots` (one run, many seeds or a sweep alike).

Its settings, with the seed paper's defaults, are :class:`TrainConfig`
(:mod:`tlkit.train.config`). After every epoch the model is evaluated; the
epoch with the best validation accuracy is remembered, but the *final* epoch
is what a user should quote (choosing the best epoch on the evaluation set is
optimistic).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from tlkit.signals import loader_batches
from tlkit.train.config import TrainConfig


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float  # wall time of this epoch's training + evaluation


@dataclass
class TrainResult:
    history: list[EpochRecord]
    best_epoch: int
    final_proba: np.ndarray
    best_proba: np.ndarray
    best_state: dict
    seconds: float  # training wall time, evaluation included


class BestEpoch:
    """The best-epoch rule, once for every loop: the first epoch with the highest evaluation accuracy.

    NaN (no evaluation set) never improves on anything, so such a run has no best epoch.
    """

    def __init__(self, epoch: int = 0, acc: float = -1.0, proba=None, state=None):
        self.epoch, self.acc, self.proba, self.state = epoch, acc, proba, state

    def offer(self, epoch: int, acc: float, proba, state: Callable[[], dict]) -> bool:
        """Record ``epoch`` if it beats the best so far; ``state()`` is called (a copy made) only then."""
        if not acc > self.acc:
            return False
        self.epoch, self.acc, self.proba, self.state = epoch, acc, proba, state()
        return True


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adam)")


def make_scheduler(optimizer, cfg: TrainConfig):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)


def _accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    from tlkit.metrics import predict_from_proba

    return float((predict_from_proba(proba) == y).mean()) if len(y) else float("nan")


def train_classifier(
    model: nn.Module,
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    evaluate: Callable[[nn.Module], tuple[float, np.ndarray]],
    y_val: np.ndarray,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    resume_from: dict | None = None,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train ``model`` for ``cfg.epochs`` epochs.

    ``train_batches(epoch)`` yields (inputs, labels) for a 0-based epoch (the
    caller owns the data order, so it can be seeded); ``evaluate(model)``
    returns (mean loss, class probabilities) on the evaluation set.
    ``checkpoint(state)`` receives everything needed to continue after each
    epoch; passing that state back as ``resume_from`` continues the run to
    the same result.
    """
    loss_fn = nn.CrossEntropyLoss()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = make_scheduler(optimizer, cfg)
    history: list[EpochRecord] = []
    best, final_proba = BestEpoch(), None
    seconds = 0.0
    start_epoch = 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        history = [EpochRecord(**r) for r in resume_from["history"]]
        best = BestEpoch(resume_from["best_epoch"], resume_from["best_acc"], resume_from["best_proba"],
                         resume_from["best_state"])
        final_proba, seconds = resume_from["final_proba"], resume_from["seconds"]
        start_epoch = len(history)
        torch.set_rng_state(resume_from["torch_rng"])

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        lr = optimizer.param_groups[0]["lr"]
        with loader_batches(train_batches(epoch)) as batches:  # a failure or Ctrl-C mid-epoch stops its workers
            for inputs, labels in batches:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                logits = model(inputs)
                loss = loss_fn(logits, labels)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                seen += len(labels)
        scheduler.step()
        model.eval()
        val_loss, proba = evaluate(model)
        val_acc = _accuracy(proba, y_val)
        dt = time.perf_counter() - t0
        seconds += dt
        record = EpochRecord(epoch + 1, lr, total_loss / max(seen, 1), correct / max(seen, 1), float(val_loss), val_acc, dt)
        history.append(record)
        final_proba = proba
        best.offer(epoch + 1, val_acc, proba, lambda: copy.deepcopy(model.state_dict()))
        if on_epoch:
            on_epoch(record)
        if checkpoint:
            checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": [asdict(r) for r in history], "best_epoch": best.epoch, "best_acc": best.acc,
                "best_state": best.state, "best_proba": best.proba, "final_proba": final_proba,
                "seconds": seconds, "torch_rng": torch.get_rng_state(),
            })
    return TrainResult(history, best.epoch, final_proba, best.proba, best.state, seconds)
