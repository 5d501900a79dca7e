"""`tlkit predict`: reproduces each run's own val predictions; bad images reported; refusals."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from run_helpers import embedded, head_run, scratch_run

from cli_helpers import assert_invoke_error, invoke
from tlkit.metrics import predict_from_proba
from tlkit.runs import load_run

pytestmark = pytest.mark.slow


def _assert_reproduces(run_dir, data, predictions: dict[str, list[float]], labels: dict[str, str]):
    """``predictions``: probabilities by path relative to the data root, as predict returned them."""
    run = load_run(run_dir)
    expected = dict(zip(run.predictions["paths"], run.predictions["proba_final"]))
    assert sorted(predictions) == sorted(expected)
    for path, proba in expected.items():
        np.testing.assert_allclose(predictions[path], proba, atol=1e-6, err_msg=path)
    names = run.config.class_names
    wanted = predict_from_proba(np.stack(list(expected.values())))
    assert [labels[p] for p in expected] == [names[i] for i in wanted]


def _from_json(text, data):
    doc = json.loads(text)
    rel = lambda p: str(p).removeprefix(str(data) + "/")  # noqa: E731
    probs = {rel(p["path"]): [p["probabilities"][c] for c in doc["class_names"]] for p in doc["predictions"]}
    return probs, {rel(p["path"]): p["label"] for p in doc["predictions"]}


def test_scratch_run_reproduces_its_val_predictions(hymenoptera_tiny, tmp_path_factory):
    run_dir = scratch_run(tmp_path_factory, hymenoptera_tiny, epochs=1)
    result = invoke("predict", run_dir, hymenoptera_tiny / "val", "--format", "json")
    assert result.exit_code == 0, result.output
    _assert_reproduces(run_dir, hymenoptera_tiny, *_from_json(result.stdout, hymenoptera_tiny))


@pytest.mark.parametrize("head", ["linear", "logreg", "quantum"])
def test_head_runs_reproduce_their_val_predictions(hymenoptera_small, tmp_path_factory, tmp_path, head):
    run_dir = head_run(tmp_path_factory, embedded(tmp_path_factory, hymenoptera_small), head)
    out = tmp_path / "pred.csv"
    result = invoke("predict", run_dir, hymenoptera_small / "val", "--format", "csv", "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    rel = lambda p: p.removeprefix(str(hymenoptera_small) + "/")  # noqa: E731
    probs = {rel(r["path"]): [float(r["p_ants"]), float(r["p_bees"])] for r in rows}
    _assert_reproduces(run_dir, hymenoptera_small, probs, {rel(r["path"]): r["label"] for r in rows})


def test_cache_from_a_weights_file_needs_that_file(hymenoptera_tiny, tmp_path_factory, tmp_path):
    from tlkit.weights import Weights

    weights = tmp_path_factory.mktemp("weights") / "my-resnet.pt"
    torch.save(Weights.random(5).load().state_dict, weights)
    run_dir = head_run(tmp_path_factory, embedded(tmp_path_factory, hymenoptera_tiny, str(weights)), "linear")
    images = hymenoptera_tiny / "val"
    assert_invoke_error(invoke("predict", run_dir, images), "weights file my-resnet.pt", "--weights PATH", ignore=("skipped ",))
    other = tmp_path / "other.pt"
    torch.save(Weights.random(6).load().state_dict, other)
    assert_invoke_error(invoke("predict", run_dir, images, "--weights", other), "not the weights the features were made with", "sha256", ignore=("skipped ",))
    result = invoke("predict", run_dir, images, "--weights", weights, "--format", "json")
    assert result.exit_code == 0, result.output
    _assert_reproduces(run_dir, hymenoptera_tiny, *_from_json(result.stdout, hymenoptera_tiny))


def test_bad_images_are_reported_not_fatal(hymenoptera_tiny, tmp_path_factory, tmp_path):
    run_dir = scratch_run(tmp_path_factory, hymenoptera_tiny, epochs=1)
    good = sorted((hymenoptera_tiny / "val" / "bees").iterdir())[0]
    (tmp_path / "notes.jpg").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    result = invoke("predict", run_dir, good, tmp_path / "notes.jpg", tmp_path / "empty.png", tmp_path / "gone.jpg")
    assert result.exit_code == 0, result.output
    assert f"skipped {tmp_path / 'notes.jpg'}: not an image PIL can read" in result.stderr
    assert f"skipped {tmp_path / 'empty.png'}: empty file (0 bytes)" in result.stderr
    assert f"skipped {tmp_path / 'gone.jpg'}: no such file or folder" in result.stderr
    table = result.stdout.strip().splitlines()
    assert table[0].split() == ["path", "label", "p(ants)", "p(bees)"]
    assert len(table) == 2 and table[1].startswith(str(good))
    p_ants, p_bees = map(float, table[1].split()[2:])
    assert p_ants + p_bees == pytest.approx(1, abs=2e-4)

    result = invoke("predict", run_dir, tmp_path, "--format", "json")  # a folder with only bad images
    assert_invoke_error(result, "no image could be predicted (2 skipped)", ignore=("skipped ",))


def test_folders_that_are_not_runs_are_refused(hymenoptera_small, tmp_path):
    image = sorted((hymenoptera_small / "val" / "ants").iterdir())[0]
    assert_invoke_error(invoke("predict", tmp_path / "missing", image), "not a run folder", ignore=("skipped ",))
    assert_invoke_error(invoke("predict", tmp_path, image), "not a run folder (no config.json)", ignore=("skipped ",))
    (tmp_path / "config.json").write_text(json.dumps({"kind": "scratch", "class_names": ["a", "b"]}))
    assert_invoke_error(invoke("predict", tmp_path, image), "has no model.pt", ignore=("skipped ",))


def test_help_teaches():
    text = " ".join(invoke("predict", "--help").output.split())
    for fragment in ("Examples:", "--format", "sha256", "cannot be decoded"):
        assert fragment in text, fragment
