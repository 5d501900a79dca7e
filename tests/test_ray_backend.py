"""``tlkit embed --backend ray``: same cache as the local backend, retries, resume, optional Ray.

One local Ray cluster (2 CPUs, ``conftest.ray_cluster``) serves the tests; every Ray run embeds
the 26 real images of ``hymenoptera_small`` with random weights, and is
compared with one local-backend run of the same images.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import launcher
import pytest

from conftest import python_sigint
from tlkit.cache import load_cache
from tlkit.cache.reader import read_paths, split_names
from tlkit.embed import embed
from tlkit.embed.job import EmbedJob, RayOptions

RAY_OPTIONS = {"batch_size": 2, "workers": 0, "weights": "random", "seed": 0, "progress": False}
# One actor of 2 CPUs on the 2-CPU cluster, decoding in 2 workers forked from it. Why: every actor is a fresh Ray
# worker that imports torch and torchvision (seconds of CPU), and the retry and resume tests are about shards,
# not about actors side by side; test_ray_cache_equals_local_cache keeps two 1-CPU actors.
ONE_ACTOR = {**RAY_OPTIONS, "workers": 2}


def cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """Run ``tlkit ARGS`` in a process of its own; report on stderr whether Ray got imported.

    The launcher's process has torch and tlkit's command modules loaded already, but never Ray, so "Ray
    imported" means the command imported it."""
    code = (
        f"import sys\n{prelude}\nfrom tlkit.cli import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "finally:\n    print('ray imported:', 'ray' in sys.modules and sys.modules['ray'] is not None, file=sys.stderr)\n"
    )
    return launcher.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def local_run(hymenoptera_small, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The reference: the local backend on the same images, run through the CLI in its own process."""
    out = tmp_path_factory.mktemp("ray_ref") / "local.h5"
    proc = cli("embed", str(hymenoptera_small), str(out), "--weights", "random", "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.fixture
def ray_stats(monkeypatch):
    """Record what the Ray distributor returned, to check the work really ran in shards on actors."""
    import tlkit.embed.pipeline as pipeline

    seen = []
    real = pipeline.get_distributor

    def recording(backend):
        distribute = real(backend)

        def wrapped(job, items, on_progress):
            stats = distribute(job, items, on_progress)
            seen.append(stats)
            return stats

        return wrapped

    monkeypatch.setattr(pipeline, "get_distributor", recording)
    return seen


def assert_same_cache(ours: Path, reference: Path) -> None:
    a, b = load_cache(ours), load_cache(reference)
    assert a.class_names == b.class_names
    assert list(a.splits) == list(b.splits)
    for split in b.splits:
        assert a[split].paths.tolist() == b[split].paths.tolist()
        np.testing.assert_array_equal(a[split].labels, b[split].labels)
        np.testing.assert_allclose(a[split].features, b[split].features, rtol=0, atol=1e-5)
    skip_time = lambda p: {k: v for k, v in p.to_attrs().items() if k != "created"}  # noqa: E731
    assert skip_time(a.provenance) == skip_time(b.provenance)
    assert a.skipped == b.skipped
    # Times differ; so does the digest of the feature bytes, which are equal only within float
    # rounding (the actors run the convolutions on 1 thread, the local run on 2).
    ignore = ("created", "updated", "content_sha256")
    assert {k: v for k, v in a.attrs.items() if k not in ignore} == {k: v for k, v in b.attrs.items() if k not in ignore}


def test_local_backend_never_imports_ray(local_run):
    out, proc = local_run
    assert "ray imported: False" in proc.stderr
    assert load_cache(out)["train"].features.shape == (16, 512)


def test_without_ray_the_ray_backend_says_how_to_install_it(hymenoptera_small, tmp_path):
    out = tmp_path / "feats.h5"
    proc = cli(
        "embed", str(hymenoptera_small), str(out), "--weights", "random", "--backend", "ray",
        prelude="sys.modules['ray'] = None  # as if Ray were not installed",
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("ray imported:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: ") and "pip install 'tlkit[ray]'" in errors[0]
    assert not out.exists()


@pytest.mark.ray
def test_ray_cache_equals_local_cache(ray_cluster, local_run, ray_stats, hymenoptera_small, tmp_path):
    out = tmp_path / "ray.h5"
    result = embed(hymenoptera_small, out, backend="ray", ray=RayOptions(shards=3), echo=lambda *_: None, **RAY_OPTIONS)
    assert result.embedded == 26 and not result.skipped
    assert_same_cache(out, local_run[0])
    assert not out.with_name("ray.h5.parts").exists()

    (stats,) = ray_stats
    assert [r.shard for r in stats.shards] == [0, 1, 2]
    assert [r.images for r in stats.shards] == [9, 8, 9]  # contiguous near-equal slices of 26 paths
    assert all(r.pid != os.getpid() for r in stats.shards)  # embedded in actors, not in this process
    assert len({r.pid for r in stats.shards}) == 2  # two 1-CPU actors on the 2-CPU cluster
    assert all(name.startswith(f"shard-{r.shard:05d}-") for r in stats.shards for name in r.parts)


@pytest.mark.ray
def test_killed_worker_has_its_shard_redone(ray_cluster, local_run, ray_stats, hymenoptera_small, tmp_path, caplog):
    ray = ray_cluster
    before = set(ray.util.list_named_actors())
    killed: dict = {}
    finished = threading.Event()

    def kill_one_actor_mid_shard():
        """Wait until an actor of this run has embedded part of its shard, then SIGKILL its process."""
        deadline = time.monotonic() + 120
        while not finished.is_set() and time.monotonic() < deadline:
            names = [n for n in ray.util.list_named_actors() if n.startswith("tlkit-embed-") and n.endswith("-0")]
            names = [n for n in names if n not in before]
            if names:
                try:
                    status = ray.get(ray.get_actor(names[0]).status.remote(), timeout=5)
                except Exception:  # noqa: BLE001 - the actor may still be starting
                    status = {"shard": None}
                if status["shard"] is not None and 2 <= status["rows"] <= 9:
                    os.kill(status["pid"], signal.SIGKILL)
                    killed.update(status, before_end=not finished.is_set())
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_actor_mid_shard, daemon=True)
    killer.start()
    out = tmp_path / "ray.h5"
    try:
        result = embed(hymenoptera_small, out, backend="ray", ray=RayOptions(shards=2), echo=lambda *_: None, **ONE_ACTOR)
    finally:
        finished.set()
        killer.join()

    assert killed.get("before_end"), "the worker was not killed while the run was going"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # that process is really gone
    (stats,) = ray_stats
    redone = [r for r in stats.shards if r.shard == killed["shard"]]
    assert redone[0].restarted and redone[0].pid != killed["pid"]
    assert any("redone on a restarted Ray worker" in rec.message for rec in caplog.records)
    assert result.embedded == 26
    assert_same_cache(out, local_run[0])


@pytest.mark.ray
def test_interrupted_run_keeps_finished_shards_and_resumes(ray_cluster, local_run, hymenoptera_small, tmp_path):
    out = tmp_path / "ray.h5"
    parts = out.with_name("ray.h5.parts")
    finished = threading.Event()

    def interrupt_after_first_shard():
        while not finished.is_set():
            if any(parts.glob("shard-*.h5")):
                _thread.interrupt_main()  # what Ctrl-C does to the driver
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=interrupt_after_first_shard, daemon=True)
    watcher.start()
    with python_sigint(), pytest.raises(KeyboardInterrupt):
        try:
            embed(hymenoptera_small, out, backend="ray", ray=RayOptions(shards=4), echo=lambda *_: None, **ONE_ACTOR)
        finally:
            finished.set()
            watcher.join()
    assert not out.exists()  # unfinished, not torn: no cache until every shard is in
    done_at_interrupt = len(load_parts_paths(parts))
    assert done_at_interrupt >= 6  # at least one whole shard (26 images in 4 shards of 6 or 7)

    result = embed(hymenoptera_small, out, backend="ray", ray=RayOptions(shards=4), echo=lambda *_: None, **ONE_ACTOR)
    assert result.already_cached >= done_at_interrupt
    assert result.embedded == 26 - result.already_cached
    assert result.embedded < 26
    assert_same_cache(out, local_run[0])


def load_parts_paths(parts: Path) -> set[str]:
    paths = set()
    for part in parts.glob("shard-*.h5"):
        with h5py.File(part, "r") as f:
            for split in split_names(f):
                paths.update(read_paths(f[split]).tolist())
    return paths


@pytest.mark.ray
def test_retried_shard_skips_the_rows_its_earlier_attempt_wrote(ray_cluster, local_run, hymenoptera_small, tmp_path):
    """An attempt killed after a part was flushed leaves that part; the retry must not embed its rows again."""
    from tlkit.data.discovery import discover
    from tlkit.data.transforms import TransformSpec
    from tlkit.cache.parts import PARTS_MANIFEST as MANIFEST
    from tlkit.embed.ray_backend import run_ray
    from tlkit.embed.runner import WorkItem
    from tlkit.embed.writer import PartWriter
    from tlkit.weights import Weights

    reference = load_cache(local_run[0])
    parts = tmp_path / "feats.h5.parts"
    parts.mkdir()
    (parts / MANIFEST).write_text("{}")
    label_of = {name: i for i, name in enumerate(reference.class_names)}
    items = [
        WorkItem(file=str(hymenoptera_small / it.path), path=it.path, split=it.split, label=label_of[it.class_name])
        for it in discover(hymenoptera_small).items
    ]
    first = sorted(items, key=lambda it: it.path)[:5]  # shard 0's first rows, "flushed before the crash"
    train = reference["train"]
    rows = [train.paths.tolist().index(it.path) for it in first]
    earlier = PartWriter(parts, reference.class_names, prefix="shard-00000")
    earlier.add(train.features[rows], train.labels[rows], train.paths[rows].tolist(), ["train"] * 5)
    earlier.close()

    job = EmbedJob(
        state_dict=Weights.random(0).load().state_dict, spec=TransformSpec(), parts_dir=parts,
        class_names=reference.class_names, batch_size=2, workers=2, device="cpu", max_pixels=None,
        ray=RayOptions(shards=2),
    )
    progress = []
    stats = run_ray(job, items, progress.append)
    assert stats.embedded == 26 and sum(progress) == 26
    assert stats.shards[0].parts == ("shard-00000-000000.h5", "shard-00000-000001.h5")
    written = []
    for part in sorted(parts.glob("shard-*.h5")):
        with h5py.File(part, "r") as f:
            written += [p for split in split_names(f) for p in read_paths(f[split]).tolist()]
    assert sorted(written) == sorted(it.path for it in items)  # every image once: no duplicate rows


@pytest.mark.ray
def test_gpu_workers_on_a_cluster_without_gpus_is_one_line_error(ray_cluster, hymenoptera_small, tmp_path):
    from click.testing import CliRunner

    from tlkit.cli import main

    out = tmp_path / "feats.h5"
    args = ["embed", str(hymenoptera_small), str(out), "--weights", "random", "--backend", "ray", "--gpus-per-worker", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: --gpus-per-worker 1, but the Ray cluster has 0 GPUs; use --gpus-per-worker 0 to embed on CPUs"
    )
    assert not out.exists()


def test_shards_are_contiguous_near_equal_slices_of_the_sorted_paths():
    pytest.importorskip("ray")
    from tlkit.embed.ray_backend import split_shards
    from tlkit.embed.runner import WorkItem

    items = [WorkItem(file=f"/d/{p}", path=p, split="train", label=0) for p in (f"train/c/{i:03d}.jpg" for i in range(10, 0, -1))]
    shards = split_shards(items, 3)
    assert [[it.path[-7:-4] for it in s] for s in shards] == [
        ["001", "002", "003"], ["004", "005", "006", "007"], ["008", "009", "010"]
    ]
    assert split_shards(list(reversed(items)), 3) == shards  # the same images give the same shards
    assert [len(s) for s in split_shards(items[:2], 5)] == [1, 1]  # never an empty shard


def test_driver_waits_for_part_files_to_show_and_names_the_shared_filesystem(tmp_path):
    pytest.importorskip("ray")
    from tlkit.embed.ray_backend import _wait_until_listed
    from tlkit.errors import CacheError

    (tmp_path / "shard-00000-000000.h5").touch()
    _wait_until_listed(tmp_path, ["shard-00000-000000.h5"], timeout=0)
    threading.Timer(0.5, (tmp_path / "shard-00001-000000.h5").touch).start()  # shows up a moment later
    _wait_until_listed(tmp_path, ["shard-00000-000000.h5", "shard-00001-000000.h5"], timeout=10)
    with pytest.raises(CacheError, match="every node mounts at the same path"):
        _wait_until_listed(tmp_path, ["shard-00002-000000.h5"], timeout=0)


def test_an_unreachable_cluster_address_fails_fast_in_one_line():
    pytest.importorskip("ray")
    import socket

    from tlkit.embed.ray_backend import RayBackendError, _check_reachable

    with socket.socket() as s:  # a port that nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RayBackendError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 10
    _check_reachable("auto")  # Ray's own address rules: nothing to check here
