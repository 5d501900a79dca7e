"""``python -m tlkit.cli ...`` as real processes, without paying for their imports every time.

A `tlkit` command in its own process spends most of its CPU importing torch, torchvision (which imports
``torch._dynamo``), h5py and scikit-learn: 6 to 9 s on the 2-core CI machine, more than the work of the
small commands the fault and exit-path tests run, and the suite runs well over a hundred of them. Here one
server per test process imports them once and forks a child for each command, as multiprocessing's
forkserver does with ``set_forkserver_preload``; :func:`popen` and :func:`run` stand in for the
:mod:`subprocess` ones.

The child is a process of its own: its own pid, session, file descriptors, signal dispositions as a freshly
started Python sets them, environment, working directory and exit status (``-N`` when signal N killed it).
kill -9 of the main process alone, SIGTERM to its group, a full disk and "no process left behind" are tested
on it as on an exec'd one. What it cannot show is start-up itself (which modules a command imports, the
installed console script, environment read only while torch loads, such as OMP_WAIT_POLICY): those tests
keep :mod:`subprocess`.

The server runs no torch operation before it forks, so the child inherits no OpenMP thread pool (which
does not survive a fork).
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading

PIPE, DEVNULL = subprocess.PIPE, subprocess.DEVNULL

# What the commands import at their top level; a child imports anything else itself, as a fresh process would.
PRELOAD = (
    "numpy", "torch", "torchvision", "h5py", "PIL.Image", "scipy.stats", "sklearn.linear_model", "sklearn.metrics",
    "sklearn.svm", "sklearn.neural_network", "sklearn.model_selection", "tqdm", "click",
    "tlkit.cli", "tlkit.embed.cli", "tlkit.embed.pipeline", "tlkit.cache.cli", "tlkit.heads.cli", "tlkit.heads.fit",
    "tlkit.baseline.cli", "tlkit.baseline.trainer", "tlkit.predict.cli", "tlkit.predict.predictor",
    "tlkit.report.cli", "tlkit.evaluate.cli", "tlkit.export.cli",
)


# ---------------------------------------------------------------------------------------------
# messages: a length, then a pickle; file descriptors ride along with the first bytes

def _send(sock: socket.socket, obj, fds=()) -> None:
    data = pickle.dumps(obj)
    data = struct.pack("!I", len(data)) + data
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    sock.sendall(data[sent:])


def _recv(sock: socket.socket, max_fds: int = 0):
    data, fds, _, _ = socket.recv_fds(sock, 65536, max_fds) if max_fds else (sock.recv(65536), [], 0, None)
    if not data:
        raise EOFError
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        more = sock.recv(65536)
        if not more:
            raise EOFError
        data += more
    return pickle.loads(data[4:]), fds


# ---------------------------------------------------------------------------------------------
# the server (runs as ``python tests/launcher.py serve FD ADDRESS``; ``run ADDRESS ...`` is its command-line client)

def _serve(control: socket.socket, listener: socket.socket) -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    assert threading.active_count() == 1, "a thread started while preloading would be missing in every child"
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes to the wakeup pipe
    waiting: dict[int, socket.socket] = {}  # pid -> where its exit status goes
    _send(control, "ready")
    while True:
        readable, _, _ = select.select([control, listener, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reply = waiting.pop(pid)
            try:
                _send(reply, os.waitstatus_to_exitcode(status))
            except OSError:
                pass  # the test stopped listening
            reply.close()
        if control in readable:  # from this test process: stdin, stdout, stderr and where to reply
            try:
                request, fds = _recv(control, max_fds=4)
            except EOFError:
                os._exit(0)  # the test process is gone
            reply = socket.socket(fileno=fds.pop())
        elif listener in readable:  # from `launcher.py run ...` (a command that make or a script starts)
            reply, _ = listener.accept()
            request, fds = _recv(reply, max_fds=3)
        else:
            continue
        pid = os.fork()
        if pid == 0:
            for sock in (control, listener, reply, *waiting.values()):
                sock.close()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            _child(request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        waiting[pid] = reply
        _send(reply, pid)


def _child(request: dict, stdio: list[int]) -> None:
    """Become ``python ARGV`` in this forked process, as far as a command can tell, and exit as it would."""
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    # Python at start: what the launching process ignored stays ignored (exec keeps SIG_IGN), the rest default;
    # then Python's own: SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ are ignored.
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if sig in request["ignored"] else signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    if signal.SIGINT not in request["ignored"]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    import warnings

    import numpy as np
    import torch

    for option in filter(None, os.environ.get("PYTHONWARNINGS", "").split(",")):
        warnings._setoption(option)
    np.random.seed()  # a fresh process draws numpy's global seed; torch's default seed is fixed either way
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    os._exit(_run_main(request["argv"]))


def _run_main(argv: list[str]) -> int:
    import runpy
    import traceback

    from tlkit.signals import exit_code, finish_interpreter

    status, interrupted = 0, False
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            sys.modules.pop(argv[1], None)  # `python -m` runs the module's code as __main__, not the imported one
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            raise ValueError(f"the launcher runs -m MODULE or -c CODE, not {argv[0]!r}")
    except SystemExit as exc:
        status = exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        status, interrupted = 1, True
    except BaseException:
        traceback.print_exc()
        status = 1
    finish_interpreter()  # what the interpreter does at exit: wait for non-daemon threads, run atexit, flush
    if interrupted:  # Python ends an uncaught Ctrl-C by dying of SIGINT, so that its caller sees it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status & 0xFF


# ---------------------------------------------------------------------------------------------
# the client: one server per test process, started on first use

class _Server:
    def __init__(self):
        ours, theirs = socket.socketpair()
        folder = tempfile.mkdtemp(prefix="tlkit-launcher-")
        atexit.register(shutil.rmtree, folder, True)
        self.address = os.path.join(folder, "socket")
        self.process = subprocess.Popen([sys.executable, __file__, "serve", str(theirs.fileno()), self.address],
                                        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.control = ours
        self.lock = threading.Lock()
        if _recv(self.control)[0] != "ready":
            raise RuntimeError("the launcher's server did not start")

    def start(self, request: dict, stdio: list[int]) -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair()
        with self.lock:
            _send(self.control, request, [*stdio, theirs.fileno()])
        theirs.close()
        pid, _ = _recv(ours)
        return pid, ours


_server: _Server | None = None
_server_lock = threading.Lock()


def _get_server() -> _Server:
    global _server
    with _server_lock:
        if _server is None or _server.process.poll() is not None:
            _server = _Server()
        return _server


class Launched:
    """What :class:`subprocess.Popen` offers the tests: pid, pipes, poll, wait, signals, communicate."""

    def __init__(self, args, *, stdin=None, stdout=None, stderr=None, text=False, env=None, cwd=None,
                 start_new_session=False, default_signals=()):
        if list(args[:1]) != [sys.executable] or args[1] not in ("-m", "-c"):
            raise ValueError(f"the launcher runs [sys.executable, '-m'|'-c', ...], not {args[:2]}")
        self.args = list(args)
        self.returncode: int | None = None
        self._lock = threading.Lock()
        ends, ours = [], []
        for target, how in ((0, stdin), (1, stdout), (2, stderr)):
            if how == PIPE:
                r, w = os.pipe()
                ends.append(w if target else r)
                ours.append(r if target else w)
            elif how == DEVNULL:
                ends.append(os.open(os.devnull, os.O_RDWR))
                ours.append(None)
            elif how is None:
                ends.append(os.dup(target))
                ours.append(None)
            else:
                ends.append(os.dup(how if isinstance(how, int) else how.fileno()))
                ours.append(None)
        try:
            self.pid, self._status = _get_server().start(
                _request(self.args[1:], env, cwd, start_new_session, default_signals), ends)
        finally:
            for fd in ends:
                os.close(fd)
        modes = ("w", "r", "r")
        self.stdin, self.stdout, self.stderr = (
            None if fd is None else (open(fd, mode, encoding=None) if text else open(fd, mode + "b"))
            for fd, mode in zip(ours, modes)
        )

    def poll(self) -> int | None:
        return self._collect(block=False)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(block=True, timeout=timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    def _collect(self, block: bool, timeout: float | None = None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        # Wait outside the lock, so that one thread's wait() leaves another thread's poll() free; the server
        # closes its end after the status, so a socket already read is readable (at its end) at once.
        ready, _, _ = select.select([self._status], [], [], (timeout if block else 0))
        with self._lock:
            if ready and self.returncode is None:
                self.returncode, _ = _recv(self._status)
            return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple:
        results: dict[str, object] = {}
        readers = [threading.Thread(target=lambda n=n, s=s: results.__setitem__(n, s.read()), daemon=True)
                   for n, s in (("out", self.stdout), ("err", self.stderr)) if s is not None]
        for reader in readers:
            reader.start()
        self.wait(timeout)
        for reader in readers:
            reader.join()
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return results.get("out"), results.get("err")


def _request(argv, env=None, cwd=None, new_session=False, default_signals=()) -> dict:
    """What the server needs to start ``python ARGV`` as this process would exec it: the environment, the folder,
    and the signals this process ignores (exec keeps them ignored), less ``default_signals``."""
    ignored = {s for s in signal.valid_signals() if s not in default_signals and _ignored(s)}
    return {"argv": list(argv), "env": dict(os.environ if env is None else env), "cwd": str(cwd or os.getcwd()),
            "new_session": new_session, "ignored": ignored}


def _ignored(sig: int) -> bool:
    try:
        return signal.getsignal(sig) == signal.SIG_IGN
    except (OSError, ValueError):
        return False


def popen(args, **kwargs) -> Launched:
    """:class:`subprocess.Popen` for ``[sys.executable, "-m" | "-c", ...]``, forked from the preloaded server.

    ``default_signals`` stands for a ``preexec_fn`` that sets signals to SIG_DFL before exec.
    """
    return Launched(args, **kwargs)


def run(args, *, capture_output=False, text=False, timeout=None, env=None, cwd=None) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` for the same commands: on a timeout the command is killed and TimeoutExpired raised."""
    how = PIPE if capture_output else None
    proc = Launched(args, stdin=DEVNULL, stdout=how, stderr=how, text=text, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def command_prefix() -> list[str]:
    """What runs ``python ARGS`` through this test process's server from a program the test starts (make):
    ``[*command_prefix(), "-m", "tlkit.cli", ...]``."""
    return [sys.executable, __file__, "run", _get_server().address]


def _run_client(address: str, argv: list[str]) -> int:
    """``launcher.py run ADDRESS -m MODULE ARGS``: the command, forked by the server, on this process's stdin,
    stdout and stderr; SIGINT, SIGTERM and SIGHUP are passed on to it, and its exit status becomes ours."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    _send(sock, _request(argv), [0, 1, 2])
    pid, _ = _recv(sock)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda sig, _: os.kill(pid, sig))
    code, _ = _recv(sock)
    if code < 0:  # died of a signal: so do we, so that our caller sees the same
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(sys.argv[3])
        listener.listen(16)
        _serve(socket.socket(fileno=int(sys.argv[2])), listener)
    else:
        sys.exit(_run_client(sys.argv[2], sys.argv[3:]))
