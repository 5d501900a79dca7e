"""What a finished run folder says, as the values a tracker logs: read from its files, never from memory.

The trackers log after the run is finished, from ``config.json``, ``history.json`` and
``metrics.json`` (:func:`tlkit.runs.load_run`), so what TensorBoard or MLflow shows is
exactly what the run folder holds: ``metrics.json`` stays the source of truth.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tlkit.runs import CONFIG, HISTORY, METRICS, Run, load_run

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
BLOCK_KEYS = ("accuracy", "roc_auc", "average_precision", "loss", "epoch")
MAX_PARAM_CHARS = 500  # longer values (an int8 calibration, long lists) stay in config.json only
SKIP_PARAMS = {"per_seed", "skipped", "weights"}


@dataclass
class RunRecord:
    """One finished run, as tracker values."""

    run: Run
    params: dict[str, str | int | float | bool]  # flattened config.json
    epoch_scalars: list[tuple[str, int, float]] = field(default_factory=list)  # (tag, epoch, value)
    final_scalars: dict[str, float] = field(default_factory=dict)  # tag -> value, logged at final_step
    final_step: int = 0
    files: list[Path] = field(default_factory=list)  # run files logged as artifacts

    @property
    def name(self) -> str:
        return self.run.name


def flatten(doc: dict, prefix: str = "") -> dict:
    """Nested config keys as ``a.b.c``; lists as JSON; None as "None"; over-long values dropped."""
    out = {}
    for key, value in doc.items():
        if key in SKIP_PARAMS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
            continue
        if isinstance(value, (list, tuple)):
            value = json.dumps(value)
        elif value is None:
            value = "None"
        if isinstance(value, str) and len(value) > MAX_PARAM_CHARS:
            continue
        out[name] = value
    return out


def _block(prefix: str, block: dict | None, out: dict) -> None:
    for key in BLOCK_KEYS:
        value = (block or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)


def read_record(run_dir) -> RunRecord:
    """The tracker values of the finished run in ``run_dir`` (a one-line error for anything else)."""
    run = load_run(run_dir)
    rec = RunRecord(run=run, params=flatten(run.config.to_json()))
    for row in run.history:
        epoch = int(row["epoch"])
        for key in HISTORY_KEYS:
            if row.get(key) is not None:
                rec.epoch_scalars.append((key, epoch, float(row[key])))
        per_seed = row.get("per_seed") or {}
        for i, seed in enumerate(per_seed.get("seed", [])):
            for key in HISTORY_KEYS:
                if key in per_seed and per_seed[key][i] is not None:
                    rec.epoch_scalars.append((f"seed_{seed}/{key}", epoch, float(per_seed[key][i])))
    m = run.metrics
    _block("final", m.get("final"), rec.final_scalars)
    _block("best", m.get("best"), rec.final_scalars)
    for entry in m.get("seeds") or []:
        _block(f"seed_{entry['seed']}/final", entry.get("final"), rec.final_scalars)
        _block(f"seed_{entry['seed']}/best", entry.get("best"), rec.final_scalars)
    rec.final_scalars["training_seconds"] = float(m["training_seconds"])
    for metric, interval in (m.get("summary") or {}).items():
        if metric == "images":
            for name, boot in interval.items():
                for key in ("estimate", "ci_low", "ci_high"):
                    if boot.get(key) is not None:
                        rec.final_scalars[f"interval/images/{name}/{key}"] = float(boot[key])
            continue
        for key in ("mean", "std", "ci_low", "ci_high"):
            if interval.get(key) is not None:
                rec.final_scalars[f"interval/{metric}/{key}"] = float(interval[key])
    final_epoch = (m.get("final") or {}).get("epoch")
    rec.final_step = int(final_epoch) if final_epoch is not None else 0
    rec.files = [run.path / name for name in (CONFIG, HISTORY, METRICS) if (run.path / name).exists()]
    return rec


@dataclass
class SearchChild:
    """One configuration of a sweep (``fit-head --grid``): its settings and cross-validation scores."""

    name: str  # e.g. "03-lr=0.01,depth=6"
    params: dict
    scalars: dict[str, float]


def search_children(rec: RunRecord) -> list[SearchChild]:
    """The configurations of a sweep run, from metrics.json's ``search`` rows (none for other runs).

    Each row holds the grid parameters' values (config.json's ``search.grid`` names them), ``fold<k>``
    scores, ``mean``, ``std``, ``rank`` and ``seconds``.
    """
    rows = rec.run.metrics.get("search")
    grid = (rec.run.config.to_json().get("search") or {}).get("grid") or {}
    if not isinstance(rows, list):
        return []
    children = []
    for i, row in enumerate(rows):
        params = {k: row[k] for k in grid if k in row}
        scalars = {f"cv/{k}": float(v) for k, v in row.items()
                   if k not in grid and isinstance(v, (int, float)) and not isinstance(v, bool)}
        label = ",".join(f"{k}={v}" for k, v in params.items())
        children.append(SearchChild(name=f"{i:02d}-{label}", params=params, scalars=scalars))
    return children


@dataclass
class Figure:
    """One figure drawn once, as PNG bytes in memory and as a file: TensorBoard takes the bytes as they
    are (no decoding and re-encoding), MLflow the file."""

    name: str  # e.g. "evaluation"
    path: Path
    png: bytes
    width: int
    height: int


def render_figures(rec: RunRecord, folder: Path) -> list[Figure]:
    """``evaluation.png``: ROC and precision-recall curves and the confusion matrix at the final epoch.

    The loss curves are not drawn: both trackers plot the logged scalars themselves. Drawing is most
    of what logging costs, so the figure is drawn once for both trackers, straight on an Agg canvas
    (no pyplot, no figure manager), small and at screen resolution, with few artists: three ticks
    on each curve axis and the AUC and AP in the titles instead of legend boxes (``tlkit report``
    draws the full-size figures).
    """
    import numpy as np

    run = rec.run
    title = f"{rec.name} (first seed's curves)" if run.seeds and len(run.seeds) > 1 else rec.name
    png, width, height = _evaluation_png(np.asarray(run.predictions["labels"]), np.asarray(run.proba_seeds("final")[0]),
                                         run.metrics["final"], run.config.class_names, title)
    figure = Figure("evaluation", folder / "evaluation.png", png, width, height)
    figure.path.write_bytes(figure.png)
    return [figure]


def _evaluation_png(labels, proba, block: dict, names: list[str], title: str) -> tuple[bytes, int, int]:
    """The evaluation figure of ``labels`` (N,) and the class probabilities ``proba`` (N, C), with ``block``'s
    confusion matrix and accuracy: (PNG bytes, width, height)."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    if proba.shape[1] == 2:  # the positive class, as `tlkit report` draws it; more classes: micro-average
        targets, scores, what = labels, proba[:, 1], ""
    else:
        targets, scores, what = np.eye(proba.shape[1], dtype=np.int64)[labels].ravel(), proba.ravel(), " (micro-average)"
    prepared = _PREPARED.pop() if _PREPARED else _evaluation_axes()
    fig, canvas, (ax_roc, ax_pr, ax_cm) = prepared.fig, prepared.canvas, prepared.axes
    roc_title, pr_title = f"ROC{what}", f"precision-recall{what}"
    curves = []
    if len(np.unique(targets)) == 2:
        fpr, tpr, _ = roc_curve(targets, scores)
        curves += ax_roc.plot(fpr, tpr)
        roc_title += f": AUC {auc(fpr, tpr):.3f}"
        precision, recall, _ = precision_recall_curve(targets, scores)
        curves += ax_pr.step(recall, precision, where="post")
        pr_title += f": AP {average_precision_score(targets, scores):.3f}"
    curves += ax_roc.plot([0, 1], [0, 1], ":", color="grey")
    ax_roc.set(title=roc_title)
    ax_pr.set(title=pr_title)
    matrix = np.asarray(block["confusion_matrix"], dtype=float)
    ax_cm.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax_cm.text(j, i, f"{value:g}", ha="center", va="center")
    ax_cm.set(title=f"confusion, final: accuracy {block['accuracy']:.3f}",
              xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names)
    ax_cm.set_visible(True)
    fig.suptitle(title)
    # Onto the curve axes drawn ahead (frames, ticks, labels: the same for every run), only the run's own parts:
    # matplotlib's blitting, as animations do it. The confusion axes (its classes are the run's) are drawn whole.
    canvas.restore_region(prepared.background)
    for artist in (*curves, ax_roc.title, ax_pr.title, ax_cm, fig._suptitle):
        fig.draw_artist(artist)
    buf = io.BytesIO()
    width, height = canvas.get_width_height()
    Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).save(buf, format="png")
    return buf.getvalue(), width, height


