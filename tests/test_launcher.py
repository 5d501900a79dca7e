"""The test launcher (tests/launcher.py) gives each command what a freshly executed Python would have.

The fault and exit-path tests trust it to: a process of its own, the exit status (signals as -N), the
environment, the working directory, arguments, signal dispositions, stdin/stdout/stderr. Also: the
suite's file order names files that exist.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import launcher
import psutil
import pytest
from conftest import LONGEST_FIRST, python_sigint

PY = sys.executable


def test_a_command_is_a_process_of_its_own_with_its_arguments_environment_and_folder(tmp_path):
    code = ("import os, sys, signal\n"
            "print(os.getpid(), os.getcwd(), os.environ.get('LAUNCHED'), sys.argv[1:], __name__, flush=True)\n"
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.getsignal(signal.SIGINT) is "
            "signal.default_int_handler, file=sys.stderr)\n"
            "sys.exit(3)")
    with python_sigint():  # a child keeps an ignored SIGINT ignored, as exec does
        result = launcher.run([PY, "-c", code, "a", "b c"], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "LAUNCHED": "yes"})
    pid, cwd, value, *rest = result.stdout.split(" ", 3)
    assert result.returncode == 3
    assert int(pid) not in (os.getpid(), launcher._get_server().process.pid)
    assert (cwd, value) == (str(tmp_path), "yes") and rest == ["['a', 'b c'] __main__\n"]
    assert result.stderr.split() == ["True", "True"]


def test_a_module_runs_as_main_and_an_uncaught_interrupt_dies_of_sigint():
    result = launcher.run([PY, "-m", "tlkit.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("tlkit"), result.stderr
    result = launcher.run([PY, "-c", "raise KeyboardInterrupt"], capture_output=True, text=True)
    assert result.returncode == -signal.SIGINT and "KeyboardInterrupt" in result.stderr


def test_kill_9_of_its_own_session_is_seen_as_such_and_leaves_nothing():
    proc = launcher.popen([PY, "-c", "import subprocess, sys, time\n"
                                     "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                                     "print('ready', flush=True)\ntime.sleep(60)"],
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    assert os.getsid(proc.pid) == proc.pid  # a session (and process group) of its own
    child = psutil.Process(proc.pid).children()[0]
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    child.wait(timeout=10)
    assert not child.is_running()


def test_an_ignored_signal_stays_ignored_unless_set_to_default():
    code = "import signal; print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)"
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup: exec keeps SIG_IGN
    try:
        kept = launcher.run([PY, "-c", code], capture_output=True, text=True)
        reset = launcher.popen([PY, "-c", code], stdout=subprocess.PIPE, text=True, default_signals=(signal.SIGHUP,))
        out, _ = reset.communicate(timeout=30)
    finally:
        signal.signal(signal.SIGHUP, before)
    assert kept.stdout.strip() == "True" and out.strip() == "False"


def test_wait_gives_up_after_its_timeout_and_poll_does_not_block():
    proc = launcher.popen([PY, "-c", "import time; time.sleep(30)"])
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)
    assert proc.poll() is None and time.monotonic() - started < 5
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_the_longest_first_order_names_test_files_that_exist():
    here = Path(__file__).parent
    assert [name for name in LONGEST_FIRST if not (here / name).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
