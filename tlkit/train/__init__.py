"""The training loop shared by the torch heads and the scratch baseline.

:class:`TrainConfig` (its settings, declared once) is here; the loop is
:mod:`tlkit.train.loop` and many seeds in one pass :mod:`tlkit.train.seeds`,
both importing torch, so they are imported where they are used.
"""

from tlkit.train.config import TrainConfig

__all__ = ["TrainConfig"]
