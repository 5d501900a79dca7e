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
class Layers:
    """Layers of one kind, stacked: wire w of layer l applies ``pre[l, w]``, then the rotation ``slot[l, w]``
    (0: none; 1..P: weight slot-1; P+1..P+I: input slot-P-1), then ``post[l, w]``."""

    pre: torch.Tensor  # (L, n, d, d)
    post: torch.Tensor  # (L, n, d, d)
    slot: torch.Tensor  # (L, n) long

    def __len__(self) -> int:
        return self.slot.shape[0]


@dataclass
class Program:
    """A traced (noisy) circuit on ``local_dim``-level wires: 2 (state vector) or 4 (density matrix)."""

    n_qubits: int
    n_inputs: int
    n_weights: int
    local_dim: int
    initial_state: torch.Tensor  # (local_dim**n,)
    shared: Layers  # layers fed by weights only (or by nothing): one set of matrices per set of weights
    per_sample: Layers  # layers fed by inputs
    order: list[tuple[str, int, torch.Tensor | None]]  # ("shared"|"per_sample", k, CNOT index before it or None)
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

    def local(matrices) -> np.ndarray:
        """A gate (one matrix) or channel (its Kraus matrices) as the operator on one wire's state."""
        op = sum(np.kron(k, np.conj(k)) for k in matrices) if mixed else matrices[0]
        if np.abs(np.imag(op)).max() > 1e-12:
            raise NotImplementedError("complex-valued gates and channels are not supported by the torch simulator")
        return np.real(op)

    # Each layer: the CNOTs before it (a permutation of the 2**n basis states), then per wire: fixed operations,
    # at most one rotation fed by an input or weight, fixed operations.
    layers: list[dict] = []
    uses: dict = {}

    def new_layer(perm):
        layers.append({"perm": perm, "pre": {}, "slot": {}, "post": {}})

    for op in tape.operations:
        if op.name == "CNOT":
            control, target = int(op.wires[0]), int(op.wires[1])
            step = _cnot_permutation(n, control, target)
            last = layers[-1] if layers else None
            if last is not None and not any(control in last[k] or target in last[k] for k in ("pre", "slot", "post")):
                last["perm"] = last["perm"][step]  # commutes with the layer's operations on other wires
            else:
                new_layer(step)
            continue
        if len(op.wires) != 1:
            raise NotImplementedError(f"gate {op.name} is not supported by the torch simulator")
        wire = int(op.wires[0])
        if not layers:
            new_layer(np.arange(2**n))
        item = _marker(op)
        if item is not None:
            uses[item] = uses.get(item, 0) + 1
            if wire in layers[-1]["slot"]:  # a second rotation on this wire: a new layer
                new_layer(np.arange(2**n))
            layers[-1]["slot"][wire] = 1 + item[1] if item[0] == "weight" else 1 + n_weights + item[1]
            continue
        matrix = local(op.kraus_matrices() if isinstance(op, qml.operation.Channel) else [qml.matrix(op)])
        side = "post" if wire in layers[-1]["slot"] else "pre"
        layers[-1][side][wire] = matrix @ layers[-1][side].get(wire, np.eye(d))

    pair = _pair_index(n)  # (2**n, 2**n): where rho[r, c] sits in the pair-ordered vector

    def index_of(perm):
        if _is_identity(perm):
            return None
        if not mixed:
            return torch.as_tensor(perm)
        index = np.empty(4**n, dtype=np.int64)
        index[pair.reshape(-1)] = pair[perm][:, perm].reshape(-1)  # CNOT on rows and columns
        return torch.as_tensor(index)

    def stack(raws) -> Layers:
        eye = np.eye(d)
        pre = np.array([[raw["pre"].get(w, eye) for w in range(n)] for raw in raws]).reshape(len(raws), n, d, d)
        post = np.array([[raw["post"].get(w, eye) for w in range(n)] for raw in raws]).reshape(len(raws), n, d, d)
        slot = np.array([[raw["slot"].get(w, 0) for w in range(n)] for raw in raws], dtype=np.int64).reshape(len(raws), n)
        return Layers(torch.tensor(pre, dtype=DTYPE), torch.tensor(post, dtype=DTYPE), torch.as_tensor(slot))

    # The leading layers fed by nothing make the start state.
    state = torch.zeros(d**n, dtype=DTYPE)
    state[0] = 1.0
    while layers and not layers[0]["slot"]:
        raw = layers.pop(0)
        fixed = stack([raw])
        k_high, k_low = _krons(fixed.post @ fixed.pre, n)
        state = _apply(state, index_of(raw["perm"]), k_high[0], k_low[0], n, d)
    shared = [raw for raw in layers if all(s <= n_weights for s in raw["slot"].values())]
    per_sample = [raw for raw in layers if not any(raw is r for r in shared)]
    order = [("shared", next(i for i, r in enumerate(shared) if r is raw), index_of(raw["perm"])) if any(raw is r for r in shared)
             else ("per_sample", next(i for i, r in enumerate(per_sample) if r is raw), index_of(raw["perm"]))
             for raw in layers]

    z_signs = np.empty((2**n, len(tape.measurements)))
    for j, m in enumerate(tape.measurements):
        if type(m).__name__ != "ExpectationMP" or m.obs is None or m.obs.name != "PauliZ":
            raise NotImplementedError(f"only expval(PauliZ) measurements are supported, got {m}")
        z_signs[:, j] = 1.0 - 2.0 * _bits(n)[:, int(m.wires[0])]
    measure = np.diagonal(pair) if mixed else np.arange(2**n)
    return Program(n_qubits=n, n_inputs=n_inputs, n_weights=n_weights, local_dim=d, initial_state=state,
                   shared=stack(shared), per_sample=stack(per_sample), order=order,
                   measure_index=torch.as_tensor(np.ascontiguousarray(measure)),
                   z_signs=torch.tensor(z_signs, dtype=DTYPE), readout=model.readout, uses=uses)


