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
from tlkit.heads.statevector import basis_bits, cnot_permutation, is_identity, kron, kron_factor, layout_moves

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
            step = cnot_permutation(n, control, target)
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
        if is_identity(perm):
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
        z_signs[:, j] = 1.0 - 2.0 * basis_bits(n)[:, int(m.wires[0])]
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
    device = str(inputs.device)
    terms = _encoded_terms(program, device, merged=True)
    krons = _layer_krons(program, inputs, weights, outer, batch, per_sample=terms is None)
    # The state, (*outer, B * d**n), is held "by sample" (B, dh, dl) for per-sample layers and "by weights"
    # (dh, B, dl) for shared ones, where one matrix product on each side serves all B samples. Each layer starts
    # with one index that applies its CNOTs and moves the state into its layout.
    high = n // 2
    d_high, d_low = d**high, d ** (n - high)
    moves, final = _moves(program, batch, device)
    layers = list(zip(_merged(program), moves))
    if terms is None:
        state = program.initial_state.to(inputs.device).expand(*outer, batch, -1).reshape(*outer, -1)
    else:  # an encoding layer first: each sample's state after it (and the constant layers it absorbed) is
        # its coefficients times the constant states of _encoded_terms, one product for the batch
        state = torch.matmul(_encoding_coefficients(program, inputs, outer, batch), terms).reshape(*outer, -1)
        layers = layers[1:]
    for (position, _), move in layers:
        kind, k, _ = program.order[position]
        if move is not None:
            state = state.index_select(-1, move)
        k_high, k_low = krons[kind][0][k], krons[kind][1][k]  # the constant layers it absorbs included
        if kind == "shared":
            psi = torch.matmul(k_high, state.view(*outer, d_high, batch * d_low))
            state = torch.matmul(psi.view(*outer, d_high * batch, d_low), k_low.transpose(-1, -2))
        else:
            psi = state.view(*outer, batch, d_high, d_low)
            state = torch.matmul(torch.matmul(k_high, psi), k_low.transpose(-1, -2))
        state = state.reshape(*outer, -1)
    amplitudes = state.index_select(-1, _measured(program, final)).view(*outer, batch, -1)
    return amplitudes if program.mixed else amplitudes * amplitudes  # real amplitudes: p = a**2


def _measured(program: Program, final: torch.Tensor) -> torch.Tensor:
    """The entries read at the end of :func:`probabilities`, (B * 2**n,): the last layout move and the measured
    basis states as one index, so that the whole state is not moved only to be read in part."""
    cache = program.__dict__.setdefault("_measured", {})
    key = (final.shape[0], str(final.device))
    if key not in cache:
        cache[key] = final.view(-1, program.local_dim**program.n_qubits)[:, program.measure_index.to(final.device)].reshape(-1)
    return cache[key]


def _layer_krons(program: Program, inputs: torch.Tensor, weights: torch.Tensor, outer, batch: int,
                 per_sample: bool = True) -> dict:
    """All layers of a kind at once: each wire's matrix post @ rotation @ pre, then the Kronecker products of
    the high and of the low wires' matrices: kind -> (K_high per layer, K_low per layer), each (*outer, dh, dh)
    for the shared layers (one per set of weights; (dh, dh) for a layer without rotations), (*outer, B, dh, dh)
    for the per-sample ones. ``inputs`` (*outer, B, I), ``weights`` (*outer, P). Each layer that heads a group of
    :func:`_merged` has the constant layers it absorbs multiplied in (by weight-fed layers' constant bases, made
    once per program, where they go by angles: no product per call and none for autograd).

    The layers come as lists (``unbind``), not stacks to index: under autograd, indexing layer k of a stack has
    a backward that fills a zero copy of the whole stack, once per layer (a fifth of a noisy training step)."""
    n, d = program.n_qubits, program.local_dim
    eye = torch.eye(d, dtype=DTYPE, device=inputs.device)
    rot_w = None  # the weights' rotations (*outer, P, d, d), made only where the layers need them whole
    krons = {}
    if len(program.shared):
        # Layers without a rotation (the channels after the CNOTs) are the same for every set of weights: their
        # products are made once per program, and autograd has nothing to do for them.
        rotated, fixed = _fixed_shared(program, str(inputs.device))
        layers = Layers(program.shared.pre[rotated], program.shared.post[rotated], program.shared.slot[rotated])
        by_angles = _by_angles(program, layers)
        if by_angles:
            angles = weights.index_select(-1, (layers.slot - 1).clamp(min=0).reshape(-1).to(weights.device))
            key = ("shared", tuple(rotated.tolist()), "merged")
            made = [m.unbind(-3) for m in _krons_by_angles(program, key, layers, angles.view(*outer, *layers.slot.shape))]
        else:
            rot_w = _rotation(weights, d)
            made = [m.unbind(-3) for m in _krons(_wire_matrices(
                layers, torch.cat([eye.expand(*outer, 1, d, d), rot_w], dim=-3)), n)]
        where = {int(k): i for i, k in enumerate(rotated)}
        krons["shared"] = tuple([made[side][where[k]] if k in where else fixed[k][side] for k in range(len(program.shared))]
                                for side in (0, 1))
        _absorb(program, krons, "shared", skip=set(where) if by_angles else set())
    if len(program.per_sample) and per_sample:
        slot = program.per_sample.slot
        inputs_only = bool(((slot == 0) | (slot > program.n_weights)).all())
        if inputs_only and _by_angles(program, program.per_sample):
            krons["per_sample"] = tuple(m.unbind(-3) for m in _krons_by_angles(
                program, ("per_sample",), program.per_sample, _input_angles(program, inputs, outer, batch)))
            _absorb(program, krons, "per_sample")
            return krons
        rot_x = _rotation(inputs, d)
        if inputs_only:  # a bank without every weight's
            # rotation copied for every sample, a third of a large batch's time
            bank = torch.cat([eye.expand(*outer, batch, 1, d, d), rot_x], dim=-3)
            slot = (slot - program.n_weights).clamp(min=0)
        else:
            rot_w = _rotation(weights, d) if rot_w is None else rot_w
            bank = torch.cat([eye.expand(*outer, batch, 1, d, d), rot_w.unsqueeze(-4).expand(*outer, batch, -1, d, d),
                              rot_x], dim=-3)
        krons["per_sample"] = tuple(m.unbind(-3) for m in _krons(_wire_matrices(program.per_sample, bank, slot), n))
        _absorb(program, krons, "per_sample")
    return krons


