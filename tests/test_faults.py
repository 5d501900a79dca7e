"""How real jobs die: kill -9 and an immediate rerun, SIGTERM, a full disk, unreadable files.

Every command runs as ``python -m tlkit.cli`` in its own process (forked from
the preloaded server of ``launcher``, so it need not import torch again), on
small real data (``hymenoptera_small``) with random weights. "No process
left" is checked on the command's own children, as psutil lists them while
it runs: other tlkit processes may be running on the same machine.

The full-disk cases mount a small tmpfs, which needs root (as in CI). Elsewhere
they are skipped with the reason, but never under ``CI=true``: there a missing
privilege fails the run instead of hiding the tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import launcher
import numpy as np
import psutil
import pytest

from tlkit.cache import load_cache
from tlkit.runs import load_run

SEED = int(os.environ.get("TLKIT_FAULT_SEED", "2026"))
QUIET = {"progress": False, "echo": lambda *_: None}
INTERRUPTED = "interrupted: finished work is kept; run the same command again to continue"
EMBED_ARGS = ("--weights", "random", "--batch-size", "2", "--checkpoint-every", "4", "--no-progress")


# ---------------------------------------------------------------------------------------------
# helpers

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _default_termination_signals(then=None):
    """In the child before exec: SIGTERM and SIGHUP at their default disposition, then ``then()``.

    An ignored signal stays ignored across exec, and tlkit leaves a signal ignored at start alone on
    purpose (``nohup tlkit ...``); a test runner started under nohup would otherwise hand its
    commands an ignored SIGHUP, and the SIGHUP tests would test nohup instead (seen here: rc 0).
    """
    def preexec():
        for sig in TERMINATION_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if then is not None:
            then()
    return preexec


class Running:
    """``tlkit ARGS`` started in its own process; its output is collected as it comes."""

    def __init__(self, *args, preexec=None):
        """``preexec``: run in the child before exec, in a freshly executed process (dropped capabilities
        only take effect at exec, so they cannot go through the launcher's fork)."""
        command = [sys.executable, "-m", "tlkit.cli", *map(str, args)]
        how = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"}, start_new_session=True)
        if preexec is None:
            self.proc = launcher.popen(command, default_signals=TERMINATION_SIGNALS, **how)
        else:
            self.proc = subprocess.Popen(command, preexec_fn=_default_termination_signals(preexec), **how)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def kill_main_after_parts(self, out: Path, parts: int = 2, delay: float = 0.0) -> list[psutil.Process]:
        """Once ``out`` has ``parts`` part files and workers run, SIGKILL the main process alone, as the OOM
        killer does (after ``delay`` s); returns its decoding workers, for :func:`assert_gone`."""
        self.wait_until(lambda: len(part_files(out)) >= parts and self.children(), "part files")
        time.sleep(delay)
        workers = self.children()
        assert workers, "the decoding workers should be running"
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        return workers

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_until(self, condition, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}: {''.join(self.err)}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)

    def said(self, fragment: str) -> bool:
        return any(fragment in line for line in self.err)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def child_names(self) -> list[str]:
        names = []
        for child in self.children():
            with contextlib.suppress(psutil.Error):  # it may have exited since it was listed
                names.append(child.name())
        return names

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        return rc, "".join(self.out), "".join(self.err)


def tlkit_run(*args, timeout: float = 240) -> tuple[int, str, str]:
    return Running(*args).finish(timeout)


def in_process(*args) -> None:
    """A clean run to compare with, through the CLI in this process (no interpreter start-up)."""
    from click.testing import CliRunner

    from tlkit.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def assert_gone(processes: list[psutil.Process], within: float = 2.0) -> None:
    """Every process in ``processes`` has exited within ``within`` seconds."""
    _, alive = psutil.wait_procs(processes, timeout=within)
    assert not alive, f"still running {within} s later: {[(p.pid, p.cmdline()) for p in alive]}"


