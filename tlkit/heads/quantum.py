"""The dressed quantum head of Mari et al. (the seed paper's Model 3).

    features (512) -> Linear(512, n_qubits) -> tanh * pi/2 -> circuit -> <Z> per qubit
                   -> Linear(n_qubits, n_classes)

The circuit is :func:`tlkit.heads.circuit.dressed_circuit` (PennyLane). Its
hyperparameters are declared in :mod:`tlkit.heads.registry`. How the circuit
is executed is the ``simulator`` hyperparameter (``--simulator``):

* ``"auto"`` (default): ``"torch"`` on ``default.qubit`` and ``default.mixed``, else ``"qnode"``;
* ``"torch"``: the same circuit traced once from PennyLane and replayed as
  batched torch tensor ops, float64 like PennyLane: analytic and noise-free
  the state-vector replay (:mod:`tlkit.heads.statevector`); under ``noise``
  the density-matrix one (:mod:`tlkit.heads.density`); under ``shots``
  either, sampled, trained by the parameter-shift rule
  (:mod:`tlkit.heads.shots`); by far the fastest at small batch sizes;
* ``"qnode"``: a PennyLane QNode on ``qdevice`` with parameter broadcasting
  (one execution per batch; devices without broadcasting split it
  themselves), for ``lightning.qubit`` or hardware plugins, and the
  reference for the torch paths (noise on ``default.mixed``);
* ``"per-sample"``: one QNode call per sample in a Python loop, as the
  PennyLane demo does: a reference for tests and benchmarks only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tlkit.errors import HeadError
from tlkit.heads.base import TorchHead
from tlkit.heads.noise import NoiseModel
from tlkit.heads.registry import QUANTUM, SIMULATORS

_DEFAULTS = QUANTUM.defaults()


def installed_devices() -> list[str]:
    """Names of the PennyLane devices installed in this environment (plugin entry points)."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="pennylane.plugins")})


TORCH_DEVICES = ("default.qubit", "default.mixed")  # what the torch simulators are, exactly


def resolve_simulator(simulator: str, qdevice: str, shots, noise=None) -> str:
    if simulator not in SIMULATORS:
        raise HeadError(f"simulator must be one of {', '.join(SIMULATORS)}; got {simulator!r}")
    if simulator == "auto":
        return "torch" if qdevice in TORCH_DEVICES else "qnode"
    if simulator == "torch" and qdevice not in TORCH_DEVICES:
        raise HeadError(f"the torch simulator is exactly {' or '.join(TORCH_DEVICES)} (with shots and noise); "
                        f"use simulator 'qnode' for {qdevice}")
    return simulator


def qnode_device(qdevice: str, noise) -> str:
    """The device a QNode runs on: default.qubit takes no noise channels, so noise moves it to default.mixed."""
    return "default.mixed" if NoiseModel.parse(noise) and qdevice == "default.qubit" else qdevice


def make_qnode(n_qubits: int, qdevice: str, shots, noise=None, entangling: str = "chain", seed: int | None = None):
    """The dressed circuit (with ``noise``'s channels, by ``qml.add_noise``) as a torch-interface QNode."""
    import pennylane as qml

    from tlkit.heads.circuit import CIRCUITS

    model = NoiseModel.parse(noise)
    name = qnode_device(qdevice, model)
    try:
        try:
            device = qml.device(name, wires=n_qubits, seed=seed)
        except TypeError:  # a plugin without a seed argument
            device = qml.device(name, wires=n_qubits)
    except Exception as exc:  # DeviceError, or a plugin that fails to load
        raise HeadError(
            f"PennyLane device {qdevice!r} cannot be used ({exc}); installed devices: {', '.join(installed_devices())} "
            "(list them with: python -c 'import pennylane as qml; qml.about()')"
        ) from None
    exact_backprop = name in TORCH_DEVICES and shots is None
    qnode = qml.QNode(CIRCUITS[entangling], device, interface="torch",
                      diff_method="backprop" if exact_backprop else "parameter-shift" if shots is not None else "best")
    if model:
        qnode = qml.add_noise(qnode, model.to_pennylane())
        _check_takes_noise(qnode, n_qubits, qdevice)
    if not exact_backprop:
        # Parameter-shift and adjoint gradients cannot differentiate a broadcast tape: split the
        # batch into one tape per sample, still executed by the device in one call.
        qnode = qml.transforms.broadcast_expand(qnode)
    return qml.set_shots(qnode, shots=shots) if shots is not None else qnode


def _check_takes_noise(qnode, n_qubits: int, qdevice: str) -> None:
    try:
        qnode(torch.zeros(n_qubits, dtype=torch.float64), torch.zeros(1, n_qubits, dtype=torch.float64))
    except Exception as exc:
        raise HeadError(f"PennyLane device {qdevice!r} cannot take noise channels ({str(exc).splitlines()[0]}); "
                        "use --qdevice default.mixed (or default.qubit, simulated as default.mixed), or drop --noise") from None


