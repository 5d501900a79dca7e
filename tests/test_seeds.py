"""Many seeds in one vectorised pass: each seed equals the single run with that seed.

Also the seed axis of the quantum head's state-vector replay, the bottleneck
control head, and the ``--seeds`` parser.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from heads_data import blobs
from tlkit.heads import HeadError, LinearHead, QuantumHead, TorchHead
from tlkit.heads.bottleneck import BottleneckHead, BottleneckNet
from tlkit.train.config import parse_seeds
from tlkit.train.seeds import NotVectorisable, train_seeds

HEADS = {"linear": LinearHead, "quantum": QuantumHead, "bottleneck": BottleneckHead}
SEEDS = [0, 3, 11]


@pytest.fixture(scope="module")
def data():
    """Overlapping blobs (noisy enough that heads disagree), batch size 3 leaves a short last batch."""
    X, y = blobs(40, 2, seed=1, noise=2.5)
    X_val, y_val = blobs(25, 2, seed=2, noise=2.5)
    return X, y, X_val, y_val


def single_fits(cls, params, data, seeds):
    X, y, X_val, y_val = data
    return [cls(**params, seed=s).fit(X, y, eval_set=(X_val, y_val)) for s in seeds]


def assert_same_as_single(run, head, atol=1e-4):
    assert np.abs(run.final_proba - head.evaluation_.final_proba).max() <= atol
    assert np.abs(run.best_proba - head.evaluation_.best_proba).max() <= atol
    assert run.history[-1].val_acc == head.history_[-1]["val_acc"]  # the same final accuracy
    assert run.best_epoch == head.evaluation_.best_epoch
    for mine, theirs in zip(run.history, head.history_):
        assert mine.epoch == theirs["epoch"] and mine.lr == pytest.approx(theirs["lr"])
        for key in ("train_loss", "val_loss"):
            assert getattr(mine, key) == pytest.approx(theirs[key], abs=1e-5)
        for key in ("train_acc", "val_acc"):
            assert getattr(mine, key) == theirs[key]
    for name, value in head.module_.state_dict().items():
        assert torch.allclose(run.final_state[name], value, atol=1e-5), name
        assert torch.allclose(run.best_state[name], head.best_state_dict_[name], atol=1e-5), name


# --- each seed is its single run ---------------------------------------------------------------

@pytest.mark.parametrize("name", list(HEADS))
def test_vectorised_seeds_equal_separate_single_seed_fits(name, data):
    X, y, X_val, y_val = data
    params = {"epochs": 4, "batch_size": 3, "lr": 0.01, "step_size": 2}  # StepLR acts within the run
    template = HEADS[name](**params)
    result = train_seeds(template._build_module, X, y, SEEDS, template.train_config(), eval_set=(X_val, y_val))
    assert result.method == "batched" and [r.seed for r in result.runs] == SEEDS
    singles = single_fits(HEADS[name], params, data, SEEDS)
    for run, head in zip(result.runs, singles):
        assert_same_as_single(run, head)
    # The seeds really are different runs (so the comparison above is not between copies).
    assert not np.allclose(result.runs[0].final_proba, result.runs[1].final_proba)


@pytest.mark.parametrize("name", ["linear", "quantum"])
def test_the_vmap_recipe_gives_the_same_runs(name, data):
    """torch.func.stack_module_state + functional_call + vmap, the generic way (quantum: vmap over run)."""
    X, y, X_val, y_val = data
    params = {"epochs": 2, "batch_size": 3, "lr": 0.01}
    template = HEADS[name](**params)
    result = train_seeds(template._build_module, X, y, SEEDS[:2], template.train_config(), eval_set=(X_val, y_val),
                         method="vmap")
    assert result.method == "vmap"
    for run, head in zip(result.runs, single_fits(HEADS[name], params, data, SEEDS[:2])):
        assert_same_as_single(run, head)


@pytest.mark.parametrize("config", [
    {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.05},
    {"optimizer": "adam", "weight_decay": 0.01, "gamma": 0.5, "step_size": 1},
])
def test_one_optimizer_over_stacked_seeds_updates_each_seed_as_its_own(config, data):
    """Momentum, Adam's moments, weight decay and StepLR act element by element."""
    X, y, X_val, y_val = data
    params = {"epochs": 3, "batch_size": 4, "lr": 0.01, **config}
    template = BottleneckHead(**params)
    result = train_seeds(template._build_module, X, y, SEEDS, template.train_config(), eval_set=(X_val, y_val))
    for run, head in zip(result.runs, single_fits(BottleneckHead, params, data, SEEDS)):
        assert_same_as_single(run, head)


