"""A batched density-matrix simulator in torch, for noisy circuits traced from PennyLane.

Beside :mod:`tlkit.heads.statevector` (exact, noise-free, the fast path for
analytic training), this module runs the same PennyLane circuit with the
channels of a :class:`~tlkit.heads.noise.NoiseModel` inserted by PennyLane's
own ``qml.add_noise``, so the program is the noisy circuit by construction and
the tests hold it to a ``default.mixed`` QNode (expectations and gradients
within 1e-6, float64).

How: a density matrix rho on n qubits is held as a vector of 4**n entries in
"pair" order, one base-4 digit (2 * row bit + column bit) per wire. A
single-wire operation is then a 4 x 4 matrix on that wire's digit: a gate U
is kron(U, conj U), a channel with Kraus operators K_i is sum_i kron(K_i,
conj K_i) (all real here: H, RY, CNOT and the four channels keep rho real).
So a noisy circuit is a state-vector-like program on 4-level wires: layers of
per-wire 4 x 4 matrices (a gate and the channels after it compose into one),
the CNOTs before each layer one index on the state (CNOT on rows and
columns). A layer is applied as K_high . psi . K_low^T with the state held as
a 4**h x 4**(n-h) matrix psi, as the state-vector replay does. Without gate
channels the same program runs on plain state vectors (2-level wires), which
is what sampling shots from a noise-free circuit needs (:mod:`tlkit.heads.shots`).

Everything broadcasts over leading axes: ``probabilities(program, inputs
(..., n_inputs), weights (..., n_weights))``, so a seed axis, a batch, and
the parameter-shift rule's shifted copies (:mod:`tlkit.heads.shots`) are one
call. Gradients come from autograd.

Readout error (``readout=r``, a bit flip of every wire before measurement) is
the classical map it is on the measured probabilities: each bit flipped with
probability r. The analytic path applies it to the probabilities; the shot
path to the sampled bits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from tlkit.heads.noise import NoiseModel

DTYPE = torch.float64  # default.mixed's precision
MAX_QUBITS = 8  # 4**8 = 65,536 entries per density matrix


@dataclass
class Layer:
    perm: torch.Tensor | None  # state[..., perm] applies the CNOTs before the layer (None: none)
    # per wire, the operations in the order applied: ("fixed", (d, d) tensor) or ("weight"|"input", index)
    ops: list[list[tuple[str, object]]]


@dataclass
class Program:
    """A traced (noisy) circuit on ``local_dim``-level wires: 2 (state vector) or 4 (density matrix)."""

    n_qubits: int
    n_inputs: int
    n_weights: int
    local_dim: int
    initial_state: torch.Tensor  # (local_dim**n,)
    layers: list[Layer]
    measure_index: torch.Tensor  # (2**n,): where each basis state's probability is read (mixed: the diagonal)
    z_signs: torch.Tensor  # (2**n, n_measured)
    readout: float
    uses: dict = field(default_factory=dict)  # ("weight"|"input", index) -> number of gates it feeds

    @property
    def mixed(self) -> bool:
        return self.local_dim == 4


def trace(circuit, n_inputs: int, weight_shape: tuple[int, ...], noise=None, *, mixed: bool | None = None) -> Program:
    """Record ``circuit(inputs, weights)`` with ``noise``'s channels and compile it into a :class:`Program`.

    ``mixed``: density matrices (True), state vectors (False; refused with gate channels) or by the noise
    (None: density matrices when there are gate channels). Kept per arguments (programs are only read).
    """
    model = NoiseModel.parse(noise)
    return _trace(circuit, int(n_inputs), tuple(int(d) for d in weight_shape), model, mixed)


@functools.lru_cache(maxsize=64)
def _trace(circuit, n_inputs: int, weight_shape: tuple[int, ...], model: NoiseModel, mixed: bool | None) -> Program:
    import pennylane as qml

    n_weights = int(np.prod(weight_shape))
    inputs = np.arange(1, n_inputs + 1, dtype=np.float64)  # markers 1, 2, ... (as statevector.trace)
    weights = -np.arange(1, n_weights + 1, dtype=np.float64).reshape(weight_shape)  # markers -1, -2, ...
    tape = qml.tape.make_qscript(circuit)(inputs, weights)
    gate_noise = NoiseModel(tuple(c for c in model.components if c[0] != "readout")).to_pennylane()
    if gate_noise is not None:
        (tape,), _ = qml.add_noise(tape, gate_noise)
    has_channels = any(isinstance(op, qml.operation.Channel) for op in tape.operations)
    if mixed is None:
        mixed = has_channels
    if has_channels and not mixed:
        raise ValueError("a circuit with noise channels needs the density-matrix simulation (mixed=True)")
    wires = sorted({int(w) for op in tape.operations for w in op.wires} | {int(w) for m in tape.measurements for w in m.wires})
    n = len(wires)
    if wires != list(range(n)) or n > MAX_QUBITS:
        raise NotImplementedError(f"the density-matrix simulator takes wires 0..n-1 with n <= {MAX_QUBITS}, got {wires}")
    d = 4 if mixed else 2
    pair = _pair_index(n)  # (2**n, 2**n): where rho[r, c] sits in the pair-ordered vector

    def local(matrices) -> torch.Tensor:
        """A gate (one matrix) or channel (its Kraus matrices) as the operator on one wire's state."""
        if not mixed:
            return torch.tensor(np.real_if_close(matrices[0]), dtype=DTYPE)
        superop = sum(np.kron(k, np.conj(k)) for k in matrices)
        if np.abs(np.imag(superop)).max() > 1e-12:
            raise NotImplementedError("complex-valued channels are not supported by the torch simulator")
        return torch.tensor(np.real(superop), dtype=DTYPE)

    layers: list[dict] = []  # {"perm": np perm over 2**n, "ops": {wire: [...]}}
    uses: dict = {}
    for op in tape.operations:
        if op.name == "CNOT":
            control, target = int(op.wires[0]), int(op.wires[1])
            step = _cnot_permutation(n, control, target)
            last = layers[-1] if layers else None
            if last is not None and not last["ops"].get(control) and not last["ops"].get(target):
                last["perm"] = last["perm"][step]  # commutes with the layer's ops on other wires
            else:
                layers.append({"perm": step, "ops": {}})
            continue
        if len(op.wires) != 1:
            raise NotImplementedError(f"gate {op.name} is not supported by the torch simulator")
        wire = int(op.wires[0])
        if not layers:
            layers.append({"perm": np.arange(2**n), "ops": {}})
        item = _marker(op)
        if item is None:
            if isinstance(op, qml.operation.Channel):
                item = ("fixed", local(op.kraus_matrices()))
            else:
                item = ("fixed", local([qml.matrix(op)]))
        else:
            uses[item] = uses.get(item, 0) + 1
        layers[-1]["ops"].setdefault(wire, []).append(item)

    def to_layer(raw) -> Layer:
        perm = raw["perm"]
        if _is_identity(perm):
            index = None
        elif mixed:
            index = np.empty(4**n, dtype=np.int64)
            index[pair.reshape(-1)] = pair[perm][:, perm].reshape(-1)
            index = torch.as_tensor(index)
        else:
            index = torch.as_tensor(perm)
        return Layer(index, [_merge_fixed(raw["ops"].get(w, [])) for w in range(n)])

    compiled = [to_layer(raw) for raw in layers]
    state = torch.zeros(d**n, dtype=DTYPE)
    state[0] = 1.0
    while compiled and all(kind == "fixed" for ops in compiled[0].ops for kind, _ in ops):  # fold the fixed start
        state = apply_layer(compiled.pop(0), state, None, None, n, d)

    z_signs = np.empty((2**n, len(tape.measurements)))
    for j, m in enumerate(tape.measurements):
        if type(m).__name__ != "ExpectationMP" or m.obs is None or m.obs.name != "PauliZ":
            raise NotImplementedError(f"only expval(PauliZ) measurements are supported, got {m}")
        z_signs[:, j] = 1.0 - 2.0 * _bits(n)[:, int(m.wires[0])]
    measure = np.diagonal(pair) if mixed else np.arange(2**n)
    return Program(n_qubits=n, n_inputs=n_inputs, n_weights=n_weights, local_dim=d, initial_state=state,
                   layers=compiled, measure_index=torch.as_tensor(np.ascontiguousarray(measure)),
                   z_signs=torch.tensor(z_signs, dtype=DTYPE), readout=model.readout, uses=uses)


