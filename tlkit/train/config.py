"""The training loop's settings, declared once: defaults, constraints and help text.

Defaults are the seed paper's: cross-entropy, batch size 4, 30 epochs, SGD
(momentum 0.9) at lr 0.001 decayed x0.1 every 7 epochs. The torch heads take
these as hyperparameters and ``tlkit train-scratch`` and ``tlkit fit-head``
build their training options from them (:func:`tlkit.train.hparams.options`).

Imported when the CLI starts: no torch here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tlkit.train.hparams import HParam, hparam, hparams_of

TRAINING = "Training loop"  # the --help section of these settings


@dataclass
class TrainConfig:
    epochs: int = hparam(30, "Training epochs.", min=1, section=TRAINING)
    batch_size: int = hparam(4, "Examples per optimizer step.", min=1, section=TRAINING)
    lr: float = hparam(0.001, "Initial learning rate.", min=0, min_open=True, section=TRAINING)
    momentum: float = hparam(0.9, "SGD momentum.", min=0, section=TRAINING)
    step_size: int = hparam(7, "Epochs between learning-rate decays (StepLR).", min=1, section=TRAINING)
    gamma: float = hparam(0.1, "Learning-rate factor at each decay.", min=0, min_open=True, section=TRAINING)
    optimizer: str = hparam("sgd", "Optimizer.", choices=("sgd", "adam"), section=TRAINING)
    weight_decay: float = hparam(0.0, "L2 penalty in the optimizer.", min=0, section=TRAINING)
    # No section: every head is seeded, so fit-head lists --seed with its general options.
    seed: int = hparam(0, "Seed of the initialisation and the data order.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def hparams(cls) -> tuple[HParam, ...]:
        return hparams_of(cls)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
