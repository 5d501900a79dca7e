"""`tlkit fit-head --seeds`: the run folder of many seeds equals separate `--seed k` runs; bad specs are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from heads_data import blobs, write_cache
from tlkit.cli import TlkitGroup
from tlkit.heads import load_head
from tlkit.heads.cli import fit_head
from tlkit.metrics import classification_metrics
from tlkit.runs import MODEL_ARRAYS_SEEDS, MODEL_SEEDS, load_run

QUICK = ("--epochs", "3", "--batch-size", "3", "--lr", "0.01")


def run_cli(*args):
    group = TlkitGroup()  # the real group class: its one-line errors are under test too
    group.add_command(fit_head)
    return CliRunner().invoke(group, ["fit-head", *map(str, args)])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Overlapping blobs: noisy enough that seeds disagree, so comparing seeds compares something."""
    folder = tmp_path_factory.mktemp("seeds_cache")
    return write_cache(folder / "c.h5", {"train": blobs(40, 2, seed=1, noise=2.5),
                                         "val": blobs(31, 2, seed=2, noise=2.5)}, ["ants", "bees"])


def fit(cache, out, head, *args):
    result = run_cli("--head", head, "--cache", cache, "--out", out, "--no-progress", *args)
    assert result.exit_code == 0, result.output
    return load_run(out), result.output


@pytest.mark.parametrize("head", ["linear", "quantum", "bottleneck"])
def test_many_seeds_equal_separate_seed_runs(head, cache, tmp_path):
    many, output = fit(cache, tmp_path / "many", head, "--seeds", "0,3", *QUICK)
    singles = [fit(cache, tmp_path / f"seed{s}", head, "--seed", s, *QUICK)[0] for s in (0, 3)]

    assert many.seeds == [0, 3] and many.config.part.seeds == [0, 3]
    assert many.config.part.head_params["seed"] == 0  # model.pt is the first seed's
    finals = many.proba_seeds("final")
    assert finals.shape == (2, 31, 2)
    assert not np.allclose(finals[0], finals[1])  # the seeds really differ
    for i, single in enumerate(singles):
        assert single.seeds == [(0, 3)[i]] and "proba_final_seeds" not in single.predictions
        np.testing.assert_allclose(finals[i], single.predictions["proba_final"], atol=1e-4)
        np.testing.assert_allclose(many.proba_seeds("best")[i], single.predictions["proba_best"], atol=1e-4)
        mine = many.metrics["seeds"][i]
        assert mine["seed"] == (0, 3)[i]
        assert mine["final"]["accuracy"] == single.metrics["final"]["accuracy"]  # the same final accuracy
        assert mine["best"]["epoch"] == single.metrics["best"]["epoch"]
        for row, theirs in zip(many.history, single.history):
            assert row["per_seed"]["val_acc"][i] == theirs["val_acc"]
            assert row["per_seed"]["train_loss"][i] == pytest.approx(theirs["train_loss"], abs=1e-5)
    # the first seed's probabilities are where a single run keeps them; model.pt / load_head give them back
    np.testing.assert_array_equal(many.predictions["proba_final"], finals[0])
    # (within float32 rounding: the stacked pass multiplies in another order than one module does)
    val = blobs(31, 2, seed=2, noise=2.5)[0]
    np.testing.assert_allclose(load_head(many.path).predict_proba(val), finals[0], atol=1e-4)
    np.testing.assert_allclose(load_head(many.path, seed=3).predict_proba(val), finals[1], atol=1e-4)
    np.testing.assert_allclose(load_head(many.path, which="best", seed=3).predict_proba(val),
                               many.proba_seeds("best")[1], atol=1e-4)
    assert not np.allclose(load_head(many.path, seed=3).predict_proba(val), finals[0], atol=1e-4)
    assert (many.path / MODEL_SEEDS).is_file()

    # final / best: the across-seed means of the seeds' blocks; summary: across seeds and over images
    for block in ("final", "best"):
        for key in ("accuracy", "roc_auc", "average_precision"):
            assert many.metrics[block][key] == pytest.approx(np.mean([s[block][key] for s in many.metrics["seeds"]]))
    assert many.metrics["final"]["epoch"] == 3
    summary = many.metrics["summary"]
    assert summary["accuracy"]["mean"] == pytest.approx(many.metrics["final"]["accuracy"]) and summary["accuracy"]["n"] == 2
    images = summary["images"]["accuracy"]
    assert images["n_resamples"] >= 2000 and images["ci_low"] <= images["estimate"] <= images["ci_high"]
    assert images["estimate"] == pytest.approx(many.metrics["final"]["accuracy"])
    assert many.metrics["training_seconds"] == pytest.approx(sum(s["training_seconds"] for s in many.metrics["seeds"]))
    assert "mean of 2 seeds" in output and " ± " in output and "95% interval over the evaluation images" in output