def probabilities(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., 2**n) probabilities of the measured basis states, before readout error.

    ``inputs`` (..., n_inputs) and ``weights`` (..., n_weights) broadcast against each other: e.g.
    inputs (S, B, I) with weights (S, 1, P) run seed s's samples with its own weights.
    """
    n, d = program.n_qubits, program.local_dim
    inputs, weights = inputs.to(DTYPE), weights.to(DTYPE)
    rotations = {"weight": _rotation(weights, d), "input": _rotation(inputs, d)}  # (..., k, d, d)
    lead = torch.broadcast_shapes(inputs.shape[:-1], weights.shape[:-1])
    state = program.initial_state.expand(*lead, -1)
    for layer in program.layers:
        state = apply_layer(layer, state, rotations, lead, n, d)
    amplitudes = state.index_select(-1, program.measure_index)
    return amplitudes if program.mixed else amplitudes * amplitudes  # real amplitudes: p = a**2


def apply_readout(probs: torch.Tensor, readout: float, n: int) -> torch.Tensor:
    """Each measured bit flipped with probability ``readout`` (a BitFlip before every measurement)."""
    if readout <= 0:
        return probs
    for wire in range(n):
        flip = _flip_index(n, wire, str(probs.device))
        probs = (1 - readout) * probs + readout * probs.index_select(-1, flip)
    return probs


def expectations(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., n_measured) exact <Z> of the noisy circuit, readout error included."""
    probs = apply_readout(probabilities(program, inputs, weights), program.readout, program.n_qubits)
    return probs @ program.z_signs


