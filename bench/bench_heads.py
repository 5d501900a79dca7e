"""Benchmark of stage two: seconds of `tlkit fit-head` per head, and the quantum head's speed-up.

    .venv/bin/python bench/bench_heads.py --cache cache/feats.h5
    .venv/bin/python bench/bench_heads.py --data ../shared/datasets/hymenoptera_data   # embeds with --weights random first

Prints, all measured side by side in this one run on this machine:

1. each head at its default settings through the real command line
   (`tlkit fit-head --head H`): wall seconds of the whole command (Python
   start-up and imports included) and the training seconds it records;
   target for linear and logreg: under 2 training seconds;
2. the quantum head (30 epochs, batch 4) against the PennyLane demo's way of
   doing the same (a default.qubit QNode called once per sample in a Python
   loop), from the same initialisation and data order: the loss trajectories
   must agree within 1e-4 and the head must be at least 30x faster. The slow
   way runs --slow-epochs epochs (default 3; pass 30 for the full run) and
   its 30-epoch time is extrapolated from its mean epoch time. Both run with
   one intra-op thread (the head's setting), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADS = ("linear", "logreg", "quantum")


def ensure_cache(args, scratch: Path) -> Path:
    if args.cache:
        return Path(args.cache)
    data = args.data or os.environ.get("TLKIT_HYMENOPTERA")
    if not data:
        sys.exit("error: pass --cache, or --data (or set TLKIT_HYMENOPTERA) to embed one with --weights random")
    from tlkit.embed import embed

    out = scratch / "feats.h5"
    print(f"embedding {data} with --weights random into {out} ...", flush=True)
    embed(data, out, weights="random", seed=0, batch_size=32, workers=2, progress=False, echo=lambda *_: None)
    return out


def bench_cli(cache: Path, workdir: Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for head in HEADS:
        out = workdir / head
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tlkit.cli", "fit-head", "--head", head, "--cache", str(cache),
                               "--out", str(out), "--no-progress"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"fit-head --head {head} failed:\n{proc.stderr}")
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append((head, wall, metrics["training_seconds"], metrics["final"]["accuracy"]))
    return rows


def bench_quantum(cache: Path, slow_epochs: int, epochs: int = 30):
    from tlkit.cache import load_cache
    from tlkit.heads import QuantumHead

    data = load_cache(cache)
    train, val = data["train"], data["val"]

    def fit(simulator, n_epochs):
        head = QuantumHead(simulator=simulator, epochs=n_epochs, seed=0)  # same seed: same init, same batches
        head.fit(train.features, train.labels, eval_set=(val.features, val.labels))
        return head

    fast = fit("auto", epochs)
    broadcast = fit("qnode", slow_epochs)
    slow = fit("per-sample", slow_epochs)
    return fast, broadcast, slow


def trajectory_gap(a, b) -> float:
    keys = ("train_loss", "val_loss")
    return max(abs(x[k] - y[k]) for x, y in zip(a.history_, b.history_) for k in keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", help="an existing feature cache (train and val splits)")
    parser.add_argument("--data", help="hymenoptera_data folder to embed when --cache is not given")
    parser.add_argument("--slow-epochs", type=int, default=3, help="epochs of the per-sample loop (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_heads_") as tmp:
        return run(args, Path(tmp))


def run(args, scratch: Path) -> int:
    cache = ensure_cache(args, scratch)
    ok = True
    rows = bench_cli(cache, scratch / "runs")
    print(f"\n1. tlkit fit-head at default settings on {cache}")
    print(f"{'head':<9}{'wall s':>9}{'train s':>9}{'final acc':>11}  target")
    for head, wall, train_s, acc in rows:
        target = ""
        if head in ("linear", "logreg"):
            passed = train_s < 2.0
            ok &= passed
            target = f"train < 2 s: {'PASS' if passed else 'FAIL'}"
        print(f"{head:<9}{wall:>9.2f}{train_s:>9.2f}{acc:>11.4f}  {target}")

    fast, broadcast, slow = bench_quantum(cache, args.slow_epochs)
    k = args.slow_epochs
    fast_epoch = fast.training_seconds_ / len(fast.history_)
    slow_epoch = slow.training_seconds_ / k
    broadcast_epoch = broadcast.training_seconds_ / k
    slow_30 = slow_epoch * len(fast.history_)
    speedup = slow_30 / fast.training_seconds_
    gap_slow, gap_broadcast = trajectory_gap(fast, slow), trajectory_gap(fast, broadcast)
    slow_note = "measured" if k >= len(fast.history_) else f"from {k} epochs"
    print(f"\n2. quantum head, {len(fast.history_)} epochs at batch 4 (train + per-epoch evaluation)")
    print(f"{'way':<44}{'s/epoch':>9}{'30 epochs s':>13}")
    print(f"{'tlkit default (PennyLane circuit as torch ops)':<44}{fast_epoch:>9.3f}{fast.training_seconds_:>13.2f}  measured")
    print(f"{'PennyLane QNode, parameter broadcasting':<44}{broadcast_epoch:>9.3f}{broadcast_epoch * 30:>13.2f}  {slow_note}")
    print(f"{'PennyLane demo: QNode per sample (loop)':<44}{slow_epoch:>9.3f}{slow_30:>13.2f}  {slow_note}")
    passed_speed, passed_gap = speedup >= 30, max(gap_slow, gap_broadcast) <= 1e-4
    ok &= passed_speed and passed_gap
    print(f"speed-up over the demo's loop: {speedup:.1f}x (target >= 30x: {'PASS' if passed_speed else 'FAIL'})")
    print(f"max |loss difference| over the first {k} epochs (train and val loss): vs loop {gap_slow:.2e}, "
          f"vs broadcasting {gap_broadcast:.2e} (target <= 1e-4: {'PASS' if passed_gap else 'FAIL'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