def _absorb(program: Program, krons: dict, kind: str, skip: set = frozenset()) -> None:
    """Multiply into each layer of ``kind`` that heads a group of :func:`_merged` the constant layers it absorbs
    (in place in ``krons``), except the layers in ``skip`` (whose constant bases hold them already)."""
    heads = [program.order[p][1] for p, absorbed in _merged(program) if absorbed and program.order[p][0] == kind]
    heads = [k for k in heads if k not in skip]
    if not heads:
        return
    device = str(krons[kind][0][0].device)
    absorbed = _absorbed_stacks(program, kind, device)
    sides = [list(krons[kind][0]), list(krons[kind][1])]
    for k in heads:
        for side in (0, 1):
            sides[side][k] = torch.matmul(absorbed[side][k], sides[side][k])
    krons[kind] = (tuple(sides[0]), tuple(sides[1]))


def _fixed_shared(program: Program, device: str) -> tuple[torch.Tensor, dict]:
    """(the shared layers with a rotation, {k: (K_high, K_low)} of those without one), kept per program.

    Where the CNOTs before such a layer act within the high wires and within the low wires apart (a permutation
    ph x pl of the two halves' indices), they are folded into its matrices, K_high P_h and K_low P_l, and need
    no index step of their own: :func:`_folded_positions` names those layers."""
    cache = program.__dict__.setdefault("_fixed_shared", {})
    if device not in cache:
        layers = program.shared
        rotated = torch.nonzero((layers.slot > 0).any(-1)).view(-1)
        perms = {k: perm for kind, k, perm in program.order if kind == "shared"}
        fixed = {}
        for k in range(len(layers)):
            if k not in set(rotated.tolist()):
                k_high, k_low = _krons((layers.post[k] @ layers.pre[k]).to(device), program.n_qubits)
                halves = _halves(perms[k], k_low.shape[-1])
                if halves is not None:  # (P s)[i] = s[perm[i]]: K P has K's columns moved
                    k_high, k_low = k_high[:, _inverse(halves[0])], k_low[:, _inverse(halves[1])]
                fixed[k] = (k_high, k_low, halves is not None)
        cache[device] = (rotated, fixed)
    return cache[device]


def _folded_positions(program: Program) -> set[int]:
    """The positions in ``program.order`` whose CNOTs are folded into the layer's matrices (:func:`_fixed_shared`)."""
    _, fixed = _fixed_shared(program, "cpu")
    return {p for p, (kind, k, perm) in enumerate(program.order) if kind == "shared" and k in fixed and fixed[k][2]}


def _halves(perm: torch.Tensor | None, d_low: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ph, pl) with perm[h * dl + l] = ph[h] * dl + pl[l], if ``perm`` is such a product; else None."""
    if perm is None:
        return None
    grid = perm.view(-1, d_low)
    ph, pl = grid[:, 0] // d_low, grid[0, :] % d_low
    return (ph, pl) if bool((ph[:, None] * d_low + pl[None, :] == grid).all()) else None


def _merged(program: Program) -> list[tuple[int, list[int]]]:
    """The layers :func:`probabilities` applies: (position in ``program.order``, the positions of the constant
    layers that follow it with nothing between, folded into it), kept per program.

    Why: a layer without rotations whose CNOTs are folded into its matrices (:func:`_fixed_shared`) follows
    the layer before it directly, and (A x B)(C x D) = AC x BD: its matrices multiply the previous layer's
    (16 x 16 products per set of weights, or per sample) instead of being applied to every state. In a noisy
    circuit that is every other layer."""
    if "_merged" not in program.__dict__:
        folded = _folded_positions(program)
        merged: list[tuple[int, list[int]]] = []
        for position in range(len(program.order)):
            if position in folded and merged:
                merged[-1][1].append(position)
            else:
                merged.append((position, []))
        program.__dict__["_merged"] = merged
    return program.__dict__["_merged"]


def _moves(program: Program, batch: int, device: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`tlkit.heads.statevector.layout_moves` for the layers of :func:`_merged` (kept per batch size and
    device)."""
    cache = program.__dict__.setdefault("_moves", {})
    key = (batch, device)
    if key not in cache:
        layers = [(program.order[p][0] == "per_sample", program.order[p][2]) for p, _ in _merged(program)]
        moves, final = layout_moves(layers, program.n_qubits, program.local_dim, batch)
        # None where nothing moves (a folded layer's CNOTs, in the layout the layer before left)
        cache[key] = ([None if is_identity(m.numpy()) else m.to(device) for m in moves], final.to(device))
    return cache[key]


