"""The linear head: ``nn.Linear(512, n_classes)`` on frozen features (the seed paper's Model 2)."""

from __future__ import annotations

from torch import nn

from tlkit.heads.base import TorchHead


class LinearHead(TorchHead, head="linear"):
    """A single linear layer trained with cross-entropy (multinomial logistic regression by SGD).

    Hyperparameters: the training loop's (:class:`tlkit.train.TrainConfig`), with
    the seed paper's defaults: 30 epochs, batch size 4, SGD (momentum 0.9) at lr
    0.001, x0.1 every 7 epochs.
    """

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Linear(n_features, n_classes)
