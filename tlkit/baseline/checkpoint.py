"""The per-epoch checkpoint of an unfinished scratch run, written atomically.

``checkpoint.pt`` holds everything :func:`tlkit.train.loop.train_classifier`
needs to continue (model, optimizer, scheduler, history, best epoch, random
state) plus the settings it was trained with, so ``--resume`` can refuse to
continue with different ones. It is removed once the run is finished.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tlkit.atomic import atomic_path
from tlkit.errors import TlkitError

CHECKPOINT = "checkpoint.pt"
_ARRAYS = ("best_proba", "final_proba")  # numpy in the loop's state; stored as tensors (weights_only loading)


def save_checkpoint(run_dir: Path, state: dict, settings: dict) -> None:
    """Replace the previous checkpoint atomically: a kill mid-write leaves the last finished epoch's."""
    payload = {k: (torch.from_numpy(np.asarray(v)) if k in _ARRAYS and v is not None else v) for k, v in state.items()}
    payload["settings"] = settings
    with atomic_path(Path(run_dir) / CHECKPOINT) as tmp:
        torch.save(payload, tmp)


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