def assert_one_line(rc: int, out: str, err: str, *fragments: str) -> str:
    """Failed with an ordinary exit status (not 0, not killed by a signal) and one ``error:`` line."""
    assert 0 < rc < 128, (rc, err)
    assert "Traceback" not in out + err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # progress lines before it, then one error
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_same_cache(a: Path, b: Path, same_root: bool = True) -> None:
    ca, cb = load_cache(a), load_cache(b)
    assert ca.class_names == cb.class_names and list(ca.splits) == list(cb.splits)
    for split in ca.splits:
        assert ca[split].paths.tolist() == cb[split].paths.tolist()
        np.testing.assert_array_equal(ca[split].labels, cb[split].labels)
        np.testing.assert_allclose(ca[split].features, cb[split].features, atol=1e-5, rtol=0)
    assert ca.skipped == cb.skipped
    volatile = ("created",) if same_root else ("created", "data_root")
    pa, pb = ca.provenance.to_attrs(), cb.provenance.to_attrs()
    assert {k: v for k, v in pa.items() if k not in volatile} == {k: v for k, v in pb.items() if k not in volatile}


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders with the same training result (wall-clock times aside)."""
    ra, rb = load_run(a), load_run(b)
    drop = lambda m: {k: v for k, v in m.items() if k != "training_seconds"}  # noqa: E731
    assert drop(ra.metrics) == drop(rb.metrics)
    assert list(ra.predictions["paths"]) == list(rb.predictions["paths"])
    for key in ("proba_final", "proba_best"):
        np.testing.assert_allclose(ra.predictions[key], rb.predictions[key], atol=1e-6)


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp-" in p.name]


def part_files(out: Path) -> list[Path]:
    return sorted(out.with_name(out.name + ".parts").glob("*.h5"))


@pytest.fixture(scope="module")
def reference_cache(hymenoptera_small_cache) -> Path:
    """hymenoptera_small embedded without interruption (once per session, shared with the other fault and
    cache-tool tests: conftest.py)."""
    return hymenoptera_small_cache


# ---------------------------------------------------------------------------------------------
# kill -9 and SIGTERM

def test_kill_9_of_embed_then_an_immediate_rerun_resumes(hymenoptera_small, reference_cache, tmp_path):
    rng = np.random.default_rng(SEED)
    parts_before_kill, delay = int(rng.integers(1, 4)), float(rng.uniform(0, 0.3))
    out = tmp_path / "feats.h5"
    args = ("embed", hymenoptera_small, out, "--workers", "2", *EMBED_ARGS)
    first = Running(*args)
    rerun = None
    try:
        workers = first.kill_main_after_parts(out, parts_before_kill, delay)
        rerun = Running(*args)  # at once: no sleep, the lock must be free already
        assert_gone(workers)  # they died with their parent, and burn no CPU
    finally:
        first.finish()
        rc, _, err = rerun.finish() if rerun is not None else (None, "", "")
    assert rc == 0, err
    assert re.search(r"\(([1-9]\d*) already cached\)", err), err  # it resumed: the finished parts were used
    assert_same_cache(out, reference_cache)
    assert not temporary_files(tmp_path)


def test_sigterm_of_embed_keeps_parts_and_the_rerun_finishes(hymenoptera_small, reference_cache, tmp_path):
    out = tmp_path / "feats.h5"
    args = ("embed", hymenoptera_small, out, "--workers", "2", *EMBED_ARGS)
    job = Running(*args)
    job.wait_until(lambda: part_files(out) and job.children(), "the first part file")
    workers = job.children()
    job.proc.send_signal(signal.SIGTERM)
    rc, out_text, err = job.finish()
    assert rc == 143, (rc, out_text, err)
    assert INTERRUPTED in err and "Traceback" not in err + out_text
    assert_gone(workers)
    assert part_files(out)  # finished work is kept
    rc, _, err = tlkit_run(*args)
    assert rc == 0, err
    assert_same_cache(out, reference_cache)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_of_fit_head_and_the_rerun_equals_a_clean_run(reference_cache, tmp_path, sig):
    epochs = 2000  # long enough (seconds) for the signal to land in the middle of training
    out, clean = tmp_path / "run", tmp_path / "clean"
    args = ("fit-head", "--head", "linear", "--cache", reference_cache, "--out", out, "--epochs", epochs,
            "--no-progress")
    job = Running(*args)
    job.wait_until(lambda: job.said("evaluate on"), "training to start")
    time.sleep(0.5)
    job.proc.send_signal(sig)
    rc, out_text, err = job.finish()
    assert rc == 128 + sig, (rc, out_text, err)
    assert INTERRUPTED in err and "Traceback" not in err + out_text
    assert not (out / "metrics.json").exists()
    if sig == signal.SIGHUP:
        return  # handled the same way; the rerun is checked once, for SIGTERM
    rc, _, err = tlkit_run(*args)
    assert rc == 0, err
    in_process("fit-head", "--head", "linear", "--cache", reference_cache, "--out", clean, "--epochs", epochs,
               "--no-progress")
    assert_same_run(out, clean)


def test_sigterm_of_train_scratch_and_the_resumed_run_equals_a_clean_run(hymenoptera, tmp_path):
    from conftest import make_subset

    data = make_subset(hymenoptera, tmp_path / "data", {"train": 4, "val": 2})  # 8 + 4 images: short epochs
    common = ("--epochs", "2", "--workers", "1", "--no-progress")  # one worker: it must stop too
    clean, out = tmp_path / "clean", tmp_path / "run"
    in_process("train-scratch", data, "--out", clean, *common)
    job = Running("train-scratch", data, "--out", out, *common)
    job.wait_until(lambda: job.said("epoch 1/2") and (out / "checkpoint.pt").exists(), "the first epoch's checkpoint")
    workers = job.children()
    job.proc.send_signal(signal.SIGTERM)
    rc, out_text, err = job.finish()
    assert rc == 143, (rc, out_text, err)
    assert f"interrupted: finished epochs are kept in {out}; continue with the same command plus --resume" in err
    assert "Traceback" not in err + out_text
    assert_gone(workers)
    rc, _, err = tlkit_run("train-scratch", data, "--out", out, *common, "--resume")
    assert rc == 0, err
    assert "after epoch 1 of 2" in err
    assert_same_run(out, clean)


def test_sigterm_of_a_ray_embed_stops_the_jobs_actors(hymenoptera_small, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "feats.h5"
    job = Running("embed", hymenoptera_small, out, "--backend", "ray", "--ray-address", "local", "--shards", "4",
                  "--workers", "0", *EMBED_ARGS)
    job.wait_until(lambda: any("ShardEmbedder" in name for name in job.child_names()), "the Ray actors")
    job.wait_until(lambda: part_files(out), "the first part file")
    cluster = job.children()  # this run's own local cluster: its actors, raylet, GCS
    job.proc.send_signal(signal.SIGTERM)
    rc, out_text, err = job.finish()
    assert rc == 143, (rc, out_text, err)
    assert INTERRUPTED in err and "Traceback" not in err + out_text
    assert_gone(cluster, within=10)  # Ray stops its processes in a few seconds
    assert part_files(out)


SWALLOWED = """
import os, signal, sys, time
from tlkit.signals import Terminated, termination_as_interrupt
sys.path.insert(0, sys.argv[1])
with open(os.path.join(sys.argv[1], "optional.py"), "w") as fh:  # a library importing an optional part
    fh.write("import os, signal, time\\ntry:\\n    os.kill(os.getpid(), signal.SIGTERM)\\n    time.sleep(0.2)\\n"
             "except:\\n    pass\\n")
