"""The classical control for the quantum head: its dressing, with the circuit replaced by a classical layer.

    quantum:    features -> Linear(512, n) -> tanh * pi/2 -> circuit         -> Linear(n, n_classes)
    bottleneck: features -> Linear(512, n) -> tanh * pi/2 -> Linear(n, n) -> tanh -> Linear(n, n_classes)

Why: in a dressed circuit the classical layers around the circuit may carry
the accuracy (SEQUENT, arXiv:2301.02601). Comparing the quantum head with
this one, trained the same way, says whether the circuit itself adds
anything. The middle layer matches the circuit where it matters for that
question:

* the same width: n angles in, n values out (``n_qubits`` is the width, so
  ``--n-qubits`` means the same for both heads);
* the same output range: tanh keeps each value in [-1, 1], as <Z> is;
* a comparable number of trainable parameters: n*n + n (20 at n = 4)
  against the circuit's depth * n (24 at the default depth 6);
* the same input scaling (tanh * pi/2), so the first layer's learning
  problem is identical.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tlkit.heads.base import TorchHead
from tlkit.heads.registry import BOTTLENECK

_DEFAULTS = BOTTLENECK.defaults()


class BottleneckNet(nn.Module):
    """Linear(n_features, n) -> tanh * pi/2 -> Linear(n, n) -> tanh -> Linear(n, n_classes).

    Every operation acts on the last axis only, so the same forward runs
    on (batch, features) and, with parameters stacked per seed, on
    (seeds, batch, features): it says so to the many-seeds engine
    (``seed_axis``, see :mod:`tlkit.train.seeds`).
    """

    seed_axis = "broadcast"

    def __init__(self, n_features: int, n_classes: int, n_qubits: int = _DEFAULTS["n_qubits"]):
        super().__init__()
        self.pre = nn.Linear(n_features, n_qubits)  # the quantum head's names and init order for pre/post
        self.middle = nn.Linear(n_qubits, n_qubits)
        self.post = nn.Linear(n_qubits, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.tanh(self.pre(x)) * (math.pi / 2)
        return self.post(torch.tanh(self.middle(angles)))


class BottleneckHead(TorchHead, head="bottleneck"):
    """The quantum head's dressing around a classical n -> n layer instead of the circuit.

    Hyperparameters (declared in :mod:`tlkit.heads.registry`): the width
    ``n_qubits`` (default 4, as the quantum head's qubits) and the shared
    training loop's, with the seed paper's defaults, like every torch head.
    """

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return BottleneckNet(n_features, n_classes, n_qubits=int(self.n_qubits))