def run(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`tlkit.heads.statevector.run`'s interface: inputs (B, I) with weights (*shape), or with a seed
    axis inputs (S, B, I) with weights (S, *shape)."""
    if inputs.dim() == 3:
        return expectations(program, inputs, weights.reshape(inputs.shape[0], 1, -1))
    return expectations(program, inputs, weights.reshape(-1))


def apply_layer(layer: Layer, state: torch.Tensor, rotations, lead, n: int, d: int) -> torch.Tensor:
    if layer.perm is not None:
        state = state.index_select(-1, layer.perm)
    matrices = [_wire_matrix(ops, rotations, d, state) for ops in layer.ops]
    high = n // 2
    d_high, d_low = d**high, d ** (n - high)
    k_high, k_low = _kron(matrices[:high], d), _kron(matrices[high:], d)
    psi = state.reshape(*state.shape[:-1], d_high, d_low)
    if k_high is not None:
        psi = torch.matmul(k_high, psi)
    if k_low is not None:
        psi = torch.matmul(psi, k_low.transpose(-1, -2))
    return psi.reshape(*psi.shape[:-2], d_high * d_low)


def _wire_matrix(ops, rotations, d: int, like: torch.Tensor) -> torch.Tensor | None:
    """The product of one wire's operations in a layer, (..., d, d); None for the identity."""
    out = None
    for kind, value in ops:
        matrix = value.to(like.device) if kind == "fixed" else rotations[kind][..., value, :, :]
        out = matrix if out is None else torch.matmul(matrix, out)
    return out


def _kron(matrices: list, d: int) -> torch.Tensor | None:
    """kron of the wires' matrices (identity where None), broadcasting over leading axes; None if all are."""
    if all(m is None for m in matrices):
        return None
    eye = next(m for m in matrices if m is not None).new_zeros(d, d)
    eye.diagonal().fill_(1.0)
    out = None
    for m in matrices:
        m = eye if m is None else m
        if out is None:
            out = m
            continue
        a, b = out.shape[-1], m.shape[-1]
        out = out[..., :, None, :, None] * m[..., None, :, None, :]
        out = out.reshape(*out.shape[:-4], a * b, a * b)
    return out


def _rotation(theta: torch.Tensor, d: int) -> torch.Tensor:
    """RY(theta) (d=2) or its superoperator kron(RY, RY) (d=4), (..., k, d, d)."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    ry = torch.stack([c, -s, s, c], dim=-1).reshape(*theta.shape, 2, 2)
    if d == 2:
        return ry
    return (ry[..., :, None, :, None] * ry[..., None, :, None, :]).reshape(*theta.shape, 4, 4)


def _merge_fixed(ops: list) -> list:
    """Consecutive fixed operations of a wire multiplied into one (fewer products at run time)."""
    out: list = []
    for kind, value in ops:
        if kind == "fixed" and out and out[-1][0] == "fixed":
            out[-1] = ("fixed", value @ out[-1][1])
        else:
            out.append((kind, value))
    return out


def _marker(op):
    """("input", i) or ("weight", k) for an RY fed by one traced input or weight; None for a fixed gate."""
    if op.name != "RY":
        return None
    marker = float(op.data[0])
    if marker != round(marker) or marker == 0:
        raise NotImplementedError(f"RY on wire {int(op.wires[0])} is fed by a computed angle, not one input or weight")
    return ("input", int(marker) - 1) if marker > 0 else ("weight", int(-marker) - 1)


def _bits(n: int) -> np.ndarray:
    """(2**n, n): the bit of each wire in each basis state, wire 0 most significant (as in PennyLane)."""
    return (np.arange(2**n)[:, None] >> (n - 1 - np.arange(n))) & 1


def _pair_index(n: int) -> np.ndarray:
    """(2**n, 2**n): the position of rho[r, c] in the pair-ordered vector (digit 2 * r_w + c_w per wire)."""
    bits = _bits(n)
    digits = 2 * bits[:, None, :] + bits[None, :, :]  # (r, c, n)
    return (digits * (4 ** (n - 1 - np.arange(n)))).sum(-1)


def _cnot_permutation(n: int, control: int, target: int) -> np.ndarray:
    """``state[perm]`` is CNOT(control, target) applied to a state vector."""
    index = np.arange(2**n)
    return np.where(_bits(n)[:, control] == 1, index ^ (1 << (n - 1 - target)), index)


@functools.lru_cache(maxsize=None)
def _flip_index(n: int, wire: int, device: str) -> torch.Tensor:
    return torch.as_tensor(np.arange(2**n) ^ (1 << (n - 1 - wire)), device=device)


def _is_identity(perm: np.ndarray) -> bool:
    return bool((perm == np.arange(len(perm))).all())
