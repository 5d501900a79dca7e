"""``tlkit train-scratch``: the seed paper's Model 1, trained end to end on the images.

1. discover the data, decode every train and eval image once (bad files are
   skipped and reported; pixels and eval tensors stay in memory within a budget);
2. build ResNet-18 (random init under the seed, or ``finetune`` from embed weights);
3. train with :func:`tlkit.train.loop.train_classifier`: tutorial augmentation,
   a seeded order per epoch, a checkpoint after every epoch;
4. write the run folder (the contract of :mod:`tlkit.runs`) that ``tlkit report``
   and ``tlkit predict`` read, and drop the checkpoint.

Speed over a plain tutorial loop comes from not repeating work (images are
decoded once, eval images transformed once), channels_last tensors for the
convolutions and large evaluation batches under ``inference_mode``.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tlkit.atomic import storage_errors
from tlkit.baseline.checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint
from tlkit.baseline.images import (
    augmentation,
    augmentation_description,
    decode_training_set,
    eval_batches,
    prepare_eval_set,
    training_batches,
)
from tlkit.baseline.model import ARCHITECTURE, build_resnet18
from tlkit.data.decode import DEFAULT_MAX_PIXELS
from tlkit.data.discovery import discover
from tlkit.data.transforms import TransformSpec
from tlkit.device import select_device
from tlkit.errors import DataError, TlkitError
from tlkit.runs import (
    CONFIG,
    MODEL,
    NetworkPart,
    RunConfig,
    RunWriter,
    build_metrics,
    eval_fingerprint,
    now,
    package_versions,
    read_config,
)
from tlkit.train.loop import EpochRecord, TrainConfig, train_classifier
from tlkit.weights import Weights

# Evaluation batch sizes. On CPU small batches keep activations in cache (measured on 2 cores: 8.8 ms per
# image at 4, 11.9 ms at 32); a GPU wants large ones.
EVAL_BATCH = {"cpu": 4, "cuda": 64}
# Settings that must be equal for --resume to continue a run (device and workers may change).
RESUME_KEYS = ("kind", "model", "init", "train", "class_names", "train_split", "eval_split",
               "train_fingerprint", "eval_fingerprint", "transform", "augmentation")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) during training: the run folder holds the checkpoint of the last finished epoch."""

    def __init__(self, run_dir: Path, signum: int | None = None):
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.signum = signum  # the signal, when known: tlkit.signals.exit_status turns it into the exit status


def _split(index, split: str):
    items = [it for it in index.items if it.split == split]
    if not items:
        raise DataError(
            f"{index.root} has no images in split {split!r} (it has: {', '.join(index.splits)}); "
            "train-scratch needs ROOT/train/<class>/<image> and ROOT/val/<class>/<image> "
            "(or name the splits with --train-split/--eval-split)"
        )
    return [it.path for it in items], np.array([index.label(it) for it in items], dtype=np.int64)


def _settings_mismatch(saved: dict, current: dict) -> list[str]:
    out = []
    for key in RESUME_KEYS:
        if saved.get(key) != current.get(key):
            if isinstance(saved.get(key), dict) and isinstance(current.get(key), dict):
                diff = [k for k in set(saved[key]) | set(current[key]) if saved[key].get(k) != current[key].get(k)]
                out.append(", ".join(f"{key}.{k}: {saved[key].get(k)} -> {current[key].get(k)}" for k in sorted(diff)))
            elif key.endswith("fingerprint"):
                out.append(f"{key} (the images or labels changed)")
            else:
                out.append(f"{key}: {saved.get(key)} -> {current.get(key)}")
    return out


def make_evaluator(eval_set, spec: TransformSpec, device, workers: int, max_pixels):
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    labels = torch.from_numpy(eval_set.labels)

    def evaluate(model: nn.Module) -> tuple[float, np.ndarray]:
        total, probas, start = 0.0, [], 0
        batches = eval_batches(eval_set, spec, batch_size=EVAL_BATCH.get(device.type, 32), workers=workers,
                               max_pixels=max_pixels)
        with torch.inference_mode(), closing(batches):  # closed on any way out: its decoding workers stop
            for images in batches:
                images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                logits = model(images).float()
                y = labels[start:start + len(images)].to(device)
                total += float(loss_fn(logits, y))
                probas.append(torch.softmax(logits, dim=1).double().cpu().numpy())
                start += len(images)
        return total / max(start, 1), np.concatenate(probas) if probas else np.zeros((0, len(labels)))

    return evaluate


