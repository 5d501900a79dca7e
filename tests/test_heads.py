"""The heads as scikit-learn classifiers over feature arrays, and the quantum circuit's simulators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from heads_data import blobs
from tlkit.heads import BottleneckHead, HeadError, LinearHead, LogRegHead, QuantumHead
from tlkit.heads.circuit import dressed_circuit
from tlkit.heads.quantum import DressedQuantumNet

HEADS = {"linear": LinearHead, "logreg": LogRegHead, "quantum": QuantumHead, "bottleneck": BottleneckHead}


def per_sample_qnode(n_qubits):
    """The PennyLane demo's reference: a default.qubit QNode called once per sample."""
    import pennylane as qml

    qnode = qml.QNode(dressed_circuit, qml.device("default.qubit", wires=n_qubits), interface="torch", diff_method="backprop")
    return lambda angles, weights: torch.stack([torch.stack(list(qnode(a, weights))) for a in angles])


# --- the circuit -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_qubits,depth", [(4, 6), (3, 2), (5, 1), (2, 3), (1, 2)])
def test_torch_statevector_equals_per_sample_qnode(n_qubits, depth):
    from tlkit.heads import statevector

    program = statevector.trace(dressed_circuit, n_qubits, (depth, n_qubits))
    gen = torch.Generator().manual_seed(n_qubits * 10 + depth)
    angles = ((torch.rand(7, n_qubits, generator=gen, dtype=torch.float64) - 0.5) * torch.pi).requires_grad_()
    weights = torch.randn(depth, n_qubits, generator=gen, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(7, n_qubits, generator=gen, dtype=torch.float64)  # a generic loss mixing all outputs

    fast = statevector.run(program, angles, weights)
    ref = per_sample_qnode(n_qubits)(angles, weights)
    assert fast.shape == ref.shape == (7, n_qubits)
    assert torch.allclose(fast, ref, atol=1e-6, rtol=0)
    grads_fast = torch.autograd.grad((fast * probe).sum(), [angles, weights])
    grads_ref = torch.autograd.grad((ref * probe).sum(), [angles, weights])
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        assert g_ref.abs().max() > 1e-3  # the comparison is not between zeros
        assert torch.allclose(g_fast, g_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("simulator", ["torch", "qnode"])
def test_dressed_net_outputs_and_gradients_equal_per_sample_qnode(simulator):
    """The whole head (float32, as trained) against the demo's per-sample loop, same weights."""
    torch.manual_seed(3)
    x, y = torch.randn(6, 512), torch.tensor([0, 1, 2, 1, 0, 2])
    torch.manual_seed(1)
    fast = DressedQuantumNet(512, 3, simulator=simulator, q_delta=1.0)  # large weights: a non-trivial circuit
    torch.manual_seed(1)
    slow = DressedQuantumNet(512, 3, simulator="per-sample", q_delta=1.0)
    assert fast.runner.simulator == simulator and slow.runner.simulator == "per-sample"

    out_fast, out_slow = fast(x), slow(x)
    torch.nn.functional.cross_entropy(out_fast, y).backward()
    torch.nn.functional.cross_entropy(out_slow, y).backward()
    assert torch.allclose(out_fast, out_slow, atol=1e-6, rtol=0)
    slow_params = dict(slow.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad.abs().max() > 0, name
        assert torch.allclose(p.grad, slow_params[name].grad, atol=1e-6, rtol=0), name


def test_circuit_structure_follows_the_paper():
    """H and RY(input) on every qubit, then per layer CNOTs (0,1),(2,3) then (1,2), then RY(weights)."""
    import pennylane as qml

    tape = qml.tape.make_qscript(dressed_circuit)(np.arange(4.0), np.full((2, 4), 9.0))
    ops = [(op.name, list(op.wires)) for op in tape.operations]
    layer = [("CNOT", [0, 1]), ("CNOT", [2, 3]), ("CNOT", [1, 2])] + [("RY", [w]) for w in range(4)]
    assert ops == [("Hadamard", [w]) for w in range(4)] + [("RY", [w]) for w in range(4)] + layer + layer
    assert [float(op.data[0]) for op in tape.operations if op.name == "RY"][:4] == [0.0, 1.0, 2.0, 3.0]
    assert [m.obs.name for m in tape.measurements] == ["PauliZ"] * 4


def test_trace_refuses_gates_it_cannot_simulate():
    import pennylane as qml

    from tlkit.heads import statevector

    def circuit(inputs, weights):
        qml.RX(inputs[0], wires=0)
        return [qml.expval(qml.PauliZ(0))]

    with pytest.raises(NotImplementedError, match="RX"):
        statevector.trace(circuit, 1, (1, 1))


def test_lightning_device_gives_the_same_probabilities():
    X, y = blobs(16, 2, seed=1)
    fast = QuantumHead(epochs=1, seed=0).fit(X, y)
    other = QuantumHead(epochs=1, seed=0, qdevice="lightning.qubit").fit(X, y)
    assert other.module_.runner.simulator == "qnode"
    assert np.allclose(fast.predict_proba(X), other.predict_proba(X), atol=1e-6)


def test_shots_run_through_a_qnode_and_are_stochastic():
    X, y = blobs(8, 2, seed=1)
    head = QuantumHead(epochs=1, shots=50, seed=0, simulator="qnode").fit(X, y)
    assert head.module_.runner.simulator == "qnode"
    proba = head.predict_proba(X)
    assert proba.shape == (8, 2) and np.allclose(proba.sum(1), 1)


def test_unknown_device_is_a_one_line_error_listing_installed_devices():
    X, y = blobs(8, 2, seed=1)
    with pytest.raises(HeadError) as info:
        QuantumHead(qdevice="no.such.device", epochs=1).fit(X, y)
    message = str(info.value)
    assert "no.such.device" in message and "default.qubit" in message and "qml.about()" in message
    assert "\n" not in message


# --- the heads as classifiers ------------------------------------------------------------------

@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_separates_separable_features(name, n_classes):
    X, y = blobs(120, n_classes, seed=1)
    X_val, y_val = blobs(60, n_classes, seed=2)
    head = HEADS[name]().fit(X, y)  # default settings
    proba = head.predict_proba(X_val)
    assert proba.shape == (60, n_classes) and np.allclose(proba.sum(1), 1)
    assert list(head.classes_) == list(range(n_classes))
    assert head.score(X_val, y_val) >= 0.95


@pytest.mark.parametrize("name", list(HEADS))
def test_same_seed_same_numbers(name):
    X, y = blobs(40, 2, seed=1)
    X_val, y_val = blobs(20, 2, seed=2)
    params = {"seed": 7} if name == "logreg" else {"seed": 7, "epochs": 3}
    fit_kw = {} if name == "logreg" else {"eval_set": (X_val, y_val)}
    a = HEADS[name](**params).fit(X, y, **fit_kw)
    b = HEADS[name](**params).fit(X, y, **fit_kw)
    assert np.array_equal(a.predict_proba(X_val), b.predict_proba(X_val))
    if name != "logreg":
        strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history_]
        assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history_]
        c = HEADS[name](**{**params, "seed": 8}).fit(X, y, **fit_kw)
        assert not np.array_equal(a.predict_proba(X_val), c.predict_proba(X_val))


def test_fit_leaves_the_global_torch_rng_alone():
    X, y = blobs(12, 2, seed=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    LinearHead(epochs=1).fit(X, y)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", list(HEADS))
def test_scikit_learn_conventions(name):
    quick = {"logreg": {}, "linear": {"epochs": 3}, "quantum": {"epochs": 10}, "bottleneck": {"epochs": 10}}[name]
    head = HEADS[name](**quick)
    assert head.get_params()["seed"] == 0
    twin = clone(head).set_params(seed=5)
    assert twin.get_params()["seed"] == 5 and head.get_params()["seed"] == 0
    assert not hasattr(head, "classes_")

    X, y = blobs(60, 2, seed=1)
    labels = np.array(["ants", "bees"])[y]  # any label type, as scikit-learn allows
    pipe = make_pipeline(StandardScaler(), head)
    scores = cross_val_score(pipe, X, labels, cv=3)
    assert scores.shape == (3,) and scores.min() >= 0.9
    fitted = pipe.fit(X, labels)
    assert set(fitted.predict(X)) <= {"ants", "bees"}
    assert list(fitted[-1].classes_) == ["ants", "bees"]
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X[:, :100])


@pytest.mark.parametrize("name", list(HEADS))
def test_single_class_is_refused(name):
    X, _ = blobs(12, 2, seed=1)
    with pytest.raises(HeadError, match="only one class"):
        HEADS[name]().fit(X, np.zeros(12, dtype=int))


def test_evaluation_labels_must_be_known():
    X, y = blobs(12, 2, seed=1)
    with pytest.raises(HeadError, match="never seen"):
        LinearHead(epochs=1).fit(X, y, eval_set=(X, y + 5))


def test_history_records_every_epoch_and_the_best_one():
    X, y = blobs(40, 2, seed=1)
    X_val, y_val = blobs(20, 2, seed=2)
    head = LinearHead(epochs=4).fit(X, y, eval_set=(X_val, y_val))
    assert [r["epoch"] for r in head.history_] == [1, 2, 3, 4]
    accs = [r["val_acc"] for r in head.history_]
    assert head.evaluation_.best_epoch == 1 + int(np.argmax(accs))
    assert head.evaluation_.final_proba.shape == (20, 2)
    assert head.history_[0]["lr"] == pytest.approx(0.001)


# --- honest hyperparameters --------------------------------------------------------------------

@pytest.mark.parametrize("name", list(HEADS))
def test_nothing_is_chosen_on_the_evaluation_set(name):
    """eval_set is only scored: with another evaluation set, or none, a head learns exactly the same.

    (logreg's C is chosen by cross-validation on the training rows; a torch head's final weights are the
    last epoch's. Only the labelled, optimistic 'best' epoch looks at the evaluation set.)
    """
    X, y = blobs(40, 2, seed=1, noise=2.5)
    params = {"seed": 3} if name == "logreg" else {"seed": 3, "epochs": 3}
    fits = [HEADS[name](**params).fit(X, y, **kw) for kw in (
        {}, {"eval_set": blobs(20, 2, seed=2, noise=2.5)}, {"eval_set": blobs(30, 2, seed=9, noise=0.1)})]
    probe = blobs(25, 2, seed=5, noise=2.5)[0]
    for other in fits[1:]:
        assert np.array_equal(other.predict_proba(probe), fits[0].predict_proba(probe))
        assert other.run_details() == fits[0].run_details()  # e.g. logreg's chosen C
    assert fits[0].evaluation_ is None and fits[1].evaluation_ is not None
