"""A batched torch state-vector simulator for circuits traced from PennyLane.

Why: PennyLane's ``default.qubit`` pays a fixed Python cost per execution
(building the tape, transforms, dispatch) that dwarfs the arithmetic of a
few-qubit circuit, so at batch size 4 training time is all overhead. Here the
PennyLane circuit function is traced *once* into a short program, which is
then replayed with a few dozen torch ops per batch; autograd gives the
gradients. The program is read off the PennyLane tape, so it is the same
circuit by construction, and the tests check its outputs and gradients
against a ``default.qubit`` QNode.

The program: a start state (the leading gates that depend on no input or
weight, applied once), then *layers* of single-qubit gates on distinct wires,
each turned into a full 2**n x 2**n matrix (the Kronecker product of its
gates, identity on idle wires, CNOTs just before it folded in as a column
permutation). All weight-only layers are built in one batch of tensor ops;
layers fed by inputs are built per sample.

Many seeds at once (:mod:`tlkit.train.seeds`): ``run`` also takes a leading
seed axis, inputs (seeds, B, n_inputs) and weights (seeds, *weight_shape),
each seed with its own weights. Training a hundred seeds in about the time
of a few is the point there, and with autograd recording every gate op the
step is dominated by its bookkeeping and by the backward of the Kronecker
products (broadcast multiplies whose gradients are slow reductions). So up to
:data:`SEED_AXIS_QUBITS` qubits the seed-axis path is one autograd function
with its gradient written out (:class:`_SeedCircuit`):

* forward: the CNOTs before a layer are one index on the state; each
  weight-only layer is then one 2**n x 2**n matrix per seed, applied to all
  of a seed's samples by one batched product; a layer fed by inputs is
  K_high x K_low per sample (its high wires' gates and its low wires'),
  applied to the state held as a 2**h x 2**(n-h) matrix psi as
  K_high . psi . K_low^T;
* backward: the adjoint state goes back through the same products, and the
  gradient of every RY angle comes without differentiating any Kronecker
  product: dRY(t)/dt = RY(t) . J / 2 with J = [[0, -1], [1, 0]] (J commutes
  with RY), so for a layer K applied to phi, d out / d t_w = <K^T lambda,
  J_w phi> / 2, and J on wire w is a signed permutation of the basis. With
  the adjoint K^T lambda already at hand, every angle of a layer is one
  gather, one product and one sum (for the weight layers of all seeds at
  once: the batch-summed outer products lambda^T phi, then a gather).

Measured here on the 4-qubit head's circuit (batch 4, forward and backward),
this is about 3x faster at 100 seeds than the same seed axis through
autograd, and 10 seeds take about 1.4x the time of one. Beyond :data:`SEED_AXIS_QUBITS` qubits the full per-seed
layer matrices would be large, and the autograd path below
(:func:`_run_seeds_factored`) is used: K_high . psi . K_low^T for every
layer, the CNOTs as one index per layer. Same circuit, same numbers either
way (float64; the tests compare both with the one-seed path, outputs and
gradients). ``torch.vmap`` over the one-seed path also works, but is
several times slower at 100 seeds.

Supported (all real-valued, so amplitudes stay real): Hadamard, RY and CNOT
gates, ``expval(PauliZ)`` measurements. Anything else raises
:class:`NotImplementedError`; callers then run a PennyLane QNode instead.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64  # the precision of default.qubit's state vector
MAX_QUBITS = 10  # full layer matrices are 4**n entries each
SEED_AXIS_QUBITS = 6  # up to here the seed axis keeps a full layer matrix per seed (4**6 entries: 32 KiB)

_FIXED_GATES = {"Identity": np.eye(2), "Hadamard": np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)}
_IDENTITY = 0  # index of the identity in the gate bank


@dataclass
class Program:
    """A traced circuit, ready to run on batches."""

    n_qubits: int
    n_inputs: int
    n_weights: int
    initial_state: torch.Tensor  # (2**n,)
    fixed_bank: torch.Tensor  # (F, 2, 2): identity, then every fixed gate
    # Gates are indices into the bank [fixed gates | RY(weight 0..P-1) | RY(input 0..I-1)].
    shared_gates: torch.Tensor  # (S, n) bank index per wire of each weight-only layer
    shared_unperm: torch.Tensor  # (S, 2**n) column order folding in the CNOTs before each layer
    input_gates: torch.Tensor  # (X, n) the same for layers fed by inputs
    input_unperm: torch.Tensor  # (X, 2**n)
    order: list[tuple[str, int]]  # ("shared", s) or ("input", x), in circuit order
    z_signs: torch.Tensor  # (2**n, n_measured): eigenvalue of each measured PauliZ, final CNOTs folded in

    def on(self, device: torch.device) -> "Program":
        """This program with its tensors on ``device`` (copies kept, one per device)."""
        if self.initial_state.device == device:
            return self
        copies = self.__dict__.setdefault("_copies", {})
        if device not in copies:
            copies[device] = dataclasses.replace(self, **{
                f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)})
        return copies[device]

    def seed_moves(self, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The state indices the seed-axis path uses for ``batch`` samples (kept per batch size)."""
        cache = self.__dict__.setdefault("_seed_moves", {})
        if batch not in cache:
            cache[batch] = _seed_moves(self, batch)
        return cache[batch]

    @functools.cached_property
    def shared_perm(self) -> torch.Tensor:
        """(S, 2**n): the CNOTs before each weight-only layer as an index on the state, state[perm]."""
        return torch.argsort(self.shared_unperm, dim=-1)

    @functools.cached_property
    def input_perm(self) -> torch.Tensor:
        return torch.argsort(self.input_unperm, dim=-1)


