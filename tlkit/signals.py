"""How tlkit processes end: termination signals, and worker processes that never outlive their parent.

Schedulers stop jobs with SIGTERM (Slurm, Kubernetes, systemd, ``timeout``)
and a closed terminal sends SIGHUP; both are handled like Ctrl-C. While
:func:`termination_as_interrupt` is active they raise :class:`Terminated`,
a ``KeyboardInterrupt``, so every ``finally`` and every ``except
KeyboardInterrupt`` that keeps finished work and releases locks on Ctrl-C
runs for them too. The CLI reports the same "interrupted: ..." line and
exits with the shell's convention, 128 + the signal number (130 for Ctrl-C,
143 for SIGTERM, 129 for SIGHUP): :func:`exit_status`.

Decoding worker processes (torch ``DataLoader`` workers, forked) call
:func:`worker_init_fn` first: the kernel then kills them the moment their
parent dies, by any signal, ``kill -9`` and the OOM killer included.
Without it they noticed only at torch's next 5-second check and, holding
copies of the parent's file descriptors, kept burning CPU meanwhile.

They ignore SIGTERM, so the parent stops them with SIGKILL, on every way out:

* the code that iterates a loader does it inside :func:`loader_batches`,
  which shuts the workers down when the block is left, however it is left
  (an exception in the network or a writer, a full disk, an interruption);
* every worker is started from :func:`worker_context`, whose ``terminate()``
  sends SIGKILL. Python's exit handler terminates and then joins every
  worker still alive; with SIGTERM ignored it waited for ever (a full disk
  during ``tlkit embed`` hung until killed, issue 16).

:func:`worker_options` gives a ``DataLoader`` both (``DataLoader(..., **worker_options(workers))``).
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import functools
import multiprocessing.context
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator

# Handled like Ctrl-C. SIGINT keeps Python's own handler (KeyboardInterrupt).
SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwind as for Ctrl-C, then exit with 128 + ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: int | None = None  # the termination signal that arrived, if one did


def _raise_terminated(signum, frame) -> None:
    global _received
    _received = signum
    if _importing(frame):
        # Libraries import optional parts under `try: ... except:` and would swallow the interruption
        # (measured: a SIGTERM during fit-head's imports was lost, and the run went on to the end).
        _deliver_later(signum, 0.05)
        return
    raise Terminated(signum)


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _deliver_later(signum: int, seconds: float) -> None:
    """Simulate ``signum`` again in ``seconds``, from another thread (the handler then runs in the main one)."""
    timer = threading.Timer(seconds, _thread.interrupt_main, args=(signum,))
    timer.daemon = True
    timer.start()


def _redeliver(unraisable) -> None:
    """An interruption raised where Python ignores exceptions is delivered again, not lost.

    A signal handler runs at the next bytecode of the main thread, which may lie
    in a destructor or a fork hook (torch starting a worker for the next epoch):
    there the exception is only printed ("Exception ignored in ...") and the
    command would go on as if nothing had happened. So the signal is simulated
    again a moment later, from another thread, once the main thread has left
    that place (the handler would run at once inside this hook, and be ignored again).
    """
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        _deliver_later(getattr(exc, "signum", signal.SIGINT), 0.01)
        return
    if _received is not None:
        # The command is unwinding from SIGTERM/SIGHUP: an object the interruption left half-built
        # (torch's DataLoader iterator, interrupted in its __init__) fails in its destructor. That is
        # an echo of the interruption, which its one line already reports, not a new error.
        return
    _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


def exit_status(exc: BaseException) -> int:
    """The exit status for a process stopped by ``exc``: 128 + its signal (130 for a plain Ctrl-C).

    Some libraries turn any interruption into a plain ``KeyboardInterrupt`` (Ray's
    ``ray.get`` and ``ray.wait`` do): then the signal that arrived still decides.
    """
    return 128 + int(getattr(exc, "signum", None) or _received or signal.SIGINT)


_installed: set[int] = set()  # signals whose handler is ours right now (main thread only)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    A signal that was ignored when the process started (``nohup`` ignores
    SIGHUP) stays ignored. The previous handlers come back afterwards, so a
    caller running the CLI in-process (tests) keeps its own.
    """
    if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
        yield
        return
    global _previous_unraisablehook, _received
    _received = None
    previous = {}
    for sig in SIGNALS:
        if sig in _installed or signal.getsignal(sig) is signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, _raise_terminated)
        _installed.add(sig)
    hook, _previous_unraisablehook = sys.unraisablehook, sys.unraisablehook
    sys.unraisablehook = _redeliver
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
            _installed.discard(sig)