def probabilities(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., B, 2**n) probabilities of the measured basis states, before readout error.

    ``inputs`` (..., B, n_inputs) and ``weights`` (..., n_weights) or (..., 1, n_weights) broadcast against
    each other: e.g. inputs (S, B, I) with weights (S, 1, P) run seed s's samples with its own weights.
    """
    n, d = program.n_qubits, program.local_dim
    inputs, weights = inputs.to(DTYPE), weights.to(DTYPE)
    if inputs.dim() == 1:
        return probabilities(program, inputs[None], weights)[0]
    if weights.dim() < inputs.dim():
        weights = weights.unsqueeze(-2)
    if weights.shape[-2] != 1:  # weights per sample: each sample is its own batch of one
        return probabilities(program, inputs.unsqueeze(-2), weights.unsqueeze(-2)).squeeze(-2)
    outer = torch.broadcast_shapes(inputs.shape[:-2], weights.shape[:-2])
    batch = inputs.shape[-2]
    inputs = inputs.expand(*outer, batch, -1)
    weights = weights.expand(*outer, 1, -1).squeeze(-2)  # (*outer, P)
    eye = torch.eye(d, dtype=DTYPE, device=inputs.device)
    rot_w = _rotation(weights, d)  # (*outer, P, d, d)
    # All layers of a kind at once: each wire's matrix post @ rotation @ pre, then their Kronecker products.
    krons = {}
    if len(program.shared):  # one set per set of weights: (*outer, L, dh, dh)
        bank = torch.cat([eye.expand(*outer, 1, d, d), rot_w], dim=-3)
        krons["shared"] = _krons(_wire_matrices(program.shared, bank), n)
    if len(program.per_sample):  # one set per sample: (*outer, B, L, dh, dh)
        rot_x = _rotation(inputs, d)
        bank = torch.cat([eye.expand(*outer, batch, 1, d, d), rot_w.unsqueeze(-4).expand(*outer, batch, -1, d, d), rot_x],
                         dim=-3)
        krons["per_sample"] = _krons(_wire_matrices(program.per_sample, bank), n)
    # The state, (*outer, B * d**n), is held "by sample" (B, dh, dl) for per-sample layers and "by weights"
    # (dh, B, dl) for shared ones, where one matrix product on each side serves all B samples. Each layer starts
    # with one index that applies its CNOTs and moves the state into its layout.
    high = n // 2
    d_high, d_low = d**high, d ** (n - high)
    moves, final = _moves(program, batch, str(inputs.device))
    state = program.initial_state.to(inputs.device).expand(*outer, batch, -1).reshape(*outer, -1)
    for (kind, k, _), move in zip(program.order, moves):
        state = state.index_select(-1, move)
        k_high, k_low = krons[kind]
        if kind == "shared":
            psi = torch.matmul(k_high[..., k, :, :], state.view(*outer, d_high, batch * d_low))
            state = torch.matmul(psi.view(*outer, d_high * batch, d_low), k_low[..., k, :, :].transpose(-1, -2))
        else:
            psi = state.view(*outer, batch, d_high, d_low)
            state = torch.matmul(torch.matmul(k_high[..., k, :, :], psi), k_low[..., k, :, :].transpose(-1, -2))
        state = state.reshape(*outer, -1)
    state = state.index_select(-1, final).view(*outer, batch, d**n)
    amplitudes = state.index_select(-1, program.measure_index.to(state.device))
    return amplitudes if program.mixed else amplitudes * amplitudes  # real amplitudes: p = a**2


def _moves(program: Program, batch: int, device: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """For each layer, the index that turns the state as the previous layer left it into its CNOT-permuted
    self in this layer's layout; and the index back to "by sample" at the end (kept per batch size)."""
    cache = program.__dict__.setdefault("_moves", {})
    key = (batch, device)
    if key not in cache:
        n, d = program.n_qubits, program.local_dim
        dim, d_low = d**n, d ** (n - n // 2)
        basis, sample = torch.arange(dim), torch.arange(batch)

        def position(layout: str, i: torch.Tensor) -> torch.Tensor:
            if layout == "per_sample":  # b * dim + i
                return sample[:, None] * dim + i[None, :]
            return (i // d_low)[None, :] * (batch * d_low) + sample[:, None] * d_low + (i % d_low)[None, :]

        def to_layout(layout: str, values: torch.Tensor) -> torch.Tensor:
            out = torch.empty(batch * dim, dtype=torch.long)
            out[position(layout, basis).reshape(-1)] = values.reshape(-1)
            return out

        moves, layout = [], "per_sample"  # the start state expanded over the batch is by sample
        for kind, _, perm in program.order:
            moves.append(to_layout(kind, position(layout, basis if perm is None else perm)).to(device))
            layout = kind
        cache[key] = (moves, to_layout("per_sample", position(layout, basis)).to(device))
    return cache[key]


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
    return expectations(program, inputs, weights.reshape(1, -1))


def _wire_matrices(layers: Layers, bank: torch.Tensor) -> torch.Tensor:
    """(..., L, n, d, d): each layer's and wire's post @ rotation @ pre, the rotation picked from ``bank``."""
    device = bank.device
    rotations = bank.index_select(-3, layers.slot.to(device).reshape(-1))
    rotations = rotations.reshape(*bank.shape[:-3], *layers.slot.shape, *bank.shape[-2:])
    return layers.post.to(device) @ rotations @ layers.pre.to(device)


def _krons(matrices: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., n, d, d) -> the Kronecker products of the high wires' (0..n//2-1) and of the low wires' matrices."""
    high = n // 2
    return _kron_factor(matrices[..., :high, :, :]), _kron_factor(matrices[..., high:, :, :])


def _kron_factor(matrices: torch.Tensor) -> torch.Tensor:
    """(..., k, d, d) -> (..., d**k, d**k) by successive outer products; k = 0 gives [[1]]."""
    k = matrices.shape[-3]
    if k == 0:
        return matrices.new_ones(*matrices.shape[:-3], 1, 1)
    out = matrices[..., 0, :, :]
    for w in range(1, k):
        m = matrices[..., w, :, :]
        a, b = out.shape[-1], m.shape[-1]
        out = (out[..., :, None, :, None] * m[..., None, :, None, :]).reshape(*m.shape[:-2], a * b, a * b)
    return out


def _apply(state: torch.Tensor, perm, k_high: torch.Tensor, k_low: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """One layer on a plain state (d**n,): the CNOTs before it, then K_high . psi . K_low^T."""
    if perm is not None:
        state = state.index_select(-1, perm)
    high = n // 2
    psi = state.reshape(d**high, d ** (n - high))
    return (k_high @ psi @ k_low.T).reshape(-1)


def _rotation(theta: torch.Tensor, d: int) -> torch.Tensor:
    """RY(theta) (d=2) or its superoperator kron(RY, RY) (d=4), (..., k, d, d)."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    ry = torch.stack([c, -s, s, c], dim=-1).reshape(*theta.shape, 2, 2)
    if d == 2:
        return ry
    return (ry[..., :, None, :, None] * ry[..., None, :, None, :]).reshape(*theta.shape, 4, 4)


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


def shifted_probabilities(program: Program, inputs: torch.Tensor, weights: torch.Tensor, shift: float):
    """The outcome probabilities of every parameter-shifted copy of the circuit, for the parameter-shift rule.

    ``inputs`` (S, B, I), ``weights`` (S, P). Returns (probs (S, T, B, 2**n), params): row t of ``probs`` is
    the circuit with one rotation's angle moved by ``+shift`` (t even) or ``-shift`` (t odd), and
    ``params[t // 2]`` = ("weight" | "input", index) names the angle that rotation is fed by.

    Computed in the Heisenberg picture rather than by running T circuits: for the layer L holding the
    rotation, p_k = <O_k, L_shifted(rho)> with rho the state entering L and O_k the outcome k's projector
    carried back through the layers after L (adjoint; for a state vector, the amplitude <e_k| U_after, squared).
    The layers after the input layer are fed by weights
    only, so the O_k are per seed, not per sample, and each shifted rotation costs one layer on the B states
    and an inner product, not a whole circuit: about 4x fewer operations than T separate circuits here.
    """
    n, d = program.n_qubits, program.local_dim
    inputs, weights = inputs.to(DTYPE), weights.to(DTYPE)
    seeds, batch = inputs.shape[:2]
    n_weights = weights.shape[-1]
    dim, outcomes = d**n, 2**n
    eye = torch.eye(d, dtype=DTYPE)
    rot_w = _rotation(weights, d)  # (S, P, d, d)
    kinds = {"shared": program.shared, "per_sample": program.per_sample}
    matrices, krons = {}, {}  # kind -> (S, b, L, n, d, d) wire matrices and their (S, b, L, dh, dh) products
    if len(program.shared):
        matrices["shared"] = _wire_matrices(program.shared, torch.cat([eye.expand(seeds, 1, d, d), rot_w], dim=-3))[:, None]
    if len(program.per_sample):
        bank = torch.cat([eye.expand(seeds, batch, 1, d, d), rot_w.unsqueeze(1).expand(-1, batch, -1, -1, -1),
                          _rotation(inputs, d)], dim=-3)
        matrices["per_sample"] = _wire_matrices(program.per_sample, bank)
    for kind, m in matrices.items():
        krons[kind] = _krons(m, n)

    # Forward: the state entering each layer, its CNOTs applied, (S, B, dim); backward: the outcome projectors
    # after each layer, (S, 1 or B, outcomes, dim).
    entering, state = [], program.initial_state.expand(seeds, batch, dim)
    for kind, k, perm in program.order:
        if perm is not None:
            state = state.index_select(-1, perm)
        entering.append(state)
        state = _layer(state, krons[kind][0][:, :, k], krons[kind][1][:, :, k], n, d)
    observable = torch.zeros(outcomes, dim, dtype=DTYPE)
    observable[torch.arange(outcomes), program.measure_index] = 1.0
    observable = observable.expand(seeds, 1, outcomes, dim)
    after = [None] * len(program.order)
    for position in reversed(range(len(program.order))):
        kind, k, perm = program.order[position]
        after[position] = observable
        k_high, k_low = krons[kind][0][:, :, k], krons[kind][1][:, :, k]  # (S, b, dh, dh)
        psi = observable.reshape(*observable.shape[:-1], d ** (n // 2), -1)
        observable = torch.matmul(torch.matmul(k_high.transpose(-1, -2).unsqueeze(2), psi), k_low.unsqueeze(2))
        observable = observable.reshape(*observable.shape[:-2], dim)
        if perm is not None:
            observable = observable.index_select(-1, torch.argsort(perm))

    rows, params = [], []
    for kind, layers in kinds.items():
        # Every rotation of this kind of layer at once: (layer, wire, slot), each shifted up and down.
        where = torch.nonzero(layers.slot > 0)
        if not len(where):
            continue
        k_index, wires = where[:, 0], where[:, 1]
        slots = layers.slot[k_index, wires]
        positions = torch.as_tensor([next(p for p, (kd, kk, _) in enumerate(program.order) if kd == kind and kk == k)
                                     for k in k_index.tolist()])
        is_weight = slots <= n_weights
        params += [("weight", s - 1) if s <= n_weights else ("input", s - 1 - n_weights) for s in slots.tolist()]
        angles = torch.where(is_weight, weights[:, None, (slots - 1).clamp(max=n_weights - 1)],
                             inputs[:, :, (slots - 1 - n_weights).clamp(min=0)])  # (S, b, R)
        signs = torch.tensor([1.0, -1.0], dtype=DTYPE)
        shifted = angles[..., None] + shift * signs  # (S, b, R, 2)
        rotated = layers.post[k_index, wires][:, None] @ _rotation(shifted, d) @ layers.pre[k_index, wires][:, None]
        base = matrices[kind][:, :, k_index]  # (S, b, R, n, d, d)
        width = max(base.shape[1], rotated.shape[1])
        variant = base.unsqueeze(3).expand(seeds, width, -1, 2, -1, -1, -1).clone()  # (S, b, R, 2, n, d, d)
        rotations = torch.arange(len(wires))
        variant[:, :, rotations, :, wires] = rotated.expand(seeds, width, -1, -1, -1, -1).permute(2, 0, 1, 3, 4, 5)
        k_high, k_low = _krons(variant.flatten(2, 3), n)  # (S, b, 2R, dh, dh)
        states = torch.stack(entering, 1)[:, positions.repeat_interleave(2)]  # (S, 2R, B, dim)
        out = _layer(states, k_high.transpose(1, 2), k_low.transpose(1, 2), n, d)  # (S, 2R, B, dim)
        chosen = positions.repeat_interleave(2)
        if all(a.shape[1] == 1 for a in after):  # projectors per seed only: no copy per sample
            observables = torch.stack([a[:, 0] for a in after], 1)[:, chosen]  # (S, 2R, outcomes, dim)
            value = torch.einsum("svbd,svkd->svbk", out, observables)
        else:
            observables = torch.stack([a.expand(seeds, batch, outcomes, dim) for a in after], 1)[:, chosen]
            value = torch.einsum("svbd,svbkd->svbk", out, observables)
        rows.append(value if program.mixed else value * value)  # a state vector gives amplitudes: p = a**2
    return torch.cat(rows, dim=1), params


def _layer(state, k_high, k_low, n: int, d: int) -> torch.Tensor:
    """K_high . psi . K_low^T on states (..., B, dim) with matrices (..., 1 or B, dh, dh)."""
    psi = state.reshape(*state.shape[:-1], d ** (n // 2), -1)
    return torch.matmul(torch.matmul(k_high, psi), k_low.transpose(-1, -2)).reshape(state.shape)
