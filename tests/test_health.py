"""The training-health check (tlkit.health): in metrics.json, fit-head's warning line, and every report table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import invoke, tlkit_cli
from heads_data import blobs, write_cache
from run_helpers import fake_run

from tlkit.health import check_run, class_frequency_loss, describe, warning
from tlkit.heads import LinearHead
from tlkit.report import write_report
from tlkit.runs import build_metrics, load_run

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """Separable 3-class features: a healthy head learns them within a few epochs."""
    X, y = blobs(60, 3, seed=1)
    X_val, y_val = blobs(30, 3, seed=2)
    return X, y, X_val, y_val


def _health(head, X, y, X_val, y_val):
    head.fit(X, y, eval_set=(X_val, y_val))
    metrics = build_metrics(y_val, head.evaluation_.final_proba, head.evaluation_.best_proba, final_epoch=head.epochs,
                            best_epoch=1, training_seconds=0.0, class_names=NAMES, seeds=[head.seed],
                            histories=[head.history_], train_labels=y)
    return metrics["health"]


def test_a_head_that_cannot_learn_is_flagged_and_a_healthy_one_is_not(three_classes):
    stuck = _health(LinearHead(lr=1e-9, epochs=4), *three_classes)
    entry = stuck["seeds"][0]["did_not_learn"]
    assert stuck["n_flagged"] == 1 and stuck["seeds"][0]["flags"][0] == "did_not_learn"
    assert entry["flagged"] and entry["train_acc_constant"]  # lr 1e-9 moves no prediction
    assert entry["train_acc_first"] == entry["train_acc_last"] and entry["epochs"] == 4
    assert entry["class_frequency_loss"] == pytest.approx(np.log(3))  # 60 rows, 20 per class
    assert entry["final_train_loss"] >= 0.99 * np.log(3) and entry["loss_at_class_frequencies"]

    healthy = _health(LinearHead(lr=0.01, epochs=4), *three_classes)
    entry = healthy["seeds"][0]
    assert healthy["n_flagged"] == 0 and entry["flags"] == []
    assert entry["did_not_learn"]["flagged"] is False and entry["did_not_learn"]["final_train_loss"] < 0.5
    assert entry["one_class"] == {"flagged": False, "predicted_classes": 3, "class": None, "n": 30}
    assert entry["below_chance"]["flagged"] is False and entry["below_chance"]["accuracy"] > 0.9
    assert describe(healthy) is None and warning(healthy, ["lr", "optimizer", "step_size"]) is None


def test_one_class_and_below_chance_carry_their_numbers():
    labels = np.array([1] * 70 + [0] * 30)
    always_zero = np.tile([0.9, 0.1], (100, 1))  # one class, and the minority one: 0.30 against a rate of 0.70
    health = check_run(labels, np.stack([always_zero, np.eye(2)[labels]]), seeds=[3, 4])
    stuck, right = health["seeds"]
    assert (stuck["seed"], stuck["flags"]) == (3, ["one_class", "below_chance"])
    assert stuck["one_class"]["class"] == 0 and stuck["one_class"]["predicted_classes"] == 1
    below = stuck["below_chance"]
    assert below["accuracy"] == pytest.approx(0.3) and below["majority_class_rate"] == pytest.approx(0.7)
    assert below["ci_low"] <= 0.3 <= below["ci_high"] < 0.7  # the interval excludes the rate
    assert stuck["did_not_learn"]["flagged"] is None  # no history: not judged
    assert right["flags"] == [] and health["flags"] == {"did_not_learn": 0, "one_class": 1, "below_chance": 1}
    assert describe(health) == "1 of 2 seeds did not train (one class 1, below chance 1)"
    # Under the rate but by too little for 100 images to tell: not flagged
    near = np.eye(2)[np.where(np.arange(100) < 66, labels, 1 - labels)]  # accuracy 0.66 < 0.70
    assert check_run(labels, near)["seeds"][0]["below_chance"]["flagged"] is False


def test_class_frequency_loss_is_the_entropy_of_the_train_labels():
    assert class_frequency_loss([0, 1, 2, 3] * 5) == pytest.approx(np.log(4))
    assert class_frequency_loss([0, 0, 0, 1]) == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))


def test_the_warning_names_a_step_the_head_can_take():
    health = check_run(np.array([0, 1, 0, 1]), np.tile([0.9, 0.1], (4, 1)))
    line = warning(health, ["lr", "optimizer", "step_size", "seed"])
    assert "\n" not in line and line.startswith("warning: 1 of 1 seed did not train (one class 1)")
    assert "--optimizer adam --lr 0.0003 --step-size 30" in line and "--grid lr=" in line
    assert "--lr" not in warning(health, ["cv", "seed"])  # logreg has no learning rate to raise


def test_fit_head_warns_in_one_line_and_records_health(tmp_path):
    """A subprocess, as a user runs it: one warning line on stderr, no traceback, exit 0, health in metrics.json."""
    cache = write_cache(tmp_path / "c.h5", {"train": blobs(60, 3, seed=1), "val": blobs(30, 3, seed=2)}, NAMES)
    proc = tlkit_cli("fit-head", "--head", "linear", "--cache", cache, "--out", tmp_path / "stuck", "--lr", "1e-9",
                     "--epochs", "3", "--seeds", "3", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "3 of 3 seeds did not train" in warnings[0], proc.stderr
    health = json.loads((tmp_path / "stuck" / "metrics.json").read_text())["health"]
    assert health["n_seeds"] == 3 and health["n_flagged"] == 3 and [s["seed"] for s in health["seeds"]] == [0, 1, 2]

    result = invoke("fit-head", "--head", "logreg", "--cache", cache, "--out", tmp_path / "logreg", "--no-progress")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output
    entry = json.loads((tmp_path / "logreg" / "metrics.json").read_text())["health"]["seeds"][0]
    assert entry["did_not_learn"]["flagged"] is None and entry["one_class"]["flagged"] is False  # no epochs to judge


def _one_class_runs(tmp_path, n_seeds=5):
    labels = np.array([0, 1] * 20 + [1] * 10)
    rng = np.random.default_rng(0)
    good = np.stack([np.eye(2)[np.where(rng.random(50) < 0.9, labels, 1 - labels)] * 0.8 + 0.1
                     for _ in range(n_seeds)])
    stuck = np.tile([0.8, 0.2], (n_seeds, 50, 1))  # every seed: class 0 for every image (20 of 50 right)
    return (fake_run(tmp_path / "good", labels=labels, proba_final=good),
            fake_run(tmp_path / "stuck", labels=labels, proba_final=stuck, head="quantum"))


def test_flags_survive_a_report_of_many_seeds(tmp_path):
    good, stuck = _one_class_runs(tmp_path)
    table = write_report([good, stuck], tmp_path / "report")
    rows = {r["name"]: r for r in table["runs"]}
    assert rows["stuck"]["health"]["n_flagged"] == 5 and rows["stuck"]["health"]["n_seeds"] == 5
    assert rows["stuck"]["health"]["flags"]["one_class"] == 5 and rows["good"]["health"]["n_flagged"] == 0
    (comparison,) = table["comparisons"]
    assert list(comparison["flagged"]) == ["stuck"]
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["runs"][1]["health"]["n_flagged"] == 5 and saved["comparisons"][0]["flagged"]

    markdown = (tmp_path / "report" / "report.md").read_text()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| stuck")]
    assert len(table_rows) == 4 and all(line.startswith("| stuck ⚠ |") for line in table_rows)  # every table
    assert not any(line.startswith("| good ⚠") for line in markdown.splitlines())
    (paired,) = [line for line in markdown.splitlines() if line.startswith("| stuck ⚠ | good |")]
    assert "compares a run that did not train: stuck: 5 of 5 seeds did not train" in paired
    assert "## Training health" in markdown and "- **stuck** ⚠: 5 of 5 seeds did not train" in markdown


def test_report_says_so_on_the_terminal(tmp_path):
    good, stuck = _one_class_runs(tmp_path, n_seeds=2)
    result = invoke("report", good, stuck, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("stuck: final accuracy") and "⚠ 2 of 2 seeds did not train" in line for line in lines)
    assert any(line.startswith("stuck vs good") and "compares a run that did not train" in line for line in lines)


def test_a_run_without_health_is_checked_from_its_files(tmp_path):
    """Run folders written before the check still load and report; what their files allow is checked."""
    good, stuck = _one_class_runs(tmp_path, n_seeds=3)
    for folder in (good, stuck):
        metrics = json.loads((folder / "metrics.json").read_text())
        del metrics["health"]
        (folder / "metrics.json").write_text(json.dumps(metrics))
    run = load_run(stuck)
    assert "health" not in run.metrics and run.health["n_flagged"] == 3  # one class, from the predictions
    assert [len(h) for h in run.seed_histories()] == [3, 3, 3]  # history.json's per_seed, split up
    table = write_report([good, stuck], tmp_path / "report")
    assert table["runs"][1]["health"]["stored"] is False and table["runs"][1]["health"]["n_flagged"] == 3
    assert table["runs"][0]["health"]["n_flagged"] == 0
