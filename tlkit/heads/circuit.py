"""The dressed quantum circuit of Mari et al. (arXiv:1912.08278), written in PennyLane.

    wire 0: ─H─RY(x0)─╭●─────RY(w00)─ ... ─┤ <Z>
    wire 1: ─H─RY(x1)─╰X─╭●──RY(w01)─ ... ─┤ <Z>
    wire 2: ─H─RY(x2)─╭●─╰X──RY(w02)─ ... ─┤ <Z>
    wire 3: ─H─RY(x3)─╰X─────RY(w03)─ ... ─┤ <Z>
                      └── repeated for each row of weights ──┘

``entangling="none"`` is the same circuit without its CNOTs (Bowles et al.'s
separable ablation, arXiv:2403.07059): :data:`CIRCUITS` names both.

``inputs`` may carry a leading batch dimension (PennyLane parameter
broadcasting: one execution for the whole batch).
"""

from __future__ import annotations

import pennylane as qml


def hadamard_layer(n_qubits):
    for wire in range(n_qubits):
        qml.Hadamard(wires=wire)


def ry_layer(angles, n_qubits):
    for wire in range(n_qubits):
        qml.RY(angles[..., wire], wires=wire)


def entangling_layer(n_qubits):
    for wire in range(0, n_qubits - 1, 2):  # CNOT on (0,1), (2,3), ...
        qml.CNOT(wires=[wire, wire + 1])
    for wire in range(1, n_qubits - 1, 2):  # then on (1,2), (3,4), ...
        qml.CNOT(wires=[wire, wire + 1])


def dressed_circuit(inputs, weights, entangling="chain"):
    """inputs: (..., n_qubits) angles; weights: (depth, n_qubits). Returns <Z> of each qubit."""
    n_qubits = weights.shape[1]
    hadamard_layer(n_qubits)
    ry_layer(inputs, n_qubits)
    for layer_weights in weights:
        if entangling == "chain":
            entangling_layer(n_qubits)
        ry_layer(layer_weights, n_qubits)
    return [qml.expval(qml.PauliZ(wire)) for wire in range(n_qubits)]


def separable_circuit(inputs, weights):
    """The dressed circuit without its CNOTs: every qubit on its own."""
    return dressed_circuit(inputs, weights, entangling="none")


CIRCUITS = {"chain": dressed_circuit, "none": separable_circuit}  # the quantum head's --entangling