os.register_at_fork(after_in_parent=lambda: (os.kill(os.getpid(), signal.SIGTERM), sum(range(1000))))
try:
    with termination_as_interrupt():
        if sys.argv[2] == "import":
            import optional
        elif os.fork() == 0:  # the signal lands in a fork hook, where Python ignores exceptions
            os._exit(0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pass
        print("went on")
except Terminated as exc:
    print("interrupted", exc.signum)
"""


@pytest.mark.parametrize("where", ["import", "fork"])
def test_a_signal_landing_where_python_ignores_exceptions_still_interrupts(where, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SWALLOWED, str(tmp_path), where], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == f"interrupted {int(signal.SIGTERM)}", (proc.stdout, proc.stderr)
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_lock_message_names_the_live_writer(tmp_path):
    from tlkit.cache.lock import CacheLock
    from tlkit.errors import CacheBusy

    out = tmp_path / "feats.h5"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tlkit.cache.lock import CacheLock\n"
         f"CacheLock({str(out)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(CacheBusy, match=rf"being written by pid {child.pid};.*released the moment"):
            CacheLock(out).acquire()
    finally:
        child.kill()
        child.wait()
    CacheLock(out).acquire().release()  # and the kernel freed it with its holder


def test_a_forked_child_never_holds_the_cache_lock(tmp_path):
    from tlkit.cache.lock import CacheLock

    out = tmp_path / "feats.h5"
    code = (
        "import os, signal, sys, time\nfrom tlkit.cache.lock import CacheLock\n"
        f"CacheLock({str(out)!r}).acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n    print(os.getpid(), flush=True)\n    time.sleep(60)\n    os._exit(0)\n"
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())  # the child runs: fork is behind it
    try:
        parent.kill()  # the writer dies; its forked child lives on
        parent.wait()
        assert psutil.pid_exists(child)
        CacheLock(out).acquire().release()  # the lock died with the writer all the same
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# a full disk

def _mount_privilege_or_skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the full-disk tests (as root)")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size)``: a tmpfs of ``size`` bytes at tmp_path/disk; ``mount.resize(size)`` changes it."""
    if os.geteuid() != 0:
        _mount_privilege_or_skip("mounting a small tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = []

    def mount(size: int) -> Path:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            _mount_privilege_or_skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    mount.resize = resize
    try:
        yield mount
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_while_writing_part_files(hymenoptera_small, reference_cache, small_disk):
    disk = small_disk(64 * 1024)  # room for a few part files of four rows, not for all of them
    out = disk / "feats.h5"
    args = ("embed", hymenoptera_small, out, "--workers", "0", *EMBED_ARGS)
    ballast = disk / "ballast"  # first a disk full from the start: not even the manifest fits
    ballast.write_bytes(b"\0" * shutil.disk_usage(disk).free)
    rc, stdout, err = tlkit_run(*args)
    assert_one_line(rc, stdout, err, f"error: no space left on {disk} (while trying to write the part files of {out}")
    assert sorted(p.name for p in disk.iterdir()) == ["ballast", "feats.h5.lock"]
    ballast.unlink()
    rc, stdout, err = tlkit_run(*args)
    assert_one_line(rc, stdout, err, f"error: no space left on {disk} (while trying to write the part files of {out}")
    written = part_files(out)
    assert written and not out.exists() and not temporary_files(disk)
    for part in written:  # what was finished is whole
        with h5py.File(part, "r") as f:
            assert bool(f.attrs["complete"])
    small_disk.resize(4 * 2**20)
    rc, _, err = tlkit_run(*args)
    assert rc == 0, err
    assert f"({len(written) * 4} already cached)" in err  # the finished parts were kept and used
    assert_same_cache(out, reference_cache)


def test_full_disk_before_publishing_is_refused_and_keeps_the_cache(hymenoptera_small, reference_cache,
                                                                    small_disk, tmp_path):
    disk = small_disk(4 * 2**20)
    data = tmp_path / "data"
    shutil.copytree(hymenoptera_small / "train", data / "train")
    out = disk / "feats.h5"
    args = ("embed", data, out, "--workers", "0", *EMBED_ARGS)
    rc, _, err = tlkit_run(*args)
    assert rc == 0, err
    old = out.read_bytes()
    shutil.copytree(hymenoptera_small / "val", data / "val")
    # Leave 100 KiB: room for the val images' part files, not for the new cache (about 64 KiB of
    # structure plus 2 KiB a row for 26 rows) written beside the old one.
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 100 * 1024))
    rc, stdout, err = tlkit_run(*args)
    line = assert_one_line(rc, stdout, err, f"error: no space left on {disk} (need about ", f"KiB to publish {out};")
    need, free = map(int, re.search(r"need about (\d+) KiB.*; (\d+) KiB free", line).groups())
    assert need > free
    assert out.read_bytes() == old  # the previous cache is untouched
    assert len(part_files(out)) == 3 and not temporary_files(disk)  # and the new work is kept
    ballast.unlink()
    rc, stdout, err = tlkit_run(*args)
    assert rc == 0, err
    assert "embedded 0, skipped 0, already cached 26" in stdout  # published from the kept parts
    assert_same_cache(out, reference_cache, same_root=False)


