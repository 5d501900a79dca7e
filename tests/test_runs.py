"""The run-folder contract (tlkit.runs): one config type, one writer, and old run folders still load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from heads_data import blobs
from run_helpers import fake_run

from tlkit.data.transforms import TransformSpec
from tlkit.errors import TlkitError
from tlkit.heads import LinearHead, QuantumHead, load_head
from tlkit.report.table import build_table
from tlkit.runs import (
    CHECKPOINT, CONFIG, METRICS, HeadPart, NetworkPart, RunConfig, RunWriter, build_metrics, eval_fingerprint,
    load_run, read_config,
)

PROVENANCE = {
    "backbone": "resnet18", "layer": "avgpool", "weights_id": "random:seed=0", "weights_sha256": "0" * 64,
    "transform": {"resize": 256, "crop": 224}, "feature_dim": 512, "tlkit_version": "0.1.0", "torch_version": "x",
    "torchvision_version": "x", "created": "2025-01-01T00:00:00+00:00", "data_root": "/data",
}
TRAIN = {"epochs": 2, "batch_size": 4, "lr": 0.001, "momentum": 0.9, "step_size": 7, "gamma": 0.1, "optimizer": "sgd",
         "weight_decay": 0.0, "seed": 0}


def _write_old_files(folder, config: dict, labels, proba, model: dict):
    """A finished run folder byte for byte as tlkit wrote it before the contract (no tlkit code involved)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "history.json").write_text(json.dumps([]))
    np.savez(folder / "predictions.npz", paths=np.asarray(config_paths(labels), dtype=str),
             labels=np.asarray(labels, dtype=np.int64), proba_final=proba, proba_best=proba)
    torch.save(model, folder / "model.pt")
    block = {"epoch": 2, "loss": 0.5, "accuracy": 1.0, "roc_auc": 1.0, "average_precision": 1.0,
             "confusion_matrix": [[5, 0], [0, 5]], "n": 10}
    (folder / "metrics.json").write_text(json.dumps({
        "class_names": ["ants", "bees"], "n_eval": len(labels), "training_seconds": 1.0, "final": block,
        "best": block, "note": "...",
    }))


def config_paths(labels):
    return [f"val/{['ants', 'bees'][y]}/{i:05d}.jpg" for i, y in enumerate(labels)]


@pytest.mark.parametrize("head", ["linear", "quantum"])
def test_a_head_run_of_the_previous_layout_still_loads(head, tmp_path):
    """fit-head wrote tlkit_version (not versions), and the quantum head's simulator in head_params."""
    X, y = blobs(20, 2, seed=1)
    X_val, y_val = blobs(10, 2, seed=2)
    fitted = (LinearHead(epochs=2) if head == "linear" else QuantumHead(epochs=2, depth=2)).fit(X, y)
    head_params = dict(TRAIN)
    details = {}
    if head == "quantum":
        head_params.update(n_qubits=4, depth=2, q_delta=0.01, qdevice="default.qubit", shots=None, simulator="auto")
        details = {"circuit_simulator": "torch"}
    config = {
        "kind": "head", "head": head, "cache": "/somewhere/c.h5", "cache_provenance": PROVENANCE,
        "class_names": ["ants", "bees"], "eval_split": "val", "split_source": "val", "val_fraction": None,
        "split_seed": None, "eval_fingerprint": eval_fingerprint(config_paths(y_val), y_val, ["ants", "bees"]),
        "n_train": 20, "n_eval": 10, "n_features": 512, "classes": [0, 1], "head_params": head_params,
        "weights": ["model.pt"], "tlkit_version": "0.1.0", "created": "2025-06-01T00:00:00+00:00", "train": TRAIN,
        **details,
    }
    proba = fitted.predict_proba(X_val)
    _write_old_files(tmp_path / "old", config, y_val, proba, fitted.module_.state_dict())

    run = load_run(tmp_path / "old")
    assert run.config.kind == "head" and isinstance(run.config.part, HeadPart)
    assert run.config.part.head == head and run.config.part.head_params == head_params
    assert run.config.versions == {"tlkit": "0.1.0"}  # tlkit_version, read into the one versions field
    assert run.config.details == {"train": TRAIN, **details}
    assert run.config.describe_model() == f"{head} head"
    assert run.config.describe_features() == "frozen ResNet-18 features (random:seed=0)"
    loaded = load_head(tmp_path / "old")
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_allclose(loaded.predict_proba(X_val), proba, atol=1e-6)
    assert build_table([run])["runs"][0]["model"] == f"{head} head"


