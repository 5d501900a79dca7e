"""`tlkit fit-head` end to end: real cached features, the run folder contract, splits, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from heads_data import blobs, write_cache
from run_helpers import embedded, head_run_output
from tlkit.cache import load_cache
from tlkit.cli import TlkitGroup
from tlkit.heads import load_head
from tlkit.heads.cli import fit_head
from tlkit.metrics import classification_metrics
from tlkit.runs import eval_fingerprint, load_run
from tlkit.train import TrainConfig

HEADS = ("linear", "logreg", "quantum", "bottleneck")


def cli():
    group = TlkitGroup()  # the real group class: its error handling is under test too
    group.add_command(fit_head)
    return group


def run_cli(*args):
    return CliRunner().invoke(cli(), ["fit-head", *map(str, args)])


@pytest.fixture(scope="module")
def real_cache(hymenoptera_small, tmp_path_factory):
    """Real features: the 26-image hymenoptera subset embedded with random weights, once per session
    (shared with test_predict and test_report: embedding all 398 photos here cost minutes)."""
    return embedded(tmp_path_factory, hymenoptera_small)


@pytest.fixture(scope="module")
def real_runs(real_cache, tmp_path_factory):
    """Each head at its default settings on the hymenoptera features (embedded with random weights);
    trained once per session, shared with test_predict and test_report."""
    return {head: head_run_output(tmp_path_factory, real_cache, head) for head in HEADS}


@pytest.mark.parametrize("head", HEADS)
def test_real_features_run_folder(head, real_runs, real_cache):
    run_dir, output = real_runs[head]
    cache = load_cache(real_cache)
    val = cache["val"]
    assert "final" in output and "best (opt.)" in output and f"run folder: {run_dir}" in output

    run = load_run(run_dir)
    config = run.config.to_json()  # config.json as written
    assert config["kind"] == "head" and config["head"] == head
    assert config["cache"] == str(Path(real_cache).resolve())
    assert config["cache_provenance"] == cache.provenance.as_dict()
    assert config["class_names"] == cache.class_names == ["ants", "bees"]
    assert config["eval_split"] == "val" and config["val_fraction"] is None
    assert config["eval_fingerprint"] == eval_fingerprint(val.paths, val.labels, cache.class_names)
    assert (config["n_train"], config["n_eval"]) == (16, 10)  # hymenoptera_small: 8 + 8 train, 5 + 5 val
    if head == "logreg":
        assert "train" not in config and config["logreg"]["C"] > 0
        assert run.history == []
    else:
        assert config["train"] == TrainConfig().to_dict()  # the seed paper's defaults
        assert [r["epoch"] for r in run.history] == list(range(1, 31))
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(run.history[0])
        assert (run_dir / "history.csv").read_text().count("\n") == 31
    if head == "quantum":
        assert config["head_params"]["n_qubits"] == 4 and config["head_params"]["depth"] == 6
        assert config["circuit_simulator"] == "torch"

    # predictions.npz: the val rows, and the metrics are those of these probabilities
    pred = run.predictions
    assert list(pred["paths"]) == list(val.paths) and np.array_equal(pred["labels"], val.labels)
    for block, key in (("final", "proba_final"), ("best", "proba_best")):
        expected = classification_metrics(val.labels, pred[key])
        assert {k: run.metrics[block][k] for k in expected} == expected
    assert run.metrics["training_seconds"] > 0 and "optimistic" in run.metrics["note"]
    if head != "logreg":
        accs = [r["val_acc"] for r in run.history]
        assert run.metrics["best"]["epoch"] == 1 + int(np.argmax(accs)) and run.metrics["final"]["epoch"] == 30
        assert run.metrics["final"]["accuracy"] == pytest.approx(accs[-1])

    # the saved weights give back the recorded probabilities, loaded without pickle
    head_est = load_head(run_dir)
    assert np.allclose(head_est.predict_proba(val.features), pred["proba_final"], atol=1e-6)
    assert list(head_est.classes_) == [0, 1]
    if head == "logreg":
        with np.load(run_dir / "model.npz", allow_pickle=False) as npz:
            assert npz["coef"].shape == (1, 512)
    else:
        best = load_head(run_dir, which="best")
        assert np.allclose(best.predict_proba(val.features), pred["proba_best"], atol=1e-6)


def test_same_seed_same_run(real_cache, tmp_path):
    def numbers(run_dir):
        run = load_run(run_dir)
        metrics = {k: v for k, v in run.metrics.items() if k != "training_seconds"}
        history = [{k: v for k, v in r.items() if k != "seconds"} for r in run.history]
        return metrics, history, run.predictions["proba_final"]

    for head, epochs in (("linear", 3), ("quantum", 2)):
        outs = []
        for i, seed in enumerate((4, 4, 5)):
            out = tmp_path / f"{head}{i}"
            result = run_cli("--head", head, "--cache", real_cache, "--epochs", epochs, "--seed", seed, "--out", out)
            assert result.exit_code == 0, result.output
            outs.append(numbers(out))
        (m0, h0, p0), (m1, h1, p1), (_, _, p2) = outs
        assert m0 == m1 and h0 == h1 and np.array_equal(p0, p1)
        assert not np.array_equal(p0, p2)  # the seed matters


def test_all_only_cache_uses_a_seeded_stratified_holdout(tmp_path):
    X, y = blobs(90, 3, seed=1)
    cache = write_cache(tmp_path / "all.h5", {"all": (X, y)}, ["a", "b", "c"])

    def fit(out, *extra):
        result = run_cli("--head", "linear", "--cache", cache, "--out", tmp_path / out, *extra)
        assert result.exit_code == 0, result.output
        return load_run(tmp_path / out)

    run = fit("r0")
    config = run.config.to_json()  # config.json as written
    assert config["eval_split"] == "holdout" and config["split_source"] == "all"
    assert config["val_fraction"] == 0.2 and config["split_seed"] == 0
    assert (config["n_train"], config["n_eval"]) == (72, 18)
    assert np.bincount(run.predictions["labels"]).tolist() == [6, 6, 6]  # stratified
    assert run.metrics["final"]["accuracy"] >= 0.95
    assert np.array(run.metrics["final"]["confusion_matrix"]).shape == (3, 3)

    again = fit("r1")
    other = fit("r2", "--split-seed", "1")
    wider = fit("r3", "--val-fraction", "0.4")
    assert again.config.eval_fingerprint == config["eval_fingerprint"]
    assert list(again.predictions["paths"]) == list(run.predictions["paths"])
    assert other.config.eval_fingerprint != config["eval_fingerprint"]
    assert wider.config.n_eval == 36


@pytest.mark.parametrize("head", HEADS)
def test_three_classes_every_head(head, tmp_path):
    names = ["cat", "dog", "owl"]
    cache = write_cache(tmp_path / "three.h5", {"train": blobs(90, 3, seed=1), "val": blobs(45, 3, seed=2)}, names)
    result = run_cli("--head", head, "--cache", cache, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    assert run.predictions["proba_final"].shape == (45, 3)
    final = run.metrics["final"]
    assert final["accuracy"] >= 0.95 and final["roc_auc"] > 0.95 and final["average_precision"] > 0.95
    assert np.trace(np.array(final["confusion_matrix"])) == round(final["accuracy"] * 45)
    assert load_head(tmp_path / "run").predict(blobs(45, 3, seed=2)[0]).tolist() == np.argmax(
        run.predictions["proba_final"], axis=1).tolist()


# --- bad input: one line, exit 1, nothing written ------------------------------------------------

def _two_class(tmp_path, **kw):
    return write_cache(tmp_path / "c.h5", {"train": blobs(20, 2, seed=1), "val": blobs(10, 2, seed=2)}, ["a", "b"], **kw)


def _bad_inputs(tmp_path):
    X, y = blobs(20, 2, seed=1)
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("hello")
    parts_only = tmp_path / "pending.h5"
    (tmp_path / "pending.h5.parts").mkdir()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    return {
        "missing": (["--cache", tmp_path / "nope.h5"], "does not exist"),
        "not hdf5": (["--cache", not_h5], "not an HDF5 file"),
        "foreign": (["--cache", foreign], "not a tlkit feature cache"),
        "schema": (["--cache", write_cache(tmp_path / "v9.h5", {"train": (X, y)}, ["a", "b"], schema_version=9)], "schema version 9"),
        "unfinished": (["--cache", write_cache(tmp_path / "u.h5", {"train": (X, y)}, ["a", "b"], complete=False)], "unfinished"),
        "embed running": (["--cache", parts_only], "unfinished"),
        "single class": (["--cache", write_cache(tmp_path / "one.h5", {"train": (X, np.zeros_like(y)), "val": (X, y)}, ["a", "b"])], "single class"),
        "empty val": (["--cache", write_cache(tmp_path / "ev.h5", {"train": (X, y), "val": (X[:0], y[:0])}, ["a", "b"])], "'val'"),
        "empty all": (["--cache", write_cache(tmp_path / "ea.h5", {"all": (X[:0], y[:0])}, ["a", "b"])], "empty"),
        "unknown device": (["--cache", _two_class(tmp_path), "--head", "quantum", "--qdevice", "no.such.device"], "installed devices"),
        "torch sim on another device": (["--cache", _two_class(tmp_path), "--head", "quantum", "--qdevice", "lightning.qubit",
                                         "--qsim", "torch"], "torch simulator"),
        "noise on lightning": (["--cache", _two_class(tmp_path), "--head", "quantum", "--qdevice", "lightning.qubit",
                                "--noise", "depolarizing=0.01"], "cannot take noise channels"),
        "unknown channel": (["--cache", _two_class(tmp_path), "--head", "quantum", "--noise", "bitflip=0.1"], "unknown channel"),
    }


@pytest.mark.parametrize("case", ["missing", "not hdf5", "foreign", "schema", "unfinished", "embed running", "single class",
                                  "empty val", "empty all", "unknown device", "torch sim on another device",
                                  "noise on lightning", "unknown channel"])
def test_bad_input_is_one_line(case, tmp_path):
    args, expected = _bad_inputs(tmp_path)[case]
    if "--head" not in args:
        args = ["--head", "linear", *args]
    out = tmp_path / "run"
    result = run_cli(*args, "--out", out, "--epochs", "1")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_finished_run_is_never_overwritten(tmp_path):
    cache = _two_class(tmp_path)
    out = tmp_path / "run"
    assert run_cli("--head", "linear", "--cache", cache, "--out", out, "--epochs", "2").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_cli("--head", "quantum", "--cache", cache, "--out", out, "--epochs", "2")
    assert result.exit_code == 1 and "already holds a finished run" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_flags_that_do_not_apply_are_reported(tmp_path):
    result = run_cli("--head", "logreg", "--cache", _two_class(tmp_path), "--out", tmp_path / "r", "--epochs", "5", "--depth", "2")
    assert result.exit_code == 0, result.output
    assert "note: --epochs, --depth do(es) not apply to --head logreg" in result.stderr


def test_options_are_generated_from_the_declarations():
    """Every declared hyperparameter is one option with its declared default; so are train-scratch's."""
    from tlkit.baseline.cli import train_scratch
    from tlkit.heads.registry import HEADS

    from tlkit.train.hparams import HParamOption

    options = {p.name: p for p in fit_head.params}
    for spec in HEADS.values():
        for param in spec.params:
            if param.cli:
                assert options[param.name].default == param.default, param.name
    # Python-only settings have no option of their own (svc's gamma is not the StepLR --gamma; logreg's cv is
    # fit-head's general --cv, which also sets a sweep's folds).
    assert {n for n, o in options.items() if isinstance(o, HParamOption)} == {
        p.name for spec in HEADS.values() for p in spec.params if p.cli}
    assert "cv" in options and not isinstance(options["cv"], HParamOption)
    scratch = {p.name: p.default for p in train_scratch.params}
    assert {name: scratch[name] for name in TrainConfig.names()} == TrainConfig().to_dict()
    text = CliRunner().invoke(cli(), ["fit-head", "--help"]).output
    assert "Training loop (--head linear, quantum, bottleneck):" in text and "Quantum circuit (--head quantum):" in text
    assert "(--head quantum, bottleneck):" in text  # --n-qubits: the circuit's width and its control's
    assert "--simulator" in text and "--qsim" not in text  # the old name still works, unlisted