def _synthetic_cache(path: Path, n: int, offset: int) -> Path:
    from tlkit.cache.assemble import assemble
    from tlkit.cache.schema import PART_FORMAT, SCHEMA_VERSION, Provenance
    from tlkit.cache.writer import atomic_h5, write_root_attrs, write_skipped, write_split
    from tlkit.data import TransformSpec

    rng = np.random.default_rng(offset)
    paths = [f"train/{i:06d}.jpg" for i in range(offset, offset + n)]
    src = path.with_name(path.name + ".src")
    with atomic_h5(src) as f:
        write_root_attrs(f, format=PART_FORMAT, schema_version=SCHEMA_VERSION, complete=True, splits=["train"],
                         class_names=["ants", "bees"])
        write_split(f, "train", rng.standard_normal((n, 512)).astype(np.float32), rng.integers(0, 2, n), paths)
        write_skipped(f, [])
    prov = Provenance(backbone="resnet18", layer="avgpool", weights_id="random:seed=0", weights_sha256="ab" * 32,
                      transform=TransformSpec().to_json(), feature_dim=512, tlkit_version="0.1.0", torch_version="2",
                      torchvision_version="0", created="2026-01-01T00:00:00+00:00", data_root="/data")
    assemble(path, [src], ["ants", "bees"], prov.to_attrs() | {"updated": "then"})
    src.unlink()
    return path


