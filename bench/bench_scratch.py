#!/usr/bin/env python3
"""Seconds per scratch-training epoch: `tlkit train-scratch` against the PyTorch tutorial's loop.

Both train ResNet-18 from random initialisation on the same images at the same
batch size (4, the seed paper's), with the same augmentation (random resized
crop 224 + horizontal flip) and the same optimizer, and evaluate on val after
every epoch. They run side by side in one run of this script, alternating, so
machine load affects both alike; each side runs in a fresh process, the
tutorial's as a plain script, tlkit's as the `tlkit` command runs.

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
import json
import os
import statistics
import subprocess
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


def tlkit_train(data_dir: Path, epochs: int, batch_size: int, workers: int | None, seed: int):
    """The `tlkit train-scratch` command itself, in this process; (epoch seconds from its history, wall seconds)."""
    from tlkit.cli import main

    import torchvision  # noqa: F401  loaded outside the timing, as on the tutorial side

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        argv = ["train-scratch", str(data_dir), "--out", str(run_dir), "--epochs", str(epochs),
                "--batch-size", str(batch_size), "--seed", str(seed), "--device", "cpu", "--no-progress"]
        if workers is not None:
            argv += ["--workers", str(workers)]
        t0 = time.perf_counter()
        main(argv, standalone_mode=False)
        wall = time.perf_counter() - t0
        history = json.loads((run_dir / "history.json").read_text())
        return [h["seconds"] for h in history], wall


def in_fresh_process(side: str, args, seed: int) -> tuple[list[float], float]:
    cmd = [sys.executable, __file__, str(args.data), "--side", side, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--seed", str(seed), "--tutorial-workers", str(args.tutorial_workers)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {side} side failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["epochs"], result["wall"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=os.environ.get("TLKIT_HYMENOPTERA"),
                        help="ROOT/train/<class>, ROOT/val/<class> [default: $TLKIT_HYMENOPTERA]")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both loops (default 2)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tutorial-workers", type=int, default=4, help="the tutorial's num_workers (default 4)")
    parser.add_argument("--workers", type=int, default=None, help="tlkit's --workers (default: its CLI default)")
    parser.add_argument("--side", choices=["tutorial", "tlkit"], help=argparse.SUPPRESS)  # one measurement, internal
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data or not Path(args.data, "train").is_dir():
        print("error: give DATA_DIR (ROOT/train/<class>/<image>) or set TLKIT_HYMENOPTERA", file=sys.stderr)
        return 1
    data = Path(args.data)
    if args.side:
        if args.side == "tutorial":
            import warnings

            warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 4 workers on 2 CPUs
            epochs, wall = tutorial_train(data, args.epochs, args.batch_size, args.tutorial_workers, args.seed)
        else:
            epochs, wall = tlkit_train(data, args.epochs, args.batch_size, args.workers, args.seed)
        print(json.dumps({"epochs": epochs, "wall": wall}))
        return 0

    print(f"data {data}, batch {args.batch_size}, {args.epochs} epochs x {args.rounds} rounds, {os.cpu_count()} CPUs, "
          f"tutorial num_workers={args.tutorial_workers}, tlkit --workers "
          f"{'default' if args.workers is None else args.workers}; each side in a fresh process")
    results = {"tutorial": ([], []), "tlkit": ([], [])}
    for r in range(args.rounds):
        for side in ("tutorial", "tlkit"):
            epochs, wall = in_fresh_process(side, args, seed=r)
            results[side][0].extend(epochs)
            results[side][1].append(wall)
            print(f"round {r + 1} {side:8s}: epochs {', '.join(f'{s:.1f}' for s in epochs)} s; wall {wall:.1f} s",
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