def reclaim() -> None:
    """Put our handlers back after a library replaced them.

    ``ray.init`` installs a SIGTERM handler that calls ``sys.exit``, which
    would skip the "interrupted" line and report exit 15; the driver calls
    this right after joining the cluster.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in _installed:
            signal.signal(sig, _raise_terminated)


# -- the end of a command ------------------------------------------------------------------------


def exit_code(exc: SystemExit) -> int:
    """The status Python exits with after ``sys.exit(code)``: None is 0, an int is itself, anything else is
    printed to stderr and is 1."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def end_process(status: int):
    """End this process as the interpreter would, without its teardown: :func:`finish_interpreter`, then
    ``os._exit(status)``.

    Why: tearing down the interpreter after torch, PennyLane and scikit-learn were imported took 1.4-1.8 s on
    the 2-core AVX2 machine (0.9 s for torch alone), time a finished command made its user wait for
    nothing: its files are written and closed by then.
    """
    finish_interpreter()
    os._exit(status & 0xFF)


def finish_interpreter() -> None:
    """What the interpreter does at exit before it tears itself down: wait for the non-daemon threads, run
    the ``atexit`` handlers (multiprocessing's, logging's, weakref finalizers, Ray's), flush stdout and
    stderr. The test launcher ends its commands with it too."""
    import atexit

    threading._shutdown()  # Py_FinalizeEx's first step: join the non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()


