"""The trackers start while the run trains: a second process imports and warms them, then logs the run.

Why: importing MLflow, TensorBoard's writer and matplotlib and opening a store costs seconds of CPU (MLflow
alone about 3 s on the 2-core AVX2 machine), a third of a 30-epoch quantum head's training. Started beside the
training, mostly on the core the training leaves idle, that cost leaves the command's wall time; what remains
after the training is the logging of the finished files (``bench/bench_tracking.py`` measures both).

    with background_logging(targets, mlflow_uri) as tracking:
        run_dir = train(...)
        tracking.log(run_dir, echo)     # what log_run(run_dir, targets, mlflow_uri, echo) does, in the helper

The helper is ``python -m tlkit.tracking.background TARGET... [--mlflow-uri URI]``. It imports the trackers,
warms them on a scratch store and opens the run's new MLflow store ahead (in its scratch folder, copied beside
the run once logged: :class:`tlkit.tracking.to_mlflow.Staged`), then reads one line, the finished run folder, logs it with
:func:`tlkit.tracking.log_run` (the figure drawn meanwhile in a forked worker), prints where to look and a last
line, ``done``, at which the command goes on without waiting for the helper's exit. When
the run fails or is interrupted, the command stops it (SIGTERM) without handing it anything, so nothing is
logged. It dies with the command (the parent-death signal), and Ctrl-C, SIGTERM and SIGHUP end it silently:
the command itself reports an interruption. A helper that is gone before the run finished leaves the logging
to the command itself, as it was done before this module.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from tlkit.errors import TlkitError

STOP_WAIT = 5.0  # seconds a stopped helper gets to leave before it is killed
DONE = "done\n"  # the helper's last line: the run is logged, every file written and closed


class _Helper:
    def __init__(self, targets: list[str], mlflow_uri: str | None):
        self.targets, self.mlflow_uri = targets, mlflow_uri
        uri = ["--mlflow-uri", mlflow_uri] if mlflow_uri else []
        command = [sys.executable, "-m", __name__, *targets, *uri, "--parent", str(os.getpid())]
        try:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        except OSError:
            self.proc = None
        self.done = False

    def log(self, run_dir: Path, echo: Callable[[str], None]) -> None:
        """Log the finished ``run_dir`` in the helper; in this process when the helper is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return self._log_here(run_dir, echo)
        try:
            self.proc.stdin.write(f"{run_dir}\n")  # the helper works in this folder too
            self.proc.stdin.close()
        except OSError:  # it died just now
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.wait()
            return self._log_here(run_dir, echo)
        lines = []
        for line in self.proc.stdout:
            if line == DONE:  # all is written: the helper's own exit (0.04 s of unmapping) is not waited for
                self.done = True
                break
            lines.append(line.rstrip("\n"))
        if not self.done:
            self.proc.wait()
            errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
            raise TlkitError(errors[-1] if errors else
                             f"logging to {' and '.join(self.targets)} failed (exit {self.proc.returncode})")
        for line in lines:
            echo(line)

    def _log_here(self, run_dir: Path, echo: Callable[[str], None]) -> None:
        """The logging the helper would have done, in this process, failing with the helper's one line."""
        from tlkit.tracking import log_run

        try:
            log_run(run_dir, self.targets, self.mlflow_uri, echo)
        except Exception as exc:  # noqa: BLE001 - what the helper reports as one line (an MLflow error, too)
            raise TlkitError(failure(run_dir, self.targets, exc)) from exc

    def stop(self) -> None:
        if self.proc is None or self.done or self.proc.poll() is not None:
            return  # done: it is leaving by itself, and dies with this process at the latest
        # No finished run to log (the run failed or was interrupted, perhaps while the helper still imports), or
        # the command was interrupted while the helper logged: either way it has nothing left to do, now.
        self.proc.terminate()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def failure(run_dir, targets: list[str], exc: BaseException) -> str:
    """The one line of a failed logging, from the helper or from the command itself."""
    return f"logging {run_dir} to {' and '.join(targets)} failed: {str(exc).strip()}"


class _Nothing:
    def log(self, run_dir, echo) -> None:
        pass


@contextlib.contextmanager
def background_logging(targets: list[str], mlflow_uri: str | None = None) -> Iterator[_Helper | _Nothing]:
    """A helper that makes ``targets`` ready while the block trains; left without a ``log``, it logs nothing."""
    if not targets:
        yield _Nothing()
        return
    helper = _Helper(targets, mlflow_uri)
    try:
        yield helper
    finally:
        helper.stop()


# -- the helper process --------------------------------------------------------------------------


