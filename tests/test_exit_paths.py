"""Every way out of a command ends it and its processes: a failure at each stage, and every signal.

Each case starts the real command in its own session, makes it fail at one
stage (a full disk while part files are written and at publish, an exception
in the writer and in the mapper, a failing model in `predict`, a checkpoint
that does not fit in `train-scratch`, Ctrl-C, SIGTERM and SIGHUP sent to the
whole process group), and checks that it exits within 10 s of the failure
with its one line, and that no process it started is left: neither the
decoding workers it was seen running nor anything else in its process group.
Before issue 16 a full disk while part files were written left `tlkit embed`
waiting for ever on its decoding workers, which ignore SIGTERM.

Failures are injected by a small wrapper around the CLI (``WRAPPER``) that
patches one method in the command's own process and records when the failure
happened; a full disk is a small tmpfs (root; see ``small_disk`` in
tests/test_faults.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import launcher
import psutil
import pytest
from run_helpers import embedded, head_run
from test_faults import (  # noqa: F401  (small_disk is a fixture)
    INTERRUPTED,
    TERMINATION_SIGNALS,
    assert_gone,
    assert_one_line,
    part_files,
    small_disk,
)

pytestmark = pytest.mark.slow

WITHIN = 10.0  # seconds from the failure to the exit of the whole command
EMBED = ("--weights", "random", "--batch-size", "2", "--workers", "2", "--no-progress")

# The CLI, with one failure injected (TLKIT_INJECT = "stage:kind:n": the n-th call of that stage raises
# `kind`) and the moment of the first failure (injected, or a StorageError: a full disk) written to
# TLKIT_FAILED_AT, in time.time() seconds.
WRAPPER = r"""
import os, sys, time

stamp = os.environ["TLKIT_FAILED_AT"]

def failed_now():
    if not os.path.exists(stamp):
        with open(stamp, "w") as fh:
            fh.write(repr(time.time()))

import tlkit.atomic
storage_error_init = tlkit.atomic.StorageError.__init__
def recorded(self, *args, **kwargs):
    failed_now()
    storage_error_init(self, *args, **kwargs)
tlkit.atomic.StorageError.__init__ = recorded