def apply_readout(probs: torch.Tensor, readout: float, n: int) -> torch.Tensor:
    """Each measured bit flipped with probability ``readout`` (a BitFlip before every measurement)."""
    if readout <= 0:
        return probs
    for wire in range(n):
        flip = _flip_index(n, wire, str(probs.device))
        probs = (1 - readout) * probs + readout * probs.index_select(-1, flip)
    return probs


OBSERVABLES_BATCH = 16  # from this many samples per set of weights, <Z> is read off observables carried back


def expectations(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., n_measured) exact <Z> of the noisy circuit, readout error included.

    Large batches (an evaluation split, ``predict``, ``evaluate``) take :func:`_by_observables`: the same values
    for a fraction of the work once the batch outnumbers the measured wires."""
    if program.mixed and inputs.dim() >= 2 and inputs.shape[-2] >= OBSERVABLES_BATCH and (
            weights.dim() < inputs.dim() or weights.shape[-2] == 1):
        return _by_observables(program, inputs, weights)
    probs = apply_readout(probabilities(program, inputs, weights), program.readout, program.n_qubits)
    return probs @ program.z_signs


def _by_observables(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`expectations` in the Heisenberg picture: <Z_j> = <O_j, rho_b>, with rho_b sample b's state after
    the last layer fed by inputs and O_j the measured Z_j carried back (adjoint) through the layers after it,
    which all samples share: those layers cost one pass of n_measured columns per set of weights, however
    many samples (the forward replay pushes every sample's state through every layer). Readout error scales
    each <Z_j> by 1 - 2r (its bit flipped with probability r).

    ``inputs`` (*outer, B, I); ``weights`` (*outer, P) or (*outer, 1, P), as :func:`probabilities` takes them.
    """
    n, d = program.n_qubits, program.local_dim
    inputs, weights = inputs.to(DTYPE), weights.to(DTYPE)
    if weights.dim() == inputs.dim():
        weights = weights.squeeze(-2)
    outer = torch.broadcast_shapes(inputs.shape[:-2], weights.shape[:-1])
    batch, dim = inputs.shape[-2], d**n
    inputs, weights = inputs.expand(*outer, batch, -1), weights.expand(*outer, -1)
    terms = _encoded_terms(program, str(inputs.device), merged=True)
    krons = _layer_krons(program, inputs, weights, outer, batch, per_sample=terms is None)
    # Layer by layer as :func:`probabilities` goes: the groups of _merged, each head with the constant layers it
    # absorbs (an absorbed layer's CNOTs are in its matrices; a head's, unless folded, are an index step).
    groups = _merged(program)
    folded = _folded_positions(program)
    last = max((g for g, (p, _) in enumerate(groups) if program.order[p][0] == "per_sample"), default=-1)
    state = program.initial_state.to(inputs.device).expand(*outer, batch, dim)
    for position, _ in groups[:last + 1 if terms is None else 0]:  # forward, each sample, to the last group
        # fed by inputs
        kind, k, perm = program.order[position]
        if perm is not None and position not in folded:
            state = state.index_select(-1, perm)
        k_high, k_low = krons[kind][0][k], krons[kind][1][k]
        if kind == "shared":
            k_high, k_low = k_high.unsqueeze(-3), k_low.unsqueeze(-3)
        state = _layer(state, k_high, k_low, n, d)
    observables = torch.zeros(dim, program.z_signs.shape[1], dtype=DTYPE, device=inputs.device)
    observables[program.measure_index] = program.z_signs * (1 - 2 * program.readout)
    observables = observables.expand(*outer, dim, -1)
    d_high, d_low = d ** (n // 2), d ** (n - n // 2)
    for position, _ in reversed(groups[last + 1:]):  # back, once per set of weights: L^T O = K_h^T O K_l
        kind, k, perm = program.order[position]
        k_high, k_low = krons[kind][0][k], krons[kind][1][k]
        columns = observables.shape[-1]
        x = torch.matmul(k_high.transpose(-1, -2), observables.reshape(*outer, d_high, d_low * columns))
        x = torch.matmul(x.view(*outer, d_high, d_low, columns).transpose(-1, -2), k_low.unsqueeze(-3))
        observables = x.transpose(-1, -2).reshape(*outer, dim, columns)
        if perm is not None and position not in folded:  # the CNOTs before the layer, undone: O[perm[i]] <- O[i]
            observables = observables.index_select(-2, _inverse(perm))
    if terms is None:
        return torch.matmul(state, observables)
    # <O_j, rho_b> = sum_tu a_t(b) b_u(b) <O_j, V_tu>: each sample is its encoding layer's coefficients
    return torch.matmul(_encoding_coefficients(program, inputs, outer, batch), torch.matmul(terms, observables))


def _encoding_coefficients(program: Program, inputs: torch.Tensor, outer, batch: int) -> torch.Tensor:
    """(*outer, B, T_h * T_l): each sample's coefficients a_t b_u of :func:`_encoded_terms`."""
    angles = _input_angles(program, inputs, outer, batch)
    high, low = (coeff[..., 0, :] for coeff in _angle_coefficients(program, program.per_sample, angles))
    return (high[..., :, None] * low[..., None, :]).flatten(-2)


def _input_angles(program: Program, inputs: torch.Tensor, outer, batch: int) -> torch.Tensor:
    """(*outer, B, L, n): the input angle of each per-sample layer's wire (layers fed by inputs only; a wire
    without a rotation gets input 0, which :func:`_angle_coefficients` ignores)."""
    slot = program.per_sample.slot
    index = (slot - program.n_weights - 1).clamp(min=0).reshape(-1).to(inputs.device)
    return inputs.index_select(-1, index).view(*outer, batch, *slot.shape)


def _encoded_terms(program: Program, device: str, merged: bool = False) -> torch.Tensor | None:
    """For a circuit whose inputs feed one first layer only (an encoding layer), the states V_tu = (H_t x L_u)
    rho_0 that its :func:`_angle_bases` matrices make of the start state, (T_h * T_l, dim): every sample's state
    after it is sum_tu a_t b_u V_tu with its coefficients a, b (:func:`_encoding_coefficients`). None otherwise.
    ``merged``: with the constant layers :func:`_merged` folds into the encoding layer applied too.

    Why: a sample's state after the encoding layer is then a few coefficients and one product for the whole
    batch, not its own Kronecker products and matrix products (:func:`_by_observables` needs no per-sample
    state at all: 153 evaluation rows x 10 seeds 11 -> 2 ms)."""
    if merged:
        cache = program.__dict__.setdefault("_encoded_merged", {})
        if device not in cache:
            terms = _encoded_terms(program, device)
            absorbed = _absorbed_stacks(program, "per_sample", device)
            if terms is not None and absorbed is not None:  # the encoding layer is per-sample layer 0
                f_high, f_low = absorbed[0][0], absorbed[1][0]
                terms = (f_high @ terms.view(-1, f_high.shape[0], f_low.shape[0]) @ f_low.T).reshape(terms.shape[0], -1)
            cache[device] = terms
        return cache[device]
    cache = program.__dict__.setdefault("_encoded_terms", {})
    if device not in cache:
        slot, order = program.per_sample.slot, program.order
        encoding = (len(program.per_sample) == 1 and order[0][:2] == ("per_sample", 0) and order[0][2] is None
                    and all(kind != "per_sample" for kind, _, _ in order[1:])
                    and bool(((slot == 0) | (slot > program.n_weights)).all()) and _by_angles(program, program.per_sample))
        terms = None
        if encoding:
            n, d = program.n_qubits, program.local_dim
            d_high, d_low = d ** (n // 2), d ** (n - n // 2)
            high, low = (b[0].view(-1, side, side) for b, side in
                         zip(_angle_bases(program, ("per_sample",), program.per_sample, device), (d_high, d_low)))
            start = program.initial_state.to(device).view(d_high, d_low)
            terms = torch.einsum("tij,jk,ulk->tuil", high, start, low).reshape(high.shape[0] * low.shape[0], -1)
        cache[device] = terms
    return cache[device]


@functools.lru_cache(maxsize=256)
def _inverse_cached(key: tuple) -> torch.Tensor:
    return torch.argsort(torch.tensor(key))


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    return _inverse_cached(tuple(perm.tolist())).to(perm.device)


def run(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`tlkit.heads.statevector.run`'s interface: inputs (B, I) with weights (*shape), or with a seed
    axis inputs (S, B, I) with weights (S, *shape)."""
    if inputs.dim() == 3:
        return expectations(program, inputs, weights.reshape(inputs.shape[0], 1, -1))
    return expectations(program, inputs, weights.reshape(1, -1))


def _wire_matrices(layers: Layers, bank: torch.Tensor, slot: torch.Tensor | None = None) -> torch.Tensor:
    """(..., L, n, d, d): each layer's and wire's post @ rotation @ pre, the rotation picked from ``bank`` by
    ``slot`` (the layers' own by default)."""
    device = bank.device
    slot = layers.slot if slot is None else slot
    rotations = bank.index_select(-3, slot.to(device).reshape(-1))
    rotations = rotations.reshape(*bank.shape[:-3], *slot.shape, *bank.shape[-2:])
    return layers.post.to(device) @ rotations @ layers.pre.to(device)


BY_ANGLES_ENTRIES = 1 << 14  # the most entries of one half's constant basis per layer for _krons_by_angles


def _by_angles(program: Program, layers: Layers) -> bool:
    """Whether :func:`_krons_by_angles` takes these layers: its constant bases stay small (up to 6 qubits)."""
    n, d = program.n_qubits, program.local_dim
    terms = 3 if d == 4 else 2
    return len(layers) > 0 and all(terms**k * d ** (2 * k) <= BY_ANGLES_ENTRIES for k in (n // 2, n - n // 2))


def _krons_by_angles(program: Program, key: tuple, layers: Layers, angles: torch.Tensor):
    """:func:`_krons` of ``layers``' wire matrices post @ RY(angle) @ pre, from the angles (..., L, n) (those of
    wires without a rotation are ignored), as one small product per half and layer.

    Why: RY(t) = c I + s J (c, s = cos, sin t/2), so a wire's superoperator RY x RY is c^2 I x I + cs (I x J + J x I)
    + s^2 J x J, and post @ it @ pre is linear in (c^2, cs, s^2); a state vector's wire matrix in (c, s). The
    Kronecker product of a half's wires is then linear in the products of their monomials, with constant
    matrices made once per program: a few numbers per wire and one product, instead of building every wire's
    matrix and their Kronecker products (and autograd's way back through them), which cost in proportion to
    the seeds."""
    bases = _angle_bases(program, key, layers, str(angles.device))
    out = []
    for coeff, basis in zip(_angle_coefficients(program, layers, angles), bases):
        lead = coeff.shape[:-2]
        flat = coeff.reshape(-1, *coeff.shape[-2:]).transpose(0, 1)  # (L, rows, T**k)
        k = torch.bmm(flat, basis)  # (L, rows, dk * dk)
        side = int(round(basis.shape[-1] ** 0.5))
        out.append(k.transpose(0, 1).reshape(*lead, len(layers), side, side))
    return out


def _angle_coefficients(program: Program, layers: Layers, angles: torch.Tensor) -> list[torch.Tensor]:
    """The coefficients of :func:`_angle_bases`' matrices, (..., L, T**k) for each half: the products of the
    half's wires' monomials (c^2, cs, s^2), or (c, s) for state vectors; (1, 0, ...) for a wire without a rotation."""
    n, d = program.n_qubits, program.local_dim
    c, s = torch.cos(angles / 2), torch.sin(angles / 2)
    mono = torch.stack([c * c, c * s, s * s], -1) if d == 4 else torch.stack([c, s], -1)  # (..., L, n, T)
    rotated = (layers.slot > 0).to(angles.device)[..., None]
    fixed = torch.zeros(mono.shape[-1], dtype=DTYPE, device=angles.device)
    fixed[0] = 1.0  # a wire without a rotation: its constant matrix is the first term's
    mono = torch.where(rotated, mono, fixed)
    out = []
    for wires in (range(n // 2), range(n // 2, n)):
        coeff = mono[..., wires.start, :]
        for w in wires[1:]:
            coeff = (coeff[..., :, None] * mono[..., w, None, :]).flatten(-2)  # (..., L, T**k)
        out.append(coeff)
    return out


def _angle_bases(program: Program, key: tuple, layers: Layers, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The constant matrices of :func:`_krons_by_angles`, (L, T**k, dk * dk) per half, kept per program."""
    cache = program.__dict__.setdefault("_angle_bases", {})
    if key[-1] == "merged" and (key, device) not in cache:  # shared layers' bases times the constant layers they
        # absorb (:func:`_merged`): (F B_t) are the bases of F K = sum_t a_t F B_t
        bases = [b.clone() for b in _angle_bases(program, key[:-1], layers, device)]
        absorbed = _absorbed_stacks(program, "shared", device)
        for i, k in enumerate(key[1]):
            for side, basis in enumerate(bases if absorbed is not None else ()):
                width = absorbed[side].shape[-1]
                basis[i] = (absorbed[side][k] @ basis[i].view(-1, width, width)).reshape(basis.shape[1], -1)
        cache[(key, device)] = tuple(bases)
    if (key, device) not in cache:
        n, d = program.n_qubits, program.local_dim
        eye2, j2 = torch.eye(2, dtype=DTYPE), torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=DTYPE)
        terms = ([kron(eye2, eye2), kron(eye2, j2) + kron(j2, eye2), kron(j2, j2)] if d == 4 else [eye2, j2])
        per_wire = torch.zeros(len(layers), n, len(terms), d, d, dtype=DTYPE)
        for l in range(len(layers)):
            for w in range(n):
                if layers.slot[l, w] > 0:
                    for t, term in enumerate(terms):
                        per_wire[l, w, t] = layers.post[l, w] @ term @ layers.pre[l, w]
                else:
                    per_wire[l, w, 0] = layers.post[l, w] @ layers.pre[l, w]
        bases = []
        for wires in (range(n // 2), range(n // 2, n)):
            basis = per_wire[:, wires.start]  # (L, T, d, d)
            for w in wires[1:]:
                basis = kron(basis[:, :, None], per_wire[:, w, None]).flatten(1, 2)  # (L, T**k, ., .)
            bases.append(basis.reshape(len(layers), basis.shape[1], -1).to(device))
        cache[(key, device)] = tuple(bases)
    return cache[(key, device)]


def _krons(matrices: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., n, d, d) -> the Kronecker products of the high wires' (0..n//2-1) and of the low wires' matrices."""
    high = n // 2
    return kron_factor(matrices[..., :high, :, :]), kron_factor(matrices[..., high:, :, :])


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
    return kron(ry, ry)


def _marker(op):
    """("input", i) or ("weight", k) for an RY fed by one traced input or weight; None for a fixed gate."""
    if op.name != "RY":
        return None
    marker = float(op.data[0])
    if marker != round(marker) or marker == 0:
        raise NotImplementedError(f"RY on wire {int(op.wires[0])} is fed by a computed angle, not one input or weight")
    return ("input", int(marker) - 1) if marker > 0 else ("weight", int(-marker) - 1)


def _pair_index(n: int) -> np.ndarray:
    """(2**n, 2**n): the position of rho[r, c] in the pair-ordered vector (digit 2 * r_w + c_w per wire)."""
    bits = basis_bits(n)
    digits = 2 * bits[:, None, :] + bits[None, :, :]  # (r, c, n)
    return (digits * (4 ** (n - 1 - np.arange(n)))).sum(-1)


@functools.lru_cache(maxsize=None)
def _flip_index(n: int, wire: int, device: str) -> torch.Tensor:
    return torch.as_tensor(np.arange(2**n) ^ (1 << (n - 1 - wire)), device=device)


def forward_pass(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> dict:
    """``inputs`` (S, B, I), ``weights`` (S, P): the outcome probabilities (S, B, 2**n) as :func:`probabilities`
    gives them, with what :func:`shifted_probabilities` needs of the forward pass (each layer's wire matrices and
    their Kronecker factors, the state entering each layer), so that training computes it once per step."""
    n, d = program.n_qubits, program.local_dim
    inputs, weights = inputs.to(DTYPE), weights.to(DTYPE)
    seeds, batch = inputs.shape[:2]
    dim = d**n
    eye = torch.eye(d, dtype=DTYPE)
    rot_w = _rotation(weights, d)  # (S, P, d, d)
    matrices, krons = {}, {}  # kind -> (S, b, L, n, d, d) wire matrices and their (S, b, L, dh, dh) products
    if len(program.shared):
        matrices["shared"] = _wire_matrices(program.shared, torch.cat([eye.expand(seeds, 1, d, d), rot_w], dim=-3))[:, None]
    if len(program.per_sample):
        bank = torch.cat([eye.expand(seeds, batch, 1, d, d), rot_w.unsqueeze(1).expand(-1, batch, -1, -1, -1),
                          _rotation(inputs, d)], dim=-3)
        matrices["per_sample"] = _wire_matrices(program.per_sample, bank)
    for kind, m in matrices.items():
        krons[kind] = _krons(m, n)
        absorbed = _absorbed_stacks(program, kind, str(inputs.device))
        if absorbed is not None:  # each group head of _merged with the constant layers it absorbs
            krons[kind] = tuple(torch.matmul(f, k) for f, k in zip(absorbed, krons[kind]))
    # The state entering each group of _merged (its head's CNOTs applied), (S, B, dim).
    entering, state = [], program.initial_state.expand(seeds, batch, dim)
    for position, _ in _merged(program):
        kind, k, perm = program.order[position]
        if perm is not None:
            state = state.index_select(-1, perm)
        entering.append(state)
        state = _layer(state, krons[kind][0][:, :, k], krons[kind][1][:, :, k], n, d)
    amplitudes = state.index_select(-1, program.measure_index)
    probs = amplitudes if program.mixed else amplitudes * amplitudes
    return {"matrices": matrices, "krons": krons, "entering": entering, "probs": probs}


def _absorbed_stacks(program: Program, kind: str, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
    """(F_high, F_low), (L, dh, dh) each: for every layer of ``kind`` the product of the constant layers that
    :func:`_merged` folds into it, their CNOTs folded (the identity where none); None where no layer of the kind
    absorbs any. The one place that composes them; kept per program."""
    cache = program.__dict__.setdefault("_absorbed_stacks", {})
    if (kind, device) not in cache:
        n, d = program.n_qubits, program.local_dim
        layers = program.shared if kind == "shared" else program.per_sample
        sides = [torch.eye(d ** (n // 2), dtype=DTYPE, device=device).repeat(len(layers), 1, 1),
                 torch.eye(d ** (n - n // 2), dtype=DTYPE, device=device).repeat(len(layers), 1, 1)]
        fixed, any_absorbed = _fixed_shared(program, device)[1], False
        for position, absorbed in _merged(program):
            head_kind, k, _ = program.order[position]
            for later in absorbed if head_kind == kind else ():  # in circuit order: the later ones on the left
                any_absorbed = True
                for side in (0, 1):
                    sides[side][k] = fixed[program.order[later][1]][side] @ sides[side][k]
        cache[(kind, device)] = tuple(sides) if any_absorbed else None
    return cache[(kind, device)]


def shifted_probabilities(program: Program, inputs: torch.Tensor, weights: torch.Tensor, shift: float,
                          forward: dict | None = None):
    """The outcome probabilities of every parameter-shifted copy of the circuit, for the parameter-shift rule.

    ``inputs`` (S, B, I), ``weights`` (S, P). Returns (probs (S, T, B, 2**n), params): row t of ``probs`` is
    the circuit with one rotation's angle moved by ``+shift`` (t even) or ``-shift`` (t odd), and
    ``params[t // 2]`` = ("weight" | "input", index) names the angle that rotation is fed by.

    Computed in the Heisenberg picture rather than by running T circuits: for the layer L holding the
    rotation (with the constant layers :func:`_merged` folds into it), p_k = <O_k, L_shifted(rho)> with rho the
    state entering L and O_k the outcome k's projector carried back through the layers after L (adjoint; for a
    state vector, the amplitude <e_k| U_after, squared).
    So each shifted rotation costs one layer on the B states and one product with the O_k, not a whole
    circuit. Within a layer K_high . psi . K_low^T a rotation on a high wire changes K_high only, so
    psi . K_low^T is computed once for all of them (and K_high . psi once for the low wires').

    The seed axis is a batch axis throughout, and so are the layers: all weight-fed layers' shifted copies, for
    every seed and sample, are a handful of batched products, whatever the number of seeds (no loop over seeds
    or over layers, only over the circuit's layers for the forward and backward passes). The O_k are held
    transposed, (dim, outcomes), so that both factors of a layer are plain matrix products and a CNOT is a
    gather of rows. ``forward``: :func:`forward_pass` of the same arguments, if already at hand.
    """
    n, d = program.n_qubits, program.local_dim
    inputs, weights = inputs.to(DTYPE), weights.to(DTYPE)
    seeds, batch = inputs.shape[:2]
    n_weights = weights.shape[-1]
    high = n // 2
    dim, outcomes, d_high, d_low = d**n, 2**n, d**high, d ** (n - high)
    kinds = {"shared": program.shared, "per_sample": program.per_sample}
    forward = forward_pass(program, inputs, weights) if forward is None else forward
    matrices, krons, entering = forward["matrices"], forward["krons"], forward["entering"]
    tables = _shift_tables(program)
    # Backward: the outcome projectors after each group of _merged (a layer with the constant layers it absorbs),
    # transposed: (S, 1 or B, dim, outcomes), rows (high, low).
    groups = _merged(program)
    observable = tables["selector"].expand(seeds, 1, dim, outcomes)
    after = [None] * len(groups)
    for group in reversed(range(len(groups))):
        after[group] = observable
        if group == 0:
            break
        position = groups[group][0]
        kind, k, _ = program.order[position]
        k_high, k_low = krons[kind][0][:, :, k], krons[kind][1][:, :, k]  # (S, b, dh, dh)
        x = torch.matmul(k_high.transpose(-1, -2), observable.reshape(seeds, -1, d_high, d_low * outcomes))
        x = x.view(seeds, -1, d_high, d_low, outcomes).transpose(2, 3).reshape(seeds, -1, d_low, d_high * outcomes)
        x = torch.matmul(k_low.transpose(-1, -2), x)  # K_high^T O K_low, rows (low, high)
        observable = x.view(seeds, -1, dim, outcomes).index_select(2, tables["back"][position])  # CNOTs undone

    signs = torch.tensor([1.0, -1.0], dtype=DTYPE)
    rows, params = [], []
    for kind, layers in kinds.items():
        chosen, where = tables["rotated_layers"][kind], tables["rotations"][kind]  # layers with a rotation; (R, 2)
        if not len(where):
            continue
        slot, pre, post = layers.slot[chosen], layers.pre[chosen], layers.post[chosen]
        slots = slot[where[:, 0], where[:, 1]]
        params += [("weight", s - 1) if s <= n_weights else ("input", s - 1 - n_weights) for s in slots.tolist()]
        n_layers = len(chosen)
        # Every wire of every such layer shifted up and down (wires without a rotation: discarded at the end).
        if bool((slot > n_weights).any()):
            pool = torch.cat([weights[:, None].expand(-1, batch, -1), inputs], dim=-1)  # (S, B, P + I)
        else:
            pool = weights[:, None]  # (S, 1, P)
        angles = pool[..., (slot - 1).clamp(min=0).view(-1)].view(seeds, -1, n_layers, n)
        rotated = post[:, :, None] @ _rotation(angles[..., None] + shift * signs, d) @ pre[:, :, None]
        base = matrices[kind][:, :, chosen]  # (S, b, L, n, d, d); rotated (S, b', L, n, 2, d, d)
        absorbed = _absorbed_stacks(program, kind, str(inputs.device))  # the constant layers each absorbs, after it
        width = max(base.shape[1], rotated.shape[1])
        headed = tables["groups"][kind]  # the group of _merged each of these layers heads
        rho = torch.stack([entering[g] for g in headed], 1).view(seeds, n_layers, batch, d_high, d_low)
        observables = torch.stack([after[g] for g in headed], 1)  # (S, L, 1 or B, dim, outcomes)
        k_high, k_low = krons[kind][0][:, :, chosen], krons[kind][1][:, :, chosen]  # (S, b, L, dh, dh), (.., dl, dl)
        values = []
        for wires in (range(high), range(high, n)):  # the high wires' shifts, then the low wires'
            half = base[:, :, :, wires.start:wires.stop]  # (S, b, L, h, d, d)
            h = len(wires)
            variant = half[:, :, :, None, None].expand(seeds, width, n_layers, h, 2, h, d, d).clone()
            own = torch.arange(h)
            variant[:, :, :, own, :, own] = rotated[:, :, :, wires.start:wires.stop] \
                .expand(seeds, width, n_layers, h, 2, d, d).permute(3, 0, 1, 2, 4, 5, 6)
            factor = kron_factor(variant.flatten(3, 4))  # (S, b, L, V = 2h, ., .): the half's product per variant
            in_high = wires.start == 0
            if absorbed is not None:
                factor = torch.matmul(absorbed[0 if in_high else 1][chosen][:, None], factor)
            if width == 1:  # one matrix per seed, layer and variant: one product serves all variants and samples
                factor = factor[:, 0]  # (S, L, V, ., .)
                if in_high:  # [K'_high; ...] . (psi . K_low^T), psi . K_low^T held (S, L, dh, B * dl)
                    right = torch.matmul(rho, k_low[:, 0, :, None].transpose(-1, -2)).transpose(2, 3)
                    out = torch.matmul(factor.reshape(seeds, n_layers, -1, d_high),
                                       right.reshape(seeds, n_layers, d_high, batch * d_low))
                    out = out.view(seeds, n_layers, -1, d_high, batch, d_low).transpose(3, 4)
                else:  # (K_high . psi) . [K'_low^T ...], K_high . psi held (S, L, B * dh, dl)
                    left = torch.matmul(k_high[:, 0, :, None], rho).reshape(seeds, n_layers, batch * d_high, d_low)
                    columns = factor.permute(0, 1, 4, 2, 3).reshape(seeds, n_layers, d_low, -1)  # K'^T side by side
                    out = torch.matmul(left, columns).view(seeds, n_layers, batch * d_high, -1, d_low).transpose(2, 3)
            else:  # matrices per sample: (S, L, V, B, ., .)
                factor = factor.permute(0, 2, 3, 1, 4, 5)
                if in_high:
                    out = torch.matmul(factor, torch.matmul(rho, k_low.transpose(1, 2).transpose(-1, -2)).unsqueeze(2))
                else:
                    out = torch.matmul(torch.matmul(k_high.transpose(1, 2), rho).unsqueeze(2), factor.transpose(-1, -2))
            out = out.reshape(seeds, n_layers, -1, batch, dim)  # (S, L, V, B, dim)
            if observables.shape[2] == 1:  # projectors per seed: one product for all variants and samples
                value = torch.matmul(out.view(seeds, n_layers, -1, dim), observables[:, :, 0])
            else:
                value = torch.matmul(out.unsqueeze(-2), observables.unsqueeze(2)).squeeze(-2)
            values.append(value.view(seeds, n_layers, h, 2, batch, outcomes))
        value = torch.cat(values, dim=2)[:, where[:, 0], where[:, 1]]  # (S, R, 2, B, K): wire order
        value = value.reshape(seeds, -1, batch, outcomes)
        rows.append(value if program.mixed else value * value)  # a state vector gives amplitudes: p = a**2
    return torch.cat(rows, dim=1), params


def _shift_tables(program: Program) -> dict:
    """Index tables of :func:`shifted_probabilities`, kept per program."""
    cache = program.__dict__.setdefault("_shift_tables", {})
    if not cache:
        n, d = program.n_qubits, program.local_dim
        dim, outcomes, d_high, d_low = d**n, 2**n, d ** (n // 2), d ** (n - n // 2)
        selector = torch.zeros(dim, outcomes, dtype=DTYPE)
        selector[program.measure_index, torch.arange(outcomes)] = 1.0
        back = []
        for _, _, perm in program.order:
            inverse = torch.arange(dim) if perm is None else torch.argsort(perm)
            back.append((inverse % d_low) * d_high + inverse // d_low)  # rows (low, high) -> (high, low), CNOTs undone
        kinds = {"shared": program.shared, "per_sample": program.per_sample}
        cache.update(
            selector=selector, back=back,
            rotated_layers={kind: torch.nonzero((layers.slot > 0).any(-1)).view(-1) for kind, layers in kinds.items()},
            rotations={kind: torch.nonzero(layers.slot[(layers.slot > 0).any(-1)] > 0) for kind, layers in kinds.items()},
            groups={kind: [next(g for g, (p, _) in enumerate(_merged(program)) if program.order[p][:2] == (kind, k))
                           for k in torch.nonzero((layers.slot > 0).any(-1)).view(-1).tolist()]
                    for kind, layers in kinds.items()},  # the group of _merged each rotated layer heads
        )
    return cache


def _layer(state, k_high, k_low, n: int, d: int) -> torch.Tensor:
    """K_high . psi . K_low^T on states (..., B, dim) with matrices (..., 1 or B, dh, dh)."""
    psi = state.reshape(*state.shape[:-1], d ** (n // 2), -1)
    return torch.matmul(torch.matmul(k_high, psi), k_low.transpose(-1, -2)).reshape(state.shape)
