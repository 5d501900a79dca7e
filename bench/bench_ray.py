"""Ray backend against the local backend, side by side in one run.

    TLKIT_HYMENOPTERA=/path/to/hymenoptera_data python bench/bench_ray.py [--rounds 3] [--rows 100000]

Prints, on the hymenoptera set (398 images, --weights random: the same
network cost as ImageNet weights):

1. images/s of ``tlkit embed`` with the local backend and with the Ray
   backend, rounds interleaved, median per configuration, and the ratio
   local/ray. Ray is timed three ways: a cold run that starts its own local
   cluster (what one CLI call costs), runs on a cluster that is already up
   (what a user with a Ray cluster sees), and the steady state while shards
   run (no cluster, actor or model start-up);
2. per-shard times, and from them an estimate of throughput on N workers;
3. the cost of publishing shards by a streamed copy (what tlkit does)
   against an HDF5 virtual dataset over the shard files, on the real
   features and on a synthetic set of --rows rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

import tlkit.embed.pipeline as pipeline
from tlkit.cache import load_cache
from tlkit.cache.assemble import assemble
from tlkit.cache.schema import FORMAT, PART_FORMAT, SCHEMA_VERSION
from tlkit.cache.writer import write_root_attrs, write_split
from tlkit.embed import embed
from tlkit.embed.job import RayOptions

QUIET = {"weights": "random", "seed": 0, "progress": False, "echo": lambda *_: None}


class Recorder:
    """Wraps the pipeline's distributor to keep what the Ray backend reports per shard."""

    def __init__(self):
        self.stats = []
        self._real = pipeline.get_distributor
        pipeline.get_distributor = self._wrap

    def _wrap(self, backend):
        distribute = self._real(backend)

        def wrapped(job, items, on_progress):
            stats = distribute(job, items, on_progress)
            self.stats.append(stats)
            return stats

        return wrapped


def timed_embed(data: Path, tmp: Path, name: str, **kwargs) -> float:
    out = tmp / f"{name}-{time.monotonic_ns()}.h5"
    result = embed(data, out, **QUIET, **kwargs)
    assert result.embedded == len(load_cache(out)["train"]) + len(load_cache(out)["val"])
    out.unlink()
    return result.embedded / result.seconds


def steady_rate(stats) -> float:
    """Images/s while shards ran: all images over the busiest actor's summed shard time."""
    busy: dict[int, float] = {}
    for r in stats.shards:
        busy[r.pid] = busy.get(r.pid, 0.0) + r.seconds
    return sum(r.images for r in stats.shards) / max(busy.values())


def bench_backends(data: Path, tmp: Path, rounds: int) -> tuple[dict, list]:
    import ray

    cpus = os.cpu_count() or 1
    rates: dict[str, list[float]] = {}
    recorder = Recorder()

    print(f"== embed {data} ({cpus} CPUs), {rounds} rounds, median images/s ==")
    # Cold: the CLI's first call starts (and stops) a Ray cluster of its own.
    rates["ray cold (own cluster, 1 run), --workers 1"] = [
        timed_embed(data, tmp, "cold", backend="ray", workers=1, ray=RayOptions(address="local"))
    ]
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    configs = {
        "local, --workers 2 (CLI default here)": dict(backend="local", workers=2),
        "local, --workers 0": dict(backend="local", workers=0),
        "ray warm, --workers 2 (1 actor x 2 CPUs)": dict(backend="ray", workers=2),
        "ray warm, --workers 1 (2 actors x 1 CPU)": dict(backend="ray", workers=1),
        "ray warm, --workers 0 (2 actors x 1 CPU)": dict(backend="ray", workers=0),
    }
    steady: dict[str, list[float]] = {}
    last_stats = {}
    for _ in range(rounds):
        for name, cfg in configs.items():
            n_before = len(recorder.stats)
            rates.setdefault(name, []).append(timed_embed(data, tmp, "run", **cfg))
            if cfg["backend"] == "ray":
                stats = recorder.stats[n_before]
                steady.setdefault(name.replace("warm", "steady"), []).append(steady_rate(stats))
                last_stats[name] = stats
    ray.shutdown()
    rates.update(steady)

    base = statistics.median(rates["local, --workers 2 (CLI default here)"])
    best_local = max(statistics.median(rates[k]) for k in rates if k.startswith("local"))
    print(f"{'configuration':<46} {'images/s':>9} {'local/this':>11} {'best local/this':>16}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:<46} {med:9.1f} {base / med:11.2f} {best_local / med:16.2f}")
    return last_stats, rates


