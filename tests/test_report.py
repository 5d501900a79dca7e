"""`tlkit report`: the table equals the runs' metrics, valid figures, refusals of incomparable runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from cli_helpers import assert_invoke_error, invoke
from run_helpers import embedded, fake_run, head_run, proba_with_accuracy, scratch_run


BLOCK_KEYS = ("epoch", "loss", "accuracy", "roc_auc", "average_precision", "confusion_matrix")


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200


@pytest.fixture()
def seed_like_runs(tmp_path):
    """Three runs on the seed paper's 153 val images with its best accuracies: 111, 146 and 147 right."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 70 + [1] * 83)
    scratch = fake_run(tmp_path / "scratch", labels=labels, proba_final=proba_with_accuracy(labels, 111, rng),
                       kind="scratch", history_epochs=30, seconds=1000.0)
    linear = fake_run(tmp_path / "linear", labels=labels, proba_final=proba_with_accuracy(labels, 146, rng),
                      proba_best=proba_with_accuracy(labels, 150, rng), best_epoch=19, history_epochs=30,
                      seconds=430.1)
    logreg = fake_run(tmp_path / "logreg", labels=labels, proba_final=proba_with_accuracy(labels, 147, rng),
                      head="logreg", history_epochs=0, seconds=2.0)
    return [scratch, linear, logreg]


def test_table_equals_the_runs_metrics_and_figures_are_pngs(seed_like_runs, tmp_path):
    out = tmp_path / "report"
    result = invoke("report", *seed_like_runs, "-o", out)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "report.json").read_text())
    assert table["baseline"] == "scratch" and [r["name"] for r in table["runs"]] == ["scratch", "linear", "logreg"]
    base = json.loads((seed_like_runs[0] / "metrics.json").read_text())
    markdown = (out / "report.md").read_text()
    for row, run_dir in zip(table["runs"], seed_like_runs):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for block in ("final", "best"):
            assert row[block] == {k: metrics[block][k] for k in BLOCK_KEYS}
            for key in ("accuracy", "roc_auc", "average_precision"):
                expected = (metrics[block][key] - base[block][key]) / base[block][key] * 100
                assert row["relative_change"][block][key] == pytest.approx(expected)
        assert row["training_seconds"] == metrics["training_seconds"]
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {row['name']} | "))
        for value in (metrics["final"]["accuracy"], metrics["final"]["roc_auc"], metrics["best"]["accuracy"]):
            assert f"| {value:.4f} |" in line
    # The seed paper's own figures: 146 vs 111 right of 153 is its "31.52% improvement" (it divided the rounded
    # accuracies 0.9542 and 0.7255; exactly it is 35/111 = 31.53%); 430.1 s vs 1000 s is "56.99% less" time.
    linear_row = next(x for x in markdown.split("## Relative change")[1].splitlines() if x.startswith("| linear |"))
    assert "| +31.53% |" in linear_row and linear_row.rstrip().endswith("| -56.99% |")
    assert table["runs"][1]["final"]["accuracy"] == pytest.approx(146 / 153)
    assert "Quote 'final'" in markdown and "accuracy (best)" in markdown

    _assert_png(out / "curves.png")
    for name in ("scratch", "linear", "logreg"):
        _assert_png(out / f"confusion-{name}.png")
        assert f"(confusion-{name}.png)" in markdown
    assert table["figures"]["confusion"] == {n: f"confusion-{n}.png" for n in ("scratch", "linear", "logreg")}


def test_baseline_option_moves_the_reference(seed_like_runs, tmp_path):
    result = invoke("report", *seed_like_runs, "-o", tmp_path / "r", "--baseline", seed_like_runs[1])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "r" / "report.json").read_text())
    assert table["baseline"] == "linear"
    rows = {r["name"]: r for r in table["runs"]}
    assert rows["linear"]["relative_change"]["final"]["accuracy"] == 0
    assert rows["scratch"]["relative_change"]["final"]["accuracy"] == pytest.approx((111 - 146) / 146 * 100)
    assert_invoke_error(invoke("report", *seed_like_runs, "-o", tmp_path / "x", "--baseline", "nope"),
                    "--baseline nope is not one of the runs")