def trace(circuit, n_inputs: int, weight_shape: tuple[int, ...]) -> Program:
    """Record ``circuit(inputs, weights)`` once and compile it into a :class:`Program`.

    Each input and weight is given a distinct marker value, so the recorded
    gate parameters say which input or weight feeds each gate. Programs are
    kept per (circuit, shapes): a hundred seeds' modules share one (a trace
    costs milliseconds; a program is only read).
    """
    return _trace(circuit, int(n_inputs), tuple(int(d) for d in weight_shape))


@functools.lru_cache(maxsize=32)
def _trace(circuit, n_inputs: int, weight_shape: tuple[int, ...]) -> Program:
    import pennylane as qml

    n_weights = int(np.prod(weight_shape))
    inputs = np.arange(1, n_inputs + 1, dtype=np.float64)  # markers 1, 2, ...
    weights = -np.arange(1, n_weights + 1, dtype=np.float64).reshape(weight_shape)  # markers -1, -2, ...
    tape = qml.tape.make_qscript(circuit)(inputs, weights)
    wires = sorted({int(w) for op in tape.operations for w in op.wires} | {int(w) for m in tape.measurements for w in m.wires})
    n = len(wires)
    if wires != list(range(n)) or n > MAX_QUBITS:
        raise NotImplementedError(f"the torch simulator takes wires 0..n-1 with n <= {MAX_QUBITS}, got {wires}")

    fixed_names = list(_FIXED_GATES)
    # Each layer: {wire: ("fixed", name) | ("weight", k) | ("input", i)}, and the permutation before it.
    layers: list[tuple[np.ndarray, dict]] = []
    pending_perm = np.arange(2**n)
    for op in tape.operations:
        if op.name == "CNOT":
            pending_perm = pending_perm[cnot_permutation(n, int(op.wires[0]), int(op.wires[1]))]
            continue
        wire, gate = _single_qubit_gate(op)
        if gate[0] == "fixed" and gate[1] not in fixed_names:
            fixed_names.append(gate[1])
        open_layer = layers and is_identity(pending_perm) and wire not in layers[-1][1]
        if open_layer:
            layers[-1][1][wire] = gate
        else:
            layers.append((pending_perm, {wire: gate}))
            pending_perm = np.arange(2**n)

    # Fold leading layers that depend on nothing into the start state.
    state = np.zeros(2**n)
    state[0] = 1.0
    while layers and all(g[0] == "fixed" for g in layers[0][1].values()):
        perm, gates = layers.pop(0)
        state = _apply_fixed(state[perm], gates, n)
    if not layers:
        state = state[pending_perm]
        pending_perm = np.arange(2**n)

    fixed_bank = np.stack([_FIXED_GATES[name] for name in fixed_names])

    def slot(gate) -> int:
        kind, key = gate
        if kind == "fixed":
            return fixed_names.index(key)
        return len(fixed_names) + (key if kind == "weight" else n_weights + key)

    shared, inputs_, order = [], [], []
    for perm, gates in layers:
        row = [slot(gates[w]) if w in gates else _IDENTITY for w in range(n)]
        target = inputs_ if any(g[0] == "input" for g in gates.values()) else shared
        order.append(("input" if target is inputs_ else "shared", len(target)))
        target.append((row, np.argsort(perm)))

    z_signs = np.empty((2**n, len(tape.measurements)))
    for j, m in enumerate(tape.measurements):
        if type(m).__name__ != "ExpectationMP" or m.obs is None or m.obs.name != "PauliZ":
            raise NotImplementedError(f"only expval(PauliZ) measurements are supported, got {m}")
        z_signs[:, j] = 1.0 - 2.0 * basis_bits(n)[:, int(m.wires[0])]
    z_signs = z_signs[np.argsort(pending_perm)]  # measuring state[perm] = measuring state with permuted signs

    def index(rows):
        return torch.tensor([r for r, _ in rows], dtype=torch.long).reshape(len(rows), n)

    def unperm(rows):
        return torch.tensor(np.array([u for _, u in rows]), dtype=torch.long).reshape(len(rows), 2**n)

    return Program(
        n_qubits=n, n_inputs=n_inputs, n_weights=n_weights,
        initial_state=torch.tensor(state, dtype=DTYPE), fixed_bank=torch.tensor(fixed_bank, dtype=DTYPE),
        shared_gates=index(shared), shared_unperm=unperm(shared),
        input_gates=index(inputs_), input_unperm=unperm(inputs_),
        order=order, z_signs=torch.tensor(z_signs, dtype=DTYPE),
    )