class CircuitRunner:
    """Runs the circuit on a batch of angles: (batch, n_qubits) -> (batch, n_qubits) <Z> values.

    On the torch simulator also with a seed axis, (seeds, batch, n_qubits) with weights (seeds, ...), each
    seed drawing its shots from its own generator (``shot_seeds``).
    """

    def __init__(self, n_qubits: int, depth: int, qdevice: str, shots, simulator: str, noise=None,
                 entangling: str = "chain", seed: int | None = None):
        from tlkit.heads.circuit import CIRCUITS

        self.simulator = resolve_simulator(simulator, qdevice, shots, noise)
        self.noise, self.shots = NoiseModel.parse(noise), shots
        circuit = CIRCUITS[entangling]
        self.gradient = "backprop" if shots is None else "parameter-shift"
        if self.simulator != "torch":
            self.qnode = make_qnode(n_qubits, qdevice, shots, self.noise, entangling, seed)
            if shots is None and qnode_device(qdevice, self.noise) not in TORCH_DEVICES:
                self.gradient = "device's best (qml.QNode diff_method='best')"
        elif shots is not None:
            from tlkit.heads import density, shots as shot_rules

            self.sampler = shot_rules.ShotSampler(density.trace(circuit, n_qubits, (depth, n_qubits), self.noise), shots)
        elif self.noise:
            from tlkit.heads import density

            self.program, self._run_program = density.trace(circuit, n_qubits, (depth, n_qubits), self.noise), density.run
        else:
            from tlkit.heads import statevector

            self.program = statevector.trace(circuit, n_qubits, (depth, n_qubits))
            self._run_program = statevector.run

    @property
    def method(self) -> str:
        """How the circuit is computed, for config.json."""
        if self.simulator != "torch":
            return self.simulator
        program = self.sampler.program if hasattr(self, "sampler") else self.program
        kind = "density matrix" if getattr(program, "mixed", False) else "state vector"  # readout alone: vectors
        return f"torch {kind}" + (", sampled" if self.shots is not None else "")

    def __call__(self, angles: torch.Tensor, weights: torch.Tensor, shot_seeds: torch.Tensor | None = None):
        if self.simulator == "torch" and self.shots is not None:
            from tlkit.heads.shots import ParameterShift

            seeded = angles.dim() == 3
            seeds = shot_seeds.reshape(-1) if shot_seeds is not None else torch.zeros(1, dtype=torch.long)
            inputs = angles if seeded else angles.unsqueeze(0)
            out = ParameterShift.apply(self.sampler, self.sampler.generators(seeds), inputs,
                                       weights.reshape(inputs.shape[0], -1), torch.is_grad_enabled())
            return out if seeded else out.squeeze(0)
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
                 qdevice: str = _DEFAULTS["qdevice"], shots=_DEFAULTS["shots"], simulator: str = _DEFAULTS["simulator"],
                 noise=_DEFAULTS["noise"], entangling: str = _DEFAULTS["entangling"]):
        super().__init__()
        self.pre = nn.Linear(n_features, n_qubits)
        self.q_weights = nn.Parameter(q_delta * torch.randn(depth, n_qubits))  # same init order as the demo
        self.post = nn.Linear(n_qubits, n_classes)
        # The seed of this module's shots, drawn last from the seeded global generator (so the parameters are
        # initialised as without shots). A buffer, so that a seed axis stacks it (one generator per seed); not
        # saved with the weights: evaluate (or reseed_shots) sets it.
        seed = int(torch.randint(0, 2**62, ())) if shots is not None else 0
        self.register_buffer("shot_seed", torch.tensor(seed, dtype=torch.long), persistent=False)
        self.circuit_options = dict(n_qubits=n_qubits, depth=depth, qdevice=qdevice, shots=shots, simulator=simulator,
                                    noise=NoiseModel.parse(noise).spec or None, entangling=entangling, seed=seed)
        self.runner = CircuitRunner(**self.circuit_options)

    def reseed_shots(self, seed: int) -> None:
        """Start the shots over from ``seed`` (same seed, same draws)."""
        self.shot_seed.fill_(int(seed))
        if hasattr(self.runner, "sampler"):
            self.runner.sampler.reset()

    @property
    def seed_axis(self) -> str | None:
        """How many seeds of this module train in one pass (:mod:`tlkit.train.seeds`): the torch simulators
        take a leading seed axis ("broadcast"); a PennyLane QNode runs on a device, which neither a seed axis
        nor ``torch.vmap`` can reach (None: one seed after another)."""
        return "broadcast" if self.runner.simulator == "torch" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.tanh(self.pre(x)) * (math.pi / 2)
        expectations = self.runner(angles, self.q_weights, self.shot_seed)
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
        noise = NoiseModel.parse(self.noise)  # an unknown channel or a strength outside [0, 1] fails here
        if resolve_simulator(self.simulator, self.qdevice, self.shots, noise) != "torch":
            # an unknown device, or one that cannot take the noise, fails here, not mid-run
            make_qnode(int(self.n_qubits), self.qdevice, self.shots, noise, self.entangling)

    def run_details(self) -> dict:
        runner = self.module_.runner
        return {**super().run_details(), "circuit_simulator": runner.simulator, "conditions": {
            "noise": runner.noise.spec or None, "shots": runner.shots, "gradient": runner.gradient,
            "simulation": runner.method}}

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return DressedQuantumNet(
            n_features, n_classes, n_qubits=int(self.n_qubits), depth=int(self.depth), q_delta=self.q_delta,
            qdevice=self.qdevice, shots=None if self.shots is None else int(self.shots), simulator=self.simulator,
            noise=self.noise, entangling=self.entangling,
        )
