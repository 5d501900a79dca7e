"""kill -9 at seeded random moments of `tlkit embed`, `merge` and `fit-head`, then rerun.

After every kill: nothing that was finished is lost, nothing torn is ever read
as valid (every reader either refuses with "unfinished" or gets a complete,
correct file), and the lock is free again. After the final rerun the files
equal an uninterrupted run's. Kill moments are drawn from a seeded generator
(TLKIT_FAULT_SEED picks another set) and aimed at the phases that matter:
mid-run, while part files appear, while the output is being written, and
just after it was renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import launcher
import numpy as np
import pytest

from tlkit.cache import load_cache
from tlkit.cache.assemble import assemble
from tlkit.cache.info import cache_info
from tlkit.cache.merge import merge
from tlkit.cache.schema import PART_FORMAT, SCHEMA_VERSION, Provenance
from tlkit.cache.verify import verify_cache
from tlkit.cache.writer import atomic_h5, write_root_attrs, write_skipped, write_split
from tlkit.data import TransformSpec
from tlkit.embed import embed
from tlkit.embed.check import verify_with_data
from tlkit.errors import CacheError, TlkitError
from tlkit.runs import load_run

SEED = int(os.environ.get("TLKIT_FAULT_SEED", "2026"))
QUIET = {"progress": False, "echo": lambda *_: None}
TLKIT = [sys.executable, "-m", "tlkit.cli"]


def run_and_kill(cmd: list[str], trigger: Callable[[], bool], delay: float, timeout: float = 180) -> str:
    """Start ``cmd``; once ``trigger()`` holds, wait ``delay`` s and kill -9 it. Returns what happened."""
    proc = launcher.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and not trigger():
            assert time.monotonic() < deadline, f"trigger never held: {cmd}"
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: decoding workers too
            proc.wait()
            return "killed"
        assert proc.returncode == 0, proc.stderr.read()
        return "finished"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def elapsed(seconds: float) -> Callable[[], bool]:
    start = time.monotonic()
    return lambda: time.monotonic() - start >= seconds


def appears(folder: Path, pattern: str, count: int = 1) -> Callable[[], bool]:
    return lambda: len(list(folder.glob(pattern))) >= count


def publishing(out: Path) -> Callable[[], bool]:
    """The new version of ``out`` is being written (its temporary file, not a staging folder, exists)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.tmp-\d+$")
    return lambda: any(pattern.match(p.name) for p in out.parent.iterdir())


def split_rows(cache) -> dict[str, np.ndarray]:
    return {p: x for s in cache.splits for p, x in zip(cache[s].paths.tolist(), cache[s].features)}


def assert_same_cache(a: Path, b: Path, atol: float, same_root: bool = True) -> None:
    ca, cb = load_cache(a), load_cache(b)
    assert ca.class_names == cb.class_names and list(ca.splits) == list(cb.splits)
    for split in ca.splits:
        assert ca[split].paths.tolist() == cb[split].paths.tolist()
        np.testing.assert_array_equal(ca[split].labels, cb[split].labels)
        np.testing.assert_allclose(ca[split].features, cb[split].features, atol=atol, rtol=0)
    assert ca.skipped == cb.skipped
    pa, pb = ca.provenance.to_attrs(), cb.provenance.to_attrs()
    for volatile in ("created",) if same_root else ("created", "data_root"):
        pa.pop(volatile), pb.pop(volatile)
    assert pa == pb


# ---------------------------------------------------------------------------------------------
# embed

@pytest.fixture(scope="module")
def reference_cache(hymenoptera_small_cache) -> Path:
    """hymenoptera_small embedded without interruption (once per session, shared with the other fault and
    cache-tool tests: conftest.py)."""
    return hymenoptera_small_cache


class EmbedState:
    """What an interrupted embed has finished, read the way every reader would read it."""

    def __init__(self, out: Path, reference: dict[str, np.ndarray]):
        self.out, self.reference = out, reference
        self.parts = out.with_name(out.name + ".parts")

    def finished_rows(self) -> dict[str, np.ndarray]:
        rows: dict[str, np.ndarray] = {}
        if self.out.exists():
            cache = load_cache(self.out)  # a published cache is always complete and valid
            assert verify_cache(self.out, progress=False).ok
            rows.update(split_rows(cache))
        else:
            with pytest.raises(CacheError, match="unfinished|does not exist"):
                load_cache(self.out)
        if self.parts.is_dir():
            json.loads((self.parts / "manifest.json").read_text())  # whole, never torn
            for part in self.parts.glob("*.h5"):  # every part under its final name is complete
                with h5py.File(part, "r") as f:
                    assert f.attrs["format"] == PART_FORMAT and bool(f.attrs["complete"])
                    for split in f.attrs["splits"]:
                        g = f[split]
                        rows.update(zip(g["paths"].asstr()[...].tolist(), g["features"][...]))
        for path, x in rows.items():  # and what is finished is right
            np.testing.assert_allclose(x, self.reference[path], atol=1e-5, rtol=0)
        info = cache_info(self.out) if self.out.exists() or self.parts.is_dir() else None
        if info is not None:
            assert info["writer_pid"] is None  # the kernel released the dead writer's lock
        return rows