class FixedInitLinear(LinearHead):
    """A linear head whose initialisation ignores the seed: only the batch order depends on it."""

    def _build_module(self, n_features, n_classes):
        module = nn.Linear(n_features, n_classes)
        with torch.no_grad():
            module.weight.copy_(torch.linspace(-0.01, 0.01, module.weight.numel()).view_as(module.weight))
            module.bias.zero_()
        return module


def test_each_seed_owns_its_batch_order(data):
    X, y, X_val, y_val = data
    template = FixedInitLinear(epochs=1, batch_size=3, lr=0.05, momentum=0.0)
    result = train_seeds(template._build_module, X, y, [0, 1], template.train_config(), eval_set=(X_val, y_val))
    first, second = (run.final_state["weight"] for run in result.runs)
    assert not torch.allclose(first, second)  # same start, different visiting order: different weights
    for run, seed in zip(result.runs, [0, 1]):
        single = FixedInitLinear(epochs=1, batch_size=3, lr=0.05, momentum=0.0, seed=seed).fit(X, y)
        assert torch.allclose(run.final_state["weight"], single.module_.weight, atol=1e-6)


def test_without_an_evaluation_set_there_is_no_best_epoch(data):
    X, y, _, _ = data
    template = LinearHead(epochs=2)
    result = train_seeds(template._build_module, X, y, [0, 1], template.train_config())
    for run in result.runs:
        assert run.best_epoch is None and run.final_proba is None and run.best_state is None
        assert len(run.history) == 2 and np.isnan(run.history[0].val_acc)
        single = LinearHead(epochs=2, seed=run.seed).fit(X, y)
        assert np.allclose(predict(run.module, X), single.predict_proba(X), atol=1e-5)


def predict(module, X):
    with torch.no_grad():
        return torch.softmax(module(torch.from_numpy(X)).double(), dim=1).numpy()


@pytest.mark.parametrize("name", list(HEADS))
def test_fit_seeds_gives_the_heads_separate_fits_give(name, data, monkeypatch):
    """The public API: head.fit_seeds(X, y, seeds) is clone(head).set_params(seed=s).fit(X, y) per seed."""
    X, y, X_val, y_val = data
    labels, labels_val = np.array(["ants", "bees"])[y], np.array(["ants", "bees"])[y_val]
    params = {"epochs": 3, "batch_size": 3, "lr": 0.01}
    singles = [HEADS[name](**params, seed=s).fit(X, labels, eval_set=(X_val, labels_val)) for s in (2, 5)]
    template = HEADS[name](**params)
    with monkeypatch.context() as patch:  # one vectorised pass: no fit of a single seed is ever called
        patch.setattr(TorchHead, "fit", lambda *a, **k: pytest.fail("fit_seeds fell back to single fits"))
        heads = template.fit_seeds(X, labels, [2, 5], eval_set=(X_val, labels_val))
    assert not hasattr(template, "module_")  # the template itself stays unfitted
    for head, single, seed in zip(heads, singles, [2, 5]):
        assert head.seed == seed and list(head.classes_) == ["ants", "bees"]
        assert {k: v for k, v in head.get_params().items() if k != "seed"} == {
            k: v for k, v in template.get_params().items() if k != "seed"}
        assert np.abs(head.predict_proba(X_val) - single.predict_proba(X_val)).max() <= 1e-4
        assert np.abs(head.evaluation_.final_proba - single.evaluation_.final_proba).max() <= 1e-4
        assert list(head.predict(X_val)) == list(single.predict(X_val))
        assert head.score(X_val, labels_val) == single.score(X_val, labels_val)  # the same final accuracy
        assert head.evaluation_.best_epoch == single.evaluation_.best_epoch and len(head.history_) == 3
        assert head.training_seconds_ > 0