def test_runs_on_other_images_are_refused_and_nothing_is_written(seed_like_runs, tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array([0] * 70 + [1] * 82)  # one image fewer: e.g. a cache that skipped a file
    other = fake_run(tmp_path / "other", labels=labels, proba_final=proba_with_accuracy(labels, 140, rng))
    out = tmp_path / "report"
    result = invoke("report", *seed_like_runs, other, "-o", out)
    assert_invoke_error(result, "not comparable", str(other), str(seed_like_runs[0]), "152 images", "153 images")
    assert not out.exists()


def test_folders_that_are_not_finished_runs_are_refused(seed_like_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_invoke_error(invoke("report", seed_like_runs[0], empty), "not a finished run folder",
                    "missing config.json, metrics.json, predictions.npz")
    assert_invoke_error(invoke("report", tmp_path / "missing"), "not a run folder")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"kind": "scratch"}))
    (unfinished / "checkpoint.pt").write_bytes(b"...")
    assert_invoke_error(invoke("report", unfinished), "missing metrics.json, predictions.npz")
    damaged = fake_run(tmp_path / "damaged", labels=[0, 1], proba_final=[[0.8, 0.2], [0.3, 0.7]])
    (damaged / "metrics.json").write_text("{ not json")
    assert_invoke_error(invoke("report", damaged), "damaged")


@pytest.mark.slow
def test_real_scratch_and_head_runs_are_comparable(hymenoptera_tiny, tmp_path_factory, tmp_path):
    """train-scratch on the images and fit-head on their cache share the eval fingerprint.

    The scratch run is the one test_baseline and test_predict use (one epoch on 12 photos, once per session)."""
    cache = embedded(tmp_path_factory, hymenoptera_tiny)
    runs = [scratch_run(tmp_path_factory, hymenoptera_tiny, epochs=1),
            head_run(tmp_path_factory, cache, "linear"), head_run(tmp_path_factory, cache, "logreg")]
    result = invoke("report", *runs, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["model"] for r in table["runs"]] == ["ResNet-18 from scratch", "linear head", "logreg head"]
    assert table["runs"][1]["features"] == "frozen ResNet-18 features (random:seed=0)"
    assert table["n_eval"] == 4  # hymenoptera_tiny: 2 + 2 val
    for row, run_dir in zip(table["runs"], runs):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["final"]["accuracy"] == metrics["final"]["accuracy"]
        assert row["epochs"] == len(json.loads((run_dir / "history.json").read_text()))
    _assert_png(tmp_path / "report" / "curves.png")
    assert re.search(r"report written to .*report\.md", result.output)


def test_help_teaches():
    text = " ".join(invoke("report", "--help").output.split())
    for fragment in ("relative change", "Example:", "--baseline", "curves.png", "eval_fingerprint", "--compare RUN_A:RUN_B",
                     "paired bootstrap over images", "McNemar", "significant at 5%"):
        assert fragment in text, fragment


# --- paired comparisons and intervals ------------------------------------------------------------------

def test_every_run_is_compared_with_the_baseline(seed_like_runs, tmp_path):
    from tlkit import stats
    from tlkit.runs import load_run

    out = tmp_path / "report"
    result = invoke("report", *seed_like_runs, "-o", out, "--compare", f"{seed_like_runs[2]}:{seed_like_runs[1]}")
    assert result.exit_code == 0, result.output
    table = json.loads((out / "report.json").read_text())
    assert [(c["run"], c["baseline"]) for c in table["comparisons"]] == [
        ("linear", "scratch"), ("logreg", "scratch"), ("logreg", "linear")]
    runs = {r.name: r for r in map(load_run, seed_like_runs)}
    labels = runs["scratch"].predictions["labels"]
    markdown = (out / "report.md").read_text()
    for c in table["comparisons"]:
        expected = stats.compare(labels, runs[c["run"]].predictions["proba_final"],
                                 runs[c["baseline"]].predictions["proba_final"], run=c["run"], baseline=c["baseline"])
        assert {k: c[k] for k in expected} == expected
        assert c["metric"] == "accuracy" and c["ci_low"] <= c["difference"] <= c["ci_high"]
        assert c["difference"] == pytest.approx(runs[c["run"]].metrics["final"]["accuracy"]
                                                - runs[c["baseline"]].metrics["final"]["accuracy"])
        verdict = stats.verdict(c)
        assert f"{c['run']} vs {c['baseline']}: final accuracy {c['difference']:+.4f}" in result.output
        line = next(x for x in markdown.split("## Paired comparisons")[1].splitlines()
                    if x.startswith(f"| {c['run']} | {c['baseline']} |"))
        assert f"| {c['difference']:+.4f} |" in line and f"| {c['n_discordant']} | {verdict} |" in line
    # 146 and 147 right against 111 right of 153: both clearly better than scratch; one image apart: not
    assert [c["significant"] for c in table["comparisons"]] == [True, True, False]
    assert "significant at 5%" in result.output and "not significant" in result.output