def failing(cls, name, kind, n):
    from tlkit.errors import TlkitError
    original, calls = getattr(cls, name), [0]
    def method(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            failed_now()
            raise {"TlkitError": TlkitError, "RuntimeError": RuntimeError}[kind](f"injected failure in the {stage}")
        return original(self, *args, **kwargs)
    setattr(cls, name, method)

if os.environ.get("TLKIT_INJECT"):
    stage, kind, n = os.environ["TLKIT_INJECT"].split(":")
    n = int(n)
    if stage == "mapper":
        from tlkit.embed.mapper import FeatureMapper
        failing(FeatureMapper, "__call__", kind, n)
    elif stage == "writer":
        from tlkit.embed.writer import PartWriter
        failing(PartWriter, "flush", kind, n)
    elif stage == "model":  # predict: the run's model, called once per batch
        import tlkit.predict.predictor as predictor
        load = predictor.load_predictor
        class Model:
            def __init__(self, f):
                self.f = f
            def __call__(self, images):
                return self.f(images)
        failing(Model, "__call__", kind, n)
        def load_failing(*args, **kwargs):
            p = load(*args, **kwargs)
            p.predict_proba = Model(p.predict_proba)
            return p
        predictor.load_predictor = load_failing
    elif stage == "publish":  # kind "full": the disk fills up just before the cache is published
        import shutil
        import tlkit.embed.pipeline as pipeline
        assemble = pipeline.assemble
        def fill_then_assemble(out, *args, **kwargs):
            with open(os.path.join(os.path.dirname(out), "ballast"), "wb") as fh:
                fh.write(b"\0" * shutil.disk_usage(os.path.dirname(out)).free)
            return assemble(out, *args, **kwargs)
        pipeline.assemble = fill_then_assemble
    else:
        raise SystemExit(f"unknown stage {stage}")

from tlkit.cli import main
main()
"""


class Command:
    """The CLI through ``WRAPPER`` in its own session; every process it starts is watched while it runs."""

    def __init__(self, tmp_path: Path, *args, inject: str | None = None):
        self.stamp = tmp_path / f"failed-at-{time.monotonic_ns()}"
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "TLKIT_FAILED_AT": str(self.stamp)}
        if inject:
            env["TLKIT_INJECT"] = inject
        self.proc = launcher.popen(
            [sys.executable, "-c", WRAPPER, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, start_new_session=True, default_signals=(*TERMINATION_SIGNALS, signal.SIGINT),
        )
        self.seen: dict[int, psutil.Process] = {}
        self.exited_at: float | None = None
        self.err: list[str] = []
        self.out: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        self._threads.append(threading.Thread(target=self._watch, daemon=True))
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def _watch(self) -> None:
        """Record every process of the command, and when the command itself exited (polled every 5 ms)."""
        try:
            me = psutil.Process(self.proc.pid)
        except psutil.NoSuchProcess:
            me = None
        while me is not None and self.proc.poll() is None:
            try:
                for child in me.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.Error:
                pass
            time.sleep(0.005)
        self.exited_at = time.time()

    def workers(self) -> list[psutil.Process]:
        return [p for p in self.seen.values() if _alive(p)]

    def wait_until(self, condition, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}: {''.join(self.err)}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)

    def finish(self, failed_at: float | None = None, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the exit; check it came within WITHIN s of the failure and that nothing of it is left."""
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for thread in self._threads:
            thread.join(10)
        err = "".join(self.err)
        if failed_at is None:
            assert self.stamp.exists(), f"the failure never happened: {err}"
            failed_at = float(self.stamp.read_text())
        took = self.exited_at - failed_at
        assert took < WITHIN, f"exited {took:.1f} s after the failure (rc {rc}): {err}"
        assert_gone(list(self.seen.values()), within=2.0)
        left = _in_group(self.proc.pid)
        assert not left, f"left behind: {[(p.pid, p.cmdline()) for p in left]}"
        return rc, "".join(self.out), err


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _in_group(pgid: int) -> list[psutil.Process]:
    """Live processes of the command's process group (its session: start_new_session)."""
    left = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and _alive(process):
                left.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return left


def _fill(disk: Path) -> None:
    (disk / "ballast").write_bytes(b"\0" * shutil.disk_usage(disk).free)


# ---------------------------------------------------------------------------------------------
# embed: a full disk at each stage, an exception in the writer and in the mapper

def test_embed_exits_when_the_disk_fills_while_part_files_are_written(hymenoptera_small, small_disk, tmp_path):
    disk = small_disk(4 * 2**20)
    out = disk / "feats.h5"
    job = Command(tmp_path, "embed", hymenoptera_small, out, *EMBED, "--checkpoint-every", "4")
    job.wait_until(lambda: part_files(out) and job.workers(), "the first part file, with the workers running")
    _fill(disk)  # the next part file fails, with the decoding workers busy
    rc, stdout, err = job.finish()
    assert_one_line(rc, stdout, err, f"error: no space left on {disk} (while trying to write the part files of {out}")
    assert part_files(out)  # what was finished is kept


def test_embed_exits_when_the_disk_is_full_at_publish(hymenoptera_small, small_disk, tmp_path):
    disk = small_disk(4 * 2**20)
    out = disk / "feats.h5"
    job = Command(tmp_path, "embed", hymenoptera_small, out, *EMBED, "--checkpoint-every", "4",
                  inject="publish:full:1")  # the disk fills up once every part file is written
    rc, stdout, err = job.finish()
    assert_one_line(rc, stdout, err, f"error: no space left on {disk} (need about ", f"to publish {out};")
    assert part_files(out) and not out.exists()
    assert job.seen, "the decoding workers never ran: nothing was tested"


@pytest.mark.parametrize("stage, call", [("writer", 2), ("mapper", 3)])
def test_embed_exits_when_a_stage_fails(hymenoptera_small, tmp_path, stage, call):
    out = tmp_path / "feats.h5"
    job = Command(tmp_path, "embed", hymenoptera_small, out, *EMBED, "--checkpoint-every", "4",
                  inject=f"{stage}:TlkitError:{call}")
    rc, stdout, err = job.finish()
    assert_one_line(rc, stdout, err, f"error: injected failure in the {stage}")
    assert job.seen, "the decoding workers never ran: nothing was tested"


def test_embed_exits_after_a_bug_with_its_traceback(hymenoptera_small, tmp_path):
    """Not a user's error: the traceback stays (it is a bug), but nothing waits or is left behind."""
    job = Command(tmp_path, "embed", hymenoptera_small, tmp_path / "feats.h5", *EMBED, inject="mapper:RuntimeError:2")
    rc, _, err = job.finish()
    assert rc == 1, err
    assert "Traceback" in err and err.rstrip().endswith("RuntimeError: injected failure in the mapper"), err
    assert job.seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["Ctrl-C", "SIGTERM", "SIGHUP"])