def test_a_single_seed_run_keeps_its_layout_plus_the_image_interval(cache, tmp_path):
    run, output = fit(cache, tmp_path / "one", "linear", *QUICK)
    assert "seeds" not in run.metrics and sorted(run.predictions) == ["labels", "paths", "proba_best", "proba_final"]
    assert not (run.path / MODEL_SEEDS).exists()
    labels = run.predictions["labels"]
    assert run.metrics["final"] == {"epoch": 3, "loss": run.history[-1]["val_loss"],
                                    **classification_metrics(labels, run.predictions["proba_final"])}
    summary = run.metrics["summary"]
    assert summary["accuracy"] == {"mean": run.metrics["final"]["accuracy"], "std": None, "ci_low": None,
                                   "ci_high": None, "n": 1, "confidence": 0.95}
    assert summary["images"]["accuracy"]["ci_low"] < summary["images"]["accuracy"]["ci_high"]
    assert "95% interval over the evaluation images" in output and "±" not in output
    assert run.proba_seeds().shape == (1, 31, 2)


def test_logreg_takes_seeds_too(cache, tmp_path):
    many, _ = fit(cache, tmp_path / "many", "logreg", "--seeds", "2", "--cv", "3")
    single, _ = fit(cache, tmp_path / "one", "logreg", "--seed", "1", "--cv", "3")
    np.testing.assert_allclose(many.proba_seeds()[1], single.predictions["proba_final"], atol=1e-9)
    assert (many.path / MODEL_ARRAYS_SEEDS).is_file() and many.history == []
    val = blobs(31, 2, seed=2, noise=2.5)[0]
    np.testing.assert_allclose(load_head(many.path, seed=1).predict_proba(val), many.proba_seeds()[1], atol=1e-9)
    assert many.metrics["final"]["epoch"] is None


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "at least 1"),
    (["--seeds", "5-2"], "runs backwards"),
    (["--seeds", "1,5,1"], "seed 1 is given twice"),
    (["--seeds", "ten"], "not a count"),
    (["--seed", "1", "--seeds", "3"], "--seed and --seeds"),
    (["--seed", "0", "--seeds", "0-2"], "--seed and --seeds"),  # even at --seed's default value: it was given
])
def test_bad_seeds_are_one_line_and_write_nothing(args, message, cache, tmp_path):
    out = tmp_path / "run"
    result = run_cli("--head", "linear", "--cache", cache, "--out", out, *args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output and not out.exists()


def test_a_seed_that_the_run_does_not_hold_is_one_line(cache, tmp_path):
    from tlkit.heads import HeadError

    fit(cache, tmp_path / "many", "bottleneck", "--seeds", "2", *QUICK)
    with pytest.raises(HeadError, match="holds no seed 7"):
        load_head(tmp_path / "many", seed=7)


def test_help_shows_seeds_with_an_example():
    text = " ".join(run_cli("--help").output.split())
    assert "--seeds SPEC" in text and "--seeds 10" in text and "0-9" in text and "1,5,9" in text


def test_config_records_the_seeds_and_each_seeds_choice(cache, tmp_path):
    run, _ = fit(cache, tmp_path / "lr", "logreg", "--seeds", "1,4", "--cv", "3")
    config = json.loads((run.path / "config.json").read_text())
    assert config["seeds"] == [1, 4] and config["head_params"]["seed"] == 1
    chosen = config.get("per_seed", [{"seed": 1, **{"logreg": config["logreg"]}}])
    assert chosen[0]["seed"] == 1 and chosen[0]["logreg"]["C"] == config["logreg"]["C"]
