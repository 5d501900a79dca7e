#!/usr/bin/env python3
"""Seconds per scratch-training epoch: `tlkit train-scratch` against the PyTorch tutorial's loop.

Both train ResNet-18 from random initialisation on the same images at the same
batch size (4, the seed paper's), with the same augmentation (random resized
crop 224 + horizontal flip) and the same optimizer, and evaluate on val after
every epoch. They run side by side in this one process, alternating, so machine
load affects both alike.

    python bench/bench_scratch.py [DATA_DIR] [--epochs 2] [--rounds 2]

The tutorial side is the code of "Transfer learning for computer vision"
(pytorch.org/tutorials/beginner/transfer_learning_tutorial.html), train_model():
ImageFolder + DataLoader(batch 4, shuffle, num_workers=4), decode and transform
every image every epoch, train and val phases at batch 4.

Printed: steady seconds per epoch (training + evaluation, as each loop times
its epochs) and the whole wall time of N epochs including tlkit's one-time
decode pass and its per-epoch checkpoint (with few epochs that setup weighs
more than in a 30-epoch run). Target: per-epoch ratio >= 1.2.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def tutorial_train(data_dir: Path, epochs: int, batch_size: int, workers: int, seed: int) -> tuple[list[float], float]:
    """The tutorial's train_model(), timed per epoch; returns (epoch seconds, wall seconds)."""
    import torch
    import torchvision
    from torch import nn
    from torchvision import datasets, transforms

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    data_transforms = {
        "train": transforms.Compose([
            transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
        "val": transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
    }
    image_datasets = {x: datasets.ImageFolder(os.path.join(data_dir, x), data_transforms[x]) for x in ["train", "val"]}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=batch_size, shuffle=True,
                                                  num_workers=workers) for x in ["train", "val"]}
    sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, len(image_datasets["train"].classes))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    best_wts, best_acc = copy.deepcopy(model.state_dict()), 0.0
    epoch_seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in dataloaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data)
            if phase == "train":
                scheduler.step()
            epoch_acc = running_corrects.double() / sizes[phase]
            if phase == "val" and epoch_acc > best_acc:
                best_acc, best_wts = epoch_acc, copy.deepcopy(model.state_dict())
        epoch_seconds.append(time.perf_counter() - t0)
    model.load_state_dict(best_wts)
    return epoch_seconds, time.perf_counter() - t_start


def tlkit_train(data_dir: Path, epochs: int, batch_size: int, workers: int, seed: int) -> tuple[list[float], float]:
    from tlkit.baseline.trainer import train_scratch
    from tlkit.runs import load_run
    from tlkit.train.loop import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_dir = train_scratch(data_dir, out=Path(tmp) / "run", cfg=TrainConfig(epochs=epochs, batch_size=batch_size,
                                                                                   seed=seed),
                                workers=workers, device="cpu", echo=lambda *_: None)
        wall = time.perf_counter() - t0
        return [h["seconds"] for h in load_run(run_dir).history], wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=os.environ.get("TLKIT_HYMENOPTERA"),
                        help="ROOT/train/<class>, ROOT/val/<class> [default: $TLKIT_HYMENOPTERA]")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both loops (default 2)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tutorial-workers", type=int, default=4, help="the tutorial's num_workers (default 4)")
    parser.add_argument("--workers", type=int, default=None, help="tlkit's --workers (default: its CLI default)")
    args = parser.parse_args()
    if not args.data or not Path(args.data, "train").is_dir():
        print("error: give DATA_DIR (ROOT/train/<class>/<image>) or set TLKIT_HYMENOPTERA", file=sys.stderr)
        return 1
    import torch

    from tlkit.baseline.cli import _default_workers

    workers = args.workers if args.workers is not None else _default_workers()
    data = Path(args.data)
    print(f"data {data}, batch {args.batch_size}, {args.epochs} epochs x {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"tutorial num_workers={args.tutorial_workers}, tlkit workers={workers}")
    results = {"tutorial": ([], []), "tlkit": ([], [])}
    for r in range(args.rounds):
        for name, fn, w in (("tutorial", tutorial_train, args.tutorial_workers), ("tlkit", tlkit_train, workers)):
            epochs, wall = fn(data, args.epochs, args.batch_size, w, seed=r)
            results[name][0].extend(epochs)
            results[name][1].append(wall)
            print(f"round {r + 1} {name:8s}: epochs {', '.join(f'{s:.1f}' for s in epochs)} s; wall {wall:.1f} s",
                  flush=True)
    tut_epoch, ours_epoch = (statistics.median(results[k][0]) for k in ("tutorial", "tlkit"))
    tut_wall, ours_wall = (statistics.median(results[k][1]) for k in ("tutorial", "tlkit"))
    print(f"median s/epoch   tutorial {tut_epoch:.2f}  tlkit {ours_epoch:.2f}  ratio {tut_epoch / ours_epoch:.2f}x "
          f"(target >= 1.2x)")
    print(f"median wall of {args.epochs} epochs  tutorial {tut_wall:.1f}  tlkit {ours_wall:.1f}  "
          f"ratio {tut_wall / ours_wall:.2f}x (tlkit's includes its one-time decode pass and checkpoints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
