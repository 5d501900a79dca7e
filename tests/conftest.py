"""Shared fixtures: the real hymenoptera photos and a cache embedded from them.

The photos come from the environment variable TLKIT_HYMENOPTERA (``.ci/run``
and ``make test`` set it; ``make test`` finds or fetches them with
scripts/test_data.py). Under CI a missing data set fails the run; on a
developer machine without it, the tests that need it are skipped, saying how
to provide it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

HYMENOPTERA_ENV = "TLKIT_HYMENOPTERA"


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The ants/bees data set: train/ and val/, each with ants/ and bees/."""
    value = os.environ.get(HYMENOPTERA_ENV, "")
    path = Path(value) if value else None
    if path is None or not (path / "train").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{HYMENOPTERA_ENV} must point at hymenoptera_data (got {value!r})")
        where = f"{HYMENOPTERA_ENV}={value} holds no train/" if value else f"{HYMENOPTERA_ENV} is not set"
        pytest.skip(f"needs the hymenoptera photos ({where}): run make test online once (it fetches them into "
                    f"data/), or set {HYMENOPTERA_ENV} to a hymenoptera_data folder")
    return path


def make_subset(source: Path, target: Path, per_class: dict[str, int]) -> Path:
    """Copy the first N images of each class of each split: a small, real data set."""
    for split, n in per_class.items():
        for class_dir in sorted((source / split).iterdir()):
            if not class_dir.is_dir():
                continue
            out = target / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for image in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})[:n]:
                shutil.copy2(image, out / image.name)
    return target


def without_every_second_val_image(source: Path, target: Path) -> list[Path]:
    """A copy of ``source`` without every second val image (the first part of an incremental run); returns the
    removed paths (under ``target``), which a second run over ``source`` must add."""
    shutil.copytree(source, target)
    later = sorted((target / "val").rglob("*.jpg"))[::2]
    for path in later:
        path.unlink()
    return later


@pytest.fixture(scope="session")
def hymenoptera_small(hymenoptera, tmp_path_factory) -> Path:
    """A real subset: 8 train and 5 val images per class (26 images)."""
    return make_subset(hymenoptera, tmp_path_factory.mktemp("hym_small"), {"train": 8, "val": 5})


@pytest.fixture(scope="session")
def hymenoptera_small_cache(hymenoptera_small, tmp_path_factory) -> Path:
    """``hymenoptera_small`` embedded once, uninterrupted, with --weights random (seed 0), no worker processes:
    the reference of the fault and cache-tool tests. Read it or copy it; never write to it."""
    from tlkit.embed import embed

    out = tmp_path_factory.mktemp("hym_small_cache") / "feats.h5"
    embed(hymenoptera_small, out, weights="random", seed=0, workers=0, progress=False, echo=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def hymenoptera_tiny(hymenoptera, tmp_path_factory) -> Path:
    """A smaller real subset for training ResNet-18 end to end: 4 train and 2 val images per class (12 images).

    A train-scratch epoch costs about the number of images (forward and backward through the whole
    network, at full resolution); the tests of the run contract, resume and predict need real images,
    not many of them.
    """
    return make_subset(hymenoptera, tmp_path_factory.mktemp("hym_tiny"), {"train": 4, "val": 2})


@pytest.fixture(scope="session")
def hymenoptera_cache(hymenoptera, tmp_path_factory) -> Path:
    """The whole hymenoptera set (245 train / 153 val) embedded once with --weights random."""
    from tlkit.embed import embed

    out = tmp_path_factory.mktemp("hym_cache") / "feats.h5"
    embed(hymenoptera, out, weights="random", seed=0, batch_size=32, workers=2, progress=False, echo=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) per test process, shared by every test that embeds on Ray in-process.

    Why one: a cluster's start (GCS, raylet, its agents and prestarted workers) costs seconds of CPU that the
    tests, which are about tlkit's actors and not about Ray's start, need not pay per module. Tests that run the
    command (``--ray-address local``) still get a cluster of their own, the one the command starts.
    """
    import signal

    ray = pytest.importorskip("ray")
    sigterm = signal.getsignal(signal.SIGTERM)
    # address="local": a fresh cluster of our own, never one that another process left running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, sigterm)  # ray.init's SIGTERM handler (sys.exit) is not the test process's
    yield ray
    ray.shutdown()


# The files that take longest, longest first, as `pytest --durations=0` measured them on the 2-core CI machine
# (test seconds with two workers: faults 187, precision_caches 186, precision 185, ray_backend 174, ...).
# `make test` hands out whole files (--dist loadfile) in collection order (--no-loadscope-reorder): longest
# first, so that the run does not end with one worker on a long file while the other has nothing left to do.
# A file not named here runs after them, in its usual order; the order changes no result.
LONGEST_FIRST = (
    "test_faults.py", "test_precision_caches.py", "test_precision.py", "test_ray_backend.py", "test_backbones.py",
    "test_views.py", "test_exit_paths.py", "test_embed.py", "test_cache_tools.py", "test_heads.py",
    "test_fault_injection.py", "test_heads_estimator_checks.py", "test_heads_cli.py", "test_sweeps.py",
    "test_shards.py", "test_report_demo.py", "test_noise.py", "test_baseline.py", "test_report.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file, the usual order


@contextlib.contextmanager
def python_sigint():
    """Ctrl-C as a freshly started Python has it (KeyboardInterrupt), for a test that relies on it.

    Python keeps SIGINT ignored when it starts ignored (as under ``nohup``-like launchers), and so does the test
    launcher; a test that interrupts with ``_thread.interrupt_main`` or checks a child's handler states this
    precondition instead of inheriting whatever the test process has.
    """
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


_GUARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@pytest.fixture(autouse=True)
def _signal_handlers_restored(request):
    """Put this process's Ctrl-C/SIGTERM/SIGHUP handlers back after each test, and say which test changed them.

    Why: a changed handler outlives the test and breaks a later one in the same worker, whichever that is
    (``_thread.interrupt_main`` does nothing under SIG_IGN, and the launcher keeps ignored signals ignored):
    CI once saw both in one worker, with SIGINT ignored by something that ran before. The warning names the
    test in the summary; it does not fail it, because the change may come from a library the test drives.
    """
    import signal
    import warnings

    before = {name: signal.getsignal(getattr(signal, name)) for name in _GUARDED_SIGNALS}
    yield
    changed = {name: signal.getsignal(getattr(signal, name)) for name in _GUARDED_SIGNALS}
    changed = {name: handler for name, handler in changed.items() if handler != before[name]}
    for name in changed:
        signal.signal(getattr(signal, name), before[name])
    if changed:
        warnings.warn(f"{request.node.nodeid} left signal handlers changed: {changed} (were {before}); put back",
                      pytest.PytestWarning)