def test_full_disk_before_merging_is_refused(small_disk, tmp_path):
    a = _synthetic_cache(tmp_path / "a.h5", 600, 0)
    b = _synthetic_cache(tmp_path / "b.h5", 600, 300)
    inputs = {p: p.read_bytes() for p in (a, b)}
    clean = tmp_path / "clean.h5"
    rc, _, err = tlkit_run("merge", clean, a, b, "--no-progress")
    assert rc == 0, err
    disk = small_disk(1 * 2**20)  # the merged cache takes about 2 MiB
    out = disk / "merged.h5"
    rc, stdout, err = tlkit_run("merge", out, a, b, "--no-progress")
    assert_one_line(rc, stdout, err, f"error: no space left on {disk} (need about ", f"MiB to merge into {out};")
    assert not out.exists() and not temporary_files(disk)
    assert {p: p.read_bytes() for p in (a, b)} == inputs
    small_disk.resize(8 * 2**20)
    rc, _, err = tlkit_run("merge", out, a, b, "--no-progress")
    assert rc == 0, err
    assert_same_cache(out, clean)


def test_full_disk_while_fit_head_writes_its_run_folder(reference_cache, small_disk, tmp_path):
    clean = tmp_path / "clean"
    in_process("fit-head", "--head", "linear", "--cache", reference_cache, "--out", clean, "--epochs", 3, "--no-progress")
    disk = small_disk(12 * 1024)  # the run folder needs about 40 KiB
    out = disk / "run"
    args = ("fit-head", "--head", "linear", "--cache", reference_cache, "--out", out, "--epochs", 3, "--no-progress")
    rc, stdout, err = tlkit_run(*args)
    assert_one_line(rc, stdout, err, f"error: no space left on {disk} (while trying to write {out}/")
    assert not (out / "metrics.json").exists() and not temporary_files(disk)
    small_disk.resize(2**20)
    rc, _, err = tlkit_run(*args)
    assert rc == 0, err
    assert_same_run(out, clean)


