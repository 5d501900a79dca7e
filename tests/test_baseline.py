"""`tlkit train-scratch`: the run folder, exact resume, skipped images, fine-tuning, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from run_helpers import scratch_run

from cli_helpers import assert_invoke_error, invoke
from tlkit.data.discovery import discover
from tlkit.metrics import classification_metrics
from tlkit.runs import eval_fingerprint, load_run
from tlkit.train.loop import TrainConfig

pytestmark = pytest.mark.slow


def _same_training(a, b):
    """Two runs trained identically: history (bar wall time), predictions and weights."""
    ra, rb = load_run(a), load_run(b)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    for x, y in zip(strip(ra.history), strip(rb.history)):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), key
    assert list(ra.predictions["paths"]) == list(rb.predictions["paths"])
    np.testing.assert_allclose(ra.predictions["proba_final"], rb.predictions["proba_final"], atol=1e-6)
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-6)


def test_run_folder_matches_the_contract(hymenoptera_tiny, tmp_path_factory):
    run_dir = scratch_run(tmp_path_factory, hymenoptera_tiny, epochs=2)
    for name in ("config.json", "history.json", "history.csv", "metrics.json", "predictions.npz", "model.pt"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoint.pt").exists()  # dropped once finished

    run = load_run(run_dir)
    index = discover(hymenoptera_tiny)
    val = [it for it in index.items if it.split == "val"]
    config = run.config.to_json()  # config.json as written
    assert config["kind"] == "scratch"
    assert config["train"] == TrainConfig(epochs=2).to_dict()  # the seed paper's defaults otherwise
    assert config["class_names"] == ["ants", "bees"]
    assert config["eval_fingerprint"] == eval_fingerprint([it.path for it in val], [index.label(it) for it in val],
                                                              index.class_names)
    assert config["transform"]["crop"] == 224 and config["augmentation"]["random_resized_crop"] == 224
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert sorted(run.predictions["paths"]) == sorted(it.path for it in val)

    labels = run.predictions["labels"]
    np.testing.assert_allclose(run.predictions["proba_final"].sum(axis=1), 1.0, atol=1e-6)
    for block in ("final", "best"):
        recomputed = classification_metrics(labels, run.predictions[f"proba_{block}"])
        assert {k: run.metrics[block][k] for k in recomputed} == recomputed
    assert run.metrics["final"]["epoch"] == 2
    assert run.metrics["final"]["loss"] == pytest.approx(run.history[-1]["val_loss"])
    best = max(run.history, key=lambda h: h["val_acc"])
    assert run.metrics["best"]["epoch"] == best["epoch"]
    assert run.metrics["training_seconds"] == pytest.approx(sum(h["seconds"] for h in run.history))


def test_interrupted_and_resumed_equals_uninterrupted(hymenoptera_tiny, tmp_path_factory, tmp_path, monkeypatch):
    reference = scratch_run(tmp_path_factory, hymenoptera_tiny, epochs=2)
    out = tmp_path / "interrupted"
    import tlkit.baseline.trainer as trainer

    real_save = trainer.save_checkpoint

    def save_then_interrupt(*args, **kwargs):  # Ctrl-C right after epoch 1 is safely on disk
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_interrupt)
    result = invoke("train-scratch", hymenoptera_tiny, "--out", out, "--epochs", 2, "--no-progress")
    assert result.exit_code == 130, result.output
    assert f"kept in {out}; continue with the same command plus --resume" in result.stderr
    assert (out / "checkpoint.pt").is_file() and not (out / "metrics.json").exists()
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)

    # The same command without --resume, or with other settings, is refused and keeps the checkpoint.
    assert_invoke_error(invoke("train-scratch", hymenoptera_tiny, "--out", out, "--epochs", 2), "add --resume")
    assert_invoke_error(invoke("train-scratch", hymenoptera_tiny, "--out", out, "--epochs", 2, "--lr", 0.01, "--resume"),
                    "cannot resume", "train.lr: 0.001 -> 0.01")
    assert (out / "checkpoint.pt").is_file()

    result = invoke("train-scratch", hymenoptera_tiny, "--out", out, "--epochs", 2, "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "after epoch 1 of 2" in result.stderr
    assert "epoch 1/2" not in result.stderr and "epoch 2/2" in result.stderr  # epoch 1 was not trained again
    _same_training(reference, out)
    assert_invoke_error(invoke("train-scratch", hymenoptera_tiny, "--out", out, "--resume"), "already holds a finished run")


def test_bad_images_are_skipped_and_memory_or_workers_do_not_change_the_result(hymenoptera_tiny, tmp_path,
                                                                                 tmp_path_factory):
    data = tmp_path / "data"
    shutil.copytree(hymenoptera_tiny, data)
    (data / "train" / "ants" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "val" / "bees" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "run"
    # Nothing held in memory and a worker process: every image decoded from disk in the worker each epoch.
    result = invoke("train-scratch", data, "--out", out, "--epochs", 1, "--memory-mb", 0, "--workers", 1,
                     "--no-progress")
    assert result.exit_code == 0, result.output
    assert "skipped train/ants/broken.jpg: " in result.stderr
    assert "skipped val/bees/empty.jpg: empty file (0 bytes)" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert {s["path"] for s in config["skipped"]} == {"train/ants/broken.jpg", "val/bees/empty.jpg"}
    assert (config["n_train"], config["n_eval"]) == (8, 4)  # hymenoptera_tiny: 4 + 4 train, 2 + 2 val
    # The readable images are exactly the clean subset: same result as the default in-memory run.
    _same_training(scratch_run(tmp_path_factory, hymenoptera_tiny, epochs=1), out)


def test_finetune_starts_from_the_embed_weights(hymenoptera_tiny, tmp_path):
    from tlkit.baseline.model import build_resnet18
    from tlkit.weights import Weights

    weights = Weights.random(3).load()
    model = build_resnet18(2, seed=0, init_state_dict=weights.state_dict)
    state = model.state_dict()
    for key, value in weights.state_dict.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert state["fc.weight"].shape == (2, 512)
    scratch = build_resnet18(2, seed=0).state_dict()
    assert not torch.equal(scratch["conv1.weight"], weights.state_dict["conv1.weight"])

    out = tmp_path / "ft"
    result = invoke("train-scratch", hymenoptera_tiny, "--out", out, "--epochs", 1, "--finetune",
                     "--weights", "random", "--weights-seed", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "finetune"
    assert config["init"] == {"weights_id": "random:seed=3", "weights_sha256": weights.sha256}


def test_refusals_are_one_line(hymenoptera_tiny, tmp_path):
    assert_invoke_error(invoke("train-scratch", tmp_path / "missing"), "does not exist")
    only_train = tmp_path / "only_train"
    shutil.copytree(hymenoptera_tiny / "train", only_train / "train")
    assert_invoke_error(invoke("train-scratch", only_train, "--out", tmp_path / "r"), "no images in split 'val'")
    assert_invoke_error(invoke("train-scratch", hymenoptera_tiny, "--resume"), "--resume needs --out")
    assert_invoke_error(invoke("train-scratch", hymenoptera_tiny, "--out", tmp_path / "none", "--resume"),
                    "no unfinished run to resume")
    assert_invoke_error(invoke("train-scratch", hymenoptera_tiny, "--finetune", "--weights", tmp_path / "nope.pt",
                            "--out", tmp_path / "ft"), "neither")
    assert not (tmp_path / "r").exists() and not (tmp_path / "ft").exists()  # refused before any folder is made


def test_help_teaches():
    result = invoke("train-scratch", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # help is wrapped to the terminal width
    for fragment in ("random weights", "--resume", "Examples:", "tlkit train-scratch data/hymenoptera_data",
                     "[default: 30", "[default: 0.001", "--finetune"):
        assert fragment in text, fragment