def train_scratch(
    data_dir,
    *,
    out=None,
    cfg: TrainConfig | None = None,
    finetune: bool = False,
    weights: str = "imagenet",
    weights_seed: int = 0,
    train_split: str = "train",
    eval_split: str = "val",
    device: str = "auto",
    workers: int = 0,
    memory_mb: int = 1024,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    resume: bool = False,
    progress: bool | None = None,
    echo=print,
    on_epoch=None,
) -> Path:
    """Train the baseline on ``data_dir`` and return its finished run folder."""
    cfg = cfg or TrainConfig()
    kind = "finetune" if finetune else "scratch"
    progress = bool(progress) if progress is not None else False
    index = discover(data_dir)
    train_paths, train_labels = _split(index, train_split)
    eval_paths, eval_labels = _split(index, eval_split)
    torch_device = select_device(device)
    run = RunWriter.plan(out, kind, resumable=True, resume=resume)
    run_dir = run.path

    spec = TransformSpec()
    if finetune:
        init_weights = Weights.parse(weights, seed=weights_seed)
        spec = init_weights.transform
        loaded = init_weights.load()
        init = {"weights_id": loaded.id, "weights_sha256": loaded.sha256}
        init_state = loaded.state_dict
    else:
        init = {"weights": "random", "seed": cfg.seed}
        init_state = None

    budget = memory_mb * 2**20
    decoders = min(os.cpu_count() or 1, 8)  # nothing else runs yet: decode on every core
    train_set, bad_train = decode_training_set(index.root, train_paths, train_labels, workers=decoders,
                                               max_pixels=max_pixels, budget_bytes=budget, progress=progress)
    held = sum(p.nbytes for p in train_set.pixels if p is not None)
    eval_set, bad_eval = prepare_eval_set(index.root, eval_paths, eval_labels, spec, workers=decoders,
                                          max_pixels=max_pixels, budget_bytes=budget - held, progress=progress)
    skipped = [{"path": p, "split": train_split, "reason": r} for p, r in bad_train]
    skipped += [{"path": p, "split": eval_split, "reason": r} for p, r in bad_eval]
    for s in skipped:
        echo(f"skipped {s['path']}: {s['reason']}")
    if not len(train_set) or not len(eval_set):
        raise DataError(f"no readable images left in split {train_split if not len(train_set) else eval_split!r}")

    config = RunConfig(
        kind=kind,
        class_names=list(index.class_names),
        eval_split=eval_split,
        eval_fingerprint=eval_fingerprint(eval_set.paths, eval_set.labels, index.class_names),
        n_train=len(train_set),
        n_eval=len(eval_set),
        part=NetworkPart(
            model=ARCHITECTURE,
            init=init,
            data_root=str(Path(index.root).resolve()),
            train_split=train_split,
            train_fingerprint=eval_fingerprint(train_set.paths, train_set.labels, index.class_names),
            train=cfg.to_dict(),
            transform=json.loads(spec.to_json()),
            augmentation=augmentation_description(spec),
            skipped=skipped,
            device=str(torch_device),
            workers=workers,
        ),
        versions=package_versions("torch", "torchvision"),
        created=now(),
    )
    settings = {k: config.to_json()[k] for k in RESUME_KEYS}

    state = load_checkpoint(run_dir, torch_device) if resume else None
    if resume:
        previous = read_config(run_dir) if (run_dir / CONFIG).exists() else None  # written before epoch 1
        saved = state["settings"] if state is not None else previous.to_json()
        mismatch = _settings_mismatch(saved, settings)
        if mismatch:
            raise TlkitError(f"cannot resume {run_dir} with different settings ({'; '.join(mismatch)}); "
                             "repeat the original command with --resume")
        done = len(state["history"]) if state is not None else 0
        echo(f"resuming {run_dir} after epoch {done} of {cfg.epochs}")
        if previous is not None and previous.created:
            config.created = previous.created
    run.create()
    run.write_config(config)
    echo(f"training {kind} ResNet-18 on {len(train_set)} images, evaluating on {len(eval_set)} ({eval_split}) "
         f"-> {run_dir}; if interrupted, continue with --out {run_dir} --resume")

    model = build_resnet18(len(index.class_names), cfg.seed, init_state)
    model = model.to(device=torch_device, memory_format=torch.channels_last)
    augment = augmentation(spec)
    pin = torch_device.type == "cuda"

    def batches(epoch: int):
        yield from training_batches(train_set, augment, seed=cfg.seed, epoch=epoch, batch_size=cfg.batch_size,
                                    workers=workers, max_pixels=max_pixels, pin_memory=pin)

    bar = tqdm(total=cfg.epochs, initial=len(state["history"]) if state else 0, desc=kind, unit="epoch",
               disable=not progress)

    def report_epoch(r: EpochRecord) -> None:
        bar.update(1)
        echo(f"epoch {r.epoch}/{cfg.epochs}  train loss {r.train_loss:.4f} acc {r.train_acc:.4f}  "
             f"{eval_split} loss {r.val_loss:.4f} acc {r.val_acc:.4f}  {r.seconds:.1f} s")
        if on_epoch is not None:
            on_epoch(r)

    try:
        with storage_errors(run_dir, f"save the checkpoint in {run_dir}"):
            result = train_classifier(
                model, batches, make_evaluator(eval_set, spec, torch_device, workers, max_pixels), eval_set.labels,
                cfg, on_epoch=report_epoch, checkpoint=lambda s: save_checkpoint(run_dir, s, settings),
                resume_from=state, device=torch_device,
            )
    except KeyboardInterrupt as exc:
        raise Interrupted(run_dir, getattr(exc, "signum", None)) from None
    finally:
        bar.close()

    history = [asdict(r) for r in result.history]
    final, best = result.history[-1], result.history[result.best_epoch - 1]
    run.write_history(history)
    run.write_predictions(eval_set.paths, eval_set.labels, result.final_proba, result.best_proba)
    run.write_file(MODEL, _state_bytes(model.state_dict()))
    metrics = build_metrics(
        eval_set.labels, result.final_proba, result.best_proba, final_epoch=final.epoch, best_epoch=best.epoch,
        training_seconds=result.seconds, class_names=index.class_names, final_loss=final.val_loss,
        best_loss=best.val_loss, histories=[history], train_labels=train_set.labels,  # for the health checks
    )
    run.finish(metrics)
    remove_checkpoint(run_dir)
    return run_dir


def _state_bytes(state_dict: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, buf)
    return buf.getvalue()
