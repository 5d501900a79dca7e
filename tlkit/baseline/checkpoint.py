"""The per-epoch checkpoint of an unfinished scratch run, written atomically.

``checkpoint.pt`` holds everything :func:`tlkit.train.loop.train_classifier`
needs to continue (model, optimizer, scheduler, history, best epoch, random
state) plus the settings it was trained with, so ``--resume`` can refuse to
continue with different ones. It is removed once the run is finished.

A full disk is refused before writing, with the size the checkpoint needs
(about 135 MB for ResNet-18 with its optimizer state), and a write that fails
all the same is reported as one storage line (:mod:`tlkit.atomic`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tlkit.atomic import atomic_path, require_free_space
from tlkit.errors import TlkitError
from tlkit.runs import CHECKPOINT

_ARRAYS = ("best_proba", "final_proba")  # numpy in the loop's state; stored as tensors (weights_only loading)
# What torch.save writes beside the tensors' bytes: one zip record per storage (header, central directory
# entry, alignment to 64 bytes), and the pickled structure (history, settings, names).
_PER_STORAGE, _STRUCTURE = 512, 256 * 1024


def checkpoint_bytes(payload) -> int:
    """About how many bytes ``torch.save(payload)`` writes: every storage once, plus the zip's and pickle's share."""
    seen: set[tuple[int, int]] = set()
    total = _STRUCTURE

    def walk(value) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:  # views of one storage (a state dict's tied weights) are written once
                seen.add(key)
                total += storage.nbytes() + _PER_STORAGE
        elif isinstance(value, np.ndarray):
            total += value.nbytes + _PER_STORAGE
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(payload)
    return total


def save_checkpoint(run_dir: Path, state: dict, settings: dict) -> None:
    """Replace the previous checkpoint atomically (a kill leaves the old one or the new one, never a torn one)."""
    payload = {k: (torch.from_numpy(np.asarray(v)) if k in _ARRAYS and v is not None else v) for k, v in state.items()}
    payload["settings"] = settings
    target = Path(run_dir) / CHECKPOINT
    # The new checkpoint is written beside the previous one, which goes only once the new one is whole.
    require_free_space(run_dir, checkpoint_bytes(payload), f"save the checkpoint in {run_dir}")
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        # Through a Python file: a failed write then raises its OSError (ENOSPC, EDQUOT, ...), which torch
        # keeps as the context of its "unexpected pos"; given a path, torch's own writer loses the errno.
        torch.save(payload, fh)


def load_checkpoint(run_dir: Path, device) -> dict | None:
    """The saved state (numpy arrays restored), or None when the run has no checkpoint."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise TlkitError(f"{path} cannot be read ({str(exc).splitlines()[0]}); delete it to start the run again") from None
    for key in _ARRAYS:
        if state.get(key) is not None:
            state[key] = state[key].cpu().numpy()
    state["torch_rng"] = state["torch_rng"].cpu()
    return state


def remove_checkpoint(run_dir: Path) -> None:
    (Path(run_dir) / CHECKPOINT).unlink(missing_ok=True)