def test_old_qsim_flag_still_sets_the_simulator(tmp_path):
    cache = _two_class(tmp_path)
    result = run_cli("--head", "quantum", "--cache", cache, "--out", tmp_path / "q", "--epochs", 1, "--qsim", "qnode")
    assert result.exit_code == 0, result.output
    config = load_run(tmp_path / "q").config.to_json()
    assert config["head_params"]["simulator"] == "qnode" and config["circuit_simulator"] == "qnode"
    result = run_cli("--head", "linear", "--cache", cache, "--out", tmp_path / "l", "--epochs", 1, "--qsim", "torch")
    assert result.exit_code == 0, result.output
    assert "note: --simulator do(es) not apply to --head linear; ignored" in result.stderr


def test_help_teaches():
    text = CliRunner().invoke(cli(), ["fit-head", "--help"]).output
    for needle in ("cache/feats.h5", "runs/<head>-<timestamp>", "--qdevice", "default: 30", "Examples", "hold-out"):
        assert needle in text


def test_installed_command_prints_no_traceback(tmp_path):
    """Through the real `tlkit` entry point, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "tlkit.cli", "fit-head", "--head", "quantum", "--cache", str(tmp_path / "missing.h5")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: cache {tmp_path / 'missing.h5'} does not exist; create it with "
                                                f"`tlkit embed DATA_DIR {tmp_path / 'missing.h5'}`"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, fragment", [(("--shots", 0), "'--shots': 0 is not in the range x>=1"),
                                            (("--cv", 1), "'--cv': 1 is not in the range x>=2"),
                                            (("--bogus",), "No such option '--bogus'"),
                                            (("--head", "qantum"), "'--head'")])
def test_usage_errors_are_one_line_too(args, fragment, tmp_path):
    """click's usage errors (a value out of its declared range, an unknown option) come as one line, exit 2."""
    result = run_cli("--cache", _two_class(tmp_path), "--out", tmp_path / "run", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert result.stderr.rstrip().endswith(" fit-head --help`)")  # where to read the valid values
    assert "Usage:" not in result.output and not (tmp_path / "run").exists()
