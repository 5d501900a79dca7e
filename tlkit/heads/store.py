"""The formats a head's weights are saved in, inside its run folder; none needs pickle to load.

    TORCH_STATE  model.pt        the module's state_dict at the final epoch  (torch.load(..., weights_only=True))
                 model_best.pt   the same at the best epoch (absent without an evaluation set)
                 model_seeds.pt  many seeds: {"seeds", "final": {name: (seeds, ...)}, "best": {...}}
    ARRAYS       model.npz       named arrays the head gives and takes back  (np.load(..., allow_pickle=False))
                 model_seeds.npz many seeds: "seeds" and every array stacked along a leading seed axis

A run of many seeds keeps model.pt / model.npz for its first seed, so that
everything that loads one head (``load_head``, ``tlkit predict``) works as
before, and adds every seed's weights in one more file: they are small (a
few thousand numbers per seed), and ``load_head(run, seed=k)`` rebuilds any
of them.

A head's declaration (:mod:`tlkit.heads.registry`) names its format. The
format talks to the head through a small protocol: TORCH_STATE reads
``module_`` / ``best_state_dict_`` and calls ``restore_module(state,
classes, n_features)``; ARRAYS calls ``to_arrays()`` and
``from_arrays(arrays)``. The file names belong to the run contract
(:mod:`tlkit.runs`).

Imported by ``tlkit fit-head --help`` (through the registry): torch only inside the methods.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tlkit.errors import HeadError
from tlkit.runs import MODEL, MODEL_ARRAYS, MODEL_ARRAYS_SEEDS, MODEL_BEST, MODEL_SEEDS


class WeightsFormat:
    def save(self, estimator, run) -> list[str]:  # pragma: no cover - interface
        """Write the fitted estimator's weights with ``run`` (a RunWriter); the file names written."""
        raise NotImplementedError

    def save_seeds(self, estimators: list, run) -> list[str]:  # pragma: no cover - interface
        """Write many seeds' fitted estimators (``estimators[i].seed``): the first as :meth:`save` does,
        and all of them in one more file; the file names written."""
        raise NotImplementedError

    def load(self, estimator, run_dir: Path, which: str, classes: np.ndarray, n_features: int,
             seed_index: int | None = None):  # pragma: no cover - interface
        """Fill the unfitted ``estimator`` (built from config.json) with the saved weights; return it.
        ``seed_index``: the position of the seed to load in a run of many seeds (None: the first seed's file)."""
        raise NotImplementedError


def _seed_file_error(path: Path, exc) -> HeadError:
    if isinstance(exc, FileNotFoundError):
        return HeadError(f"{path} does not exist (a run of one seed has only its own weights)")
    return HeadError(f"{path} cannot be loaded: {exc}")


class TorchState(WeightsFormat):
    files = {"final": MODEL, "best": MODEL_BEST}

    def save(self, estimator, run) -> list[str]:
        written = []
        for which, state in self._states(estimator).items():
            run.write_file(self.files[which], _torch_bytes(state))
            written.append(self.files[which])
        return written

    def save_seeds(self, estimators: list, run) -> list[str]:
        import torch

        states = [self._states(e) for e in estimators]
        stacked = {"seeds": torch.tensor([int(e.seed) for e in estimators])}
        for which in states[0]:
            stacked[which] = {k: torch.stack([s[which][k] for s in states]) for k in states[0][which]}
        run.write_file(MODEL_SEEDS, _torch_bytes(stacked))
        return [*self.save(estimators[0], run), MODEL_SEEDS]

    @staticmethod
    def _states(estimator) -> dict:
        states = {"final": estimator.module_.state_dict(), "best": estimator.best_state_dict_}
        return {which: {k: v.detach().cpu() for k, v in state.items()} for which, state in states.items()
                if state is not None}

    def load(self, estimator, run_dir: Path, which: str, classes: np.ndarray, n_features: int,
             seed_index: int | None = None):
        import pickle

        import torch

        path = Path(run_dir) / (self.files[which] if seed_index is None else MODEL_SEEDS)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise (HeadError(f"{path} does not exist") if seed_index is None
                   else _seed_file_error(path, FileNotFoundError())) from None
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
            raise HeadError(f"{path} cannot be loaded: {exc}") from None
        if seed_index is not None:
            if which not in state:
                raise HeadError(f"{path} holds no {which!r} weights")
            state = {k: v[seed_index] for k, v in state[which].items()}
        try:
            return estimator.restore_module(state, classes, n_features)
        except RuntimeError as exc:
            raise HeadError(f"{path} does not match the head in config.json: {str(exc).splitlines()[0]}") from None


class Arrays(WeightsFormat):
    file = MODEL_ARRAYS

    def save(self, estimator, run) -> list[str]:
        run.write_file(self.file, _npz_bytes(estimator.to_arrays()))
        return [self.file]

    def save_seeds(self, estimators: list, run) -> list[str]:
        arrays = [e.to_arrays() for e in estimators]
        stacked = {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}
        if "seeds" in stacked:
            raise ValueError("a head's arrays may not be called 'seeds' (the seed file's own name)")
        run.write_file(MODEL_ARRAYS_SEEDS, _npz_bytes({"seeds": np.array([int(e.seed) for e in estimators]), **stacked}))
        return [*self.save(estimators[0], run), MODEL_ARRAYS_SEEDS]

    def load(self, estimator, run_dir: Path, which: str, classes: np.ndarray, n_features: int,
             seed_index: int | None = None):
        # One set of weights per seed: "final" and "best" are the same.
        path = Path(run_dir) / (self.file if seed_index is None else MODEL_ARRAYS_SEEDS)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if seed_index is not None:
                arrays = {k: v[seed_index] for k, v in arrays.items() if k != "seeds"}
            return estimator.from_arrays(arrays)
        except FileNotFoundError as exc:
            raise _seed_file_error(path, exc) if seed_index is not None else HeadError(
                f"{path} cannot be loaded: {exc}") from None
        except (OSError, ValueError, KeyError) as exc:
            raise HeadError(f"{path} cannot be loaded: {exc}") from None


def _torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


TORCH_STATE = TorchState()
ARRAYS = Arrays()