def test_a_qnode_simulator_is_not_vectorised_and_fit_seeds_falls_back_to_single_fits(data):
    X, y, _, _ = data
    template = QuantumHead(epochs=1, simulator="qnode", batch_size=20)
    with pytest.raises(NotVectorisable, match="seed_axis"):
        train_seeds(template._build_module, X, y, [0, 1], template.train_config())
    heads = template.fit_seeds(X[:20], y[:20], [0, 1])
    assert [h.seed for h in heads] == [0, 1] and all(h.module_.runner.simulator == "qnode" for h in heads)
    single = QuantumHead(epochs=1, simulator="qnode", batch_size=20, seed=1).fit(X[:20], y[:20])
    assert np.allclose(heads[1].predict_proba(X[:5]), single.predict_proba(X[:5]), atol=1e-6)


def test_logreg_fits_its_seeds_one_by_one_and_the_seed_moves_its_folds(data):
    from tlkit.heads import LogRegHead

    X, y, _, _ = data
    heads = LogRegHead(cv=3).fit_seeds(X, y, [0, 1])
    assert [h.seed for h in heads] == [0, 1]
    for head in heads:
        single = LogRegHead(cv=3, seed=head.seed).fit(X, y)
        assert np.array_equal(head.predict_proba(X), single.predict_proba(X))


def test_fit_seeds_refuses_bad_seeds(data):
    X, y, _, _ = data
    for head in (LinearHead(epochs=1), BottleneckHead(epochs=1)):
        with pytest.raises(HeadError, match="twice"):
            head.fit_seeds(X, y, [1, 1])
        with pytest.raises(HeadError, match="non-negative"):
            head.fit_seeds(X, y, [-1])


def test_training_leaves_the_global_torch_rng_alone(data):
    X, y, _, _ = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    template = LinearHead(epochs=1)
    train_seeds(template._build_module, X, y, [4, 5], template.train_config())
    assert torch.equal(torch.rand(3), expected)


# --- the seed axis of the state-vector replay --------------------------------------------------

def mixed_circuit(inputs, weights):
    """Layers mixing inputs and weights, CNOTs before input layers, a final CNOT: every branch of the replay."""
    import pennylane as qml

    for wire in range(3):
        qml.Hadamard(wires=wire)
    qml.RY(weights[0, 0], wires=0)
    qml.RY(inputs[1], wires=1)  # an input layer holding a weight
    qml.CNOT(wires=[0, 1])
    qml.CNOT(wires=[1, 2])
    qml.RY(inputs[0], wires=0)  # an input layer after CNOTs
    qml.RY(weights[0, 1], wires=2)
    qml.CNOT(wires=[2, 0])
    for wire, (i, j) in enumerate([(0, 2), (1, 0), (1, 2)]):
        qml.RY(weights[i, j], wires=wire)  # a weight layer
    qml.RY(weights[1, 1], wires=1)  # the same weight twice, in another layer
    qml.CNOT(wires=[0, 2])
    qml.RY(inputs[2], wires=2)
    qml.CNOT(wires=[1, 0])
    return [qml.expval(qml.PauliZ(wire)) for wire in (2, 0)]


