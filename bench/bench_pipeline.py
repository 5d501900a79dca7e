#!/usr/bin/env python3
"""Wall time of the whole two-stage pipeline against the tutorial's fixed-feature-extractor way.

Two-stage (tlkit): `tlkit embed` once, then `tlkit fit-head` for the linear,
logreg and quantum heads (30 epochs each for the torch heads, the seed
paper's settings), all measured in full, in a fresh process that imports tlkit
first (as the `tlkit` command does).

Fixed feature extractor (the PyTorch transfer-learning tutorial's "ConvNet as
fixed feature extractor", the way the seed paper and Mari et al. ran it): the
frozen ResNet-18 with the head as its fc layer, trained by the tutorial's
train_model() loop, so the backbone runs again on every image in every epoch
(train with augmentation and val, batch 4, DataLoader num_workers=4). The same
head modules as fit-head (tlkit.heads) and their training settings. Logistic
regression has no epochs: that side runs the backbone once over train and val
and fits the same LogRegHead.

Thirty tutorial epochs per torch head take long on a CPU, so that side runs
--epochs (default 2) epochs per head and is extrapolated per epoch:
median seconds per epoch x 30. Both sides run in one run of this script,
one after the other, each in a fresh process (the tutorial's as a plain script:
torch loaded before anything of tlkit), so the figures are measured side by side.

    python bench/bench_pipeline.py [DATA_DIR] [--epochs 2] [--weights random]

Target: two-stage at least 10x less wall time. The weights do not change the
timing; `random` works offline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_EPOCHS = 30
TORCH_HEADS = ("linear", "quantum")


def two_stage(data: Path, weights: str, tmp: Path) -> dict[str, float]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what `tlkit embed` sets before torch loads
    from tlkit.embed import embed
    from tlkit.heads.fit import fit_head

    times = {}
    t0 = time.perf_counter()
    embed(data, tmp / "feats.h5", weights=weights, seed=0, progress=False, echo=lambda *_: None)
    times["embed"] = time.perf_counter() - t0
    for head in ("linear", "logreg", "quantum"):
        t0 = time.perf_counter()
        fit_head(head, tmp / "feats.h5", tmp / head, progress=False)
        times[head] = time.perf_counter() - t0
    return times


def _tutorial_loaders(data: Path, workers: int, batch_size: int, augment: bool = True):
    import torch
    from torchvision import datasets, transforms

    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tf = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), norm]) if augment else None,
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm]),
    }
    tf["train"] = tf["train"] or tf["val"]
    sets = {x: datasets.ImageFolder(os.path.join(data, x), tf[x]) for x in ("train", "val")}
    return {x: torch.utils.data.DataLoader(sets[x], batch_size=batch_size, shuffle=augment, num_workers=workers)
            for x in ("train", "val")}, sets


def _frozen_backbone(weights: str):
    import torchvision

    from tlkit.weights import Weights

    model = torchvision.models.resnet18(weights=None)
    state = {k: v for k, v in Weights.parse(weights, seed=0).load().state_dict.items()}
    model.load_state_dict(state)
    for param in model.parameters():
        param.requires_grad = False
    return model


def tutorial_torch_head(data: Path, weights: str, head: str, epochs: int, workers: int) -> list[float]:
    """The tutorial's train_model() with the backbone frozen and fit-head's head module as fc; seconds per epoch."""
    import torch
    from torch import nn

    from tlkit.heads.registry import head_class

    estimator = head_class(head)()
    estimator.check_params()
    cfg = estimator.train_config()
    loaders, sets = _tutorial_loaders(data, workers, cfg.batch_size)
    model = _frozen_backbone(weights)
    torch.manual_seed(cfg.seed)
    model.fc = estimator._build_module(model.fc.in_features, len(sets["train"].classes))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
            if phase == "train":
                scheduler.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def tutorial_logreg(data: Path, weights: str, workers: int) -> float:
    """One backbone pass over train and val (no augmentation: there are no epochs), then the same LogRegHead."""
    import numpy as np
    import torch
    from torch import nn

    from tlkit.heads.logreg import LogRegHead

    t0 = time.perf_counter()
    loaders, _ = _tutorial_loaders(data, workers, 4, augment=False)
    model = _frozen_backbone(weights).eval()
    model.fc = nn.Identity()
    feats = {}
    with torch.no_grad():
        for phase in ("train", "val"):
            xs, ys = zip(*[(model(x).numpy(), y.numpy()) for x, y in loaders[phase]])
            feats[phase] = (np.concatenate(xs), np.concatenate(ys))
    head = LogRegHead().fit(*feats["train"])
    head.predict_proba(feats["val"][0])
    return time.perf_counter() - t0


def run_side(side: str, args) -> dict:
    """One side in a fresh process; its JSON result."""
    cmd = [sys.executable, __file__, str(args.data), "--side", side, "--epochs", str(args.epochs),
           "--weights", args.weights, "--tutorial-workers", str(args.tutorial_workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {side} side failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_side(side: str, data: Path, args) -> dict:
    if side == "two-stage":
        with tempfile.TemporaryDirectory() as tmp:
            return two_stage(data, args.weights, Path(tmp))
    import warnings

    import torch  # noqa: F401  before tlkit: the tutorial side runs with torch's own OpenMP settings

    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # the tutorial's 4 workers on 2 CPUs
    out = {head: tutorial_torch_head(data, args.weights, head, args.epochs, args.tutorial_workers)
           for head in TORCH_HEADS}
    out["logreg"] = tutorial_logreg(data, args.weights, args.tutorial_workers)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=os.environ.get("TLKIT_HYMENOPTERA"),
                        help="ROOT/train/<class>, ROOT/val/<class> [default: $TLKIT_HYMENOPTERA]")
    parser.add_argument("--epochs", type=int, default=2, help="tutorial epochs measured per torch head (default 2)")
    parser.add_argument("--weights", default="random", help="backbone weights for both sides (default random)")
    parser.add_argument("--tutorial-workers", type=int, default=4, help="the tutorial's num_workers (default 4)")
    parser.add_argument("--side", choices=["two-stage", "fixed"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if not args.data or not Path(args.data, "train").is_dir():
        print("error: give DATA_DIR (ROOT/train/<class>/<image>) or set TLKIT_HYMENOPTERA", file=sys.stderr)
        return 1
    data = Path(args.data)
    if args.side:
        print(json.dumps(measure_side(args.side, data, args)))
        return 0

    print(f"data {data}, weights {args.weights}, {os.cpu_count()} CPUs; tutorial side: {args.epochs} measured "
          f"epochs per torch head, extrapolated to {FULL_EPOCHS}; each side in a fresh process")
    ours = run_side("two-stage", args)
    ours_total = sum(ours.values())
    print("two-stage (measured): " + ", ".join(f"{k} {v:.1f} s" for k, v in ours.items())
          + f"; total {ours_total:.1f} s", flush=True)

    fixed = run_side("fixed", args)
    theirs = {}
    for head in TORCH_HEADS:
        per_epoch = statistics.median(fixed[head])
        theirs[head] = per_epoch * FULL_EPOCHS
        print(f"fixed-feature {head}: epochs {', '.join(f'{s:.1f}' for s in fixed[head])} s -> "
              f"{per_epoch:.1f} s/epoch x {FULL_EPOCHS} = {theirs[head]:.0f} s", flush=True)
    theirs["logreg"] = fixed["logreg"]
    print(f"fixed-feature logreg: one backbone pass + fit {theirs['logreg']:.1f} s", flush=True)
    theirs_total = sum(theirs.values())

    fixed_epochs = ", ".join(f"{h} {theirs[h] / FULL_EPOCHS:.2f} s" for h in TORCH_HEADS)
    ours_epochs = ", ".join(f"{h} {ours[h] / FULL_EPOCHS:.3f} s" for h in TORCH_HEADS)
    print(f"per epoch, torch heads: fixed-feature {fixed_epochs} vs two-stage {ours_epochs} (+ embed once)")
    print(f"whole pipeline (3 heads, {FULL_EPOCHS} epochs): fixed-feature {theirs_total:.0f} s (extrapolated) vs "
          f"two-stage {ours_total:.1f} s (measured): ratio {theirs_total / ours_total:.1f}x (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
