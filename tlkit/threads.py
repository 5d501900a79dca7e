"""Run small numeric work on one thread.

Heads are tiny (a 512 x k matrix, a 4-qubit circuit): each operation takes
microseconds, so extra BLAS/OpenMP threads only add synchronisation, and on
a busy machine they stall each other badly (measured here: a linear-head SGD
step at 0.13 ms on one thread, 22 ms on two while another process ran).
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def one_thread():
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # only touch torch if the caller uses it
    before = torch.get_num_threads() if torch else None
    with threadpool_limits(limits=1):
        if torch:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(before)
