"""Stage-one throughput: `tlkit embed` at each precision against a competent PyTorch loop, in one run.

    .venv/bin/python bench/bench_embed.py [DATA_DIR] [--precision fp32,bf16,int8] [--rounds 3] [--repeat 10] [--scale-rounds 2]
    .venv/bin/python bench/bench_embed.py [DATA_DIR] --profile     # where an image's time goes, per stage
    .venv/bin/python bench/bench_embed.py [DATA_DIR] --backbone resnet50 --precision fp32,int8 --skip-memory --skip-tutorial
    .venv/bin/python bench/bench_embed.py [DATA_DIR] --shards      # tar shards vs the same images as a folder
    .venv/bin/python bench/bench_embed.py [DATA_DIR] --views 10    # cached augmented views: cost per view, head epochs

Every contender runs as a whole process (interpreter start-up, imports, writing
the result included), interleaved in rounds so that all see the same machine load:

  * **the peer**: what a competent PyTorch user writes -- ImageFolder +
    DataLoader(batch_size=32, num_workers=2) + torchvision resnet18 (or ``--backbone NAME``:
    ``torchvision.models.get_model(NAME)`` with its DEFAULT weights' transforms) with fc removed,
    under inference_mode, features saved to one .npy; it runs once as is and once
    with OMP_WAIT_POLICY=PASSIVE (which tlkit sets), and the faster of the two is
    the reference of its round;
  * today's tutorial loop (batch 4, no workers, no_grad), as a second line;
  * `tlkit embed --weights random --precision P` for each P, into a fresh cache
    (HDF5 publish, and int8's calibration, included).

The rounds run twice: on the images as they are (1x; the hymenoptera set is 398
photos, where the ~3.5 s of importing torch and torchvision that every contender
pays, and int8's one-time calibration, are a third of a run) and on --repeat
copies of them (Nx, symlinks: the throughput a data set of real size sees).

Then prints, for 1x and Nx:
  * the ratio of each precision to the peer, median over rounds
    (targets: fp32 >= 1.3x, bf16 >= 2x, int8 >= 3x);
  * the fraction of this machine's GEMM peak at that precision that embedding reaches
    (1.82 GFLOPs per 224x224 image; fp32 and bf16 peaks from a 2048^2 matmul, int8 from
    a 2048^2 quantized Linear, the fbgemm/oneDNN kernels the int8 network runs);
  * a decoding worker's images/s per core (PIL decode + resize + crop: the default pixels), and for
    reference PIL decode alone, PIL's reduced-size draft decode and torchvision.io.decode_jpeg;
  * peak memory (RSS, main process and decoding workers) of embed at each precision
    on 1x and --repeat x the images (features stream to disk: it must not grow).
Weights are random (the ImageNet file cannot be downloaded here); speed does not depend on them.

``--views K`` measures only the augmented views (``tlkit embed --views K``), at each ``--precision``,
side by side in interleaved rounds on the training images (every one of which gets views): the time of one view
against the time of one single-view image (target <= 0.6x, since the decode is shared), with the
backbone's own time per crop beside it (the floor of a view's cost); and the time of a torch head's
epoch on views against one without (target <= 1.2x), for one seed and for 10 vectorised seeds.
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
from statistics import median  # of an even count: the mean of the middle two

import torch

GFLOPS = {"resnet18": 1.82, "resnet50": 4.09}  # per 224x224 image (torchvision's published GFLOPS of each model)
GFLOPS_PER_IMAGE = 1.82
BACKBONE = "resnet18"  # --backbone: the peer and tlkit embed run the same network
TARGETS = {"fp32": 1.3, "bf16": 2.0, "fp16": 2.0, "int8": 3.0}
PEAKS: dict[str, float] = {}  # GFLOP/s per precision, measured once at the start of main()

PEER = """
import sys, numpy as np, torch, torchvision
from pathlib import Path
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.datasets import ImageFolder
data, out, batch_size, workers, name = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
dataset = ConcatDataset([ImageFolder(data / s, transform=transform) for s in ("train", "val") if (data / s).is_dir()])
model = torchvision.models.get_model(name, weights=None)
model.fc = torch.nn.Identity()
model.eval()
features = []
with torch.inference_mode():
    for images, _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        features.append(model(images))
