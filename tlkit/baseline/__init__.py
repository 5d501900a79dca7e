"""The seed paper's baseline: ResNet-18 trained end to end on the images.

``tlkit train-scratch`` trains it from random initialisation (``--finetune``:
from the embed weights) with on-the-fly augmentation, and writes the same run
folder as ``tlkit fit-head`` so ``tlkit report`` can compare them.

``tlkit train-scratch --help`` imports this package (its command is
:mod:`tlkit.baseline.cli`): so :func:`train_scratch`, which imports torch and
torchvision, loads on first use, and the help answers at once.
"""

from __future__ import annotations


def __getattr__(name):
    if name == "train_scratch":
        from tlkit.baseline import trainer

        return getattr(trainer, name)
    raise AttributeError(name)


__all__ = ["train_scratch"]
