"""Stage-one throughput: `tlkit embed` against a plain torchvision loop, in one run.

    .venv/bin/python bench/bench_embed.py [DATA_DIR] [--repeat 10]

Prints, measured side by side on this machine:
  * images/s of a plain ImageFolder + DataLoader(batch_size=4) + resnet18 loop;
  * images/s of tlkit embed (defaults) on the same images, and the ratio (target >= 1.3x);
  * this machine's fp32 matmul peak and the fraction of it embedding reaches
    (1.82 GFLOPs per 224x224 image; target >= 40%);
  * peak memory (RSS, main process + decoding workers) of embed on 1x and Nx the images
    (features stream to disk, so it must not grow with the image count).
Weights are random (the ImageNet file cannot be downloaded here); speed does not depend on them.
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

import torch

GFLOPS_PER_IMAGE = 1.82


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best / 1e9


PLAIN_LOOP = """
import sys, time, torch, torchvision
from pathlib import Path
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.datasets import ImageFolder
data = Path(sys.argv[1])
transform = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
dataset = ConcatDataset([ImageFolder(data / s, transform=transform) for s in ("train", "val") if (data / s).is_dir()])
model = torchvision.models.resnet18(weights=None)
model.fc = torch.nn.Identity()
model.eval()
t = time.perf_counter()
n = 0
with torch.no_grad():
    for images, _ in DataLoader(dataset, batch_size=4):
        model(images)
        n += len(images)
print(n, time.perf_counter() - t)
"""


def plain_loop(data: Path, env: dict | None = None) -> tuple[int, float]:
    """The tutorial way, in a fresh process: ImageFolder + DataLoader(batch_size=4) + resnet18, eval mode."""
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOOP, str(data)], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    n, seconds = proc.stdout.split()
    return int(n), float(seconds)


def tlkit_embed(data: Path, out: Path) -> tuple[int, float]:
    """`tlkit embed` as a user runs it (the console command, default flags); the rate is its own summary line's."""
    proc = subprocess.run([sys.executable, "-m", "tlkit.cli", "embed", str(data), str(out), "--weights", "random"],
                          capture_output=True, text=True, check=True)
    summary = proc.stdout.strip().splitlines()[-1]  # "embedded N, skipped K, ..., S s, R images/s -> OUT"
    n = int(summary.split(",")[0].split()[1])
    seconds = float(summary.split(",")[3].split()[0])
    return n, seconds


def replicate(data: Path, target: Path, times: int) -> Path:
    """``times`` copies of the data set as symlinks, one per image (distinct paths, same photos)."""
    for split in ("train", "val"):
        for class_dir in (data / split).iterdir():
            for k in range(times):
                dst = target / split / class_dir.name / f"copy{k:02d}"
                dst.mkdir(parents=True, exist_ok=True)
                for image in class_dir.iterdir():
                    (dst / image.name).symlink_to(image.resolve())
    return target


def peak_memory_child(data: Path, out: Path) -> dict:
    """Run embed in a fresh process and report its peak RSS and its workers'."""
    code = (
        "import json, os, resource, sys, time; os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE');"  # as the CLI does
        "from tlkit.embed import embed; t=time.perf_counter();"
        f"r = embed({str(data)!r}, {str(out)!r}, weights='random', progress=False, echo=lambda *_: None);"
        "print(json.dumps({'images': r.embedded, 'seconds': time.perf_counter()-t,"
        " 'main_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,"
        " 'workers_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("TLKIT_HYMENOPTERA", "../shared/datasets/hymenoptera_data"))
    parser.add_argument("--repeat", type=int, default=10, help="the N of the Nx memory check")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of plain loop vs tlkit")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    data = Path(args.data)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")

    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048x2048, best of 3): {peak:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        rounds = []
        for r in range(args.rounds):  # interleaved, so both see the same machine load
            plain = plain_loop(data)
            plain_passive = plain_loop(data, {"OMP_WAIT_POLICY": "PASSIVE"})
            ours = tlkit_embed(data, Path(tmp) / f"round{r}.h5")
            rounds.append((plain, plain_passive, ours))
            print(f"round {r + 1}: plain loop {plain[0] / plain[1]:.1f} images/s, plain loop with "
                  f"OMP_WAIT_POLICY=PASSIVE {plain_passive[0] / plain_passive[1]:.1f}, tlkit embed {ours[0] / ours[1]:.1f}")
        best_plain = max(max(p[0] / p[1], q[0] / q[1]) for p, q, _ in rounds)
        best_ours = max(o[0] / o[1] for _, _, o in rounds)
        median_ratio = sorted((o[0] / o[1]) / max(p[0] / p[1], q[0] / q[1]) for p, q, o in rounds)[len(rounds) // 2]
        print(f"plain ImageFolder + DataLoader(batch_size=4) loop, best of {2 * args.rounds}: {best_plain:.1f} images/s")
        print(f"tlkit embed (console command, defaults; its own summary line, HDF5 publish included): best {best_ours:.1f} images/s")
        print(f"speed-up vs the better plain loop of each round, median of {args.rounds}: {median_ratio:.2f}x (target >= 1.3x)")
        print(f"fraction of matmul peak: {best_ours * GFLOPS_PER_IMAGE / peak:.0%} "
              f"({best_ours * GFLOPS_PER_IMAGE:.1f} GFLOP/s of {peak:.1f}; target >= 40%)")

        if not args.skip_memory:
            one = peak_memory_child(data, Path(tmp) / "one.h5")
            many_data = replicate(data, Path(tmp) / "many", args.repeat)
            many = peak_memory_child(many_data, Path(tmp) / "many.h5")
            for label, m in ((" 1x", one), (f"{args.repeat}x", many)):
                print(f"peak RSS, {label}: {m['images']:>6} images: main process {m['main_mib']:.0f} MiB, "
                      f"largest decoding worker {m['workers_mib']:.0f} MiB ({m['images'] / m['seconds']:.1f} images/s)")
            print(f"memory growth {args.repeat}x images: {many['main_mib'] / one['main_mib']:.2f}x (main process)")


if __name__ == "__main__":
    main()
