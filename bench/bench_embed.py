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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.datasets import ImageFolder

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


def plain_loop(data: Path) -> tuple[int, float]:
    """The tutorial way: ImageFolder + DataLoader(batch_size=4) + resnet18 in eval mode."""
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
    return n, time.perf_counter() - t


def tlkit_embed(data: Path, out: Path, **kwargs) -> tuple[int, float]:
    from tlkit.embed import embed

    t = time.perf_counter()
    result = embed(data, out, weights="random", progress=False, echo=lambda *_: None, **kwargs)
    return result.embedded, time.perf_counter() - t


def replicate(data: Path, target: Path, times: int) -> Path:
    """``times`` copies of the data set as symlinked class folders (distinct paths, same photos)."""
    for split in ("train", "val"):
        for class_dir in (data / split).iterdir():
            for k in range(times):
                dst = target / split / class_dir.name / f"copy{k:02d}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(class_dir.resolve())
    return target


def peak_memory_child(data: Path, out: Path) -> dict:
    """Run embed in a fresh process and report its peak RSS and its workers'."""
    code = (
        "import json, resource, sys, time; from tlkit.embed import embed; t=time.perf_counter();"
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
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    data = Path(args.data)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")

    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048x2048, best of 3): {peak:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        n_plain, t_plain = plain_loop(data)
        n_tl, t_tl = tlkit_embed(data, Path(tmp) / "a.h5")
        n_plain2, t_plain2 = plain_loop(data)  # again, to bracket the noise of a shared machine
        plain_rate = max(n_plain / t_plain, n_plain2 / t_plain2)
        tl_rate = n_tl / t_tl
        print(f"plain ImageFolder + DataLoader(batch_size=4) loop: {n_plain} images, "
              f"{n_plain / t_plain:.1f} and {n_plain2 / t_plain2:.1f} images/s (best {plain_rate:.1f})")
        print(f"tlkit embed (defaults, end to end incl. HDF5 publish): {n_tl} images in {t_tl:.1f} s, {tl_rate:.1f} images/s")
        print(f"speed-up vs plain loop: {tl_rate / plain_rate:.2f}x (target >= 1.3x)")
        print(f"fraction of matmul peak: {tl_rate * GFLOPS_PER_IMAGE / peak:.0%} "
              f"({tl_rate * GFLOPS_PER_IMAGE:.1f} GFLOP/s; target >= 40%)")

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