def test_a_scratch_run_of_the_previous_layout_still_loads(tmp_path):
    import torchvision

    from tlkit.predict.predictor import load_predictor

    y_val = np.array([0, 1] * 5)
    config = {
        "kind": "scratch", "model": "resnet18", "init": {"weights": "random", "seed": 3}, "data_root": "/data",
        "train_split": "train", "eval_split": "val", "class_names": ["ants", "bees"], "n_train": 16, "n_eval": 10,
        "train_fingerprint": "f" * 64, "eval_fingerprint": eval_fingerprint(config_paths(y_val), y_val, ["ants", "bees"]),
        "train": TRAIN, "transform": json.loads(TransformSpec().to_json()),
        "augmentation": {"random_resized_crop": 224, "horizontal_flip": 0.5}, "skipped": [], "device": "cpu",
        "workers": 0, "versions": {"tlkit": "0.1.0", "torch": "2.5", "torchvision": "0.20"},
        "created": "2025-06-01T00:00:00+00:00",
    }
    model = torchvision.models.resnet18(weights=None, num_classes=2).state_dict()
    _write_old_files(tmp_path / "old", config, y_val, np.full((10, 2), 0.5), model)

    run = load_run(tmp_path / "old")
    assert isinstance(run.config.part, NetworkPart)
    assert run.config.part.train == TRAIN and run.config.part.init == {"weights": "random", "seed": 3}
    assert run.config.versions["torchvision"] == "0.20" and run.config.details == {}
    assert run.config.to_json() == config  # read and written back, nothing lost or renamed
    row = build_table([run])["runs"][0]
    assert (row["model"], row["features"]) == ("ResNet-18 from scratch", "images, random init (seed 3)")
    predictor = load_predictor(tmp_path / "old", device="cpu")
    assert predictor.class_names == ["ants", "bees"] and predictor.description == "ResNet-18 (scratch)"
    assert predictor.transform.crop == 224


def test_config_round_trip_keeps_keys_it_does_not_name(tmp_path):
    config = RunConfig(kind="finetune", class_names=["a", "b"], eval_split="val", eval_fingerprint="e" * 64,
                       n_train=3, n_eval=2, part=NetworkPart(init={"weights_id": "random:seed=1"}),
                       versions={"tlkit": "9"}, created="now", details={"from_the_future": [1, 2]})
    doc = json.loads(json.dumps(config.to_json()))
    assert doc["from_the_future"] == [1, 2] and "details" not in doc and "part" not in doc
    assert RunConfig.from_json(doc) == config
    assert config.describe_features() == "images, init random:seed=1"


@pytest.mark.parametrize("doc, message", [
    ([1, 2], "not a tlkit run configuration"),
    ({"class_names": ["a"]}, "not a tlkit run configuration"),
    ({"kind": "dream", "class_names": ["a"]}, "'dream' run, which this tlkit does not know"),
    ({"kind": "head", "class_names": ["a"]}, "lacks what a 'head' run records"),
])
def test_what_is_not_a_run_configuration_is_one_line(doc, message, tmp_path):
    (tmp_path / CONFIG).write_text(json.dumps(doc))
    with pytest.raises(TlkitError, match=message) as info:
        read_config(tmp_path)
    assert "\n" not in str(info.value)


def test_the_writer_writes_metrics_last_and_never_over_a_finished_run(tmp_path):
    labels, proba = np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])
    run = RunWriter.plan(tmp_path / "r", "linear")
    assert not run.path.exists()  # planning creates nothing
    run.create()
    with pytest.raises(RuntimeError, match="config.json"):
        run.finish({})
    with pytest.raises(ValueError, match="finish"):
        run.write_file(METRICS, b"{}")
    assert not (run.path / METRICS).exists()
    fake_run(tmp_path / "done", labels=labels, proba_final=proba)
    with pytest.raises(TlkitError, match="already holds a finished run"):
        RunWriter.plan(tmp_path / "done", "linear")
    assert build_metrics(labels, proba, proba, final_epoch=1, best_epoch=1, training_seconds=0,
                         class_names=["a", "b"])["final"]["accuracy"] == 1.0


def test_only_a_resumable_run_refuses_an_unfinished_folder(tmp_path):
    unfinished = tmp_path / "u"
    unfinished.mkdir()
    (unfinished / CHECKPOINT).write_bytes(b"...")
    assert RunWriter.plan(unfinished, "linear").path == unfinished  # fit-head writes over it
    with pytest.raises(TlkitError, match="add --resume"):
        RunWriter.plan(unfinished, "scratch", resumable=True)
    assert RunWriter.plan(unfinished, "scratch", resumable=True, resume=True).path == unfinished
    with pytest.raises(TlkitError, match="no unfinished run to resume"):
        RunWriter.plan(tmp_path / "new", "scratch", resumable=True, resume=True)
    with pytest.raises(TlkitError, match="--resume needs --out"):
        RunWriter.plan(None, "scratch", resumable=True, resume=True)
    assert RunWriter.plan(None, "scratch", resumable=True).path.name.startswith("scratch-")