# The axes of one evaluation figure, made and drawn ahead of the run by warm_figures: the logging helper's drawing
# worker then only draws the run's own parts (the axes, their ticks and labels were over a third of the drawing).
_PREPARED: list = []


@dataclass
class _Prepared:
    fig: object  # matplotlib.figure.Figure
    canvas: object  # its Agg canvas
    axes: tuple  # (roc, precision-recall, confusion)
    background: object  # the canvas as drawn with the confusion axes hidden (``copy_from_bbox``)


def _evaluation_axes() -> _Prepared:
    """The evaluation figure with everything that is the same for every run, drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(12, 3.8), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax_roc, ax_pr, ax_cm = fig.subplots(1, 3)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate")
    ax_pr.set(xlabel="recall", ylabel="precision")
    for ax in (ax_roc, ax_pr):
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
    ax_cm.set(xlabel="predicted", ylabel="true")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.82, wspace=0.3)
    ax_cm.set_visible(False)  # its ticks are the run's classes: drawn with the run
    canvas.draw()
    return _Prepared(fig, canvas, (ax_roc, ax_pr, ax_cm), canvas.copy_from_bbox(fig.bbox))


def warm_figures() -> None:
    """What drawing a figure costs the first time (the imports, matplotlib's fonts, scikit-learn's metrics, every
    artist's first use, PIL's PNG writer), paid by drawing a throwaway figure of made-up numbers; and the next
    figure's axes, drawn now (the logging helper's drawing worker once forked: there the throwaway figure also
    has the pages the drawing writes copied ahead, which made the run's figure 0.05 s instead of 0.04 s)."""
    import numpy as np

    proba = np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    _evaluation_png(np.array([0, 1, 1, 0]), proba, {"confusion_matrix": [[2, 0], [0, 2]], "accuracy": 1.0},
                    ["a", "b"], "warm-up")
    _PREPARED[:] = [_evaluation_axes()]


def figures_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="tlkit-figures-")