@pytest.mark.parametrize("circuit,n_inputs,weight_shape", [
    ("dressed", 4, (6, 4)), ("dressed", 3, (2, 3)), ("dressed", 5, (1, 5)), ("dressed", 1, (2, 1)),
    ("dressed", 6, (2, 6)),  # the largest circuit with the written-out gradient
    ("dressed", 7, (1, 7)),  # beyond it: the autograd path
    ("mixed", 3, (2, 3)),
])
def test_statevector_seed_axis_equals_one_run_per_seed(circuit, n_inputs, weight_shape):
    from tlkit.heads import statevector
    from tlkit.heads.circuit import dressed_circuit

    program = statevector.trace(dressed_circuit if circuit == "dressed" else mixed_circuit, n_inputs, weight_shape)
    n_out = program.z_signs.shape[1]
    gen = torch.Generator().manual_seed(n_inputs * 10 + weight_shape[0])
    angles = ((torch.rand(3, 5, n_inputs, generator=gen, dtype=torch.float64) - 0.5) * torch.pi).requires_grad_()
    weights = torch.randn(3, *weight_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 5, n_out, generator=gen, dtype=torch.float64)

    seeded = statevector.run(program, angles, weights)
    separate = torch.stack([statevector.run(program, angles[s], weights[s]) for s in range(3)])
    vmapped = torch.vmap(lambda a, w: statevector.run(program, a, w))(angles, weights)
    assert seeded.shape == (3, 5, n_out)
    assert torch.allclose(seeded, separate, atol=1e-12, rtol=0)
    assert torch.allclose(vmapped, separate, atol=1e-12, rtol=0)
    if circuit == "mixed":  # the replay is this circuit: PennyLane's own simulator agrees
        import pennylane as qml

        qnode = qml.QNode(mixed_circuit, qml.device("default.qubit", wires=3))
        expected = torch.tensor([float(v) for v in qnode(angles[1, 2].detach().numpy(), weights[1].detach().numpy())])
        assert torch.allclose(seeded[1, 2].detach(), expected.double(), atol=1e-10)
    grads_seeded = torch.autograd.grad((seeded * probe).sum(), [angles, weights])
    grads_separate = torch.autograd.grad((separate * probe).sum(), [angles, weights])
    for g_seeded, g_separate in zip(grads_seeded, grads_separate):
        assert g_separate.abs().max() > 1e-3
        assert torch.allclose(g_seeded, g_separate, atol=1e-12, rtol=0)


# --- the bottleneck control --------------------------------------------------------------------

def test_bottleneck_is_the_quantum_dressing_around_a_classical_layer():
    torch.manual_seed(0)
    net = BottleneckNet(512, 3, n_qubits=5)
    assert [tuple(p.shape) for p in net.parameters()] == [(5, 512), (5,), (5, 5), (5,), (3, 5), (3,)]
    x = torch.randn(7, 512)
    middle = torch.tanh(net.middle(torch.tanh(net.pre(x)) * (torch.pi / 2)))
    assert torch.allclose(net(x), net.post(middle))
    assert middle.abs().max() <= 1  # the range of <Z>


def test_bottleneck_head_is_a_classifier_with_the_quantum_heads_width_name():
    X, y = blobs(120, 2, seed=1)
    X_val, y_val = blobs(60, 2, seed=2)
    head = BottleneckHead(n_qubits=3, epochs=10).fit(X, y)
    assert head.module_.middle.in_features == 3
    assert head.score(X_val, y_val) >= 0.95
    with pytest.raises(HeadError, match="n_qubits must be at least 1"):
        BottleneckHead(n_qubits=0).fit(X, y)
    # The quantum head's flags where they apply: its width and the whole training loop, same defaults.
    assert set(BottleneckHead().get_params()) == {"n_qubits", *LinearHead().get_params()}
    quantum = QuantumHead().get_params()
    assert all(quantum[k] == v for k, v in BottleneckHead().get_params().items())


# --- --seeds SPEC ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,seeds", [("10", list(range(10))), ("0-9", list(range(10))), ("3-5", [3, 4, 5]),
                                        ("1,5,9", [1, 5, 9]), ("7", list(range(7))), ("4-4", [4])])
def test_parse_seeds(spec, seeds):
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize("spec,message", [("0", "at least 1"), ("5-2", "backwards"), ("1,5,1", "twice"),
                                          ("ten", "not a count"), ("-3", "at least 1"), ("2,-1", "non-negative"),
                                          ("1,,2", "not a count"), ("", "not a count")])
def test_bad_seed_specs_are_one_line_errors(spec, message):
    with pytest.raises(HeadError, match=message) as info:
        parse_seeds(spec)
    assert "\n" not in str(info.value)


def test_the_written_out_gradient_passes_gradcheck():
    """The seed axis's hand-written backward against finite differences (float64)."""
    from tlkit.heads import statevector

    program = statevector.trace(mixed_circuit, 3, (2, 3))
    gen = torch.Generator().manual_seed(5)
    angles = torch.rand(2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: statevector.run(program, a, w), (angles, weights))
