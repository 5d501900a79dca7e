"""The cache as a tool at scale: `info`, reading a split, `verify`, `merge`, in one run.

    .venv/bin/python bench/bench_cache.py [--rows 1000000] [--small-rows 100000] [--dir /tmp]

Writes a synthetic cache of ROWS x 512 float32 features (about 2 GB for 1M rows;
the real layout: 256-row fletcher32 chunks, utf-8 paths, sha256 digests) under
a temporary folder in --dir, and deletes everything at the end. Prints,
measured side by side:
  * `tlkit info` on it, in-process and as a command (target: under 1 s);
  * reading all features of the split into numpy (h5py, and tlkit's load_cache
    with its checks) against `dd`/`cat` of the same file, cold (the file's pages
    dropped with posix_fadvise, nothing else touched) and warm, and the ratios;
  * `tlkit verify` (integrity scan of every chunk) on it;
  * `tlkit merge` of two caches (half of their paths shared), at SMALL_ROWS and
    at ROWS rows per input: time and peak RSS of the merging process, which
    must not grow with the size (it streams).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from tlkit.cache.reader import CONTENT_DIGEST_ATTR, PATHS_DIGEST_ATTR, PathsDigest, content_digest
from tlkit.cache.schema import FORMAT, SCHEMA_VERSION, Provenance
from tlkit.cache.writer import atomic_h5, create_split, write_root_attrs, write_skipped
from tlkit.data.transforms import TransformSpec

BLOCK = 65536
CLASSES = [f"class{k:02d}" for k in range(10)]
TLKIT = [sys.executable, "-m", "tlkit.cli"]


def write_cache(path: Path, first: int, n: int, seed: int, space: int) -> Path:
    """A finished cache whose rows are images ``first .. first+n-1`` of ``space``, written fast.

    Image i belongs to class ``10 * i // space``, so the paths (class folder, then a
    zero-padded number) come out sorted, as the schema requires, and two caches that
    share an image agree on its class.
    """
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((BLOCK, 512), dtype=np.float32)
    prov = Provenance(backbone="resnet18", layer="avgpool", weights_id="random:seed=0", weights_sha256="ab" * 32,
                      transform=TransformSpec().to_json(), feature_dim=512, tlkit_version="bench",
                      torch_version="bench", torchvision_version="bench", created="2026-01-01T00:00:00+00:00",
                      data_root="/bench")
    with atomic_h5(path) as f:
        write_root_attrs(f, format=FORMAT, schema_version=SCHEMA_VERSION, complete=True, splits=["train"],
                         class_names=CLASSES, **prov.to_attrs(), updated="bench")
        group = create_split(f, "train", n)
        digest = PathsDigest()
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            ids = np.arange(first + start, first + stop)
            labels = ids * 10 // space
            paths = np.array([f"train/{CLASSES[k]}/img{i:08d}.jpg" for i, k in zip(ids, labels)], dtype=object)
            group["features"][start:stop] = base[: stop - start] + ids[:, None].astype(np.float32) * 1e-6
            group["labels"][start:stop] = labels
            group["paths"][start:stop] = paths
            digest.update(paths)
        group["paths"].attrs[PATHS_DIGEST_ATTR] = np.bytes_(digest.hexdigest())
        write_skipped(f, [])
        f.attrs[CONTENT_DIGEST_ATTR] = np.bytes_(content_digest(f))
    return path


def drop_from_page_cache(path: Path) -> None:
    """Evict this one file's pages (clean pages only), so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_features(path: Path) -> None:
    with h5py.File(path, "r") as f:
        f["train/features"][...]


def load_split(path: Path) -> None:
    from tlkit.cache import load_cache

    load_cache(path, splits=["train"])


def checksum_cost(folder: Path, big: Path, rows: int = 131072) -> str:
    """What verifying fletcher32 costs: the same 256 MiB read with and without checksums (warm)."""
    with h5py.File(big, "r") as f:
        block = f["train/features"][:rows]
    rates = {}
    for fletcher32 in (True, False):
        path = folder / f"slice-{fletcher32}.h5"
        with h5py.File(path, "w", libver=("v110", "v110")) as f:
            f.create_dataset("x", data=block, chunks=(256, 512), fletcher32=fletcher32)
        read = lambda: h5py.File(path, "r")["x"][...]  # noqa: E731
        read()
        rates[fletcher32] = max(block.nbytes / timed(read) / 2**20 for _ in range(3))
        path.unlink()
    return (f"checksum cost ({block.nbytes / 2**20:.0f} MiB, same chunks, warm): {rates[True]:,.0f} MiB/s verifying fletcher32, "
            f"{rates[False]:,.0f} MiB/s without")


