"""Shots and noise: the noise model's one meaning, the density-matrix simulation against default.mixed, sampled
expectations and parameter-shift gradients, `tlkit evaluate`, and the entangling=none ablation."""

from __future__ import annotations

import json
import math

import numpy as np
import pennylane as qml
import pytest
import torch

from cli_helpers import assert_invoke_error, invoke
from heads_data import blobs, write_cache
from tlkit.heads import HeadError, QuantumHead, density, shots, statevector
from tlkit.heads.circuit import dressed_circuit, separable_circuit
from tlkit.heads.noise import NoiseModel, parse_sweep
from tlkit.runs import load_run

CHANNELS = ["depolarizing=0.05", "amplitude_damping=0.1", "dephasing=0.07", "readout=0.03",
            "depolarizing=0.02,amplitude_damping=0.03,dephasing=0.01,readout=0.02",
            "dephasing=0.1,depolarizing=0.03"]  # each channel, a combination, and another order


def mixed_qnode(spec: str, n: int, circuit=dressed_circuit):
    """The reference: PennyLane's own default.mixed with the noise model's channels added by qml.add_noise."""
    qnode = qml.QNode(circuit, qml.device("default.mixed", wires=n), interface="torch", diff_method="backprop")
    return qml.add_noise(qnode, NoiseModel.parse(spec).to_pennylane())