def test_embed_exits_when_its_process_group_is_signalled(hymenoptera_small, tmp_path, sig):
    """As a terminal (Ctrl-C, a closed window) or `timeout` does: every process of the group gets the signal."""
    out = tmp_path / "feats.h5"
    job = Command(tmp_path, "embed", hymenoptera_small, out, *EMBED, "--checkpoint-every", "4")
    job.wait_until(lambda: part_files(out) and len(job.workers()) == 2, "the first part file and two workers")
    sent = time.time()
    os.killpg(job.proc.pid, sig)
    rc, stdout, err = job.finish(failed_at=sent)
    assert rc == 128 + sig, (rc, err)
    assert INTERRUPTED in err and "Traceback" not in err + stdout, err
    assert part_files(out)


@pytest.mark.ray
def test_a_ray_embed_exits_when_the_disk_fills(hymenoptera_small, small_disk, tmp_path):
    pytest.importorskip("ray")
    disk = small_disk(4 * 2**20)
    out = disk / "feats.h5"
    job = Command(tmp_path, "embed", hymenoptera_small, out, *EMBED, "--checkpoint-every", "4", "--backend", "ray",
                  "--ray-address", "local", "--shards", "2", "--workers", "1")
    job.wait_until(lambda: part_files(out), "the first part file", timeout=600)
    filled = time.time()
    _fill(disk)  # the actor's next part file fails; the StorageError is raised on the actor, not here
    rc, stdout, err = job.finish(failed_at=filled)
    assert_one_line(rc, stdout, err, f"error: no space left on {disk}")


# ---------------------------------------------------------------------------------------------
# predict and train-scratch

def test_predict_exits_when_the_model_fails(hymenoptera_small, tmp_path_factory, tmp_path):
    run = head_run(tmp_path_factory, embedded(tmp_path_factory, hymenoptera_small), "linear")
    job = Command(tmp_path, "predict", run, hymenoptera_small, "--batch-size", "2", "--workers", "2",
                  "--no-progress", inject="model:TlkitError:2")
    rc, stdout, err = job.finish()
    assert_one_line(rc, stdout, err, "error: injected failure in the model")
    assert job.seen, "the decoding workers never ran: nothing was tested"