def test_identical_predictions_in_another_order_differ_by_zero(tmp_path):
    """Pairing is image by image: a run listing the same images in another order is matched by path."""
    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 20)
    proba = proba_with_accuracy(labels, 30, rng)
    paths = [f"val/{['ants', 'bees'][y]}/img{i:04d}.jpg" for i, y in enumerate(labels)]
    order = rng.permutation(len(labels))
    a = fake_run(tmp_path / "a", labels=labels, proba_final=proba, paths=paths)
    b = fake_run(tmp_path / "b", labels=labels[order], proba_final=proba[order], paths=[paths[i] for i in order])
    result = invoke("report", a, b, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    (c,) = json.loads((tmp_path / "r" / "report.json").read_text())["comparisons"]
    assert (c["difference"], c["ci_low"], c["ci_high"], c["mcnemar_p"], c["n_discordant"]) == (0, 0, 0, 1.0, 0)
    assert "b vs a: final accuracy +0.0000" in result.output and "not significant" in result.output


def test_runs_of_many_seeds_are_reported_with_their_intervals_and_bands(tmp_path):
    from tlkit import stats

    rng = np.random.default_rng(4)
    labels = np.array([0] * 30 + [1] * 31)
    quantum = np.stack([proba_with_accuracy(labels, n, rng) for n in (50, 52, 47)])
    bottleneck = np.stack([proba_with_accuracy(labels, n, rng) for n in (55, 51)])
    runs = [fake_run(tmp_path / "linear", labels=labels, proba_final=proba_with_accuracy(labels, 49, rng)),
            fake_run(tmp_path / "quantum", labels=labels, proba_final=quantum, head="quantum"),
            fake_run(tmp_path / "bottleneck", labels=labels, proba_final=bottleneck, head="bottleneck")]
    out = tmp_path / "report"
    result = invoke("report", *runs, "-o", out, "--compare", "quantum:bottleneck")
    assert result.exit_code == 0, result.output
    table = json.loads((out / "report.json").read_text())
    (pair,) = [c for c in table["comparisons"] if (c["run"], c["baseline"]) == ("quantum", "bottleneck")]
    assert pair["difference"] == pytest.approx((50 + 52 + 47) / 3 / 61 - (55 + 51) / 2 / 61)
    expected = stats.paired_bootstrap_difference(labels, quantum, bottleneck)
    assert (pair["ci_low"], pair["ci_high"]) == (pytest.approx(expected.ci_low), pytest.approx(expected.ci_high))
    first = stats.mcnemar_exact(quantum[0].argmax(1) == labels, bottleneck[0].argmax(1) == labels)
    assert (pair["mcnemar_p"], pair["n_discordant"]) == (pytest.approx(first.p), first.n_discordant)
    assert pair["n_seeds"] == {"run": 3, "baseline": 2}
    rows = {r["name"]: r for r in table["runs"]}
    assert rows["quantum"]["seeds"] == [0, 1, 2] and rows["quantum"]["final"]["accuracy"] == pytest.approx(149 / 183)
    assert rows["quantum"]["summary"]["accuracy"]["n"] == 3
    assert "quantum: final accuracy 0.8142 (mean of 3 seeds)" in result.output
    assert "quantum vs bottleneck: final accuracy" in result.output
    markdown = (out / "report.md").read_text()
    intervals = markdown.split("## How sure")[1]
    assert "| quantum | 3 | 0.8142 |" in intervals and "| linear | 1 | 0.8033 |" in intervals
    assert "shaded from the lowest to the highest seed" in markdown
    _assert_png(out / "curves.png")
    _assert_png(out / "confusion-quantum.png")


def test_a_bad_compare_pair_is_one_line(seed_like_runs, tmp_path):
    assert_invoke_error(invoke("report", *seed_like_runs, "-o", tmp_path / "r", "--compare", "linear:nope"),
                        "--compare linear:nope", "RUN_A:RUN_B")
    assert_invoke_error(invoke("report", *seed_like_runs, "-o", tmp_path / "r", "--compare", "linear"),
                        "--compare linear")
    assert_invoke_error(invoke("report", *seed_like_runs, "-o", tmp_path / "r", "--compare", "linear:linear"),
                        "compared with itself")
    assert not (tmp_path / "r").exists()
