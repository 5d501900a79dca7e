"""The report's figures, like the seed paper's Figure 4.5, drawn with matplotlib (Agg, no display).

* ``curves.png``: loss per epoch of every run (evaluation loss solid, training
  loss dashed), ROC curves and precision-recall curves on the evaluation set;
  a run of many seeds draws the across-seed mean loss with a shaded band from
  the lowest to the highest seed (min–max, not an interval: with 5 seeds it
  shows every seed), and its ROC / PR curves are its first seed's, the
  predictions ``model.pt`` gives;
* ``confusion-<run>.png``: the confusion matrix of each run, final and best
  epoch (a run of many seeds: the mean over its seeds).

Two classes: the curves are for the positive class (index 1). More classes:
micro-averaged one-vs-rest curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlkit.atomic import atomic_path
from tlkit.runs import Run


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:  # keeps the suffix (savefig picks the format from it); a full disk: one line
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def _scores(labels: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(targets, scores, what they are) for one ROC / PR curve."""
    if proba.shape[1] == 2:
        return labels, proba[:, 1], ""
    onehot = np.eye(proba.shape[1], dtype=np.int64)[labels]
    return onehot.ravel(), proba.ravel(), " (micro-average)"


def curves_figure(names: list[str], runs: list[Run], path: Path, which: str = "final") -> None:
    # roc_curve / precision_recall_curve rather than the *Display helpers, whose keyword
    # arguments changed across the scikit-learn versions tlkit supports.
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    plt = _pyplot()
    fig, (ax_loss, ax_roc, ax_pr) = plt.subplots(1, 3, figsize=(18, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    no_history, banded = [], False
    for i, (name, run) in enumerate(zip(names, runs)):
        color = colors[i % len(colors)]
        if run.history:
            epochs = [r["epoch"] for r in run.history]
            seeds = run.history[0].get("per_seed", {}).get("seed", [])
            label = f"{name}, mean of {len(seeds)} seeds" if len(seeds) > 1 else name
            for key, style, what in (("val_loss", "-", "eval"), ("train_loss", "--", "train")):
                ax_loss.plot(epochs, [r[key] for r in run.history], color=color, linestyle=style,
                             label=f"{label} ({what})")
                if len(seeds) > 1:  # min-max over the seeds, around the mean line
                    values = np.array([r["per_seed"][key] for r in run.history], dtype=float)
                    ax_loss.fill_between(epochs, values.min(axis=1), values.max(axis=1), color=color, alpha=0.15,
                                         linewidth=0)
                    banded = True
        else:
            no_history.append(name)
        labels = np.asarray(run.predictions["labels"])
        proba = np.asarray(run.predictions[f"proba_{which}"])
        if len(np.unique(labels)) < 2:
            continue  # no curve exists with one class only
        y, score, suffix = _scores(labels, proba)
        if run.seeds and len(run.seeds) > 1:
            suffix += f", seed {run.seeds[0]}"
        fpr, tpr, _ = roc_curve(y, score)
        ax_roc.plot(fpr, tpr, color=color, label=f"{name}{suffix} (AUC {auc(fpr, tpr):.4f})")
        precision, recall, _ = precision_recall_curve(y, score)
        ax_pr.step(recall, precision, where="post", color=color,
                   label=f"{name}{suffix} (AP {average_precision_score(y, score):.4f})")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss",
                title="Loss per epoch" + (" (shaded: min–max over seeds)" if banded else ""))
    if no_history:
        ax_loss.text(0.02, 0.02, "no per-epoch history: " + ", ".join(no_history), transform=ax_loss.transAxes,
                     fontsize=8)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC curves ({which} epoch)",
               xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"Precision-recall curves ({which} epoch)",
              xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    for ax in (ax_roc, ax_pr):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def confusion_figure(name: str, run: Run, class_names: list[str], path: Path) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, which in zip(axes, ("final", "best")):
        block = run.metrics[which]
        matrix = np.asarray(block["confusion_matrix"])
        counts = np.allclose(matrix, np.round(matrix))  # a mean over seeds is not a count
        if counts:
            matrix = np.round(matrix).astype(np.int64)
        ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(
            ax=ax, cmap="Blues", colorbar=False, values_format="d" if counts else ".1f")
        when = f" (epoch {block['epoch']})" if block.get("epoch") is not None else ""  # logreg has no epochs
        seeds = f", mean of {block['n_seeds']} seeds" if block.get("n_seeds") else ""
        ax.set_title(f"{which}{when}{seeds}: accuracy {block['accuracy']:.4f}")
    fig.suptitle(name)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