np.save(out, torch.cat(features).numpy())
print(len(dataset))
"""

TUTORIAL = """
import sys, torch, torchvision
from pathlib import Path
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.datasets import ImageFolder
data, name = Path(sys.argv[1]), sys.argv[2]
transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
dataset = ConcatDataset([ImageFolder(data / s, transform=transform) for s in ("train", "val") if (data / s).is_dir()])
model = torchvision.models.get_model(name, weights=None)
model.fc = torch.nn.Identity()
model.eval()
with torch.no_grad():
    for images, _ in DataLoader(dataset, batch_size=4):
        model(images)
print(len(dataset))
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_speed_flags() -> set[str]:
    """The flags that decide which precision is fast here (what tlkit.embed.precision reads)."""
    from tlkit.embed.precision import cpu_flags

    return {f for f in cpu_flags() if f == "avx2" or f.startswith(("avx512", "amx")) or "vnni" in f or f == "bf16"}


def whole_process(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of ``cmd`` from spawn to exit, and its stdout."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def peer(data: Path, out: Path, env: dict | None = None) -> tuple[int, float]:
    seconds, stdout = whole_process([sys.executable, "-c", PEER, str(data), str(out), "32", "2", BACKBONE], env)
    return int(stdout.split()[-1]), seconds


def tutorial(data: Path) -> tuple[int, float]:
    seconds, stdout = whole_process([sys.executable, "-c", TUTORIAL, str(data), BACKBONE])
    return int(stdout.split()[-1]), seconds


def tlkit_embed(data: Path, out: Path, precision: str) -> tuple[int, float, float]:
    """(images, whole-process seconds, tlkit's own images/s) of the console command."""
    seconds, stdout = whole_process([sys.executable, "-m", "tlkit.cli", "embed", str(data), str(out),
                                     "--weights", "random", "--precision", precision, "--no-progress",
                                     "--backbone", BACKBONE, "--allow-slow"])  # measured, so confirmed
    summary = stdout.strip().splitlines()[-1]  # "embedded N, skipped K, ..., S s, R images/s -> OUT"
    n = int(summary.split(",")[0].split()[1])
    own_rate = float(summary.split(",")[4].split()[0])
    return n, seconds, own_rate


def gemm_peak_gflops(precision: str, n: int = 2048, reps: int = 10) -> float:
    """Best of 3 timings of ``reps`` n x n GEMMs at ``precision``, in GFLOP/s (2 n^3 per GEMM)."""
    if precision == "int8":
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = "x86"
        layer = torch.ao.nn.quantized.Linear(n, n)
        weight = torch.quantize_per_channel(torch.randn(n, n), torch.full((n,), 0.01), torch.zeros(n, dtype=torch.long),
                                            0, torch.qint8)
        layer.set_weight_bias(weight, None)
        x = torch.quantize_per_tensor(torch.rand(n, n), 0.01, 0, torch.quint8)

        def gemm():
            layer(x)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

        def gemm():
            a @ b
    for _ in range(3):
        gemm()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            gemm()
        best = min(best, time.perf_counter() - t)
    if precision == "int8":
        torch.backends.quantized.engine = previous
    return 2 * n**3 * reps / best / 1e9


def decode_rates(data: Path, limit: int = 100) -> dict[str, float]:
    """Images/s on one core of: what a decoding worker does (PIL decode, resize, crop: the default
    pixels, normalised later in batches), and PIL + the whole eval transform per image; for reference, PIL decode alone, PIL's reduced-size draft decode (JPEG DCT scaling, never below
    the resize target), and torchvision.io.decode_jpeg alone; plus the share of images at least
    twice the resize target, the only ones a draft decode makes cheaper."""
    import torchvision.io
    from PIL import Image

    from tlkit.data.decode import load_rgb
    from tlkit.data.transforms import TransformSpec

    spec = TransformSpec()
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def rate(fn, inputs) -> float:
        t = time.perf_counter()
        for x in inputs:
            fn(x)
        return len(inputs) / (time.perf_counter() - t)

    def draft(f):
        with Image.open(f) as im:
            im.draft("RGB", (spec.resize, spec.resize))
            return im.convert("RGB")

    try:
        transform, pixels = spec.build(), spec.build_pixels()
        raw = [torchvision.io.read_file(str(f)) for f in files]
        contenders = {"a decoding worker (PIL decode + resize + crop to uint8)": (lambda f: pixels(load_rgb(f)), files),
                      "PIL + the whole eval transform per image": (lambda f: transform(load_rgb(f)), files),
                      "PIL decode alone": (load_rgb, files),
                      "PIL draft decode alone": (draft, files),
                      "torchvision.io.decode_jpeg alone": (torchvision.io.decode_jpeg, raw)}
        out = dict.fromkeys(contenders, 0.0)
        for _ in range(3):  # interleaved, best of 3: the first pass over anything pays for warming up
            for name, (fn, inputs) in contenders.items():
                out[name] = max(out[name], rate(fn, inputs))
    finally:
        torch.set_num_threads(threads)
    big = 0
    for f in files:
        with Image.open(f) as im:
            big += min(im.size) >= 2 * spec.resize
    out["share of images >= 2x the resize target"] = big / max(1, len(files))
    return out


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


def peak_memory_child(data: Path, out: Path, precision: str) -> dict:
    """Run embed in a fresh process and report its peak RSS and its workers'."""
    code = (
        "import json, os, resource, sys, time; os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE');"  # as the CLI does
        "from tlkit.embed import embed; t=time.perf_counter();"
        f"r = embed({str(data)!r}, {str(out)!r}, weights='random', precision={precision!r}, progress=False, echo=lambda *_: None);"
        "print(json.dumps({'images': r.embedded, 'seconds': time.perf_counter()-t,"
        " 'main_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,"
        " 'workers_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_stages(data: Path, precisions: list[str], n: int = 96) -> None:
    """Where an image's time goes, stage by stage, in this process: decode, pixels, normalise, network, write.

    Decode and the pixels (resize + crop to uint8) run on one core, as in a decoding worker;
    the batched normalisation and the network on all of torch's threads at batch 32, as in the
    main process; the write through tlkit's part writer. For reference, the per-image
    ToTensor + Normalize that the workers ran before (tlkit/data/transforms.py says why no more).
    CPU-seconds per image bound what the cores can do together:
    cores / (decode + pixels + (normalise + network) x threads + write).
    """
    import numpy as np

    from tlkit.data.decode import load_rgb
    from tlkit.data.transforms import TransformSpec
    from tlkit.embed.mapper import FeatureMapper
    from tlkit.embed.precision import calibrate_int8
    from tlkit.embed.writer import PartWriter
    from tlkit.weights import Weights

    def per_image_ms(fn, inputs):
        t = time.perf_counter()
        out = [fn(x) for x in inputs]
        return out, 1000 * (time.perf_counter() - t) / len(inputs)

    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
    spec = TransformSpec()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode_ms = pixels_ms = old_ms = float("inf")
    for _ in range(3):  # interleaved, best of 3: the first pass pays for warming up
        decoded, ms = per_image_ms(load_rgb, files)
        decode_ms = min(decode_ms, ms)
        pixels, ms = per_image_ms(spec.build_pixels(), decoded)
        pixels_ms = min(pixels_ms, ms)
        old_ms = min(old_ms, per_image_ms(spec.build(), decoded)[1])
    torch.set_num_threads(threads)
    stacked = torch.stack(pixels)
    batches = [stacked[i:i + 32] for i in range(0, len(stacked), 32)]
    normalize_ms = float("inf")
    for _ in range(3):  # best of 3, the first pays for allocating
        t = time.perf_counter()
        normalised = [spec.normalize(b) for b in batches]
        normalize_ms = min(normalize_ms, 1000 * (time.perf_counter() - t) / len(stacked))
    images = torch.cat(normalised)
    state_dict = Weights.random(0).load().state_dict
    cores = os.cpu_count() or 1
    print(f"profile, {len(files)} photos, {threads} network threads, {cores} cores: per image, decode (PIL) "
          f"{decode_ms:.2f} ms and resize + crop to uint8 {pixels_ms:.2f} ms on one core (a decoding worker); "
          f"normalise in batches {normalize_ms:.2f} ms on {threads} threads (the per-image resize + crop + ToTensor "
          f"+ Normalize the workers ran before: {old_ms:.2f} ms on one core)")
    worker_ms = decode_ms + pixels_ms
    for p in precisions:
        calibration = calibrate_int8(state_dict, [images[:32]], "profile") if p == "int8" else None
        mapper = FeatureMapper(state_dict, torch.device("cpu"), p, calibration)
        mapper(images[:32])  # warm-up: oneDNN picks and caches its kernels
        t = time.perf_counter()
        features = np.concatenate([mapper(images[i:i + 32]) for i in range(0, len(images), 32)])
        network_ms = 1000 * (time.perf_counter() - t) / len(images)
        with tempfile.TemporaryDirectory() as tmp:
            writer = PartWriter(Path(tmp), ["a", "b"], rows_per_part=2048)
            t = time.perf_counter()
            for i in range(0, len(features), 32):
                rows = range(i, min(i + 32, len(features)))
                writer.add(features[i:i + 32], [0] * len(rows), [f"x/{k:06d}.jpg" for k in rows], ["train"] * len(rows))
            writer.close()
            write_ms = 1000 * (time.perf_counter() - t) / len(features)
        main_ms = (normalize_ms + network_ms) * threads
        cpu_ms = worker_ms + main_ms + write_ms
        print(f"  {p}: network {network_ms:.1f} ms per image ({1000 / network_ms:.0f} images/s on {threads} threads), "
              f"write {write_ms:.2f} ms; CPU time per image: decoding workers {worker_ms:.1f} ms = "
              f"{worker_ms / cpu_ms:.0%}, normalise + network {main_ms:.1f} ms = {main_ms / cpu_ms:.0%}, "
              f"write {write_ms / cpu_ms:.1%}; bound for {cores} cores: {1000 * cores / cpu_ms:.0f} images/s")


def compare(data: Path, tmp: Path, precisions: list[str], n_rounds: int, label: str, with_tutorial: bool) -> None:
    """Interleaved rounds of the peer (both variants), the tutorial loop and tlkit embed per precision on ``data``."""
    rounds = []
    for r in range(n_rounds):  # interleaved, so every contender sees the same machine load
        row = {"peer": peer(data, tmp / "peer.npy"),
               "peer_passive": peer(data, tmp / "peer.npy", {"OMP_WAIT_POLICY": "PASSIVE"})}
        if with_tutorial:
            row["tutorial"] = tutorial(data)
        order = precisions[r % len(precisions):] + precisions[:r % len(precisions)]  # rotate who goes first
        for p in order:
            row[p] = tlkit_embed(data, tmp / f"{label}-round{r}-{p}.h5", p)
        rounds.append(row)
        line = ", ".join(f"{p} {row[p][0] / row[p][1]:.1f}" for p in precisions)
        print(f"{label}, round {r + 1} ({row['peer'][0]} images; images/s, whole processes): "
              f"peer {row['peer'][0] / row['peer'][1]:.1f}, "
              f"peer with OMP_WAIT_POLICY=PASSIVE {row['peer_passive'][0] / row['peer_passive'][1]:.1f}"
              + (f", tutorial batch-4 loop {row['tutorial'][0] / row['tutorial'][1]:.1f}" if "tutorial" in row else "")
              + f"; tlkit embed {line}", flush=True)

    def rate(x):
        return x[0] / x[1]

    best_peer = [max(rate(row["peer"]), rate(row["peer_passive"])) for row in rounds]
    print(f"{label}: peer (ImageFolder + DataLoader(batch_size=32, num_workers=2) + inference_mode + .npy), "
          f"the faster variant of each round, median of {n_rounds}: {median(best_peer):.1f} images/s")
    if with_tutorial:
        print(f"{label}: tutorial loop (batch 4, no workers), median: {median([rate(row['tutorial']) for row in rounds]):.1f} images/s")
    for p in precisions:
        ratio = median([rate(row[p]) / b for row, b in zip(rounds, best_peer)])
        whole = median([rate(row[p]) for row in rounds])
        own = median([row[p][2] for row in rounds])
        peak = PEAKS.get(p)
        fraction = (f"; {own * GFLOPS_PER_IMAGE / peak:.0%} of the {p} GEMM peak "
                    f"({own * GFLOPS_PER_IMAGE:.1f} of {peak:.1f} GFLOP/s, at its own rate)") if peak and GFLOPS_PER_IMAGE else ""
        print(f"{label}: tlkit embed --precision {p}: {whole:.1f} images/s whole process ({own:.1f} by its summary line); "
              f"{ratio:.2f}x the peer (target >= {TARGETS[p]}x){fraction}", flush=True)


# --- tar shards vs folder (--shards) -----------------------------------------------------------

def cpu_description() -> str:
    """The CPU's model and the SIMD flags that decide convolution and decode speed."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"


def write_tar_shards(data: Path, out: Path, per_shard: int = 100) -> str:
    """``data``'s <split>/<class>/<image> files as webdataset shards (KEY.jpg + KEY.cls); returns a brace pattern."""
    import io
    import tarfile

    names = []
    for split_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        images = sorted(split_dir.glob("*/*"))
        for n, start in enumerate(range(0, len(images), per_shard)):
            name = f"{split_dir.name}-{n:05d}"
            with tarfile.open(out / f"{name}.tar", "w") as tar:
                for image in images[start:start + per_shard]:
                    key = f"{image.parent.name}_{image.stem}".replace(".", "_")
                    for member, payload in ((f"{key}{image.suffix.lower()}", image.read_bytes()),
                                            (f"{key}.cls", image.parent.name.encode())):
                        info = tarfile.TarInfo(member)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
            names.append(name)
    return f"{out}/{{{','.join(names)}}}.tar"


def compare_shards(data: Path, tmp: Path, n_rounds: int) -> None:
    """tlkit embed on the images as a folder and as tar shards, whole processes, interleaved rounds."""
    shard_dir = tmp / "shards"
    shard_dir.mkdir()
    pattern = write_tar_shards(data, shard_dir)
    ratios = []
    for r in range(n_rounds):
        runs = {}
        for source in (["folder", "shards"] if r % 2 == 0 else ["shards", "folder"]):
            runs[source] = tlkit_embed(data if source == "folder" else Path(pattern), tmp / f"{source}-{r}.h5", "fp32")
        folder_rate, shard_rate = (runs[s][0] / runs[s][1] for s in ("folder", "shards"))
        ratios.append(shard_rate / folder_rate)
        print(f"round {r + 1}: {runs['folder'][0]} images; whole process images/s: folder {folder_rate:.1f}, "
              f"tar shards {shard_rate:.1f} ({ratios[-1]:.2f}x); by the summary line: folder {runs['folder'][2]:.1f}, "
              f"shards {runs['shards'][2]:.1f}", flush=True)
    print(f"tar shards / folder, median of {n_rounds} rounds: {median(ratios):.2f}x (target >= 1.0x)")


# --- cached augmented views (--views K) ----------------------------------------------------

def tlkit_views(data: Path, out: Path, k: int, precision: str) -> tuple[int, float]:
    """(images, tlkit's own seconds by its summary line) of ``tlkit embed --views k`` into a fresh cache."""
    _, stdout = whole_process([sys.executable, "-m", "tlkit.cli", "embed", str(data), str(out), "--weights", "random",
                               "--views", str(k), "--precision", precision, "--no-progress"])
    summary = stdout.strip().splitlines()[-1]  # "embedded N, skipped K, already cached C, S s, R images/s -> OUT"
    return int(summary.split(",")[0].split()[1]), float(summary.split(",")[3].split()[0])


def network_ms_per_crop(precision: str, batch: int = 32, reps: int = 3) -> float:
    """The backbone alone at ``precision``, per 224 x 224 crop, at embed's CPU batch size (best of ``reps``)."""
    from tlkit.embed.mapper import FeatureMapper
    from tlkit.embed.precision import calibrate_int8
    from tlkit.weights import Weights

    state_dict = Weights.parse("random").load().state_dict
    images = torch.randn(batch, 3, 224, 224)
    calibration = calibrate_int8(state_dict, [images], "bench") if precision == "int8" else None
    mapper = FeatureMapper(state_dict, torch.device("cpu"), precision, calibration)
    mapper(images)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        mapper(images)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / batch


def head_epochs(n: int, k: int, rounds: int) -> None:
    """A torch head's epochs with and without views, interleaved: one seed, and 10 seeds vectorised."""
    import numpy as np

    from tlkit.heads import LinearHead

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 512)).astype(np.float32)
    y = np.arange(n) % 2
    V = (X[:, None] + rng.normal(scale=0.5, size=(n, k, 512))).astype(np.float32)
    Xv, yv = X[: n // 2], y[: n // 2]
    for label, fit in (("1 seed", lambda views: LinearHead(epochs=30).fit(X, y, eval_set=(Xv, yv), views=views)),
                       ("10 seeds vectorised", lambda views: LinearHead(epochs=30).fit_seeds(
                           X, y, range(10), eval_set=(Xv, yv), views=views))):
        ratios, plain_s, views_s = [], [], []
        for _ in range(rounds):
            t = time.perf_counter()
            fit(None)
            a = time.perf_counter() - t
            t = time.perf_counter()
            fit(V)
            b = time.perf_counter() - t
            plain_s.append(a)
            views_s.append(b)
            ratios.append(b / a)
        print(f"head epochs, linear, {n} images, 30 epochs, batch 4, {label}: without views {median(plain_s):.2f} s, "
              f"with {k} views {median(views_s):.2f} s: {median(ratios):.2f}x per epoch (target <= 1.2x), "
              f"median of {rounds} interleaved rounds", flush=True)


def bench_views(data: Path, tmp: Path, k: int, rounds: int, precisions: list[str]) -> None:
    """Stage one with --views k against without, side by side on the training images, at each precision (see the
    module docs)."""
    train_only = tmp / "train-only"
    source = data / "train" if (data / "train").is_dir() else data
    (train_only / "train").parent.mkdir(parents=True, exist_ok=True)
    (train_only / "train").symlink_to(source.resolve(), target_is_directory=True)
    for p in precisions:
        net = network_ms_per_crop(p)
        per_image, per_view = [], []
        for r in range(rounds):
            n0, t0 = tlkit_views(train_only, tmp / f"plain-{p}-{r}.h5", 0, p)
            n1, t1 = tlkit_views(train_only, tmp / f"views-{p}-{r}.h5", k, p)
            assert n0 == n1
            per_image.append(1000 * t0 / n0)
            per_view.append(1000 * (t1 - t0) / (n0 * k))
            print(f"views, {p}, round {r + 1} ({n0} training images): single view {t0:.1f} s, with --views {k} "
                  f"{t1:.1f} s (tlkit's own seconds)", flush=True)
        image_ms, view_ms = median(per_image), median(per_view)
        print(f"views, {p}: one single-view image {image_ms:.1f} ms, one extra view {view_ms:.1f} ms: "
              f"{view_ms / image_ms:.2f}x per view (target <= 0.6x: {'PASS' if view_ms / image_ms <= 0.6 else 'FAIL'})"
              f"; the {p} backbone alone takes {net:.1f} ms per crop ({net / image_ms:.2f}x of a single-view image: "
              f"the floor of a view's cost on this machine)", flush=True)
    with h5py_file(tmp / f"views-{precisions[0]}-0.h5") as f:
        n = len(f["train/labels"])
    head_epochs(n, k, rounds=3)


def h5py_file(path: Path):
    import h5py

    return h5py.File(path, "r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("TLKIT_HYMENOPTERA"))
    parser.add_argument("--precision", default="fp32,bf16,int8", help="comma-separated precisions of tlkit embed")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the peer vs tlkit")
    parser.add_argument("--repeat", type=int, default=10,
                        help="N: the comparison runs again on N copies of the images (symlinks), and the memory check "
                             "compares 1x with Nx")
    parser.add_argument("--scale-rounds", type=int, default=2, help="interleaved rounds on the Nx images")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the comparison on the Nx images")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-tutorial", action="store_true", help="leave out today's batch-4 loop")
    parser.add_argument("--backbone", default="resnet18",
                        help="a torchvision model with an fc layer (resnet50, ...): the peer and tlkit embed run it")
    parser.add_argument("--shards", action="store_true",
                        help="only compare tar-shard input with the same images as a folder (fp32, --rounds rounds)")
    parser.add_argument("--views", type=int, default=0,
                        help="K: only measure --views K (per-view cost, head epochs on views) against no views")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the stages (decode, transform, network, write) per precision, in-process")
    args = parser.parse_args()
    if not args.data:
        sys.exit("error: pass DATA_DIR or set TLKIT_HYMENOPTERA")
    data = Path(args.data)
    global BACKBONE, GFLOPS_PER_IMAGE
    BACKBONE, GFLOPS_PER_IMAGE = args.backbone, GFLOPS.get(args.backbone, 0.0)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; backbone {BACKBONE}")
    print(f"CPU: {cpu_description()}")
    if args.shards:
        with tempfile.TemporaryDirectory() as tmp:
            compare_shards(data, Path(tmp), args.rounds)
        return
    if args.views:
        with tempfile.TemporaryDirectory() as tmp:
            bench_views(data, Path(tmp), args.views, max(1, args.rounds - 1), precisions)
        return
    if args.profile:
        profile_stages(data, precisions)
        return

    PEAKS.update({p: gemm_peak_gflops(p) for p in sorted(set(precisions) | {"fp32"}) if p != "fp16"})
    print("GEMM peak (2048^2, best of 3): " + ", ".join(f"{p} {g:.1f} GFLOP/s" for p, g in PEAKS.items()))
    decode = decode_rates(data)
    share = decode.pop("share of images >= 2x the resize target")
    print("decode, images/s per core: " + ", ".join(f"{k} {v:.0f}" for k, v in decode.items())
          + f" ({share:.0%} of the images are >= 2x the resize target)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        many_data = replicate(data, tmp / "many", args.repeat) if args.repeat > 1 else None
        compare(data, tmp, precisions, args.rounds, "1x", not args.skip_tutorial)
        if many_data is not None and not args.skip_scale:
            compare(many_data, tmp, precisions, args.scale_rounds, f"{args.repeat}x", False)

        if many_data is not None and not args.skip_memory:
            for p in precisions:
                one = peak_memory_child(data, tmp / f"one-{p}.h5", p)
                many = peak_memory_child(many_data, tmp / f"many-{p}.h5", p)
                for label, m in ((" 1x", one), (f"{args.repeat}x", many)):
                    print(f"peak RSS {p}, {label}: {m['images']:>6} images: main process {m['main_mib']:.0f} MiB, "
                          f"largest decoding worker {m['workers_mib']:.0f} MiB ({m['images'] / m['seconds']:.1f} images/s)")
                print(f"memory growth {p}, {args.repeat}x images: {many['main_mib'] / one['main_mib']:.2f}x (main process)")


if __name__ == "__main__":
    main()