def run(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Expectation values (batch, n_measured) in float64 for ``inputs`` (batch, n_inputs).

    With a seed axis, ``inputs`` (seeds, batch, n_inputs) and ``weights``
    (seeds, *weight_shape) give (seeds, batch, n_measured): seed s runs
    ``inputs[s]`` with ``weights[s]``.
    """
    if inputs.dim() == 3:
        return _run_seeds(program, inputs, weights)
    batch, dim = inputs.shape[0], 2**program.n_qubits
    # One RY evaluation for every weight and input angle (fewer, larger ops: the cost here is per op).
    rotations = ry_matrix(torch.cat([weights.reshape(-1), inputs.reshape(-1)]).to(DTYPE))
    bank = torch.cat([program.fixed_bank, rotations[: program.n_weights]])  # gates shared by all samples
    shared = _layer_matrices(bank[program.shared_gates], program.shared_unperm)  # (S, dim, dim)
    per_sample = None
    if len(program.input_gates):
        input_rotations = rotations[program.n_weights:].reshape(batch, program.n_inputs, 2, 2)
        sample_bank = torch.cat([bank.expand(batch, -1, -1, -1), input_rotations], dim=1)
        per_sample = _layer_matrices(sample_bank[:, program.input_gates], program.input_unperm)  # (B, X, dim, dim)
    state = program.initial_state.expand(batch, dim)
    for kind, k in program.order:
        if kind == "shared":
            state = state @ shared[k].T
        else:
            state = (per_sample[:, k] @ state.unsqueeze(-1)).squeeze(-1)
    return (state * state) @ program.z_signs  # real amplitudes: probability = amplitude**2


def _run_seeds(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``run`` with a leading seed axis (see the module docstring)."""
    seeds = inputs.shape[0]
    program = program.on(inputs.device)
    if weights.numel() != seeds * program.n_weights:
        raise ValueError(f"weights {tuple(weights.shape)} do not hold {program.n_weights} weights for each of {seeds} seeds")
    if program.n_qubits > SEED_AXIS_QUBITS:
        return _run_seeds_factored(program, inputs, weights)
    return _SeedCircuit.apply(program, inputs.to(DTYPE), weights.to(DTYPE).reshape(seeds, -1))


class _SeedCircuit(torch.autograd.Function):
    """The circuit on (seeds, batch) inputs with its gradient written out; see the module docstring.

    ``forward(program, inputs (S, B, n_inputs) float64, weights (S, n_weights) float64)`` ->
    (S, B, n_measured). Intermediate states are kept for the backward pass (a few per layer: small).
    """

    @staticmethod
    def forward(ctx, program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        seeds, batch = inputs.shape[:2]
        n, dim = program.n_qubits, 2**program.n_qubits
        high = n // 2
        d_high, d_low = 2**high, 2 ** (n - high)
        tables = _gradient_tables(program)
        bank = torch.cat([program.fixed_bank.expand(seeds, -1, -1, -1), ry_matrix(weights)], dim=1)  # (S, F + P, 2, 2)
        layers_t = None
        if len(program.shared_gates):
            # Transposed gates give the transposed Kronecker product K^T, so that a layer is new_state =
            # state[perm] @ K^T: one batched product. (layers, S, dim, dim): each layer's block contiguous.
            layers_t = _kron_contiguous(bank.transpose(-1, -2)[:, program.shared_gates].transpose(0, 1), high)
        input_rot = ry_matrix(inputs) if len(program.input_gates) else None  # (S, B, n_inputs, 2, 2)
        state = program.initial_state.expand(seeds, batch, dim)
        before_shared, before_input = [], []
        for kind, k in program.order:
            if kind == "shared":
                if not tables["shared_perm_is_identity"][k]:  # the CNOTs before the layer
                    state = state.index_select(2, program.shared_perm[k])
                before_shared.append(state)
                state = torch.bmm(state, layers_t[k])
                continue
            gates = _input_layer_gates(program, k, bank, input_rot, tables)  # (S, B, n, 2, 2)
            k_high = kron_factor(gates[:, :, :high]).reshape(seeds * batch, d_high, d_high)
            k_low = kron_factor(gates[:, :, high:]).reshape(seeds * batch, d_low, d_low)
            if not tables["input_perm_is_identity"][k]:
                state = state[..., program.input_perm[k]]
            phi = state.reshape(seeds * batch, d_high, d_low)
            before_input.append((phi, k_high, k_low))
            state = torch.bmm(torch.bmm(k_high, phi), k_low.transpose(1, 2)).reshape(seeds, batch, dim)
        ctx.program, ctx.layers_t, ctx.final = program, layers_t, state
        ctx.before_shared, ctx.before_input = before_shared, before_input
        return (state * state) @ program.z_signs  # real amplitudes: probability = amplitude**2

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        program, layers_t = ctx.program, ctx.layers_t
        seeds, batch, dim = ctx.final.shape
        n = program.n_qubits
        tables = _gradient_tables(program)
        adjoint = 2 * ctx.final * (grad_out @ program.z_signs.T)  # d loss / d final state, (S, B, dim)
        d_weights = adjoint.new_zeros(seeds, program.n_weights)
        d_inputs = adjoint.new_zeros(seeds, batch, program.n_inputs) if program.n_inputs else None
        after_shared = [None] * len(program.shared_gates)
        before_input = list(ctx.before_input)
        for kind, k in reversed(program.order):
            if kind == "shared":
                adjoint = torch.bmm(adjoint, layers_t[k].transpose(1, 2))  # d loss / d the state the layer was given
                after_shared[k] = adjoint
                if not tables["shared_perm_is_identity"][k]:
                    adjoint = adjoint.index_select(2, program.shared_unperm[k])
                continue
            phi, k_high, k_low = before_input.pop()
            adjoint = torch.bmm(torch.bmm(k_high.transpose(1, 2), adjoint.reshape(phi.shape)), k_low)
            flat_phi, flat_adjoint = phi.reshape(seeds * batch, dim), adjoint.reshape(seeds * batch, dim)
            d_angle = 0.5 * (flat_phi[:, tables["flip"]].view(-1, n, dim) * tables["flip_sign"]
                             * flat_adjoint.unsqueeze(1)).sum(-1).view(seeds, batch, n)
            source = tables["input_sources"][k]
            d_inputs.index_add_(2, source["inputs"], d_angle.index_select(2, source["input_wires"]))
            if len(source["weights"]):
                d_weights.index_add_(1, source["weights"], d_angle.index_select(2, source["weight_wires"]).sum(1))
            adjoint = flat_adjoint.view(seeds, batch, dim)
            if not tables["input_perm_is_identity"][k]:
                adjoint = adjoint[..., program.input_unperm[k]]
        if layers_t is not None:
            # Every weight layer's angles at once: the batch-summed outer products sum_b adjoint_b[j] state_b[i]
            # of all layers in one product, then for each wire the pairs (j, J-partner of j) with their signs.
            layers = len(after_shared)
            outer = torch.matmul(torch.stack(after_shared, 1).transpose(-1, -2), torch.stack(ctx.before_shared, 1))
            pairs = outer.view(seeds, layers, dim * dim).index_select(2, tables["pairs"])  # (S, layers, n * dim)
            d_angle = 0.5 * (pairs.view(seeds, layers * n, dim) * tables["flip_sign"].repeat(layers, 1)).sum(-1)
            d_weights.index_add_(1, tables["shared_weight"], d_angle.index_select(1, tables["shared_weight_slot"]))
        return None, d_inputs, d_weights


def _kron_contiguous(gates: torch.Tensor, high: int) -> torch.Tensor:
    """(..., n, 2, 2) -> (..., 2**n, 2**n), contiguous: the Kronecker product of the high wires' gates
    (0..high-1) and of the low wires', then of the two, written straight into its own memory (a broadcast
    product would come out strided and cost a copy to reshape)."""
    k_high, k_low = kron_factor(gates[..., :high, :, :]), kron_factor(gates[..., high:, :, :])
    d_high, d_low = k_high.shape[-1], k_low.shape[-1]
    lead = gates.shape[:-3]
    out = torch.empty(*lead, d_high, d_low, d_high, d_low, dtype=gates.dtype, device=gates.device)
    torch.mul(k_high[..., :, None, :, None], k_low[..., None, :, None, :], out=out)
    return out.view(*lead, d_high * d_low, d_high * d_low)


def _input_layer_gates(program: Program, k: int, bank: torch.Tensor, input_rot: torch.Tensor, tables: dict):
    """(S, B, n, 2, 2): each wire's gate in input layer k, per seed and sample (an input's RY, or the
    seed's own fixed or weight gate)."""
    gates = program.input_gates[k]
    n_bank = bank.shape[1]
    if tables["input_layer_all_inputs"][k]:
        return input_rot[:, :, gates - n_bank]
    from_input = gates >= n_bank
    return torch.where(from_input[None, None, :, None, None], input_rot[:, :, (gates - n_bank).clamp(min=0)],
                       bank[:, gates.clamp(max=n_bank - 1)].unsqueeze(1))


def _gradient_tables(program: Program) -> dict:
    """Index tables of :class:`_SeedCircuit`, kept per program (and device)."""
    cache = program.__dict__.setdefault("_gradient_tables", {})
    if not cache:
        n, dim = program.n_qubits, 2**program.n_qubits
        flip, sign = _j_pairs(n)
        flip, sign = flip.reshape(n, dim), sign.reshape(n, dim)
        fixed = program.fixed_bank.shape[0]
        shared_gates = program.shared_gates.cpu()
        is_weight = ((shared_gates >= fixed) & (shared_gates < fixed + program.n_weights)).reshape(-1)
        device = program.initial_state.device
        as_index = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
        sources = []
        for gates in program.input_gates.cpu():
            n_bank = fixed + program.n_weights
            from_input, from_weight = gates >= n_bank, (gates >= fixed) & (gates < n_bank)
            sources.append(dict(inputs=(gates - n_bank)[from_input].to(device),
                                input_wires=torch.nonzero(from_input).view(-1).to(device),
                                weights=(gates - fixed)[from_weight].to(device),
                                weight_wires=torch.nonzero(from_weight).view(-1).to(device)))
        cache.update(
            flip=as_index(flip.reshape(-1)),
            flip_sign=torch.as_tensor(sign, dtype=DTYPE, device=device),  # (n, dim)
            # entries (j, J-partner of j) of a (dim, dim) outer product, wire by wire
            pairs=as_index((np.arange(dim) * dim + flip).reshape(-1)),
            shared_perm_is_identity=[bool(torch.equal(p.cpu(), torch.arange(dim))) for p in program.shared_perm],
            shared_weight=(shared_gates.reshape(-1) - fixed)[is_weight].to(device),
            shared_weight_slot=torch.nonzero(is_weight).view(-1).to(device),
            input_perm_is_identity=[bool(torch.equal(p.cpu(), torch.arange(dim))) for p in program.input_perm],
            input_layer_all_inputs=[bool((g >= fixed + program.n_weights).all()) for g in program.input_gates.cpu()],
            input_sources=sources,
        )
    return cache


def _j_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each wire w and basis state i: (J_w psi)[i] = sign[w, i] * psi[flip[w, i]], J = [[0, -1], [1, 0]];
    both flattened to (n * 2**n,)."""
    index = np.arange(2**n)
    flip = np.stack([index ^ (1 << (n - 1 - w)) for w in range(n)])
    sign = np.where(basis_bits(n).T == 0, -1.0, 1.0)
    return flip.reshape(-1), sign.reshape(-1)


def _run_seeds_factored(program: Program, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``run`` with a leading seed axis through autograd, for circuits beyond :data:`SEED_AXIS_QUBITS` qubits."""
    seeds, batch = inputs.shape[:2]
    n = program.n_qubits
    high = n // 2
    d_high, d_low = 2**high, 2 ** (n - high)
    bank = torch.cat([program.fixed_bank.expand(seeds, -1, -1, -1),
                      ry_matrix(weights.reshape(seeds, -1).to(DTYPE))], dim=1)  # (S, F + P, 2, 2)
    gates = bank[:, program.shared_gates].transpose(0, 1)  # (L, S, n, 2, 2)
    shared_high = kron_factor(gates[..., :high, :, :])  # (L, S, dh, dh)
    shared_low_t = kron_factor(gates[..., high:, :, :]).transpose(-1, -2)  # (L, S, dl, dl)
    if len(program.input_gates):
        # Each input layer's gate per wire is one of the seed's own (fixed or weight) or an input rotation;
        # choosing with `where` keeps the per-sample gate bank (and its gradient) small.
        n_bank = bank.shape[1]
        from_input = program.input_gates >= n_bank
        input_rot = ry_matrix(inputs.to(DTYPE))  # (S, B, I, 2, 2)
        gates = torch.where(from_input[:, None, None, :, None, None],
                            input_rot[:, :, (program.input_gates - n_bank).clamp(min=0)].permute(2, 0, 1, 3, 4, 5),
                            bank[:, program.input_gates.clamp(max=n_bank - 1)].transpose(0, 1).unsqueeze(2))
        input_high = kron_factor(gates[..., :high, :, :]).flatten(1, 2)  # (X, S*B, dh, dh)
        input_low_t = kron_factor(gates[..., high:, :, :]).transpose(-1, -2).flatten(1, 2)  # (X, S*B, dl, dl)
    # The state is a dh x dl matrix psi per sample; a layer is K_high . psi . K_low^T. Weight-only layers
    # hold it "by seed", (S, dh, B * dl), so each factor is one bmm over a seed's samples together;
    # per-sample layers hold it "by sample", (S * B, dh, dl). Each layer starts with one index that
    # applies its CNOTs and moves the state into its layout.
    moves, final = program.seed_moves(batch)
    state = program.initial_state.expand(seeds, batch, -1).reshape(seeds, -1)
    for (kind, k), move in zip(program.order, moves):
        state = state.index_select(1, move)
        if kind == "shared":
            psi = torch.bmm(state.view(seeds, d_high * batch, d_low), shared_low_t[k])
            state = torch.bmm(shared_high[k], psi.view(seeds, d_high, batch * d_low)).view(seeds, -1)
        else:
            psi = torch.bmm(input_high[k], state.view(seeds * batch, d_high, d_low))
            state = torch.bmm(psi, input_low_t[k]).view(seeds, -1)
    state = state.index_select(1, final).view(seeds, batch, -1)
    return (state * state) @ program.z_signs


def _seed_moves(program: Program, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`layout_moves` for this program's layers (input layers by sample, weight-only layers by seed)."""
    layers = [(kind == "input", (program.shared_perm if kind == "shared" else program.input_perm)[k].cpu())
              for kind, k in program.order]
    moves, final = layout_moves(layers, program.n_qubits, 2, batch)
    device = program.initial_state.device
    return [m.to(device) for m in moves], final.to(device)


def layout_moves(layers, n_qubits: int, local_dim: int, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The state indices of a batched replay on ``local_dim``-level wires (2: state vectors, 4: density
    matrices held as vectors), one home for both simulators.

    The states of ``batch`` samples, local_dim**n entries each with the wires split into a high and a low half
    (dh x dl), are held "by sample", (B, dh, dl), for a layer with one matrix per sample, and "by weights",
    (dh, B, dl), for a layer whose matrices all samples share, where one matrix product on each side serves
    the whole batch. ``layers``: for each layer, (by_sample, perm), perm the CNOTs before it as an index on
    one state (``state[perm]``; None for none). Returns, for each layer, the index that turns the state as the
    previous layer left it into its CNOT-permuted self in this layer's layout, and the index back to "by
    sample" at the end. The start state (one state expanded over the batch) is by sample.
    """
    dim = local_dim**n_qubits
    d_low = local_dim ** (n_qubits - n_qubits // 2)
    basis, sample = torch.arange(dim), torch.arange(batch)

    def position(by_sample: bool, i: torch.Tensor) -> torch.Tensor:
        """(B, len(i)): where entry i[j] of sample b sits in the flat batch of states, for a layout."""
        if by_sample:  # b * dim + i
            return sample[:, None] * dim + i[None, :]
        return (i // d_low)[None, :] * (batch * d_low) + sample[:, None] * d_low + (i % d_low)[None, :]

    def to_layout(by_sample: bool, values: torch.Tensor) -> torch.Tensor:
        """(B, dim) values, one per sample and entry, stored in a layout's order."""
        out = torch.empty(batch * dim, dtype=torch.long)
        out[position(by_sample, basis).reshape(-1)] = values.reshape(-1)
        return out

    moves, layout = [], True
    for by_sample, perm in layers:
        moves.append(to_layout(by_sample, position(layout, basis if perm is None else perm)))  # new[i] = old[perm[i]]
        layout = by_sample
    return moves, to_layout(True, position(layout, basis))


def kron_factor(matrices: torch.Tensor) -> torch.Tensor:
    """(..., k, d, d) -> (..., d**k, d**k), the Kronecker product of k wires' matrices (wire 0 most significant),
    by successive outer products; k = 0 gives [[1]]. For gates (d = 2) and density-matrix superoperators (4)."""
    k = matrices.shape[-3]
    if k == 0:
        return matrices.new_ones(*matrices.shape[:-3], 1, 1)
    wires = matrices.unbind(-3)
    out = wires[0]
    for m in wires[1:]:
        out = kron(out, m)
    return out


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., p, p) x (..., q, q) -> (..., pq, pq), batched: kron(a, b)[i q + k, j q + l] = a[i, j] b[k, l].

    As the outer product of the two flattened matrices, then reordered: a broadcast over one long inner axis
    (and its backward, a sum over it) instead of over several of length p or q, which is what made the
    Kronecker products of a noisy step's layers cost in proportion to the seeds (half of it, at 10 seeds)."""
    p, q = a.shape[-1], b.shape[-1]
    outer = a.reshape(*a.shape[:-2], p * p, 1) * b.reshape(*b.shape[:-2], 1, q * q)  # [(i, j), (k, l)]
    return outer.view(*outer.shape[:-2], p, p, q, q).transpose(-3, -2).reshape(*outer.shape[:-2], p * q, p * q)


def ry_matrix(theta: torch.Tensor) -> torch.Tensor:
    """RY(theta) = [[cos t/2, -sin t/2], [sin t/2, cos t/2]], one per element of theta."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([c, -s, s, c], dim=-1).reshape(*theta.shape, 2, 2)


def _layer_matrices(gates: torch.Tensor, unperm: torch.Tensor) -> torch.Tensor:
    """(..., L, n, 2, 2) gates per wire -> (..., L, 2**n, 2**n) layer matrices, CNOTs before them folded in."""
    full = kron_wires(gates)
    index = unperm.unsqueeze(-2).expand(*full.shape[-3:])  # column j of M @ P is column unperm[j] of M
    return torch.gather(full, -1, index.expand_as(full))


def kron_wires(gates: torch.Tensor) -> torch.Tensor:
    """(..., n, 2, 2) -> (..., 2**n, 2**n): kron(gate on wire 0, ..., gate on wire n-1).

    Entry [r, c] of the Kronecker product is the product over wires w of
    gate_w[bit_w(r), bit_w(c)]: one gather and one product, whatever n is.
    Wire 0 is the most significant bit of the basis index, as in PennyLane.
    """
    n = gates.shape[-3]
    flat = gates.reshape(*gates.shape[:-2], 4)  # (..., n, 4): entry 2*row_bit + col_bit
    index = _kron_index(n).expand(*flat.shape[:-1], -1)
    return torch.gather(flat, -1, index).prod(dim=-2).reshape(*gates.shape[:-3], 2**n, 2**n)


@functools.lru_cache(maxsize=None)
def _kron_index(n: int) -> torch.Tensor:
    bits = torch.as_tensor(basis_bits(n))  # (2**n, n)
    entry = 2 * bits[:, None, :] + bits[None, :, :]  # (rows, cols, n)
    return entry.reshape(-1, n).T.contiguous()  # (n, rows*cols)


def _single_qubit_gate(op) -> tuple[int, tuple[str, object]]:
    if len(op.wires) != 1:
        raise NotImplementedError(f"gate {op.name} is not supported by the torch simulator")
    wire = int(op.wires[0])
    if op.name in _FIXED_GATES:
        return wire, ("fixed", op.name)
    if op.name == "RY":
        marker = float(op.data[0])
        if marker != round(marker) or marker == 0:
            raise NotImplementedError(f"RY on wire {wire} is fed by a computed angle, not one input or weight")
        return wire, ("input", int(marker) - 1) if marker > 0 else ("weight", int(-marker) - 1)
    raise NotImplementedError(f"gate {op.name} is not supported by the torch simulator")


def is_identity(perm: np.ndarray) -> bool:
    return bool((perm == np.arange(len(perm))).all())


def basis_bits(n: int) -> np.ndarray:
    """(2**n, n): the bit of each wire in each basis state, wire 0 most significant."""
    return (np.arange(2**n)[:, None] >> (n - 1 - np.arange(n))) & 1


def cnot_permutation(n: int, control: int, target: int) -> np.ndarray:
    """``state[perm]`` is CNOT(control, target) applied to ``state``."""
    index = np.arange(2**n)
    return np.where(basis_bits(n)[:, control] == 1, index ^ (1 << (n - 1 - target)), index)


def _apply_fixed(state: np.ndarray, gates: dict, n: int) -> np.ndarray:
    tensor = state.reshape((2,) * n)
    for wire, (_, name) in gates.items():
        tensor = np.moveaxis(np.tensordot(_FIXED_GATES[name], tensor, axes=([1], [wire])), 0, wire)
    return tensor.reshape(-1)
