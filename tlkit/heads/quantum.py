"""The dressed quantum head of Mari et al. (the seed paper's Model 3).

    features (512) -> Linear(512, n_qubits) -> tanh * pi/2 -> circuit -> <Z> per qubit
                   -> Linear(n_qubits, n_classes)

The circuit is :func:`tlkit.heads.circuit.dressed_circuit` (PennyLane). Its
hyperparameters are declared in :mod:`tlkit.heads.registry`. How the circuit
is executed is the ``simulator`` hyperparameter (``--simulator``):

* ``"auto"`` (default): ``"torch"`` for analytic ``default.qubit``, else ``"qnode"``;
* ``"torch"``: the same circuit traced once from PennyLane and replayed as
  batched torch tensor ops (:mod:`tlkit.heads.statevector`), float64 like
  ``default.qubit``; by far the fastest at small batch sizes;
* ``"qnode"``: a PennyLane QNode on ``qdevice`` with parameter broadcasting
  (one execution per batch; devices without broadcasting split it
  themselves), for ``lightning.qubit``, shots, or hardware plugins;
* ``"per-sample"``: one QNode call per sample in a Python loop, as the
  PennyLane demo does: a reference for tests and benchmarks only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tlkit.errors import HeadError
from tlkit.heads.base import TorchHead
from tlkit.heads.registry import QUANTUM, SIMULATORS

_DEFAULTS = QUANTUM.defaults()


def installed_devices() -> list[str]:
    """Names of the PennyLane devices installed in this environment (plugin entry points)."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="pennylane.plugins")})


def resolve_simulator(simulator: str, qdevice: str, shots) -> str:
    if simulator not in SIMULATORS:
        raise HeadError(f"simulator must be one of {', '.join(SIMULATORS)}; got {simulator!r}")
    analytic_default = qdevice == "default.qubit" and shots is None
    if simulator == "auto":
        return "torch" if analytic_default else "qnode"
    if simulator == "torch" and not analytic_default:
        raise HeadError("the torch simulator is exact default.qubit (no shots); use simulator 'qnode' for other devices or shots")
    return simulator


def make_qnode(n_qubits: int, qdevice: str, shots):
    """The dressed circuit as a torch-interface QNode on ``qdevice``."""
    import pennylane as qml

    from tlkit.heads.circuit import dressed_circuit

    try:
        device = qml.device(qdevice, wires=n_qubits)
    except Exception as exc:  # DeviceError, or a plugin that fails to load
        raise HeadError(
            f"PennyLane device {qdevice!r} cannot be used ({exc}); installed devices: {', '.join(installed_devices())} "
            "(list them with: python -c 'import pennylane as qml; qml.about()')"
        ) from None
    exact_backprop = qdevice == "default.qubit" and shots is None
    qnode = qml.QNode(dressed_circuit, device, interface="torch", diff_method="backprop" if exact_backprop else "best")
    if not exact_backprop:
        # Parameter-shift and adjoint gradients cannot differentiate a broadcast tape: split the
        # batch into one tape per sample, still executed by the device in one call.
        qnode = qml.transforms.broadcast_expand(qnode)
    return qml.set_shots(qnode, shots=shots) if shots is not None else qnode


class CircuitRunner:
    """Runs the circuit on a batch of angles: (batch, n_qubits) -> (batch, n_qubits) <Z> values."""

    def __init__(self, n_qubits: int, depth: int, qdevice: str, shots, simulator: str):
        self.simulator = resolve_simulator(simulator, qdevice, shots)
        if self.simulator == "torch":
            from tlkit.heads import statevector
            from tlkit.heads.circuit import dressed_circuit

            self.program = statevector.trace(dressed_circuit, n_qubits, (depth, n_qubits))
            self._run_program = statevector.run
        else:
            self.qnode = make_qnode(n_qubits, qdevice, shots)

    def __call__(self, angles: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.simulator == "torch":
            return self._run_program(self.program, angles, weights)
        if self.simulator == "qnode":
            return torch.stack(list(self.qnode(angles, weights)), dim=-1)
        # The PennyLane demo's way: one execution per sample.
        return torch.stack([torch.stack(list(self.qnode(sample, weights))) for sample in angles])


class DressedQuantumNet(nn.Module):
    """Linear(n_features, n_qubits) -> tanh * pi/2 -> circuit -> Linear(n_qubits, n_classes)."""

    def __init__(self, n_features: int, n_classes: int, n_qubits: int = _DEFAULTS["n_qubits"],
                 depth: int = _DEFAULTS["depth"], q_delta: float = _DEFAULTS["q_delta"],
                 qdevice: str = _DEFAULTS["qdevice"], shots=_DEFAULTS["shots"], simulator: str = _DEFAULTS["simulator"]):
        super().__init__()
        self.circuit_options = dict(n_qubits=n_qubits, depth=depth, qdevice=qdevice, shots=shots, simulator=simulator)
        self.pre = nn.Linear(n_features, n_qubits)
        self.q_weights = nn.Parameter(q_delta * torch.randn(depth, n_qubits))  # same init order as the demo
        self.post = nn.Linear(n_qubits, n_classes)
        self.runner = CircuitRunner(**self.circuit_options)

    @property
    def seed_axis(self) -> str | None:
        """How many seeds of this module train in one pass (:mod:`tlkit.train.seeds`): the torch simulator's
        replay takes a leading seed axis ("broadcast"); a PennyLane QNode runs on a device, which neither
        a seed axis nor ``torch.vmap`` can reach (None: one seed after another)."""
        return "broadcast" if self.runner.simulator == "torch" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.tanh(self.pre(x)) * (math.pi / 2)
        expectations = self.runner(angles, self.q_weights)
        return self.post(expectations.to(x.dtype))

    def __getstate__(self):  # QNodes do not pickle; rebuild the runner instead
        state = self.__dict__.copy()
        state.pop("runner", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.runner = CircuitRunner(**self.circuit_options)


class QuantumHead(TorchHead, head="quantum"):
    """The dressed quantum circuit as a classifier over feature arrays.

    Defaults: 4 qubits, depth 6, circuit weights initialised 0.01 * N(0, 1),
    ``default.qubit`` analytic, and the seed paper's training loop.
    """

    slot_params = (*TorchHead.slot_params, "q_delta")  # an initial scale: grid values share one sweep pass

    def check_params(self) -> None:
        super().check_params()
        if resolve_simulator(self.simulator, self.qdevice, self.shots) != "torch":
            make_qnode(int(self.n_qubits), self.qdevice, self.shots)  # an unknown device fails here, not mid-run

    def run_details(self) -> dict:
        return {**super().run_details(), "circuit_simulator": self.module_.runner.simulator}

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return DressedQuantumNet(
            n_features, n_classes, n_qubits=int(self.n_qubits), depth=int(self.depth), q_delta=self.q_delta,
            qdevice=self.qdevice, shots=None if self.shots is None else int(self.shots), simulator=self.simulator,
        )