# -- worker processes ------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_parent_death_signal(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: workers fall back on torch's own parent check
        return False


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent (``parent_pid``) dies, by any signal (Linux)."""
    if _set_parent_death_signal(signal.SIGKILL) and os.getppid() != parent_pid:
        # The parent died between fork and prctl: the kernel will send nothing, so leave now.
        os._exit(1)


def _bind_to_parent(parent_pid: int, worker_id: int | None = None) -> None:
    # SIGTERM or SIGHUP sent to the whole process group (`timeout`, systemd, a closed terminal) is
    # for the main process, which then stops its workers itself. A worker killed by it first would
    # make torch report a crashed worker on top of the interruption.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(parent_pid)
    # A worker hands each batch's tensors over by passing file descriptors, from a thread of
    # multiprocessing's resource sharer that reports any failure through sys.excepthook. When the main
    # process stops mid-transfer (an interruption), that hand-over breaks and the worker would print a
    # traceback under the main process's one "interrupted" line: the broken connection says nothing new.
    sys.excepthook = functools.partial(_quiet_broken_handover, sys.excepthook)


def _quiet_broken_handover(previous, exc_type, exc, tb) -> None:
    if not issubclass(exc_type, (BrokenPipeError, ConnectionResetError, ConnectionRefusedError, EOFError)):
        previous(exc_type, exc, tb)


def worker_init_fn():
    """A ``worker_init_fn`` for a torch ``DataLoader``: its workers die with the process creating it.

    Call it in the process that starts the workers (it records that process's id).
    The kernel's parent-death signal fires when the *thread* that forked the worker
    ends; tlkit iterates its loaders in the thread that creates them, which outlives
    the loader.
    """
    return functools.partial(_bind_to_parent, os.getpid())


def _sigkill_on_terminate(popen):
    popen.terminate = popen.kill  # the worker ignores SIGTERM (_bind_to_parent): a terminate() must kill it
    return popen


if sys.platform == "linux":  # where workers are forked and bound to their parent (PR_SET_PDEATHSIG)
    class _WorkerProcess(multiprocessing.context.ForkProcess):
        @staticmethod
        def _Popen(process_obj):
            return _sigkill_on_terminate(multiprocessing.context.ForkProcess._Popen(process_obj))

    class _WorkerContext(multiprocessing.context.ForkContext):
        Process = _WorkerProcess


def worker_context():
    """The multiprocessing context of a ``DataLoader`` (``multiprocessing_context=``): forked workers whose
    ``terminate()`` is SIGKILL.

    Whoever terminates them (torch's shutdown once its join timed out, Python's exit handler, which
    terminates every daemonic child and then joins it) then really stops them. None (torch's default)
    off Linux, where tlkit does not fork its workers itself.
    """
    if sys.platform != "linux":
        return None
    return _WorkerContext()


def worker_options(workers: int) -> dict:
    """``DataLoader`` keyword arguments for ``workers`` processes that die with this one and stop when told to.

    ``DataLoader(dataset, ..., **worker_options(workers))``; 0 loads in this process.
    """
    if workers <= 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "worker_init_fn": worker_init_fn(), "multiprocessing_context": worker_context()}


def stop_workers(iterator) -> None:
    """Shut down the worker processes of a ``DataLoader`` iterator now, even mid-epoch (idempotent).

    torch shuts its workers down only when an epoch ends or when the last reference to its iterator
    goes, which a traceback (and the reference cycles through its frames) can postpone to the exit
    of the interpreter. ``_shutdown_workers`` is torch's own shutdown (what ``__del__`` calls): it
    stops the pin-memory thread, tells the workers to finish, joins them, and kills (through
    :func:`worker_context`) those that do not finish; any worker still alive after it is killed here.
    """
    workers = list(getattr(iterator, "_workers", ()))
    shutdown = getattr(iterator, "_shutdown_workers", None) or getattr(iterator, "close", None)  # a generator: closed
    try:
        if shutdown is not None:
            shutdown()
    finally:
        for worker in workers:
            if worker.is_alive():
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    worker.kill()
                    worker.join(timeout=5)


@contextlib.contextmanager
def loader_batches(loader: Iterable) -> Iterator[Iterator]:
    """``with loader_batches(loader) as batches: for batch in batches: ...``: the loader's workers end with the block.

    However the block is left (the last batch, ``break``, an exception, Ctrl-C, SIGTERM), the
    workers are shut down before the ``with`` statement is: a failure is reported, and the process
    exits, without waiting on them. ``loader`` may also be a generator over a loader (it is closed,
    which ends its own ``loader_batches``) or any other iterable (nothing to stop).
    """
    with _held_interruptions() as held:
        iterator = iter(loader)  # forks the workers: an interruption in the middle would leave them unowned
    try:
        held.deliver()  # the one that arrived meanwhile, now that its workers can be stopped below
        yield iterator
    finally:
        stop_workers(iterator)


class _Held:
    def __init__(self):
        self.arrived: list[tuple[int, object]] = []  # (signal, the handler it was meant for)

    def deliver(self) -> None:
        if self.arrived:
            signum, handler = self.arrived[0]
            handler(signum, None)  # raises, as it would have: Terminated, or KeyboardInterrupt for Ctrl-C


@contextlib.contextmanager
def _held_interruptions() -> Iterator[_Held]:
    """Within the block, Ctrl-C, SIGTERM and SIGHUP are recorded, not raised; ``deliver()`` raises them after.

    torch's DataLoader iterator starts its workers in ``__init__``: a KeyboardInterrupt raised there
    leaves an object that no one can shut down, whose destructor later fails ("no attribute
    '_shutdown'", a traceback under the "interrupted" line, seen in CI at the start of an epoch).
    Only Python-level handlers are held; a signal that is ignored or at its default stays so.
    """
    held = _Held()
    if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
        yield held
        return
    previous = {}
    for sig in (signal.SIGINT, *SIGNALS):
        handler = signal.getsignal(sig)
        if callable(handler):
            previous[sig] = signal.signal(sig, lambda signum, frame, h=handler: held.arrived.append((signum, h)))
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