def _warm(targets: list[str], mlflow_uri: str | None, scratch: Path):
    """Pay the first-use costs now: every import the trackers make, every MLflow store call once on a scratch
    store (only when the store is the default new sqlite file beside the run: a server is never written to),
    and TensorBoard's event writer on a scratch folder. The figure's costs (matplotlib, its fonts,
    scikit-learn's metrics) are paid where it is drawn: the drawing worker (:func:`_drawer`). Nothing here
    imports torch (``python -X importtime`` shows it).

    Returns the run's MLflow store opened ahead in ``scratch`` (:class:`tlkit.tracking.to_mlflow.Staged`), or None."""
    import shutil

    staged = None
    warm_dir = scratch / "warm"
    warm_dir.mkdir()
    if "tensorboard" in targets:
        from tlkit.tracking.to_tensorboard import warm

        warm(warm_dir)
    if "mlflow" in targets and mlflow_uri is None:
        from tlkit.tracking.to_mlflow import Staged, warm

        warm(warm_dir)
        staged = Staged(scratch / "staged")
    elif "mlflow" in targets:  # the import only: the store given by --mlflow-uri is never written to
        from mlflow import MlflowClient  # noqa: F401
    shutil.rmtree(warm_dir, ignore_errors=True)
    return staged


SCRATCH_PREFIX = "tlkit-helper-"  # + the helper's pid: the folder of a killed helper is found and removed


def _scratch() -> Path:
    """This helper's scratch folder, for its warm-up and its staged store; removed on every way out (and, when the
    kernel killed the helper with its command, by the next helper: :func:`_remove_scratch`)."""
    import tempfile

    _remove_scratch()
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))


def _remove_scratch(pid: int | None = None) -> None:
    """Remove the scratch folders of helper ``pid`` (itself, on its way out), or with None those of helpers that
    are gone."""
    import shutil
    import tempfile

    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        owner = folder.name[len(SCRATCH_PREFIX):].split("-")[0]
        if owner.isdigit() and (int(owner) == pid if pid is not None else not _alive(int(owner))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie does not (a helper the kernel killed stays one until it is reaped,
    which a container's first process may do late)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:][:1] != "Z"  # the state follows the command name in parentheses


def main(argv: list[str]) -> NoReturn:
    """The helper; it never returns: it ends with :func:`tlkit.signals.end_process` or ``os._exit``."""
    import argparse
    import signal

    from tlkit.signals import die_with_parent, end_process

    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--mlflow-uri")
    parser.add_argument("--parent", type=int, required=True, help="the command's pid: this process dies with it")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    # Ctrl-C reaches the whole group, and the command stops this helper with SIGTERM when its run did not
    # finish: the command says it, not us. We leave at once, taking the staged store's scratch folder along.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _leave)
    # Background work: where the command needs both cores (its imports, its evaluation), it comes first.
    with contextlib.suppress(OSError):
        os.nice(10)
    staged = None
    try:
        staged = _warm(args.targets, args.mlflow_uri, _scratch())
    except Exception:  # noqa: BLE001 - warming is an optimisation; the logging below reports a real failure
        pass
    draw = _drawer()
    run_dir = sys.stdin.readline().rstrip("\n")
    if not run_dir:  # the run did not finish
        _remove_scratch(os.getpid())
        end_process(0)
    from tlkit.tracking import log_run

    try:
        log_run(run_dir, args.targets, args.mlflow_uri, echo=lambda line: print(line, flush=True), draw=draw,
                staged=staged)
    except Exception as exc:  # noqa: BLE001 - one line for the command to raise as its own error
        print(f"error: {failure(run_dir, args.targets, exc)}", flush=True)
        _remove_scratch(os.getpid())
        end_process(1)
    # Everything is written and closed (the event files, MLflow's committed transactions, the artifacts): the
    # command goes on at this line. Nothing is left to wind down but the staged store's scratch folder (after
    # the line: the command does not wait for it): not the drawing worker (it dies with this process), nor the
    # interpreter (whose teardown of MLflow, SQLAlchemy and matplotlib took 3.4 s here).
    print(DONE, end="", flush=True)
    _remove_scratch(os.getpid())
    os._exit(0)


def _leave(signum, frame) -> NoReturn:
    _remove_scratch(os.getpid())
    os._exit(128 + signum)


def _drawer():
    """One worker process, forked now that the trackers are imported and warm, that draws the figure (and writes
    TensorBoard's events) while this process writes to MLflow: the two took 0.3 s each one after the other, on
    a machine whose other core waits. It warms the drawing itself, once forked; without a worker this process
    does. It dies with this process."""
    import gc
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tlkit.signals import die_with_parent
    from tlkit.tracking.record import warm_figures

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    # Everything imported so far is moved out of the collector's sight, in both processes: a full collection in
    # the worker would otherwise write to every object it inherited and have all those pages copied (a run's
    # figure then took 0.3 s instead of 0.04 s). Python's documented recipe for fork without exec.
    gc.freeze()
    try:
        # The fork happens here, not when the run arrives; and the worker draws a throwaway figure now: drawing
        # writes to much of what it inherited (reference counts, caches), and each page written the first time
        # is copied then. Left to the run's figure, that copying made it take 70-80 ms instead of 40.
        pool.submit(warm_figures).result()
    except Exception:  # noqa: BLE001 - no worker (no memory, no fork): the figure is drawn in this process
        pool.shutdown(wait=False)
        warm_figures()
        return None
    return pool


if __name__ == "__main__":
    main(sys.argv[1:])