def shell(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Runs one merge in a fresh process: RSS is sampled every 5 ms while it runs (ru_maxrss alone
# would be dominated by the import of torch, which `tlkit merge` pulls in through tlkit.data).
MERGE_CHILD = """
import json, sys, threading, time
import psutil
from tlkit.cache.merge import merge
import tlkit.cache.assemble
me = psutil.Process()
before = me.memory_info().rss
peak = [before]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], me.memory_info().rss)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
result = merge(sys.argv[1], sys.argv[2:])
seconds = time.perf_counter() - start
done.set()
print(json.dumps({"seconds": seconds, "rows": sum(result.counts.values()),
                  "before_mib": before / 2**20, "peak_mib": peak[0] / 2**20}))
"""


def bench_merge(folder: Path, a: Path, b: Path, label: str) -> dict:
    out = folder / f"merged-{label}.h5"
    proc = subprocess.run([sys.executable, "-c", MERGE_CHILD, str(out), str(a), str(b)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    stats["gib_written"] = out.stat().st_size / 2**30
    out.unlink()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--dir", default="/tmp")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tlkit-bench-cache-", dir=args.dir))
    try:
        n, small = args.rows, args.small_rows
        t = time.perf_counter()
        big = write_cache(folder / "a.h5", 0, n, seed=1, space=3 * n // 2)
        size = big.stat().st_size
        print(f"wrote a synthetic {n} x 512 cache: {size / 2**30:.2f} GiB in {time.perf_counter() - t:.1f} s ({folder})")

        from tlkit.cache.info import cache_info

        cache_info(big)
        info_s = min(timed(lambda: cache_info(big)) for _ in range(3))
        cli_s = min(timed(lambda: shell(f"{' '.join(TLKIT)} info {big} > /dev/null")) for _ in range(3))
        print(f"\ninfo on {n} rows: {info_s:.3f} s in-process, {cli_s:.3f} s as `tlkit info` "
              f"(including interpreter start-up)   target < 1 s")

        feature_bytes = n * 512 * 4
        readers = {
            "dd bs=16M": (lambda: shell(f"dd if={big} of=/dev/null bs=16M"), size),
            "cat": (lambda: shell(f"cat {big} > /dev/null"), size),
            "h5py features[...]": (lambda: read_features(big), feature_bytes),
            "tlkit load_cache": (lambda: load_split(big), feature_bytes),
        }
        rates: dict[str, dict[str, float]] = {"cold": {}, "warm": {}}
        for name, (fn, nbytes) in readers.items():
            cold = []
            for _ in range(3):
                drop_from_page_cache(big)
                cold.append(nbytes / timed(fn) / 2**20)
            rates["cold"][name] = float(np.median(cold))
            fn()
            rates["warm"][name] = max(nbytes / timed(fn) / 2**20 for _ in range(3))
        print("\nreading the whole split, MiB/s (dd/cat: the whole file; h5py/load_cache: the features array, "
              "load_cache also labels, paths and their digest)")
        for mode, results in rates.items():
            how = "median of 3, this file's pages dropped first" if mode == "cold" else "best of 3, from the page cache"
            print(f"  {mode} ({how}): " + ", ".join(f"{k} {v:,.0f}" for k, v in results.items()))
            print(f"        ratio to dd: h5py {results['h5py features[...]'] / results['dd bs=16M']:.2f}, "
                  f"load_cache {results['tlkit load_cache'] / results['dd bs=16M']:.2f}; "
                  f"to cat: h5py {results['h5py features[...]'] / results['cat']:.2f}")
        print("  " + checksum_cost(folder, big))

        from tlkit.cache.verify import verify_cache

        drop_from_page_cache(big)
        seconds = timed(lambda: verify_cache(big, progress=False))
        print(f"\nverify (integrity: every checksum, NaN/inf, labels, paths, digests) on {n} rows: "
              f"{seconds:.1f} s ({size / seconds / 2**20:,.0f} MiB/s, cold)")

        print("\nmerge of two caches sharing half their paths (peak RSS of the merging process)")
        small_a = write_cache(folder / "sa.h5", 0, small, seed=1, space=3 * small // 2)
        small_b = write_cache(folder / "sb.h5", small // 2, small, seed=2, space=3 * small // 2)
        results = {f"{small} + {small}": bench_merge(folder, small_a, small_b, "small")}
        small_a.unlink(), small_b.unlink()
        other = write_cache(folder / "b.h5", n // 2, n, seed=2, space=3 * n // 2)
        results[f"{n} + {n}"] = bench_merge(folder, big, other, "big")
        for label, r in results.items():
            print(f"  {label:>22} rows: {r['rows']:>9} out, {r['gib_written']:.2f} GiB written in {r['seconds']:.1f} s; "
                  f"RSS {r['before_mib']:.0f} MiB after imports, peak {r['peak_mib']:.0f} MiB while merging "
                  f"(+{r['peak_mib'] - r['before_mib']:.0f} MiB)")
        (s_small, s_big) = results.values()
        print(f"  merging's own memory, big/small: {(s_big['peak_mib'] - s_big['before_mib']):.0f} / "
              f"{(s_small['peak_mib'] - s_small['before_mib']):.0f} MiB for {s_big['rows'] / s_small['rows']:.0f}x the rows; "
              f"peak RSS ratio {s_big['peak_mib'] / s_small['peak_mib']:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