def test_embed_killed_at_random_moments_then_rerun(hymenoptera_small, reference_cache, tmp_path):
    rng = np.random.default_rng(SEED)
    reference_file = reference_cache
    reference = split_rows(load_cache(reference_file))
    out = tmp_path / "feats.h5"
    state = EmbedState(out, reference)
    cmd = [*TLKIT, "embed", str(hymenoptera_small), str(out), "--weights", "random", "--workers", "0",
           "--batch-size", "2", "--checkpoint-every", "2"]
    tmp_files = f".{out.name}.tmp-*"
    plan = [
        ("after part files", appears(state.parts, "part-*.h5", int(rng.integers(1, 6))), float(rng.uniform(0, 0.2))),
        ("after more part files", appears(state.parts, "part-*.h5", int(rng.integers(7, 11))), float(rng.uniform(0, 0.2))),
        ("while publishing", publishing(out), float(rng.uniform(0, 0.03))),
        ("just after the rename", lambda: out.exists(), 0.0),
    ]
    finished: dict[str, np.ndarray] = {}
    log = []
    for name, trigger, delay in plan:
        outcome = run_and_kill(cmd, trigger, delay)
        log.append(f"{name} (+{delay:.3f} s): {outcome}")
        now = state.finished_rows()
        assert set(finished) <= set(now), f"finished rows were lost: {log}"
        finished = now
        if outcome == "finished":
            break
    print(log)
    assert sum(entry.endswith("killed") for entry in log) >= 2, log  # the part-file kills always land mid-run
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert_same_cache(out, reference_file, atol=1e-5)
    assert not state.parts.exists() and not list(tmp_path.glob(tmp_files)), log
    assert verify_with_data(out, data_dir=hymenoptera_small, sample=3, progress=False).ok


def test_incremental_embed_killed_never_loses_the_published_cache(hymenoptera_small, reference_cache, tmp_path):
    rng = np.random.default_rng(SEED + 1)
    data = tmp_path / "data"
    shutil.copytree(hymenoptera_small, data)
    later = tmp_path / "later"
    shutil.move(data / "val", later)
    out = tmp_path / "feats.h5"
    embed(data, out, weights="random", workers=0, **QUIET)
    old = out.read_bytes()
    shutil.move(later, data / "val")
    state = EmbedState(out, split_rows(load_cache(reference_cache)))
    cmd = [*TLKIT, "embed", str(data), str(out), "--weights", "random", "--workers", "0",
           "--batch-size", "2", "--checkpoint-every", "2"]
    plan = [
        ("after part files", appears(state.parts, "part-*.h5", int(rng.integers(1, 4))), float(rng.uniform(0, 0.2))),
        ("while publishing", publishing(out), float(rng.uniform(0, 0.03))),
    ]
    finished = state.finished_rows()
    log = []
    for name, trigger, delay in plan:
        outcome = run_and_kill(cmd, trigger, delay)
        log.append(f"{name} (+{delay:.3f} s): {outcome}")
        # the previous version stays readable, byte for byte, until the new one replaces it whole
        assert out.read_bytes() == old or len(load_cache(out)["val"]) == 10, name
        now = state.finished_rows()
        assert set(finished) <= set(now), name
        finished = now
        if outcome == "finished":
            break
    print(log)
    assert log[0].endswith("killed"), log
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert_same_cache(out, reference_cache, atol=1e-5, same_root=False)


# ---------------------------------------------------------------------------------------------
# merge

def synthetic_input(path: Path, paths: list[str], seed: int, classes: list[str]) -> Path:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((len(paths), 512)).astype(np.float32)
    labels = rng.integers(0, len(classes), len(paths))
    src = path.with_name(path.name + ".src")
    with atomic_h5(src) as f:
        write_root_attrs(f, format=PART_FORMAT, schema_version=SCHEMA_VERSION, complete=True, splits=["train"],
                         class_names=classes)
        write_split(f, "train", feats, labels, paths)
        write_skipped(f, [])
    prov = Provenance(backbone="resnet18", layer="avgpool", weights_id="random:seed=0", weights_sha256="ab" * 32,
                      transform=TransformSpec().to_json(), feature_dim=512, tlkit_version="0.1.0", torch_version="2",
                      torchvision_version="0", created="2026-01-01T00:00:00+00:00", data_root="/data")
    assemble(path, [src], classes, prov.to_attrs() | {"updated": "then"})
    src.unlink()
    return path