def test_a_failed_hdf5_write_never_crashes_the_interpreter(small_disk):
    """Temporary dataset objects freed while the disk is full (as in assemble): one error, a clean exit."""
    disk = small_disk(64 * 1024)
    code = f"""
import numpy as np
from tlkit.atomic import StorageError, atomic_h5
try:
    with atomic_h5({str(disk / "big.h5")!r}) as f:
        for split in ("train", "val"):
            g = f.create_group(split)
            g.create_dataset("x", shape=(400, 512), dtype=np.float32, chunks=(32, 512), fletcher32=True)
            for start in range(0, 400, 40):
                g["x"][start:start + 40] = np.ones((40, 512), np.float32)  # a new Dataset object each time
except StorageError as exc:
    print("error:", exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stderr == "", proc.stderr  # no "Can't decrement id ref count", no traceback
    assert proc.stdout.startswith(f"error: no space left on {disk} (while trying to write {disk / 'big.h5'}")
    assert list(disk.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# files named like images that cannot be read

def _small_data(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    os.symlink("missing.jpg", target / "train" / "ants" / "broken.jpg")
    (target / "train" / "bees" / "x.jpg").mkdir()
    return target


def test_dangling_links_and_folders_named_like_images_are_skipped(hymenoptera_small, tmp_path):
    data = _small_data(hymenoptera_small, tmp_path / "data")
    out = tmp_path / "feats.h5"
    rc, stdout, err = tlkit_run("embed", data, out, "--workers", "1", *EMBED_ARGS)
    assert rc == 0, err
    assert "skipped train/ants/broken.jpg: dangling symbolic link: its target missing.jpg does not exist" in stdout
    assert "skipped train/bees/x.jpg: a folder, not an image file" in stdout
    skipped = {path: reason for path, _, reason in load_cache(out).skipped}
    assert set(skipped) == {"train/ants/broken.jpg", "train/bees/x.jpg"}
    assert "dangling symbolic link" in skipped["train/ants/broken.jpg"]

    rc, stdout, err = tlkit_run("embed", data, tmp_path / "strict.h5", "--strict", *EMBED_ARGS)
    assert_one_line(rc, stdout, err, "--strict: 2 unreadable image(s)", "train/ants/broken.jpg: dangling",
                    "train/bees/x.jpg: a folder")
    assert not (tmp_path / "strict.h5").exists()


_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>


def _without_file_read_override() -> None:
    """In the child, before exec: root keeps its identity but loses the right to read any file."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop a capability")


def test_a_file_without_read_permission_is_skipped(hymenoptera_small, tmp_path):
    preexec = None
    if os.geteuid() == 0:  # root reads any file: run tlkit without the capabilities that allow it
        preexec = _without_file_read_override
        try:
            Running("--version", preexec=preexec).finish(60)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"running as root, and cannot drop the capability to read any file ({exc}); "
                        "mode 000 is readable by root")
    data = tmp_path / "data"
    shutil.copytree(hymenoptera_small, data)
    locked = data / "val" / "ants" / "locked.jpg"
    shutil.copy(next((data / "val" / "ants").glob("*.jpg")), locked)
    locked.chmod(0o000)
    out = tmp_path / "feats.h5"
    rc, stdout, err = Running("embed", data, out, "--workers", "0", *EMBED_ARGS, preexec=preexec).finish()
    assert rc == 0, err
    assert "skipped val/ants/locked.jpg: permission denied" in stdout
    assert [p for p, _, _ in load_cache(out).skipped] == ["val/ants/locked.jpg"]
