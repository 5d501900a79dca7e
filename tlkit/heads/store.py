"""The formats a head's weights are saved in, inside its run folder; none needs pickle to load.

    TORCH_STATE  model.pt       the module's state_dict at the final epoch  (torch.load(..., weights_only=True))
                 model_best.pt  the same at the best epoch (absent without an evaluation set)
    ARRAYS       model.npz      named arrays the head gives and takes back  (np.load(..., allow_pickle=False))

A head's declaration (:mod:`tlkit.heads.registry`) names its format. The
format talks to the head through a small protocol: TORCH_STATE reads
``module_`` / ``best_state_dict_`` and calls ``restore_module(state,
classes, n_features)``; ARRAYS calls ``to_arrays()`` and
``from_arrays(arrays)``. The file names belong to the run contract
(:mod:`tlkit.runs`).

Imported when the CLI starts: torch only inside the methods.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tlkit.heads.errors import HeadError
from tlkit.runs import MODEL, MODEL_ARRAYS, MODEL_BEST


class WeightsFormat:
    def save(self, estimator, run) -> list[str]:  # pragma: no cover - interface
        """Write the fitted estimator's weights with ``run`` (a RunWriter); the file names written."""
        raise NotImplementedError

    def load(self, estimator, run_dir: Path, which: str, classes: np.ndarray, n_features: int):  # pragma: no cover
        """Fill the unfitted ``estimator`` (built from config.json) with the saved weights; return it."""
        raise NotImplementedError


class TorchState(WeightsFormat):
    files = {"final": MODEL, "best": MODEL_BEST}

    def save(self, estimator, run) -> list[str]:
        import torch

        written = []
        for which, state in (("final", estimator.module_.state_dict()), ("best", estimator.best_state_dict_)):
            if state is None:
                continue
            buf = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
            run.write_file(self.files[which], buf.getvalue())
            written.append(self.files[which])
        return written

    def load(self, estimator, run_dir: Path, which: str, classes: np.ndarray, n_features: int):
        import pickle

        import torch

        path = Path(run_dir) / self.files[which]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise HeadError(f"{path} does not exist") from None
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
            raise HeadError(f"{path} cannot be loaded: {exc}") from None
        try:
            return estimator.restore_module(state, classes, n_features)
        except RuntimeError as exc:
            raise HeadError(f"{path} does not match the head in config.json: {str(exc).splitlines()[0]}") from None


class Arrays(WeightsFormat):
    file = MODEL_ARRAYS

    def save(self, estimator, run) -> list[str]:
        buf = io.BytesIO()
        np.savez(buf, **estimator.to_arrays())
        run.write_file(self.file, buf.getvalue())
        return [self.file]

    def load(self, estimator, run_dir: Path, which: str, classes: np.ndarray, n_features: int):
        path = Path(run_dir) / self.file  # one set of weights: "final" and "best" are the same
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            return estimator.from_arrays(arrays)
        except (OSError, ValueError, KeyError) as exc:
            raise HeadError(f"{path} cannot be loaded: {exc}") from None


TORCH_STATE = TorchState()
ARRAYS = Arrays()
