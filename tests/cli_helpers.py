"""Running the `tlkit` command in tests, and the one-line-error check every command must pass."""

from __future__ import annotations

import os
import subprocess
import sys

import launcher
from click.testing import CliRunner

from tlkit.cli import main


def invoke(*args):
    """The click command in this process (fast; for most CLI tests)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def tlkit_cli(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    """``python -m tlkit.cli ARGS`` in a process of its own (for exit codes, signals, what reaches the terminal).

    It is forked from :mod:`launcher`'s preloaded server, so it does not import torch again; a test of start-up
    itself (what a command imports) uses :mod:`subprocess`.
    """
    return launcher.run(
        [sys.executable, "-m", "tlkit.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def _single_error_line(stderr: str, everything: str, fragments, ignore: tuple[str, ...]) -> str:
    assert "Traceback" not in everything
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(ignore)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_invoke_error(result, *fragments: str, ignore: tuple[str, ...] = ()) -> str:
    """An :func:`invoke` result that failed with exit 1 and one ``error:`` line (lines starting with ``ignore`` aside)."""
    assert result.exit_code == 1, result.output
    return _single_error_line(result.stderr, result.output, fragments, ignore)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """A :func:`tlkit_cli` run that failed with exit 1, one ``error:`` line and no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    return _single_error_line(proc.stderr, proc.stderr + proc.stdout, fragments, ())
