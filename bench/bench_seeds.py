"""Benchmark of many seeds in one pass: training seconds of 1 vs 10 vs 100 seeds, per torch head.

    .venv/bin/python bench/bench_seeds.py --cache cache/feats.h5
    .venv/bin/python bench/bench_seeds.py --data ../shared/datasets/hymenoptera_data   # embeds with --weights random
    .venv/bin/python bench/bench_seeds.py --cache cache/feats.h5 --epochs 1 --slow-epochs 1   # a quick smoke run

Prints, all measured side by side in this one run on this machine (train
split for training, val split evaluated after every epoch, as fit-head does):

1. for the linear, quantum and bottleneck heads at their default settings:
   the training seconds of today's single run (``Head(seed=0).fit``), and of
   1, 10 and 100 seeds trained together by :func:`tlkit.train.seeds.train_seeds`;
   targets: 10 seeds <= 2x and 100 seeds <= 5x the single run's seconds;
2. the quantum head's seconds per seed at 100 seeds against the PennyLane
   demo's per-sample loop (a default.qubit QNode called once per sample),
   timed by bench_heads.py's own code; target >= 30x;
3. the memory of training 1 and 100 seeds of each head, each in a fresh
   child process: its peak resident memory during training and the growth
   over its size just before (torch's first training step alone takes a
   large one-off amount, hence the 1-seed figure); on CUDA also torch's peak
   allocation.

Seconds are the training loop's own (``training_seconds_`` / ``SeedsResult
.seconds``: training plus the per-epoch evaluation), each the best of
``--repeat`` runs. Building the modules (one per seed) is not in them, as
in fit-head's figure; the wall time of the whole call is printed beside.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heads import bench_quantum, ensure_cache  # noqa: E402  (the demo's loop and the cache, not copied)

HEADS = ("linear", "quantum", "bottleneck")
TARGETS = {10: 2.0, 100: 5.0}
DEMO_TARGET = 30.0


def head_class(name: str):
    from tlkit.heads import LinearHead, QuantumHead
    from tlkit.heads.bottleneck import BottleneckHead

    return {"linear": LinearHead, "quantum": QuantumHead, "bottleneck": BottleneckHead}[name]


def load(cache: Path):
    from tlkit.cache import load_cache

    data = load_cache(cache)
    return data["train"], data["val"]


def time_single(name: str, train, val, epochs: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        head = head_class(name)(epochs=epochs, seed=0).fit(train.features, train.labels,
                                                           eval_set=(val.features, val.labels))
        best = min(best, head.training_seconds_)
    return best


def time_seeds(name: str, train, val, epochs: int, n_seeds: int, repeat: int, device: str) -> tuple[float, float]:
    """Best training seconds and best wall seconds of the whole call, over ``repeat`` runs."""
    from tlkit.train.seeds import train_seeds

    template = head_class(name)(epochs=epochs)
    best, best_wall = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = train_seeds(template._build_module, train.features, train.labels, range(n_seeds),
                             template.train_config(), eval_set=(val.features, val.labels), device=device)
        best_wall = min(best_wall, time.perf_counter() - t0)
        best = min(best, result.seconds)
    return best, best_wall


def peak_rss_kib(reset: bool = False) -> int:
    """The process's peak resident memory (KiB). On Linux the peak can be reset to the current size
    (``clear_refs`` 5), so that imports' own peak does not hide training's; elsewhere it is the
    peak since start."""
    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def memory_child(cache: str, name: str, n_seeds: int, epochs: int, device: str) -> None:
    """Run in a fresh process: print JSON with the resident memory before training and its peak during it."""
    import torch

    train, val = load(Path(cache))
    from tlkit.train.seeds import train_seeds

    template = head_class(name)(epochs=epochs)
    template._build_module(train.features.shape[1], int(train.labels.max()) + 1)  # imports, set-up: before the baseline
    before = peak_rss_kib(reset=True)
    train_seeds(template._build_module, train.features, train.labels, range(n_seeds), template.train_config(),
                eval_set=(val.features, val.labels), device=device)
    after = peak_rss_kib()
    cuda = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    print(json.dumps({"before_kib": before, "peak_kib": after, "cuda_peak_bytes": cuda}))


def measure_memory(cache: Path, name: str, n_seeds: int, epochs: int, device: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--memory-child", name, str(n_seeds), "--cache", str(cache),
                           "--epochs", str(epochs), "--device", device], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"memory measurement of {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", help="an existing feature cache (train and val splits)")
    parser.add_argument("--data", help="hymenoptera_data folder to embed when --cache is not given")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of every run (default 30, the heads' default)")
    parser.add_argument("--slow-epochs", type=int, default=3, help="epochs of the demo's per-sample loop (default 3)")
    parser.add_argument("--seeds", default="1,10,100", help="seed counts to time (default 1,10,100)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement, the best one counts (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"heads to time (default {','.join(HEADS)})")
    parser.add_argument("--memory-child", nargs=2, metavar=("HEAD", "SEEDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.cache, args.memory_child[0], int(args.memory_child[1]), args.epochs, args.device)
        return 0
    from tlkit.device import select_device

    args.device = str(select_device(args.device))
    with tempfile.TemporaryDirectory(prefix="bench_seeds_") as tmp:
        return run(args, Path(tmp))


def run(args, scratch: Path) -> int:
    cache = ensure_cache(args, scratch)
    train, val = load(cache)
    counts = [int(c) for c in args.seeds.split(",")]
    heads = [h for h in args.heads.split(",") if h]
    ok = True
    print(f"\n1. training seconds, {args.epochs} epochs, {len(train.labels)} train / {len(val.labels)} val rows, "
          f"device {args.device}, best of {args.repeat}")
    header = f"{'head':<11}{'single':>9}" + "".join(f"{f'{c} seeds':>18}" for c in counts) + "  targets"
    print(header)
    per_seed_100 = {}
    for name in heads:
        single = time_single(name, train, val, args.epochs, args.repeat)
        cells, verdicts = [], []
        for count in counts:
            seconds, wall = time_seeds(name, train, val, args.epochs, count, args.repeat, args.device)
            ratio = seconds / single
            cells.append(f"{seconds:8.2f} {ratio:5.1f}x")
            if count in TARGETS:
                passed = ratio <= TARGETS[count]
                ok &= passed
                verdicts.append(f"{count} <= {TARGETS[count]:g}x: {'PASS' if passed else 'FAIL'}")
            if count == max(counts):
                per_seed_100[name] = (count, seconds / count, wall)
        print(f"{name:<11}{single:>9.2f}" + "".join(f"{c:>18}" for c in cells) + "  " + "; ".join(verdicts), flush=True)
    print("(each cell: training seconds, then the ratio to the single run; the whole call's wall time, module "
          "building included, for the largest count: "
          + ", ".join(f"{n} {w:.2f} s" for n, (_, _, w) in per_seed_100.items()) + ")")

    if "quantum" in per_seed_100:
        count, per_seed, _ = per_seed_100["quantum"]
        _, _, slow = bench_quantum(cache, args.slow_epochs, epochs=1)
        demo_per_epoch = slow.training_seconds_ / args.slow_epochs
        ours_per_epoch = per_seed / args.epochs
        speedup = demo_per_epoch / ours_per_epoch
        passed = speedup >= DEMO_TARGET
        ok &= passed
        print(f"\n2. quantum head, seconds per seed and epoch: {ours_per_epoch:.4f} at {count} seeds in one pass, "
              f"{demo_per_epoch:.3f} for the PennyLane demo's per-sample loop ({args.slow_epochs} epochs timed)")
        print(f"speed-up per seed: {speedup:.0f}x (target >= {DEMO_TARGET:g}x: {'PASS' if passed else 'FAIL'})")

    n_mem = max(counts)
    print(f"\n3. memory, {args.epochs} epochs, each run in a fresh process: peak resident memory during training "
          f"(growth over just before it) for 1 and {n_mem} seeds; the difference is what the extra seeds cost")
    for name in heads:
        one, many = (measure_memory(cache, name, n, args.epochs, args.device) for n in (1, n_mem))
        grow_one, grow_many = ((m["peak_kib"] - m["before_kib"]) / 1024 for m in (one, many))
        line = (f"{name:<11}1 seed {one['peak_kib'] / 1024:7.1f} MiB (+{grow_one:.1f}), {n_mem} seeds "
                f"{many['peak_kib'] / 1024:7.1f} MiB (+{grow_many:.1f}): {n_mem} seeds cost {grow_many - grow_one:.1f} MiB")
        if many["cuda_peak_bytes"] is not None:
            line += f"; CUDA peak {one['cuda_peak_bytes'] / 2**20:.1f} and {many['cuda_peak_bytes'] / 2**20:.1f} MiB"
        print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