def test_merge_killed_at_random_moments_then_rerun(tmp_path):
    rng = np.random.default_rng(SEED + 2)
    n = 24000  # ~50 MB per input: the merge takes long enough to be killed in the middle
    a = synthetic_input(tmp_path / "a.h5", [f"train/{i:06d}.jpg" for i in range(0, 2 * n, 2)], 1, ["ants", "bees"])
    b = synthetic_input(tmp_path / "b.h5", [f"train/{i:06d}.jpg" for i in range(n, 3 * n, 2)], 2, ["bees", "wasps"])
    inputs_before = {p: p.read_bytes() for p in (a, b)}
    reference = tmp_path / "reference.h5"
    start = time.monotonic()
    merge(reference, [a, b])
    took = time.monotonic() - start
    out = tmp_path / "out.h5"
    cmd = [*TLKIT, "merge", str(out), str(a), str(b)]
    tmp_files = f".{out.name}.tmp-*"
    plan = [
        ("while writing", publishing(out), float(rng.uniform(0, took))),
        ("while writing", publishing(out), float(rng.uniform(0, took))),
        ("just after the rename", lambda: out.exists(), 0.0),
    ]
    log = []
    for name, trigger, delay in plan:
        outcome = run_and_kill(cmd, trigger, delay)
        log.append(f"{name} (+{delay:.3f} s): {outcome}")
        if out.exists():  # never a half file at OUT: present means complete and right
            assert_same_cache(out, reference, atol=0)
        else:
            with pytest.raises(CacheError, match="does not exist"):
                load_cache(out)
        assert all(p.read_bytes() == data for p, data in inputs_before.items()), "an input was modified"
        if outcome == "finished":
            break
    print(log)
    assert sum(entry.endswith("killed") for entry in log) >= 2, log
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert_same_cache(out, reference, atol=0)
    assert not list(tmp_path.glob(tmp_files)), "the rerun removes what a killed merge left"
    assert verify_cache(out, progress=False).ok


# ---------------------------------------------------------------------------------------------
# fit-head

def run_files(run: Path) -> dict:
    """A finished run's content, without what legitimately differs between two runs (timings, dates)."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("training_seconds", None)
    config = json.loads((run / "config.json").read_text())
    config.pop("created", None)
    history = [{k: v for k, v in r.items() if "second" not in k} for r in json.loads((run / "history.json").read_text())]
    with np.load(run / "predictions.npz", allow_pickle=False) as npz:
        predictions = {k: npz[k] for k in npz.files}
    return {"metrics": metrics, "config": config, "history": history, "predictions": predictions}


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = run_files(a), run_files(b)
    for part in ("metrics", "config", "history"):
        assert ra[part] == rb[part], part
    assert ra["predictions"].keys() == rb["predictions"].keys()
    for key, value in ra["predictions"].items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, rb["predictions"][key], atol=1e-6)
        else:
            np.testing.assert_array_equal(value, rb["predictions"][key])


def test_fit_head_killed_at_random_moments_then_rerun(tmp_path):
    rng = np.random.default_rng(SEED + 3)
    cache = tmp_path / "feats.h5"
    names = [f"train/{c}/{i:04d}.jpg" for c in ("ants", "bees") for i in range(600)]
    synthetic_input(cache, names, 3, ["ants", "bees"])  # a 'train'-only cache: fit-head holds out 20%
    cache_bytes = cache.read_bytes()

    def cmd(out: Path) -> list[str]:
        return [*TLKIT, "fit-head", "--head", "linear", "--cache", str(cache), "--out", str(out), "--epochs", "4",
                "--no-progress"]

    reference = tmp_path / "reference"
    start = time.monotonic()
    proc = launcher.popen(cmd(reference), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not reference.is_dir() and proc.poll() is None:
        time.sleep(0.002)
    until_written = time.monotonic() - start  # startup + reading the cache + training
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    # fit-head keeps nothing until training ends, then writes its files atomically, metrics.json last
    plan = [
        ("while training", elapsed(float(rng.uniform(0.5, 0.95)) * until_written), 0.0),
        ("while writing the run folder", lambda out: out.is_dir(), float(rng.uniform(0, 0.002))),
        ("while writing the run folder", lambda out: (out / "config.json").exists(), float(rng.uniform(0, 0.001))),
    ]
    log = []
    for k, (name, trigger, delay) in enumerate(plan):
        out = tmp_path / f"run{k}"
        when = (lambda t=trigger, o=out: t(o)) if name != "while training" else trigger
        outcome = run_and_kill(cmd(out), when, delay, timeout=300)
        log.append(f"{name} (+{delay:.4f} s): {outcome}; left {sorted(p.name for p in out.iterdir()) if out.is_dir() else None}")
        try:
            load_run(out)  # either refused as unfinished, or complete and equal to the reference
            assert_same_run(out, reference)
        except TlkitError as exc:
            assert "not a finished run folder" in str(exc) or "not a run folder" in str(exc), str(exc)
        for file in out.glob("*.json") if out.is_dir() else []:
            json.loads(file.read_text())  # every file under its final name is whole
        assert cache.read_bytes() == cache_bytes
        if not (out / "metrics.json").exists():  # rerun the same command: it completes the run
            proc = subprocess.run(cmd(out), capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
        assert_same_run(out, reference)
        load_run(out)
    print(log)
    assert sum("killed" in entry and "metrics.json" not in entry for entry in log) >= 2, log