def test_many_seeds_through_the_contract(tmp_path):
    """build_metrics, write_predictions and seeds_history for three seeds, read back by load_run."""
    from tlkit.metrics import classification_metrics
    from tlkit.runs import HeadPart, seeds_history

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    probas = rng.dirichlet([1, 1], size=(3, 20))
    metrics = build_metrics(labels, probas, probas, final_epoch=[5, 5, 5], best_epoch=[2, 5, 3],
                            training_seconds=[1.0, 1.5, 0.5], class_names=["a", "b"], final_loss=[0.5, 0.6, 0.7],
                            best_loss=[0.4, 0.6, 0.5], seeds=[4, 7, 9])
    assert [s["seed"] for s in metrics["seeds"]] == [4, 7, 9] and metrics["training_seconds"] == 3.0
    for i, seed in enumerate(metrics["seeds"]):
        expected = classification_metrics(labels, probas[i])
        assert {k: seed["final"][k] for k in expected} == expected
    assert metrics["final"]["accuracy"] == pytest.approx(np.mean([s["final"]["accuracy"] for s in metrics["seeds"]]))
    assert metrics["final"]["epoch"] == 5 and metrics["best"]["epoch"] is None  # seeds disagree on their best
    assert metrics["final"]["loss"] == pytest.approx(0.6) and metrics["final"]["n_seeds"] == 3
    assert np.asarray(metrics["final"]["confusion_matrix"]).sum() == pytest.approx(20)
    assert metrics["summary"]["accuracy"]["n"] == 3 and metrics["summary"]["images"]["accuracy"]["n_resamples"] >= 2000
    json.dumps(metrics, allow_nan=False)  # plain JSON

    history = seeds_history([[{"epoch": 1, "lr": 0.1, "train_loss": v, "train_acc": 0.5, "val_loss": v,
                               "val_acc": 0.5, "seconds": 1.0}] for v in (1.0, 2.0, 6.0)], [4, 7, 9])
    assert history[0]["val_loss"] == 3.0 and history[0]["seconds"] == 3.0
    assert history[0]["per_seed"] == {"seed": [4, 7, 9], "train_loss": [1.0, 2.0, 6.0], "train_acc": [0.5] * 3,
                                      "val_loss": [1.0, 2.0, 6.0], "val_acc": [0.5] * 3}

    run = RunWriter(tmp_path / "many")
    run.create()
    paths = [f"val/{i}.jpg" for i in range(20)]
    run.write_config(RunConfig(kind="head", class_names=["a", "b"], eval_fingerprint=eval_fingerprint(paths, labels, "ab"),
                               part=HeadPart(head="linear", seeds=[4, 7, 9])))
    run.write_history(history)
    with pytest.raises(ValueError, match="seed numbers"):
        run.write_predictions(paths, labels, probas, probas)
    run.write_predictions(paths, labels, probas, probas, seeds=[4, 7, 9])
    run.finish(metrics)
    assert (tmp_path / "many" / "history.csv").read_text().splitlines()[0] == \
        "epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds"  # the means; per_seed is in history.json
    loaded = load_run(tmp_path / "many")
    assert loaded.seeds == [4, 7, 9] and loaded.config.part.seeds == [4, 7, 9]
    np.testing.assert_array_equal(loaded.proba_seeds("final"), probas)
    np.testing.assert_array_equal(loaded.predictions["proba_final"], probas[0])  # the first seed's, as model.pt


def test_an_old_run_reads_as_one_seed(tmp_path):
    labels, proba = np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])
    (tmp_path / "r").mkdir()
    np.savez(tmp_path / "r" / "predictions.npz", paths=np.array(["a", "b"]), labels=labels, proba_final=proba,
             proba_best=proba)
    (tmp_path / "r" / "config.json").write_text(json.dumps({"kind": "head", "head": "linear", "class_names": ["a", "b"],
                                                            "head_params": {"seed": 2}}))
    (tmp_path / "r" / "metrics.json").write_text("{}")
    run = load_run(tmp_path / "r")
    assert run.seeds is None and run.config.part.seeds is None
    np.testing.assert_array_equal(run.proba_seeds("best"), proba[None])
