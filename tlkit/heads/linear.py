"""The linear head: ``nn.Linear(512, n_classes)`` on frozen features (the seed paper's Model 2)."""

from __future__ import annotations

from torch import nn

from tlkit.heads.base import TorchHead


class LinearHead(TorchHead):
    """A single linear layer trained with cross-entropy (multinomial logistic regression by SGD).

    Parameters are the training loop's, with the seed paper's defaults: 30
    epochs, batch size 4, SGD (momentum 0.9) at lr 0.001, x0.1 every 7 epochs.
    """

    def __init__(self, *, epochs=30, batch_size=4, lr=0.001, momentum=0.9, step_size=7, gamma=0.1,
                 optimizer="sgd", weight_decay=0.0, seed=0):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.step_size = step_size
        self.gamma = gamma
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.seed = seed

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Linear(n_features, n_classes)