def angles(n: int, batch: int = 3, depth: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    w = (torch.rand(depth, n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    return x, w


# --- the noise model -------------------------------------------------------------------------------

def test_noise_spec_round_trips_and_keeps_its_order():
    model = NoiseModel.parse("dephasing=0.005, depolarizing=0.01,readout=0.02")
    assert model.spec == "dephasing=0.005,depolarizing=0.01,readout=0.02"
    assert model.gate_channels == (("PhaseDamping", 0.005), ("DepolarizingChannel", 0.01)) and model.readout == 0.02
    assert NoiseModel.parse(model.spec) == model and not NoiseModel.parse(None) and not NoiseModel.parse("depolarizing=0")


def test_the_pennylane_model_places_channels_after_every_gate_and_bit_flips_before_measurement():
    qnode = qml.add_noise(qml.QNode(dressed_circuit, qml.device("default.mixed", wires=2)),
                          NoiseModel.parse("depolarizing=0.01,dephasing=0.02,readout=0.03").to_pennylane())
    tapes, _ = qml.workflow.construct_batch(qnode)(np.zeros(2), np.zeros((1, 2)))
    names = [op.name for op in tapes[0].operations]  # one tape per measurement (its own readout flip)
    # H, RY(x), CNOT, RY(w) on 2 wires: 2 + 2 + 1 + 2 gates = 7 gates touching 8 wire slots, two channels each
    assert names.count("DepolarizingChannel") == 8 and names.count("PhaseDamping") == 8
    cnot = names.index("CNOT")
    assert names[cnot + 1:cnot + 5] == ["DepolarizingChannel", "PhaseDamping", "DepolarizingChannel", "PhaseDamping"]
    assert names[-1] == "BitFlip"


@pytest.mark.parametrize("spec, fragment", [("bitflip=0.1", "unknown channel"), ("depolarizing=1.5", "outside [0, 1]"),
                                            ("depolarizing=-0.1", "outside [0, 1]"), ("depolarizing", "COMPONENT=P"),
                                            ("readout=x", "not a number"), ("readout=0.1,readout=0.2", "twice")])
def test_bad_noise_specs_are_one_line(spec, fragment, tmp_path):
    with pytest.raises(HeadError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        NoiseModel.parse(spec)


def test_a_comma_list_sweeps_one_component():
    component, models = parse_sweep("depolarizing=0,0.01,0.05,readout=0.02")
    assert component == "depolarizing"
    assert [m.spec for m in models] == ["depolarizing=0,readout=0.02", "depolarizing=0.01,readout=0.02",
                                        "depolarizing=0.05,readout=0.02"]
    with pytest.raises(HeadError, match="one component"):
        parse_sweep("depolarizing=0,0.1,readout=0,0.1")


# --- the density-matrix simulation ---------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("spec", CHANNELS)
def test_noisy_expectations_and_gradients_equal_default_mixed(spec, n):
    x, w = angles(n)
    reference = torch.stack([torch.stack(list(mixed_qnode(spec, n)(x[b], w))) for b in range(len(x))])
    program = density.trace(dressed_circuit, n, tuple(w.shape), spec)
    ours = density.run(program, x, w)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    upstream = torch.rand(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for mine, theirs in zip(torch.autograd.grad((ours * upstream).sum(), (x, w)),
                            torch.autograd.grad((reference * upstream).sum(), (x, w))):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)
    assert abs(float(reference.detach().abs().max()) - float(
        density.run(density.trace(dressed_circuit, n, tuple(w.shape)), x, w).detach().abs().max())) > 1e-4  # noise changes it


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("spec", [c for c in CHANNELS if c != "readout=0.03"])  # readout alone: state vectors
def test_large_batches_read_observables_carried_back_equal_to_the_replay_and_default_mixed(spec, n, monkeypatch):
    """From OBSERVABLES_BATCH samples on, <Z> comes from the measured observables carried back through the layers
    after the inputs (the Heisenberg picture): values and gradients equal the forward replay's, also with a seed
    axis, and PennyLane's default.mixed."""
    taken = []
    real = density._by_observables
    monkeypatch.setattr(density, "_by_observables", lambda *a: taken.append(1) or real(*a))
    g = torch.Generator().manual_seed(5)
    batch = density.OBSERVABLES_BATCH + 3
    x = (torch.rand(2, batch, n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    w = (torch.rand(2, 2, n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    program = density.trace(dressed_circuit, n, (2, n), spec)
    ours = density.run(program, x, w)
    assert taken, "the large batch did not take the observables' way"
    assert density._encoded_terms(program, "cpu") is not None  # one encoding layer: samples are its coefficients
    replay = density.apply_readout(density.probabilities(program, x, w.reshape(2, 1, -1)), program.readout, n) @ program.z_signs
    torch.testing.assert_close(ours, replay, atol=1e-12, rtol=0)
    upstream = torch.rand(ours.shape, dtype=torch.float64, generator=g)
    for mine, theirs in zip(torch.autograd.grad((ours * upstream).sum(), (x, w)),
                            torch.autograd.grad((replay * upstream).sum(), (x, w))):
        torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=0)
    reference = torch.stack([torch.stack(list(mixed_qnode(spec, n)(x[1, b], w[1]))) for b in range(4)])
    torch.testing.assert_close(ours[1, :4], reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mixed", [False, True])
def test_noise_free_it_equals_the_state_vector_replay_also_with_a_seed_axis(mixed):
    g = torch.Generator().manual_seed(3)
    x, w = torch.rand(3, 5, 4, generator=g, dtype=torch.float64), torch.rand(3, 2, 4, generator=g, dtype=torch.float64)
    program = density.trace(dressed_circuit, 4, (2, 4), None, mixed=mixed)
    assert program.mixed == mixed
    expected = statevector.run(statevector.trace(dressed_circuit, 4, (2, 4)), x, w)
    torch.testing.assert_close(density.run(program, x, w), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(density.run(program, x[1], w[1]), expected[1], atol=1e-12, rtol=0)


def test_the_seed_axis_runs_each_seed_with_its_own_weights_under_noise():
    g = torch.Generator().manual_seed(4)
    x, w = torch.rand(2, 3, 4, generator=g, dtype=torch.float64), torch.rand(2, 2, 4, generator=g, dtype=torch.float64)
    program = density.trace(dressed_circuit, 4, (2, 4), "depolarizing=0.03,readout=0.01")
    both = density.run(program, x, w)
    for s in range(2):
        torch.testing.assert_close(both[s], density.run(program, x[s], w[s]), atol=1e-12, rtol=0)


# --- shots ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [None, "depolarizing=0.02,amplitude_damping=0.02,readout=0.05"])
def test_shot_estimates_are_unbiased_and_reproducible(spec):
    x, w = angles(4, batch=2, depth=2)
    x, w = x.detach()[None], w.detach().reshape(1, -1)
    program = density.trace(dressed_circuit, 4, (2, 4), spec)
    exact = density.expectations(program, x, w[:, None])[0]  # (2, 4)
    n_shots, draws = 200, 400
    sampler = shots.ShotSampler(program, n_shots)
    generators = sampler.generators(torch.tensor([11]))
    probs = density.probabilities(program, x, w[:, None])
    estimates = torch.stack([sampler.estimate(probs, generators)[0] for _ in range(draws)])  # (draws, 2, 4)
    standard_error = estimates.std(0) / math.sqrt(draws)
    assert ((estimates.mean(0) - exact).abs() <= 4 * standard_error + 1e-12).all()
    assert (estimates.std(0) > 0).all()  # really sampled
    # each estimate is a mean of +-1 over the shots: on the grid k / n_shots * 2 - 1
    assert torch.allclose(torch.round((estimates + 1) * n_shots / 2), (estimates + 1) * n_shots / 2)
    again = shots.ShotSampler(program, n_shots)
    first = [sampler.estimate(probs, sampler.generators(torch.tensor([5]))) for _ in range(3)]
    second = [again.estimate(probs, again.generators(torch.tensor([5]))) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_readout_error_acts_on_the_sampled_bits():
    # Every shot reads 00 before the readout error; each bit then flips with probability 0.1. The sampler draws
    # from the flipped probabilities (the same law as flipping each sampled bit): both give 81/9/9/1 %.
    counts = torch.tensor([[1000.0, 0, 0, 0]], dtype=torch.float64)
    flipped = torch.stack([shots.flip_bits(counts, 0.1, 2, np.random.default_rng(i)) for i in range(200)])
    assert (flipped.sum(-1) == 1000).all()
    expected = torch.tensor([0.81, 0.09, 0.09, 0.01], dtype=torch.float64)
    torch.testing.assert_close(flipped.mean(0)[0] / 1000, expected, atol=0.005, rtol=0)
    program = density.trace(lambda x, w: [qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(1))], 0, (1, 2),
                            "readout=0.1", mixed=False)
    sampler = shots.ShotSampler(program, 1000)
    probs = torch.tensor([[[1.0, 0, 0, 0]]] * 200, dtype=torch.float64).transpose(0, 1)  # (1 seed, 200 rows, 4)
    estimates = sampler.estimate(probs, sampler.generators(torch.tensor([1])))[0]  # (200, 2): <Z> = 1 - 2 * 0.1
    torch.testing.assert_close(estimates.mean(0), torch.tensor([0.8, 0.8], dtype=torch.float64), atol=0.01, rtol=0)
    assert (estimates.std(0) > 0).all()


@pytest.mark.parametrize("spec", [None, "depolarizing=0.05,readout=0.05"])
def test_parameter_shift_gradient_under_shots_has_the_analytic_gradient_as_its_mean(spec):
    x, w = angles(4, batch=3, depth=2, seed=2)
    x, w = x.detach()[None].requires_grad_(), w.detach().reshape(1, -1).requires_grad_()
    program = density.trace(dressed_circuit, 4, (2, 4), spec)
    upstream = torch.rand(1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    exact = torch.autograd.grad((density.run(program, x, w) * upstream).sum(), (x, w))
    sampler = shots.ShotSampler(program, 500)
    generators = sampler.generators(torch.tensor([3]))
    draws = [torch.autograd.grad((shots.ParameterShift.apply(sampler, generators, x, w) * upstream).sum(), (x, w))
             for _ in range(60)]
    for k in range(2):
        sample = torch.stack([d[k] for d in draws])
        standard_error = sample.std(0) / math.sqrt(len(draws))
        assert ((sample.mean(0) - exact[k]).abs() <= 4.5 * standard_error + 1e-9).all()
        assert (sample.std(0) > 0).any()


@pytest.mark.parametrize("spec, mixed", [("depolarizing=0.02,amplitude_damping=0.01", True), (None, False)])
def test_shifted_probabilities_equal_the_shifted_circuits_run_one_by_one(spec, mixed):
    # the Heisenberg-picture rows, all seeds, layers and shifts batched, against each shifted circuit run whole
    g = torch.Generator().manual_seed(7)
    x, w = torch.rand(3, 5, 4, generator=g, dtype=torch.float64) * 3, torch.rand(3, 12, generator=g, dtype=torch.float64) * 3
    program = density.trace(dressed_circuit, 4, (3, 4), spec, mixed=mixed)
    probs, params = density.shifted_probabilities(program, x, w, math.pi / 2)
    assert sorted(params) == sorted([("weight", p) for p in range(12)] + [("input", i) for i in range(4)])
    for t, (kind, index) in enumerate(params):
        for sign, row in ((1, 2 * t), (-1, 2 * t + 1)):
            xs, ws = x.clone(), w.clone()
            (ws[:, index] if kind == "weight" else xs[:, :, index]).add_(sign * math.pi / 2)
            torch.testing.assert_close(probs[:, row], density.probabilities(program, xs, ws[:, None]), atol=1e-12, rtol=0)


def test_a_seed_among_ten_draws_its_own_single_run_under_shots_and_noise():
    X, y = blobs(12, 2, seed=3)
    kw = dict(epochs=2, batch_size=4, shots=200, noise="depolarizing=0.01,readout=0.02")
    many = QuantumHead(**kw).fit_seeds(X, y, range(10), eval_set=(X, y))
    for seed in (0, 7):
        alone = QuantumHead(seed=seed, **kw).fit(X, y, eval_set=(X, y))
        assert [r["train_loss"] for r in many[seed].history_] == [r["train_loss"] for r in alone.history_]
        np.testing.assert_array_equal(many[seed].evaluation_.final_proba, alone.evaluation_.final_proba)
    assert len({h.history_[-1]["train_loss"] for h in many}) == 10  # each seed its own draws


def test_training_under_shots_and_noise_is_reproducible_and_many_seeds_equal_single_runs():
    X, y = blobs(12, 2, seed=1)
    kw = dict(epochs=1, batch_size=4, shots=100, noise="depolarizing=0.01,readout=0.02")
    a = QuantumHead(seed=0, **kw).fit(X, y, eval_set=(X, y))
    b = QuantumHead(seed=0, **kw).fit(X, y, eval_set=(X, y))
    assert a.module_.runner.method == "torch density matrix, sampled"
    assert a.history_[-1]["train_loss"] == b.history_[-1]["train_loss"]
    np.testing.assert_array_equal(a.evaluation_.final_proba, b.evaluation_.final_proba)
    many = QuantumHead(**kw).fit_seeds(X, y, [0, 2], eval_set=(X, y))
    np.testing.assert_allclose(many[0].evaluation_.final_proba, a.evaluation_.final_proba, atol=1e-5)
    assert a.run_details()["conditions"] == {"noise": "depolarizing=0.01,readout=0.02", "shots": 100,
                                             "gradient": "parameter-shift", "simulation": "torch density matrix, sampled"}


def test_the_qnode_reference_path_takes_shots_and_noise_on_default_mixed():
    X, y = blobs(6, 2, seed=1)
    head = QuantumHead(epochs=1, batch_size=6, shots=20, noise="depolarizing=0.01", simulator="qnode",
                       depth=1, seed=0).fit(X, y)
    assert head.module_.runner.simulator == "qnode" and head.predict_proba(X).shape == (6, 2)


def test_noise_on_a_device_that_cannot_take_it_is_refused():
    with pytest.raises(HeadError, match="cannot take noise channels"):
        QuantumHead(qdevice="lightning.qubit", noise="depolarizing=0.01").check_params()


def test_shots_of_zero_are_refused():
    with pytest.raises(HeadError, match="shots must be at least 1"):
        QuantumHead(shots=0).check_params()


# --- entangling=none ---------------------------------------------------------------------------------

def test_entangling_none_has_no_cnot_and_equals_pennylane_without_them():
    tape = qml.tape.make_qscript(separable_circuit)(np.ones(4), np.ones((2, 4)))
    assert "CNOT" not in [op.name for op in tape.operations]
    program = statevector.trace(separable_circuit, 4, (2, 4))
    assert (program.shared_unperm == torch.arange(16)).all() and (program.input_unperm == torch.arange(16)).all()
    dense = density.trace(separable_circuit, 4, (2, 4), "depolarizing=0.02")
    assert all(perm is None for _, _, perm in dense.order)
    x, w = angles(4)
    qnode = qml.QNode(separable_circuit, qml.device("default.qubit", wires=4), interface="torch")
    reference = torch.stack([torch.stack(list(qnode(x[b], w))) for b in range(len(x))])
    torch.testing.assert_close(statevector.run(program, x, w), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(density.run(dense, x, w), torch.stack(
        [torch.stack(list(mixed_qnode("depolarizing=0.02", 4, separable_circuit)(x[b], w))) for b in range(3)]),
        atol=1e-6, rtol=0)
    head = QuantumHead(entangling="none", epochs=1, seed=0).fit(*blobs(8, 2, seed=1))
    chained = QuantumHead(epochs=1, seed=0).fit(*blobs(8, 2, seed=1))
    assert not np.allclose(head.predict_proba(blobs(8, 2, seed=1)[0]), chained.predict_proba(blobs(8, 2, seed=1)[0]))


# --- tlkit evaluate ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise_runs")
    cache = write_cache(folder / "c.h5", {"train": blobs(24, 2, seed=1, noise=2.0), "val": blobs(20, 2, seed=2, noise=2.0)},
                        ["ants", "bees"])
    quick = ("--epochs", 2, "--batch-size", 4, "--lr", 0.05, "--no-progress", "--cache", cache)
    for name, extra in {"q": ("--seeds", "0,1"), "q1": ("--seed", 0), "lin": ()}.items():
        head = "linear" if name == "lin" else "quantum"
        result = invoke("fit-head", "--head", head, "--out", folder / name, *quick, *extra)
        assert result.exit_code == 0, result.output
    return folder


@pytest.mark.parametrize("name", ["q", "q1"])
def test_evaluate_without_conditions_reproduces_the_runs_final_metrics(runs, name):
    result = invoke("evaluate", runs / name, "--no-progress")
    assert result.exit_code == 0, result.output
    run, evaluation = load_run(runs / name), load_run(runs / name / "evaluations" / "exact")
    for key in ("accuracy", "roc_auc", "average_precision"):
        assert evaluation.metrics["final"][key] == pytest.approx(run.metrics["final"][key], abs=1e-9)
    np.testing.assert_allclose(evaluation.proba_seeds(), run.proba_seeds(), atol=1e-5)
    assert evaluation.config.eval_fingerprint == run.config.eval_fingerprint
    assert evaluation.metrics["summary"]["images"]["accuracy"] == run.metrics["summary"]["images"]["accuracy"]


def test_evaluate_under_shots_and_noise_and_a_sweep_with_its_plot(runs):
    args = ("evaluate", runs / "q", "--noise", "depolarizing=0,0.05,0.3", "--shots", 200, "--no-progress")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    folders = [runs / "q" / "evaluations" / f"noise-depolarizing={p}_shots-200" for p in ("0", "0.05", "0.3")]
    metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
    assert [m["conditions"]["noise"] for m in metrics] == ["depolarizing=0", "depolarizing=0.05", "depolarizing=0.3"]
    assert all(m["conditions"]["shots"] == 200 and len(m["seeds"]) == 2 for m in metrics)
    exact = load_run(runs / "q").proba_seeds()
    noisy = load_run(folders[2]).proba_seeds()
    assert np.abs(noisy - exact).max() > 1e-3  # noise moved the probabilities
    plot = runs / "q" / "evaluations" / "sweep-depolarizing_shots-200" / "accuracy.png"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    sweep = json.loads(plot.with_name("sweep.json").read_text())
    assert [p["strength"] for p in sweep["points"]] == [0.0, 0.05, 0.3]
    again = invoke(*args[:2], "--noise", "depolarizing=0.05", "--shots", 200, "--no-progress")
    assert "kept from an earlier evaluate" in again.output
    # same seed, same numbers: a fresh evaluation of the same conditions draws the same shots
    (folders[1] / "metrics.json").unlink()
    assert invoke(*args[:2], "--noise", "depolarizing=0.05", "--shots", 200, "--no-progress").exit_code == 0
    np.testing.assert_array_equal(load_run(folders[1]).proba_seeds(), np.asarray(metrics and load_run(folders[1]).proba_seeds()))
    report = invoke("report", runs / "q", folders[1], "-o", runs / "report")
    assert report.exit_code == 0, report.output
    text = (runs / "report" / "report.md").read_text()
    assert "noise depolarizing=0.05, 200 shots" in text and "noise-free, analytic" in text


@pytest.mark.parametrize("qdevice", ["default.mixed", "lightning.qubit"])
def test_evaluate_on_other_pennylane_devices(runs, qdevice):
    result = invoke("evaluate", runs / "q", "--qdevice", qdevice, "--seed-index", 1, "--no-progress")
    assert result.exit_code == 0, result.output
    folder = runs / "q" / "evaluations" / f"device-{qdevice}_seed-1"
    np.testing.assert_allclose(load_run(folder).proba_seeds()[0], load_run(runs / "q").proba_seeds()[1], atol=1e-5)


def test_evaluate_bad_input_is_one_line(runs):
    cases = [(("--noise", "bitflip=0.1"), "unknown channel"), (("--noise", "depolarizing=2"), "outside [0, 1]"),
             (("--shots", 0), "at least 1"), (("--qdevice", "lightning.qubit", "--noise", "depolarizing=0.1"),
                                             "cannot take noise channels"), (("--seed-index", 5), "holds 2 seed")]
    for args, fragment in cases:
        assert_invoke_error(invoke("evaluate", runs / "q", *args), fragment)
    assert_invoke_error(invoke("evaluate", runs / "lin"), "holds a linear run")
    assert not (runs / "lin" / "evaluations").exists()


def test_fit_head_records_the_conditions(runs, tmp_path):
    cache = load_run(runs / "q").config.part.cache
    result = invoke("fit-head", "--head", "quantum", "--cache", cache, "--out", tmp_path / "s", "--epochs", 1,
                    "--shots", 50, "--noise", "readout=0.05", "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    expected = {"noise": "readout=0.05", "shots": 50, "gradient": "parameter-shift",
                "simulation": "torch state vector, sampled"}
    assert config["conditions"] == expected and metrics["conditions"] == expected
    assert config["head_params"]["noise"] == "readout=0.05"