def decode_rate(data: Path) -> float:
    """Images/s of decoding + transforming alone on one core: what bounds a GPU worker per decoding process."""
    from tlkit.data.discovery import discover
    from tlkit.data.transforms import TransformSpec
    from tlkit.data.reader import read_batches

    files = [str(data / it.path) for it in discover(data).items]
    start = time.perf_counter()
    for _ in read_batches(files, TransformSpec(), 32, 0, None):
        pass
    return len(files) / (time.perf_counter() - start)


def print_shards_and_estimate(last_stats: dict, rates: dict, publish_rows_per_s: float, decode_per_core: float) -> None:
    print("\n== per-shard times (last round) ==")
    for name, stats in last_stats.items():
        line = ", ".join(f"#{r.shard}: {r.images} img {r.seconds:.2f} s" for r in stats.shards)
        print(f"{name}: {line}")

    # The estimate: per-worker rate from shard times, plus what does not shrink with more workers:
    # the fixed start-up of a run on a running cluster (actors, model load, planning: measured as
    # the warm run's time beyond its shards) and the driver's publish (a streamed copy, measured below).
    name = "ray warm, --workers 1 (2 actors x 1 CPU)"
    stats = last_stats[name]
    images = sum(r.images for r in stats.shards)
    per_worker = images / sum(r.seconds for r in stats.shards)
    fixed = images / statistics.median(rates[name]) - images / statistics.median(rates[name.replace("warm", "steady")])
    publish = 1e6 / publish_rows_per_s
    print(
        f"\n== estimate from those shard times ==\n"
        f"one 1-CPU worker embedded {per_worker:.1f} images/s here (beside a second one on this 2-core machine);\n"
        f"a run on a running cluster adds {fixed:.1f} s of start-up, and publishing 1,000,000 rows takes {publish:.0f} s.\n"
        f"With N such workers (separate cores or nodes, images on a filesystem fast enough to feed them),\n"
        f"1,000,000 images take about {fixed:.0f} s + 1e6/(N x {per_worker:.1f}) s + {publish:.0f} s:"
    )
    for n in (1, 2, 8, 32, 128):
        embed_s = 1e6 / (n * per_worker)
        total = fixed + embed_s + publish
        print(f"  N={n:<4} {n * per_worker:9.0f} images/s while embedding   total {total / 3600:6.2f} h "
              f"({1e6 / total:7.0f} images/s overall)")
    print(
        f"On GPU workers the network is no longer the limit: decoding is, at {decode_per_core:.0f} images/s per decoding\n"
        f"core measured here (these JPEGs, resize + crop); a GPU actor with --workers W runs at about W x {decode_per_core:.0f}\n"
        f"images/s until the GPU or the shared filesystem saturates."
    )


def write_shards(folder: Path, split: str, features: np.ndarray, labels: np.ndarray, paths: list[str], n: int) -> list[Path]:
    """Cut rows (sorted by path) into ``n`` contiguous cache-shaped part files, as the Ray workers do."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [round(i * len(paths) / n) for i in range(n + 1)]
    files = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        f_path = folder / f"shard-{k:05d}-000000.h5"
        with h5py.File(f_path, "w") as f:
            write_root_attrs(f, format=PART_FORMAT, schema_version=SCHEMA_VERSION, complete=True,
                             splits=[split], class_names=["ants", "bees"])
            write_split(f, split, features[a:b], labels[a:b], paths[a:b])
            f.create_group("skipped")
        files.append(f_path)
    return files


def make_vds(out: Path, shards: list[Path], split: str) -> None:
    """The alternative: one file of virtual datasets mapping each shard's rows in order (no copy)."""
    sizes = []
    for s in shards:
        with h5py.File(s, "r") as f:
            sizes.append(len(f[split]["labels"]))
    total = sum(sizes)
    with h5py.File(out, "w") as f:
        write_root_attrs(f, format=FORMAT, schema_version=SCHEMA_VERSION, complete=True, splits=[split],
                         class_names=["ants", "bees"])
        g = f.create_group(split)
        for name, shape, dtype in (
            ("features", (total, 512), np.float32),
            ("labels", (total,), np.int64),
            ("paths", (total,), h5py.string_dtype()),
        ):
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            start = 0
            for s, size in zip(shards, sizes):
                layout[start:start + size] = h5py.VirtualSource(str(s), f"{split}/{name}", shape=(size, *shape[1:]))
                start += size
            g.create_virtual_dataset(name, layout)