def test_train_scratch_refuses_a_checkpoint_that_does_not_fit(hymenoptera, small_disk, tmp_path):
    from conftest import make_subset

    data = make_subset(hymenoptera, tmp_path / "data", {"train": 4, "val": 2})
    disk = small_disk(2 * 2**20)  # the run folder's first files fit; the checkpoint (about 135 MB) does not
    out = disk / "run"
    job = Command(tmp_path, "train-scratch", data, "--out", out, "--epochs", "2", "--workers", "1", "--no-progress")
    rc, stdout, err = job.finish()
    line = assert_one_line(rc, stdout, err, f"error: no space left on {disk} (need about ",
                           f"MiB to save the checkpoint in {out};")
    need = int(line.split("need about ")[1].split(" MiB")[0])
    assert 100 <= need <= 160, line  # ResNet-18: weights, momentum and the best epoch's weights, float32
    assert (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert job.seen, "the decoding workers never ran: nothing was tested"


def test_a_checkpoint_that_fails_while_written_is_one_storage_line(small_disk):
    """torch's zip writer loses the errno of a failed write ("unexpected pos"); the line says what happened."""
    import torch

    from tlkit.atomic import StorageError, atomic_path
    from tlkit.baseline import checkpoint

    disk = small_disk(2 * 2**20)
    state = {"model": torch.zeros(2**20)}  # 4 MiB
    with pytest.raises(StorageError, match=rf"^no space left on {disk} \(while trying to write {disk}/x.pt; "):
        with atomic_path(disk / "x.pt") as tmp:
            torch.save(state, tmp)  # by name: torch's own writer, no errno
    assert checkpoint.checkpoint_bytes(state) >= 4 * 2**20
    with pytest.raises(StorageError, match=rf"^no space left on {disk} \(need about 4 MiB to save the checkpoint"):
        checkpoint.save_checkpoint(disk, state, {})
    assert list(disk.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# in this process: the workers end with the code that owns them, even while the exception is kept
# (a notebook keeps the last one; a traceback holds every frame, and with it the loader's iterator)

class Failing:
    """A stand-in stage that records the workers running when it is called, and fails on call ``n``."""

    def __init__(self, n: int, result=None):
        self.n, self.calls, self.result = n, 0, result
        self.before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.workers: list[psutil.Process] = []

    def __call__(self, *args, **kwargs):
        from tlkit.errors import TlkitError

        self.calls += 1
        self.workers += [p for p in psutil.Process().children(recursive=True) if p.pid not in self.before]
        if self.calls == self.n:
            raise TlkitError("injected failure")
        return self.result(*args, **kwargs)


def _assert_workers_ended(failing: Failing, caught) -> None:
    assert caught.value is not None  # still held, with its traceback
    assert failing.workers, "no decoding worker ran: nothing was tested"
    assert_gone(failing.workers, within=2.0)


def test_embed_ends_its_workers_when_the_mapper_fails(hymenoptera_small, tmp_path, monkeypatch):
    from tlkit.embed import embed
    from tlkit.embed.mapper import FeatureMapper
    from tlkit.errors import TlkitError

    failing = Failing(3, FeatureMapper.__call__)
    monkeypatch.setattr(FeatureMapper, "__call__", lambda self, images: failing(self, images))
    with pytest.raises(TlkitError, match="injected") as caught:
        embed(hymenoptera_small, tmp_path / "feats.h5", weights="random", batch_size=2, workers=2, progress=False,
              echo=lambda *_: None)
    _assert_workers_ended(failing, caught)


def test_predict_ends_its_workers_when_the_model_fails(hymenoptera_small, tmp_path_factory):
    from tlkit.errors import TlkitError
    from tlkit.predict.predictor import load_predictor, predict_images

    predictor = load_predictor(head_run(tmp_path_factory, embedded(tmp_path_factory, hymenoptera_small), "linear"))
    failing = Failing(2, predictor.predict_proba)
    predictor.predict_proba = failing
    with pytest.raises(TlkitError, match="injected") as caught:
        predict_images(predictor, [hymenoptera_small], batch_size=2, workers=2)
    _assert_workers_ended(failing, caught)


def test_the_training_loop_ends_its_workers_when_a_step_fails(hymenoptera_small):
    import numpy as np
    import torch

    from tlkit.baseline.images import ImageSet, augmentation, training_batches
    from tlkit.data.transforms import TransformSpec
    from tlkit.errors import TlkitError
    from tlkit.train.config import TrainConfig
    from tlkit.train.loop import train_classifier

    paths = sorted(str(p.relative_to(hymenoptera_small)) for p in (hymenoptera_small / "train").rglob("*.jpg"))
    images = ImageSet(hymenoptera_small, paths, np.array([int("/bees/" in p) for p in paths]))
    augment = augmentation(TransformSpec())

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return x.mean(dim=(1, 2, 3))[:, None] * self.w

    model = Model()
    failing = Failing(3, model.forward)
    model.forward = failing
    batches = lambda epoch: training_batches(images, augment, seed=0, epoch=epoch, batch_size=2, workers=2,  # noqa: E731
                                             max_pixels=None)
    with pytest.raises(TlkitError, match="injected") as caught:
        train_classifier(model, batches, lambda m: (0.0, np.zeros((0, 2))), np.zeros(0, np.int64),
                         TrainConfig(epochs=1, batch_size=2))
    _assert_workers_ended(failing, caught)


def test_an_interruption_while_a_loader_starts_its_workers_still_stops_them():
    """SIGTERM arriving inside ``iter(loader)`` (torch forks the workers there) is raised only once the
    iterator exists, so the block's exit shuts it down (in CI, torch's half-built iterator failed in its
    destructor with a traceback under the "interrupted" line)."""
    from tlkit.signals import Terminated, loader_batches, termination_as_interrupt

    class Iterator:
        stopped = False

        def __next__(self):
            raise StopIteration

        def _shutdown_workers(self):
            Iterator.stopped = True

    class Loader:
        built = False

        def __iter__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs in here, at the next bytecode, unless it is held
            Loader.built = True
            return Iterator()

    with termination_as_interrupt():
        handlers = [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)]
        with pytest.raises(Terminated):
            with loader_batches(Loader()):
                pytest.fail("the block must not start after an interruption")
        assert [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)] == handlers  # given back
    assert Loader.built and Iterator.stopped


# -- the end of a finished command: as the interpreter's, without its teardown -----------------------------

END_CODE = """
import atexit, sys, threading, time
from pathlib import Path

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread").write_text("joined"))).start()
sys.stdout.write("buffered ")  # neither a newline nor a flush: the end of the process must flush it
sys.argv = ["tlkit", *sys.argv[2:]]
from tlkit.cli import run
run()
print("never reached")
"""


@pytest.mark.parametrize(("argv", "status"), [(["--version"], 0), (["--no-such-option"], 2)])
def test_a_command_ends_as_the_interpreter_would(tmp_path, argv, status):
    """`tlkit` skips the interpreter's teardown (tlkit.signals.end_process) but nothing else: its exit status,
    the atexit handlers, the non-daemon threads it waits for, the buffered output."""
    proc = subprocess.run([sys.executable, "-c", END_CODE, str(tmp_path), *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout.startswith("buffered ") and "never reached" not in proc.stdout
    assert ("tlkit, version" in proc.stdout) == (status == 0)
    if status:
        assert_one_line(proc.returncode, proc.stdout, proc.stderr, "no-such-option")
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"
