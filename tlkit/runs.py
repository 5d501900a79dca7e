"""The run folder: what ``fit-head`` and ``train-scratch`` write and ``report``/``predict`` read.

    runs/<head>-<timestamp>/
        config.json        the full configuration, the cache's provenance, the split used
        history.json       per-epoch train/val loss and accuracy (empty for logreg)
        history.csv        the same, for spreadsheets
        metrics.json       evaluation metrics at the final and at the best epoch, training seconds
        predictions.npz    evaluation set: paths, labels, probabilities (final and best)
        model.pt           the trained weights as a state_dict (torch.load(..., weights_only=True))
                           or model.npz for scikit-learn heads (plain arrays, no pickle)

Every file is written atomically. Two runs are comparable only when their
evaluation sets have the same fingerprint (same paths, same labels, same
class names) and the same feature space.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from tlkit.atomic import atomic_bytes
from tlkit.errors import TlkitError
from tlkit.metrics import classification_metrics

CONFIG, HISTORY, HISTORY_CSV, METRICS, PREDICTIONS = (
    "config.json", "history.json", "history.csv", "metrics.json", "predictions.npz",
)
BEST_NOTE = (
    "'best' is the epoch with the highest accuracy on the evaluation set itself: an optimistic figure "
    "(the seed paper reports it). Quote 'final' for an honest estimate."
)


def new_run_dir(out: str | os.PathLike | None, name: str) -> Path:
    """``out`` if given, else ``runs/<name>-<timestamp>``; refuses to reuse a finished run."""
    path = Path(out) if out else Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if (path / METRICS).exists():
        raise TlkitError(f"{path} already holds a finished run; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_bytes(path: Path, data: bytes) -> None:
    atomic_bytes(path, data)  # a full disk: one line naming the file, and no temporary file left


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (model weights and other binary run files)."""
    _atomic_bytes(Path(path), data)


def write_json(path: Path, obj) -> None:
    _atomic_bytes(Path(path), (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_history(run_dir: Path, history: list) -> None:
    rows = [asdict(r) if not isinstance(r, dict) else r for r in history]
    write_json(run_dir / HISTORY, rows)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _atomic_bytes(run_dir / HISTORY_CSV, buf.getvalue().encode())


def write_predictions(run_dir: Path, paths, labels, proba_final, proba_best) -> None:
    buf = io.BytesIO()
    np.savez(
        buf, paths=np.asarray(paths, dtype=str), labels=np.asarray(labels, dtype=np.int64),
        proba_final=np.asarray(proba_final, dtype=np.float64), proba_best=np.asarray(proba_best, dtype=np.float64),
    )
    _atomic_bytes(run_dir / PREDICTIONS, buf.getvalue())


def eval_fingerprint(paths, labels, class_names) -> str:
    """sha256 over the evaluation set: two runs are comparable only if this matches."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(class_names)).encode())
    for p, y in sorted(zip((str(p) for p in paths), (int(v) for v in labels))):
        digest.update(f"{p}\t{y}\n".encode())
    return digest.hexdigest()


def build_metrics(
    labels, proba_final, proba_best, *, final_epoch, best_epoch, training_seconds: float,
    class_names, final_loss=None, best_loss=None,
) -> dict:
    """metrics.json content: the same metric block at the final and at the best epoch."""
    final = {"epoch": final_epoch, "loss": final_loss, **classification_metrics(labels, proba_final)}
    best = {"epoch": best_epoch, "loss": best_loss, **classification_metrics(labels, proba_best)}
    return {
        "class_names": list(class_names),
        "n_eval": int(len(labels)),
        "training_seconds": float(training_seconds),
        "final": final,
        "best": best,
        "note": BEST_NOTE,
    }


@dataclass
class Run:
    path: Path
    config: dict
    metrics: dict
    history: list[dict]
    predictions: dict  # paths, labels, proba_final, proba_best

    @property
    def name(self) -> str:
        return self.path.name


def load_run(path: str | os.PathLike) -> Run:
    """Read a finished run folder or raise a one-line :class:`TlkitError`."""
    path = Path(path)
    if not path.is_dir():
        raise TlkitError(f"{path} is not a run folder (no such folder)")
    missing = [n for n in (CONFIG, METRICS, PREDICTIONS) if not (path / n).exists()]
    if missing:
        raise TlkitError(f"{path} is not a finished run folder (missing {', '.join(missing)})")
    try:
        config = json.loads((path / CONFIG).read_text())
        metrics = json.loads((path / METRICS).read_text())
        history = json.loads((path / HISTORY).read_text()) if (path / HISTORY).exists() else []
        with np.load(path / PREDICTIONS, allow_pickle=False) as npz:
            predictions = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, KeyError) as exc:
        raise TlkitError(f"{path} holds a damaged run file: {exc}") from None
    return Run(path=path, config=config, metrics=metrics, history=history, predictions=predictions)