def best_of(n: int, fn) -> float:
    """Fastest of ``n`` timed calls: the files are in the page cache after the first."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_all(path: Path, split: str) -> float:
    def read():
        with h5py.File(path, "r") as f:
            f[split]["features"][...]
            f[split]["labels"][...]
            f[split]["paths"].asstr()[...]

    return best_of(3, read)


def read_random(path: Path, split: str, rows: np.ndarray) -> float:
    def read():
        with h5py.File(path, "r") as f:
            f[split]["features"][rows]

    return best_of(3, read)


def bench_publish(tmp: Path, real: Path, rows: int) -> float:
    """Streamed copy vs virtual dataset; returns the copy's rows/s on the large set."""
    print("\n== publishing shards: streamed copy (assemble) vs HDF5 virtual dataset ==")
    cache = load_cache(real)
    sets = [("hymenoptera train, 4 shards", cache["train"].features, cache["train"].labels, cache["train"].paths.tolist(), 4)]
    rng = np.random.default_rng(0)
    paths = [f"train/c{i % 2}/img_{i:08d}.jpg" for i in range(rows)]
    paths.sort()
    sets.append((f"synthetic {rows} rows, 16 shards", rng.standard_normal((rows, 512), dtype=np.float32),
                 rng.integers(0, 2, rows), paths, 16))
    attrs = {k: v for k, v in load_cache(real).provenance.to_attrs().items()}
    copy_rate = 0.0
    print(f"{'data':<34} {'publish s':>10} {'file MiB':>9} {'full read s':>12} {'1k random rows s':>17}")
    for label, feats, labels, paths, n in sets:
        folder = tmp / f"shards-{n}-{len(paths)}"
        shards = write_shards(folder, "train", feats, labels, paths, n)
        copy_out, vds_out = folder / "copy.h5", folder / "vds.h5"
        t0 = time.perf_counter()
        assemble(copy_out, shards, ["ants", "bees"], attrs)
        t_copy = time.perf_counter() - t0
        t0 = time.perf_counter()
        make_vds(vds_out, shards, "train")
        t_vds = time.perf_counter() - t0
        picks = np.sort(rng.choice(len(paths), size=min(1000, len(paths)), replace=False))
        for name, path, t in (("copy", copy_out, t_copy), ("vds", vds_out, t_vds)):
            size = path.stat().st_size / 2**20
            print(f"{label + ' ' + name:<34} {t:10.3f} {size:9.1f} {read_all(path, 'train'):12.3f} "
                  f"{read_random(path, 'train', picks):17.3f}")
        with h5py.File(copy_out) as a, h5py.File(vds_out) as b:
            assert np.array_equal(a["train"]["features"][...], b["train"]["features"][...])
        copy_rate = len(paths) / t_copy
    print(f"streamed copy: {copy_rate:,.0f} rows/s; the virtual dataset is near-free to write but depends on the shard files")
    return copy_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TLKIT_HYMENOPTERA"), help="hymenoptera_data folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic publish benchmark")
    args = parser.parse_args()
    if not args.data:
        print("give --data or set TLKIT_HYMENOPTERA", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp_name:
        tmp = Path(tmp_name)
        last_stats, rates = bench_backends(Path(args.data), tmp, args.rounds)
        real = tmp / "real.h5"
        embed(Path(args.data), real, **QUIET)
        copy_rate = bench_publish(tmp, real, args.rows)
        print_shards_and_estimate(last_stats, rates, copy_rate, decode_rate(Path(args.data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
