"""The training loop's settings, declared once: defaults, constraints and help text.

Defaults are the seed paper's: cross-entropy, batch size 4, 30 epochs, SGD
(momentum 0.9) at lr 0.001 decayed x0.1 every 7 epochs. The torch heads take
these as hyperparameters and ``tlkit train-scratch`` and ``tlkit fit-head``
build their training options from them (:func:`tlkit.train.hparams.options`).

The commands' ``--help`` imports this module: no torch here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from tlkit.errors import HeadError
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


# --- many seeds ---------------------------------------------------------------------------------

SEEDS_HELP = ("Train several seeds in one go: a count (10: seeds 0-9), a range (0-9) or a list (1,5,9); "
              "the run folder then holds every seed and intervals across them. Not with --seed.")


def parse_seeds(spec: str) -> list[int]:
    """``--seeds SPEC``: a count ("10": seeds 0-9), a range ("0-9") or a list ("1,5,9").

    Raises HeadError (one line) for anything else: a count below 1, an
    empty or descending range, a duplicate, a negative number or a word.
    """
    text = str(spec).strip()
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",")]
        elif "-" in text.lstrip("-"):
            low, high = (int(part) for part in text.split("-", 1))
            if high < low:
                raise HeadError(f"--seeds {spec}: the range runs backwards; write it low-high, e.g. {high}-{low}")
            seeds = list(range(low, high + 1))
        else:
            count = int(text)
            if count < 1:
                raise HeadError(f"--seeds {spec}: the count of seeds must be at least 1 (for one seed, use --seed N)")
            seeds = list(range(count))
    except ValueError as exc:
        if isinstance(exc, HeadError):
            raise
        raise HeadError(f"--seeds {spec!r} is not a count (10), a range (0-9) or a list (1,5,9)") from None
    return check_seeds(seeds, spec)


def check_seeds(seeds: Iterable[int], spec=None) -> list[int]:
    """The seeds as a list of distinct non-negative ints (HeadError otherwise)."""
    label = f"--seeds {spec}" if spec is not None else "seeds"
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise HeadError(f"{label}: no seeds given")
    if min(seeds) < 0:
        raise HeadError(f"{label}: seeds must be non-negative, got {min(seeds)}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise HeadError(f"{label}: seed {', '.join(map(str, repeated))} is given twice; each seed once")
    return seeds
